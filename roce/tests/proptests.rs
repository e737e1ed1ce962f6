//! Property tests: no parser panics on any bytes, every `Repr` survives emit/parse, and the
//! ICRC notices every change to a covered byte and ignores changes to the masked ones.

use core::net::Ipv4Addr;
use proptest::prelude::*;
use roce::icrc::{self, Icrc};
use roce::wire::{
    AethPacket, AethRepr, AtomicAckEthPacket, AtomicAckEthRepr, AtomicEthPacket, AtomicEthRepr,
    BthPacket, BthRepr, DethPacket, DethRepr, IethPacket, IethRepr, ImmDtPacket, ImmDtRepr,
    Ipv4Packet, Ipv4Repr, Opcode, RethPacket, RethRepr, RocePacket, RoceRepr, Rocev2Packet,
    Rocev2Repr, Syndrome, UdpPacket, UdpRepr,
};

fn opcode() -> impl Strategy<Value = Opcode> {
    prop_oneof![
        // Known opcodes more often than the 256-value range would give them.
        prop::sample::select(
            (0..=255u8)
                .map(Opcode::from)
                .filter(|opcode| opcode.is_known())
                .collect::<Vec<_>>()
        ),
        any::<u8>().prop_map(Opcode::from),
    ]
}

fn bth_repr() -> impl Strategy<Value = BthRepr> {
    (
        opcode(),
        any::<bool>(),
        any::<bool>(),
        0u8..4,
        0u8..16,
        any::<u16>(),
        any::<bool>(),
        any::<bool>(),
        0u32..1 << 24,
        any::<bool>(),
        0u32..1 << 24,
    )
        .prop_map(
            |(
                opcode,
                solicited_event,
                migration_request,
                pad_count,
                transport_version,
                pkey,
                fecn,
                becn,
                dest_qpn,
                ack_request,
                psn,
            )| BthRepr {
                opcode,
                solicited_event,
                migration_request,
                pad_count,
                transport_version,
                pkey,
                fecn,
                becn,
                dest_qpn,
                ack_request,
                psn,
            },
        )
}

fn reth_repr() -> impl Strategy<Value = RethRepr> {
    (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(virtual_address, rkey, dma_length)| {
        RethRepr {
            virtual_address,
            rkey,
            dma_length,
        }
    })
}

fn aeth_repr() -> impl Strategy<Value = AethRepr> {
    (any::<u8>(), 0u32..1 << 24).prop_map(|(syndrome, msn)| AethRepr {
        syndrome: Syndrome::from(syndrome),
        msn,
    })
}

fn atomic_eth_repr() -> impl Strategy<Value = AtomicEthRepr> {
    (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
        |(virtual_address, rkey, swap_add_data, compare_data)| AtomicEthRepr {
            virtual_address,
            rkey,
            swap_add_data,
            compare_data,
        },
    )
}

fn deth_repr() -> impl Strategy<Value = DethRepr> {
    (any::<u32>(), 0u32..1 << 24).prop_map(|(qkey, src_qpn)| DethRepr { qkey, src_qpn })
}

