//! Ctrl-C (SIGINT) and SIGTERM.
//!
//! The first asks every run in progress to end in order, as the platform's stop does: native
//! applications see [`apps::Os::should_stop`] and end their tests with what they have, their
//! OS B closes their connections (so that peers learn of it at once), VMs are asked to end the
//! same way ([`crate::vm::EndRequest`]: OS A through its control mailbox), and the bridges and
//! TAPs made for a run are removed as it returns; the command then reports what it has and
//! exits with status 130. A second signal ends the process at once (the handler gives the
//! signal its default action back when it runs).
//!
//! Only the `host-agent` binary installs the handler ([`install`]); for library users (the
//! tests) [`requested`] stays false.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() -> Result<(), nix::Error> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
        // replaces no handler the program installed.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// Whether the first to see the request has said so.
static ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// Whether the user asked the runs to end. The first call that sees the request tells the
/// user on standard error that the runs are ending, and how to end them at once.
pub fn requested() -> bool {
    let requested = REQUESTED.load(Ordering::Relaxed);
    if requested && !ANNOUNCED.swap(true, Ordering::Relaxed) {
        eprintln!("host-agent: ending in order (Ctrl-C again ends at once)");
    }
    requested
}

/// The error a command that stops between runs returns.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Fails with [`Interrupted`] once the user asked the runs to end: for commands made of
/// several runs, between them.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}
