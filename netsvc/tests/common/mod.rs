//! Two OS Bs on an in-memory wire, each with its OS A client over a real shared-memory region,
//! stepped in one thread on a virtual clock.

#![allow(dead_code)]

use core::net::{Ipv4Addr, SocketAddrV4};

use netsvc::frame::internet_checksum;
use netsvc::memwire::{self, WireConfig, WirePort};
use netsvc::netmsg::{CloseReason, ConnectionInfo, ErrorCode, Established, Event, ROCE_UDP_PORT};
use netsvc::{Client, NetConfig, NetService, Nic, PollOutcome};
use shm_ring::OwnedRegion;
use shm_ring::bootinfo::SharedLayout;
use shm_ring::layout::Role;
use shm_ring::pool::{PoolOwner, owner_storage_words};
use shm_ring::shared::{self, Endpoint, SharedConfig};

pub const MAC_LEFT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_RIGHT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const IP_LEFT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const IP_RIGHT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// The rings and pools of each node.
pub const SHARED: SharedConfig = SharedConfig {
    ring_capacity: 256,
    buffer_size: 2048,
    buffers_per_pool: 512,
};
const REGION_SIZE: usize = 4 << 20;

/// One OS B (service, its endpoint and pool B) and its OS A (the client).
pub struct Node<N: Nic> {
    pub service: NetService<N>,
    pub endpoint: Endpoint,
    pub pool: PoolOwner<Vec<u64>>,
    pub client: Client<Vec<u64>>,
    /// Dropped last: the endpoints, pools and client point into it.
    _region: OwnedRegion,
}

impl<N: Nic> Node<N> {
    pub fn new(nic: N, address: Ipv4Addr, tweak: impl FnOnce(&mut NetConfig)) -> Node<N> {
        let layout = SharedLayout::compute(REGION_SIZE as u64, SHARED).expect("layout fits");
        let region = OwnedRegion::new(REGION_SIZE);
        let (base, len) = (region.as_ptr(), region.len());
        // SAFETY: the region is valid for its length and nothing uses it yet.
        unsafe { shared::init(base, len, &layout) }.expect("init");
        // SAFETY: the region is valid for its length and outlives the endpoints (it is dropped
        // after them, see the field order); one endpoint per role.
        let a = unsafe { Endpoint::attach(base, len, &layout, Role::A) }.expect("A");
        // SAFETY: as above.
        let b = unsafe { Endpoint::attach(base, len, &layout, Role::B) }.expect("B");
        let words = owner_storage_words(SHARED.buffers_per_pool);
        let pool = PoolOwner::new(b.own_pool.clone(), vec![0; words]).expect("pool B");
        let client = Client::new(a, vec![0; words]).expect("client");
        let mut config = NetConfig::new(nic.mac(), address, 24);
        tweak(&mut config);
        let service = NetService::new(nic, config, 0).expect("service");
        Node {
            service,
            endpoint: b,
            pool,
            client,
            _region: region,
        }
    }

    pub fn poll(&mut self, now_ns: u64) -> PollOutcome {
        self.service
            .poll(now_ns, &mut self.endpoint, &mut self.pool)
    }

    /// Every event the client has now, owned.
    pub fn events(&mut self) -> Vec<Ev> {
        let mut events = Vec::new();
        while let Some(event) = self.client.poll() {
            events.push(Ev::from(event));
        }
        events
    }
}

/// Two nodes on one wire.
pub struct Net {
    pub left: Node<WirePort>,
    pub right: Node<WirePort>,
    pub now_ns: u64,
    pub steps: u64,
}

impl Net {
    pub fn new(wire: WireConfig) -> Net {
        Net::with(wire, |_| {})
    }

    pub fn with(wire: WireConfig, tweak: impl Fn(&mut NetConfig)) -> Net {
        let (left, right) = memwire::pair(MAC_LEFT, MAC_RIGHT, wire);
        Net {
            left: Node::new(left, IP_LEFT, &tweak),
            right: Node::new(right, IP_RIGHT, &tweak),
            now_ns: 1_000_000,
            steps: 0,
        }
    }

    /// Polls both services once and moves the clock: a little after progress, to the next
    /// deadline when idle.
    pub fn step(&mut self) {
        let left = self.left.poll(self.now_ns);
        let right = self.right.poll(self.now_ns);
        self.steps += 1;
        if left.progress || right.progress || left.busy || right.busy {
            self.now_ns += 2_000;
        } else {
            let deadline = [left.deadline_ns, right.deadline_ns]
                .into_iter()
                .flatten()
                .min();
            self.now_ns = deadline.map_or(self.now_ns + 1_000_000, |deadline| {
                deadline.max(self.now_ns + 1_000)
            });
        }
    }

    /// Steps until `check` returns a value, for at most `limit_ns` of virtual time.
    pub fn run_until<T>(
        &mut self,
        limit_ns: u64,
        mut check: impl FnMut(&mut Net) -> Option<T>,
    ) -> T {
        let end = self.now_ns + limit_ns;
        loop {
            self.step();
            if let Some(value) = check(self) {
                return value;
            }
            assert!(
                self.now_ns < end,
                "gave up after {} ns of virtual time ({} steps)",
                limit_ns,
                self.steps
            );
        }
    }

    /// Steps until the left or right client (per `right`) has an event matching `want`;
    /// returns it and every event before it.
    pub fn wait_for(&mut self, right: bool, mut want: impl FnMut(&Ev) -> bool) -> (Ev, Vec<Ev>) {
        let mut seen = Vec::new();
        self.run_until(10_000_000_000, |net| {
            let node = if right { &mut net.right } else { &mut net.left };
            for event in node.events() {
                if want(&event) {
                    return Some((event, std::mem::take(&mut seen)));
                }
                seen.push(event);
            }
            None
        })
    }
}