/// An IB packet whose extension headers match its opcode, and its payload.
fn roce_repr() -> impl Strategy<Value = (RoceRepr, Vec<u8>)> {
    (
        bth_repr(),
        deth_repr(),
        reth_repr(),
        aeth_repr(),
        atomic_eth_repr(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(bth, deth, reth, aeth, atomic_eth, original_data, immediate, ieth_rkey, payload)| {
                use roce::wire::ExtHeader::*;
                let headers = bth.opcode.ext_headers();
                let payload = if bth.opcode.has_payload() {
                    payload
                } else {
                    Vec::new()
                };
                let mut bth = bth;
                if !bth.opcode.has_payload() {
                    bth.pad_count = 0;
                }
                let repr = RoceRepr {
                    bth,
                    deth: headers.contains(Deth).then_some(deth),
                    reth: headers.contains(Reth).then_some(reth),
                    aeth: headers.contains(Aeth).then_some(aeth),
                    atomic_eth: headers.contains(AtomicEth).then_some(atomic_eth),
                    atomic_ack_eth: headers
                        .contains(AtomicAckEth)
                        .then_some(AtomicAckEthRepr { original_data }),
                    immdt: headers.contains(ImmDt).then_some(ImmDtRepr { immediate }),
                    ieth: headers
                        .contains(Ieth)
                        .then_some(IethRepr { rkey: ieth_rkey }),
                    payload_len: payload.len(),
                };
                (repr, payload)
            },
        )
}

fn rocev2_repr() -> impl Strategy<Value = (Rocev2Repr, Vec<u8>)> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        roce_repr(),
    )
        .prop_map(
            |(src, dst, traffic_class, ttl, identification, src_port, (ib, payload))| {
                (
                    Rocev2Repr {
                        src_addr: Ipv4Addr::from(src),
                        dst_addr: Ipv4Addr::from(dst),
                        traffic_class,
                        ttl,
                        identification,
                        src_port,
                        ib,
                    },
                    payload,
                )
            },
        )
}

fn emit(repr: &Rocev2Repr, payload: &[u8]) -> Vec<u8> {
    let mut buffer = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buffer, payload).unwrap();
    buffer
}

/// Offsets in an IPv4 RoCEv2 packet that the ICRC masks: TOS, TTL, IP checksum, UDP
/// checksum, BTH byte 4 (FECN, BECN, Resv6).
const MASKED: [usize; 7] = [1, 8, 10, 11, 26, 27, 32];

/// The ICRC over the packet's extent as emitted, whatever its length fields now say.
fn icrc_of(bytes: &[u8]) -> u32 {
    let mut icrc = Icrc::begin_ipv4(
        bytes[..20].try_into().unwrap(),
        bytes[20..28].try_into().unwrap(),
        bytes[28..40].try_into().unwrap(),
    );
    icrc.update(&bytes[40..bytes.len() - 4]);
    icrc.finish()
}

/// Touches every accessor of every view that accepts `bytes`.
fn parse_everything(bytes: &[u8]) {
    if let Ok(p) = BthPacket::new_checked(bytes) {
        let _ = (
            p.opcode(),
            p.solicited_event(),
            p.migration_request(),
            p.pad_count(),
        );
        let _ = (
            p.transport_version(),
            p.pkey(),
            p.fecn(),
            p.becn(),
            p.reserved6(),
        );
        let _ = (
            p.dest_qpn(),
            p.ack_request(),
            p.reserved7(),
            p.psn(),
            p.payload(),
        );
        BthRepr::parse(&p).unwrap();
    }
    if let Ok(p) = RethPacket::new_checked(bytes) {
        let _ = (p.virtual_address(), p.rkey(), p.dma_length());
        RethRepr::parse(&p).unwrap();
    }
    if let Ok(p) = AethPacket::new_checked(bytes) {
        let _ = (p.syndrome(), p.msn());
        AethRepr::parse(&p).unwrap();
    }
    if let Ok(p) = AtomicEthPacket::new_checked(bytes) {
        let _ = (
            p.virtual_address(),
            p.rkey(),
            p.swap_add_data(),
            p.compare_data(),
        );
        AtomicEthRepr::parse(&p).unwrap();
    }
    if let Ok(p) = AtomicAckEthPacket::new_checked(bytes) {
        AtomicAckEthRepr::parse(&p).unwrap();
    }
    if let Ok(p) = ImmDtPacket::new_checked(bytes) {
        ImmDtRepr::parse(&p).unwrap();
    }
    if let Ok(p) = IethPacket::new_checked(bytes) {
        IethRepr::parse(&p).unwrap();
    }
    if let Ok(p) = DethPacket::new_checked(bytes) {
        let _ = (p.qkey(), p.reserved(), p.src_qpn());
        DethRepr::parse(&p).unwrap();
    }
    if let Ok(p) = RocePacket::new_checked(bytes) {
        touch_ib(&p);
        let repr = RoceRepr::parse(&p).unwrap();
        assert_eq!(repr.buffer_len(), bytes.len());
    }
    let _ = RoceRepr::parse(&RocePacket::new_unchecked(bytes));
    if let Ok(p) = Ipv4Packet::new_checked(bytes) {
        let _ = (
            p.version(),
            p.header_len(),
            p.dscp(),
            p.ecn(),
            p.total_len(),
        );
        let _ = (p.identification(), p.dont_fragment(), p.more_fragments());
        let _ = (p.fragment_offset(), p.ttl(), p.protocol(), p.checksum());
        let _ = (p.src_addr(), p.dst_addr(), p.verify_checksum(), p.payload());
        if let Ok(ip) = Ipv4Repr::parse(&p)
            && let Ok(u) = UdpPacket::new_checked(p.payload())
        {
            let _ = (u.src_port(), u.dst_port(), u.payload());
            let _ = UdpRepr::parse(&u, ip.src_addr, ip.dst_addr);
        }
    }
    if let Ok(p) = UdpPacket::new_checked(bytes) {
        let _ = p.verify_checksum(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST);
    }
    if let Ok(p) = Rocev2Packet::new_checked(bytes) {
        let _ = (
            p.ipv4().ttl(),
            p.udp().src_port(),
            p.compute_icrc(),
            p.verify_icrc(),
        );
        touch_ib(&p.ib());
        let _ = Rocev2Repr::parse(&p);
    }
    let _ = icrc::compute(bytes);
    let _ = icrc::verify(bytes);
    let mut copy = bytes.to_vec();
    let _ = icrc::fill(&mut copy);
}

