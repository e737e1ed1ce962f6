//! The responder: executes the peer's requests and answers them (rxe `rxe_resp.c`).
//!
//! Requests are handled when they arrive; the answers (ACK, NAK, READ responses, atomic
//! ACKs) wait in the QP's response queue until the platform asks for packets, so that READ
//! response payloads are copied straight from the region into the platform's buffer. A
//! plain ACK queued behind another plain ACK replaces it (ACKs are cumulative).

use super::qp::{InMessage, QueuePair, Resource, Response};
use super::{EmitError, Env, Link, RESPONSE_QUEUE_LIMIT, Transmit, psn};
use crate::verbs::{AccessFlags, WcOpcode, WcStatus};
use crate::wire::aeth::CREDIT_COUNT_INVALID;
use crate::wire::{
    AethRepr, AtomicAckEthRepr, NakCode, Opcode, OpcodeInfo, Operation, Position, RoceRepr,
    Syndrome,
};

/// The syndrome of a positive ACK (rxe `AETH_ACK_UNLIMITED`).
const ACK: Syndrome = Syndrome::Ack {
    credit_count: CREDIT_COUNT_INVALID,
};

/// The largest RETH length (rxe rejects longer: 2 GiB).
const MAX_DMA_LENGTH: u32 = 1 << 31;

/// Queues an ACK for `psn`, replacing a plain ACK at the end of the queue.
fn queue_ack(qp: &mut QueuePair, psn: u32) {
    let msn = qp.resp.msn;
    if let Some(Response::Ack {
        psn: queued_psn,
        syndrome: ACK,
        msn: queued_msn,
    }) = qp.resp.out.back_mut()
    {
        *queued_psn = psn;
        *queued_msn = msn;
        return;
    }
    qp.resp.out.push_back(Response::Ack {
        psn,
        syndrome: ACK,
        msn,
    });
}

fn queue_nak(qp: &mut QueuePair, psn: u32, syndrome: Syndrome) {
    qp.resp.out.push_back(Response::Ack {
        psn,
        syndrome,
        msn: qp.resp.msn,
    });
}

/// A class C error (rxe `do_class_ac_error`): NAK the request, complete the receive it used
/// with `receive_status` (when `receive` is set), move the QP to ERR once the NAK is out.
fn fatal(
    qp: &mut QueuePair,
    env: &mut Env<'_>,
    psn: u32,
    code: NakCode,
    receive: bool,
    receive_status: WcStatus,
) {
    env.counters.error_naks_sent += 1;
    queue_nak(qp, psn, Syndrome::Nak(code));
    if receive && !qp.rq.is_empty() {
        let placed = qp.resp.recv_offset;
        qp.complete_recv_head(env, receive_status, WcOpcode::Recv, placed, None);
    }
    qp.enter_error(env, true);
}

