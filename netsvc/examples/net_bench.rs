//! Throughput of the network service, native mode in one thread: two OS B services joined by
//! the in-memory wire, each serving an OS A client over a real shared-memory ring region.
//! Everything (both clients, both services, smoltcp on both ends, the wire) runs on one core,
//! so the figures are the cost of the whole path, both ends included.
//!
//! Prints one JSON line per measurement:
//! - `udp`: goodput of 1472-byte datagrams, client to client;
//! - `tcp`: goodput of one TCP connection (per send-buffer size);
//! - `roce`: RoCE packets forwarded client to client (fast path), per packet size;
//! - `one_at_a_time`: the time per 64-byte RoCE packet and UDP datagram sent alone, client to
//!   client (each sent only once the one before arrived), as the packets of a round trip go;
//! - `idle_poll`: the time of one poll of a service with nothing to do.
//!
//! Run with `cargo run --release -p netsvc --features std --example net_bench [seconds [name...]]`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use netsvc::memwire::{self, WireConfig, WirePort};
use netsvc::netmsg::Event;
use netsvc::{Client, ClientError, NetConfig, NetService};
use shm_ring::OwnedRegion;
use shm_ring::bootinfo::SharedLayout;
use shm_ring::layout::Role;
use shm_ring::pool::{PoolOwner, owner_storage_words};
use shm_ring::shared::{self, Endpoint, SharedConfig};

const SHARED: SharedConfig = SharedConfig {
    ring_capacity: 1024,
    buffer_size: 2048,
    buffers_per_pool: 2048,
};
const REGION_SIZE: usize = 16 << 20;
const LEFT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const RIGHT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

struct Node {
    service: NetService<WirePort>,
    endpoint: Endpoint,
    pool: PoolOwner<Vec<u64>>,
    client: Client<Vec<u64>>,
    /// Dropped last: everything above points into it.
    _region: OwnedRegion,
}

impl Node {
    fn new(nic: WirePort, address: Ipv4Addr, tcp_buffer: usize, started: Instant) -> Node {
        let layout = SharedLayout::compute(REGION_SIZE as u64, SHARED).expect("layout fits");
        let region = OwnedRegion::new(REGION_SIZE);
        let (base, len) = (region.as_ptr(), region.len());
        // SAFETY: the region is valid for `len` bytes and nothing uses it yet.
        unsafe { shared::init(base, len, &layout) }.expect("init");
        // SAFETY: the region outlives the endpoints (dropped after them); one per role.
        let a = unsafe { Endpoint::attach(base, len, &layout, Role::A) }.expect("A");
        // SAFETY: as above.
        let b = unsafe { Endpoint::attach(base, len, &layout, Role::B) }.expect("B");
        let words = owner_storage_words(SHARED.buffers_per_pool);
        let mut config = NetConfig::new([0; 6], address, 24);
        config.tcp_rx_buffer = tcp_buffer;
        config.tcp_tx_buffer = tcp_buffer;
        config.udp_buffer = 256 * 1024;
        config.udp_packets = 256;
        config.batch = 128;
        config.tx_backlog = 1024;
        Node {
            service: NetService::new(nic, config, now(started)).expect("service"),
            pool: PoolOwner::new(b.own_pool.clone(), vec![0; words]).expect("pool B"),
            endpoint: b,
            client: Client::new(a, vec![0; words]).expect("client"),
            _region: region,
        }
    }

    fn poll(&mut self, now_ns: u64) {
        self.service
            .poll(now_ns, &mut self.endpoint, &mut self.pool);
    }
}

fn now(started: Instant) -> u64 {
    started.elapsed().as_nanos() as u64
}

struct Pair {
    left: Node,
    right: Node,
    started: Instant,
}

