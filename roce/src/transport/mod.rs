//! The RC transport engine: how a platform drives a [`Device`], and how the engine behaves.
//!
//! # Driving the engine
//!
//! The engine never reads a clock and never blocks. Every entry point takes `now`, a
//! monotonic time in nanoseconds, and the platform calls them:
//!
//! * [`Device::receive`] with every IPv4 packet that arrived (OS B strips the Ethernet
//!   header). Anything malformed, with a wrong checksum or ICRC, for another address or an
//!   unknown QP is dropped and counted ([`Counters`]), never answered, as rxe does.
//! * [`Device::poll_transmit`] with a buffer of at least [`Device::max_packet_len`] bytes,
//!   until it returns `None`: each call writes one whole IPv4 packet (IPv4 header with its
//!   identification and checksum, UDP header, IB headers, payload, pad, ICRC) at the start of
//!   the buffer and returns its length. The payload is copied straight from the memory
//!   region into the buffer with the ICRC folded into the copy, so the buffer can be a packet
//!   buffer of the shared-memory pool; OS B only puts an Ethernet header in front. Call it
//!   after `receive`, after posting work requests and when the timer fires;
//!   [`Device::wants_transmit`] says whether it may have something.
//! * [`Device::next_deadline`]: when to call [`Device::handle_timeouts`] (or any entry
//!   point) at the latest, for retransmission and RNR timers; `None` when no timer runs.
//!
//! # Behaviour (rdma_rxe's, checked against `rxe_req.c`, `rxe_resp.c`, `rxe_comp.c`)
//!
//! *Requester.* Messages are cut into FIRST/MIDDLE/LAST packets of the path MTU (ONLY when
//! one packet holds them); WRITE FIRST/ONLY carry the RETH with the whole length, the last
//! packet of a `*_WITH_IMM` carries the immediate data. AckReq is set on the last packet of
//! every message and on every [`ACK_REQUEST_INTERVAL`]th packet (rxe: every 64th) so that
//! long messages are acknowledged as they go. At most [`MAX_UNACKED_PSNS`] PSNs are in
//! flight (as rxe); a READ request takes one PSN per response packet; at most
//! `max_rd_atomic` READ and atomic requests are outstanding; a FENCEd request waits for
//! every earlier one. P_Key 0xFFFF, transport version 0, MigReq 0, pad to a multiple of
//! four, the UDP source port of [`udp_source_port`] (rxe's hash of the QP number), the IPv4
//! identification counts up by one per packet of the device, DF set, TTL = the address
//! vector's hop limit (default 64), TOS = its traffic class.
//!
//! *Responder.* In PSN order only. A request after the expected PSN is dropped; the first one
//! of a gap is answered with a PSN sequence error NAK carrying the expected PSN, and no other
//! NAK is sent for the gap (rxe's `sent_psn_nak`) except as described below. A duplicate
//! SEND or WRITE is acknowledged again (with the PSN of the last request acknowledged) and
//! not executed again; a duplicate READ is answered again from the READ's responder
//! resource (rechecking the rkey), from the duplicate's PSN, with FIRST/ONLY when it is the
//! READ's first PSN and MIDDLE/LAST otherwise; a duplicate atomic gets the saved original
//! value again, never a second execution. `max_dest_rd_atomic` resources are recycled
//! oldest first. A SEND (or WRITE with immediate) finding no receive posted gets an RNR NAK
//! with the QP's `min_rnr_timer`, for its PSN. Opcode sequence, QP access flags, lengths
//! (FIRST and MIDDLE exactly one MTU, LAST 1..MTU, ONLY up to MTU, a WRITE's packets
//! matching its RETH length), rkey, protection domain, address range, access and 8-byte
//! alignment of atomics are checked; a failure sends a NAK (invalid request, remote access
//! error, remote operational error), completes the receive it concerned with an error, and
//! moves the QP to ERR (rxe's class C errors). ACKs carry the MSN and the "invalid" credit
//! count 0x1F; ACKs are coalesced when the platform polls less often than they are produced
//! (the newest ACK replaces a queued one). READ responses carry the AETH on
//! FIRST/LAST/ONLY.
//!
//! *Completer.* An ACK for PSN `n` completes every request whose last PSN is at or before
//! `n`. A response past an uncompleted READ or atomic means its response was lost: implicit
//! NAK. A PSN sequence error NAK, an implicit NAK or a timeout starts a go-back-N from the
//! oldest unacknowledged PSN (at most one per episode, as rxe's `started_retry`), each
//! costing one of `retry_cnt` retries (7: unlimited, as rxe has it), refilled by progress;
//! when none is left the request completes with `RETRY_EXC_ERR`. The timer is
//! `4.096 us << timeout` (0: none) and restarts on progress. An RNR NAK pauses sending for its
//! timer, then goes back to its PSN; it costs one of `rnr_retry` (7: unlimited) or ends with
//! `RNR_RETRY_EXC_ERR`. Invalid request, remote access and remote operational error NAKs
//! complete the request with `REM_INV_REQ_ERR`, `REM_ACCESS_ERR`, `REM_OP_ERR`. Any error
//! moves the QP to ERR, which completes every other outstanding or later request (send and
//! receive) with `WR_FLUSH_ERR`. Every posted work request completes exactly once.
//!
//! # Faster recovery than rxe
//!
//! Go-back-N resends everything after a lost packet; with rxe's fixed window of 128 PSNs a
//! few percent of loss or reordering multiplies the traffic several times. Three changes,
//! none visible to a peer as anything but a correct RC requester or responder (an rxe peer
//! interoperates unchanged), cut that cost (`recovery_cost` in `tests/transport_sim.rs`: at
//! 5% loss 2.9 packets per packet delivered instead of 7.2, and 2.4 times faster; at 10%
//! reordering 3.1 instead of 21):
//!
//! * *Adaptive window.* The PSNs in flight are limited by a window that starts at
//!   [`MAX_UNACKED_PSNS`], halves at every go-back-N (down to [`MIN_WINDOW`]; a timeout goes
//!   straight to it) and grows by the PSNs each ACK acknowledges. AckReq is also set on the
//!   packet that fills the window and every quarter window, so that a small window never
//!   waits for an ACK nobody asked for.
//! * *Renewed sequence NAK.* When the request right after the gap arrives again after
//!   later ones (the requester went back, and its resent copy of the expected PSN was lost
//!   as well), the responder sends the sequence NAK again; rxe stays silent and lets the
//!   requester's timer expire. Such a NAK starts another go-back-N if the requester has
//!   resent the oldest PSN since its last one, at most [`MAX_RENEWALS`] times per episode
//!   and without spending `retry_cnt` (a late copy of an old NAK looks the same).
//! * *Partial ACKs during a go-back-N* move the resend point past what they acknowledge.
//!
//! # Other departures from rxe
//!
//! All invisible on the wire to a correct peer: a sequence NAK that acknowledges new PSNs
//! refills the retry budget like any progress (rxe gives up sooner under heavy loss); an RNR NAK
//! acknowledges the packets before its PSN and pauses the requester for the whole RNR time
//! (rxe may restart earlier when new work is posted); responses that make no sense (wrong
//! opcode order, lengths, an ACK inside a READ) are dropped and counted instead of moving
//! the QP to ERR; a receive buffer too small for a SEND completes with `LOC_LEN_ERR` (rxe:
//! `REM_INV_REQ_ERR`) while the requester gets the same invalid request NAK; SEND with
//! invalidate is refused with an invalid request NAK (no memory windows here); a message
//! may take at most [`MAX_MESSAGE_PACKETS`](crate::verbs::MAX_MESSAGE_PACKETS) PSNs.

