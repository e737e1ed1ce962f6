//! OS A's applications, written once for both platforms.
//!
//! An application sees the network through OS B's service ([`netsvc::Client`] on the rings)
//! and its OS through the [`Os`] trait: a clock, a way to sleep until OS B signals, and a log.
//! The guest kernel implements [`Os`] with the TSC, IPIs and `hlt`; native mode with host
//! threads and eventfds. The applications are the same code either way.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod net;
pub mod netbench;
pub mod rdma;

use alloc::vec::Vec;

/// OS A's client of OS B's network service.
pub type NetClient = netsvc::Client<Vec<u64>>;

/// What an application needs from the OS it runs on.
pub trait Os {
    /// Monotonic nanoseconds.
    fn now_ns(&mut self) -> u64;
    /// Wakes OS B if the client has something for it, then sleeps until OS B signals or
    /// `deadline_ns` passes (whichever is first; spurious early returns are fine). With a
    /// deadline that has passed (0, say) it only wakes OS B.
    fn wait(&mut self, client: &mut NetClient, deadline_ns: u64);
    /// Writes one log line.
    fn log(&mut self, line: core::fmt::Arguments<'_>);
    /// Whether the application was asked to end (servers that would serve forever check it).
    fn should_stop(&mut self) -> bool {
        false
    }
    /// Whether the NIC under OS B computes the ICRC of every RoCEv2 packet sent and drops
    /// received ones whose ICRC is wrong (a VM's virtio-net device does, unless the host turned
    /// it off), so that an RDMA device may leave the ICRCs to it
    /// (`roce::verbs::DeviceConfig::with_icrc_offload`). A device that computes them anyway
    /// still works, only slower.
    fn roce_icrc_offload(&self) -> bool {
        false
    }
}

/// Logs a formatted line through an [`Os`].
#[macro_export]
macro_rules! log {
    ($os:expr, $($arg:tt)*) => { $crate::Os::log($os, format_args!($($arg)*)) };
}

/// The value at `fraction` (0 to 1) of `sorted` (0 if empty).
pub(crate) fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * fraction) as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// How an application ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything checked out.
    Success,
    /// A check failed or the network refused; the log says why.
    Failed,
}