fn touch_ib(p: &RocePacket<&[u8]>) {
    let _ = (
        p.opcode(),
        p.header_len(),
        p.headers(),
        p.payload(),
        p.pad(),
        p.icrc(),
    );
    let _ = (p.bth().psn(), p.after_bth());
    let _ = p.deth().map(|h| h.src_qpn());
    let _ = p.reth().map(|h| h.dma_length());
    let _ = p.aeth().map(|h| h.syndrome());
    let _ = p.atomic_eth().map(|h| h.compare_data());
    let _ = p.atomic_ack_eth().map(|h| h.original_data());
    let _ = p.immdt().map(|h| h.immediate());
    let _ = p.ieth().map(|h| h.rkey());
}

proptest! {
    #[test]
    fn no_parser_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        parse_everything(&bytes);
    }

    #[test]
    fn no_parser_panics_on_damaged_packets(
        (repr, payload) in rocev2_repr(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = emit(&repr, &payload);
        for (index, value) in damage {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        parse_everything(&bytes);
        let length = cut.index(bytes.len() + 1);
        parse_everything(&bytes[..length]);
        parse_everything(&bytes[28..]);
    }

    #[test]
    fn bth_round_trips(repr in bth_repr()) {
        let mut bytes = [0u8; 12];
        repr.emit(&mut BthPacket::new_unchecked(&mut bytes[..]));
        prop_assert_eq!(BthRepr::parse(&BthPacket::new_unchecked(&bytes[..])), Ok(repr));
    }

    #[test]
    fn extension_headers_round_trip(
        reth in reth_repr(),
        aeth in aeth_repr(),
        atomic in atomic_eth_repr(),
        deth in deth_repr(),
        value in any::<u64>(),
    ) {
        let mut bytes = [0u8; 28];
        reth.emit(&mut RethPacket::new_unchecked(&mut bytes[..]));
        prop_assert_eq!(RethRepr::parse(&RethPacket::new_unchecked(&bytes[..])), Ok(reth));
        aeth.emit(&mut AethPacket::new_unchecked(&mut bytes[..]));
        prop_assert_eq!(AethRepr::parse(&AethPacket::new_unchecked(&bytes[..])), Ok(aeth));
        atomic.emit(&mut AtomicEthPacket::new_unchecked(&mut bytes[..]));
        prop_assert_eq!(AtomicEthRepr::parse(&AtomicEthPacket::new_unchecked(&bytes[..])), Ok(atomic));
        deth.emit(&mut DethPacket::new_unchecked(&mut bytes[..]));
        prop_assert_eq!(DethRepr::parse(&DethPacket::new_unchecked(&bytes[..])), Ok(deth));
        let ack = AtomicAckEthRepr { original_data: value };
        ack.emit(&mut AtomicAckEthPacket::new_unchecked(&mut bytes[..]));
        prop_assert_eq!(AtomicAckEthRepr::parse(&AtomicAckEthPacket::new_unchecked(&bytes[..])), Ok(ack));
        let imm = ImmDtRepr { immediate: value as u32 };
        imm.emit(&mut ImmDtPacket::new_unchecked(&mut bytes[..]));
        prop_assert_eq!(ImmDtRepr::parse(&ImmDtPacket::new_unchecked(&bytes[..])), Ok(imm));
        let ieth = IethRepr { rkey: (value >> 32) as u32 };
        ieth.emit(&mut IethPacket::new_unchecked(&mut bytes[..]));
        prop_assert_eq!(IethRepr::parse(&IethPacket::new_unchecked(&bytes[..])), Ok(ieth));
    }

    #[test]
    fn ipv4_and_udp_round_trip(
        src in any::<u32>(), dst in any::<u32>(), protocol in any::<u8>(),
        payload_len in 8usize..1000, ttl in any::<u8>(), traffic_class in any::<u8>(),
        identification in any::<u16>(), dont_fragment in any::<bool>(),
        src_port in any::<u16>(), dst_port in any::<u16>(),
    ) {
        let ip = Ipv4Repr {
            src_addr: Ipv4Addr::from(src),
            dst_addr: Ipv4Addr::from(dst),
            protocol,
            payload_len,
            ttl,
            traffic_class,
            identification,
            dont_fragment,
        };
        let udp = UdpRepr { src_port, dst_port, payload_len: payload_len - 8 };
        let mut bytes = vec![0u8; 20 + payload_len];
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[..])).unwrap();
        udp.emit(&mut UdpPacket::new_unchecked(&mut bytes[20..])).unwrap();
        let packet = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(Ipv4Repr::parse(&packet), Ok(ip));
        prop_assert_eq!(
            UdpRepr::parse(&UdpPacket::new_checked(packet.payload()).unwrap(), ip.src_addr, ip.dst_addr),
            Ok(udp)
        );
    }

    #[test]
    fn ib_packet_round_trips((repr, payload) in roce_repr()) {
        let mut bytes = vec![0xa5u8; repr.buffer_len()];
        let mut packet = RocePacket::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet).unwrap();
        packet.payload_mut().copy_from_slice(&payload);
        let packet = RocePacket::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(RoceRepr::parse(&packet), Ok(repr));
        prop_assert_eq!(packet.payload(), &payload[..]);
    }

    #[test]
    fn rocev2_round_trips((repr, payload) in rocev2_repr()) {
        let bytes = emit(&repr, &payload);
        let packet = Rocev2Packet::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(Rocev2Repr::parse(&packet), Ok(repr));
        let ib = packet.ib();
        prop_assert_eq!(ib.payload(), &payload[..]);
        prop_assert_eq!(icrc::compute(&bytes), Ok(ib.icrc()));
    }

    #[test]
    fn icrc_covers_every_unmasked_byte(
        (repr, payload) in rocev2_repr(),
        index in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let bytes = emit(&repr, &payload);
        let original = icrc_of(&bytes);
        prop_assert_eq!(icrc::compute(&bytes), Ok(original));
        let at = index.index(bytes.len() - 4);
        let mut changed = bytes.clone();
        changed[at] ^= flip;
        if MASKED.contains(&at) {
            prop_assert_eq!(icrc_of(&changed), original, "masked byte {} changed the ICRC", at);
            prop_assert_eq!(icrc::verify(&changed), Ok(()));
        } else {
            prop_assert_ne!(icrc_of(&changed), original, "byte {} not covered", at);
        }
    }

    #[test]
    fn icrc_ignores_masked_fields(
        (repr, payload) in rocev2_repr(),
        ttl in any::<u8>(), traffic_class in any::<u8>(), udp_checksum in any::<u16>(),
        fecn in any::<bool>(), becn in any::<bool>(), reserved6 in 0u8..64,
        ip_checksum in any::<u16>(),
    ) {
        let mut bytes = emit(&repr, &payload);
        let original = icrc::compute(&bytes).unwrap();
        let mut packet = Rocev2Packet::new_unchecked(&mut bytes[..]);
        packet.ipv4_mut().set_ttl(ttl);
        packet.ipv4_mut().set_traffic_class(traffic_class);
        packet.ipv4_mut().set_checksum(ip_checksum);
        packet.udp_mut().set_checksum(udp_checksum);
        let mut ib = packet.ib_mut();
        let mut bth = ib.bth_mut();
        bth.set_fecn(fecn);
        bth.set_becn(becn);
        bth.set_reserved6(reserved6);
        prop_assert_eq!(icrc::compute(&bytes), Ok(original));
        prop_assert_eq!(icrc::verify(&bytes), Ok(()));
    }

    #[test]
    fn icrc_sees_unmasked_bth_bits(
        (repr, payload) in rocev2_repr(),
        bit in 0usize..96,
    ) {
        // Every BTH bit outside byte 4 is covered, including Resv7 and the pad count.
        prop_assume!(!(32..40).contains(&bit));
        let mut bytes = emit(&repr, &payload);
        let original = icrc_of(&bytes);
        bytes[28 + bit / 8] ^= 0x80 >> (bit % 8);
        prop_assert_ne!(icrc_of(&bytes), original);
    }
}