pub mod counters;
pub mod psn;
pub(crate) mod qp;

mod completer;
mod requester;
mod responder;

pub use self::counters::{Counters, DropCounters, ExecutedCounters};
pub use self::qp::{DEFAULT_TTL, MAX_SGE, udp_source_port};

use crate::icrc::Icrc;
use crate::verbs::{CqTable, Device, MrFault, MrTable};
use crate::wire::{self, Operation, Rocev2Packet, Rocev2Repr, Transport};
use core::net::Ipv4Addr;

/// Unacknowledged PSNs a QP may have in flight (rxe's `RXE_MAX_UNACKED_PSNS`).
pub const MAX_UNACKED_PSNS: u32 = 128;

/// The smallest send window: after losses the requester keeps at least this many PSNs in
/// flight.
pub const MIN_WINDOW: u32 = 4;

/// A `retry_cnt` or `rnr_retry` of this value never runs out. The IBTA gives 7 that meaning
/// for `rnr_retry` only; rdma_rxe gives it to both, and so does this engine, so that a QP
/// set up as `ibv_rc_pingpong` and perftest set theirs (both 7) outlasts a silent peer as an
/// rxe QP does. Use 0 to 6 for a QP that should give up.
pub const UNLIMITED_RETRIES: u8 = 7;

