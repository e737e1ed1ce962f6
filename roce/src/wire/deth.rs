//! Datagram Extended Transport Header (DETH, 8 bytes), carried by UD packets.
//!
//! ```text
//! +---------------------------------------------------------------+
//! |                      Queue Key (32 bits)                      |
//! +---------------+-----------------------------------------------+
//! |   Reserved    |            Source QP (24 bits)                |
//! +---------------+-----------------------------------------------+
//! ```

use super::{Error, U24_MASK, read_u24, write_u24};
use zerocopy::network_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the DETH in bytes.
pub const HEADER_LEN: usize = 8;

/// The Q_Key of the general services QP (QP1).
pub const GSI_QKEY: u32 = 0x8001_0000;

/// The DETH as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Queue key.
    pub qkey: U32,
    /// Reserved.
    pub reserved: u8,
    /// Source QP number.
    pub src_qpn: [u8; 3],
}

mod field {
    use crate::wire::Field;

    pub const QKEY: Field = 0..4;
    pub const RESERVED: usize = 4;
    pub const SRC_QPN: Field = 5..8;
}

const _: () = {
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(core::mem::offset_of!(Header, qkey) == field::QKEY.start);
    assert!(core::mem::offset_of!(Header, reserved) == field::RESERVED);
    assert!(core::mem::offset_of!(Header, src_qpn) == field::SRC_QPN.start);
    assert!(field::SRC_QPN.end == HEADER_LEN);
};

fixed_header_view!("A view of a DETH at the start of a buffer.", "DETH");

impl<T: AsRef<[u8]>> Packet<T> {
    /// The queue key.
    pub fn qkey(&self) -> u32 {
        self.header().qkey.get()
    }

    /// The reserved byte.
    pub fn reserved(&self) -> u8 {
        self.header().reserved
    }

    /// The source QP number (24 bits).
    pub fn src_qpn(&self) -> u32 {
        read_u24(self.header().src_qpn)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the queue key.
    pub fn set_qkey(&mut self, value: u32) {
        self.header_mut().qkey.set(value);
    }

    /// Sets the reserved byte.
    pub fn set_reserved(&mut self, value: u8) {
        self.header_mut().reserved = value;
    }

    /// Sets the source QP number (masked to 24 bits).
    pub fn set_src_qpn(&mut self, value: u32) {
        self.header_mut().src_qpn = write_u24(value);
    }
}

/// The meaning of a DETH. The reserved byte is ignored and written as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Queue key.
    pub qkey: u32,
    /// Source QP number (24 bits).
    pub src_qpn: u32,
}

impl Repr {
    /// Parses a DETH.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Repr {
            qkey: packet.qkey(),
            src_qpn: packet.src_qpn(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the DETH.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        *packet.header_mut() = Header {
            qkey: U32::new(self.qkey),
            reserved: 0,
            src_qpn: write_u24(self.src_qpn & U24_MASK),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PACKET_BYTES: [u8; 8] = [0x80, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.qkey(), GSI_QKEY);
        assert_eq!(packet.reserved(), 0);
        assert_eq!(packet.src_qpn(), 1);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xffu8; 8];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_qkey(GSI_QKEY);
        packet.set_reserved(0);
        packet.set_src_qpn(0xff00_0001);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn test_repr() {
        let repr = Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..])).unwrap();
        assert_eq!(
            repr,
            Repr {
                qkey: GSI_QKEY,
                src_qpn: 1
            }
        );
        let mut bytes = [0xffu8; 8];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET_BYTES);
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..7]),
            Err(Error::Truncated)
        );
    }
}
