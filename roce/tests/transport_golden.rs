//! The first packets of a SEND, an RDMA WRITE and an RDMA READ exchange, byte for byte.
//!
//! The expected bytes were computed apart from this crate, field by field from IBTA vol. 1
//! and RFC 791/768 (a short Python script: `struct.pack` for the headers, the RFC 1071
//! checksum, `zlib.crc32` over the masked headers for the ICRC, as annex A17 describes it):
//!
//! * IPv4: `45 00`, total length, identification counting 0, 1, 2, ... per device, `40 00`
//!   (DF), TTL `40` (64), protocol `11`, checksum, 10.0.0.1 <-> 10.0.0.2.
//! * UDP: source port `df94` for QP 0x11 (rxe: `0xc000 + hash_32(0x11, 14)`), destination
//!   `12b7` (4791), length, checksum 0.
//! * BTH: opcode; `SE M pad(2) tver(4)`; P_Key `ffff`; `00` and the destination QP `000011`;
//!   AckReq bit and PSN (the requester starts at 0x123456). AckReq is set on the last packet
//!   of each message and on READ requests only.
//! * AETH: syndrome `1f` (ACK, credits "invalid" as rxe sends) and the MSN: 1 after the
//!   SEND, 2 after the WRITE, 3 on the READ responses (the READ counts when it arrives).
//! * RETH: virtual address, rkey (`0x10a`: index 1, key byte from the device seed), length.
//! * The ICRC, little-endian.

mod transport_support;

use roce::icrc;
use roce::verbs::*;
use roce::wire::{Rocev2Packet, Rocev2Repr};
use transport_support::*;

const REGION_A: u64 = 0x7f00_0000_0000;
const REGION_B: u64 = 0x7f10_0000_0000;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap())
        .collect()
}

struct Expected {
    name: &'static str,
    from: usize,
    length: usize,
    headers: &'static str,
    payload: Vec<u8>,
    icrc: u32,
}

/// Two QPs with known regions and first PSNs.
fn golden_setup() -> Setup {
    Setup {
        region_len: 64 * 1024,
        region_addr: Some([REGION_A, REGION_B]),
        sq_psn: [0x12_3456, 0x65_4321],
        ..Setup::default()
    }
}

fn message(length: usize, multiplier: usize, offset: usize) -> Vec<u8> {
    (0..length)
        .map(|index| (index * multiplier + offset) as u8)
        .collect()
}

