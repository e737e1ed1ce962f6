//! The per-OS control block in the shared segment: boot state, a report, and the host mailbox.
//!
//! Each OS has one [`ControlBlock`] (at `SharedLayout::control_a` / `control_b`). It is the only
//! place where an OS tells the host and its peer how it is doing:
//!
//! - `state` ([`OsState`]), written by the OS: booting, ready (its local APIC accepts IPIs, so
//!   the peer may now signal it), done or failed;
//! - `report`, written by the OS: counters of the running workload (see [`report`] for the
//!   meaning of each slot), which the host reads when the OS says it published one;
//! - the host's mailbox ([`Request`], [`Reply`]): the host writes a request and bumps
//!   `request_sequence`, then signals the OS with [`CONTROL_VECTOR`]; the OS answers by writing
//!   its reply and setting `reply_sequence` to the request's sequence number. One request is
//!   outstanding at a time; the host gives up on an OS that does not answer in time.
//!
//! Every field is an atomic in guest memory and is read through [`ControlView`], which never
//! forms a reference to memory outside the block. Values read by the host are untrusted, and so
//! are the requests an OS reads: an unknown request is answered with [`Reply::Unsupported`].
//!
//! [`CONTROL_VECTOR`]: crate::layout::CONTROL_VECTOR

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Size reserved for one control block in the shared segment.
pub const CONTROL_BLOCK_SIZE: u64 = 4096;

/// Number of report slots.
pub const REPORT_SLOTS: usize = 32;

/// How far an OS has come. Written by the OS, read by its peer and the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum OsState {
    /// Not yet initialised (the host zeroes the block).
    Booting = 0,
    /// Interrupts are set up: the peer may send IPIs.
    Ready = 1,
    /// The workload finished successfully.
    Done = 2,
    /// The workload failed; the report says why.
    Failed = 3,
}

impl OsState {
    /// The state for a raw value, if it is one.
    pub const fn from_u32(value: u32) -> Option<OsState> {
        match value {
            0 => Some(OsState::Booting),
            1 => Some(OsState::Ready),
            2 => Some(OsState::Done),
            3 => Some(OsState::Failed),
            _ => None,
        }
    }
}

/// What the host asks of an OS through its mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Request {
    /// End the workload in order, as a process ends on SIGTERM: the application stops with
    /// what it has done and reports it, and the OS ends; OS B then closes the connections
    /// OS A left open.
    End = 1,
}

impl Request {
    /// The request for a raw value, if it is one.
    pub const fn from_u32(value: u32) -> Option<Request> {
        match value {
            1 => Some(Request::End),
            _ => None,
        }
    }
}

/// How an OS answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Reply {
    /// The OS does what was asked (for [`Request::End`]: it is ending).
    Accepted = 1,
    /// The OS does not know the request, or its workload cannot do it.
    Unsupported = 2,
}

impl Reply {
    /// The reply for a raw value, if it is one.
    pub const fn from_u32(value: u32) -> Option<Reply> {
        match value {
            1 => Some(Reply::Accepted),
            2 => Some(Reply::Unsupported),
            _ => None,
        }
    }
}

/// A request the host made and the OS has not answered yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Its sequence number, to answer with.
    pub sequence: u32,
    /// The raw request (untrusted: see [`Request::from_u32`]).
    pub request: u32,
}

