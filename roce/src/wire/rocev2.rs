//! A whole RoCEv2 packet over IPv4: IPv4 header, UDP header (destination port 4791), IB packet.
//!
//! Emitting follows rxe (`prepare4`, `prepare_udp_hdr` and `prepare_ipv4_hdr` in `rxe_net.c`):
//! IPv4 version 4, IHL 5, the traffic class as the whole TOS byte, don't-fragment set, protocol
//! UDP, the header checksum; UDP to port 4791 with checksum 0; the ICRC last, over the final
//! header values. Parsing checks the same things in the other direction, plus the IPv4 header
//! checksum, a non-zero UDP checksum and the ICRC.

use super::packet::{self as ib, ICRC_LEN};
use super::{Error, bth, ipv4, udp};
use crate::icrc::{self, Icrc};
use core::net::Ipv4Addr;
use core::ops::Range;

/// The UDP destination port of RoCEv2.
pub const ROCEV2_UDP_PORT: u16 = 4791;

/// Length of the IPv4 and UDP headers in front of the IB packet.
pub const ENCAPSULATION_LEN: usize = ipv4::HEADER_LEN + udp::HEADER_LEN;

/// Offset of the BTH in a RoCEv2/IPv4 packet.
pub const BTH_OFFSET: usize = ENCAPSULATION_LEN;

