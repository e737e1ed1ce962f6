//! The completer: takes the peer's responses, places READ data and atomic results, retires
//! send work requests, and decides on retries (rxe `rxe_comp.c`).

use super::qp::QueuePair;
use super::{Env, MAX_RENEWALS, MAX_UNACKED_PSNS, MIN_WINDOW, UNLIMITED_RETRIES, psn};
use crate::verbs::WcStatus;
use crate::wire::aeth::rnr_timer_micros;
use crate::wire::{NakCode, Operation, RoceRepr, Syndrome};

/// Completes the request at the head with an error and moves the QP to ERR.
fn fail(qp: &mut QueuePair, env: &mut Env<'_>, status: WcStatus) {
    qp.complete_send_head(env, status);
    qp.enter_error(env, false);
}

/// What started a go-back-N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The retransmission timer.
    Timeout,
    /// A PSN sequence error NAK.
    SequenceNak,
    /// A response that shows an earlier response was lost.
    ImplicitNak,
}

/// Starts a go-back-N from the oldest unacknowledged PSN if none is under way (or this is a
/// timeout), spending one retry; fails the head request when none is left.
fn retry(qp: &mut QueuePair, env: &mut Env<'_>, cause: Cause) {
    // One go-back-N per episode (rxe's `started_retry`), unless a timeout, or unless a NAK
    // reports the packet at the oldest PSN missing after it was resent (a few times per
    // episode, without spending a retry: such NAKs can also be late copies).
    let timeout = cause == Cause::Timeout;
    let renewed = cause == Cause::SequenceNak
        && qp.comp.started_retry
        && qp.req.resent_oldest
        && qp.comp.renewals < MAX_RENEWALS;
    if !qp.outstanding() || (qp.comp.started_retry && !timeout && !renewed) {
        return;
    }
    qp.req.resent_oldest = false;
    if renewed {
        qp.comp.renewals += 1;
    } else {
        if qp.comp.retry_cnt == 0 {
            env.counters.retry_exceeded += 1;
            return fail(qp, env, WcStatus::RetryExcErr);
        }
        if qp.comp.retry_cnt != UNLIMITED_RETRIES {
            qp.comp.retry_cnt -= 1;
        }
        qp.comp.renewals = 0;
    }
    qp.comp.started_retry = true;
    // Fewer packets in flight after a loss: each go-back-N then resends fewer, and a
    // congested path gets relief. A timeout starts again from the smallest window.
    qp.req.window = if timeout {
        MIN_WINDOW
    } else {
        (qp.req.window / 2).max(MIN_WINDOW)
    };
    qp.req.need_retry = true;
    env.counters.retries += 1;
    qp.restart_timer(env.now);
}

/// The retransmission timer fired.
pub(crate) fn on_timeout(qp: &mut QueuePair, env: &mut Env<'_>) {
    qp.comp.deadline = None;
    if qp.outstanding() {
        env.counters.timeouts += 1;
        retry(qp, env, Cause::Timeout);
    }
}

/// Takes a response packet (ACK/NAK, READ response, atomic ACK) of the QP's peer.
pub(crate) fn handle_response(
    qp: &mut QueuePair,
    env: &mut Env<'_>,
    ib: &RoceRepr,
    payload: &[u8],
) {
    let psn = ib.bth.psn;
    let Some(info) = ib.bth.opcode.info() else {
        return;
    };
    if !qp.req.any_sent || psn::diff(psn, qp.req.highest_sent) > 0 {
        // Answers something never sent.
        env.counters.drops.unexpected_response += 1;
        return;
    }
    let oldest = qp.comp.psn;
    let mut progress = false;
    loop {
        let Some(wqe) = qp.sq.front() else {
            env.counters.drops.unexpected_response += 1;
            break;
        };
        if !wqe.started {
            env.counters.drops.unexpected_response += 1;
            break;
        }
        if psn::diff(psn, wqe.last_psn) > 0 {
            // The peer is past this request.
            if wqe.is_read_or_atomic() {
                // Its response was lost: implicit NAK.
                retry(qp, env, Cause::ImplicitNak);
                env.counters.drops.unexpected_response += 1;
                break;
            }
            // A coalesced ACK acknowledges it.
            let next = psn::add(wqe.last_psn, 1);
            if psn::diff(next, qp.comp.psn) > 0 {
                qp.comp.psn = next;
            }
            qp.reset_retry_counters();
            qp.complete_send_head(env, WcStatus::Success);
            progress = true;
            continue;
        }
        let distance = psn::diff(psn, qp.comp.psn);
        if distance < 0 {
            // Already seen (a duplicate or a late ACK).
            env.counters.drops.unexpected_response += 1;
            break;
        }
        if distance > 0 && wqe.is_read_or_atomic() {
            // A READ response packet was lost: the rest is out of order, implicit NAK.
            if matches!(
                info.operation,
                Operation::RdmaReadResponse | Operation::AtomicAcknowledge
            ) {
                retry(qp, env, Cause::ImplicitNak);
            }
            env.counters.drops.unexpected_response += 1;
            break;
        }
        progress |= match info.operation {
            Operation::RdmaReadResponse => read_response(qp, env, ib, payload),
            Operation::AtomicAcknowledge => atomic_acknowledge(qp, env, ib),
            Operation::Acknowledge => acknowledge(qp, env, ib, distance),
            _ => {
                env.counters.drops.unexpected_response += 1;
                false
            }
        };
        break;
    }
    let acknowledged = psn::diff(qp.comp.psn, oldest).max(0) as u32;
    env.counters.acknowledged_psns += u64::from(acknowledged);
    if progress && qp.can_send() {
        qp.restart_timer(env.now);
        // Grow the window by the PSNs acknowledged (doubling per round trip).
        qp.req.window = (qp.req.window + acknowledged).min(MAX_UNACKED_PSNS);
    }
}