/// Meaning of each report slot.
pub mod report {
    /// Descriptors produced (OS A) or consumed (OS B) by the ring benchmark.
    pub const DESCRIPTORS: usize = 0;
    /// Payload bytes moved.
    pub const BYTES: usize = 1;
    /// Descriptors whose payload checked out (sequence and checksum).
    pub const VERIFIED: usize = 2;
    /// Descriptors rejected (bad bounds, bad payload, bad sequence).
    pub const REJECTED: usize = 3;
    /// IPIs this OS sent.
    pub const IPIS_SENT: usize = 4;
    /// IPIs this OS received.
    pub const IPIS_RECEIVED: usize = 5;
    /// TSC ticks from the first to the last descriptor.
    pub const ELAPSED_TSC: usize = 6;
    /// Times this OS went to sleep waiting on a ring.
    pub const SLEEPS: usize = 7;
    /// The first error code this OS saw (see the kernel's docs), or 0.
    pub const FIRST_ERROR: usize = 8;
    /// Times this OS polled a ring it found idle and found work before its spin budget ran out
    /// (each a sleep, and an IPI, saved).
    pub const SPINS: usize = 9;
    /// RDMA test: messages completed.
    pub const RDMA_MESSAGES: usize = 10;
    /// RDMA test: payload bytes moved.
    pub const RDMA_BYTES: usize = 11;
    /// RDMA test: nanoseconds from the first post to the last completion.
    pub const RDMA_ELAPSED_NS: usize = 12;
    /// RDMA test: median latency, nanoseconds.
    pub const RDMA_P50_NS: usize = 13;
    /// RDMA test: 99th percentile latency, nanoseconds.
    pub const RDMA_P99_NS: usize = 14;
    /// RDMA test: packets retransmitted.
    pub const RDMA_RETRANSMISSIONS: usize = 15;
    /// RDMA test: 1 if every byte and completion checked out.
    pub const RDMA_VERIFIED: usize = 16;
    /// Network benchmark: goodput messages sent.
    pub const NET_SENT: usize = 17;
    /// Network benchmark: goodput messages the receiver got intact.
    pub const NET_RECEIVED: usize = 18;
    /// Network benchmark: their bytes.
    pub const NET_BYTES: usize = 19;
    /// Network benchmark: nanoseconds from the first message's arrival to the last's.
    pub const NET_ELAPSED_NS: usize = 20;
    /// Network benchmark: round trips that came back intact.
    pub const NET_ROUND_TRIPS: usize = 21;
    /// Network benchmark: median round trip, nanoseconds.
    pub const NET_RTT_P50_NS: usize = 22;
    /// Network benchmark: 99th percentile round trip, nanoseconds.
    pub const NET_RTT_P99_NS: usize = 23;
    /// Network benchmark: 1 if every measurement checked out.
    pub const NET_VERIFIED: usize = 24;
    /// Network benchmark, paced UDP goodput: times the client sent on without a credit.
    pub const NET_CREDIT_STALLS: usize = 25;
}

/// The block as laid out in memory.
#[derive(Debug)]
#[repr(C)]
pub struct ControlBlock {
    /// [`OsState`], written by the OS.
    pub state: AtomicU32,
    /// Bumped by the OS each time it publishes `report`.
    pub report_sequence: AtomicU32,
    /// Bumped by the host for each request it writes.
    pub request_sequence: AtomicU32,
    /// Set by the OS to the `request_sequence` it answered.
    pub reply_sequence: AtomicU32,
    /// Workload counters, written by the OS; see [`report`].
    pub report: [AtomicU64; REPORT_SLOTS],
    /// The host's latest [`Request`], written by the host before it bumps `request_sequence`.
    pub request: AtomicU32,
    /// The OS's [`Reply`] to the request `reply_sequence` names, written by the OS before it
    /// sets `reply_sequence`.
    pub reply: AtomicU32,
}

const _: () = assert!(size_of::<ControlBlock>() as u64 <= CONTROL_BLOCK_SIZE);

/// A handle on a control block in shared memory.
#[derive(Clone, Copy, Debug)]
pub struct ControlView {
    block: *const ControlBlock,
}

// SAFETY: every access goes through atomics; the block is shared memory by design.
unsafe impl Send for ControlView {}
// SAFETY: as above.
unsafe impl Sync for ControlView {}

impl ControlView {
    /// A view of the block at `address`.
    ///
    /// # Safety
    /// `address` must be 8-byte aligned and point at [`CONTROL_BLOCK_SIZE`] bytes of memory that
    /// stays mapped (and is only accessed atomically) for as long as the view is used.
    pub const unsafe fn new(address: *mut u8) -> ControlView {
        ControlView {
            block: address.cast(),
        }
    }

    fn block(&self) -> &ControlBlock {
        // SAFETY: `new`'s contract: the block is mapped, aligned, and only accessed through
        // atomics, and every bit pattern is a valid `ControlBlock`.
        unsafe { &*self.block }
    }

    /// The raw state value (untrusted: see [`OsState::from_u32`]).
    pub fn state(&self) -> u32 {
        self.block().state.load(Ordering::Acquire)
    }

    /// Publishes a new state.
    pub fn set_state(&self, state: OsState) {
        self.block().state.store(state as u32, Ordering::Release);
    }

    /// Reads report slot `slot` (0 if out of range).
    pub fn report(&self, slot: usize) -> u64 {
        match self.block().report.get(slot) {
            Some(value) => value.load(Ordering::Relaxed),
            None => 0,
        }
    }

