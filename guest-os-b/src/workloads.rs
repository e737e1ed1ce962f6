//! The workloads OS B can run, selected by the boot info.

use guest_rt::exit::Status;
use guest_rt::peer::Peer;
use guest_rt::ring::IpiPlatform;
use guest_rt::{Platform, println};
use shm_ring::bootinfo::WorkloadKind;
use shm_ring::control::report;
use shm_ring::stream::{self, StreamParams};

/// Rejections logged before the rest are only counted.
const REJECTIONS_LOGGED: u64 = 8;

/// Runs the workload named in the boot info and ends the OS.
pub fn run(platform: &Platform) -> ! {
    let peer = Peer::new(platform);
    peer.announce_ready();
    let workload = platform.boot_info.workload;
    // The host asks only OS A to end; OS B ends after it.
    guest_rt::control::handle_end_requests(false);
    match WorkloadKind::from_u32(workload.kind) {
        Some(kind @ (WorkloadKind::RingBench | WorkloadKind::HostileDescriptor)) => {
            let hostile = (kind == WorkloadKind::HostileDescriptor).then_some(workload.args[3]);
            ring_consumer(platform, &peer, hostile)
        }
        Some(WorkloadKind::NicProbe) => nic_probe(&peer, workload.args[0] as u16),
        Some(WorkloadKind::NicHostile) => {
            let status = crate::nic::hostile_queue();
            finish(&peer, status)
        }
        // OS B has nothing to do in OS A's exit benchmark.
        Some(WorkloadKind::ExitBench) => finish(&peer, Status::Success),
        Some(WorkloadKind::NetService) => {
            let status = crate::net::serve(platform, &peer);
            finish(&peer, status)
        }
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
            println!("unknown workload {}", workload.kind);
            finish(&peer, Status::Failed)
        }
    }
}

/// Ends the OS, publishing its final state first.
fn finish(peer: &Peer, status: Status) -> ! {
    peer.finish(status)
}

/// Waits for OS A's IPI and answers it.
fn hello(peer: &Peer) -> ! {
    guest_rt::wait_until(1_000_000, || Peer::ipis_received() > 0);
    println!("hello: IPI from OS A received, answering");
    peer.wait_ready();
    peer.signal();
    finish(peer, Status::Success)
}

/// Consumes and verifies OS A's descriptor stream.
fn ring_consumer(platform: &Platform, peer: &Peer, hostile_after: Option<u64>) -> ! {
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
    peer.wait_ready();
    let mut ipi = IpiPlatform::new(*peer);
    let pool = endpoint.peer_pool;
    let mut logged = 0;
    let result = stream::consume(
        &mut endpoint.rx,
        &mut endpoint.rx_return,
        &pool,
        &params,
        &mut ipi,
        |index, rejection| {
            if logged < REJECTIONS_LOGGED {
                logged += 1;
                println!("ring: rejected descriptor #{index}: {rejection}");
            }
        },
    );
    let own = &peer.own;
    match result {
        Ok(stats) => {
            own.set_report(report::DESCRIPTORS, stats.descriptors);
            own.set_report(report::BYTES, stats.bytes);
            own.set_report(report::VERIFIED, stats.verified);
            own.set_report(report::REJECTED, stats.rejected);
            own.set_report(report::IPIS_SENT, Peer::ipis_sent());
            own.set_report(report::IPIS_RECEIVED, Peer::ipis_received());
            own.set_report(report::ELAPSED_TSC, stats.elapsed);
            own.set_report(report::SLEEPS, stats.sleeps);
            own.set_report(report::SPINS, stats.spins);
            own.set_report(report::FIRST_ERROR, stats.first_rejection);
            own.publish_report();
            println!(
                "ring: consumed {} descriptors: {} verified, {} rejected; {} IPIs sent, {} received",
                stats.descriptors,
                stats.verified,
                stats.rejected,
                Peer::ipis_sent(),
                Peer::ipis_received()
            );
            finish(peer, Status::Success)
        }
        Err(error) => {
            println!("ring: consumer stopped: {error}");
            finish(peer, Status::Failed)
        }
    }
}

/// Sends one broadcast frame of EtherType `ether_type` and waits for one frame back.
fn nic_probe(peer: &Peer, ether_type: u16) -> ! {
    let mut nic = match crate::nic::Nic::new() {
        Ok(nic) => nic,
        Err(error) => {
            println!("nic: {error}");
            finish(peer, Status::Failed)
        }
    };
    let mac = nic.mac();
    println!(
        "nic: virtio-net up, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    let mut frame = [0u8; 64];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ether_type.to_be_bytes());
    frame[14..30].copy_from_slice(b"duovm nic probe!");
    // A peer's NIC may not be up yet (a frame that finds no receive buffer is dropped, as on
    // real hardware): repeat the probe every 100 ms until a frame comes back.
    let mut received = [0u8; 1600];
    let mut length = None;
    let mut sent = 0;
    let deadline = guest_rt::time::now_ns() + 5_000_000_000;
    while length.is_none() && guest_rt::time::now_ns() < deadline {
        if nic.transmit(&frame).is_ok() {
            sent += 1;
        }
        if sent == 1 {
            println!("nic: sent a {}-byte broadcast frame", frame.len());
        }
        let resend = guest_rt::time::now_ns() + 100_000_000;
        loop {
            let seen = guest_rt::interrupts::count(shm_ring::layout::NET_VECTOR);
            nic.ack_interrupt();
            length = nic.receive(&mut received);
            if length.is_some() || guest_rt::time::now_ns() >= resend {
                break;
            }
            // Sleep until the next NIC interrupt or the resend time, whichever comes first.
            guest_rt::wait_until(10_000_000, || {
                guest_rt::interrupts::count(shm_ring::layout::NET_VECTOR) != seen
                    || guest_rt::time::now_ns() >= resend
            });
        }
    }
    // Keep probing a little longer so a peer whose NIC came up late hears from us too.
    if length.is_some() {
        for _ in 0..3 {
            let _ = nic.transmit(&frame);
            let until = guest_rt::time::now_ns() + 100_000_000;
            guest_rt::wait_until(10_000_000, || guest_rt::time::now_ns() >= until);
        }
    }
    match length {
        Some(len) => {
            let text = core::str::from_utf8(&received[14..len.min(64)]).unwrap_or("?");
            println!(
                "nic: received a {len}-byte frame, EtherType {:#06x}, {} NIC interrupts: {}",
                u16::from_be_bytes([received[12], received[13]]),
                guest_rt::interrupts::count(shm_ring::layout::NET_VECTOR),
                text.trim_end_matches('\0')
            );
            finish(peer, Status::Success)
        }
        None => {
            println!("nic: no frame arrived within 5 s");
            finish(peer, Status::Failed)
        }
    }
}
