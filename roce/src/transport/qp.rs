//! The state of an RC queue pair: its work queues and the state of its three engines
//! (requester, completer, responder), plus what they share: completing work requests and
//! going to the error state.
//!
//! # Send queue
//!
//! `sq` holds every posted send work request (WQE) that has not completed, oldest first;
//! `sq_head_seq` is the sequence number of `sq[0]` (posts are numbered from 0). The requester
//! sends packets from the WQE at its cursor; the completer retires WQEs from the head, in
//! order, as responses acknowledge them. A WQE's PSNs (`first_psn..=last_psn`) are fixed when
//! it is first sent; a retransmission sends the same packets with the same PSNs.

use super::Env;
use super::psn;
use crate::verbs::{
    CqHandle, PdHandle, QpAttr, QpCap, QpState, Sge, WcFlags, WcOpcode, WcStatus, WorkCompletion,
    WrOperation,
};
use crate::wire::Syndrome;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

/// The most SGEs a work request may have.
pub const MAX_SGE: usize = 8;

/// The SGEs of a work request, stored in the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SgeList {
    len: u8,
    items: [Sge; MAX_SGE],
}

impl SgeList {
    pub(crate) const EMPTY: SgeList = SgeList {
        len: 0,
        items: [Sge {
            addr: 0,
            length: 0,
            lkey: 0,
        }; MAX_SGE],
    };

    /// The list of `sges` (at most [`MAX_SGE`]; callers check).
    pub(crate) fn new(sges: &[Sge]) -> Self {
        let mut list = SgeList::EMPTY;
        let count = sges.len().min(MAX_SGE);
        list.items[..count].copy_from_slice(&sges[..count]);
        list.len = count as u8;
        list
    }

    pub(crate) fn as_slice(&self) -> &[Sge] {
        &self.items[..usize::from(self.len)]
    }
}

/// A posted send work request and its transport state.
#[derive(Debug)]
pub(crate) struct SendWqe {
    pub wr_id: u64,
    pub operation: WrOperation,
    /// Produces a completion on success.
    pub signaled: bool,
    pub solicited: bool,
    pub fence: bool,
    pub sges: SgeList,
    /// Data copied at post time (inline requests).
    pub inline: Option<Box<[u8]>>,
    /// Message length in bytes (8 for atomics).
    pub length: u32,
    /// Whether a packet of it has been sent: then its PSNs are fixed.
    pub started: bool,
    /// PSN of its first packet (for READ: of the request and of the first response).
    pub first_psn: u32,
    /// PSN of its last packet (for READ: of the last response).
    pub last_psn: u32,
    /// Counted in the requester's outstanding READ/atomic requests.
    pub has_rd_atomic: bool,
}

impl SendWqe {
    pub(crate) fn is_read(&self) -> bool {
        matches!(self.operation, WrOperation::RdmaRead { .. })
    }

    pub(crate) fn is_atomic(&self) -> bool {
        matches!(
            self.operation,
            WrOperation::AtomicCmpAndSwp { .. } | WrOperation::AtomicFetchAndAdd { .. }
        )
    }

    pub(crate) fn is_read_or_atomic(&self) -> bool {
        self.is_read() || self.is_atomic()
    }

    /// Packets of the message (READ: response packets) at this MTU: at least one.
    pub(crate) fn packets(&self, mtu: u32) -> u32 {
        if self.is_atomic() {
            1
        } else {
            self.length.div_ceil(mtu).max(1)
        }
    }
}

/// A posted receive work request.
#[derive(Debug)]
pub(crate) struct RecvWqe {
    pub wr_id: u64,
    pub sges: SgeList,
    pub length: u32,
}

/// Requester state (rxe `qp->req`).
#[derive(Debug, Default)]
pub(crate) struct Requester {
    /// First PSN of the next WQE to start.
    pub next_psn: u32,
    /// Sequence number of the WQE the next packet comes from.
    pub cursor: u64,
    /// Index of the next packet within that WQE.
    pub cursor_packet: u32,
    /// The highest PSN sent (meaningful once `any_sent`).
    pub highest_sent: u32,
    pub any_sent: bool,
    /// Packets sent since the last one with AckReq.
    pub noack_packets: u32,
    /// Started READ/atomic WQEs not yet completed.
    pub rd_atomic: u32,
    /// Go back to the oldest unacknowledged PSN before sending the next packet.
    pub need_retry: bool,
    /// Since the current go-back-N began, the packet at the oldest unacknowledged PSN has
    /// been sent again: a sequence NAK for that PSN now means the resent copy was lost too.
    pub resent_oldest: bool,
    /// PSNs allowed in flight now: [`MAX_UNACKED_PSNS`](super::MAX_UNACKED_PSNS) at first,
    /// halved by every go-back-N (down to [`MIN_WINDOW`](super::MIN_WINDOW)), grown
    /// again by acknowledgements.
    pub window: u32,
    /// Sending is paused until this time (an RNR NAK's timer).
    pub rnr_until: Option<u64>,
}

