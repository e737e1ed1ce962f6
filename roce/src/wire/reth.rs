//! RDMA Extended Transport Header (RETH, 16 bytes): where an RDMA WRITE or READ goes.
//!
//! ```text
//! +---------------------------------------------------------------+
//! |                 Virtual Address (64 bits)                     |
//! +---------------------------------------------------------------+
//! |                 R_Key (32 bits)                               |
//! +---------------------------------------------------------------+
//! |                 DMA Length (32 bits)                          |
//! +---------------------------------------------------------------+
//! ```
//!
//! Carried by RDMA WRITE First/Only (with or without immediate) and RDMA READ Request. The DMA
//! length is the length of the whole message, not of this packet's payload.

use super::Error;
use zerocopy::network_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the RETH in bytes.
pub const HEADER_LEN: usize = 16;

/// The RETH as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Remote virtual address.
    pub virtual_address: U64,
    /// Remote key.
    pub rkey: U32,
    /// Length of the whole RDMA message in bytes.
    pub dma_length: U32,
}

mod field {
    use crate::wire::Field;

    pub const VIRTUAL_ADDRESS: Field = 0..8;
    pub const RKEY: Field = 8..12;
    pub const DMA_LENGTH: Field = 12..16;
}

const _: () = {
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(core::mem::offset_of!(Header, virtual_address) == field::VIRTUAL_ADDRESS.start);
    assert!(core::mem::offset_of!(Header, rkey) == field::RKEY.start);
    assert!(core::mem::offset_of!(Header, dma_length) == field::DMA_LENGTH.start);
    assert!(field::DMA_LENGTH.end == HEADER_LEN);
};

fixed_header_view!("A view of a RETH at the start of a buffer.", "RETH");

impl<T: AsRef<[u8]>> Packet<T> {
    /// The remote virtual address.
    pub fn virtual_address(&self) -> u64 {
        self.header().virtual_address.get()
    }

    /// The remote key.
    pub fn rkey(&self) -> u32 {
        self.header().rkey.get()
    }

    /// The length of the whole RDMA message.
    pub fn dma_length(&self) -> u32 {
        self.header().dma_length.get()
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

    /// Sets the length of the whole RDMA message.
    pub fn set_dma_length(&mut self, value: u32) {
        self.header_mut().dma_length.set(value);
    }
}

/// The meaning of a RETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Remote virtual address.
    pub virtual_address: u64,
    /// Remote key.
    pub rkey: u32,
    /// Length of the whole RDMA message.
    pub dma_length: u32,
}

impl Repr {
    /// Parses a RETH.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Repr {
            virtual_address: packet.virtual_address(),
            rkey: packet.rkey(),
            dma_length: packet.dma_length(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the RETH.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        *packet.header_mut() = Header {
            virtual_address: U64::new(self.virtual_address),
            rkey: U32::new(self.rkey),
            dma_length: U32::new(self.dma_length),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PACKET_BYTES: [u8; 16] = [
        0x00, 0x00, 0x7f, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xca, 0xfe, 0xbe, 0xef, 0x00, 0x01, 0x00,
        0x00,
    ];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.virtual_address(), 0x0000_7f12_3456_789a);
        assert_eq!(packet.rkey(), 0xcafe_beef);
        assert_eq!(packet.dma_length(), 65536);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0u8; 16];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_virtual_address(0x0000_7f12_3456_789a);
        packet.set_rkey(0xcafe_beef);
        packet.set_dma_length(65536);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn test_repr() {
        let repr = Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..])).unwrap();
        assert_eq!(
            repr,
            Repr {
                virtual_address: 0x0000_7f12_3456_789a,
                rkey: 0xcafe_beef,
                dma_length: 65536
            }
        );
        let mut bytes = [0u8; 16];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET_BYTES);
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..15])),
            Err(Error::Truncated)
        );
    }
}
