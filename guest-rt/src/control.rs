//! The host's requests: the mailbox in this OS's control block.
//!
//! The host writes a request and sends [`CONTROL_VECTOR`]. A workload that can end in order
//! says so ([`handle_end_requests`]) and answers [`Request::End`] itself when it looks for a
//! stop ([`end_requested`]); the interrupt then only wakes it. Any request nobody here handles
//! is answered [`Reply::Unsupported`] by the interrupt handler at once, so the host need not
//! wait for its timeout to know.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shm_ring::bootinfo::BootInfo;
use shm_ring::control::{ControlView, Reply, Request};
use shm_ring::layout::{CONTROL_VECTOR, Role};

/// Guest address of this OS's control block (0 until [`init`]).
static OWN: AtomicU64 = AtomicU64::new(0);
/// Whether the running workload answers end requests itself.
static HANDLES_END: AtomicBool = AtomicBool::new(false);
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
    if HANDLES_END.load(Ordering::Relaxed) {
        // The workload answers when it next looks for a stop; the interrupt woke it.
        return;
    }
    if let Some(own) = own()
        && let Some(pending) = own.pending_request()
    {
        own.answer(pending.sequence, Reply::Unsupported);
    }
}

/// Declares whether the running workload answers end requests through [`end_requested`].
pub fn handle_end_requests(handles: bool) {
    HANDLES_END.store(handles, Ordering::Relaxed);
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