/// Completer state (rxe `qp->comp`).
#[derive(Debug, Default)]
pub(crate) struct Completer {
    /// The oldest PSN not yet acknowledged.
    pub psn: u32,
    /// Retries left (reset to the QP's `retry_cnt` on progress).
    pub retry_cnt: u8,
    /// RNR retries left (7 = unlimited).
    pub rnr_retry: u8,
    /// A go-back-N has been started and no response has made progress since: further
    /// sequence NAKs and implicit NAKs do not start another one (a timeout does).
    pub started_retry: bool,
    /// When the retransmission timer fires.
    pub deadline: Option<u64>,
    /// Go-back-Ns started in this episode by a renewed sequence NAK (see
    /// [`Requester::resent_oldest`]); at most [`MAX_RENEWALS`](super::MAX_RENEWALS).
    pub renewals: u8,
}

/// What a READ or atomic request left behind, to answer a duplicate of it (rxe `resp_res`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    Empty,
    Read {
        first_psn: u32,
        last_psn: u32,
        va: u64,
        rkey: u32,
        length: u32,
    },
    Atomic {
        psn: u32,
        original: u64,
    },
}

/// A response waiting to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Response {
    /// An Acknowledge packet: ACK, RNR NAK or NAK.
    Ack {
        psn: u32,
        syndrome: Syndrome,
        msn: u32,
    },
    /// An ATOMIC Acknowledge.
    AtomicAck { psn: u32, original: u64, msn: u32 },
    /// The READ response packets still to send for one request.
    Read {
        psn: u32,
        va: u64,
        rkey: u32,
        remaining: u32,
        /// Whether the next packet starts the response (FIRST/ONLY) rather than continuing a
        /// replay from its middle (MIDDLE/LAST).
        first: bool,
        msn: u32,
    },
}

/// An RDMA WRITE being received.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WriteCursor {
    pub va: u64,
    pub rkey: u32,
    /// Bytes still expected.
    pub resid: u32,
    /// The RETH length.
    pub length: u32,
}

/// A multi-packet message being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InMessage {
    None,
    Send,
    Write,
}

/// Responder state (rxe `qp->resp`).
#[derive(Debug)]
pub(crate) struct Responder {
    /// The next PSN expected.
    pub psn: u32,
    /// One past the last PSN acknowledged: duplicates are ACKed with `ack_psn - 1`.
    pub ack_psn: u32,
    /// Message sequence number: requests completed.
    pub msn: u32,
    pub in_message: InMessage,
    /// A sequence NAK was sent for the current gap.
    pub sent_psn_nak: bool,
    /// The highest PSN seen after the gap since the last sequence NAK: a request at or
    /// below it comes from a new go-back-N pass of the requester.
    pub nak_high_psn: u32,
    /// Bytes of the current SEND placed in the receive WQE at the head.
    pub recv_offset: u32,
    pub write: WriteCursor,
    pub resources: Vec<Resource>,
    pub next_resource: usize,
    pub out: VecDeque<Response>,
}

impl Default for Responder {
    fn default() -> Self {
        Responder {
            psn: 0,
            ack_psn: 0,
            msn: 0,
            in_message: InMessage::None,
            sent_psn_nak: false,
            nak_high_psn: 0,
            recv_offset: 0,
            write: WriteCursor::default(),
            resources: Vec::new(),
            next_resource: 0,
            out: VecDeque::new(),
        }
    }
}

/// An RC queue pair.
#[derive(Debug)]
pub(crate) struct QueuePair {
    pub qpn: u32,
    pub pd: PdHandle,
    pub send_cq: CqHandle,
    pub recv_cq: CqHandle,
    pub cap: QpCap,
    pub sq_sig_all: bool,
    pub state: QpState,
    /// The attributes as last set (reported by `query_qp`).
    pub attr: QpAttr,
    /// Path MTU in bytes.
    pub mtu: u32,
    pub dest_addr: Ipv4Addr,
    pub ttl: u8,
    pub traffic_class: u8,
    /// UDP source port of every packet of this QP.
    pub src_port: u16,
    /// The retransmission timeout, `None` for infinite.
    pub timeout_ns: Option<u64>,
    pub sq: VecDeque<SendWqe>,
    pub sq_head_seq: u64,
    pub rq: VecDeque<RecvWqe>,
    pub req: Requester,
    pub comp: Completer,
    pub resp: Responder,
    /// In the device's transmit schedule.
    pub scheduled: bool,
}