    /// Writes report slot `slot` (ignored if out of range).
    pub fn set_report(&self, slot: usize, value: u64) {
        if let Some(cell) = self.block().report.get(slot) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    /// Publishes the report: everything written before is visible to a reader of the sequence.
    pub fn publish_report(&self) {
        self.block().report_sequence.fetch_add(1, Ordering::Release);
    }

    /// How many reports were published.
    pub fn report_sequence(&self) -> u32 {
        self.block().report_sequence.load(Ordering::Acquire)
    }

    /// A snapshot of every report slot.
    pub fn reports(&self) -> [u64; REPORT_SLOTS] {
        core::array::from_fn(|slot| self.report(slot))
    }

    /// Host: writes `request` into the mailbox and returns its sequence number. The caller
    /// then signals the OS ([`CONTROL_VECTOR`](crate::layout::CONTROL_VECTOR)). A request
    /// still unanswered is replaced.
    pub fn post_request(&self, request: Request) -> u32 {
        let block = self.block();
        block.request.store(request as u32, Ordering::Relaxed);
        block
            .request_sequence
            .fetch_add(1, Ordering::Release)
            .wrapping_add(1)
    }

    /// Host: the OS's raw reply to request `sequence`, once it answered it (untrusted: see
    /// [`Reply::from_u32`]).
    pub fn reply_to(&self, sequence: u32) -> Option<u32> {
        let block = self.block();
        (block.reply_sequence.load(Ordering::Acquire) == sequence)
            .then(|| block.reply.load(Ordering::Relaxed))
    }

    /// OS: the host's request, if one waits for an answer.
    pub fn pending_request(&self) -> Option<Pending> {
        let block = self.block();
        let sequence = block.request_sequence.load(Ordering::Acquire);
        (sequence != block.reply_sequence.load(Ordering::Relaxed)).then(|| Pending {
            sequence,
            request: block.request.load(Ordering::Relaxed),
        })
    }

    /// OS: answers request `sequence` with `reply`.
    pub fn answer(&self, sequence: u32, reply: Reply) {
        let block = self.block();
        block.reply.store(reply as u32, Ordering::Relaxed);
        block.reply_sequence.store(sequence, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_report_round_trip() {
        let mut memory = vec![0u64; CONTROL_BLOCK_SIZE as usize / 8];
        // SAFETY: the vector is aligned, large enough and outlives the view.
        let view = unsafe { ControlView::new(memory.as_mut_ptr().cast()) };
        assert_eq!(OsState::from_u32(view.state()), Some(OsState::Booting));
        view.set_state(OsState::Ready);
        assert_eq!(OsState::from_u32(view.state()), Some(OsState::Ready));
        view.set_report(report::VERIFIED, 42);
        view.set_report(REPORT_SLOTS, 1);
        view.publish_report();
        assert_eq!(view.report(report::VERIFIED), 42);
        assert_eq!(view.report(REPORT_SLOTS + 5), 0);
        assert_eq!(view.report_sequence(), 1);
        assert_eq!(OsState::from_u32(7), None);
    }

    #[test]
    fn the_mailbox_carries_one_request_and_its_answer() {
        let mut memory = vec![0u64; CONTROL_BLOCK_SIZE as usize / 8];
        // SAFETY: the vector is aligned, large enough and outlives the view.
        let view = unsafe { ControlView::new(memory.as_mut_ptr().cast()) };
        assert_eq!(view.pending_request(), None);
        let sequence = view.post_request(Request::End);
        assert_eq!(view.reply_to(sequence), None);
        let pending = view.pending_request().unwrap();
        assert_eq!(pending.sequence, sequence);
        assert_eq!(Request::from_u32(pending.request), Some(Request::End));
        view.answer(pending.sequence, Reply::Accepted);
        assert_eq!(view.pending_request(), None);
        assert_eq!(
            view.reply_to(sequence).and_then(Reply::from_u32),
            Some(Reply::Accepted)
        );
        // The next request is a new one; the old answer does not answer it.
        let next = view.post_request(Request::End);
        assert_ne!(next, sequence);
        assert_eq!(view.reply_to(next), None);
        assert_eq!(view.pending_request().map(|p| p.sequence), Some(next));
    }

    #[test]
    fn values_the_other_side_scribbled_are_told_apart() {
        let mut memory = vec![0u64; CONTROL_BLOCK_SIZE as usize / 8];
        // SAFETY: the vector is aligned, large enough and outlives the view.
        let view = unsafe { ControlView::new(memory.as_mut_ptr().cast()) };
        let block = view.block();
        // A request the OS does not know.
        block.request.store(77, Ordering::Relaxed);
        block.request_sequence.store(u32::MAX, Ordering::Relaxed);
        let pending = view.pending_request().unwrap();
        assert_eq!(Request::from_u32(pending.request), None);
        view.answer(pending.sequence, Reply::Unsupported);
        // The sequence wraps.
        assert_eq!(view.post_request(Request::End), 0);
        // A reply the host does not know, to a request it did not make.
        block.reply.store(9, Ordering::Relaxed);
        block.reply_sequence.store(5, Ordering::Relaxed);
        assert_eq!(view.reply_to(0), None);
        assert_eq!(view.reply_to(5).and_then(Reply::from_u32), None);
        assert_eq!(Request::from_u32(0), None);
        assert_eq!(Reply::from_u32(0), None);
    }
}
