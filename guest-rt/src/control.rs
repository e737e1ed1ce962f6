//! The host's requests: the mailbox in this OS's control block.
//!
//! The host writes a request and sends [`CONTROL_VECTOR`]. The running workload says whether
//! it can end in order ([`handle_end_requests`]). One that can answers [`Request::End`] itself
//! when it looks for a stop ([`end_requested`]); the interrupt then only wakes it. For one that
//! cannot, the interrupt handler answers every request [`Reply::Unsupported`] at once, so the
//! host need not wait for its timeout to know. Until the workload has said, a request waits in
//! the mailbox.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use shm_ring::bootinfo::BootInfo;
use shm_ring::control::{ControlView, Reply, Request};
use shm_ring::layout::{CONTROL_VECTOR, Role};

/// Guest address of this OS's control block (0 until [`init`]).
static OWN: AtomicU64 = AtomicU64::new(0);
/// Whether the running workload answers end requests itself: [`UNDECIDED`], [`ANSWERS`] or
/// [`CANNOT`].
static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);
/// The workload has not said yet: requests wait.
const UNDECIDED: u8 = 0;
/// The workload answers through [`end_requested`].
const ANSWERS: u8 = 1;
/// The workload cannot end in order: requests are refused.
const CANNOT: u8 = 2;
/// Whether an end request was accepted.
static END_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Notes where this OS's control block is and installs the mailbox interrupt's handler.
pub(crate) fn init(info: &BootInfo, role: Role) {
    OWN.store(crate::control_address(info, role), Ordering::Relaxed);
    crate::interrupts::set_handler(CONTROL_VECTOR, on_signal);
}

fn own() -> Option<ControlView> {
    let address = OWN.load(Ordering::Relaxed);
    // SAFETY: `init` stored the address of this OS's control block, which
    // `BootInfo::validate` checked lies inside the shared segment, mapped for the VM's
    // lifetime and aligned by the host (as for `crate::control_block`).
    (address != 0).then(|| unsafe { ControlView::new(address as *mut u8) })
}

/// Runs on [`CONTROL_VECTOR`] with interrupts off.
fn on_signal(_: u8) {
    // A workload that answers does so when it next looks for a stop: the interrupt woke it.
    if MODE.load(Ordering::Relaxed) == CANNOT {
        refuse_pending();
    }
}

/// Answers the request waiting in the mailbox, if any, with [`Reply::Unsupported`].
fn refuse_pending() {
    if let Some(own) = own()
        && let Some(pending) = own.pending_request()
    {
        own.answer(pending.sequence, Reply::Unsupported);
    }
}

/// Says whether the running workload answers end requests through [`end_requested`]; if it
/// does not, a request already waiting is refused now.
pub fn handle_end_requests(handles: bool) {
    MODE.store(if handles { ANSWERS } else { CANNOT }, Ordering::Relaxed);
    if !handles {
        refuse_pending();
    }
}

/// How many times the host signalled this OS (a change means: look at the mailbox).
pub fn signals() -> u64 {
    crate::interrupts::count(CONTROL_VECTOR)
}

/// Whether the host asked this OS to end. Answers the request waiting in the mailbox, if
/// there is one: an end request is accepted (and stays requested), anything else is
/// unsupported.
pub fn end_requested() -> bool {
    if let Some(own) = own()
        && let Some(pending) = own.pending_request()
    {
        let reply = match Request::from_u32(pending.request) {
            Some(Request::End) => {
                END_REQUESTED.store(true, Ordering::Relaxed);
                Reply::Accepted
            }
            None => Reply::Unsupported,
        };
        own.answer(pending.sequence, reply);
    }
    END_REQUESTED.load(Ordering::Relaxed)
}