proptest! {
    /// What a peer sends during the connection exchange is untrusted: no parser panics, and
    /// whatever one accepts formats back to the same value.
    #[test]
    fn connection_messages_never_panic_and_round_trip(
        bytes in prop::collection::vec(any::<u8>(), 0..140),
    ) {
        use roce::oob::Destination;
        use roce::perftest::{self, Keys};
        if let Ok(destination) = Destination::from_message(&bytes) {
            prop_assert_eq!(Destination::from_message(&destination.to_message()), Ok(destination));
        }
        if let Ok(keys) = Keys::from_message(&bytes) {
            let again = Keys::from_message(&keys.to_message());
            prop_assert!(again.is_ok());
            let again = again.unwrap();
            prop_assert_eq!((again.qpn, again.psn, again.rkey, again.vaddr), (keys.qpn, keys.psn, keys.rkey, keys.vaddr));
            prop_assert_eq!(again.gid, keys.gid);
        }
        let _ = perftest::version_hundredths(&bytes);
        let _ = perftest::parse_mtu(&bytes);
    }

    #[test]
    fn perftest_keys_round_trip(
        lid in any::<u16>(), out_reads in any::<u16>(), qpn in 0u32..1 << 24, psn in 0u32..1 << 24,
        rkey in any::<u32>(), vaddr in any::<u64>(), gid in any::<[u8; 16]>(), srqn in any::<u32>(),
    ) {
        use roce::perftest::Keys;
        let keys = Keys { lid, out_reads, qpn, psn, rkey, vaddr, gid: roce::verbs::Gid(gid), srqn };
        let message = keys.to_message();
        prop_assert_eq!(message[107], 0);
        prop_assert_eq!(Keys::from_message(&message), Ok(keys));
    }
}