checked_view!(
    "A view of an IPv4/UDP/IB packet. The buffer may be longer than the IPv4 total length (Ethernet padding): the views stop at the lengths the headers give."
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the structure: IPv4 without options carrying UDP, to port 4791, whose length
    /// fits the IPv4 datagram, carrying an IB packet that passes
    /// [`ib::Packet::check_len`]. Checksums and the ICRC are checked by [`Repr::parse`] (or
    /// [`Packet::verify_icrc`]).
    pub fn check_len(&self) -> Result<(), Error> {
        let ip = ipv4::Packet::new_checked(self.buffer.as_ref())?;
        if ip.version() != 4 {
            return Err(Error::Malformed);
        }
        if ip.header_len() != ipv4::HEADER_LEN || ip.protocol() != ipv4::PROTOCOL_UDP {
            return Err(Error::Unsupported);
        }
        let udp = udp::Packet::new_checked(ip.payload())?;
        if udp.dst_port() != ROCEV2_UDP_PORT {
            return Err(Error::Unsupported);
        }
        ib::Packet::new_checked(udp.payload())?;
        Ok(())
    }

    /// End of the IPv4 datagram and of the UDP datagram, clamped to the buffer.
    fn bounds(&self) -> (usize, usize) {
        let buffer = self.buffer.as_ref();
        let ip_end = buffer
            .get(2..4)
            .map_or(0, |bytes| {
                usize::from(u16::from_be_bytes([bytes[0], bytes[1]]))
            })
            .min(buffer.len());
        let udp_len = buffer
            .get(ipv4::HEADER_LEN + 4..ipv4::HEADER_LEN + 6)
            .map_or(0, |bytes| {
                usize::from(u16::from_be_bytes([bytes[0], bytes[1]]))
            });
        let udp_end = (ipv4::HEADER_LEN + udp_len).min(ip_end);
        (ip_end, udp_end.max(ENCAPSULATION_LEN.min(ip_end)))
    }

    /// The IPv4 datagram.
    pub fn ipv4(&self) -> ipv4::Packet<&[u8]> {
        let (ip_end, _) = self.bounds();
        ipv4::Packet::new_unchecked(&self.buffer.as_ref()[..ip_end])
    }

    /// The UDP datagram.
    pub fn udp(&self) -> udp::Packet<&[u8]> {
        let (_, udp_end) = self.bounds();
        let start = ipv4::HEADER_LEN.min(udp_end);
        udp::Packet::new_unchecked(&self.buffer.as_ref()[start..udp_end])
    }

    /// The IB packet (the UDP payload).
    pub fn ib(&self) -> ib::Packet<&[u8]> {
        let (_, udp_end) = self.bounds();
        let start = ENCAPSULATION_LEN.min(udp_end);
        ib::Packet::new_unchecked(&self.buffer.as_ref()[start..udp_end])
    }

    /// Computes the ICRC of the packet as it is.
    pub fn compute_icrc(&self) -> Result<u32, Error> {
        icrc::compute(self.buffer.as_ref())
    }

    /// Checks the ICRC; [`Error::BadIcrc`] if it is wrong.
    pub fn verify_icrc(&self) -> Result<(), Error> {
        icrc::verify(self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// The IPv4 datagram, mutably.
    pub fn ipv4_mut(&mut self) -> ipv4::Packet<&mut [u8]> {
        let (ip_end, _) = self.bounds();
        ipv4::Packet::new_unchecked(&mut self.buffer.as_mut()[..ip_end])
    }

    /// The UDP datagram, mutably.
    pub fn udp_mut(&mut self) -> udp::Packet<&mut [u8]> {
        let (_, udp_end) = self.bounds();
        let start = ipv4::HEADER_LEN.min(udp_end);
        udp::Packet::new_unchecked(&mut self.buffer.as_mut()[start..udp_end])
    }

    /// The IB packet, mutably.
    pub fn ib_mut(&mut self) -> ib::Packet<&mut [u8]> {
        let (_, udp_end) = self.bounds();
        let start = ENCAPSULATION_LEN.min(udp_end);
        ib::Packet::new_unchecked(&mut self.buffer.as_mut()[start..udp_end])
    }

    /// Computes the ICRC and writes it; returns it.
    pub fn fill_icrc(&mut self) -> Result<u32, Error> {
        icrc::fill(self.buffer.as_mut())
    }
}

/// The meaning of a RoCEv2/IPv4 packet: the header values rxe's address vector and QP give,
/// and the IB packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address (the source GID's IPv4 address).
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// IPv4 TOS byte (DSCP and ECN), the GRH traffic class.
    pub traffic_class: u8,
    /// Time to live, the GRH hop limit.
    pub ttl: u8,
    /// IPv4 identification.
    pub identification: u16,
    /// UDP source port (rxe derives it from the QP number; the destination port is 4791).
    pub src_port: u16,
    /// The IB packet.
    pub ib: ib::Repr,
}

impl Repr {
    /// Parses and checks a RoCEv2/IPv4 packet: structure ([`Packet::check_len`]), IPv4 header
    /// checksum and fragmentation, non-zero UDP checksum, ICRC. The don't-fragment flag is not
    /// kept ([`Repr::emit`] always sets it).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        let repr = Self::parse_without_icrc(packet)?;
        packet.verify_icrc()?;
        Ok(repr)
    }

    /// Parses and checks a packet as [`Repr::parse`] does, except for its ICRC: for a packet
    /// whose ICRC the NIC has checked (ICRC offload, see [`Icrc::offloaded`]).
    pub fn parse_without_icrc<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Self::parse_checked(packet)
    }

    /// Parses a packet whose structure [`Packet::check_len`] (or [`Packet::new_checked`])
    /// has passed, as [`Repr::parse_without_icrc`] does without checking the structure again.
    /// On a view that did not pass it, the header accessors may panic.
    pub(crate) fn parse_checked<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        let ip = ipv4::Repr::parse(&packet.ipv4())?;
        let udp = udp::Repr::parse(&packet.udp(), ip.src_addr, ip.dst_addr)?;
        let ib = ib::Repr::parse_checked(&packet.ib())?;
        Ok(Repr {
            src_addr: ip.src_addr,
            dst_addr: ip.dst_addr,
            traffic_class: ip.traffic_class,
            ttl: ip.ttl,
            identification: ip.identification,
            src_port: udp.src_port,
            ib,
        })
    }

    /// Length of the whole packet.
    pub const fn buffer_len(&self) -> usize {
        ENCAPSULATION_LEN + self.ib.buffer_len()
    }

    /// Where the payload lies in the emitted packet.
    pub const fn payload_range(&self) -> Range<usize> {
        let start = ENCAPSULATION_LEN + self.ib.header_len();
        start..start + self.ib.payload_len
    }

    fn ipv4_repr(&self) -> ipv4::Repr {
        ipv4::Repr {
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            protocol: ipv4::PROTOCOL_UDP,
            payload_len: udp::HEADER_LEN + self.ib.buffer_len(),
            ttl: self.ttl,
            traffic_class: self.traffic_class,
            identification: self.identification,
            dont_fragment: true,
        }
    }

    /// Writes the IPv4, UDP and IB headers and the pad bytes into `buffer`, which must be
    /// exactly [`Repr::buffer_len`] bytes, and returns the ICRC fed with everything before the
    /// payload. Write the payload at [`Repr::payload_range`] (ideally with
    /// [`Icrc::update_copy`]), then call [`Repr::emit_icrc`].
    ///
    /// Fails like [`ib::Repr::emit`], and with [`Error::Malformed`] if the packet does not
    /// fit the 16-bit IPv4 total length.
    pub fn emit_headers(&self, buffer: &mut [u8]) -> Result<Icrc, Error> {
        self.write_headers(buffer)?;
        let (encapsulation, ib_bytes) = buffer.split_at(ENCAPSULATION_LEN);
        let (ip_bytes, udp_bytes) = encapsulation.split_at(ipv4::HEADER_LEN);
        let ip_header: &[u8; ipv4::HEADER_LEN] =
            ip_bytes.try_into().map_err(|_| Error::Truncated)?;
        let udp_header: &[u8; udp::HEADER_LEN] =
            udp_bytes.try_into().map_err(|_| Error::Truncated)?;
        let (bth_bytes, extension_headers) = ib_bytes.split_at(bth::HEADER_LEN);
        let bth_header: &[u8; bth::HEADER_LEN] =
            bth_bytes.try_into().map_err(|_| Error::Truncated)?;
        let mut icrc = Icrc::begin_ipv4(ip_header, udp_header, bth_header);
        icrc.update(&extension_headers[..self.ib.header_len() - bth::HEADER_LEN]);
        Ok(icrc)
    }

    /// Writes the headers and pad bytes as [`Repr::emit_headers`] does, and returns an ICRC
    /// left to the NIC ([`Icrc::offloaded`]): [`Repr::emit_icrc`] then writes zeros, which
    /// the NIC replaces on the way out.
    pub fn emit_headers_offloaded(&self, buffer: &mut [u8]) -> Result<Icrc, Error> {
        self.write_headers(buffer)?;
        Ok(Icrc::offloaded())
    }

    fn write_headers(&self, buffer: &mut [u8]) -> Result<(), Error> {
        if buffer.len() < ENCAPSULATION_LEN {
            return Err(Error::Truncated);
        }
        let (encapsulation, ib_bytes) = buffer.split_at_mut(ENCAPSULATION_LEN);
        self.ib
            .emit(&mut ib::Packet::new_unchecked(&mut *ib_bytes))?;
        let ip_repr = self.ipv4_repr();
        let (ip_bytes, udp_bytes) = encapsulation.split_at_mut(ipv4::HEADER_LEN);
        ip_repr.emit(&mut ipv4::Packet::new_unchecked(&mut *ip_bytes))?;
        let udp_repr = udp::Repr {
            src_port: self.src_port,
            dst_port: ROCEV2_UDP_PORT,
            payload_len: self.ib.buffer_len(),
        };
        udp_repr.emit(&mut udp::Packet::new_unchecked(&mut *udp_bytes))
    }

    /// Feeds the pad bytes to `icrc` (which has seen everything up to the end of the
    /// payload) and writes the ICRC at the end of `buffer`.
    pub fn emit_icrc(&self, buffer: &mut [u8], mut icrc: Icrc) -> Result<(), Error> {
        if buffer.len() != self.buffer_len() {
            return Err(Error::Malformed);
        }
        let payload_end = self.payload_range().end;
        let icrc_start = buffer.len() - ICRC_LEN;
        icrc.update(&buffer[payload_end..icrc_start]);
        buffer[icrc_start..].copy_from_slice(&icrc.finish().to_le_bytes());
        Ok(())
    }

    /// Writes the whole packet, payload and ICRC included, into `buffer` (exactly
    /// [`Repr::buffer_len`] bytes). The payload is copied and folded into the ICRC in one pass.
    ///
    /// Fails with [`Error::Malformed`] if `payload` is not `ib.payload_len` bytes long, and as
    /// [`Repr::emit_headers`] does.
    pub fn emit(&self, buffer: &mut [u8], payload: &[u8]) -> Result<(), Error> {
        if payload.len() != self.ib.payload_len {
            return Err(Error::Malformed);
        }
        let mut icrc = self.emit_headers(buffer)?;
        icrc.update_copy(&mut buffer[self.payload_range()], payload);
        self.emit_icrc(buffer, icrc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::opcode::Opcode;
    use crate::wire::{aeth, immdt};

    fn send_only_imm(payload_len: usize) -> Repr {
        let bth = bth::Repr {
            opcode: Opcode::RcSendOnlyWithImmediate,
            solicited_event: true,
            migration_request: false,
            pad_count: 0,
            transport_version: 0,
            pkey: bth::DEFAULT_PKEY,
            fecn: false,
            becn: false,
            dest_qpn: 0x11,
            ack_request: true,
            psn: 0x00ab_cdef,
        };
        Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 0, 0, 2),
            traffic_class: 0,
            ttl: 64,
            identification: 7,
            src_port: 0xc0de,
            ib: ib::Repr {
                immdt: Some(immdt::Repr {
                    immediate: 0x1234_5678,
                }),
                ..ib::Repr::new(bth).with_payload_len(payload_len)
            },
        }
    }

    #[test]
    fn emit_then_parse() {
        for payload_len in [0, 1, 2, 3, 4, 5, 1024] {
            let repr = send_only_imm(payload_len);
            let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
            let mut buffer = vec![0u8; repr.buffer_len()];
            repr.emit(&mut buffer, &payload).unwrap();
            assert_eq!(buffer.len() % 4, 0);
            let packet = Packet::new_checked(&buffer[..]).unwrap();
            assert_eq!(Repr::parse(&packet).unwrap(), repr);
            assert_eq!(packet.ib().payload(), &payload[..]);
            assert!(packet.ipv4().dont_fragment());
            assert_eq!(packet.udp().checksum(), 0);
            assert_eq!(packet.udp().dst_port(), ROCEV2_UDP_PORT);
            assert_eq!(
                packet.ib().icrc(),
                icrc::compute(&buffer).unwrap(),
                "ICRC sent little-endian"
            );
        }
    }

    #[test]
    fn offloaded_headers_leave_zeros_for_the_nic_and_parse_without_icrc() {
        for payload_len in [0, 3, 1024] {
            let repr = send_only_imm(payload_len);
            let payload: Vec<u8> = (0..payload_len).map(|i| (i * 3) as u8).collect();
            let mut computed = vec![0u8; repr.buffer_len()];
            repr.emit(&mut computed, &payload).unwrap();
            let mut offloaded = vec![0xaa; repr.buffer_len()];
            let mut icrc = repr.emit_headers_offloaded(&mut offloaded).unwrap();
            icrc.update_copy(&mut offloaded[repr.payload_range()], &payload);
            repr.emit_icrc(&mut offloaded, icrc).unwrap();
            let (body, trailer) = offloaded.split_at(offloaded.len() - ICRC_LEN);
            assert_eq!(trailer, [0; ICRC_LEN]);
            assert_eq!(body, &computed[..computed.len() - ICRC_LEN]);
            // What the NIC sends is what the device would have.
            let mut sent = offloaded.clone();
            icrc::fill(&mut sent).unwrap();
            assert_eq!(sent, computed);
            // The zero placeholder fails the ICRC check and passes the parser that leaves it
            // to the NIC; nothing else is relaxed.
            let packet = Packet::new_checked(&offloaded[..]).unwrap();
            assert_eq!(Repr::parse(&packet), Err(Error::BadIcrc));
            assert_eq!(Repr::parse_without_icrc(&packet).unwrap(), repr);
            let mut bad_checksum = offloaded.clone();
            bad_checksum[10] ^= 1;
            let packet = Packet::new_checked(&bad_checksum[..]).unwrap();
            assert_eq!(Repr::parse_without_icrc(&packet), Err(Error::BadChecksum));
        }
    }

    #[test]
    fn masked_changes_keep_icrc_valid() {
        let repr = send_only_imm(10);
        let mut buffer = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buffer, &[0x33; 10]).unwrap();
        let mut packet = Packet::new_unchecked(&mut buffer[..]);
        packet.ipv4_mut().set_ttl(1);
        packet.ipv4_mut().set_traffic_class(0x03);
        packet.ipv4_mut().fill_checksum();
        packet.ib_mut().bth_mut().set_becn(true);
        assert_eq!(packet.verify_icrc(), Ok(()));
        let repr_after = Repr::parse(&packet).unwrap();
        assert_eq!(repr_after.ttl, 1);
        assert!(repr_after.ib.bth.becn);
        packet.ib_mut().bth_mut().set_psn(1);
        assert_eq!(packet.verify_icrc(), Err(Error::BadIcrc));
        assert_eq!(Repr::parse(&packet), Err(Error::BadIcrc));
    }

    #[test]
    fn rejects() {
        let repr = send_only_imm(4);
        let mut buffer = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buffer, &[1, 2, 3, 4]).unwrap();

        let mut wrong_port = buffer.clone();
        wrong_port[22..24].copy_from_slice(&4792u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&wrong_port[..]).map(|_| ()),
            Err(Error::Unsupported)
        );
        let mut bad_checksum = buffer.clone();
        bad_checksum[10] ^= 0x40;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad_checksum[..])),
            Err(Error::BadChecksum)
        );
        assert_eq!(
            Packet::new_checked(&buffer[..buffer.len() - 1]).map(|_| ()),
            Err(Error::Truncated)
        );
        assert_eq!(
            repr.emit(&mut buffer, &[1, 2, 3]),
            Err(Error::Malformed),
            "payload length differs from the repr"
        );
        let mut short = vec![0u8; repr.buffer_len() - 1];
        assert_eq!(repr.emit(&mut short, &[1, 2, 3, 4]), Err(Error::Truncated));
    }

    #[test]
    fn ack_round_trip() {
        let bth = bth::Repr {
            opcode: Opcode::RcAcknowledge,
            solicited_event: false,
            migration_request: false,
            pad_count: 0,
            transport_version: 0,
            pkey: 0xffff,
            fecn: false,
            becn: false,
            dest_qpn: 0x12,
            ack_request: false,
            psn: 5,
        };
        let repr = Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 2),
            dst_addr: Ipv4Addr::new(10, 0, 0, 1),
            traffic_class: 0,
            ttl: 64,
            identification: 0,
            src_port: 0xc001,
            ib: ib::Repr {
                aeth: Some(aeth::Repr {
                    syndrome: aeth::Syndrome::Ack {
                        credit_count: aeth::CREDIT_COUNT_INVALID,
                    },
                    msn: 3,
                }),
                ..ib::Repr::new(bth)
            },
        };
        assert_eq!(repr.buffer_len(), 20 + 8 + 12 + 4 + 4);
        let mut buffer = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buffer, &[]).unwrap();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buffer[..]).unwrap()),
            Ok(repr)
        );
    }
}