#[test]
fn send_write_read_exchange() {
    let setup = golden_setup();
    let (mut net, [a, b]) = connect(&setup, Faults::NONE, 1);
    net.record = Some(Vec::new());
    assert_eq!(a.qp.qp_num(), 0x11);
    assert_eq!(b.qp.qp_num(), 0x11);
    assert_eq!(b.info.rkey, 0x10a);
    assert_eq!(roce::transport::udp_source_port(0x11), 0xdf94);

    let send = message(2501, 7, 3);
    let write = message(100, 7, 3);
    let read = message(3000, 13, 5);
    let wait = |net: &mut Net, cq: CqHandle, device: usize| {
        let mut completions = Vec::new();
        net.run_until(1_000_000_000, |net| {
            completions.extend(poll_all(&mut net.devices[device], cq));
            !completions.is_empty()
        });
        assert_eq!(completions[0].status, WcStatus::Success);
        completions
    };

    // SEND 2501 bytes: FIRST, MIDDLE, LAST with 453 bytes and 3 pad bytes; one ACK.
    let sge = b.info.sge(0x8000, 4096);
    net.devices[1]
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 1,
                sg_list: &[sge],
            },
        )
        .unwrap();
    net.devices[0]
        .mr_mut(a.mr)
        .unwrap()
        .write(0, &send)
        .unwrap();
    let sge = [a.info.sge(0, 2501)];
    net.devices[0]
        .post_send(a.qp, &SendWr::new(1, WrOperation::Send, &sge).signaled())
        .unwrap();
    wait(&mut net, a.cq, 0);
    wait(&mut net, b.cq, 1);

    // RDMA WRITE of 100 bytes: ONLY with RETH; one ACK.
    net.devices[0]
        .mr_mut(a.mr)
        .unwrap()
        .write(0x4000, &write)
        .unwrap();
    let sge = [a.info.sge(0x4000, 100)];
    let operation = WrOperation::RdmaWrite {
        remote_addr: REGION_B + 0x100,
        rkey: b.info.rkey,
    };
    net.devices[0]
        .post_send(a.qp, &SendWr::new(2, operation, &sge).signaled())
        .unwrap();
    wait(&mut net, a.cq, 0);

    // RDMA READ of 3000 bytes: the request, then FIRST, MIDDLE, LAST responses.
    net.devices[1]
        .mr_mut(b.mr)
        .unwrap()
        .write(0x1000, &read)
        .unwrap();
    let sge = [a.info.sge(0x8000, 3000)];
    let operation = WrOperation::RdmaRead {
        remote_addr: REGION_B + 0x1000,
        rkey: b.info.rkey,
    };
    net.devices[0]
        .post_send(a.qp, &SendWr::new(3, operation, &sge).signaled())
        .unwrap();
    wait(&mut net, a.cq, 0);
    assert!(net.devices[0].mr(a.mr).unwrap().as_slice()[0x8000..0x8000 + 3000] == read[..]);

    let expected = [
        Expected {
            name: "SEND FIRST",
            from: 0,
            length: 1068,
            headers: "4500042c00004000401122bf0a0000010a000002df9412b7041800000000ffff0000001100123456",
            payload: send[..1024].to_vec(),
            icrc: 0x4ba4_16be,
        },
        Expected {
            name: "SEND MIDDLE",
            from: 0,
            length: 1068,
            headers: "4500042c00014000401122be0a0000010a000002df9412b7041800000100ffff0000001100123457",
            payload: send[1024..2048].to_vec(),
            icrc: 0xd339_6d52,
        },
        Expected {
            name: "SEND LAST (AckReq, pad 3)",
            from: 0,
            length: 500,
            headers: "450001f400024000401124f50a0000010a000002df9412b701e000000230ffff0000001180123458",
            payload: send[2048..].to_vec(),
            icrc: 0x6fd9_f111,
        },
        Expected {
            name: "ACK of the SEND (MSN 1)",
            from: 1,
            length: 48,
            headers: "4500003000004000401126bb0a0000020a000001df9412b7001c00001100ffff00000011001234581f000001",
            payload: Vec::new(),
            icrc: 0x51b6_fcb5,
        },
        Expected {
            name: "RDMA WRITE ONLY",
            from: 0,
            length: 160,
            headers: "450000a000034000401126480a0000010a000002df9412b7008c00000a00ffff000000118012345900007f10000001000000010a00000064",
            payload: write.clone(),
            icrc: 0xee93_995c,
        },
        Expected {
            name: "ACK of the WRITE (MSN 2)",
            from: 1,
            length: 48,
            headers: "4500003000014000401126ba0a0000020a000001df9412b7001c00001100ffff00000011001234591f000002",
            payload: Vec::new(),
            icrc: 0xbb56_8f16,
        },
        Expected {
            name: "RDMA READ request",
            from: 0,
            length: 60,
            headers: "4500003c00044000401126ab0a0000010a000002df9412b7002800000c00ffff000000118012345a00007f10000010000000010a00000bb8",
            payload: Vec::new(),
            icrc: 0xf41c_ebe6,
        },
        Expected {
            name: "READ response FIRST (AETH, MSN 3)",
            from: 1,
            length: 1072,
            headers: "4500043000024000401122b90a0000020a000001df9412b7041c00000d00ffff000000110012345a1f000003",
            payload: read[..1024].to_vec(),
            icrc: 0x7ed0_a42f,
        },
        Expected {
            name: "READ response MIDDLE (no AETH)",
            from: 1,
            length: 1068,
            headers: "4500042c00034000401122bc0a0000020a000001df9412b7041800000e00ffff000000110012345b",
            payload: read[1024..2048].to_vec(),
            icrc: 0x48bb_e815,
        },
        Expected {
            name: "READ response LAST (AETH)",
            from: 1,
            length: 1000,
            headers: "450003e800044000401122ff0a0000020a000001df9412b703d400000f00ffff000000110012345c1f000003",
            payload: read[2048..].to_vec(),
            icrc: 0x6e34_4b86,
        },
    ];
    let record = net.record.take().unwrap();
    assert_eq!(
        record.len(),
        expected.len(),
        "packets: {:?}",
        record
            .iter()
            .map(|(from, bytes)| (*from, bytes.len()))
            .collect::<Vec<_>>()
    );
    for ((from, bytes), expected) in record.iter().zip(&expected) {
        let name = expected.name;
        assert_eq!(*from, expected.from, "{name}: sender");
        assert_eq!(bytes.len(), expected.length, "{name}: length");
        let headers = hex(expected.headers);
        assert_eq!(
            bytes[..headers.len()],
            headers[..],
            "{name}: headers\n got {:02x?}\nwant {:02x?}",
            &bytes[..headers.len()],
            headers
        );
        let payload_end = headers.len() + expected.payload.len();
        assert!(
            bytes[headers.len()..payload_end] == expected.payload[..],
            "{name}: payload"
        );
        assert!(
            bytes[payload_end..bytes.len() - 4]
                .iter()
                .all(|&pad| pad == 0),
            "{name}: pad"
        );
        assert_eq!(
            bytes[bytes.len() - 4..],
            expected.icrc.to_le_bytes(),
            "{name}: ICRC"
        );
        // And the crate's own parser agrees.
        let packet = Rocev2Packet::new_checked(&bytes[..]).unwrap();
        Rocev2Repr::parse(&packet).unwrap();
        assert_eq!(icrc::compute(bytes).unwrap(), expected.icrc);
    }
}