/// The UDP source port of a QP: rxe's rule (`rxe_qp_init_req`), `0xC000` plus the top 14
/// bits of the QP number times the 32-bit golden ratio (`hash_32(qpn, 14)`): one flow per
/// QP, spread over the dynamic port range `0xC000..=0xFFFF`.
pub const fn udp_source_port(qpn: u32) -> u16 {
    const GOLDEN_RATIO_32: u32 = 0x61c8_8647;
    0xc000 | (qpn.wrapping_mul(GOLDEN_RATIO_32) >> (32 - 14)) as u16
}

/// Default IPv4 TTL when the address vector's hop limit is 0.
pub const DEFAULT_TTL: u8 = 64;

impl QueuePair {
    pub(crate) fn new(
        qpn: u32,
        pd: PdHandle,
        send_cq: CqHandle,
        recv_cq: CqHandle,
        cap: QpCap,
        sq_sig_all: bool,
    ) -> Self {
        QueuePair {
            qpn,
            pd,
            send_cq,
            recv_cq,
            cap,
            sq_sig_all,
            state: QpState::Reset,
            attr: QpAttr {
                cap,
                ..QpAttr::default()
            },
            mtu: 1024,
            dest_addr: Ipv4Addr::UNSPECIFIED,
            ttl: DEFAULT_TTL,
            traffic_class: 0,
            src_port: udp_source_port(qpn),
            timeout_ns: None,
            sq: VecDeque::new(),
            sq_head_seq: 0,
            rq: VecDeque::new(),
            req: Requester::default(),
            comp: Completer::default(),
            resp: Responder::default(),
            scheduled: false,
        }
    }