/// Go-back-Ns a renewed sequence NAK may start in one episode (without progress); they do
/// not spend `retry_cnt`, and beyond them the retransmission timer decides.
pub const MAX_RENEWALS: u8 = 3;

/// A request packet asks for an acknowledgement at least this often (rxe asks every 64
/// packets; more often keeps the window of [`MAX_UNACKED_PSNS`] moving without stalls).
pub const ACK_REQUEST_INTERVAL: u32 = 32;

/// Responses a QP queues before it drops further requests (which the requester repeats).
pub const RESPONSE_QUEUE_LIMIT: usize = 512;

/// The longest packet: IPv4, UDP, BTH, the longest extension headers (AtomicETH, 28 bytes),
/// payload, pad, ICRC.
pub const fn max_packet_len(mtu_bytes: u32) -> usize {
    20 + 8 + 12 + 28 + mtu_bytes as usize + 3 + 4
}

/// What the engines need of the device while working on one QP.
pub(crate) struct Env<'a> {
    pub mrs: &'a mut MrTable,
    pub cqs: &'a mut CqTable,
    pub counters: &'a mut crate::transport::Counters,
    pub now: u64,
}

/// The device-wide values of an outgoing packet.
pub(crate) struct Link {
    pub src_addr: Ipv4Addr,
    pub identification: u16,
    /// The NIC fills in the ICRC ([`crate::verbs::DeviceConfig::icrc_offload`]).
    pub icrc_offload: bool,
}

/// The result of asking a QP for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transmit {
    /// A packet of this many bytes was written.
    Sent(usize),
    /// The next packet does not fit the buffer; nothing changed.
    NoRoom,
    /// Nothing to send now.
    Idle,
}

/// Why a packet could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmitError {
    NoRoom,
    Fault(MrFault),
}

/// Writes the packet `repr` into `out`, its payload written by `fill` (which copies it with
/// [`Icrc::update_copy`]); returns the packet's length.
pub(crate) fn emit(
    out: &mut [u8],
    link: &Link,
    repr: &Rocev2Repr,
    fill: impl FnOnce(&mut [u8], &mut Icrc) -> Result<(), MrFault>,
) -> Result<usize, EmitError> {
    let length = repr.buffer_len();
    let Some(buffer) = out.get_mut(..length) else {
        return Err(EmitError::NoRoom);
    };
    // The engines build consistent headers, so this fails only on an engine bug; the
    // request is then failed rather than retried forever.
    let headers = if link.icrc_offload {
        repr.emit_headers_offloaded(buffer)
    } else {
        repr.emit_headers(buffer)
    };
    let mut icrc = headers.map_err(|_| EmitError::Fault(MrFault::Range))?;
    fill(&mut buffer[repr.payload_range()], &mut icrc).map_err(EmitError::Fault)?;
    repr.emit_icrc(buffer, icrc)
        .map_err(|_| EmitError::Fault(MrFault::Range))?;
    Ok(length)
}

impl Device {
    /// Takes one received IPv4 packet (without Ethernet header; trailing Ethernet padding is
    /// ignored). Invalid packets are dropped and counted.
    pub fn receive(&mut self, packet: &[u8], now: u64) {
        self.handle_timeouts(now);
        self.counters.packets_received += 1;
        self.counters.bytes_received += packet.len() as u64;
        // The structure is checked once, for both looks at the packet.
        let view = match Rocev2Packet::new_checked(packet) {
            Ok(view) => view,
            Err(error) => return self.count_bad_packet(error),
        };
        if self.acknowledge_duplicate(&view) {
            return;
        }
        let parsed = Rocev2Repr::parse_checked(&view).and_then(|repr| {
            if !self.config.icrc_offload {
                view.verify_icrc()?;
            }
            Ok(repr)
        });
        let repr = match parsed {
            Ok(repr) => repr,
            Err(error) => return self.count_bad_packet(error),
        };
        if repr.dst_addr != self.config.ipv4_addr {
            self.counters.drops.wrong_destination += 1;
            return;
        }
        let bth = &repr.ib.bth;
        let info = match bth.opcode.info() {
            Some(info)
                if bth.transport_version == wire::bth::TRANSPORT_VERSION
                    && bth.pkey & 0x7fff == 0x7fff
                    && bth.opcode.transport() == Transport::ReliableConnection =>
            {
                info
            }
            _ => {
                self.counters.drops.bad_header += 1;
                return;
            }
        };
        let slot = match bth
            .dest_qpn
            .checked_sub(crate::verbs::FIRST_QPN)
            .map(|slot| slot as usize)
        {
            Some(slot) if matches!(self.qps.get(slot), Some(Some(_))) => slot,
            _ => {
                self.counters.drops.unknown_qp += 1;
                return;
            }
        };
        let Device {
            qps,
            mrs,
            cqs,
            counters,
            ..
        } = self;
        let Some(qp) = qps[slot].as_mut() else {
            return;
        };
        if repr.src_addr != qp.dest_addr {
            counters.drops.wrong_source += 1;
            return;
        }
        let mut env = Env {
            mrs,
            cqs,
            counters,
            now,
        };
        let ib_packet = view.ib();
        let payload = ib_packet.payload();
        if info.is_request() {
            if !qp.can_respond() {
                env.counters.drops.bad_state += 1;
                return;
            }
            responder::handle_request(qp, &mut env, &repr.ib, payload);
        } else if info.is_response() {
            if !qp.can_send() {
                env.counters.drops.bad_state += 1;
                return;
            }
            completer::handle_response(qp, &mut env, &repr.ib, payload);
        } else {
            env.counters.drops.bad_header += 1;
            return;
        }
        self.note_timers(slot);
        self.schedule(slot);
    }