/// Takes a request packet of the QP's peer.
pub(crate) fn handle_request(qp: &mut QueuePair, env: &mut Env<'_>, ib: &RoceRepr, payload: &[u8]) {
    let Some(info) = ib.bth.opcode.info() else {
        return;
    };
    let psn = ib.bth.psn;
    if qp.resp.out.len() >= RESPONSE_QUEUE_LIMIT {
        env.counters.drops.responder_busy += 1;
        return;
    }
    let distance = psn::diff(psn, qp.resp.psn);
    if distance > 0 {
        env.counters.drops.out_of_sequence += 1;
        // NAK the first request after a gap (as rxe), and again when the request right
        // after the gap comes again after later ones: the requester went back and its
        // resent copy of the expected PSN was lost too. rxe NAKs once only and leaves that
        // case to the requester's timer.
        let expected = qp.resp.psn;
        let renewed = qp.resp.sent_psn_nak
            && psn == psn::add(expected, 1)
            && psn::diff(qp.resp.nak_high_psn, psn) > 0;
        if !qp.resp.sent_psn_nak || renewed {
            qp.resp.sent_psn_nak = true;
            qp.resp.nak_high_psn = psn;
            env.counters.seq_naks_sent += 1;
            queue_nak(qp, expected, Syndrome::Nak(NakCode::PsnSequenceError));
        } else if psn::diff(psn, qp.resp.nak_high_psn) > 0 {
            qp.resp.nak_high_psn = psn;
        }
        return;
    }
    if distance < 0 {
        env.counters.duplicate_requests += 1;
        duplicate(qp, env, ib, info);
        return;
    }
    qp.resp.sent_psn_nak = false;
    let in_send = qp.resp.in_message == InMessage::Send;

    // Opcode sequence (rxe `check_op_seq`).
    let continues = matches!(info.position, Position::Middle | Position::Last);
    let in_sequence = match (qp.resp.in_message, info.operation) {
        (InMessage::None, _) => !continues,
        (InMessage::Send, Operation::Send) | (InMessage::Write, Operation::RdmaWrite) => continues,
        _ => false,
    };
    if !in_sequence || info.has_invalidate() {
        return fatal(
            qp,
            env,
            psn,
            NakCode::InvalidRequest,
            in_send,
            WcStatus::RemInvReqErr,
        );
    }

    // The QP's access flags (rxe `check_op_valid`) and resources (`check_resource`).
    let needed = match info.operation {
        Operation::RdmaWrite => AccessFlags::REMOTE_WRITE,
        Operation::RdmaReadRequest => AccessFlags::REMOTE_READ,
        Operation::CompareSwap | Operation::FetchAdd => AccessFlags::REMOTE_ATOMIC,
        _ => AccessFlags::EMPTY,
    };
    let read_or_atomic = matches!(
        info.operation,
        Operation::RdmaReadRequest | Operation::CompareSwap | Operation::FetchAdd
    );
    if !qp.attr.qp_access_flags.contains(needed)
        || (read_or_atomic && qp.attr.max_dest_rd_atomic == 0)
    {
        return fatal(
            qp,
            env,
            psn,
            NakCode::InvalidRequest,
            in_send,
            WcStatus::RemInvReqErr,
        );
    }
    if info.consumes_receive_wqe() && qp.rq.is_empty() {
        env.counters.rnr_naks_sent += 1;
        let timer = qp.attr.min_rnr_timer;
        queue_nak(qp, psn, Syndrome::RnrNak { timer });
        return;
    }

    // Payload length by position (rxe `check_length`).
    let length = payload.len() as u32;
    let mtu = qp.mtu;
    let length_ok = match info.position {
        Position::Only => length <= mtu,
        Position::First | Position::Middle => length == mtu,
        Position::Last => length >= 1 && length <= mtu,
    };
    if !length_ok {
        let receive = in_send || info.consumes_receive_wqe();
        return fatal(
            qp,
            env,
            psn,
            NakCode::InvalidRequest,
            receive,
            WcStatus::RemInvReqErr,
        );
    }

    match info.operation {
        Operation::Send => execute_send(qp, env, ib, info, payload),
        Operation::RdmaWrite => execute_write(qp, env, ib, info, payload),
        Operation::RdmaReadRequest => execute_read(qp, env, ib),
        Operation::CompareSwap | Operation::FetchAdd => execute_atomic(qp, env, ib),
        _ => {}
    }
}

/// The request at the expected PSN was carried out: expect the next one, ACK it if asked.
fn advance(
    qp: &mut QueuePair,
    env: &mut Env<'_>,
    ib: &RoceRepr,
    info: OpcodeInfo,
    in_message: InMessage,
) {
    let psn = ib.bth.psn;
    env.counters.accepted_psns += 1;
    if info.position.ends_message() {
        qp.resp.msn = psn::add(qp.resp.msn, 1);
        qp.resp.in_message = InMessage::None;
    } else {
        qp.resp.in_message = in_message;
    }
    qp.resp.psn = psn::add(psn, 1);
    qp.resp.ack_psn = qp.resp.psn;
    if ib.bth.ack_request {
        queue_ack(qp, psn);
    }
}

