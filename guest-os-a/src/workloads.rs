//! The workloads OS A can run, selected by the boot info.

use guest_rt::exit::{self, Status};
use guest_rt::peer::Peer;
use guest_rt::{Platform, println};
use shm_ring::bootinfo::WorkloadKind;
use shm_ring::control::OsState;
use shm_ring::layout::Role;

/// Runs the workload named in the boot info and ends the OS.
pub fn run(platform: &Platform) -> ! {
    let peer = Peer::new(platform);
    peer.announce_ready();
    match WorkloadKind::from_u32(platform.boot_info.workload.kind) {
        Some(WorkloadKind::Hello) => hello(&peer),
        Some(WorkloadKind::TouchPeerSegment) => touch_peer_segment(),
        Some(WorkloadKind::TripleFault) => guest_rt::cpu::triple_fault(),
        Some(WorkloadKind::Spin) => spin(),
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

/// Sends the peer one IPI and waits for its answer.
fn hello(peer: &Peer) -> ! {
    peer.wait_ready();
    peer.signal();
    guest_rt::wait_until(1_000_000, || Peer::ipis_received() > 0);
    println!(
        "hello: IPI round trip with OS B done ({} sent, {} received)",
        Peer::ipis_sent(),
        Peer::ipis_received()
    );
    finish(peer, Status::Success)
}

/// Reads the first word of OS B's segment, which is not mapped for OS A: this must fault.
fn touch_peer_segment() -> ! {
    let address = Role::B.segment_base() as *const u64;
    println!("reading OS B's segment at {address:p}");
    // SAFETY: deliberately invalid: the page is not mapped, so this read faults and the
    // exception handler ends the OS with a fault report; nothing is read.
    let value = unsafe { core::ptr::read_volatile(address) };
    println!("read {value:#x} from OS B's segment: the partition is broken");
    exit::exit(Status::Failed)
}

/// Spins forever with interrupts off: the host's timeout must end it.
fn spin() -> ! {
    guest_rt::cpu::disable_interrupts();
    loop {
        core::hint::spin_loop();
    }
}
