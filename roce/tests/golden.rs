//! Golden bytes for every RC opcode: each array was laid out by hand from the IBTA header
//! formats (BTH, then the extension headers rxe's opcode table lists, payload, pad, ICRC), and
//! is checked in both directions: parsing it gives the expected `RoceRepr` and payload
//! (`test_deconstruct`), and emitting that `RoceRepr` and payload gives the same bytes
//! (`test_construct`).
//!
//! The ICRC of an IB packet covers the IP and UDP headers, which these arrays do not have, so
//! their last four bytes are a marker (`de ad be ef`); `scapy_vectors.rs` checks real ICRCs.

use roce::wire::aeth::{CREDIT_COUNT_INVALID, NakCode, Syndrome};
use roce::wire::{
    AethRepr, AtomicAckEthRepr, AtomicEthRepr, BthRepr, Error, IethRepr, ImmDtRepr, Opcode,
    Operation, Position, RethRepr, RocePacket, RoceRepr,
};

const ICRC_MARKER: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

struct Golden {
    name: &'static str,
    bytes: &'static [u8],
    repr: RoceRepr,
    payload: &'static [u8],
}

/// BTH with P_Key 0xffff, destination QP 0x000011, no congestion bits; `pad` from payload.
fn bth(opcode: Opcode, solicited_event: bool, ack_request: bool, psn: u32) -> BthRepr {
    BthRepr {
        opcode,
        solicited_event,
        migration_request: false,
        pad_count: 0,
        transport_version: 0,
        pkey: 0xffff,
        fecn: false,
        becn: false,
        dest_qpn: 0x11,
        ack_request,
        psn,
    }
}

fn packet(bth: BthRepr, payload: &[u8]) -> RoceRepr {
    RoceRepr::new(bth).with_payload_len(payload.len())
}

fn ack(syndrome: u8, msn: u32) -> Option<AethRepr> {
    Some(AethRepr {
        syndrome: Syndrome::from(syndrome),
        msn,
    })
}

