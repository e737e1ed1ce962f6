//! The requester: turns send work requests into request packets (rxe `rxe_req.c`).
//!
//! Packets are made when the platform asks for one, straight into its buffer. The requester
//! sends from its cursor (a WQE and a packet index in it); a go-back-N moves the cursor back
//! to the oldest unacknowledged PSN, and the same packets (same PSNs, same bytes, read again
//! from the memory regions) go out again.

use super::qp::{QueuePair, SendWqe};
use super::{
    ACK_REQUEST_INTERVAL, EmitError, Env, Link, MAX_UNACKED_PSNS, MIN_WINDOW, Transmit, psn,
};
use crate::verbs::{QpState, WcStatus, WrOperation};
use crate::wire::{AtomicEthRepr, ImmDtRepr, Opcode, RethRepr, RoceRepr};

/// The opcode of packet `index` of the `count` packets of a request.
fn opcode(operation: &WrOperation, index: u32, count: u32) -> Opcode {
    let first = index == 0;
    let last = index + 1 == count;
    match operation {
        WrOperation::RdmaRead { .. } => Opcode::RcRdmaReadRequest,
        WrOperation::AtomicCmpAndSwp { .. } => Opcode::RcCompareSwap,
        WrOperation::AtomicFetchAndAdd { .. } => Opcode::RcFetchAdd,
        WrOperation::Send | WrOperation::SendWithImm { .. } => {
            let immediate = matches!(operation, WrOperation::SendWithImm { .. });
            match (first, last, immediate) {
                (true, true, false) => Opcode::RcSendOnly,
                (true, true, true) => Opcode::RcSendOnlyWithImmediate,
                (true, false, _) => Opcode::RcSendFirst,
                (false, false, _) => Opcode::RcSendMiddle,
                (false, true, false) => Opcode::RcSendLast,
                (false, true, true) => Opcode::RcSendLastWithImmediate,
            }
        }
        WrOperation::RdmaWrite { .. } | WrOperation::RdmaWriteWithImm { .. } => {
            let immediate = matches!(operation, WrOperation::RdmaWriteWithImm { .. });
            match (first, last, immediate) {
                (true, true, false) => Opcode::RcRdmaWriteOnly,
                (true, true, true) => Opcode::RcRdmaWriteOnlyWithImmediate,
                (true, false, _) => Opcode::RcRdmaWriteFirst,
                (false, false, _) => Opcode::RcRdmaWriteMiddle,
                (false, true, false) => Opcode::RcRdmaWriteLast,
                (false, true, true) => Opcode::RcRdmaWriteLastWithImmediate,
            }
        }
    }
}

/// Moves the cursor back to the oldest unacknowledged PSN (rxe `req_retry`).
fn go_back(qp: &mut QueuePair) {
    qp.req.need_retry = false;
    qp.req.noack_packets = 0;
    qp.req.cursor = qp.sq_head_seq;
    qp.req.cursor_packet = 0;
    if let Some(head) = qp.sq.front()
        && head.started
        && !head.is_atomic()
    {
        let count = psn::diff(head.last_psn, head.first_psn) as u32 + 1;
        let acknowledged = psn::diff(qp.comp.psn, head.first_psn).max(0) as u32;
        qp.req.cursor_packet = acknowledged.min(count - 1);
    }
}

/// Whether the WQE at `index` may start now.
fn may_start(qp: &QueuePair, index: usize, wqe: &SendWqe) -> bool {
    if qp.state != QpState::Rts {
        return false;
    }
    if wqe.fence && index != 0 {
        return false;
    }
    !wqe.is_read_or_atomic() || qp.req.rd_atomic < u32::from(qp.attr.max_rd_atomic)
}

/// Whether [`transmit`] may find a packet to send: false when it would return
/// [`Transmit::Idle`] at its first checks (an RNR wait, or every WQE sent and no resend due).
#[inline]
pub(crate) fn may_have_packet(qp: &QueuePair) -> bool {
    qp.req.rnr_until.is_none() && (qp.req.need_retry || qp.sq_index(qp.req.cursor).is_some())
}

