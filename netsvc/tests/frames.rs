//! Frames from the network are untrusted. Random bytes, and every kind of frame the service
//! handles (RoCE, UDP, TCP, ARP, ICMP) with bytes flipped, cut short or padded, go into one
//! service. It never stops; it counts every frame once; its RoCE fast path hands OS A exactly
//! the packets that a reference check written here accepts, bit for bit and in order, and counts
//! the malformed ones; an unchanged UDP datagram reaches its socket; and afterwards the service
//! still answers ARP and passes RoCE.

mod common;

use core::net::Ipv4Addr;

use common::{
    Ev, IP_LEFT, MAC_LEFT, Node, arp, ethernet, ipv4, pattern, receive, roce_packet,
    transport_checksum,
};
use netsvc::Nic;
use netsvc::frame::internet_checksum;
use netsvc::memwire::{self, WireConfig, WirePort};
use netsvc::netmsg::ROCE_UDP_PORT;
use proptest::prelude::*;

const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
/// The largest frame the service reads (MTU 1500 plus the Ethernet header).
const MAX_FRAME: usize = 1514;
const UDP_PORT: u16 = 7;
const TCP_PORT: u16 = 80;

/// A service with a UDP socket on port 7 and a TCP listener on port 80, and the host port
/// of the wire it sits on.
struct Bench {
    node: Node<WirePort>,
    host: WirePort,
    now_ns: u64,
    events: Vec<Ev>,
}

impl Bench {
    fn new() -> Bench {
        let (nic, host) = memwire::pair(MAC_LEFT, HOST_MAC, WireConfig::default());
        let mut bench = Bench {
            node: Node::new(nic, IP_LEFT, |_| {}),
            host,
            now_ns: 1_000_000,
            events: Vec::new(),
        };
        bench.node.client.udp_bind(UDP_PORT).unwrap();
        bench.node.client.tcp_listen(TCP_PORT, 4, 0).unwrap();
        bench.settle();
        let bound = bench
            .events
            .iter()
            .filter(|event| matches!(event, Ev::Bound { .. }))
            .count();
        assert_eq!(bound, 2, "both sockets bound: {:?}", bench.events);
        bench.events.clear();
        bench
    }

    /// Polls until the service has read every frame sent to it and gone quiet; keeps OS A's
    /// events and drops what the service sent to the host.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let outcome = self.node.poll(self.now_ns);
            self.now_ns += 10_000;
            self.events.extend(self.node.events());
            while receive(&mut self.host).is_some() {}
            if !outcome.progress && !outcome.busy && self.node.service.nic().pending() == 0 {
                return;
            }
        }
        panic!("the service did not settle");
    }
}

/// What the reference check expects the fast path to do with a frame.
#[derive(Debug, PartialEq, Eq)]
enum Verdict<'a> {
    /// A RoCE packet for us: OS A gets these bytes (the IPv4 packet without Ethernet padding).
    Roce(&'a [u8]),
    /// Addressed to our UDP port 4791 but broken: dropped and counted.
    Malformed,
    /// Anything else: smoltcp's business.
    Stack,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// The RoCE fast path's rules, stated independently of the service's code: an Ethernet frame to
/// our MAC carrying an unfragmented IPv4 packet (version 4, a header of at least 20 bytes, a
/// total length within the frame) for our address, protocol UDP, destination port 4791. Such a
/// packet is passed on if its header checksum is right and the UDP length is at least 8 and
/// matches the IPv4 payload; otherwise it is malformed.
fn reference(frame: &[u8]) -> Verdict<'_> {
    if frame.len() < 14 || frame[..6] != MAC_LEFT || be16(frame, 12) != Some(0x0800) {
        return Verdict::Stack;
    }
    let packet = &frame[14..];
    let Some(&first) = packet.first() else {
        return Verdict::Stack;
    };
    let header_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header_len < 20 || packet.len() < header_len {
        return Verdict::Stack;
    }
    let total_len = usize::from(be16(packet, 2).unwrap());
    if total_len < header_len || total_len > packet.len() {
        return Verdict::Stack;
    }
    let packet = &packet[..total_len];
    let fragmented = be16(packet, 6).unwrap() & 0x3fff != 0;
    if fragmented || packet[9] != 17 || packet[16..20] != IP_LEFT.octets() {
        return Verdict::Stack;
    }
    let udp = &packet[header_len..];
    if be16(udp, 2) != Some(ROCE_UDP_PORT) {
        return Verdict::Stack;
    }
    let checksum_ok = internet_checksum(&packet[..header_len]) == 0;
    match be16(udp, 4) {
        Some(len) if checksum_ok && len >= 8 && usize::from(len) == udp.len() => {
            Verdict::Roce(packet)
        }
        _ => Verdict::Malformed,
    }
}

/// A frame to send, and the UDP payload port 7 must receive if it arrives unchanged.
#[derive(Clone, Debug)]
struct Frame {
    bytes: Vec<u8>,
    udp_payload: Option<Vec<u8>>,
}

