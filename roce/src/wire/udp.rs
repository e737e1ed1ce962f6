//! The UDP header that carries RoCEv2 (destination port 4791).
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |          Source Port          |       Destination Port        |
//! +-------------------------------+-------------------------------+
//! |            Length             |           Checksum            |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! rxe sends IPv4 RoCEv2 datagrams with checksum 0 ("no checksum": `prepare_udp_hdr` in
//! `rxe_net.c` sets `udph->check = 0` and nothing fills it later; the ICRC protects the
//! payload instead), and so does [`Repr::emit`]. A receiver that gets a non-zero checksum
//! checks it, as the Linux UDP stack does before handing the datagram to rxe.

use super::ipv4::ones_complement_sum;
use super::{Error, header_mut, header_ref};
use core::net::Ipv4Addr;
use zerocopy::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// The UDP header as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Length of header and payload.
    pub length: U16,
    /// Checksum over an IP pseudo-header, header and payload; 0 for none.
    pub checksum: U16,
}

mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

const _: () = {
    use core::mem::offset_of;
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(offset_of!(Header, src_port) == field::SRC_PORT.start);
    assert!(offset_of!(Header, dst_port) == field::DST_PORT.start);
    assert!(offset_of!(Header, length) == field::LENGTH.start);
    assert!(offset_of!(Header, checksum) == field::CHECKSUM.start);
    assert!(field::CHECKSUM.end == HEADER_LEN);
};

/// Byte offsets, inside the UDP header, of the checksum that the ICRC replaces with ones.
pub const ICRC_MASKED_BYTES: [usize; 2] = [field::CHECKSUM.start, field::CHECKSUM.start + 1];

/// The one's complement sum of the IPv4 pseudo-header of a UDP datagram.
fn pseudo_header_sum(src_addr: Ipv4Addr, dst_addr: Ipv4Addr, udp_len: u16) -> u32 {
    let src = src_addr.octets();
    let dst = dst_addr.octets();
    let words = [
        u16::from_be_bytes([src[0], src[1]]),
        u16::from_be_bytes([src[2], src[3]]),
        u16::from_be_bytes([dst[0], dst[1]]),
        u16::from_be_bytes([dst[2], dst[3]]),
        u16::from(super::ipv4::PROTOCOL_UDP),
        udp_len,
    ];
    words.iter().map(|word| u32::from(*word)).sum()
}

checked_view!("A view of a UDP datagram.");

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the buffer holds the header and as many bytes as the length field says
    /// (bytes beyond it are ignored), and that the length field covers the header.
    pub fn check_len(&self) -> Result<(), Error> {
        let length = self.buffer.as_ref().len();
        if length < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let udp_len = usize::from(self.len());
        if udp_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if length < udp_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The header as a zerocopy struct.
    pub fn header(&self) -> &Header {
        header_ref(self.buffer.as_ref())
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        self.header().src_port.get()
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        self.header().dst_port.get()
    }

    /// The length field: header and payload.
    pub fn len(&self) -> u16 {
        self.header().length.get()
    }

    /// Whether the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        self.header().checksum.get()
    }

    /// The datagram up to the length field (or the end of the buffer, if shorter).
    fn datagram(&self) -> &[u8] {
        let buffer = self.buffer.as_ref();
        &buffer[..usize::from(self.len()).clamp(HEADER_LEN.min(buffer.len()), buffer.len())]
    }

    /// Whether the checksum is right for these IPv4 addresses. A zero checksum means that the
    /// sender computed none and is always right.
    pub fn verify_checksum(&self, src_addr: Ipv4Addr, dst_addr: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let datagram = self.datagram();
        let initial = pseudo_header_sum(src_addr, dst_addr, self.len());
        ones_complement_sum(datagram, initial) == 0xffff
    }

    /// The payload: from the end of the header to the length field.
    pub fn payload(&self) -> &[u8] {
        let datagram = self.datagram();
        &datagram[HEADER_LEN.min(datagram.len())..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// The header as a mutable zerocopy struct.
    pub fn header_mut(&mut self) -> &mut Header {
        header_mut(self.buffer.as_mut())
    }

    /// Sets the source port.
    pub fn set_src_port(&mut self, value: u16) {
        self.header_mut().src_port.set(value);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, value: u16) {
        self.header_mut().dst_port.set(value);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, value: u16) {
        self.header_mut().length.set(value);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.header_mut().checksum.set(value);
    }

    /// Computes and writes the checksum for these IPv4 addresses (0 is sent as `0xffff`).
    /// RoCEv2 over IPv4 does not use it; it is here for tests and other UDP traffic.
    pub fn fill_checksum(&mut self, src_addr: Ipv4Addr, dst_addr: Ipv4Addr) {
        self.set_checksum(0);
        let initial = pseudo_header_sum(src_addr, dst_addr, self.len());
        let checksum = !ones_complement_sum(self.datagram(), initial);
        self.set_checksum(if checksum == 0 { 0xffff } else { checksum });
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let length = self.buffer.as_ref().len();
        let end = usize::from(self.len()).clamp(HEADER_LEN.min(length), length);
        let start = HEADER_LEN.min(end);
        &mut self.buffer.as_mut()[start..end]
    }
}

/// The meaning of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Length of the payload.
    pub payload_len: usize,
}

impl Repr {
    /// Parses a UDP header, checking a non-zero checksum against these IPv4 addresses.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
    ) -> Result<Self, Error> {
        packet.check_len()?;
        if !packet.verify_checksum(src_addr, dst_addr) {
            return Err(Error::BadChecksum);
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
        })
    }

    /// Length of the emitted header (the payload is not counted).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with checksum 0. Fails with [`Error::Malformed`] if the length does
    /// not fit 16 bits.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<(), Error> {
        let length = u16::try_from(HEADER_LEN + self.payload_len).map_err(|_| Error::Malformed)?;
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(length);
        packet.set_checksum(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    static PACKET_BYTES: [u8; 12] = [
        0xc0, 0x01, 0x12, 0xb7, 0x00, 0x0c, 0x00, 0x00, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.src_port(), 0xc001);
        assert_eq!(packet.dst_port(), 4791);
        assert_eq!(packet.len(), 12);
        assert_eq!(packet.checksum(), 0);
        assert_eq!(packet.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert!(packet.verify_checksum(SRC, DST));
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xffu8; 12];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_src_port(0xc001);
        packet.set_dst_port(4791);
        packet.set_len(12);
        packet.set_checksum(0);
        packet
            .payload_mut()
            .copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn test_repr() {
        let repr = Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..]), SRC, DST).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_port: 0xc001,
                dst_port: 4791,
                payload_len: 4
            }
        );
        let mut bytes = PACKET_BYTES;
        bytes[..8].fill(0xff);
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]))
            .unwrap();
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn checksum_round_trip() {
        let mut bytes = PACKET_BYTES;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.fill_checksum(SRC, DST);
        assert_ne!(packet.checksum(), 0);
        assert!(packet.verify_checksum(SRC, DST));
        assert!(!packet.verify_checksum(SRC, Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            Repr::parse(
                &Packet::new_unchecked(&bytes[..]),
                SRC,
                Ipv4Addr::new(10, 0, 0, 1)
            ),
            Err(Error::BadChecksum)
        );
    }

    #[test]
    fn test_rejects() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..7]).map(|_| ()),
            Err(Error::Truncated)
        );
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..11]).map(|_| ()),
            Err(Error::Truncated)
        );
        let mut short = PACKET_BYTES;
        short[5] = 7;
        assert_eq!(
            Packet::new_checked(&short[..]).map(|_| ()),
            Err(Error::Malformed)
        );
    }
}
