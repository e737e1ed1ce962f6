//! Arbitrary bytes as an IPv4/UDP/RoCEv2 packet and as a bare IB packet: nothing may panic,
//! and whatever parses must emit back to something that parses to the same `Repr`.
//!
//! ```text
//! cd roce/fuzz && cargo +nightly fuzz run packet
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;
use roce::icrc;
use roce::wire::{Error, RocePacket, RoceRepr, Rocev2Packet, Rocev2Repr};

fuzz_target!(|data: &[u8]| {
    whole_packet(data);

    // Most inputs fail the checksums; repair them to reach the deeper checks.
    let mut repaired = data.to_vec();
    if let Ok(mut packet) = Rocev2Packet::new_checked(&mut repaired[..]) {
        packet.ipv4_mut().fill_checksum();
        packet.udp_mut().set_checksum(0);
        packet
            .fill_icrc()
            .expect("a checked packet has room for its ICRC");
        whole_packet(&repaired);
        let packet = Rocev2Packet::new_checked(&repaired[..]).expect("still checks");
        let result = Rocev2Repr::parse(&packet);
        assert!(
            !matches!(result, Err(Error::BadChecksum | Error::BadIcrc)),
            "repaired packet rejected: {result:?}"
        );
    }

    ib_packet(data);
    if data.len() > 28 {
        ib_packet(&data[28..]);
    }

    let _ = icrc::compute(data);
    let _ = icrc::verify(data);
});

fn whole_packet(data: &[u8]) {
    let Ok(packet) = Rocev2Packet::new_checked(data) else {
        return;
    };
    let ib = packet.ib();
    touch(&ib);
    let _ = (
        packet.ipv4().ttl(),
        packet.udp().src_port(),
        packet.compute_icrc(),
    );
    let Ok(repr) = Rocev2Repr::parse(&packet) else {
        return;
    };
    let mut emitted = vec![0u8; repr.buffer_len()];
    repr.emit(&mut emitted, ib.payload())
        .expect("a parsed repr emits");
    let again = Rocev2Packet::new_checked(&emitted[..]).expect("emitted packet checks");
    assert_eq!(Rocev2Repr::parse(&again), Ok(repr));
    assert_eq!(again.ib().payload(), ib.payload());
}

fn ib_packet(data: &[u8]) {
    let Ok(packet) = RocePacket::new_checked(data) else {
        return;
    };
    touch(&packet);
    let repr = RoceRepr::parse(&packet).expect("a checked IB packet parses");
    assert_eq!(repr.buffer_len(), data.len());
    let mut emitted = vec![0u8; repr.buffer_len()];
    let mut out = RocePacket::new_unchecked(&mut emitted[..]);
    repr.emit(&mut out).expect("a parsed repr emits");
    out.payload_mut().copy_from_slice(packet.payload());
    out.set_icrc(packet.icrc());
    let again = RocePacket::new_checked(&emitted[..]).expect("emitted packet checks");
    assert_eq!(RoceRepr::parse(&again), Ok(repr));
    assert_eq!(again.payload(), packet.payload());
}

fn touch(packet: &RocePacket<&[u8]>) {
    let bth = packet.bth();
    let _ = (
        bth.opcode(),
        bth.psn(),
        bth.dest_qpn(),
        bth.pad_count(),
        bth.reserved7(),
    );
    let _ = (
        packet.header_len(),
        packet.payload(),
        packet.pad(),
        packet.icrc(),
    );
    let _ = packet
        .reth()
        .map(|h| (h.virtual_address(), h.rkey(), h.dma_length()));
    let _ = packet.aeth().map(|h| (h.syndrome(), h.msn()));
    let _ = packet.atomic_eth().map(|h| h.compare_data());
    let _ = packet.atomic_ack_eth().map(|h| h.original_data());
    let _ = packet.immdt().map(|h| h.immediate());
    let _ = packet.ieth().map(|h| h.rkey());
    let _ = packet.deth().map(|h| h.qkey());
}