    /// Counts a packet dropped for `error`.
    fn count_bad_packet(&mut self, error: wire::Error) {
        let drops = &mut self.counters.drops;
        match error {
            wire::Error::BadIcrc => self.counters.icrc_errors += 1,
            wire::Error::BadChecksum => drops.bad_checksum += 1,
            wire::Error::Unsupported => drops.unsupported += 1,
            _ => drops.malformed += 1,
        }
    }

    /// Answers a SEND or RDMA WRITE packet that the responder took already, from its headers
    /// alone, before the ICRC over its payload is computed. A peer that resends a long
    /// message again and again (rxe does, every timeout, from its last acknowledged PSN) would
    /// otherwise cost a CRC of every copy, and a receiver slower than the resends would spend
    /// its time on copies it holds already while the packets it lacks wait behind them. The
    /// only answer is an ACK of what this side holds, so an unverified header cannot make it
    /// do anything else. Returns whether the packet was handled.
    fn acknowledge_duplicate(&mut self, view: &Rocev2Packet<&[u8]>) -> bool {
        let ib = view.ib();
        let bth = ib.bth();
        let Some(info) = bth.opcode().info() else {
            return false;
        };
        if !info.is_request()
            || !matches!(info.operation, Operation::Send | Operation::RdmaWrite)
            || bth.opcode().transport() != Transport::ReliableConnection
            || view.ipv4().dst_addr() != self.config.ipv4_addr
        {
            return false;
        }
        let Some(Some(qp)) = bth
            .dest_qpn()
            .checked_sub(crate::verbs::FIRST_QPN)
            .and_then(|slot| self.qps.get_mut(slot as usize))
        else {
            return false;
        };
        if view.ipv4().src_addr() != qp.dest_addr
            || !qp.can_respond()
            || psn::diff(bth.psn(), qp.resp.psn) >= 0
        {
            return false;
        }
        self.counters.duplicate_requests += 1;
        responder::acknowledge_again(qp);
        let slot = (bth.dest_qpn() - crate::verbs::FIRST_QPN) as usize;
        self.note_timers(slot);
        self.schedule(slot);
        true
    }

    /// Writes the next packet to send at the start of `out` and returns its length, or
    /// `None` when there is nothing to send (or the packet does not fit `out`; a buffer of
    /// [`Device::max_packet_len`] bytes always fits). QPs take turns packet by packet.
    pub fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<usize> {
        self.handle_timeouts(now);
        while let Some(&slot) = self.schedule.front() {
            match self.transmit_slot(slot, now, out) {
                Transmit::Sent(length) => {
                    self.identification = self.identification.wrapping_add(1);
                    self.counters.packets_sent += 1;
                    self.counters.bytes_sent += length as u64;
                    self.note_timers(slot);
                    // To the back of the line (`rotate_left(1)` costs more than this).
                    self.schedule.pop_front();
                    self.schedule.push_back(slot);
                    return Some(length);
                }
                Transmit::NoRoom => return None,
                Transmit::Idle => {
                    self.schedule.pop_front();
                    if let Some(Some(qp)) = self.qps.get_mut(slot) {
                        qp.scheduled = false;
                    }
                    self.note_timers(slot);
                }
            }
        }
        None
    }