#[rustfmt::skip]
fn goldens() -> Vec<Golden> {
    use Opcode::*;
    vec![
        Golden {
            name: "RC SEND First, 4 bytes",
            bytes: &[
                0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x01, // BTH
                0x01, 0x02, 0x03, 0x04, // payload
                0xde, 0xad, 0xbe, 0xef, // ICRC
            ],
            repr: packet(bth(RcSendFirst, false, false, 1), &[1, 2, 3, 4]),
            payload: &[1, 2, 3, 4],
        },
        Golden {
            name: "RC SEND Middle, 4 bytes",
            bytes: &[
                0x01, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x02,
                0x05, 0x06, 0x07, 0x08,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: packet(bth(RcSendMiddle, false, false, 2), &[5, 6, 7, 8]),
            payload: &[5, 6, 7, 8],
        },
        Golden {
            name: "RC SEND Last, 3 bytes, pad 1, AckReq",
            bytes: &[
                0x02, 0x10, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x03,
                0x09, 0x0a, 0x0b, 0x00, // payload, pad
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: packet(bth(RcSendLast, false, true, 3), &[9, 10, 11]),
            payload: &[9, 10, 11],
        },
        Golden {
            name: "RC SEND Last with Immediate, 2 bytes, pad 2, SE",
            bytes: &[
                0x03, 0xa0, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x04,
                0x11, 0x22, 0x33, 0x44, // ImmDt
                0x0c, 0x0d, 0x00, 0x00,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                immdt: Some(ImmDtRepr { immediate: 0x1122_3344 }),
                ..packet(bth(RcSendLastWithImmediate, true, true, 4), &[12, 13])
            },
            payload: &[12, 13],
        },
        Golden {
            name: "RC SEND Only, 1 byte, pad 3",
            bytes: &[
                0x04, 0x30, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x05,
                0xaa, 0x00, 0x00, 0x00,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: packet(bth(RcSendOnly, false, true, 5), &[0xaa]),
            payload: &[0xaa],
        },
        Golden {
            name: "RC SEND Only with Immediate, no payload, SE",
            bytes: &[
                0x05, 0x80, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x06,
                0xca, 0xfe, 0xba, 0xbe,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                immdt: Some(ImmDtRepr { immediate: 0xcafe_babe }),
                ..packet(bth(RcSendOnlyWithImmediate, true, true, 6), &[])
            },
            payload: &[],
        },
        Golden {
            name: "RC RDMA WRITE First",
            bytes: &[
                0x06, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x07,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, // RETH VA
                0x00, 0x00, 0x00, 0x42, // RETH R_Key
                0x00, 0x00, 0x08, 0x00, // RETH DMA length
                0x10, 0x20, 0x30, 0x40,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                reth: Some(RethRepr { virtual_address: 0x1000, rkey: 0x42, dma_length: 0x800 }),
                ..packet(bth(RcRdmaWriteFirst, false, false, 7), &[0x10, 0x20, 0x30, 0x40])
            },
            payload: &[0x10, 0x20, 0x30, 0x40],
        },
        Golden {
            name: "RC RDMA WRITE Middle",
            bytes: &[
                0x07, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x08,
                0x50, 0x60, 0x70, 0x80,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: packet(bth(RcRdmaWriteMiddle, false, false, 8), &[0x50, 0x60, 0x70, 0x80]),
            payload: &[0x50, 0x60, 0x70, 0x80],
        },
        Golden {
            name: "RC RDMA WRITE Last",
            bytes: &[
                0x08, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x09,
                0x90, 0xa0, 0xb0, 0xc0,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: packet(bth(RcRdmaWriteLast, false, true, 9), &[0x90, 0xa0, 0xb0, 0xc0]),
            payload: &[0x90, 0xa0, 0xb0, 0xc0],
        },
        Golden {
            name: "RC RDMA WRITE Last with Immediate",
            bytes: &[
                0x09, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x0a,
                0x00, 0x00, 0x00, 0x07, // ImmDt
                0xd0, 0xe0, 0xf0, 0x01,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                immdt: Some(ImmDtRepr { immediate: 7 }),
                ..packet(bth(RcRdmaWriteLastWithImmediate, false, true, 10), &[0xd0, 0xe0, 0xf0, 0x01])
            },
            payload: &[0xd0, 0xe0, 0xf0, 0x01],
        },
        Golden {
            name: "RC RDMA WRITE Only",
            bytes: &[
                0x0a, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x0b,
                0x00, 0x00, 0x7f, 0x00, 0x00, 0x00, 0x10, 0x00,
                0x00, 0x00, 0x12, 0x34,
                0x00, 0x00, 0x00, 0x04,
                0x0a, 0x0b, 0x0c, 0x0d,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                reth: Some(RethRepr { virtual_address: 0x7f00_0000_1000, rkey: 0x1234, dma_length: 4 }),
                ..packet(bth(RcRdmaWriteOnly, false, true, 11), &[0x0a, 0x0b, 0x0c, 0x0d])
            },
            payload: &[0x0a, 0x0b, 0x0c, 0x0d],
        },
        Golden {
            name: "RC RDMA WRITE Only with Immediate, zero length",
            bytes: &[
                0x0b, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x0c,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, // RETH
                0x00, 0x00, 0x00, 0x43,
                0x00, 0x00, 0x00, 0x00,
                0x01, 0x02, 0x03, 0x04, // ImmDt after RETH
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                reth: Some(RethRepr { virtual_address: 0x2000, rkey: 0x43, dma_length: 0 }),
                immdt: Some(ImmDtRepr { immediate: 0x0102_0304 }),
                ..packet(bth(RcRdmaWriteOnlyWithImmediate, false, true, 12), &[])
            },
            payload: &[],
        },
        Golden {
            name: "RC RDMA READ Request",
            bytes: &[
                0x0c, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x0d,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x00,
                0x00, 0x00, 0x00, 0x99,
                0x00, 0x00, 0x10, 0x00,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                reth: Some(RethRepr { virtual_address: 0x3000, rkey: 0x99, dma_length: 0x1000 }),
                ..packet(bth(RcRdmaReadRequest, false, true, 13), &[])
            },
            payload: &[],
        },
        Golden {
            name: "RC RDMA READ Response First",
            bytes: &[
                0x0d, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x0d,
                0x1f, 0x00, 0x00, 0x01, // AETH: ACK, no credits, MSN 1
                0x11, 0x12, 0x13, 0x14,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                aeth: ack(0x1f, 1),
                ..packet(bth(RcRdmaReadResponseFirst, false, false, 13), &[0x11, 0x12, 0x13, 0x14])
            },
            payload: &[0x11, 0x12, 0x13, 0x14],
        },
        Golden {
            name: "RC RDMA READ Response Middle",
            bytes: &[
                0x0e, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x0e,
                0x15, 0x16, 0x17, 0x18,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: packet(bth(RcRdmaReadResponseMiddle, false, false, 14), &[0x15, 0x16, 0x17, 0x18]),
            payload: &[0x15, 0x16, 0x17, 0x18],
        },
        Golden {
            name: "RC RDMA READ Response Last, 2 bytes, pad 2",
            bytes: &[
                0x0f, 0x20, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x0f,
                0x1f, 0x00, 0x00, 0x02,
                0x19, 0x1a, 0x00, 0x00,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                aeth: ack(0x1f, 2),
                ..packet(bth(RcRdmaReadResponseLast, false, false, 15), &[0x19, 0x1a])
            },
            payload: &[0x19, 0x1a],
        },
        Golden {
            name: "RC RDMA READ Response Only",
            bytes: &[
                0x10, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x10,
                0x1f, 0x00, 0x00, 0x03,
                0x1b, 0x1c, 0x1d, 0x1e,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                aeth: ack(0x1f, 3),
                ..packet(bth(RcRdmaReadResponseOnly, false, false, 16), &[0x1b, 0x1c, 0x1d, 0x1e])
            },
            payload: &[0x1b, 0x1c, 0x1d, 0x1e],
        },
        Golden {
            name: "RC Acknowledge: ACK",
            bytes: &[
                0x11, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x11,
                0x1f, 0x00, 0x00, 0x04,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr { aeth: ack(0x1f, 4), ..packet(bth(RcAcknowledge, false, false, 17), &[]) },
            payload: &[],
        },
        Golden {
            name: "RC Acknowledge: NAK PSN sequence error",
            bytes: &[
                0x11, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x12,
                0x60, 0x00, 0x00, 0x05,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr { aeth: ack(0x60, 5), ..packet(bth(RcAcknowledge, false, false, 18), &[]) },
            payload: &[],
        },
        Golden {
            name: "RC Acknowledge: RNR NAK 1.28 ms",
            bytes: &[
                0x11, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x13,
                0x2e, 0x00, 0x00, 0x05,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr { aeth: ack(0x2e, 5), ..packet(bth(RcAcknowledge, false, false, 19), &[]) },
            payload: &[],
        },
        Golden {
            name: "RC ATOMIC Acknowledge",
            bytes: &[
                0x12, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x14,
                0x1f, 0x00, 0x00, 0x06, // AETH first
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, // then AtomicAckETH
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                aeth: ack(0x1f, 6),
                atomic_ack_eth: Some(AtomicAckEthRepr { original_data: 100 }),
                ..packet(bth(RcAtomicAcknowledge, false, false, 20), &[])
            },
            payload: &[],
        },
        Golden {
            name: "RC CmpSwap",
            bytes: &[
                0x13, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x15,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, // VA
                0x00, 0x00, 0x00, 0x77, // R_Key
                0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // swap
                0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // compare
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                atomic_eth: Some(AtomicEthRepr {
                    virtual_address: 0x4000,
                    rkey: 0x77,
                    swap_add_data: 0x1111_1111_1111_1111,
                    compare_data: 0x2222_2222_2222_2222,
                }),
                ..packet(bth(RcCompareSwap, false, true, 21), &[])
            },
            payload: &[],
        },
        Golden {
            name: "RC FetchAdd",
            bytes: &[
                0x14, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x16,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x08,
                0x00, 0x00, 0x00, 0x77,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // add 1
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                atomic_eth: Some(AtomicEthRepr {
                    virtual_address: 0x4008,
                    rkey: 0x77,
                    swap_add_data: 1,
                    compare_data: 0,
                }),
                ..packet(bth(RcFetchAdd, false, true, 22), &[])
            },
            payload: &[],
        },
        Golden {
            name: "RC SEND Last with Invalidate",
            bytes: &[
                0x16, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x00, 0x00, 0x17,
                0x00, 0x00, 0x12, 0x34, // IETH
                0x21, 0x22, 0x23, 0x24,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                ieth: Some(IethRepr { rkey: 0x1234 }),
                ..packet(bth(RcSendLastWithInvalidate, false, true, 23), &[0x21, 0x22, 0x23, 0x24])
            },
            payload: &[0x21, 0x22, 0x23, 0x24],
        },
        Golden {
            name: "RC SEND Only with Invalidate, 1 byte, pad 3, top QPN and PSN",
            bytes: &[
                0x17, 0x30, 0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 0x80, 0xff, 0xff, 0xff,
                0x00, 0x00, 0x56, 0x78,
                0x25, 0x00, 0x00, 0x00,
                0xde, 0xad, 0xbe, 0xef,
            ],
            repr: RoceRepr {
                ieth: Some(IethRepr { rkey: 0x5678 }),
                ..packet(
                    BthRepr { dest_qpn: 0xff_ffff, ..bth(RcSendOnlyWithInvalidate, false, true, 0xff_ffff) },
                    &[0x25],
                )
            },
            payload: &[0x25],
        },
    ]
}

#[test]
fn every_rc_opcode_has_a_golden() {
    let goldens = goldens();
    for raw in (0x00..=0x17u8).filter(|raw| *raw != 0x15) {
        assert!(
            goldens.iter().any(|g| u8::from(g.repr.bth.opcode) == raw),
            "no golden packet for RC opcode {raw:#04x}"
        );
    }
}

#[test]
fn test_deconstruct() {
    for golden in goldens() {
        let name = golden.name;
        let packet =
            RocePacket::new_checked(golden.bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(RoceRepr::parse(&packet), Ok(golden.repr), "{name}");
        assert_eq!(packet.payload(), golden.payload, "{name}");
        assert!(packet.pad().iter().all(|byte| *byte == 0), "{name}");
        assert_eq!(packet.icrc().to_le_bytes(), ICRC_MARKER, "{name}");
        assert_eq!(packet.icrc(), 0xefbe_adde, "{name}: ICRC read LSB first");
        assert_eq!(golden.repr.buffer_len(), golden.bytes.len(), "{name}");
    }
}

#[test]
fn test_construct() {
    for golden in goldens() {
        let name = golden.name;
        let mut bytes = vec![0x55; golden.repr.buffer_len()];
        let mut packet = RocePacket::new_unchecked(&mut bytes[..]);
        golden
            .repr
            .emit(&mut packet)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        packet.payload_mut().copy_from_slice(golden.payload);
        packet.set_icrc(u32::from_le_bytes(ICRC_MARKER));
        assert_eq!(bytes, golden.bytes, "{name}");
    }
}

#[test]
fn typed_views_of_goldens() {
    let goldens = goldens();
    let find = |name: &str| goldens.iter().find(|g| g.name.starts_with(name)).unwrap();

    let write = RocePacket::new_checked(find("RC RDMA WRITE Only with Immediate").bytes).unwrap();
    assert_eq!(write.reth().unwrap().virtual_address(), 0x2000);
    assert_eq!(write.immdt().unwrap().immediate(), 0x0102_0304);
    let info = write.opcode().info().unwrap();
    assert_eq!(info.operation, Operation::RdmaWrite);
    assert_eq!(info.position, Position::Only);
    assert!(info.consumes_receive_wqe() && info.completes_receive_wqe());

    let nak = RocePacket::new_checked(find("RC Acknowledge: NAK").bytes).unwrap();
    assert_eq!(
        nak.aeth().unwrap().syndrome(),
        Syndrome::Nak(NakCode::PsnSequenceError)
    );
    let rnr = RocePacket::new_checked(find("RC Acknowledge: RNR").bytes).unwrap();
    assert_eq!(
        rnr.aeth().unwrap().syndrome(),
        Syndrome::RnrNak { timer: 14 }
    );
    assert_eq!(roce::wire::aeth::rnr_timer_micros(14), 1280);
    let ack = RocePacket::new_checked(find("RC Acknowledge: ACK").bytes).unwrap();
    assert_eq!(
        ack.aeth().unwrap().syndrome(),
        Syndrome::Ack {
            credit_count: CREDIT_COUNT_INVALID
        }
    );

    let atomic_ack = RocePacket::new_checked(find("RC ATOMIC Acknowledge").bytes).unwrap();
    assert_eq!(atomic_ack.aeth().unwrap().msn(), 6);
    assert_eq!(atomic_ack.atomic_ack_eth().unwrap().original_data(), 100);

    let cmp_swap = RocePacket::new_checked(find("RC CmpSwap").bytes).unwrap();
    let atomic = cmp_swap.atomic_eth().unwrap();
    assert_eq!(atomic.compare_data(), 0x2222_2222_2222_2222);
    assert!(cmp_swap.payload().is_empty());

    let inv = RocePacket::new_checked(find("RC SEND Only with Invalidate").bytes).unwrap();
    assert_eq!(inv.ieth().unwrap().rkey(), 0x5678);
    assert_eq!(inv.bth().dest_qpn(), 0xff_ffff);
    assert_eq!(inv.bth().psn(), 0xff_ffff);
}

#[test]
fn truncated_goldens_are_rejected() {
    for golden in goldens() {
        for length in 0..golden.bytes.len() {
            let result = RocePacket::new_checked(&golden.bytes[..length]);
            // A shorter buffer either lacks headers or ICRC, or (with payload) changes
            // where the payload ends; it must never be taken for a different valid packet
            // of an opcode without payload.
            if !golden.repr.bth.opcode.has_payload() {
                assert!(
                    matches!(result, Err(Error::Truncated | Error::Malformed)),
                    "{}: length {length}",
                    golden.name
                );
            }
            if length < golden.repr.header_len() + 4 {
                assert_eq!(
                    result,
                    Err(Error::Truncated),
                    "{}: length {length}",
                    golden.name
                );
            }
        }
    }
}
