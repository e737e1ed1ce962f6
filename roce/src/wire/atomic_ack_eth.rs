//! Atomic Acknowledge Extended Transport Header (AtomicAckETH, 8 bytes): the value the remote
//! location held before the atomic operation. Follows the AETH in an ATOMIC Acknowledge.

use super::Error;
use zerocopy::network_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the AtomicAckETH in bytes.
pub const HEADER_LEN: usize = 8;

/// The AtomicAckETH as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Original remote data.
    pub original_data: U64,
}

mod field {
    use crate::wire::Field;

    pub const ORIGINAL_DATA: Field = 0..8;
}

const _: () = {
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(core::mem::offset_of!(Header, original_data) == field::ORIGINAL_DATA.start);
    assert!(field::ORIGINAL_DATA.end == HEADER_LEN);
};

fixed_header_view!(
    "A view of an AtomicAckETH at the start of a buffer.",
    "AtomicAckETH"
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The original remote data.
    pub fn original_data(&self) -> u64 {
        self.header().original_data.get()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the original remote data.
    pub fn set_original_data(&mut self, value: u64) {
        self.header_mut().original_data.set(value);
    }
}

/// The meaning of an AtomicAckETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Original remote data.
    pub original_data: u64,
}

impl Repr {
    /// Parses an AtomicAckETH.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Repr {
            original_data: packet.original_data(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the AtomicAckETH.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.header_mut().original_data = U64::new(self.original_data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PACKET_BYTES: [u8; 8] = [0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.original_data(), 0xfedc_ba98_7654_3210);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0u8; 8];
        Packet::new_unchecked(&mut bytes[..]).set_original_data(0xfedc_ba98_7654_3210);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn test_repr() {
        let repr = Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..])).unwrap();
        assert_eq!(repr.original_data, 0xfedc_ba98_7654_3210);
        let mut bytes = [0u8; 8];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET_BYTES);
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..7]),
            Err(Error::Truncated)
        );
    }
}
