//! The IPv4 header, as much of it as RoCEv2 needs.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-------+-------+-----------+---+-------------------------------+
//! |Version|  IHL  |   DSCP    |ECN|          Total Length         |
//! +-------+-------+-----------+---+-+-+-+-------------------------+
//! |         Identification        |0|D|M|     Fragment Offset     |
//! +---------------+---------------+-+-+-+-------------------------+
//! |      TTL      |   Protocol    |        Header Checksum        |
//! +---------------+---------------+-------------------------------+
//! |                       Source Address                          |
//! +---------------------------------------------------------------+
//! |                    Destination Address                        |
//! +---------------------------------------------------------------+
//! ```
//!
//! The view reads any header length; [`Repr`] handles only what rxe sends and accepts: no
//! options (IHL 5, which the ICRC computation assumes too) and no fragments. The RoCEv2 traffic
//! class (the GRH traffic class of the address vector) is the whole second byte, DSCP and ECN
//! together, as rxe's `prepare_ipv4_hdr` writes it.

use super::{Error, header_mut, header_ref};
use core::net::Ipv4Addr;
use zerocopy::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

/// The IP protocol number of UDP.
pub const PROTOCOL_UDP: u8 = 17;

/// The TTL used when nothing else is configured (Linux's default).
pub const DEFAULT_TTL: u8 = 64;

/// An IPv4 header without options as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Version (bits 7-4) and header length in 32-bit words (bits 3-0).
    pub version_ihl: u8,
    /// DSCP (bits 7-2) and ECN (bits 1-0): the RoCEv2 traffic class.
    pub traffic_class: u8,
    /// Length of the datagram, header included.
    pub total_len: U16,
    /// Identification.
    pub identification: U16,
    /// Flags (bits 15-13: reserved, DF, MF) and fragment offset in 8-byte units.
    pub flags_fragment_offset: U16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Header checksum.
    pub checksum: U16,
    /// Source address.
    pub src_addr: [u8; 4],
    /// Destination address.
    pub dst_addr: [u8; 4],
}

mod field {
    use crate::wire::Field;

    pub const VERSION_IHL: usize = 0;
    pub const TRAFFIC_CLASS: usize = 1;
    pub const TOTAL_LEN: Field = 2..4;
    pub const IDENTIFICATION: Field = 4..6;
    pub const FLAGS_FRAGMENT_OFFSET: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;

    pub const DONT_FRAGMENT: u16 = 0x4000;
    pub const MORE_FRAGMENTS: u16 = 0x2000;
    pub const FRAGMENT_OFFSET: u16 = 0x1fff;
}

const _: () = {
    use core::mem::offset_of;
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(offset_of!(Header, version_ihl) == field::VERSION_IHL);
    assert!(offset_of!(Header, traffic_class) == field::TRAFFIC_CLASS);
    assert!(offset_of!(Header, total_len) == field::TOTAL_LEN.start);
    assert!(offset_of!(Header, identification) == field::IDENTIFICATION.start);
    assert!(offset_of!(Header, flags_fragment_offset) == field::FLAGS_FRAGMENT_OFFSET.start);
    assert!(offset_of!(Header, ttl) == field::TTL);
    assert!(offset_of!(Header, protocol) == field::PROTOCOL);
    assert!(offset_of!(Header, checksum) == field::CHECKSUM.start);
    assert!(offset_of!(Header, src_addr) == field::SRC_ADDR.start);
    assert!(offset_of!(Header, dst_addr) == field::DST_ADDR.start);
    assert!(field::DST_ADDR.end == HEADER_LEN);
};

/// Byte offsets, inside an option-less IPv4 header, of the fields the ICRC replaces with ones:
/// traffic class, TTL and the two checksum bytes.
pub const ICRC_MASKED_BYTES: [usize; 4] = [
    field::TRAFFIC_CLASS,
    field::TTL,
    field::CHECKSUM.start,
    field::CHECKSUM.start + 1,
];

