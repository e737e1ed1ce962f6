//! OS A's network workloads: the shared applications of `duovm-apps`, on this kernel.

extern crate alloc;

use core::net::{Ipv4Addr, SocketAddrV4};

use apps::{NetClient, Os, Outcome};
use guest_rt::exit::Status;
use guest_rt::peer::Peer;
use guest_rt::{Platform, println};
use netsvc::Client;
use shm_ring::control::OsState;
use shm_ring::pool::owner_storage_words;

/// The guest as an [`Os`]: the TSC clock, IPIs to wake OS B, `hlt` to wait for its IPI (or the
/// host's), and the host's end request as the stop.
#[derive(Debug)]
pub struct GuestOs {
    peer: Peer,
    /// The boot information promises the RoCEv2 ICRC offload.
    roce_icrc_offload: bool,
}

impl GuestOs {
    /// The OS of the running kernel, talking to `peer`, on the NIC `platform`'s boot
    /// information describes.
    pub fn new(platform: &Platform, peer: Peer) -> GuestOs {
        GuestOs {
            peer,
            roce_icrc_offload: platform.boot_info.net.roce_icrc_offload(),
        }
    }
}

impl Os for GuestOs {
    fn now_ns(&mut self) -> u64 {
        guest_rt::time::now_ns()
    }

    fn wait(&mut self, client: &mut NetClient, deadline_ns: u64) {
        if client.take_signal() {
            self.peer.signal();
        }
        if deadline_ns <= guest_rt::time::now_ns() {
            return;
        }
        let token = Peer::ipis_received();
        let host = guest_rt::control::signals();
        if client.endpoint_mut().rx.prepare_to_sleep() {
            let now = guest_rt::time::now_ns();
            guest_rt::wait_until(
                deadline_ns.saturating_sub(now).clamp(1_000, 10_000_000),
                || {
                    Peer::ipis_received() != token
                        || guest_rt::control::signals() != host
                        || guest_rt::time::now_ns() >= deadline_ns
                },
            );
        }
        client.endpoint_mut().rx.woke_up();
    }

    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        println!("{line}");
    }

    fn should_stop(&mut self) -> bool {
        guest_rt::control::end_requested()
    }

    fn roce_icrc_offload(&self) -> bool {
        self.roce_icrc_offload
    }
}

/// Attaches the rings and makes OS A's network client.
pub fn client(platform: &Platform) -> Option<NetClient> {
    let endpoint = match guest_rt::ring::attach(platform) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            println!("net: cannot attach the rings: {error}");
            return None;
        }
    };
    let words = owner_storage_words(endpoint.own_pool.buffer_count());
    match Client::new(endpoint, alloc::vec![0u64; words]) {
        Ok(client) => Some(client),
        Err(error) => {
            println!("net: cannot own pool A: {error}");
            None
        }
    }
}

/// Runs `app` with the network client once OS B is ready.
pub fn run(
    platform: &Platform,
    peer: &Peer,
    app: impl FnOnce(&mut GuestOs, &mut NetClient) -> Outcome,
) -> Status {
    // The applications look for a stop, so they can end in order when the host asks; so does
    // the wait for OS B. (OS A ends right after the application returns: a request that comes
    // then is left to that.)
    let Some(mut client) = client(platform) else {
        return Status::Failed;
    };
    guest_rt::wait_until(1_000_000, || {
        peer.peer.state() != OsState::Booting as u32 || guest_rt::control::end_requested()
    });
    if guest_rt::control::end_requested() {
        println!("net: asked to end before OS B was up");
        return Status::Failed;
    }
    match app(&mut GuestOs::new(platform, *peer), &mut client) {
        Outcome::Success => Status::Success,
        Outcome::Failed => Status::Failed,
    }
}

/// The IPv4 address in a workload argument (big-endian `u32`).
pub fn address(argument: u64, port: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(argument as u32), port as u16)
}
