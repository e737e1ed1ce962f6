//! The shared-segment rings as seen from a guest: attaching this OS's endpoint, and the
//! [`stream::Platform`] that signals with IPIs and sleeps with `hlt`.

use shm_ring::shared::{Endpoint, SharedError};
use shm_ring::stream;

use crate::Platform;
use crate::peer::Peer;

/// How long a sleeping ring side waits before it re-checks on its own (a backstop only: the
/// wake-up handshake makes the peer's IPI arrive).
pub const SLEEP_BACKSTOP_NS: u64 = 10_000_000;

/// Attaches this OS's side of the shared segment.
pub fn attach(platform: &Platform) -> Result<Endpoint, SharedError> {
    let info = &platform.boot_info;
    // SAFETY: the host maps the shared segment at `info.shared` for both OSes for the VM's
    // lifetime (validated against the boot info), and this OS attaches its role's endpoint once.
    unsafe {
        Endpoint::attach(
            info.shared.base as *mut u8,
            info.shared.size as usize,
            &info.shared_layout,
            platform.role,
        )
    }
}

/// Signals the peer with the ring IPI and sleeps until the peer's IPI arrives.
#[derive(Debug)]
pub struct IpiPlatform {
    peer: Peer,
}

impl IpiPlatform {
    /// The platform for talking to `peer`.
    pub fn new(peer: Peer) -> IpiPlatform {
        IpiPlatform { peer }
    }
}

impl stream::Platform for IpiPlatform {
    fn signal_peer(&mut self) {
        self.peer.signal();
    }

    fn arm_sleep(&mut self) -> u64 {
        Peer::ipis_received()
    }

    fn sleep(&mut self, token: u64) {
        crate::wait_until(SLEEP_BACKSTOP_NS, || Peer::ipis_received() != token);
    }

    fn now(&mut self) -> u64 {
        crate::cpu::rdtsc()
    }

    fn ticks_from_ns(&self, nanoseconds: u64) -> u64 {
        crate::time::tsc_ticks_from_ns(nanoseconds)
    }
}