/// The one's complement sum of `data` as big-endian 16-bit words (an odd last byte is padded
/// with zero), added to `initial` and folded to 16 bits.
///
/// It adds big-endian 32-bit words: since 2^16 is 1 modulo 2^16 - 1, their folded sum is that
/// of the 16-bit words (RFC 1071), in half the additions (an IPv4 header's 20 bytes are five).
pub(crate) fn ones_complement_sum(data: &[u8], initial: u32) -> u16 {
    let (words, tail) = data.as_chunks::<4>();
    // At most 2^32 - 1 per word: no overflow below 2^32 words.
    let mut sum = u64::from(initial);
    for word in words {
        sum += u64::from(u32::from_be_bytes(*word));
    }
    let mut last = [0u8; 4];
    last[..tail.len()].copy_from_slice(tail);
    sum += u64::from(u32::from_be_bytes(last));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (the one's complement of its one's complement sum).
pub fn checksum(data: &[u8]) -> u16 {
    !ones_complement_sum(data, 0)
}

checked_view!("A view of an IPv4 datagram.");

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the buffer holds the header (with its options) and the total length the
    /// header claims, and that the header length and total length are consistent. The buffer
    /// may be longer than the total length (Ethernet padding); the rest is ignored.
    pub fn check_len(&self) -> Result<(), Error> {
        let length = self.buffer.as_ref().len();
        if length < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if length < header_len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if length < total_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The first 20 bytes of the header as a zerocopy struct.
    pub fn header(&self) -> &Header {
        header_ref(self.buffer.as_ref())
    }

    /// The IP version (4).
    pub fn version(&self) -> u8 {
        self.header().version_ihl >> 4
    }

    /// The header length in bytes (IHL times four).
    pub fn header_len(&self) -> usize {
        usize::from(self.header().version_ihl & 0x0f) * 4
    }

    /// The traffic class byte (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        self.header().traffic_class
    }

    /// The differentiated services code point.
    pub fn dscp(&self) -> u8 {
        self.header().traffic_class >> 2
    }

    /// The explicit congestion notification bits.
    pub fn ecn(&self) -> u8 {
        self.header().traffic_class & 0x3
    }

    /// The total length of the datagram.
    pub fn total_len(&self) -> u16 {
        self.header().total_len.get()
    }

    /// The identification.
    pub fn identification(&self) -> u16 {
        self.header().identification.get()
    }

    /// The don't-fragment flag.
    pub fn dont_fragment(&self) -> bool {
        self.header().flags_fragment_offset.get() & field::DONT_FRAGMENT != 0
    }

    /// The more-fragments flag.
    pub fn more_fragments(&self) -> bool {
        self.header().flags_fragment_offset.get() & field::MORE_FRAGMENTS != 0
    }

    /// The fragment offset in bytes.
    pub fn fragment_offset(&self) -> u16 {
        (self.header().flags_fragment_offset.get() & field::FRAGMENT_OFFSET) << 3
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.header().ttl
    }

    /// The payload protocol.
    pub fn protocol(&self) -> u8 {
        self.header().protocol
    }

    /// The header checksum.
    pub fn checksum(&self) -> u16 {
        self.header().checksum.get()
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.header().src_addr)
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.header().dst_addr)
    }

    /// Whether the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        let buffer = self.buffer.as_ref();
        let end = self.header_len().clamp(HEADER_LEN, buffer.len());
        ones_complement_sum(&buffer[..end], 0) == 0xffff
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        let buffer = self.buffer.as_ref();
        let end = usize::from(self.total_len()).min(buffer.len());
        let start = self.header_len().min(end);
        &buffer[start..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// The first 20 bytes of the header as a mutable zerocopy struct.
    pub fn header_mut(&mut self) -> &mut Header {
        header_mut(self.buffer.as_mut())
    }

    /// Sets the version and the header length (in bytes, a multiple of four up to 60).
    pub fn set_version_and_header_len(&mut self, version: u8, header_len: usize) {
        self.header_mut().version_ihl = (version << 4) | ((header_len / 4) as u8 & 0x0f);
    }

    /// Sets the traffic class byte (DSCP and ECN).
    pub fn set_traffic_class(&mut self, value: u8) {
        self.header_mut().traffic_class = value;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, value: u16) {
        self.header_mut().total_len.set(value);
    }

    /// Sets the identification.
    pub fn set_identification(&mut self, value: u16) {
        self.header_mut().identification.set(value);
    }

    /// Sets the flags and fragment offset: don't fragment, more fragments, offset in bytes
    /// (a multiple of eight).
    pub fn set_fragmentation(&mut self, dont_fragment: bool, more_fragments: bool, offset: u16) {
        let mut word = (offset >> 3) & field::FRAGMENT_OFFSET;
        if dont_fragment {
            word |= field::DONT_FRAGMENT;
        }
        if more_fragments {
            word |= field::MORE_FRAGMENTS;
        }
        self.header_mut().flags_fragment_offset.set(word);
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, value: u8) {
        self.header_mut().ttl = value;
    }

    /// Sets the payload protocol.
    pub fn set_protocol(&mut self, value: u8) {
        self.header_mut().protocol = value;
    }

    /// Sets the header checksum.
    pub fn set_checksum(&mut self, value: u16) {
        self.header_mut().checksum.set(value);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        self.header_mut().src_addr = value.octets();
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        self.header_mut().dst_addr = value.octets();
    }

    /// Computes and writes the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let end = self
            .header_len()
            .clamp(HEADER_LEN, self.buffer.as_ref().len());
        let checksum = checksum(&self.buffer.as_ref()[..end]);
        self.set_checksum(checksum);
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let length = self.buffer.as_ref().len();
        let end = usize::from(self.total_len()).min(length);
        let start = self.header_len().min(end);
        &mut self.buffer.as_mut()[start..end]
    }
}