/// An owned copy of an event, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    RoceRx(Vec<u8>),
    UdpRecv {
        handle: u32,
        remote: SocketAddrV4,
        payload: Vec<u8>,
    },
    Bound {
        handle: u32,
        port: u16,
    },
    Connected {
        handle: u32,
        info: Established,
    },
    Accepted {
        listener: u32,
        handle: u32,
        info: Established,
    },
    Data {
        handle: u32,
        data: Vec<u8>,
    },
    Eof(u32),
    Closed(u32, CloseReason),
    SendSpace(u32, u32),
    Error {
        kind: u32,
        meta: u32,
        code: ErrorCode,
        detail: u32,
    },
    Table {
        cookie: u32,
        total: u32,
        first: u32,
        last: bool,
        entries: Vec<ConnectionInfo>,
    },
}

impl From<Event<'_>> for Ev {
    fn from(event: Event<'_>) -> Ev {
        match event {
            Event::RoceRx { packet } => Ev::RoceRx(packet.to_vec()),
            Event::UdpRecv {
                handle,
                remote,
                payload,
            } => Ev::UdpRecv {
                handle,
                remote,
                payload: payload.to_vec(),
            },
            Event::Bound { handle, local_port } => Ev::Bound {
                handle,
                port: local_port,
            },
            Event::TcpConnected { handle, info } => Ev::Connected { handle, info },
            Event::TcpAccepted {
                listener,
                handle,
                info,
            } => Ev::Accepted {
                listener,
                handle,
                info,
            },
            Event::TcpData { handle, data } => Ev::Data {
                handle,
                data: data.to_vec(),
            },
            Event::TcpEof { handle } => Ev::Eof(handle),
            Event::Closed { handle, reason } => Ev::Closed(handle, reason),
            Event::SendSpace { handle, credit } => Ev::SendSpace(handle, credit),
            Event::Error {
                request_kind,
                request_meta,
                code,
                detail,
            } => Ev::Error {
                kind: request_kind,
                meta: request_meta,
                code,
                detail,
            },
            Event::ConnectionTable {
                cookie,
                total,
                first,
                last,
                entries,
            } => Ev::Table {
                cookie,
                total,
                first,
                last,
                entries: entries
                    .iter()
                    .map(|entry| entry.expect("valid entry"))
                    .collect(),
            },
        }
    }
}

/// A byte pattern that shows reordering, loss and duplication: byte `i` of stream `seed`.
pub fn pattern(seed: u8, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// A RoCEv2-shaped packet from `source` to `destination`: IPv4 (don't fragment, header
/// checksum), UDP to port 4791 (checksum 0), an RC SEND Only BTH with `psn`, the payload and a
/// 4-byte trailer in the ICRC's place (a checksum of everything before it, so that any change
/// to the packet shows).
pub fn roce_packet(source: Ipv4Addr, destination: Ipv4Addr, psn: u32, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + 12 + payload.len() + 4;
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&(psn as u16).to_be_bytes());
    packet.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    let checksum = netsvc::frame::internet_checksum(&packet);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(&0xc011u16.to_be_bytes());
    packet.extend_from_slice(&ROCE_UDP_PORT.to_be_bytes());
    packet.extend_from_slice(&((total - 20) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    // BTH: RC SEND Only, pkey 0xffff, destination QP 0x11, ack request, PSN.
    packet.extend_from_slice(&[0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11]);
    packet.extend_from_slice(&(0x8000_0000 | (psn & 0x00ff_ffff)).to_be_bytes());
    packet.extend_from_slice(payload);
    let trailer = packet.iter().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    });
    packet.extend_from_slice(&trailer.to_le_bytes());
    packet
}

/// Whether `packet` still carries the trailer [`roce_packet`] computed.
pub fn roce_trailer_ok(packet: &[u8]) -> bool {
    let Some((body, trailer)) = packet.split_last_chunk::<4>() else {
        return false;
    };
    let hash = body.iter().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    });
    hash.to_le_bytes() == *trailer
}

/// An Ethernet frame.
pub fn ethernet(destination: [u8; 6], source: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An Ethernet/IPv4 ARP packet (request: operation 1, reply: 2).
pub fn arp(operation: u16, sender: ([u8; 6], Ipv4Addr), target: ([u8; 6], Ipv4Addr)) -> Vec<u8> {
    let mut packet = vec![0, 1, 8, 0, 6, 4];
    packet.extend_from_slice(&operation.to_be_bytes());
    packet.extend_from_slice(&sender.0);
    packet.extend_from_slice(&sender.1.octets());
    packet.extend_from_slice(&target.0);
    packet.extend_from_slice(&target.1.octets());
    packet
}

/// An IPv4 packet with a 20-byte header (TTL 64, header checksum) around `payload`.
pub fn ipv4(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; 20];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    packet[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    packet[8] = 64;
    packet[9] = protocol;
    packet[12..16].copy_from_slice(&source.octets());
    packet[16..20].copy_from_slice(&destination.octets());
    let checksum = internet_checksum(&packet);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// A UDP or TCP segment's checksum over the IPv4 pseudo-header and `segment` (whose checksum
/// field must be zero).
pub fn transport_checksum(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    protocol: u8,
    segment: &[u8],
) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&destination.octets());
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    internet_checksum(&pseudo)
}

/// The next frame waiting at `port`.
pub fn receive(port: &mut WirePort) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    port.receive(&mut buf).map(|len| buf[..len].to_vec())
}