    fn transmit_slot(&mut self, slot: usize, now: u64, out: &mut [u8]) -> Transmit {
        let Device {
            qps,
            mrs,
            cqs,
            counters,
            config,
            identification,
            ..
        } = self;
        let Some(Some(qp)) = qps.get_mut(slot) else {
            return Transmit::Idle;
        };
        // A QP stays scheduled after each packet it sends and is looked at once more before
        // it leaves the schedule: that look costs two comparisons, not two calls.
        let requests = |qp: &qp::QueuePair| qp.can_send() && requester::may_have_packet(qp);
        let responds = !qp.resp.out.is_empty();
        if !responds && !requests(qp) {
            return Transmit::Idle;
        }
        let mut env = Env {
            mrs,
            cqs,
            counters,
            now,
        };
        let link = Link {
            src_addr: config.ipv4_addr,
            identification: *identification,
            icrc_offload: config.icrc_offload,
        };
        if responds {
            match responder::transmit(qp, &mut env, &link, out) {
                Transmit::Idle => {}
                done => return done,
            }
        }
        if requests(qp) {
            requester::transmit(qp, &mut env, &link, out)
        } else {
            Transmit::Idle
        }
    }

    /// Whether [`Device::poll_transmit`] may have a packet.
    pub fn wants_transmit(&self) -> bool {
        !self.schedule.is_empty()
    }

    /// The earliest time a retransmission or RNR timer of some QP fires; `None` if none runs.
    /// The platform arms its timer for it and then calls [`Device::handle_timeouts`] (or
    /// any entry point, which handles expired timers first).
    pub fn next_deadline(&self) -> Option<u64> {
        self.qps
            .iter()
            .flatten()
            .fold(None, |floor, qp| earliest(floor, qp.next_deadline()))
    }

    /// Runs the timers that expired at `now`: retransmission (go-back-N, or
    /// `RETRY_EXC_ERR` when the retries are used up) and the end of RNR waits.
    #[inline]
    pub fn handle_timeouts(&mut self, now: u64) {
        // Every entry point comes here first, and almost always no timer is due: that check
        // stays inline, the walk over the QPs does not.
        if self.timer_floor.is_some_and(|floor| floor <= now) {
            self.run_timers(now);
        }
    }

    /// [`Device::handle_timeouts`] once some timer is due.
    #[inline(never)]
    fn run_timers(&mut self, now: u64) {
        let mut floor: Option<u64> = None;
        for slot in 0..self.qps.len() {
            let Device {
                qps,
                mrs,
                cqs,
                counters,
                ..
            } = self;
            let Some(qp) = qps[slot].as_mut() else {
                continue;
            };
            let mut env = Env {
                mrs,
                cqs,
                counters,
                now,
            };
            let mut fired = false;
            if qp.req.rnr_until.is_some_and(|until| until <= now) {
                qp.req.rnr_until = None;
                fired = true;
            }
            if qp.comp.deadline.is_some_and(|deadline| deadline <= now) {
                completer::on_timeout(qp, &mut env);
                fired = true;
            }
            floor = earliest(floor, qp.next_deadline());
            if fired {
                self.schedule(slot);
            }
        }
        self.timer_floor = floor;
    }

    /// Lowers the timer floor to the QP's deadlines.
    fn note_timers(&mut self, slot: usize) {
        if let Some(Some(qp)) = self.qps.get(slot) {
            self.timer_floor = earliest(self.timer_floor, qp.next_deadline());
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The longest packet [`Device::poll_transmit`] writes: a buffer this long always fits.
    pub fn max_packet_len(&self) -> usize {
        max_packet_len(self.config.active_mtu.bytes())
    }
}

/// The earlier of two optional times.
pub(crate) fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The IPv4/UDP encapsulation of an IB packet of `qp`.
pub(crate) fn encapsulate(qp: &qp::QueuePair, link: &Link, ib: wire::RoceRepr) -> Rocev2Repr {
    Rocev2Repr {
        src_addr: link.src_addr,
        dst_addr: qp.dest_addr,
        traffic_class: qp.traffic_class,
        ttl: qp.ttl,
        identification: link.identification,
        src_port: qp.src_port,
        ib,
    }
}

/// A BTH of `qp` to its peer, pad count 0 (set by `RoceRepr::with_payload_len`).
pub(crate) fn bth(qp: &qp::QueuePair, opcode: wire::Opcode, psn: u32) -> wire::BthRepr {
    wire::BthRepr {
        opcode,
        solicited_event: false,
        migration_request: false,
        pad_count: 0,
        transport_version: wire::bth::TRANSPORT_VERSION,
        pkey: wire::bth::DEFAULT_PKEY,
        fecn: false,
        becn: false,
        dest_qpn: qp.attr.dest_qp_num,
        ack_request: false,
        psn,
    }
}