/// An RNR NAK carries the responder's `min_rnr_timer` (12 here, as `ibv_rc_pingpong` sets)
/// in its syndrome (`001 01100` = 0x2c), the PSN of the refused SEND and the MSN so far.
#[test]
fn rnr_nak_and_sequence_nak_syndromes() {
    let setup = Setup {
        min_rnr_timer: 12,
        sq_psn: [0xff_fffe, 0x10],
        ..Setup::default()
    };
    let (mut net, [a, _]) = connect(&setup, Faults::NONE, 1);
    net.record = Some(Vec::new());
    let sge = [a.info.sge(0, 16)];
    net.devices[0]
        .post_send(a.qp, &SendWr::new(1, WrOperation::Send, &sge).signaled())
        .unwrap();
    net.flush();
    net.step();
    net.flush();
    let record = net.record.take().unwrap();
    assert_eq!(record.len(), 2);
    let (from, nak) = &record[1];
    assert_eq!(*from, 1);
    // BTH: ACKNOWLEDGE, PSN 0xfffffe; AETH: 0x2c, MSN 0.
    assert_eq!(nak[28..40], hex("1100ffff0000001100fffffe")[..]);
    assert_eq!(nak[40..44], hex("2c000000")[..]);
    assert_eq!(nak.len(), 48);

    // A request after a gap is answered once with a PSN sequence error NAK (`011 00000`)
    // carrying the expected PSN.
    let (mut net, [a, b]) = connect(&Setup::default(), Faults::NONE, 2);
    for wr_id in 0..3 {
        let sge = b.info.sge(wr_id * 64, 64);
        net.devices[1]
            .post_recv(
                b.qp,
                &RecvWr {
                    wr_id,
                    sg_list: &[sge],
                },
            )
            .unwrap();
    }
    let mut buffer = vec![0u8; 2048];
    let mut requests = Vec::new();
    for wr_id in 0..3 {
        let sge = [a.info.sge(0, 8)];
        net.devices[0]
            .post_send(a.qp, &SendWr::new(wr_id, WrOperation::Send, &sge))
            .unwrap();
    }
    while let Some(length) = net.devices[0].poll_transmit(net.now, &mut buffer) {
        requests.push(buffer[..length].to_vec());
    }
    assert_eq!(requests.len(), 3);
    // Lose the first; deliver the other two.
    net.devices[1].receive(&requests[1], net.now);
    net.devices[1].receive(&requests[2], net.now);
    let mut answers = Vec::new();
    while let Some(length) = net.devices[1].poll_transmit(net.now, &mut buffer) {
        answers.push(buffer[..length].to_vec());
    }
    assert_eq!(answers.len(), 1, "one NAK per gap");
    let expected_psn = setup_psn(&Setup::default());
    let mut bth = hex("1100ffff00000011");
    bth.extend_from_slice(&expected_psn.to_be_bytes());
    assert_eq!(answers[0][28..40], bth[..]);
    assert_eq!(answers[0][40..44], hex("60000000")[..]);
    assert_eq!(net.devices[1].counters().seq_naks_sent, 1);
}