fn execute_send(
    qp: &mut QueuePair,
    env: &mut Env<'_>,
    ib: &RoceRepr,
    info: OpcodeInfo,
    payload: &[u8],
) {
    let psn = ib.bth.psn;
    let Some(wqe) = qp.rq.front() else {
        return fatal(
            qp,
            env,
            psn,
            NakCode::InvalidRequest,
            false,
            WcStatus::RemInvReqErr,
        );
    };
    let offset = qp.resp.recv_offset;
    if u64::from(offset) + payload.len() as u64 > u64::from(wqe.length) {
        return fatal(
            qp,
            env,
            psn,
            NakCode::InvalidRequest,
            true,
            WcStatus::LocLenErr,
        );
    }
    if env
        .mrs
        .scatter(wqe.sges.as_slice(), u64::from(offset), payload)
        .is_err()
    {
        return fatal(
            qp,
            env,
            psn,
            NakCode::RemoteOperationalError,
            true,
            WcStatus::LocProtErr,
        );
    }
    qp.resp.recv_offset = offset + payload.len() as u32;
    if info.position.ends_message() {
        let placed = qp.resp.recv_offset;
        let imm = ib.immdt.map(|immdt| immdt.immediate);
        qp.complete_recv_head(env, WcStatus::Success, WcOpcode::Recv, placed, imm);
    }
    advance(qp, env, ib, info, InMessage::Send);
    if info.position.ends_message() {
        env.counters.executed.sends += 1;
    }
}

fn execute_write(
    qp: &mut QueuePair,
    env: &mut Env<'_>,
    ib: &RoceRepr,
    info: OpcodeInfo,
    payload: &[u8],
) {
    let psn = ib.bth.psn;
    let consumes = info.consumes_receive_wqe();
    if let Some(reth) = ib.reth {
        if reth.dma_length > MAX_DMA_LENGTH {
            return fatal(
                qp,
                env,
                psn,
                NakCode::InvalidRequest,
                consumes,
                WcStatus::RemInvReqErr,
            );
        }
        // The whole range is checked on the first packet (rxe `check_rkey`), so that a
        // WRITE that cannot complete writes nothing.
        if reth.dma_length > 0
            && env
                .mrs
                .remote(
                    reth.rkey,
                    qp.pd,
                    reth.virtual_address,
                    u64::from(reth.dma_length),
                    AccessFlags::REMOTE_WRITE,
                )
                .is_none()
        {
            return fatal(
                qp,
                env,
                psn,
                NakCode::RemoteAccessError,
                consumes,
                WcStatus::RemAccessErr,
            );
        }
        qp.resp.write.va = reth.virtual_address;
        qp.resp.write.rkey = reth.rkey;
        qp.resp.write.resid = reth.dma_length;
        qp.resp.write.length = reth.dma_length;
    }
    let cursor = qp.resp.write;
    let length = payload.len() as u32;
    let pad = ib.bth.pad_count;
    let fits = if cursor.resid > qp.mtu {
        length == qp.mtu && pad == 0 && !info.position.ends_message()
    } else {
        length == cursor.resid
            && u32::from(pad) == (4 - cursor.resid % 4) % 4
            && info.position.ends_message()
    };
    if !fits {
        return fatal(
            qp,
            env,
            psn,
            NakCode::InvalidRequest,
            consumes,
            WcStatus::RemInvReqErr,
        );
    }
    if length > 0 {
        let target = env.mrs.remote(
            cursor.rkey,
            qp.pd,
            cursor.va,
            u64::from(length),
            AccessFlags::REMOTE_WRITE,
        );
        let Some(bytes) = target.and_then(|(lkey, range)| env.mrs.bytes_mut(lkey, range)) else {
            return fatal(
                qp,
                env,
                psn,
                NakCode::RemoteAccessError,
                consumes,
                WcStatus::RemAccessErr,
            );
        };
        bytes.copy_from_slice(payload);
        qp.resp.write.va = cursor.va.wrapping_add(u64::from(length));
        qp.resp.write.resid = cursor.resid - length;
    }
    if consumes {
        let imm = ib.immdt.map(|immdt| immdt.immediate);
        qp.complete_recv_head(
            env,
            WcStatus::Success,
            WcOpcode::RecvRdmaWithImm,
            cursor.length,
            imm,
        );
    }
    advance(qp, env, ib, info, InMessage::Write);
    if info.position.ends_message() {
        env.counters.executed.writes += 1;
    }
}