fn udp_datagram(source: Ipv4Addr, destination: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut segment = Vec::with_capacity(8 + payload.len());
    segment.extend_from_slice(&40000u16.to_be_bytes());
    segment.extend_from_slice(&port.to_be_bytes());
    segment.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    segment.extend_from_slice(&[0, 0]);
    segment.extend_from_slice(payload);
    let checksum = transport_checksum(source, destination, 17, &segment);
    segment[6..8].copy_from_slice(&checksum.to_be_bytes());
    ipv4(source, destination, 17, &segment)
}

fn tcp_syn(source: Ipv4Addr, destination: Ipv4Addr, port: u16, sequence: u32) -> Vec<u8> {
    let mut segment = Vec::with_capacity(24);
    segment.extend_from_slice(&40001u16.to_be_bytes());
    segment.extend_from_slice(&port.to_be_bytes());
    segment.extend_from_slice(&sequence.to_be_bytes());
    segment.extend_from_slice(&0u32.to_be_bytes());
    // Data offset 6 words, SYN, window 8192, checksum, urgent pointer, MSS option 1460.
    segment.extend_from_slice(&[0x60, 0x02, 0x20, 0x00, 0, 0, 0, 0, 2, 4, 0x05, 0xb4]);
    let checksum = transport_checksum(source, destination, 6, &segment);
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    ipv4(source, destination, 6, &segment)
}

fn icmp_echo(source: Ipv4Addr, destination: Ipv4Addr, sequence: u16, len: usize) -> Vec<u8> {
    let mut message = vec![8, 0, 0, 0, 0x12, 0x34];
    message.extend_from_slice(&sequence.to_be_bytes());
    message.extend_from_slice(&pattern(3, 0, len));
    let checksum = internet_checksum(&message);
    message[2..4].copy_from_slice(&checksum.to_be_bytes());
    ipv4(source, destination, 1, &message)
}

/// One of the frames the service knows how to handle, well formed.
fn template() -> impl Strategy<Value = Frame> {
    let source = prop_oneof![
        Just(HOST_IP),
        (1u8..=254).prop_map(|last| Ipv4Addr::new(10, 0, 0, last)),
        any::<[u8; 4]>().prop_map(Ipv4Addr::from),
    ];
    let destination =
        prop_oneof![4 => Just(IP_LEFT), 1 => any::<[u8; 4]>().prop_map(Ipv4Addr::from)];
    (0u8..5, source, destination, any::<u32>(), 0usize..1400).prop_map(
        |(kind, source, destination, number, len)| {
            let to_us = |packet: Vec<u8>| ethernet(MAC_LEFT, HOST_MAC, 0x0800, &packet);
            match kind {
                0 => {
                    let payload = pattern(number as u8, 0, len);
                    Frame {
                        bytes: to_us(roce_packet(source, destination, number, &payload)),
                        udp_payload: None,
                    }
                }
                1 => {
                    let payload = pattern(number as u8, 5, len);
                    let on_link = destination == IP_LEFT
                        && source != IP_LEFT
                        && source.octets()[..3] == [10, 0, 0];
                    Frame {
                        bytes: to_us(udp_datagram(source, destination, UDP_PORT, &payload)),
                        udp_payload: on_link.then_some(payload),
                    }
                }
                2 => Frame {
                    bytes: to_us(tcp_syn(source, destination, TCP_PORT, number)),
                    udp_payload: None,
                },
                3 => Frame {
                    bytes: to_us(icmp_echo(source, destination, number as u16, len % 512)),
                    udp_payload: None,
                },
                _ => {
                    let operation = 1 + (number & 1) as u16;
                    let packet = arp(operation, (HOST_MAC, source), ([0; 6], destination));
                    Frame {
                        bytes: ethernet([0xff; 6], HOST_MAC, 0x0806, &packet),
                        udp_payload: None,
                    }
                }
            }
        },
    )
}