impl Pair {
    fn new(tcp_buffer: usize) -> Pair {
        let wire = WireConfig {
            queue_limit: 4096,
            ..WireConfig::default()
        };
        let (left, right) = memwire::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], wire);
        let started = Instant::now();
        Pair {
            left: Node::new(left, LEFT, tcp_buffer, started),
            right: Node::new(right, RIGHT, tcp_buffer, started),
            started,
        }
    }

    fn step(&mut self) {
        let now_ns = now(self.started);
        self.left.poll(now_ns);
        self.right.poll(now_ns);
    }

    /// Steps until the right client sees an event `want` accepts; returns what it extracted.
    fn wait_right<T>(&mut self, mut want: impl FnMut(&Event<'_>) -> Option<T>) -> T {
        loop {
            self.step();
            while let Some(event) = self.right.client.poll() {
                if let Some(value) = want(&event) {
                    return value;
                }
            }
            while self.left.client.poll().is_some() {}
        }
    }

    fn wait_left<T>(&mut self, mut want: impl FnMut(&Event<'_>) -> Option<T>) -> T {
        loop {
            self.step();
            while let Some(event) = self.left.client.poll() {
                if let Some(value) = want(&event) {
                    return value;
                }
            }
            while self.right.client.poll().is_some() {}
        }
    }
}

fn udp(seconds: f64) {
    let mut pair = Pair::new(64 * 1024);
    let server = pair.right.client.udp_bind(9000).unwrap();
    pair.wait_right(|event| matches!(event, Event::Bound { .. }).then_some(()));
    let sender = pair.left.client.udp_bind(0).unwrap();
    pair.wait_left(|event| matches!(event, Event::Bound { .. }).then_some(()));
    let datagram = vec![0x5a; 1472];
    let destination = SocketAddrV4::new(RIGHT, 9000);
    // Warm up ARP.
    pair.left
        .client
        .udp_send(sender, destination, b"hi")
        .unwrap();
    pair.wait_right(|event| matches!(event, Event::UdpRecv { .. }).then_some(()));
    let (mut sent, mut received, mut bytes) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..64 {
            if pair
                .left
                .client
                .udp_send(sender, destination, &datagram)
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        pair.step();
        while let Some(event) = pair.right.client.poll() {
            if let Event::UdpRecv {
                handle, payload, ..
            } = event
            {
                assert_eq!(handle, server);
                received += 1;
                bytes += payload.len() as u64;
            }
        }
        while pair.left.client.poll().is_some() {}
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"udp\",\"datagram\":1472,\"seconds\":{elapsed:.3},\"sent\":{sent},\"received\":{received},\"goodput_mbit_s\":{:.1},\"datagrams_per_s\":{:.0}}}",
        bytes as f64 * 8.0 / elapsed / 1e6,
        received as f64 / elapsed
    );
}

fn tcp(seconds: f64, buffer: usize) {
    let mut pair = Pair::new(buffer);
    pair.right.client.tcp_listen(18515, 1, 0).unwrap();
    pair.wait_right(|event| matches!(event, Event::Bound { .. }).then_some(()));
    let conn = pair
        .left
        .client
        .tcp_connect(SocketAddrV4::new(RIGHT, 18515), 0, 0)
        .unwrap();
    pair.wait_left(|event| matches!(event, Event::TcpConnected { .. }).then_some(()));
    let chunk = vec![0xa5u8; 64 * 1024];
    let (mut sent, mut received, mut steps) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        loop {
            match pair.left.client.tcp_send(conn, &chunk) {
                Ok(count) => sent += count as u64,
                Err(ClientError::WouldBlock | ClientError::NoBuffer | ClientError::RingFull) => {
                    break;
                }
                Err(error) => panic!("tcp_send: {error}"),
            }
        }
        pair.step();
        steps += 1;
        while let Some(event) = pair.right.client.poll() {
            if let Event::TcpData { data, .. } = event {
                received += data.len() as u64;
            }
        }
        while pair.left.client.poll().is_some() {}
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lost = pair.left.service.stats().tx.dropped + pair.right.service.stats().tx.dropped;
    println!(
        "{{\"bench\":\"tcp\",\"send_buffer\":{buffer},\"seconds\":{elapsed:.3},\"sent\":{sent},\"received\":{received},\"goodput_mbit_s\":{:.1},\"steps\":{steps},\"nic_drops\":{lost}}}",
        received as f64 * 8.0 / elapsed / 1e6
    );
}

/// A RoCEv2-shaped packet (IPv4, UDP 4791, BTH, payload, 4-byte trailer).
fn roce_packet(payload: usize) -> Vec<u8> {
    let total = 20 + 8 + 12 + payload + 4;
    let mut packet = vec![0u8; total];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[6] = 0x40;
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&LEFT.octets());
    packet[16..20].copy_from_slice(&RIGHT.octets());
    let checksum = netsvc::frame::internet_checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet[20..22].copy_from_slice(&0xc000u16.to_be_bytes());
    packet[22..24].copy_from_slice(&4791u16.to_be_bytes());
    packet[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
    packet[28] = 0x04;
    packet
}

fn roce(seconds: f64, payload: usize) {
    let mut pair = Pair::new(64 * 1024);
    let packet = roce_packet(payload);
    pair.left.client.roce_send(&packet).unwrap();
    pair.wait_right(|event| matches!(event, Event::RoceRx { .. }).then_some(()));
    let (mut sent, mut received) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..128 {
            if pair.left.client.roce_send(&packet).is_err() {
                break;
            }
            sent += 1;
        }
        pair.step();
        while let Some(event) = pair.right.client.poll() {
            if let Event::RoceRx { packet: got } = event {
                debug_assert_eq!(got.len(), packet.len());
                received += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let dropped = pair.right.service.stats().roce_rx_dropped;
    println!(
        "{{\"bench\":\"roce\",\"packet\":{},\"seconds\":{elapsed:.3},\"sent\":{sent},\"received\":{received},\"dropped\":{dropped},\"packets_per_s\":{:.0},\"mbit_s\":{:.1}}}",
        packet.len(),
        received as f64 / elapsed,
        received as f64 * packet.len() as f64 * 8.0 / elapsed / 1e6
    );
}

/// One packet at a time from the left client to the right one: each is sent, both services
/// poll once (the left one sends it, the right one receives it), and the right client takes
/// it before the next is sent. The time per packet is what the two services, the two clients
/// and the wire cost a packet that travels alone, as the packets of a round trip do.
fn one_at_a_time(seconds: f64, kind: &str) {
    let mut pair = Pair::new(64 * 1024);
    let packet = roce_packet(64);
    let datagram = [0x5au8; 64];
    let destination = SocketAddrV4::new(RIGHT, 9000);
    let udp = if kind == "udp" {
        let server = pair.right.client.udp_bind(9000).unwrap();
        pair.wait_right(|event| matches!(event, Event::Bound { .. }).then_some(()));
        let sender = pair.left.client.udp_bind(0).unwrap();
        pair.wait_left(|event| matches!(event, Event::Bound { .. }).then_some(()));
        Some((server, sender))
    } else {
        None
    };
    let send = |pair: &mut Pair| match udp {
        Some((_, sender)) => pair.left.client.udp_send(sender, destination, &datagram),
        None => pair.left.client.roce_send(&packet),
    };
    let arrived = |event: &Event<'_>| matches!(event, Event::UdpRecv { .. } | Event::RoceRx { .. });
    // Warm up ARP.
    send(&mut pair).unwrap();
    pair.wait_right(|event| arrived(event).then_some(()));
    let (mut packets, mut polls) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..1000 {
            send(&mut pair).unwrap();
            loop {
                pair.step();
                polls += 1;
                let mut got = false;
                while let Some(event) = pair.right.client.poll() {
                    got |= arrived(&event);
                }
                while pair.left.client.poll().is_some() {}
                if got {
                    break;
                }
            }
            packets += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"one_at_a_time\",\"kind\":\"{kind}\",\"payload\":64,\"seconds\":{elapsed:.3},\"packets\":{packets},\"steps_per_packet\":{:.2},\"ns_per_packet\":{:.1}}}",
        polls as f64 / packets as f64,
        elapsed * 1e9 / packets as f64
    );
}

/// What one poll of a service with nothing to do costs: the price of each look a polling
/// OS B takes.
fn idle_poll(seconds: f64) {
    let mut pair = Pair::new(64 * 1024);
    // Let the stack settle (ARP, timers) before counting.
    for _ in 0..1000 {
        pair.step();
    }
    let mut polls = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..10_000 {
            pair.left.poll(now(pair.started));
        }
        polls += 10_000;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"idle_poll\",\"seconds\":{elapsed:.3},\"polls\":{polls},\"ns_per_poll\":{:.1}}}",
        elapsed * 1e9 / polls as f64
    );
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(2.0);
    // `net_bench SECONDS NAME...` runs only the named measurements.
    let only: Vec<String> = std::env::args().skip(2).collect();
    let runs = |name: &str| only.is_empty() || only.iter().any(|wanted| wanted == name);
    if runs("udp") {
        udp(seconds);
    }
    if runs("tcp") {
        tcp(seconds, 64 * 1024);
        tcp(seconds, 256 * 1024);
    }
    if runs("roce") {
        roce(seconds, 1024);
        roce(seconds, 64);
    }
    if runs("one_at_a_time") {
        one_at_a_time(seconds, "roce");
        one_at_a_time(seconds, "udp");
    }
    if runs("idle_poll") {
        idle_poll(seconds);
    }
}