/// A READ response packet at the expected PSN; returns whether it was taken.
fn read_response(qp: &mut QueuePair, env: &mut Env<'_>, ib: &RoceRepr, payload: &[u8]) -> bool {
    let psn = ib.bth.psn;
    let Some(wqe) = qp.sq.front() else {
        return false;
    };
    let aeth_ok = ib.aeth.is_none_or(|aeth| aeth.syndrome.is_ack());
    let ends = ib
        .bth
        .opcode
        .info()
        .is_some_and(|info| info.position.ends_message());
    let offset = u64::from(psn::diff(psn, wqe.first_psn) as u32) * u64::from(qp.mtu);
    let remaining = u64::from(wqe.length).checked_sub(offset);
    let fits = remaining.is_some_and(|remaining| {
        payload.len() as u64 == remaining.min(u64::from(qp.mtu))
            && ends == (remaining <= u64::from(qp.mtu))
    });
    if !wqe.is_read() || !aeth_ok || !fits {
        env.counters.drops.unexpected_response += 1;
        return false;
    }
    if env
        .mrs
        .scatter(wqe.sges.as_slice(), offset, payload)
        .is_err()
    {
        fail(qp, env, WcStatus::LocProtErr);
        return false;
    }
    qp.reset_retry_counters();
    qp.comp.psn = psn::add(psn, 1);
    if ends {
        qp.complete_send_head(env, WcStatus::Success);
    } else {
        qp.skip_acknowledged();
    }
    true
}

/// An ATOMIC Acknowledge at the expected PSN.
fn atomic_acknowledge(qp: &mut QueuePair, env: &mut Env<'_>, ib: &RoceRepr) -> bool {
    let Some(wqe) = qp.sq.front() else {
        return false;
    };
    let (Some(aeth), Some(ack)) = (ib.aeth, ib.atomic_ack_eth) else {
        return false;
    };
    if !wqe.is_atomic() || !aeth.syndrome.is_ack() {
        env.counters.drops.unexpected_response += 1;
        return false;
    }
    let original = ack.original_data.to_le_bytes();
    if env.mrs.scatter(wqe.sges.as_slice(), 0, &original).is_err() {
        fail(qp, env, WcStatus::LocProtErr);
        return false;
    }
    qp.reset_retry_counters();
    qp.comp.psn = psn::add(ib.bth.psn, 1);
    qp.complete_send_head(env, WcStatus::Success);
    true
}

/// An Acknowledge (ACK, RNR NAK or NAK) for a PSN of the request at the head, `distance`
/// PSNs after the oldest unacknowledged one.
fn acknowledge(qp: &mut QueuePair, env: &mut Env<'_>, ib: &RoceRepr, distance: i32) -> bool {
    let psn = ib.bth.psn;
    let Some(aeth) = ib.aeth else {
        return false;
    };
    let Some(wqe) = qp.sq.front() else {
        return false;
    };
    let (read_or_atomic, last_psn) = (wqe.is_read_or_atomic(), wqe.last_psn);
    match aeth.syndrome {
        Syndrome::Ack { .. } => {
            if read_or_atomic {
                // Inside a READ or atomic: only its own responses acknowledge it.
                env.counters.drops.unexpected_response += 1;
                return false;
            }
            qp.reset_retry_counters();
            let last = psn == last_psn;
            qp.comp.psn = psn::add(psn, 1);
            if last {
                qp.complete_send_head(env, WcStatus::Success);
            } else {
                qp.skip_acknowledged();
            }
            true
        }
        Syndrome::RnrNak { timer } => {
            env.counters.rnr_naks_received += 1;
            if qp.req.rnr_until.is_some() {
                return false;
            }
            if qp.comp.rnr_retry == 0 {
                env.counters.rnr_retry_exceeded += 1;
                fail(qp, env, WcStatus::RnrRetryExcErr);
                return false;
            }
            if qp.comp.rnr_retry != UNLIMITED_RETRIES {
                qp.comp.rnr_retry -= 1;
            }
            // The packets before the NAKed one were taken.
            qp.comp.psn = psn;
            qp.req.rnr_until = Some(
                env.now
                    .saturating_add(u64::from(rnr_timer_micros(timer)) * 1000),
            );
            qp.req.need_retry = true;
            qp.comp.started_retry = false;
            qp.comp.deadline = None;
            distance > 0
        }
        Syndrome::Nak(NakCode::PsnSequenceError) => {
            env.counters.seq_naks_received += 1;
            if qp.req.rnr_until.is_some() {
                // Sending resumes from the oldest PSN after the RNR wait anyway.
                return false;
            }
            if distance > 0 {
                // The NAK acknowledges the packets before its PSN: progress, and a new
                // episode (rxe does not refill the retry budget here, and gives up sooner
                // under heavy loss).
                qp.comp.psn = psn;
                qp.reset_retry_counters();
            }
            retry(qp, env, Cause::SequenceNak);
            distance > 0
        }
        Syndrome::Nak(code) => {
            env.counters.error_naks_received += 1;
            let status = match code {
                NakCode::InvalidRequest => WcStatus::RemInvReqErr,
                NakCode::RemoteAccessError => WcStatus::RemAccessErr,
                _ => WcStatus::RemOpErr,
            };
            fail(qp, env, status);
            false
        }
        Syndrome::Reserved(_) => {
            env.counters.drops.unexpected_response += 1;
            false
        }
    }
}
