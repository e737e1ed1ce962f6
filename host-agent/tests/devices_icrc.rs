//! The virtio-net device's RoCEv2 ICRC offload: the device fills in the ICRC of every RoCEv2
//! frame it sends and drops received ones whose ICRC is wrong; everything else passes as it
//! would without the offload.

mod devices_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use devices_support::{BASIC_FEATURES, Driver, frame};
use host_agent::devices::net_backend::NetBackend;
use host_agent::devices::switch::{Switch, SwitchConfig, SwitchPort};
use host_agent::devices::virtio::net::{NetConfig, RxOutcome, is_rocev2};
use proptest::prelude::*;
use roce::wire::Opcode;
use roce::wire::RoceRepr as IbRepr;
use roce::wire::bth::{self, Repr as BthRepr};
use roce::wire::{Rocev2Packet, Rocev2Repr};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
const TIMEOUT: Duration = Duration::from_secs(10);

fn driver_and_peer(roce_icrc: bool) -> (Driver, SwitchPort, SwitchPort, Switch) {
    let mut driver = Driver::new(NetConfig {
        mac: MAC_A,
        roce_icrc,
        ..NetConfig::default()
    });
    driver.init(64, BASIC_FEATURES);
    let switch = Switch::new(SwitchConfig::default());
    let port = switch.port(Some(MAC_A)).unwrap();
    let peer = switch.port(Some(MAC_PEER)).unwrap();
    (driver, port, peer, switch)
}

/// A RoCEv2 SEND of `payload_len` bytes, PSN `psn`, as an IPv4 packet: with its ICRC, and
/// with the zeros a device that leaves the ICRC to the NIC writes instead.
fn roce_packet(psn: u32, payload_len: usize) -> (Vec<u8>, Vec<u8>) {
    let bth = BthRepr {
        opcode: Opcode::RcSendOnly,
        solicited_event: false,
        migration_request: false,
        pad_count: 0,
        transport_version: 0,
        pkey: bth::DEFAULT_PKEY,
        fecn: false,
        becn: false,
        dest_qpn: 0x11,
        ack_request: true,
        psn,
    };
    let repr = Rocev2Repr {
        src_addr: Ipv4Addr::new(10, 0, 0, 1),
        dst_addr: Ipv4Addr::new(10, 0, 0, 2),
        traffic_class: 0,
        ttl: 64,
        identification: psn as u16,
        src_port: 0xc000 | psn as u16 & 0xff,
        ib: IbRepr::new(bth).with_payload_len(payload_len),
    };
    let payload: Vec<u8> = (0..payload_len).map(|i| (i as u32 ^ psn) as u8).collect();
    let mut computed = vec![0u8; repr.buffer_len()];
    repr.emit(&mut computed, &payload).unwrap();
    let mut offloaded = vec![0u8; repr.buffer_len()];
    let mut icrc = repr.emit_headers_offloaded(&mut offloaded).unwrap();
    icrc.update_copy(&mut offloaded[repr.payload_range()], &payload);
    repr.emit_icrc(&mut offloaded, icrc).unwrap();
    (computed, offloaded)
}

fn ethernet(destination: [u8; 6], source: [u8; 6], packet: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + packet.len());
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(packet);
    frame
}

/// A UDP datagram to port `port` that is not RoCE, from `source` to `destination`.
fn udp_frame(destination: [u8; 6], source: [u8; 6], port: u16) -> Vec<u8> {
    let (_, mut packet) = roce_packet(9, 40);
    packet[22..24].copy_from_slice(&port.to_be_bytes());
    ethernet(destination, source, &packet)
}

#[test]
fn the_device_fills_in_the_icrc_of_every_roce_frame_it_sends_and_nothing_else() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer(true);
    let packets: Vec<(Vec<u8>, Vec<u8>)> = [0usize, 1, 3, 64, 1024]
        .iter()
        .enumerate()
        .map(|(index, len)| roce_packet(index as u32 + 100, *len))
        .collect();
    let others = [
        frame(MAC_PEER, MAC_A, 7, 100),
        udp_frame(MAC_PEER, MAC_A, 53),
    ];
    for (_, offloaded) in &packets {
        assert!(
            Rocev2Packet::new_checked(&offloaded[..])
                .unwrap()
                .verify_icrc()
                .is_err()
        );
        driver.send(&ethernet(MAC_PEER, MAC_A, offloaded));
    }
    for other in &others {
        driver.send(other);
    }
    assert_eq!(driver.nic().process_tx(&mut port), packets.len() + 2);
    for (computed, _) in &packets {
        let received = peer.receive_timeout(TIMEOUT).unwrap();
        assert_eq!(received, ethernet(MAC_PEER, MAC_A, computed));
    }
    for other in &others {
        assert_eq!(&peer.receive_timeout(TIMEOUT).unwrap(), other);
    }
    let counters = driver.nic().counters();
    assert_eq!(counters.tx_icrc_offloaded, packets.len() as u64);
    assert_eq!(counters.tx_packets, packets.len() as u64 + 2);
    assert_eq!(counters.tx_malformed, 0);
}

