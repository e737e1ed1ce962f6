//! The workloads OS A can run, selected by the boot info.

use guest_rt::exit::{self, Status};
use guest_rt::peer::Peer;
use guest_rt::ring::IpiPlatform;
use guest_rt::{Platform, println};
use shm_ring::bootinfo::WorkloadKind;
use shm_ring::control::report;
use shm_ring::layout::Role;
use shm_ring::pool::PoolOwner;
use shm_ring::stream::{self, StreamParams};

/// Owner bookkeeping words: enough for 32768 buffers.
const POOL_STORAGE_WORDS: usize = 1024;

/// Runs the workload named in the boot info and ends the OS.
pub fn run(platform: &Platform) -> ! {
    let peer = Peer::new(platform);
    peer.announce_ready();
    let workload = platform.boot_info.workload;
    let kind = WorkloadKind::from_u32(workload.kind);
    // The network applications end in order when the host asks (`crate::net::run`); the
    // others cannot.
    guest_rt::control::handle_end_requests(matches!(
        kind,
        Some(
            WorkloadKind::TcpEcho
                | WorkloadKind::TcpClient
                | WorkloadKind::UdpEcho
                | WorkloadKind::RdmaTest
                | WorkloadKind::NetBench
        )
    ));
    match kind {
        Some(WorkloadKind::Hello) => hello(&peer),
        Some(kind @ (WorkloadKind::RingBench | WorkloadKind::HostileDescriptor)) => {
            let hostile = (kind == WorkloadKind::HostileDescriptor).then_some(workload.args[3]);
            ring_producer(platform, &peer, hostile)
        }
        // OS A has nothing to do while OS B tests its NIC.
        Some(WorkloadKind::NicProbe | WorkloadKind::NicHostile) => finish(&peer, Status::Success),
        Some(WorkloadKind::ExitBench) => exit_bench(&peer, workload.args[0]),
        Some(WorkloadKind::TcpEcho) => {
            let args = workload.args;
            let status = crate::net::run(platform, &peer, |os, client| {
                apps::net::tcp_echo(os, client, args[0] as u16, args[1], args[2])
            });
            finish(&peer, status)
        }
        Some(WorkloadKind::TcpClient) => {
            let args = workload.args;
            let server = crate::net::address(args[0], args[1]);
            let status = crate::net::run(platform, &peer, |os, client| {
                apps::net::tcp_client(os, client, server, args[2] as usize)
            });
            finish(&peer, status)
        }
        Some(WorkloadKind::UdpEcho) => {
            let args = workload.args;
            let server = crate::net::address(args[0], args[1]);
            let status = crate::net::run(platform, &peer, |os, client| {
                apps::net::udp_echo(os, client, server, args[2], args[3] as usize)
            });
            finish(&peer, status)
        }
        Some(WorkloadKind::RdmaTest) => {
            let status = crate::net::run(platform, &peer, |os, client| {
                crate::rdma::run(platform, &peer, os, client)
            });
            finish(&peer, status)
        }
        Some(WorkloadKind::NetBench) => {
            let status = crate::net::run(platform, &peer, |os, client| {
                crate::netbench::run(workload.args, &peer, os, client)
            });
            finish(&peer, status)
        }
        Some(WorkloadKind::TouchPeerSegment) => touch_peer_segment(),
        Some(WorkloadKind::TripleFault) => guest_rt::cpu::triple_fault(),
        Some(WorkloadKind::Spin) => spin(),
        Some(kind) => {
            println!("workload {kind:?} is not available in this build");
            finish(&peer, Status::Failed)
        }
        None => {
            println!("unknown workload {}", workload.kind);
            finish(&peer, Status::Failed)
        }
    }
}

/// Ends the OS, publishing its final state first.
fn finish(peer: &Peer, status: Status) -> ! {
    peer.finish(status)
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

/// Produces the verified descriptor stream for OS B (args: count, payload size, batch, -, spin
/// budget in nanoseconds; for the hostile test, `hostile_after` is where one descriptor outside
/// the pool goes).
fn ring_producer(platform: &Platform, peer: &Peer, hostile_after: Option<u64>) -> ! {
    let args = platform.boot_info.workload.args;
    let params = StreamParams {
        descriptors: args[0],
        payload: args[1] as usize,
        batch: args[2] as u32,
        hostile_after,
        spin_ns: args[4],
    };
    let mut endpoint = match guest_rt::ring::attach(platform) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            println!("cannot attach the rings: {error}");
            finish(peer, Status::Failed)
        }
    };
    let mut storage = [0u64; POOL_STORAGE_WORDS];
    let mut owner = match PoolOwner::new(endpoint.own_pool, &mut storage[..]) {
        Ok(owner) => owner,
        Err(error) => {
            println!("cannot own pool A: {error}");
            finish(peer, Status::Failed)
        }
    };
    println!(
        "ring: producing {} descriptors of {} bytes in batches of {}, polling {} us before sleeping",
        params.descriptors,
        params.payload,
        params.batch,
        params.spin_ns / 1000
    );
    peer.wait_ready();
    let mut ipi = IpiPlatform::new(*peer);
    let result = stream::produce(
        &mut endpoint.tx,
        &mut endpoint.tx_return,
        &mut owner,
        &params,
        &mut ipi,
    );
    let own = &peer.own;
    match result {
        Ok(stats) => {
            own.set_report(report::DESCRIPTORS, stats.descriptors);
            own.set_report(report::BYTES, stats.bytes);
            own.set_report(report::IPIS_SENT, Peer::ipis_sent());
            own.set_report(report::IPIS_RECEIVED, Peer::ipis_received());
            own.set_report(report::ELAPSED_TSC, stats.elapsed);
            own.set_report(report::SLEEPS, stats.sleeps);
            own.set_report(report::SPINS, stats.spins);
            own.publish_report();
            println!(
                "ring: produced {} descriptors, every buffer came back; {} IPIs sent, {} received",
                stats.descriptors,
                Peer::ipis_sent(),
                Peer::ipis_received()
            );
            finish(peer, Status::Success)
        }
        Err(error) => {
            println!("ring: producer stopped: {error}");
            finish(peer, Status::Failed)
        }
    }
}

/// Makes `count` fast-path exits, then `count` supervisor-path exits.
fn exit_bench(peer: &Peer, count: u64) -> ! {
    for _ in 0..count {
        guest_rt::exit::hypercall(shm_ring::layout::Hypercall::Ping);
    }
    let mut last = 0;
    for _ in 0..count {
        last = guest_rt::cpu::inl(shm_ring::layout::SUPERVISOR_PROBE_PORT);
    }
    println!(
        "exit-bench: {count} fast-path and {count} supervisor-path exits (probe answered {last})"
    );
    finish(
        peer,
        if u64::from(last) == count {
            Status::Success
        } else {
            Status::Failed
        },
    )
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