/// Stores a READ/atomic resource in the next slot, replacing the oldest.
fn store_resource(qp: &mut QueuePair, resource: Resource) {
    let slots = qp.resp.resources.len();
    if slots == 0 {
        return;
    }
    let index = qp.resp.next_resource % slots;
    qp.resp.resources[index] = resource;
    qp.resp.next_resource = (index + 1) % slots;
}

fn execute_read(qp: &mut QueuePair, env: &mut Env<'_>, ib: &RoceRepr) {
    let psn = ib.bth.psn;
    let Some(reth) = ib.reth else {
        return;
    };
    if reth.dma_length > MAX_DMA_LENGTH {
        return fatal(
            qp,
            env,
            psn,
            NakCode::InvalidRequest,
            false,
            WcStatus::RemInvReqErr,
        );
    }
    if reth.dma_length > 0
        && env
            .mrs
            .remote(
                reth.rkey,
                qp.pd,
                reth.virtual_address,
                u64::from(reth.dma_length),
                AccessFlags::REMOTE_READ,
            )
            .is_none()
    {
        return fatal(
            qp,
            env,
            psn,
            NakCode::RemoteAccessError,
            false,
            WcStatus::RemAccessErr,
        );
    }
    // The MSN counts the READ now (IBTA C9-148, as rxe).
    qp.resp.msn = psn::add(qp.resp.msn, 1);
    let packets = reth.dma_length.div_ceil(qp.mtu).max(1);
    let last_psn = psn::add(psn, packets - 1);
    store_resource(
        qp,
        Resource::Read {
            first_psn: psn,
            last_psn,
            va: reth.virtual_address,
            rkey: reth.rkey,
            length: reth.dma_length,
        },
    );
    qp.resp.out.push_back(Response::Read {
        psn,
        va: reth.virtual_address,
        rkey: reth.rkey,
        remaining: reth.dma_length,
        first: true,
        msn: qp.resp.msn,
    });
    env.counters.executed.reads += 1;
    env.counters.accepted_psns += u64::from(packets);
    qp.resp.psn = psn::add(last_psn, 1);
    qp.resp.in_message = InMessage::None;
}

fn execute_atomic(qp: &mut QueuePair, env: &mut Env<'_>, ib: &RoceRepr) {
    let psn = ib.bth.psn;
    let Some(atomic) = ib.atomic_eth else {
        return;
    };
    if atomic.virtual_address % 8 != 0 {
        return fatal(
            qp,
            env,
            psn,
            NakCode::InvalidRequest,
            false,
            WcStatus::RemInvReqErr,
        );
    }
    let target = env.mrs.remote(
        atomic.rkey,
        qp.pd,
        atomic.virtual_address,
        8,
        AccessFlags::REMOTE_ATOMIC,
    );
    let Some(word) = target.and_then(|(lkey, range)| env.mrs.bytes_mut(lkey, range)) else {
        return fatal(
            qp,
            env,
            psn,
            NakCode::RemoteAccessError,
            false,
            WcStatus::RemAccessErr,
        );
    };
    let Ok(bytes) = <&mut [u8; 8]>::try_from(word) else {
        return;
    };
    let original = u64::from_le_bytes(*bytes);
    let new = if ib.bth.opcode == Opcode::RcCompareSwap {
        if original == atomic.compare_data {
            atomic.swap_add_data
        } else {
            original
        }
    } else {
        original.wrapping_add(atomic.swap_add_data)
    };
    *bytes = new.to_le_bytes();
    qp.resp.msn = psn::add(qp.resp.msn, 1);
    store_resource(qp, Resource::Atomic { psn, original });
    env.counters.executed.atomics += 1;
    env.counters.accepted_psns += 1;
    qp.resp.out.push_back(Response::AtomicAck {
        psn,
        original,
        msn: qp.resp.msn,
    });
    qp.resp.psn = psn::add(psn, 1);
    qp.resp.ack_psn = qp.resp.psn;
    qp.resp.in_message = InMessage::None;
}