fn setup_psn(setup: &Setup) -> u32 {
    setup.sq_psn[0]
}

/// A SEND the responder took already is acknowledged again from its headers alone, before
/// its ICRC is checked (a copy with a damaged payload still gets the ACK a resending peer
/// needs); a new packet with a wrong ICRC is dropped and counted, and changes nothing.
#[test]
fn duplicates_are_acknowledged_before_the_icrc_new_packets_are_not() {
    let setup = golden_setup();
    let (mut net, [a, b]) = connect(&setup, Faults::NONE, 1);
    net.record = Some(Vec::new());
    for wr_id in 1..=2 {
        let sge = b.info.sge(0x8000, 4096);
        net.devices[1]
            .post_recv(
                b.qp,
                &RecvWr {
                    wr_id,
                    sg_list: &[sge],
                },
            )
            .unwrap();
    }
    let sge = [a.info.sge(0, 2501)];
    net.devices[0]
        .post_send(a.qp, &SendWr::new(1, WrOperation::Send, &sge).signaled())
        .unwrap();
    let mut done = Vec::new();
    net.run_until(1_000_000_000, |net| {
        done.extend(poll_all(&mut net.devices[0], a.cq));
        !done.is_empty()
    });
    assert_eq!(done[0].status, WcStatus::Success);
    let record = net.record.take().unwrap();
    let first = record
        .iter()
        .find(|(from, _)| *from == 0)
        .map(|(_, bytes)| bytes.clone())
        .unwrap();

    // The SEND FIRST again, its payload damaged: an ACK of the whole SEND (PSN 0x123458).
    let mut damaged = first.clone();
    let last = damaged.len() - 10;
    damaged[last] ^= 0xff;
    assert!(
        Rocev2Packet::new_checked(&damaged[..])
            .unwrap()
            .verify_icrc()
            .is_err()
    );
    let before = *net.devices[1].counters();
    net.devices[1].receive(&damaged, net.now);
    let mut out = vec![0u8; 4096];
    let len = net.devices[1]
        .poll_transmit(net.now, &mut out)
        .expect("an ACK");
    let ack = Rocev2Packet::new_checked(&out[..len]).unwrap();
    let repr = Rocev2Repr::parse(&ack).unwrap();
    assert_eq!(repr.ib.bth.opcode, roce::wire::Opcode::RcAcknowledge);
    assert_eq!(repr.ib.bth.psn, 0x12_3458);
    let after = *net.devices[1].counters();
    assert_eq!(after.duplicate_requests, before.duplicate_requests + 1);
    assert_eq!(after.icrc_errors, before.icrc_errors);

    // A new SEND ONLY at the expected PSN with a wrong ICRC: dropped, counted, no answer,
    // no completion.
    let mut new = first;
    new[28 + 9..28 + 12].copy_from_slice(&[0x12, 0x34, 0x59]); // PSN
    new[28] = 0x04; // SEND ONLY
    net.devices[1].receive(&new, net.now);
    assert_eq!(net.devices[1].poll_transmit(net.now, &mut out), None);
    assert_eq!(net.devices[1].counters().icrc_errors, after.icrc_errors + 1);
    let mut completions = poll_all(&mut net.devices[1], b.cq);
    completions.retain(|completion| completion.wr_id == 2);
    assert!(completions.is_empty());
}
