//! The workloads OS B can run, selected by the boot info.

use guest_rt::exit::{self, Status};
use guest_rt::peer::Peer;
use guest_rt::{Platform, println};
use shm_ring::bootinfo::WorkloadKind;
use shm_ring::control::OsState;

/// Runs the workload named in the boot info and ends the OS.
pub fn run(platform: &Platform) -> ! {
    let peer = Peer::new(platform);
    peer.announce_ready();
    match WorkloadKind::from_u32(platform.boot_info.workload.kind) {
        // OS B idles through OS A's fault tests: the host ends the VM when OS A fails.
        Some(
            WorkloadKind::Hello
            | WorkloadKind::TouchPeerSegment
            | WorkloadKind::TripleFault
            | WorkloadKind::Spin,
        ) => hello(&peer),
        Some(kind) => {
            println!("workload {kind:?} is not available in this build");
            finish(&peer, Status::Failed)
        }
        None => {
            println!("unknown workload {}", platform.boot_info.workload.kind);
            finish(&peer, Status::Failed)
        }
    }
}

/// Ends the OS, publishing its final state first.
fn finish(peer: &Peer, status: Status) -> ! {
    let state = if status == Status::Success {
        OsState::Done
    } else {
        OsState::Failed
    };
    peer.own.set_state(state);
    exit::exit(status)
}

/// Waits for OS A's IPI and answers it.
fn hello(peer: &Peer) -> ! {
    guest_rt::wait_until(1_000_000, || Peer::ipis_received() > 0);
    println!("hello: IPI from OS A received, answering");
    peer.wait_ready();
    peer.signal();
    finish(peer, Status::Success)
}