/// Answers a duplicate SEND or RDMA WRITE: acknowledges again, whatever the AckReq bit
/// (C9-105), up to the last request taken.
pub(crate) fn acknowledge_again(qp: &mut QueuePair) {
    let acknowledged = psn::sub(qp.resp.ack_psn, 1);
    queue_ack(qp, acknowledged);
}

/// A request before the expected PSN (rxe `duplicate_request`).
fn duplicate(qp: &mut QueuePair, env: &mut Env<'_>, ib: &RoceRepr, info: OpcodeInfo) {
    let psn = ib.bth.psn;
    match info.operation {
        Operation::Send | Operation::RdmaWrite => acknowledge_again(qp),
        Operation::RdmaReadRequest => {
            let Some(reth) = ib.reth else {
                return;
            };
            let found = qp
                .resp
                .resources
                .iter()
                .find_map(|resource| match *resource {
                    Resource::Read {
                        first_psn,
                        last_psn,
                        va,
                        rkey,
                        length,
                    } if psn::diff(psn, first_psn) >= 0 && psn::diff(psn, last_psn) <= 0 => {
                        Some((first_psn, va, rkey, length))
                    }
                    _ => None,
                });
            // Replay only the same request or a part of it.
            let replay = found.filter(|&(_, va, rkey, length)| {
                let end = u128::from(va) + u128::from(length);
                reth.rkey == rkey
                    && reth.virtual_address >= va
                    && u128::from(reth.virtual_address) + u128::from(reth.dma_length) <= end
            });
            let Some((first_psn, ..)) = replay else {
                env.counters.drops.stale_duplicate += 1;
                return;
            };
            qp.resp.out.push_back(Response::Read {
                psn,
                va: reth.virtual_address,
                rkey: reth.rkey,
                remaining: reth.dma_length,
                first: psn == first_psn,
                msn: qp.resp.msn,
            });
        }
        Operation::CompareSwap | Operation::FetchAdd => {
            let original = qp
                .resp
                .resources
                .iter()
                .find_map(|resource| match *resource {
                    Resource::Atomic {
                        psn: saved,
                        original,
                    } if saved == psn => Some(original),
                    _ => None,
                });
            match original {
                Some(original) => qp.resp.out.push_back(Response::AtomicAck {
                    psn,
                    original,
                    msn: qp.resp.msn,
                }),
                None => env.counters.drops.stale_duplicate += 1,
            }
        }
        _ => {}
    }
}

/// Ends the transmission of a response without payload.
fn finish_header_only(qp: &mut QueuePair, result: Result<usize, EmitError>) -> Transmit {
    match result {
        Ok(length) => {
            qp.resp.out.pop_front();
            Transmit::Sent(length)
        }
        Err(EmitError::NoRoom) => Transmit::NoRoom,
        Err(EmitError::Fault(_)) => {
            // Cannot happen for a packet without payload; drop it rather than stall.
            qp.resp.out.pop_front();
            Transmit::Idle
        }
    }
}