/// The meaning of an option-less, unfragmented IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Payload protocol.
    pub protocol: u8,
    /// Length of the payload (total length minus 20).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Traffic class byte (DSCP and ECN).
    pub traffic_class: u8,
    /// Identification.
    pub identification: u16,
    /// Don't-fragment flag (rxe always sets it).
    pub dont_fragment: bool,
}

impl Repr {
    /// Parses an IPv4 header, checking version and header checksum.
    ///
    /// Fails with [`Error::Malformed`] for a version other than 4, with
    /// [`Error::BadChecksum`] for a wrong checksum and with [`Error::Unsupported`] for options
    /// or fragments.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error::Malformed);
        }
        if packet.header_len() != HEADER_LEN {
            return Err(Error::Unsupported);
        }
        if !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        if packet.more_fragments() || packet.fragment_offset() != 0 {
            return Err(Error::Unsupported);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - HEADER_LEN,
            ttl: packet.ttl(),
            traffic_class: packet.traffic_class(),
            identification: packet.identification(),
            dont_fragment: packet.dont_fragment(),
        })
    }

    /// Length of the emitted header (the payload is not counted).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header, checksum included. Fails with [`Error::Malformed`] if the total
    /// length does not fit 16 bits.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<(), Error> {
        let total_len =
            u16::try_from(HEADER_LEN + self.payload_len).map_err(|_| Error::Malformed)?;
        packet.set_version_and_header_len(4, HEADER_LEN);
        packet.set_traffic_class(self.traffic_class);
        packet.set_total_len(total_len);
        packet.set_identification(self.identification);
        packet.set_fragmentation(self.dont_fragment, false, 0);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 192.168.1.1 -> 192.168.1.2, UDP, TOS 0x02 (ECT(0)), total length 48, id 0x1234, DF,
    // TTL 64.
    static HEADER_BYTES: [u8; 20] = [
        0x45, 0x02, 0x00, 0x30, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xa5, 0x33, 0xc0, 0xa8, 0x01,
        0x01, 0xc0, 0xa8, 0x01, 0x02,
    ];

    fn datagram() -> [u8; 48] {
        let mut bytes = [0x5au8; 48];
        bytes[..20].copy_from_slice(&HEADER_BYTES);
        bytes
    }

    #[test]
    fn test_deconstruct() {
        let bytes = datagram();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.traffic_class(), 0x02);
        assert_eq!(packet.dscp(), 0);
        assert_eq!(packet.ecn(), 2);
        assert_eq!(packet.total_len(), 48);
        assert_eq!(packet.identification(), 0x1234);
        assert!(packet.dont_fragment());
        assert!(!packet.more_fragments());
        assert_eq!(packet.fragment_offset(), 0);
        assert_eq!(packet.ttl(), 64);
        assert_eq!(packet.protocol(), PROTOCOL_UDP);
        assert_eq!(packet.checksum(), 0xa533); // as scapy computes it
        assert_eq!(packet.src_addr(), Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(packet.dst_addr(), Ipv4Addr::new(192, 168, 1, 2));
        assert!(packet.verify_checksum());
        assert_eq!(packet.payload(), &[0x5a; 28]);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0x5au8; 48];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_version_and_header_len(4, 20);
        packet.set_traffic_class(0x02);
        packet.set_total_len(48);
        packet.set_identification(0x1234);
        packet.set_fragmentation(true, false, 0);
        packet.set_ttl(64);
        packet.set_protocol(PROTOCOL_UDP);
        packet.set_src_addr(Ipv4Addr::new(192, 168, 1, 1));
        packet.set_dst_addr(Ipv4Addr::new(192, 168, 1, 2));
        packet.fill_checksum();
        assert_eq!(bytes, datagram());
    }

    #[test]
    fn test_repr() {
        let bytes = datagram();
        let repr = Repr::parse(&Packet::new_unchecked(&bytes[..])).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_addr: Ipv4Addr::new(192, 168, 1, 1),
                dst_addr: Ipv4Addr::new(192, 168, 1, 2),
                protocol: PROTOCOL_UDP,
                payload_len: 28,
                ttl: 64,
                traffic_class: 2,
                identification: 0x1234,
                dont_fragment: true,
            }
        );
        let mut out = [0x5au8; 48];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn test_rejects() {
        let bytes = datagram();
        assert_eq!(
            Packet::new_checked(&bytes[..47]).map(|_| ()),
            Err(Error::Truncated)
        );
        let mut bad = bytes;
        bad[11] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad[..])),
            Err(Error::BadChecksum)
        );
        let mut options = bytes;
        options[0] = 0x46;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&options[..])),
            Err(Error::Unsupported)
        );
        let mut short_ihl = bytes;
        short_ihl[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&short_ihl[..]).map(|_| ()),
            Err(Error::Malformed)
        );
        let mut version6 = bytes;
        version6[0] = 0x65;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&version6[..])),
            Err(Error::Malformed)
        );
        let mut fragment = datagram();
        let mut packet = Packet::new_unchecked(&mut fragment[..]);
        packet.set_fragmentation(false, true, 0);
        packet.fill_checksum();
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&fragment[..])),
            Err(Error::Unsupported)
        );
        // Trailing bytes beyond the total length (Ethernet padding) are ignored.
        let mut padded = [0u8; 60];
        padded[..48].copy_from_slice(&bytes);
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload().len(), 28);
    }

    /// The sum over 16-bit words, as RFC 1071 defines it.
    fn sum_by_halfwords(data: &[u8], initial: u32) -> u16 {
        let mut sum = u64::from(initial);
        for pair in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    proptest::proptest! {
        #[test]
        fn sum_by_words_is_the_sum_by_halfwords(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2100),
            initial in proptest::prelude::any::<u32>(),
        ) {
            proptest::prop_assert_eq!(
                ones_complement_sum(&data, initial),
                sum_by_halfwords(&data, initial)
            );
        }
    }

    #[test]
    fn checksum_of_known_header() {
        // The classic example header from RFC 1071 discussions.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
    }
}