/// Writes the next request packet of `qp` into `out`.
pub(crate) fn transmit(
    qp: &mut QueuePair,
    env: &mut Env<'_>,
    link: &Link,
    out: &mut [u8],
) -> Transmit {
    if qp.req.rnr_until.is_some() {
        return Transmit::Idle;
    }
    if qp.req.need_retry {
        go_back(qp);
    }
    let Some(index) = qp.sq_index(qp.req.cursor) else {
        return Transmit::Idle;
    };
    let wqe = &qp.sq[index];
    if !wqe.started && !may_start(qp, index, wqe) {
        return Transmit::Idle;
    }
    let mtu = qp.mtu;
    let count = if wqe.started {
        psn::diff(wqe.last_psn, wqe.first_psn) as u32 + 1
    } else {
        wqe.packets(mtu)
    };
    let packet = qp.req.cursor_packet;
    let first_psn = if wqe.started {
        wqe.first_psn
    } else {
        qp.req.next_psn
    };
    let packet_psn = psn::add(first_psn, packet);
    let in_flight = psn::diff(packet_psn, qp.comp.psn);
    let window = qp.req.window.clamp(MIN_WINDOW, MAX_UNACKED_PSNS) as i32;
    if in_flight >= window {
        return Transmit::Idle;
    }

    let is_read = wqe.is_read();
    let is_atomic = wqe.is_atomic();
    let offset = u64::from(packet) * u64::from(mtu);
    let mut bth = super::bth(qp, opcode(&wqe.operation, packet, count), packet_psn);
    let last = is_read || is_atomic || packet + 1 == count;
    // Ask for an ACK at the end of a message, when this packet fills the window (nothing
    // more goes out until an ACK comes back), and every ACK_REQUEST_INTERVAL packets, or
    // every quarter window when the window is small after losses, so that losing one packet
    // or ACK near the end of a window still leaves ACKs that open the window again.
    let interval = (window as u32 / 4).clamp(1, ACK_REQUEST_INTERVAL);
    let ack_request = last || qp.req.noack_packets + 1 >= interval || in_flight + 1 >= window;
    bth.ack_request = ack_request;
    // Built in place inside its encapsulation: moving a finished header description into
    // another struct copies it in 8-byte words over fields just written in 4-byte ones, and
    // each such load waits for the stores before it to land.
    let mut repr = super::encapsulate(qp, link, RoceRepr::new(bth));
    let ib = &mut repr.ib;
    let mut payload_len = 0;
    match wqe.operation {
        WrOperation::RdmaRead { remote_addr, rkey } => {
            ib.reth = Some(RethRepr {
                virtual_address: remote_addr.wrapping_add(offset),
                rkey,
                dma_length: wqe.length - offset as u32,
            });
        }
        WrOperation::AtomicCmpAndSwp {
            remote_addr,
            rkey,
            compare_add,
            swap,
        } => {
            ib.atomic_eth = Some(AtomicEthRepr {
                virtual_address: remote_addr,
                rkey,
                swap_add_data: swap,
                compare_data: compare_add,
            });
        }
        WrOperation::AtomicFetchAndAdd {
            remote_addr,
            rkey,
            compare_add,
        } => {
            ib.atomic_eth = Some(AtomicEthRepr {
                virtual_address: remote_addr,
                rkey,
                swap_add_data: compare_add,
                compare_data: 0,
            });
        }
        WrOperation::Send
        | WrOperation::SendWithImm { .. }
        | WrOperation::RdmaWrite { .. }
        | WrOperation::RdmaWriteWithImm { .. } => {
            payload_len = (u64::from(wqe.length) - offset).min(u64::from(mtu)) as usize;
            if let WrOperation::RdmaWrite { remote_addr, rkey }
            | WrOperation::RdmaWriteWithImm {
                remote_addr, rkey, ..
            } = wqe.operation
                && packet == 0
            {
                ib.reth = Some(RethRepr {
                    virtual_address: remote_addr,
                    rkey,
                    dma_length: wqe.length,
                });
            }
            if let WrOperation::SendWithImm { imm_data }
            | WrOperation::RdmaWriteWithImm { imm_data, .. } = wqe.operation
                && last
            {
                ib.immdt = Some(ImmDtRepr {
                    immediate: imm_data,
                });
            }
            let completes_receive = matches!(
                wqe.operation,
                WrOperation::Send
                    | WrOperation::SendWithImm { .. }
                    | WrOperation::RdmaWriteWithImm { .. }
            );
            ib.bth.solicited_event = wqe.solicited && last && completes_receive;
        }
    }
    ib.set_payload_len(payload_len);
    let mrs = &*env.mrs;
    let result = super::emit(out, link, &repr, |payload, icrc| match &wqe.inline {
        Some(data) => {
            let start = offset as usize;
            icrc.update_copy(payload, &data[start..start + payload.len()]);
            Ok(())
        }
        None => mrs.gather(wqe.sges.as_slice(), offset, payload, icrc),
    });
    let length = match result {
        Ok(length) => length,
        Err(EmitError::NoRoom) => return Transmit::NoRoom,
        Err(EmitError::Fault(_)) => {
            // A local buffer went away (region deregistered): fail the request. Earlier
            // requests are still in flight; rxe fails the QP the same way.
            fail_at_cursor(qp, env);
            return Transmit::Idle;
        }
    };

    // Commit.
    let last_psn = psn::add(first_psn, count - 1);
    let wqe = &mut qp.sq[index];
    if !wqe.started {
        wqe.started = true;
        wqe.first_psn = first_psn;
        wqe.last_psn = last_psn;
        qp.req.next_psn = psn::add(last_psn, 1);
        if is_read || is_atomic {
            wqe.has_rd_atomic = true;
            qp.req.rd_atomic += 1;
        }
    }
    let highest = if is_read { last_psn } else { packet_psn };
    if qp.req.any_sent && psn::diff(packet_psn, qp.req.highest_sent) <= 0 {
        env.counters.retransmitted_packets += 1;
        if packet_psn == qp.comp.psn {
            qp.req.resent_oldest = true;
        }
    }
    if !qp.req.any_sent || psn::diff(highest, qp.req.highest_sent) > 0 {
        qp.req.highest_sent = highest;
        qp.req.any_sent = true;
    }
    qp.req.noack_packets = if ack_request {
        0
    } else {
        qp.req.noack_packets + 1
    };
    if last {
        qp.req.cursor += 1;
        qp.req.cursor_packet = 0;
    } else {
        qp.req.cursor_packet += 1;
    }
    if qp.comp.deadline.is_none() {
        qp.restart_timer(env.now);
    }
    Transmit::Sent(length)
}

