//! Invalidate Extended Transport Header (IETH, 4 bytes): the R_Key a SEND with Invalidate asks
//! the responder to invalidate.

use super::Error;
use zerocopy::network_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the IETH in bytes.
pub const HEADER_LEN: usize = 4;

/// The IETH as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// R_Key to invalidate.
    pub rkey: U32,
}

mod field {
    use crate::wire::Field;

    pub const RKEY: Field = 0..4;
}

const _: () = {
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(core::mem::offset_of!(Header, rkey) == field::RKEY.start);
    assert!(field::RKEY.end == HEADER_LEN);
};

fixed_header_view!("A view of an IETH at the start of a buffer.", "IETH");

impl<T: AsRef<[u8]>> Packet<T> {
    /// The R_Key to invalidate.
    pub fn rkey(&self) -> u32 {
        self.header().rkey.get()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the R_Key to invalidate.
    pub fn set_rkey(&mut self, value: u32) {
        self.header_mut().rkey.set(value);
    }
}

/// The meaning of an IETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// R_Key to invalidate.
    pub rkey: u32,
}

impl Repr {
    /// Parses an IETH.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Repr {
            rkey: packet.rkey(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the IETH.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_rkey(self.rkey);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PACKET_BYTES: [u8; 4] = [0x00, 0x0a, 0xbc, 0xde];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.rkey(), 0x000a_bcde);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0u8; 4];
        Packet::new_unchecked(&mut bytes[..]).set_rkey(0x000a_bcde);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn test_repr() {
        let repr = Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..])).unwrap();
        assert_eq!(repr.rkey, 0x000a_bcde);
        let mut bytes = [0u8; 4];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET_BYTES);
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..3]),
            Err(Error::Truncated)
        );
    }
}
