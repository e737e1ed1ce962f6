//! OS B's network service: the `netsvc` engine over this kernel's virtio-net NIC, driven by
//! the NIC interrupt, OS A's ring IPI and the APIC timer.

extern crate alloc;

use core::net::Ipv4Addr;

use guest_rt::exit::Status;
use guest_rt::peer::Peer;
use guest_rt::{Platform, println};
use netsvc::service::LINGER_NS;
use netsvc::{NetConfig, NetService, NicFull, WindDown};
use shm_ring::control::{OsState, report};
use shm_ring::layout::{NET_VECTOR, RING_VECTOR, TIMER_VECTOR};
use shm_ring::pool::{PoolOwner, owner_storage_words};

use crate::nic::Nic;

impl netsvc::Nic for Nic {
    fn transmit(&mut self, frame: &[u8]) -> Result<(), NicFull> {
        Nic::transmit(self, frame).map_err(|_| NicFull)
    }

    fn receive(&mut self, buffer: &mut [u8]) -> Option<usize> {
        Nic::receive(self, buffer)
    }

    fn mac(&self) -> [u8; 6] {
        Nic::mac(self)
    }
}

/// Interrupts that can give the service work.
fn wake_count() -> u64 {
    guest_rt::interrupts::count(RING_VECTOR)
        + guest_rt::interrupts::count(NET_VECTOR)
        + guest_rt::interrupts::count(TIMER_VECTOR)
}

/// Runs the network service until OS A has ended; returns the status to end with.
pub fn serve(platform: &Platform, peer: &Peer) -> Status {
    let info = &platform.boot_info;
    let mut nic = match Nic::new() {
        Ok(nic) => nic,
        Err(error) => {
            println!("net: {error}");
            return Status::Failed;
        }
    };
    let config = NetConfig::from_boot(&info.net);
    let mac = nic.mac();
    nic.ack_interrupt();
    let mut service = match NetService::new(nic, config, guest_rt::time::now_ns()) {
        Ok(service) => service,
        Err(error) => {
            println!("net: bad network configuration: {error}");
            return Status::Failed;
        }
    };
    let mut endpoint = match guest_rt::ring::attach(platform) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            println!("net: cannot attach the rings: {error}");
            return Status::Failed;
        }
    };
    let words = owner_storage_words(endpoint.own_pool.buffer_count());
    let mut pool = match PoolOwner::new(endpoint.own_pool.clone(), alloc::vec![0u64; words]) {
        Ok(pool) => pool,
        Err(error) => {
            println!("net: cannot own pool B: {error}");
            return Status::Failed;
        }
    };
    println!(
        "net: up: {}/{} MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        Ipv4Addr::from(info.net.ipv4),
        info.net.prefix_len,
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    loop {
        let token = wake_count();
        let now = guest_rt::time::now_ns();
        let outcome = service.poll(now, &mut endpoint, &mut pool);
        if outcome.signal_peer {
            peer.signal();
        }
        let peer_state = peer.peer.state();
        if peer_state == OsState::Done as u32 || peer_state == OsState::Failed as u32 {
            break;
        }
        if outcome.busy {
            continue;
        }
        let mut idle = endpoint.rx.prepare_to_sleep();
        if outcome.starved {
            idle &= endpoint.tx_return.prepare_to_sleep();
        }
        if idle {
            // Sleep until an interrupt or the service's deadline (at most 10 ms, so that OS A
            // ending is noticed).
            let deadline = outcome
                .deadline_ns
                .unwrap_or(u64::MAX)
                .min(now + 10_000_000);
            guest_rt::wait_until(deadline.saturating_sub(now).max(1_000), || {
                wake_count() != token || guest_rt::time::now_ns() >= deadline
            });
        }
        endpoint.rx.woke_up();
        endpoint.tx_return.woke_up();
    }
    // OS A has ended: its connections close as a process's do when it exits, so that peers
    // learn of it now rather than when their timeouts run out.
    let closed = service.wind_down(
        &mut endpoint,
        &mut pool,
        guest_rt::time::now_ns,
        |deadline| {
            let token = wake_count();
            let now = guest_rt::time::now_ns();
            let deadline = deadline.min(now + 10_000_000);
            guest_rt::wait_until(deadline.saturating_sub(now).max(1_000), || {
                wake_count() != token || guest_rt::time::now_ns() >= deadline
            });
        },
    );
    if closed != WindDown::default() {
        println!(
            "net: OS A's connections closed: {} with a FIN, {} reset (unread data), {} reset after {} s",
            closed.closed,
            closed.reset,
            closed.timed_out,
            LINGER_NS / 1_000_000_000
        );
    }
    let stats = service.stats();
    peer.own.set_report(report::DESCRIPTORS, stats.requests);
    peer.own.publish_report();
    println!(
        "net: OS A has ended; the service stops: {} requests, {} events, {} frames in, {} RoCE in, {} RoCE out",
        stats.requests, stats.events, stats.frames_received, stats.roce_rx, stats.roce_tx
    );
    Status::Success
}
