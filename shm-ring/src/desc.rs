//! The descriptors that travel on the rings.
//!
//! A descriptor names a span of a [buffer pool](crate::pool) (`offset`, `len`) and carries a few
//! words of metadata. Descriptors are plain `#[repr(C)]` records: every bit pattern is a valid
//! descriptor, so a consumer can always copy one out of a slot, and must then validate it (see
//! [`crate::pool::PoolView::check`]) before touching the bytes it names.
//!
//! The rings are generic over the descriptor type: any `Copy` type that is
//! `zerocopy::{FromBytes, IntoBytes, Immutable}` will do. [`Desc`] is the standard 16-byte
//! descriptor; [`Desc32`] adds two 64-bit words for protocols that need a cookie.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A descriptor that names a span of a buffer pool.
///
/// The pool uses this to validate descriptors of any layout; it is implemented for [`Desc`] and
/// [`Desc32`].
pub trait BufferDesc {
    /// Byte offset of the span from the start of the pool's buffer area.
    fn offset(&self) -> u32;
    /// Length of the span in bytes.
    fn len(&self) -> u32;
    /// Whether the span is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The standard 16-byte descriptor.
///
/// What `flags` and `meta` mean is up to the protocol that runs over the ring.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Desc {
    /// Byte offset of the data from the start of the pool's buffer area.
    pub offset: u32,
    /// Length of the data in bytes.
    pub len: u32,
    /// Protocol-defined flags.
    pub flags: u32,
    /// A protocol-defined word (for example a sequence number or a queue pair number).
    pub meta: u32,
}

impl Desc {
    /// A descriptor for `len` bytes at `offset`, with no flags and no metadata.
    pub const fn new(offset: u32, len: u32) -> Desc {
        Desc {
            offset,
            len,
            flags: 0,
            meta: 0,
        }
    }
}

impl BufferDesc for Desc {
    #[inline]
    fn offset(&self) -> u32 {
        self.offset
    }

    #[inline]
    fn len(&self) -> u32 {
        self.len
    }
}

/// A 32-byte descriptor: [`Desc`] plus two 64-bit protocol words.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Desc32 {
    /// Byte offset of the data from the start of the pool's buffer area.
    pub offset: u32,
    /// Length of the data in bytes.
    pub len: u32,
    /// Protocol-defined flags.
    pub flags: u32,
    /// A protocol-defined word.
    pub meta: u32,
    /// A protocol-defined 64-bit word, typically a cookie the producer gets back.
    pub user_data: u64,
    /// A second protocol-defined 64-bit word.
    pub aux: u64,
}

impl BufferDesc for Desc32 {
    #[inline]
    fn offset(&self) -> u32 {
        self.offset
    }

    #[inline]
    fn len(&self) -> u32 {
        self.len
    }
}

const _: () = assert!(size_of::<Desc>() == 16 && align_of::<Desc>() == 4);
const _: () = assert!(size_of::<Desc32>() == 32 && align_of::<Desc32>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desc_bytes_are_little_endian_fields_in_order() {
        let desc = Desc {
            offset: 0x0403_0201,
            len: 0x0807_0605,
            flags: 0x0c0b_0a09,
            meta: 0x100f_0e0d,
        };
        let expected: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        assert_eq!(desc.as_bytes(), &expected);
        assert_eq!(Desc::read_from_bytes(&expected).unwrap(), desc);
    }

    #[test]
    fn desc32_layout() {
        let desc = Desc32 {
            offset: 1,
            len: 2,
            flags: 3,
            meta: 4,
            user_data: 5,
            aux: 6,
        };
        let bytes = desc.as_bytes();
        assert_eq!(&bytes[16..24], &5u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &6u64.to_le_bytes());
    }
}