    /// The earlier of the retransmission deadline and the end of an RNR wait, if either runs.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        super::earliest(self.comp.deadline, self.req.rnr_until)
    }

    /// Whether the requester is allowed to send (RTS, or SQD finishing started requests).
    pub(crate) fn can_send(&self) -> bool {
        matches!(self.state, QpState::Rts | QpState::Sqd)
    }

    /// Whether the responder serves requests (RTR and later, until ERR).
    pub(crate) fn can_respond(&self) -> bool {
        matches!(self.state, QpState::Rtr | QpState::Rts | QpState::Sqd)
    }

    /// Index in `sq` of the WQE with sequence number `seq`.
    pub(crate) fn sq_index(&self, seq: u64) -> Option<usize> {
        let index = usize::try_from(seq.checked_sub(self.sq_head_seq)?).ok()?;
        (index < self.sq.len()).then_some(index)
    }

    /// Whether requests have been sent that are not yet acknowledged.
    pub(crate) fn outstanding(&self) -> bool {
        self.sq.front().is_some_and(|wqe| wqe.started)
    }

    /// Restarts the retransmission timer if requests are outstanding, stops it otherwise.
    pub(crate) fn restart_timer(&mut self, now: u64) {
        self.comp.deadline = match self.timeout_ns {
            Some(timeout) if self.outstanding() && self.req.rnr_until.is_none() => {
                Some(now.saturating_add(timeout))
            }
            _ => None,
        };
    }

    /// After partial progress on the head request: if the requester is about to send
    /// packets of it again (after a go-back-N), skip those now acknowledged.
    pub(crate) fn skip_acknowledged(&mut self) {
        if self.req.cursor != self.sq_head_seq {
            return;
        }
        let Some(head) = self.sq.front() else {
            return;
        };
        if !head.started || head.is_atomic() {
            return;
        }
        let acknowledged = psn::diff(self.comp.psn, head.first_psn);
        let count = psn::diff(head.last_psn, head.first_psn) + 1;
        if acknowledged > self.req.cursor_packet as i32 && acknowledged < count {
            self.req.cursor_packet = acknowledged as u32;
        }
    }

    /// Progress was made: the retry budgets are full again (rxe `reset_retry_counters`).
    pub(crate) fn reset_retry_counters(&mut self) {
        self.comp.retry_cnt = self.attr.retry_cnt;
        self.comp.rnr_retry = self.attr.rnr_retry;
        self.comp.started_retry = false;
        self.comp.renewals = 0;
    }

    /// Retires the WQE at the head of the send queue with `status`, producing its
    /// completion if it is signaled or failed.
    pub(crate) fn complete_send_head(&mut self, env: &mut Env<'_>, status: WcStatus) {
        let Some(wqe) = self.sq.pop_front() else {
            return;
        };
        self.sq_head_seq += 1;
        if self.req.cursor < self.sq_head_seq {
            self.req.cursor = self.sq_head_seq;
            self.req.cursor_packet = 0;
        }
        if wqe.has_rd_atomic {
            self.req.rd_atomic -= 1;
        }
        if wqe.signaled || self.sq_sig_all || status != WcStatus::Success {
            env.cqs.complete(
                self.send_cq,
                WorkCompletion {
                    wr_id: wqe.wr_id,
                    status,
                    opcode: wqe.operation.wc_opcode(),
                    byte_len: wqe.length,
                    qp_num: self.qpn,
                    src_qp: self.attr.dest_qp_num,
                    ..WorkCompletion::default()
                },
            );
        } else {
            env.cqs.release(self.send_cq, 1);
        }
    }

    /// Retires the receive WQE at the head of the receive queue.
    pub(crate) fn complete_recv_head(
        &mut self,
        env: &mut Env<'_>,
        status: WcStatus,
        opcode: WcOpcode,
        byte_len: u32,
        imm: Option<u32>,
    ) {
        let Some(wqe) = self.rq.pop_front() else {
            return;
        };
        self.resp.recv_offset = 0;
        let mut wc_flags = WcFlags::GRH;
        if imm.is_some() {
            wc_flags |= WcFlags::WITH_IMM;
        }
        env.cqs.complete(
            self.recv_cq,
            WorkCompletion {
                wr_id: wqe.wr_id,
                status,
                opcode,
                byte_len,
                imm_data: imm.unwrap_or(0),
                qp_num: self.qpn,
                src_qp: self.attr.dest_qp_num,
                wc_flags,
                ..WorkCompletion::default()
            },
        );
    }

    /// Moves the QP to ERR: every outstanding send and receive WQE completes with
    /// `WR_FLUSH_ERR`, timers stop. Queued responses are dropped unless `keep_responses` (a
    /// responder error whose NAK must still go out).
    pub(crate) fn enter_error(&mut self, env: &mut Env<'_>, keep_responses: bool) {
        self.state = QpState::Err;
        self.attr.qp_state = QpState::Err;
        while !self.sq.is_empty() {
            self.complete_send_head(env, WcStatus::WrFlushErr);
        }
        while !self.rq.is_empty() {
            self.complete_recv_head(env, WcStatus::WrFlushErr, WcOpcode::Recv, 0, None);
        }
        self.comp.deadline = None;
        self.req.rnr_until = None;
        self.req.need_retry = false;
        if !keep_responses {
            self.resp.out.clear();
        }
    }

    /// Drops every WQE without completions (modify to RESET, destroy) and gives their CQ
    /// entries back.
    pub(crate) fn drop_work_requests(&mut self, env: &mut Env<'_>) {
        env.cqs.release(self.send_cq, self.sq.len());
        env.cqs.release(self.recv_cq, self.rq.len());
        self.sq_head_seq += self.sq.len() as u64;
        self.sq.clear();
        self.rq.clear();
    }

    /// Back to the state of a new QP (modify to RESET); work requests must have been dropped.
    pub(crate) fn reset(&mut self) {
        self.state = QpState::Reset;
        self.attr = QpAttr {
            cap: self.cap,
            ..QpAttr::default()
        };
        self.mtu = 1024;
        self.dest_addr = Ipv4Addr::UNSPECIFIED;
        self.ttl = DEFAULT_TTL;
        self.traffic_class = 0;
        self.timeout_ns = None;
        self.req = Requester {
            cursor: self.sq_head_seq,
            ..Requester::default()
        };
        self.comp = Completer::default();
        self.resp = Responder::default();
    }

    /// Sets the first PSN to send (RTR -> RTS).
    pub(crate) fn set_sq_psn(&mut self, sq_psn: u32) {
        let sq_psn = sq_psn & psn::PSN_MASK;
        self.req.next_psn = sq_psn;
        self.req.highest_sent = psn::sub(sq_psn, 1);
        self.req.any_sent = false;
        self.req.window = super::MAX_UNACKED_PSNS;
        self.comp.psn = sq_psn;
    }

    /// Sets the first PSN expected (INIT -> RTR).
    pub(crate) fn set_rq_psn(&mut self, rq_psn: u32) {
        let rq_psn = rq_psn & psn::PSN_MASK;
        self.resp.psn = rq_psn;
        self.resp.ack_psn = rq_psn;
    }

    /// Sizes the responder resources (`max_dest_rd_atomic`, at least one slot).
    pub(crate) fn set_responder_resources(&mut self, count: u8) {
        self.resp.resources.clear();
        self.resp
            .resources
            .resize(usize::from(count).max(1), Resource::Empty);
        self.resp.next_resource = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_port_follows_rxe_hash() {
        // hash_32(qpn, 14) = (qpn * 0x61c88647) >> 18, computed independently.
        assert_eq!(udp_source_port(0x11), 0xdf94);
        assert_eq!(udp_source_port(0x12), 0xf806);
        assert_eq!(udp_source_port(0x13), 0xd078);
        for qpn in [0, 1, 0x11, 0xff_ffff, 0x12_3456] {
            assert!(udp_source_port(qpn) >= 0xc000);
        }
    }
}