/// Writes the next queued response of `qp` into `out`.
pub(crate) fn transmit(
    qp: &mut QueuePair,
    env: &mut Env<'_>,
    link: &Link,
    out: &mut [u8],
) -> Transmit {
    let Some(&response) = qp.resp.out.front() else {
        return Transmit::Idle;
    };
    match response {
        Response::Ack { psn, syndrome, msn } => {
            let mut ib = RoceRepr::new(super::bth(qp, Opcode::RcAcknowledge, psn));
            ib.aeth = Some(AethRepr { syndrome, msn });
            let repr = super::encapsulate(qp, link, ib);
            finish_header_only(qp, super::emit(out, link, &repr, |_, _| Ok(())))
        }
        Response::AtomicAck { psn, original, msn } => {
            let mut ib = RoceRepr::new(super::bth(qp, Opcode::RcAtomicAcknowledge, psn));
            ib.aeth = Some(AethRepr { syndrome: ACK, msn });
            ib.atomic_ack_eth = Some(AtomicAckEthRepr {
                original_data: original,
            });
            let repr = super::encapsulate(qp, link, ib);
            finish_header_only(qp, super::emit(out, link, &repr, |_, _| Ok(())))
        }
        Response::Read {
            psn,
            va,
            rkey,
            remaining,
            first,
            msn,
        } => {
            let mtu = qp.mtu;
            let payload_len = remaining.min(mtu);
            let opcode = match (first, remaining <= mtu) {
                (true, true) => Opcode::RcRdmaReadResponseOnly,
                (true, false) => Opcode::RcRdmaReadResponseFirst,
                (false, true) => Opcode::RcRdmaReadResponseLast,
                (false, false) => Opcode::RcRdmaReadResponseMiddle,
            };
            let mut ib = RoceRepr::new(super::bth(qp, opcode, psn));
            if opcode != Opcode::RcRdmaReadResponseMiddle {
                ib.aeth = Some(AethRepr { syndrome: ACK, msn });
            }
            let ib = ib.with_payload_len(payload_len as usize);
            let repr = super::encapsulate(qp, link, ib);
            // The region is looked up again for every packet (rxe `rxe_recheck_mr`): it may
            // have been deregistered since the request.
            let source = if payload_len == 0 {
                Some((0, 0..0))
            } else {
                env.mrs.remote(
                    rkey,
                    qp.pd,
                    va,
                    u64::from(payload_len),
                    AccessFlags::REMOTE_READ,
                )
            };
            let mrs = &*env.mrs;
            let result = match source {
                Some((lkey, range)) => super::emit(out, link, &repr, |payload, icrc| {
                    if payload.is_empty() {
                        return Ok(());
                    }
                    let bytes = mrs.bytes(lkey, range).ok_or(crate::verbs::MrFault::Key)?;
                    icrc.update_copy(payload, bytes);
                    Ok(())
                }),
                None => Err(EmitError::Fault(crate::verbs::MrFault::Key)),
            };
            match result {
                Ok(length) => {
                    let left = remaining - payload_len;
                    if left == 0 {
                        qp.resp.out.pop_front();
                    } else if let Some(Response::Read {
                        psn,
                        va,
                        remaining,
                        first,
                        ..
                    }) = qp.resp.out.front_mut()
                    {
                        *psn = psn::add(*psn, 1);
                        *va = va.wrapping_add(u64::from(payload_len));
                        *remaining = left;
                        *first = false;
                    }
                    Transmit::Sent(length)
                }
                Err(EmitError::NoRoom) => Transmit::NoRoom,
                Err(EmitError::Fault(_)) => {
                    // Replace the response by a remote access error NAK; it goes out next.
                    qp.resp.out.pop_front();
                    env.counters.error_naks_sent += 1;
                    qp.resp.out.push_front(Response::Ack {
                        psn,
                        syndrome: Syndrome::Nak(NakCode::RemoteAccessError),
                        msn,
                    });
                    qp.enter_error(env, true);
                    transmit(qp, env, link, out)
                }
            }
        }
    }
}
