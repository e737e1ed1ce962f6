//! The ICRC and the parsers against packets built by an independent implementation: scapy's
//! `scapy.contrib.roce` (see `vectors/gen_vectors.py`, which wrote `vectors/scapy_vectors.txt`).

use roce::icrc::{self, Icrc};
use roce::wire::{Error, Opcode, RocePacket, RoceRepr, Rocev2Packet, Rocev2Repr};

const VECTORS: &str = include_str!("vectors/scapy_vectors.txt");

#[derive(Debug)]
struct Vector {
    name: String,
    ip: u8,
    opcode: u8,
    qpn: u32,
    psn: u32,
    tos: u8,
    ttl: u8,
    payload_len: usize,
    pad: u8,
    canonical: bool,
    icrc: u32,
    bytes: Vec<u8>,
}

fn hex_u32(value: &str) -> u32 {
    u32::from_str_radix(value.trim_start_matches("0x"), 16).unwrap()
}

fn decode_hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2));
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> Vec<Vector> {
    let mut header_seen = false;
    let mut vectors = Vec::new();
    for line in VECTORS.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            header_seen |= comment.contains("scapy 2.");
            continue;
        }
        let field = |key: &str| {
            line.split(' ')
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{key} missing in {line}"))
        };
        vectors.push(Vector {
            name: field("name").to_owned(),
            ip: field("ip").parse().unwrap(),
            opcode: hex_u32(field("opcode")) as u8,
            qpn: hex_u32(field("qpn")),
            psn: hex_u32(field("psn")),
            tos: hex_u32(field("tos")) as u8,
            ttl: field("ttl").parse().unwrap(),
            payload_len: field("payload_len").parse().unwrap(),
            pad: field("pad").parse().unwrap(),
            canonical: field("canonical") == "1",
            icrc: hex_u32(field("icrc")),
            bytes: decode_hex(field("hex")),
        });
    }
    assert!(header_seen, "the vector file names the scapy version");
    assert!(vectors.len() > 200, "only {} vectors", vectors.len());
    vectors
}

/// Offset of the UDP payload (the IB packet) and its end.
fn ib_range(vector: &Vector) -> core::ops::Range<usize> {
    let udp_start = if vector.ip == 4 { 20 } else { 40 };
    let udp_len = usize::from(u16::from_be_bytes([
        vector.bytes[udp_start + 4],
        vector.bytes[udp_start + 5],
    ]));
    udp_start + 8..udp_start + udp_len
}

#[test]
fn icrc_matches_scapy() {
    for vector in vectors() {
        let name = &vector.name;
        assert_eq!(
            icrc::compute(&vector.bytes),
            Ok(vector.icrc),
            "{name}: ICRC differs from scapy's"
        );
        assert_eq!(icrc::verify(&vector.bytes), Ok(()), "{name}");
        let trailer = &vector.bytes[vector.bytes.len() - 4..];
        assert_eq!(trailer, vector.icrc.to_le_bytes(), "{name}: LSB first");

        let mut filled = vector.bytes.clone();
        let length = filled.len();
        filled[length - 4..].fill(0);
        assert_eq!(icrc::verify(&filled), Err(Error::BadIcrc), "{name}");
        assert_eq!(icrc::fill(&mut filled), Ok(vector.icrc), "{name}");
        assert_eq!(filled, vector.bytes, "{name}");
    }
}

#[test]
fn incremental_icrc_matches_scapy() {
    for vector in vectors().into_iter().filter(|vector| vector.ip == 4) {
        let bytes = &vector.bytes;
        let mut icrc = Icrc::begin_ipv4(
            bytes[..20].try_into().unwrap(),
            bytes[20..28].try_into().unwrap(),
            bytes[28..40].try_into().unwrap(),
        );
        // Feed the rest in uneven pieces, copying like a transmit path would.
        let rest = &bytes[40..bytes.len() - 4];
        let mut copy = vec![0u8; rest.len()];
        let mut offset = 0usize;
        for piece in [3usize, 17, 100, usize::MAX] {
            let end = offset.saturating_add(piece).min(rest.len());
            icrc.update_copy(&mut copy[offset..end], &rest[offset..end]);
            offset = end;
        }
        assert_eq!(copy, rest);
        assert_eq!(icrc.finish(), vector.icrc, "{}", vector.name);
    }
}

#[test]
fn parsers_agree_with_scapy() {
    let mut byte_exact = 0;
    for vector in vectors() {
        let name = &vector.name;
        let ib_bytes = &vector.bytes[ib_range(&vector)];
        let ib = RocePacket::new_checked(ib_bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let bth = ib.bth();
        assert_eq!(u8::from(bth.opcode()), vector.opcode, "{name}");
        assert_eq!(bth.dest_qpn(), vector.qpn, "{name}");
        assert_eq!(bth.psn(), vector.psn, "{name}");
        assert_eq!(bth.pad_count(), vector.pad, "{name}");
        assert_eq!(ib.payload().len(), vector.payload_len, "{name}");
        assert_eq!(ib.pad().len(), usize::from(vector.pad), "{name}");
        assert_eq!(ib.icrc(), vector.icrc, "{name}");
        assert_eq!(
            ib.header_len(),
            12 + bth.opcode().ext_headers().header_len(),
            "{name}"
        );
        assert_eq!(
            ib.opcode().is_known(),
            !name.starts_with("UNKNOWN"),
            "{name}"
        );
        if bth.opcode() == Opcode::Cnp {
            assert_eq!(ib.payload().len(), 16);
        }
        let ib_repr = RoceRepr::parse(&ib).unwrap();
        assert_eq!(ib_repr.buffer_len(), ib_bytes.len(), "{name}");

        if vector.ip != 4 {
            continue;
        }
        let packet =
            Rocev2Packet::new_checked(&vector.bytes[..]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let repr = Rocev2Repr::parse(&packet).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(repr.traffic_class, vector.tos, "{name}");
        assert_eq!(repr.ttl, vector.ttl, "{name}");
        assert_eq!(repr.ib, ib_repr, "{name}");

        // What rxe would send for these values is byte for byte what scapy built.
        let mut emitted = vec![0u8; repr.buffer_len()];
        repr.emit(&mut emitted, ib.payload()).unwrap();
        if vector.canonical {
            assert_eq!(emitted, vector.bytes, "{name}: emitted bytes differ");
            byte_exact += 1;
        } else {
            assert_eq!(
                Rocev2Repr::parse(&Rocev2Packet::new_checked(&emitted[..]).unwrap()),
                Ok(repr)
            );
        }
    }
    assert!(byte_exact > 150, "only {byte_exact} byte-exact comparisons");
}