#[test]
fn without_the_offload_the_device_leaves_roce_frames_as_they_are() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer(false);
    let (_, offloaded) = roce_packet(5, 64);
    let sent = ethernet(MAC_PEER, MAC_A, &offloaded);
    driver.send(&sent);
    assert_eq!(driver.nic().process_tx(&mut port), 1);
    assert_eq!(peer.receive_timeout(TIMEOUT).unwrap(), sent);
    // A frame with a wrong ICRC is delivered too: the guest checks it.
    driver.post_rx(4, 1526);
    peer.send(&ethernet(MAC_A, MAC_PEER, &offloaded)).unwrap();
    assert_eq!(driver.nic().process_rx(&mut port), 1);
    assert_eq!(driver.receive().len(), 1);
    let counters = driver.nic().counters();
    assert_eq!(
        (
            counters.tx_icrc_offloaded,
            counters.rx_icrc_checked,
            counters.rx_bad_icrc
        ),
        (0, 0, 0)
    );
}

#[test]
fn received_roce_frames_with_a_wrong_icrc_are_dropped_and_counted() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer(true);
    driver.post_rx(8, 1526);
    let (good, _) = roce_packet(1, 200);
    let mut corrupted = good.clone();
    corrupted[100] ^= 0x40;
    let (_, placeholder) = roce_packet(2, 16);
    let other = udp_frame(MAC_A, MAC_PEER, 4790);
    let frames = [
        ethernet(MAC_A, MAC_PEER, &good),
        ethernet(MAC_A, MAC_PEER, &corrupted),
        ethernet(MAC_A, MAC_PEER, &placeholder),
        other.clone(),
    ];
    for frame in &frames {
        peer.send(frame).unwrap();
    }
    assert_eq!(driver.nic().process_rx(&mut port), 4);
    assert_eq!(driver.receive(), [frames[0].clone(), other]);
    let counters = driver.nic().counters();
    assert_eq!(counters.rx_icrc_checked, 1);
    assert_eq!(counters.rx_bad_icrc, 2);
    assert_eq!(counters.rx_packets, 2);
    // The masked fields may change on the way: TTL, TOS and the IP checksum.
    let mut routed = good.clone();
    routed[8] -= 1;
    routed[1] = 0x02;
    routed[10..12].copy_from_slice(&[0xde, 0xad]);
    assert_eq!(
        driver
            .nic()
            .deliver_frame(&ethernet(MAC_A, MAC_PEER, &routed)),
        RxOutcome::Delivered
    );
}

#[test]
fn a_roce_frame_whose_icrc_cannot_be_computed_is_not_sent() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer(true);
    let (_, offloaded) = roce_packet(3, 64);
    // The IP total length says more than the frame holds.
    let mut long = offloaded.clone();
    let total = u16::from_be_bytes([long[2], long[3]]) + 100;
    long[2..4].copy_from_slice(&total.to_be_bytes());
    // IPv4 options, which RoCEv2 packets do not carry.
    let mut options = offloaded.clone();
    options[0] = 0x46;
    options.splice(20..20, [1, 1, 1, 0]);
    for packet in [&long, &options] {
        driver.send(&ethernet(MAC_PEER, MAC_A, packet));
    }
    assert_eq!(driver.nic().process_tx(&mut port), 2);
    let counters = driver.nic().counters();
    assert_eq!(counters.tx_malformed, 2);
    assert_eq!(counters.tx_packets, 0);
    assert!(peer.receive_timeout(Duration::from_millis(50)).is_none());
}

/// Frames that are mostly RoCEv2-shaped, with random bytes anywhere.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..300,
        prop::collection::vec((0usize..400, any::<u8>()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(payload_len, edits, truncate)| {
            let (computed, _) = roce_packet(payload_len as u32, payload_len);
            let mut frame = ethernet(MAC_A, MAC_PEER, &computed);
            for (at, value) in edits {
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            if truncate {
                frame.truncate(14 + payload_len % 60);
            }
            frame
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever arrives, the device neither panics nor lets a RoCEv2 frame with a wrong ICRC
    /// through, and it delivers every other frame unchanged.
    #[test]
    fn received_frames_reach_the_guest_only_with_a_right_icrc(frame in frames()) {
        let (mut driver, _port, _peer, _switch) = driver_and_peer(true);
        driver.post_rx(1, 2048);
        let outcome = driver.nic().deliver_frame(&frame);
        let roce = is_rocev2(&frame);
        let right = roce && roce::icrc::verify(&frame[14..]).is_ok();
        if roce && !right {
            prop_assert_eq!(outcome, RxOutcome::BadIcrc);
            prop_assert!(driver.receive().is_empty());
        } else {
            prop_assert_eq!(outcome, RxOutcome::Delivered);
            prop_assert_eq!(driver.receive(), vec![frame.clone()]);
        }
    }

    /// Whatever a guest sends, the device neither panics nor sends a RoCEv2 frame without a
    /// right ICRC, and it sends every other frame unchanged.
    #[test]
    fn sent_frames_leave_with_a_right_icrc(mut frame in frames()) {
        let (mut driver, mut port, mut peer, _switch) = driver_and_peer(true);
        frame[..6].copy_from_slice(&MAC_PEER);
        frame[6..12].copy_from_slice(&MAC_A);
        driver.send(&frame);
        prop_assert_eq!(driver.nic().process_tx(&mut port), 1);
        let counters = driver.nic().counters();
        if counters.tx_packets == 1 {
            let sent = peer.receive_timeout(TIMEOUT).unwrap();
            if is_rocev2(&frame) {
                prop_assert!(roce::icrc::verify(&sent[14..]).is_ok());
                prop_assert_eq!(counters.tx_icrc_offloaded, 1);
            } else {
                prop_assert_eq!(sent, frame);
            }
        } else {
            prop_assert!(is_rocev2(&frame));
            prop_assert_eq!(counters.tx_malformed, 1);
        }
    }
}
