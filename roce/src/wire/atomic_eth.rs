//! Atomic Extended Transport Header (AtomicETH, 28 bytes), carried by CmpSwap and FetchAdd.
//!
//! ```text
//! +---------------------------------------------------------------+
//! |                 Virtual Address (64 bits)                     |
//! +---------------------------------------------------------------+
//! |                 R_Key (32 bits)                               |
//! +---------------------------------------------------------------+
//! |                 Swap (or Add) Data (64 bits)                  |
//! +---------------------------------------------------------------+
//! |                 Compare Data (64 bits)                        |
//! +---------------------------------------------------------------+
//! ```
//!
//! The 64-bit fields after the R_Key are not 8-byte aligned; the zerocopy struct uses unaligned
//! network-endian integers, so no alignment is assumed anywhere.

use super::Error;
use zerocopy::network_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the AtomicETH in bytes.
pub const HEADER_LEN: usize = 28;

/// The AtomicETH as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Remote virtual address (8-byte aligned in the remote memory region).
    pub virtual_address: U64,
    /// Remote key.
    pub rkey: U32,
    /// Swap data (CmpSwap) or add data (FetchAdd).
    pub swap_add_data: U64,
    /// Compare data (CmpSwap; ignored by FetchAdd).
    pub compare_data: U64,
}

mod field {
    use crate::wire::Field;

    pub const VIRTUAL_ADDRESS: Field = 0..8;
    pub const RKEY: Field = 8..12;
    pub const SWAP_ADD_DATA: Field = 12..20;
    pub const COMPARE_DATA: Field = 20..28;
}

const _: () = {
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(core::mem::offset_of!(Header, virtual_address) == field::VIRTUAL_ADDRESS.start);
    assert!(core::mem::offset_of!(Header, rkey) == field::RKEY.start);
    assert!(core::mem::offset_of!(Header, swap_add_data) == field::SWAP_ADD_DATA.start);
    assert!(core::mem::offset_of!(Header, compare_data) == field::COMPARE_DATA.start);
    assert!(field::COMPARE_DATA.end == HEADER_LEN);
};

fixed_header_view!(
    "A view of an AtomicETH at the start of a buffer.",
    "AtomicETH"
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The remote virtual address.
    pub fn virtual_address(&self) -> u64 {
        self.header().virtual_address.get()
    }

    /// The remote key.
    pub fn rkey(&self) -> u32 {
        self.header().rkey.get()
    }

    /// The swap (CmpSwap) or add (FetchAdd) data.
    pub fn swap_add_data(&self) -> u64 {
        self.header().swap_add_data.get()
    }

    /// The compare data.
    pub fn compare_data(&self) -> u64 {
        self.header().compare_data.get()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the remote virtual address.
    pub fn set_virtual_address(&mut self, value: u64) {
        self.header_mut().virtual_address.set(value);
    }

    /// Sets the remote key.
    pub fn set_rkey(&mut self, value: u32) {
        self.header_mut().rkey.set(value);
    }

    /// Sets the swap or add data.
    pub fn set_swap_add_data(&mut self, value: u64) {
        self.header_mut().swap_add_data.set(value);
    }

    /// Sets the compare data.
    pub fn set_compare_data(&mut self, value: u64) {
        self.header_mut().compare_data.set(value);
    }
}

/// The meaning of an AtomicETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Remote virtual address.
    pub virtual_address: u64,
    /// Remote key.
    pub rkey: u32,
    /// Swap (CmpSwap) or add (FetchAdd) data.
    pub swap_add_data: u64,
    /// Compare data.
    pub compare_data: u64,
}

impl Repr {
    /// Parses an AtomicETH.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Repr {
            virtual_address: packet.virtual_address(),
            rkey: packet.rkey(),
            swap_add_data: packet.swap_add_data(),
            compare_data: packet.compare_data(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the AtomicETH.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        *packet.header_mut() = Header {
            virtual_address: U64::new(self.virtual_address),
            rkey: U32::new(self.rkey),
            swap_add_data: U64::new(self.swap_add_data),
            compare_data: U64::new(self.compare_data),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PACKET_BYTES: [u8; 28] = [
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x10, 0x08, // VA
        0x00, 0x00, 0x12, 0x34, // R_Key
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // swap
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // compare
    ];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.virtual_address(), 0x1_0000_1008);
        assert_eq!(packet.rkey(), 0x1234);
        assert_eq!(packet.swap_add_data(), 0x1122_3344_5566_7788);
        assert_eq!(packet.compare_data(), 0x0102_0304_0506_0708);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0u8; 28];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_virtual_address(0x1_0000_1008);
        packet.set_rkey(0x1234);
        packet.set_swap_add_data(0x1122_3344_5566_7788);
        packet.set_compare_data(0x0102_0304_0506_0708);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn test_repr() {
        let repr = Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..])).unwrap();
        let mut bytes = [0u8; 28];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET_BYTES);
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..27])),
            Err(Error::Truncated)
        );
    }
}
