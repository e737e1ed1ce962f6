//! The TAP back-end against the Linux kernel: the TAP interface is moved into a network
//! namespace made for the test, given 10.77.0.1/24 there, and the kernel answers an ARP request
//! for that address. Needs root (CAP_NET_ADMIN) and `/dev/net/tun`; skips loudly without them.
//! Traffic stays inside the test's own namespace.

mod devices_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use devices_support::{BASIC_FEATURES, Driver, wait_until};
use host_agent::devices::net_backend::NetBackend;
use host_agent::devices::tap::{TUN_DEVICE, Tap};
use host_agent::devices::virtio::net::NetConfig;
use host_agent::devices::worker::NetDeviceHandle;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x77, 0x02];
const OUR_IP: [u8; 4] = [10, 77, 0, 2];
const KERNEL_IP: [u8; 4] = [10, 77, 0, 1];

/// A network namespace, deleted on drop (also when the test fails).
struct Namespace {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Namespace {
    fn create(name: String) -> Result<Namespace, String> {
        ip(&["netns", "add", &name])?;
        Ok(Namespace { name })
    }

    /// Moves interface `device` into the namespace, gives it `address` and brings it up.
    fn take(&self, device: &str, address: &str) -> Result<(), String> {
        ip(&["link", "set", "dev", device, "netns", &self.name])?;
        ip(&["-n", &self.name, "link", "set", "dev", "lo", "up"])?;
        ip(&["-n", &self.name, "addr", "add", address, "dev", device])?;
        ip(&["-n", &self.name, "link", "set", "dev", device, "up"])
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("cannot delete network namespace {}: {error}", self.name);
        }
    }
}

/// A TAP interface inside a fresh namespace with 10.77.0.1/24, or `None` (with a loud skip
/// message) where the machine cannot provide one.
fn tap_in_namespace(suffix: &str) -> Option<(Namespace, Tap)> {
    if !Path::new(TUN_DEVICE).exists() {
        eprintln!("SKIPPED: {TUN_DEVICE} is absent; the TAP back-end is not tested here");
        return None;
    }
    let pid = std::process::id();
    let namespace = match Namespace::create(format!("duovm-test-{pid}-{suffix}")) {
        Ok(namespace) => namespace,
        Err(error) => {
            eprintln!("SKIPPED: cannot create a network namespace ({error}); TAP not tested");
            return None;
        }
    };
    let name = format!("dvt{pid}{suffix}");
    let tap = match Tap::open(&name) {
        Ok(tap) => tap,
        Err(error) => {
            eprintln!("SKIPPED: cannot open TAP {name} ({error}); TAP not tested");
            return None;
        }
    };
    assert_eq!(tap.name(), name);
    namespace.take(&name, "10.77.0.1/24").unwrap();
    Some((namespace, tap))
}

/// An ARP request from us for the kernel's address.
fn arp_request() -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&OUR_MAC);
    frame.extend_from_slice(&[0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&OUR_MAC);
    frame.extend_from_slice(&OUR_IP);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&KERNEL_IP);
    frame
}

/// The kernel's MAC, if `frame` is its ARP reply to us.
fn arp_reply_mac(frame: &[u8]) -> Option<[u8; 6]> {
    let is_reply = frame.len() >= 42
        && frame[..6] == OUR_MAC
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == KERNEL_IP
        && frame[38..42] == OUR_IP;
    is_reply.then(|| frame[22..28].try_into().unwrap())
}

#[test]
fn the_kernel_answers_an_arp_request_written_to_the_tap() {
    let Some((_namespace, mut tap)) = tap_in_namespace("a") else {
        return;
    };
    tap.send(&arp_request()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffer = vec![0u8; 65536];
    let reply = loop {
        assert!(Instant::now() < deadline, "no ARP reply from the kernel");
        let mut fds = [PollFd::new(tap.ready_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(100u16)).unwrap();
        if let Some(len) = tap.receive(&mut buffer).unwrap()
            && let Some(mac) = arp_reply_mac(&buffer[..len])
        {
            break mac;
        }
    };
    assert_ne!(reply, [0; 6]);
    // Reads never block: once drained, the back-end says there is nothing.
    while tap.receive(&mut buffer).unwrap().is_some() {}
}

#[test]
fn a_guest_nic_on_a_tap_reaches_the_kernel() {
    let Some((_namespace, tap)) = tap_in_namespace("b") else {
        return;
    };
    let mut driver = Driver::new(NetConfig {
        mac: OUR_MAC,
        ..NetConfig::default()
    });
    driver.init(64, BASIC_FEATURES);
    driver.post_rx(32, 2048);
    let worker = NetDeviceHandle::spawn(driver.nic.clone(), tap).unwrap();
    driver.send(&arp_request());
    let mut reply = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            reply = driver
                .receive()
                .iter()
                .find_map(|frame| arp_reply_mac(frame));
            reply.is_some()
        }),
        "no ARP reply reached the guest"
    );
    let counters = driver.nic().counters();
    assert_eq!(counters.tx_packets, 1);
    assert!(counters.rx_packets >= 1);
    worker.stop().unwrap();
}