/// The WQE at the cursor cannot be sent (a local region was deregistered while in use): it
/// completes with `LOC_PROT_ERR` and the QP goes to ERR. Completions stay in order: the
/// requests before it, sent but not yet acknowledged, are flushed first.
fn fail_at_cursor(qp: &mut QueuePair, env: &mut Env<'_>) {
    let cursor = qp.req.cursor;
    while qp.sq_head_seq < cursor && !qp.sq.is_empty() {
        qp.complete_send_head(env, WcStatus::WrFlushErr);
    }
    qp.complete_send_head(env, WcStatus::LocProtErr);
    qp.enter_error(env, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_follow_positions() {
        let send = WrOperation::Send;
        assert_eq!(opcode(&send, 0, 1), Opcode::RcSendOnly);
        assert_eq!(opcode(&send, 0, 3), Opcode::RcSendFirst);
        assert_eq!(opcode(&send, 1, 3), Opcode::RcSendMiddle);
        assert_eq!(opcode(&send, 2, 3), Opcode::RcSendLast);
        let imm = WrOperation::SendWithImm { imm_data: 1 };
        assert_eq!(opcode(&imm, 0, 1), Opcode::RcSendOnlyWithImmediate);
        assert_eq!(opcode(&imm, 0, 2), Opcode::RcSendFirst);
        assert_eq!(opcode(&imm, 1, 2), Opcode::RcSendLastWithImmediate);
        let write = WrOperation::RdmaWrite {
            remote_addr: 0,
            rkey: 0,
        };
        assert_eq!(opcode(&write, 0, 1), Opcode::RcRdmaWriteOnly);
        assert_eq!(opcode(&write, 0, 3), Opcode::RcRdmaWriteFirst);
        assert_eq!(opcode(&write, 1, 3), Opcode::RcRdmaWriteMiddle);
        assert_eq!(opcode(&write, 2, 3), Opcode::RcRdmaWriteLast);
        let write_imm = WrOperation::RdmaWriteWithImm {
            remote_addr: 0,
            rkey: 0,
            imm_data: 0,
        };
        assert_eq!(
            opcode(&write_imm, 0, 1),
            Opcode::RcRdmaWriteOnlyWithImmediate
        );
        assert_eq!(opcode(&write_imm, 0, 2), Opcode::RcRdmaWriteFirst);
        assert_eq!(opcode(&write_imm, 1, 3), Opcode::RcRdmaWriteMiddle);
        assert_eq!(
            opcode(&write_imm, 2, 3),
            Opcode::RcRdmaWriteLastWithImmediate
        );
        let read = WrOperation::RdmaRead {
            remote_addr: 0,
            rkey: 0,
        };
        assert_eq!(opcode(&read, 0, 5), Opcode::RcRdmaReadRequest);
        assert_eq!(opcode(&read, 3, 5), Opcode::RcRdmaReadRequest);
    }
}
