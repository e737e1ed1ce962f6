//! Immediate Data extended header (ImmDt, 4 bytes), carried by SEND and RDMA WRITE "with
//! immediate" packets and delivered to the receiver's completion.
//!
//! The four bytes are opaque to the transport. [`Repr::immediate`] reads them as a big-endian
//! number, which is the value of libibverbs' `imm_data` (a `__be32`) after `ntohl`.

use super::Error;
use zerocopy::network_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the ImmDt header in bytes.
pub const HEADER_LEN: usize = 4;

/// The ImmDt header as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Immediate data.
    pub immediate: U32,
}

mod field {
    use crate::wire::Field;

    pub const IMMEDIATE: Field = 0..4;
}

const _: () = {
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(core::mem::offset_of!(Header, immediate) == field::IMMEDIATE.start);
    assert!(field::IMMEDIATE.end == HEADER_LEN);
};

fixed_header_view!(
    "A view of an ImmDt header at the start of a buffer.",
    "ImmDt header"
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The immediate data, read big-endian.
    pub fn immediate(&self) -> u32 {
        self.header().immediate.get()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the immediate data, written big-endian.
    pub fn set_immediate(&mut self, value: u32) {
        self.header_mut().immediate.set(value);
    }
}

/// The meaning of an ImmDt header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Immediate data, read big-endian.
    pub immediate: u32,
}

impl Repr {
    /// Parses an ImmDt header.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Repr {
            immediate: packet.immediate(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the ImmDt header.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_immediate(self.immediate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PACKET_BYTES: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.immediate(), 0x1234_5678);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0u8; 4];
        Packet::new_unchecked(&mut bytes[..]).set_immediate(0x1234_5678);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn test_repr() {
        let repr = Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..])).unwrap();
        assert_eq!(repr.immediate, 0x1234_5678);
        let mut bytes = [0u8; 4];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET_BYTES);
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..3]),
            Err(Error::Truncated)
        );
    }
}
