//! The other OS of the pair: its readiness and the ring IPI.

use core::sync::atomic::{AtomicU64, Ordering};

use shm_ring::control::{ControlView, OsState};
use shm_ring::layout::RING_VECTOR;

use crate::Platform;

static IPIS_SENT: AtomicU64 = AtomicU64::new(0);

/// This OS's and the peer's control blocks, and the peer's APIC ID.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// This OS's control block.
    pub own: ControlView,
    /// The peer's control block (read only: its fields are untrusted).
    pub peer: ControlView,
    peer_apic_id: u32,
}

impl Peer {
    /// The peer of the running OS.
    pub fn new(platform: &Platform) -> Peer {
        let info = &platform.boot_info;
        Peer {
            own: crate::control_block(info, platform.role),
            peer: crate::control_block(info, platform.role.peer()),
            peer_apic_id: info.peer_apic_id,
        }
    }

    /// Tells the peer (and the host) that this OS's interrupts are up.
    pub fn announce_ready(&self) {
        self.own.set_state(OsState::Ready);
    }

    /// Waits until the peer has announced that it is ready for IPIs.
    pub fn wait_ready(&self) {
        crate::wait_until(1_000_000, || self.peer.state() != OsState::Booting as u32);
    }

    /// Sends the ring IPI to the peer.
    pub fn signal(&self) {
        IPIS_SENT.fetch_add(1, Ordering::Relaxed);
        crate::lapic::send_ipi(self.peer_apic_id, RING_VECTOR);
    }

    /// Ends this OS with `status`, publishing its final state (done or failed) first so that
    /// the peer and the host see it.
    pub fn finish(&self, status: crate::exit::Status) -> ! {
        let state = if status == crate::exit::Status::Success {
            OsState::Done
        } else {
            OsState::Failed
        };
        self.own.set_state(state);
        crate::exit::exit(status)
    }

    /// How many ring IPIs this OS sent.
    pub fn ipis_sent() -> u64 {
        IPIS_SENT.load(Ordering::Relaxed)
    }

    /// How many ring IPIs this OS received.
    pub fn ipis_received() -> u64 {
        crate::interrupts::count(RING_VECTOR)
    }
}