/// A frame from the network: random bytes, or a template with some bytes flipped, cut short,
/// or with padding added. A changed frame promises nothing about UDP delivery.
fn frame() -> impl Strategy<Value = Frame> {
    let raw = prop::collection::vec(any::<u8>(), 0..=MAX_FRAME).prop_map(|bytes| Frame {
        bytes,
        udp_payload: None,
    });
    let flips = prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4);
    let changed = (
        template(),
        flips,
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(mut frame, flips, cut, padding)| {
            let unchanged = frame.bytes.clone();
            for (at, mask) in flips {
                let at = at.index(frame.bytes.len());
                frame.bytes[at] ^= mask;
            }
            if let Some(cut) = cut {
                let len = cut.index(frame.bytes.len() + 1);
                frame.bytes.truncate(len);
            }
            frame.bytes.extend_from_slice(&padding);
            frame.bytes.truncate(MAX_FRAME);
            if frame.bytes[..unchanged.len().min(frame.bytes.len())] != unchanged[..]
                || frame.bytes.len() < unchanged.len()
            {
                frame.udp_payload = None;
            }
            frame
        });
    prop_oneof![1 => raw, 4 => changed]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn hostile_frames_are_classified_counted_and_survived(
        frames in prop::collection::vec(frame(), 1..48),
    ) {
        let mut bench = Bench::new();
        let before = bench.node.service.stats();
        let mut roce = Vec::new();
        let mut malformed = 0;
        for frame in &frames {
            bench.host.transmit(&frame.bytes).unwrap();
            match reference(&frame.bytes) {
                Verdict::Roce(packet) => roce.push(packet.to_vec()),
                Verdict::Malformed => malformed += 1,
                Verdict::Stack => {}
            }
        }
        bench.settle();

        let stats = bench.node.service.stats();
        let received = stats.frames_received - before.frames_received;
        prop_assert_eq!(received, frames.len() as u64, "every frame read once");
        prop_assert_eq!(
            received,
            (stats.frames_to_stack - before.frames_to_stack)
                + (stats.roce_rx - before.roce_rx)
                + (stats.roce_rx_dropped - before.roce_rx_dropped)
                + (stats.roce_rx_malformed - before.roce_rx_malformed),
            "every frame counted once"
        );
        prop_assert_eq!(stats.roce_rx_dropped, 0);
        prop_assert_eq!(stats.roce_rx_malformed - before.roce_rx_malformed, malformed);
        let delivered: Vec<Vec<u8>> = bench
            .events
            .iter()
            .filter_map(|event| match event {
                Ev::RoceRx(packet) => Some(packet.clone()),
                _ => None,
            })
            .collect();
        prop_assert_eq!(delivered, roce, "OS A gets exactly the RoCE packets for it");
        let datagrams: Vec<&Vec<u8>> = bench
            .events
            .iter()
            .filter_map(|event| match event {
                Ev::UdpRecv { payload, .. } => Some(payload),
                _ => None,
            })
            .collect();
        for payload in frames.iter().filter_map(|frame| frame.udp_payload.as_ref()) {
            prop_assert!(datagrams.contains(&payload), "an unchanged datagram arrived");
        }

        // Still serving: ARP is answered and RoCE passes.
        bench.events.clear();
        let request = arp(1, (HOST_MAC, HOST_IP), ([0; 6], IP_LEFT));
        bench.host.transmit(&ethernet([0xff; 6], HOST_MAC, 0x0806, &request)).unwrap();
        bench.node.poll(bench.now_ns);
        let sent: Vec<Vec<u8>> = std::iter::from_fn(|| receive(&mut bench.host)).collect();
        let reply = arp(2, (MAC_LEFT, IP_LEFT), (HOST_MAC, HOST_IP));
        prop_assert!(
            sent.iter().any(|frame| frame.len() >= 42 && frame[12..14] == [8, 6] && frame[14..42] == reply[..]),
            "an ARP reply among {:?}", sent
        );
        let packet = roce_packet(HOST_IP, IP_LEFT, 7, b"still here");
        bench.host.transmit(&ethernet(MAC_LEFT, HOST_MAC, 0x0800, &packet)).unwrap();
        bench.settle();
        let delivered: Vec<Ev> = bench
            .events
            .into_iter()
            .filter(|event| matches!(event, Ev::RoceRx(_)))
            .collect();
        prop_assert_eq!(delivered, vec![Ev::RoceRx(packet)]);
    }
}

#[test]
fn the_reference_check_accepts_what_the_fast_path_is_for() {
    let packet = roce_packet(HOST_IP, IP_LEFT, 1, b"payload");
    let frame = ethernet(MAC_LEFT, HOST_MAC, 0x0800, &packet);
    assert_eq!(reference(&frame), Verdict::Roce(&packet));
    let mut padded = frame.clone();
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(reference(&padded), Verdict::Roce(&packet));
    let mut bad_checksum = frame.clone();
    bad_checksum[14 + 10] ^= 1;
    assert_eq!(reference(&bad_checksum), Verdict::Malformed);
    let mut bad_udp_len = frame.clone();
    bad_udp_len[14 + 20 + 5] ^= 1;
    assert_eq!(reference(&bad_udp_len), Verdict::Malformed);
    let other = roce_packet(HOST_IP, Ipv4Addr::new(10, 0, 0, 3), 1, b"payload");
    assert_eq!(
        reference(&ethernet(MAC_LEFT, HOST_MAC, 0x0800, &other)),
        Verdict::Stack
    );
    let datagram = udp_datagram(HOST_IP, IP_LEFT, UDP_PORT, b"x");
    assert_eq!(
        reference(&ethernet(MAC_LEFT, HOST_MAC, 0x0800, &datagram)),
        Verdict::Stack
    );
}
