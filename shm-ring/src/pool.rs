//! Packet buffer pools in shared memory, recycled through a return ring without locks.
//!
//! A pool is an array of equal, power-of-two sized buffers in a caller-provided region of shared
//! memory. It has one owner: the side that produces on the data ring. Buffers travel like this
//! (the AF_XDP fill/completion or io_uring SQ/CQ model):
//!
//! 1. The owner takes a buffer from its free set ([`PoolOwner::alloc`], local bookkeeping, no
//!    shared state), fills it ([`PoolOwner::write`]) and turns it into a descriptor
//!    ([`PoolOwner::submit`]), which it pushes on the data ring.
//! 2. The consumer validates the descriptor ([`PoolView::check`]; [`PoolView::read`] and the
//!    other accessors validate too), uses the bytes, and pushes a descriptor naming the buffer
//!    ([`PoolView::return_desc`]) on the return ring, which it produces and the owner consumes.
//! 3. The owner drains the return ring ([`PoolOwner::reclaim_from`]), checks that each returned
//!    offset is the start of one of its buffers that is in flight, and puts the buffer back in
//!    its free set. A double return or a bogus offset is an error, never a corrupted free set.
//!
//! # Example
//!
//! ```
//! use shm_ring::desc::Desc;
//! use shm_ring::pool::{self, PoolOwner, PoolView};
//! use shm_ring::ring::{self, Consumer, Producer};
//!
//! // Stand-ins for shared memory: a pool of 4 buffers of 2 KiB and two rings.
//! const POOL: usize = pool::pool_region_size(2048, 4);
//! const RING: usize = ring::region_size::<Desc>(4);
//! #[repr(C, align(4096))]
//! struct Shared([u8; POOL], [u8; RING], [u8; RING]);
//! let mut shared = Shared([0; POOL], [0; RING], [0; RING]);
//! let pool_region = shared.0.as_mut_ptr();
//! let (data_region, return_region) = (shared.1.as_mut_ptr(), shared.2.as_mut_ptr());
//!
//! // SAFETY: the regions are valid for their sizes while the handles live, only pool and ring
//! // code touches them, and each ring has one producer and one consumer.
//! let (owner_view, consumer_view, mut tx, mut rx, mut ret_tx, mut ret_rx) = unsafe {
//!     pool::init(pool_region, POOL, 2048, 4)?;
//!     ring::init::<Desc>(data_region, RING, 4)?;
//!     ring::init::<Desc>(return_region, RING, 4)?;
//!     (
//!         PoolView::attach(pool_region, POOL)?,
//!         PoolView::attach(pool_region, POOL)?,
//!         Producer::<Desc>::attach(data_region, RING)?,
//!         Consumer::<Desc>::attach(data_region, RING)?,
//!         Producer::<Desc>::attach(return_region, RING)?,
//!         Consumer::<Desc>::attach(return_region, RING)?,
//!     )
//! };
//!
//! // Owner: no allocator needed, the free set lives in caller-provided words.
//! let mut storage = [0u64; pool::owner_storage_words(4)];
//! let mut owner = PoolOwner::new(owner_view, &mut storage[..])?;
//! let buffer = owner.alloc().expect("a free buffer");
//! owner.write(&buffer, 0, b"hello")?;
//! tx.push(owner.submit(buffer, 0, 5)?)?;
//!
//! // Consumer: validate, copy out, return the buffer.
//! let desc = rx.pop()?.expect("a descriptor");
//! let mut bytes = [0u8; 2048];
//! let len = consumer_view.read(&desc, &mut bytes)?;
//! assert_eq!(&bytes[..len], b"hello");
//! ret_tx.push(consumer_view.return_desc(&desc)?)?;
//!
//! // Owner: recycle.
//! assert_eq!(owner.reclaim_from(&mut ret_rx, 32)?, 1);
//! assert_eq!(owner.free_count(), 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! The region must be aligned to [`POOL_ALIGN`] and at least [`pool_region_size`] bytes long.
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | magic [`POOL_MAGIC`] | host, at [`init`] |
//! | 4 | layout version [`POOL_VERSION`] | host, at [`init`] |
//! | 8 | buffer size (a power of two, at least [`MIN_BUFFER_SIZE`]) | host, at [`init`] |
//! | 12 | buffer count | host, at [`init`] |
//! | 16 | offset of the buffer area ([`POOL_HEADER_SIZE`]) | host, at [`init`] |
//! | 24 | region size (`u64`) | host, at [`init`] |
//! | 4096 | the buffers | the owner while it holds a buffer, the consumer while it does |
//!
//! Descriptor offsets count from the start of the buffer area, so buffer `i` starts at offset
//! `i * buffer_size`; the area is at most 4 GiB so that offsets fit in a `u32`. The header takes
//! a page, so the buffers are page aligned when the region is.
//!
//! # Trust
//!
//! The peer may be hostile. A consumer validates every descriptor against the pool geometry it
//! copied at attach (a span must lie inside one buffer), so it cannot be made to touch anything
//! outside the buffer area. The owner's free set lives in its own memory, never in the shared
//! region; a returned offset must name a buffer that is in flight. Bytes are only ever copied
//! through raw pointers ([`core::ptr::copy_nonoverlapping`]); no reference into the buffer area
//! is formed except by the `unsafe` zero-copy accessors, whose contracts say when that is sound.
//! A peer that writes a buffer it does not hold can make a copy torn, but a torn copy of bytes is
//! still bytes.

use core::fmt;
use core::ptr::NonNull;

use crate::desc::{BufferDesc, Desc};
use crate::ring::{Consumer, Descriptor, PeerError};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// `magic` of a pool header: "dvPL" as little-endian bytes.
pub const POOL_MAGIC: u32 = u32::from_le_bytes(*b"dvPL");
/// Version of the pool layout; bumped on any incompatible change.
pub const POOL_VERSION: u32 = 1;
/// Required alignment of a pool region, in bytes.
pub const POOL_ALIGN: usize = 128;
/// Size of the pool header; the buffer area starts at this offset.
pub const POOL_HEADER_SIZE: usize = 4096;
/// Smallest buffer size.
pub const MIN_BUFFER_SIZE: u32 = 64;
/// Largest buffer area: offsets are `u32`.
pub const MAX_POOL_DATA: u64 = 1 << 32;

/// Size in bytes of a pool region for `buffer_count` buffers of `buffer_size` bytes.
pub const fn pool_region_size(buffer_size: u32, buffer_count: u32) -> usize {
    let data = (buffer_size as usize).saturating_mul(buffer_count as usize);
    POOL_HEADER_SIZE.saturating_add(data)
}

/// Number of `u64` words of owner storage ([`PoolOwner::new`]) for `buffer_count` buffers: two
/// bits per buffer (free, in flight).
pub const fn owner_storage_words(buffer_count: u32) -> usize {
    2 * (buffer_count as usize).div_ceil(64)
}

/// The pool header. Every field is written by the host at [`init`] and never changed; each side
/// reads it once, at attach.
#[repr(C, align(128))]
struct PoolHeader {
    /// [`POOL_MAGIC`], stored last (Release) by [`init`]. Written by the host only.
    magic: AtomicU32,
    /// [`POOL_VERSION`]. Written by the host only.
    version: AtomicU32,
    /// Size of each buffer, a power of two. Written by the host only.
    buffer_size: AtomicU32,
    /// Number of buffers. Written by the host only.
    buffer_count: AtomicU32,
    /// Offset of the buffer area, [`POOL_HEADER_SIZE`]. Written by the host only.
    data_offset: AtomicU32,
    /// Zero. Written by the host only.
    reserved: AtomicU32,
    /// [`pool_region_size`] for the geometry. Written by the host only.
    region_size: AtomicU64,
}

const _: () = assert!(size_of::<PoolHeader>() <= POOL_HEADER_SIZE);

/// Why a pool could not be initialised or attached to, or an owner not set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolSetupError {
    /// The region pointer is null.
    NullRegion,
    /// The region is not aligned to [`POOL_ALIGN`].
    Misaligned {
        /// Address of the region.
        address: usize,
    },
    /// The region is shorter than the pool needs.
    RegionTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes provided.
        actual: usize,
    },
    /// The magic number is wrong: not a pool, or not initialised.
    BadMagic(u32),
    /// The layout version is one this build does not speak.
    BadVersion(u32),
    /// The buffer size is not a power of two of at least [`MIN_BUFFER_SIZE`].
    BadBufferSize(u32),
    /// The buffer count is zero, or the buffers would exceed [`MAX_POOL_DATA`].
    BadBufferCount(u32),
    /// A geometry field disagrees with the buffer size and count.
    BadGeometry {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The owner's storage has fewer words than [`owner_storage_words`].
    StorageTooSmall {
        /// Words needed.
        needed: usize,
        /// Words provided.
        actual: usize,
    },
}

impl fmt::Display for PoolSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolSetupError::NullRegion => write!(f, "pool region is null"),
            PoolSetupError::Misaligned { address } => {
                write!(
                    f,
                    "pool region {address:#x} is not aligned to {POOL_ALIGN} bytes"
                )
            }
            PoolSetupError::RegionTooSmall { needed, actual } => {
                write!(
                    f,
                    "pool region of {actual} bytes is too small: {needed} needed"
                )
            }
            PoolSetupError::BadMagic(magic) => write!(f, "pool magic {magic:#010x} is wrong"),
            PoolSetupError::BadVersion(version) => {
                write!(f, "pool layout version {version} is not {POOL_VERSION}")
            }
            PoolSetupError::BadBufferSize(size) => write!(
                f,
                "pool buffer size {size} is not a power of two of at least {MIN_BUFFER_SIZE}"
            ),
            PoolSetupError::BadBufferCount(count) => {
                write!(
                    f,
                    "pool buffer count {count} is zero or the pool exceeds 4 GiB"
                )
            }
            PoolSetupError::BadGeometry { field, value } => {
                write!(
                    f,
                    "pool header field {field} has inconsistent value {value}"
                )
            }
            PoolSetupError::StorageTooSmall { needed, actual } => {
                write!(
                    f,
                    "pool owner storage of {actual} words is too small: {needed} needed"
                )
            }
        }
    }
}

impl core::error::Error for PoolSetupError {}

/// A descriptor, a returned buffer or a copy was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// The descriptor's span does not lie inside one buffer of the pool.
    OutOfBounds {
        /// The descriptor's offset.
        offset: u32,
        /// The descriptor's length.
        len: u32,
    },
    /// A copy would run past the end of the span or buffer.
    OutOfRange {
        /// Where the copy starts, from the start of the span or buffer.
        at: u32,
        /// Bytes to copy.
        count: usize,
        /// Length of the span or buffer.
        limit: u32,
    },
    /// The destination is shorter than the span.
    DestinationTooSmall {
        /// Bytes needed.
        needed: u32,
        /// Bytes provided.
        actual: usize,
    },
    /// A returned offset is not the start of a buffer.
    NotBufferStart(u32),
    /// A returned offset lies outside the pool.
    OutsidePool(u32),
    /// A returned buffer is not in flight: returned twice, or never submitted.
    NotInFlight(u32),
    /// A [`Buffer`] that this owner did not allocate.
    ForeignBuffer(u32),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::OutOfBounds { offset, len } => {
                write!(
                    f,
                    "descriptor span {offset:#x}+{len} is not inside one pool buffer"
                )
            }
            PoolError::OutOfRange { at, count, limit } => {
                write!(
                    f,
                    "copy of {count} bytes at {at} runs past the end ({limit} bytes)"
                )
            }
            PoolError::DestinationTooSmall { needed, actual } => {
                write!(f, "destination of {actual} bytes cannot hold {needed}")
            }
            PoolError::NotBufferStart(offset) => {
                write!(
                    f,
                    "returned offset {offset:#x} is not the start of a buffer"
                )
            }
            PoolError::OutsidePool(offset) => {
                write!(f, "returned offset {offset:#x} is outside the pool")
            }
            PoolError::NotInFlight(offset) => {
                write!(
                    f,
                    "returned buffer {offset:#x} is not in flight (double return?)"
                )
            }
            PoolError::ForeignBuffer(index) => {
                write!(f, "buffer {index} does not belong to this pool")
            }
        }
    }
}

impl core::error::Error for PoolError {}

/// Why [`PoolOwner::reclaim_from`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReclaimError {
    /// The return ring's producer broke the ring protocol.
    Peer(PeerError),
    /// A returned descriptor was rejected (it was consumed from the ring all the same).
    Pool(PoolError),
}

impl fmt::Display for ReclaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReclaimError::Peer(_) => write!(f, "return ring failed"),
            ReclaimError::Pool(_) => write!(f, "bad buffer return"),
        }
    }
}

impl core::error::Error for ReclaimError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ReclaimError::Peer(error) => Some(error),
            ReclaimError::Pool(error) => Some(error),
        }
    }
}

/// Initialises a pool of `buffer_count` buffers of `buffer_size` bytes in `region` (host side).
///
/// Writes the header (magic last, with Release) and zeroes the buffers.
///
/// # Safety
///
/// `region` must be valid for writes of `len` bytes, and no one may use the pool while it is
/// initialised.
pub unsafe fn init(
    region: *mut u8,
    len: usize,
    buffer_size: u32,
    buffer_count: u32,
) -> Result<(), PoolSetupError> {
    let header = check_region(region, len)?;
    check_geometry(buffer_size, buffer_count)?;
    let needed = pool_region_size(buffer_size, buffer_count);
    if len < needed {
        return Err(PoolSetupError::RegionTooSmall {
            needed,
            actual: len,
        });
    }
    let fresh = PoolHeader {
        magic: AtomicU32::new(0),
        version: AtomicU32::new(POOL_VERSION),
        buffer_size: AtomicU32::new(buffer_size),
        buffer_count: AtomicU32::new(buffer_count),
        data_offset: AtomicU32::new(POOL_HEADER_SIZE as u32),
        reserved: AtomicU32::new(0),
        region_size: AtomicU64::new(needed as u64),
    };
    // SAFETY: the region is writable for `len >= needed > size_of::<PoolHeader>()` bytes and
    // aligned (checked above); the caller guarantees no one else uses it.
    unsafe { header.write(fresh) };
    // SAFETY: `POOL_HEADER_SIZE + data == needed <= len`: the buffer area is inside the region.
    let data = unsafe { region.add(POOL_HEADER_SIZE) };
    // SAFETY: as above, `needed - POOL_HEADER_SIZE` bytes from `data` are writable.
    unsafe { data.write_bytes(0, needed - POOL_HEADER_SIZE) };
    // SAFETY: the header was just written and lives as long as the region.
    unsafe { header.as_ref() }
        .magic
        .store(POOL_MAGIC, Ordering::Release);
    Ok(())
}

fn check_region(region: *mut u8, len: usize) -> Result<NonNull<PoolHeader>, PoolSetupError> {
    let Some(region) = NonNull::new(region) else {
        return Err(PoolSetupError::NullRegion);
    };
    if !(region.as_ptr() as usize).is_multiple_of(POOL_ALIGN) {
        return Err(PoolSetupError::Misaligned {
            address: region.as_ptr() as usize,
        });
    }
    if len < POOL_HEADER_SIZE {
        return Err(PoolSetupError::RegionTooSmall {
            needed: POOL_HEADER_SIZE,
            actual: len,
        });
    }
    Ok(region.cast())
}

fn check_geometry(buffer_size: u32, buffer_count: u32) -> Result<(), PoolSetupError> {
    if !buffer_size.is_power_of_two() || buffer_size < MIN_BUFFER_SIZE {
        return Err(PoolSetupError::BadBufferSize(buffer_size));
    }
    if buffer_count == 0 || u64::from(buffer_size) * u64::from(buffer_count) > MAX_POOL_DATA {
        return Err(PoolSetupError::BadBufferCount(buffer_count));
    }
    Ok(())
}

/// A validated span of one pool buffer, as named by a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Offset of the span from the start of the buffer area.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
    /// Index of the buffer the span lies in.
    pub buffer: u32,
}

/// Access to a pool's buffers through validated descriptors; what a consumer holds (the owner
/// holds one inside its [`PoolOwner`]).
///
/// Cloning a view is cheap; every clone validates on its own.
#[derive(Clone, Debug)]
pub struct PoolView {
    /// Start of the buffer area.
    data: NonNull<u8>,
    buffer_size: u32,
    buffer_shift: u32,
    buffer_count: u32,
    /// Keeps an [`crate::OwnedRegion`] alive (pools made by [`new_owned`]).
    #[cfg(any(test, feature = "std"))]
    _owner: Option<std::sync::Arc<crate::owned::OwnedRegion>>,
}

// SAFETY: the view only copies bytes through raw pointers into a region that the attach contract
// keeps valid wherever the view goes; it has no thread affinity.
unsafe impl Send for PoolView {}

impl PoolView {
    /// Attaches to a pool that [`init`] set up, validating the header (magic, version, buffer
    /// size and count, geometry) against `len` and the alignment of `region`.
    ///
    /// # Safety
    ///
    /// `region` must be valid for reads and writes of `len` bytes for as long as the view (and
    /// any clone of it, or [`PoolOwner`] made from it) lives, and must not be accessed other
    /// than through pool handles.
    pub unsafe fn attach(region: *mut u8, len: usize) -> Result<PoolView, PoolSetupError> {
        let base = check_region(region, len)?;
        // SAFETY: checked non-null and aligned, readable per the caller; atomics only.
        let header = unsafe { base.as_ref() };
        let magic = header.magic.load(Ordering::Acquire);
        if magic != POOL_MAGIC {
            return Err(PoolSetupError::BadMagic(magic));
        }
        let version = header.version.load(Ordering::Relaxed);
        if version != POOL_VERSION {
            return Err(PoolSetupError::BadVersion(version));
        }
        let buffer_size = header.buffer_size.load(Ordering::Relaxed);
        let buffer_count = header.buffer_count.load(Ordering::Relaxed);
        check_geometry(buffer_size, buffer_count)?;
        let data_offset = header.data_offset.load(Ordering::Relaxed);
        if data_offset as usize != POOL_HEADER_SIZE {
            return Err(PoolSetupError::BadGeometry {
                field: "data_offset",
                value: data_offset.into(),
            });
        }
        let needed = pool_region_size(buffer_size, buffer_count);
        let region_size = header.region_size.load(Ordering::Relaxed);
        if region_size != needed as u64 {
            return Err(PoolSetupError::BadGeometry {
                field: "region_size",
                value: region_size,
            });
        }
        if len < needed {
            return Err(PoolSetupError::RegionTooSmall {
                needed,
                actual: len,
            });
        }
        // SAFETY: `POOL_HEADER_SIZE < needed <= len`: the buffer area starts inside the region.
        let data = unsafe { base.cast::<u8>().add(POOL_HEADER_SIZE) };
        Ok(PoolView {
            data,
            buffer_size,
            buffer_shift: buffer_size.trailing_zeros(),
            buffer_count,
            #[cfg(any(test, feature = "std"))]
            _owner: None,
        })
    }

    /// Size of each buffer in bytes.
    #[inline]
    pub fn buffer_size(&self) -> u32 {
        self.buffer_size
    }

    /// Number of buffers.
    #[inline]
    pub fn buffer_count(&self) -> u32 {
        self.buffer_count
    }

    /// Validates a descriptor: its span must lie inside one buffer of the pool. Never panics and
    /// never overflows, whatever the descriptor holds.
    #[inline]
    pub fn check<B: BufferDesc>(&self, desc: &B) -> Result<Span, PoolError> {
        let (offset, len) = (desc.offset(), desc.len());
        let buffer = offset >> self.buffer_shift;
        let within = offset & (self.buffer_size - 1);
        // `within < buffer_size`, so the subtraction cannot underflow.
        if buffer >= self.buffer_count || len > self.buffer_size - within {
            return Err(PoolError::OutOfBounds { offset, len });
        }
        Ok(Span {
            offset,
            len,
            buffer,
        })
    }

    /// Pointer to byte `offset` of the buffer area.
    ///
    /// `offset` must be at most the size of the buffer area (callers pass validated spans).
    #[inline]
    fn pointer(&self, offset: u32) -> *mut u8 {
        debug_assert!(
            u64::from(offset) <= u64::from(self.buffer_size) * u64::from(self.buffer_count)
        );
        // `wrapping_add` keeps this safe; for validated offsets it stays inside the area.
        self.data.as_ptr().wrapping_add(offset as usize)
    }

    /// Copies bytes `at..at + out.len()` of the validated `span` into `out`.
    fn copy_out(&self, span: Span, at: u32, out: &mut [u8]) -> Result<(), PoolError> {
        if u64::from(at) + out.len() as u64 > u64::from(span.len) {
            return Err(PoolError::OutOfRange {
                at,
                count: out.len(),
                limit: span.len,
            });
        }
        let source = self.pointer(span.offset + at);
        // SAFETY: `span` lies inside the buffer area and `at + out.len() <= span.len`, so the
        // source range is inside the region the attach contract keeps valid; `out` is a
        // distinct local slice. Bytes have no invalid values, so a racing peer write can only
        // tear the copy.
        unsafe { core::ptr::copy_nonoverlapping(source, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies `data` into bytes `at..at + data.len()` of the validated `span`.
    fn copy_in(&self, span: Span, at: u32, data: &[u8]) -> Result<(), PoolError> {
        if u64::from(at) + data.len() as u64 > u64::from(span.len) {
            return Err(PoolError::OutOfRange {
                at,
                count: data.len(),
                limit: span.len,
            });
        }
        let destination = self.pointer(span.offset + at);
        // SAFETY: as in `copy_out`, with the roles swapped.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), destination, data.len()) };
        Ok(())
    }

    /// Validates `desc` and copies its whole span into the front of `out`; returns the length.
    pub fn read<B: BufferDesc>(&self, desc: &B, out: &mut [u8]) -> Result<usize, PoolError> {
        let span = self.check(desc)?;
        let Some(out) = out.get_mut(..span.len as usize) else {
            return Err(PoolError::DestinationTooSmall {
                needed: span.len,
                actual: out.len(),
            });
        };
        self.copy_out(span, 0, out)?;
        Ok(span.len as usize)
    }

    /// Validates `desc` and copies `out.len()` bytes of its span, starting `at` bytes in.
    pub fn read_at<B: BufferDesc>(
        &self,
        desc: &B,
        at: u32,
        out: &mut [u8],
    ) -> Result<(), PoolError> {
        let span = self.check(desc)?;
        self.copy_out(span, at, out)
    }

    /// Validates `desc` and copies `data` into its span, starting `at` bytes in (for protocols
    /// where the consumer fills buffers the owner lent it, such as receive buffers).
    pub fn write_at<B: BufferDesc>(&self, desc: &B, at: u32, data: &[u8]) -> Result<(), PoolError> {
        let span = self.check(desc)?;
        self.copy_in(span, at, data)
    }

    /// Validates `desc` and returns a pointer to the first byte of its span, for zero-copy
    /// users. The span is inside the region; dereferencing is up to the caller (see
    /// [`PoolView::span_bytes`] for when that is sound).
    pub fn span_ptr<B: BufferDesc>(&self, desc: &B) -> Result<NonNull<u8>, PoolError> {
        let span = self.check(desc)?;
        // SAFETY: the pointer is inside the buffer area, which is non-null.
        Ok(unsafe { NonNull::new_unchecked(self.pointer(span.offset)) })
    }

    /// Validates `desc` and borrows its span's bytes in place (zero-copy).
    ///
    /// # Safety
    ///
    /// No one may write the span while the slice lives: the caller holds the buffer under the
    /// pool protocol (it received the descriptor and has not returned it) **and** trusts the
    /// owner not to write a buffer it lent out. If the peer may be hostile, use
    /// [`PoolView::read`] instead.
    pub unsafe fn span_bytes<B: BufferDesc>(&self, desc: &B) -> Result<&[u8], PoolError> {
        let span = self.check(desc)?;
        let start = self.pointer(span.offset);
        // SAFETY: the span lies inside the region, valid for the view's lifetime (attach
        // contract); the caller guarantees no concurrent writes while the slice lives.
        Ok(unsafe { core::slice::from_raw_parts(start, span.len as usize) })
    }

    /// The descriptor to push on the return ring for the buffer `desc` names: the buffer's
    /// start offset, with length, flags and meta zero.
    pub fn return_desc<B: BufferDesc>(&self, desc: &B) -> Result<Desc, PoolError> {
        let span = self.check(desc)?;
        Ok(Desc::new(span.buffer << self.buffer_shift, 0))
    }
}

/// A buffer the [`PoolOwner`] holds: allocated and not yet submitted.
///
/// Not `Clone`: submitting or freeing it consumes it, so a buffer cannot be written after it was
/// handed to the consumer. A `Buffer` belongs to the owner that allocated it.
#[derive(Debug, PartialEq, Eq)]
pub struct Buffer {
    index: u32,
}

impl Buffer {
    /// Index of the buffer in its pool.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// The owner's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers handed out by [`PoolOwner::alloc`].
    pub allocated: u64,
    /// Buffers submitted.
    pub submitted: u64,
    /// Buffers that came back through [`PoolOwner::reclaim`].
    pub reclaimed: u64,
    /// Returns rejected (double returns, bogus offsets).
    pub bad_returns: u64,
}

/// The owner's side of a pool: allocates buffers, fills them, and recycles them when they come
/// back on the return ring.
///
/// The free set is two bitmaps (free, in flight) in `storage`, caller-provided memory of at
/// least [`owner_storage_words`] words: a `&mut [u64]`, a `[u64; N]` or, with `std`, a `Vec`.
/// Allocation takes the free buffer with the lowest index (a scan for the first non-zero word,
/// past the words of buffers in flight); returns are O(1). Lowest-first keeps the buffers in
/// use few, so a flow cycles through as many buffers as it has in flight and they stay in the
/// caches, where taking them round the whole pool (4 MiB by default) would find each one
/// evicted: in native mode UDP goodput rose by a tenth with it and RDMA WRITE's by a fifth.
#[derive(Debug)]
pub struct PoolOwner<S> {
    view: PoolView,
    storage: S,
    /// Words per bitmap.
    words: usize,
    free: u32,
    in_flight: u32,
    stats: PoolStats,
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> PoolOwner<S> {
    /// Takes ownership of the pool `view` points at, with every buffer free.
    pub fn new(view: PoolView, mut storage: S) -> Result<PoolOwner<S>, PoolSetupError> {
        let needed = owner_storage_words(view.buffer_count);
        let actual = storage.as_ref().len();
        if actual < needed {
            return Err(PoolSetupError::StorageTooSmall { needed, actual });
        }
        let words = needed / 2;
        let (free, in_flight) = storage.as_mut()[..needed].split_at_mut(words);
        let count = view.buffer_count as usize;
        for (i, word) in free.iter_mut().enumerate() {
            let in_word = (count - i * 64).min(64);
            *word = if in_word == 64 {
                u64::MAX
            } else {
                (1 << in_word) - 1
            };
        }
        in_flight.fill(0);
        Ok(PoolOwner {
            free: view.buffer_count,
            view,
            storage,
            words,
            in_flight: 0,
            stats: PoolStats::default(),
        })
    }

    /// The pool geometry and validated access to it.
    pub fn view(&self) -> &PoolView {
        &self.view
    }

    /// Buffers in the free set.
    pub fn free_count(&self) -> u32 {
        self.free
    }

    /// Buffers submitted and not yet returned.
    pub fn in_flight_count(&self) -> u32 {
        self.in_flight
    }

    /// The owner's counters.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Takes the free buffer with the lowest index, or `None` if all are in use.
    pub fn alloc(&mut self) -> Option<Buffer> {
        if self.free == 0 {
            return None;
        }
        let words = self.words;
        let free = &mut self.storage.as_mut()[..words];
        let (w, word) = free.iter_mut().enumerate().find(|(_, word)| **word != 0)?;
        let bit = word.trailing_zeros();
        *word &= *word - 1;
        self.free -= 1;
        self.stats.allocated += 1;
        Some(Buffer {
            index: (w * 64) as u32 + bit,
        })
    }

    /// Puts a buffer that was allocated and not submitted back in the free set.
    pub fn free(&mut self, buffer: Buffer) {
        let index = buffer.index as usize;
        if index < self.view.buffer_count as usize {
            let free = &mut self.storage.as_mut()[index / 64];
            if *free & (1 << (index % 64)) == 0 {
                *free |= 1 << (index % 64);
                self.free += 1;
            }
        }
    }

    /// Offset of `buffer` from the start of the buffer area.
    pub fn offset_of(&self, buffer: &Buffer) -> Result<u32, PoolError> {
        if buffer.index >= self.view.buffer_count {
            return Err(PoolError::ForeignBuffer(buffer.index));
        }
        Ok(buffer.index << self.view.buffer_shift)
    }

    fn buffer_span(&self, buffer: &Buffer) -> Result<Span, PoolError> {
        let offset = self.offset_of(buffer)?;
        Ok(Span {
            offset,
            len: self.view.buffer_size,
            buffer: buffer.index,
        })
    }

    /// Copies `data` into `buffer`, starting `at` bytes in.
    pub fn write(&mut self, buffer: &Buffer, at: u32, data: &[u8]) -> Result<(), PoolError> {
        let span = self.buffer_span(buffer)?;
        self.view.copy_in(span, at, data)
    }

    /// Copies `out.len()` bytes of `buffer`, starting `at` bytes in, into `out`.
    pub fn read(&self, buffer: &Buffer, at: u32, out: &mut [u8]) -> Result<(), PoolError> {
        let span = self.buffer_span(buffer)?;
        self.view.copy_out(span, at, out)
    }

    /// Borrows `buffer`'s bytes in place for filling (zero-copy).
    ///
    /// # Safety
    ///
    /// No one else may access the buffer while the slice lives. The owner holds it, so a
    /// well-behaved peer does not; the caller must trust the peer not to touch buffers it does
    /// not hold. If the peer may be hostile, use [`PoolOwner::write`].
    pub unsafe fn buffer_mut(&mut self, buffer: &Buffer) -> Result<&mut [u8], PoolError> {
        let span = self.buffer_span(buffer)?;
        let start = self.view.pointer(span.offset);
        // SAFETY: the buffer lies inside the region, valid while the view lives; `&mut self`
        // keeps the owner from handing out another slice, and the caller guarantees the peer
        // does not access it.
        Ok(unsafe { core::slice::from_raw_parts_mut(start, span.len as usize) })
    }

    /// Marks `buffer` in flight and returns the descriptor for bytes `start..start + len` of it,
    /// to push on the data ring. If the range does not fit in the buffer, the buffer goes back
    /// to the free set and the error is returned.
    ///
    /// If the push fails, take the buffer back with [`PoolOwner::reclaim`]`(desc.offset)` (for
    /// `start == 0`) or keep the descriptor and push it later.
    pub fn submit(&mut self, buffer: Buffer, start: u32, len: u32) -> Result<Desc, PoolError> {
        let offset = self.offset_of(&buffer)?;
        if u64::from(start) + u64::from(len) > u64::from(self.view.buffer_size) {
            let limit = self.view.buffer_size;
            self.free(buffer);
            return Err(PoolError::OutOfRange {
                at: start,
                count: len as usize,
                limit,
            });
        }
        let index = buffer.index as usize;
        let words = self.words;
        self.storage.as_mut()[words + index / 64] |= 1 << (index % 64);
        self.in_flight += 1;
        self.stats.submitted += 1;
        Ok(Desc::new(offset + start, len))
    }

    /// Takes back the in-flight buffer that starts at `offset` (from a return descriptor).
    ///
    /// Rejects, without changing any state, an offset that is not a buffer start, lies outside
    /// the pool, or names a buffer that is not in flight (a double return).
    pub fn reclaim(&mut self, offset: u32) -> Result<(), PoolError> {
        let result = self.reclaim_inner(offset);
        if result.is_err() {
            self.stats.bad_returns += 1;
        }
        result
    }

    fn reclaim_inner(&mut self, offset: u32) -> Result<(), PoolError> {
        if offset & (self.view.buffer_size - 1) != 0 {
            return Err(PoolError::NotBufferStart(offset));
        }
        let index = (offset >> self.view.buffer_shift) as usize;
        if index >= self.view.buffer_count as usize {
            return Err(PoolError::OutsidePool(offset));
        }
        let words = self.words;
        let storage = self.storage.as_mut();
        let bit = 1u64 << (index % 64);
        let in_flight = &mut storage[words + index / 64];
        if *in_flight & bit == 0 {
            return Err(PoolError::NotInFlight(offset));
        }
        *in_flight &= !bit;
        storage[index / 64] |= bit;
        self.in_flight -= 1;
        self.free += 1;
        self.stats.reclaimed += 1;
        Ok(())
    }

    /// Drains up to `max` return descriptors from `ring` and reclaims their buffers; returns how
    /// many were reclaimed.
    ///
    /// Stops at the first rejected descriptor: it and those before it are released from the
    /// ring, the error is returned, and the next call goes on after it. A ring protocol error is
    /// returned as [`ReclaimError::Peer`].
    pub fn reclaim_from<D: Descriptor + BufferDesc>(
        &mut self,
        ring: &mut Consumer<D>,
        max: u32,
    ) -> Result<u32, ReclaimError> {
        let batch = ring.peek(max).map_err(ReclaimError::Peer)?;
        let mut done = 0;
        while let Some(desc) = batch.get(done) {
            done += 1;
            if let Err(error) = self.reclaim(desc.offset()) {
                batch.release_first(done);
                return Err(ReclaimError::Pool(error));
            }
        }
        batch.release();
        Ok(done)
    }
}

/// Creates a pool in a fresh heap region and returns its owner and a consumer view (`std`
/// feature: for tests, host tools and benchmarks). The region is freed when both are dropped.
#[cfg(any(test, feature = "std"))]
pub fn new_owned(
    buffer_size: u32,
    buffer_count: u32,
) -> Result<(PoolOwner<std::vec::Vec<u64>>, PoolView), PoolSetupError> {
    use std::sync::Arc;

    check_geometry(buffer_size, buffer_count)?;
    let size = pool_region_size(buffer_size, buffer_count);
    let region = Arc::new(crate::owned::OwnedRegion::new(size));
    // SAFETY: the region is valid for `size` bytes and nothing else uses it yet.
    unsafe { init(region.as_ptr(), size, buffer_size, buffer_count) }?;
    // SAFETY: the region is valid for `size` bytes; the view keeps it alive through its `Arc`.
    let mut view = unsafe { PoolView::attach(region.as_ptr(), size) }?;
    view._owner = Some(region);
    let owner = PoolOwner::new(
        view.clone(),
        std::vec![0; owner_storage_words(buffer_count)],
    )?;
    Ok((owner, view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desc::Desc32;
    use crate::owned::OwnedRegion;
    use crate::ring::channel;

    fn pool(buffer_size: u32, count: u32) -> (PoolOwner<Vec<u64>>, PoolView) {
        new_owned(buffer_size, count).unwrap()
    }

    #[test]
    fn sizes() {
        assert_eq!(pool_region_size(2048, 4), 4096 + 8192);
        assert_eq!(owner_storage_words(1), 2);
        assert_eq!(owner_storage_words(64), 2);
        assert_eq!(owner_storage_words(65), 4);
    }

    #[test]
    fn alloc_until_empty_then_free() {
        let (mut owner, view) = pool(64, 70);
        assert_eq!(view.buffer_count(), 70);
        let buffers: Vec<Buffer> = (0..70).map(|_| owner.alloc().unwrap()).collect();
        let mut indices: Vec<u32> = buffers.iter().map(Buffer::index).collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..70).collect::<Vec<_>>());
        assert!(owner.alloc().is_none());
        assert_eq!(owner.free_count(), 0);
        for buffer in buffers {
            owner.free(buffer);
        }
        assert_eq!(owner.free_count(), 70);
        assert_eq!(owner.stats().allocated, 70);
    }

    #[test]
    fn the_lowest_free_buffer_is_taken_first() {
        let (mut owner, _view) = pool(64, 200);
        let mut buffers: Vec<Option<Buffer>> = (0..150).map(|_| owner.alloc()).collect();
        let indices: Vec<u32> = buffers.iter().flatten().map(Buffer::index).collect();
        assert_eq!(indices, (0..150).collect::<Vec<_>>(), "in index order");
        // Returned through the ring, a buffer of the second word comes back before any
        // buffer that was never used, and one of the first word before it.
        for index in [70, 3] {
            let buffer = buffers[index].take().unwrap();
            let desc = owner.submit(buffer, 0, 1).unwrap();
            owner.reclaim(desc.offset).unwrap();
        }
        assert_eq!(owner.alloc().map(|buffer| buffer.index()), Some(3));
        assert_eq!(owner.alloc().map(|buffer| buffer.index()), Some(70));
        assert_eq!(owner.alloc().map(|buffer| buffer.index()), Some(150));
    }

    #[test]
    fn round_trip_through_rings() {
        let (mut owner, view) = pool(128, 4);
        let (mut tx, mut rx) = channel::<Desc>(4).unwrap();
        let (mut ret_tx, mut ret_rx) = channel::<Desc>(4).unwrap();
        for round in 0..5u8 {
            for i in 0..4u8 {
                let buffer = owner.alloc().unwrap();
                let payload = [round, i, 0xaa, 0x55];
                owner.write(&buffer, 10, &payload).unwrap();
                let mut check = [0; 4];
                owner.read(&buffer, 10, &mut check).unwrap();
                assert_eq!(check, payload);
                tx.push(owner.submit(buffer, 10, 4).unwrap()).unwrap();
            }
            assert!(owner.alloc().is_none());
            assert_eq!(owner.in_flight_count(), 4);
            for i in 0..4u8 {
                let desc = rx.pop().unwrap().unwrap();
                let mut bytes = [0u8; 128];
                assert_eq!(view.read(&desc, &mut bytes), Ok(4));
                assert_eq!(&bytes[..4], &[round, i, 0xaa, 0x55]);
                let mut tail = [0u8; 2];
                view.read_at(&desc, 2, &mut tail).unwrap();
                assert_eq!(tail, [0xaa, 0x55]);
                view.write_at(&desc, 0, &[7]).unwrap();
                // SAFETY: this test is the only party touching the pool.
                let bytes = unsafe { view.span_bytes(&desc) }.unwrap();
                assert_eq!(bytes, &[7, i, 0xaa, 0x55]);
                ret_tx.push(view.return_desc(&desc).unwrap()).unwrap();
            }
            assert_eq!(owner.reclaim_from(&mut ret_rx, 3), Ok(3));
            assert_eq!(owner.reclaim_from(&mut ret_rx, 3), Ok(1));
            assert_eq!(owner.free_count(), 4);
        }
        assert_eq!(owner.stats().reclaimed, 20);
        assert_eq!(owner.stats().bad_returns, 0);
    }

    #[test]
    fn check_validates_spans() {
        let (_, view) = pool(256, 4);
        let ok = [
            (0, 0),
            (0, 256),
            (255, 1),
            (768, 256),
            (1000, 24),
            (1023, 1),
            (1024 - 256, 0),
        ];
        for (offset, len) in ok {
            assert!(
                view.check(&Desc::new(offset, len)).is_ok(),
                "{offset}+{len}"
            );
        }
        let bad = [
            (0, 257),
            (255, 2),
            (1023, 2),
            (1024, 0),
            (1024, 1),
            (u32::MAX, 1),
            (u32::MAX, u32::MAX),
            (100, u32::MAX),
            (0, u32::MAX),
            (200, 100),
        ];
        for (offset, len) in bad {
            let desc = Desc::new(offset, len);
            assert_eq!(
                view.check(&desc),
                Err(PoolError::OutOfBounds { offset, len })
            );
            let mut out = [0; 512];
            assert!(view.read(&desc, &mut out).is_err());
            assert!(view.read_at(&desc, 0, &mut out[..0]).is_err());
            assert!(view.write_at(&desc, 0, &[]).is_err());
            assert!(view.span_ptr(&desc).is_err());
            assert!(view.return_desc(&desc).is_err());
        }
        let span = view
            .check(&Desc32 {
                offset: 600,
                len: 10,
                ..Desc32::default()
            })
            .unwrap();
        assert_eq!(
            span,
            Span {
                offset: 600,
                len: 10,
                buffer: 2
            }
        );
        assert_eq!(view.return_desc(&Desc::new(600, 10)), Ok(Desc::new(512, 0)));
    }

    #[test]
    fn copies_are_range_checked() {
        let (_, view) = pool(64, 2);
        let desc = Desc::new(8, 16);
        let mut small = [0; 15];
        assert_eq!(
            view.read(&desc, &mut small),
            Err(PoolError::DestinationTooSmall {
                needed: 16,
                actual: 15
            })
        );
        let mut out = [0; 8];
        assert!(view.read_at(&desc, 8, &mut out).is_ok());
        assert_eq!(
            view.read_at(&desc, 9, &mut out),
            Err(PoolError::OutOfRange {
                at: 9,
                count: 8,
                limit: 16
            })
        );
        assert!(view.read_at(&desc, u32::MAX, &mut out).is_err());
        assert!(view.write_at(&desc, 16, &[1]).is_err());
        assert!(view.write_at(&desc, 15, &[1]).is_ok());
    }

    #[test]
    fn owner_rejects_bad_returns() {
        let (mut owner, _view) = pool(2048, 8);
        let buffer = owner.alloc().unwrap();
        let offset = owner.offset_of(&buffer).unwrap();
        let desc = owner.submit(buffer, 0, 100).unwrap();
        assert_eq!(desc, Desc::new(offset, 100));
        let held = owner.alloc().unwrap();
        let held_offset = owner.offset_of(&held).unwrap();

        assert_eq!(
            owner.reclaim(offset + 1),
            Err(PoolError::NotBufferStart(offset + 1))
        );
        assert_eq!(
            owner.reclaim(8 * 2048),
            Err(PoolError::OutsidePool(8 * 2048))
        );
        assert_eq!(owner.reclaim(!2047), Err(PoolError::OutsidePool(!2047)));
        // Allocated but never submitted: not the consumer's to return.
        assert_eq!(
            owner.reclaim(held_offset),
            Err(PoolError::NotInFlight(held_offset))
        );
        assert_eq!(owner.reclaim(offset), Ok(()));
        assert_eq!(owner.reclaim(offset), Err(PoolError::NotInFlight(offset)));
        assert_eq!(owner.stats().bad_returns, 5);
        assert_eq!(owner.free_count(), 7);
        assert_eq!(owner.in_flight_count(), 0);

        // A range that does not fit frees the buffer.
        assert_eq!(
            owner.submit(held, 2000, 100),
            Err(PoolError::OutOfRange {
                at: 2000,
                count: 100,
                limit: 2048
            })
        );
        assert_eq!(owner.free_count(), 8);
        assert_eq!(
            owner.submit(Buffer { index: 8 }, 0, 0),
            Err(PoolError::ForeignBuffer(8))
        );
        owner.free(Buffer { index: 100 });
        assert_eq!(owner.free_count(), 8);
    }

    #[test]
    fn reclaim_from_stops_at_a_bad_return_and_goes_on_after_it() {
        let (mut owner, view) = pool(64, 4);
        let (mut ret_tx, mut ret_rx) = channel::<Desc>(8).unwrap();
        let a = owner.alloc().unwrap();
        let b = owner.alloc().unwrap();
        let a = owner.submit(a, 0, 1).unwrap();
        let b = owner.submit(b, 0, 1).unwrap();
        let returns = [
            view.return_desc(&a).unwrap(),
            view.return_desc(&a).unwrap(),
            Desc::new(3, 0),
            view.return_desc(&b).unwrap(),
        ];
        ret_tx.push_slice(&returns).unwrap();
        assert_eq!(
            owner.reclaim_from(&mut ret_rx, 8),
            Err(ReclaimError::Pool(PoolError::NotInFlight(a.offset)))
        );
        assert_eq!(
            owner.reclaim_from(&mut ret_rx, 8),
            Err(ReclaimError::Pool(PoolError::NotBufferStart(3)))
        );
        assert_eq!(owner.reclaim_from(&mut ret_rx, 8), Ok(1));
        assert_eq!(owner.reclaim_from(&mut ret_rx, 8), Ok(0));
        assert_eq!(owner.free_count(), 4);
        assert!(
            ReclaimError::Pool(PoolError::NotBufferStart(3))
                .to_string()
                .contains("bad")
        );
    }

    #[test]
    fn owner_storage_can_be_a_borrowed_slice() {
        let (_, view) = pool(64, 130);
        let mut words = [0u64; 5];
        assert_eq!(
            PoolOwner::new(view.clone(), &mut words[..5]).unwrap_err(),
            PoolSetupError::StorageTooSmall {
                needed: 6,
                actual: 5
            }
        );
        let mut words = [0u64; 6];
        let mut owner = PoolOwner::new(view, &mut words[..]).unwrap();
        let mut count = 0;
        while owner.alloc().is_some() {
            count += 1;
        }
        assert_eq!(count, 130);
    }

    #[test]
    fn init_and_attach_reject_bad_geometry() {
        let region = OwnedRegion::new(pool_region_size(128, 8));
        let (base, len) = (region.as_ptr(), region.len());
        let init_with = |size: u32, count: u32| {
            // SAFETY: `base` is valid for `len` bytes and only used by this test.
            unsafe { init(base, len, size, count) }
        };
        assert_eq!(init_with(100, 8), Err(PoolSetupError::BadBufferSize(100)));
        assert_eq!(init_with(32, 8), Err(PoolSetupError::BadBufferSize(32)));
        assert_eq!(init_with(128, 0), Err(PoolSetupError::BadBufferCount(0)));
        assert_eq!(
            init_with(1 << 20, 1 << 13),
            Err(PoolSetupError::BadBufferCount(1 << 13))
        );
        assert_eq!(
            init_with(128, 9),
            Err(PoolSetupError::RegionTooSmall {
                needed: 4096 + 9 * 128,
                actual: len
            })
        );
        // SAFETY: as above.
        let attach = || unsafe { PoolView::attach(base, len) };
        assert_eq!(attach().unwrap_err(), PoolSetupError::BadMagic(0));
        assert_eq!(init_with(128, 8), Ok(()));
        assert!(attach().is_ok());
        // SAFETY: as above.
        assert!(unsafe { PoolView::attach(base.wrapping_add(8), len - 8) }.is_err());
        // SAFETY: as above.
        assert!(unsafe { PoolView::attach(core::ptr::null_mut(), len) }.is_err());

        let word = |offset: usize| {
            // SAFETY: inside the header, aligned; header words are atomics.
            unsafe { &*base.wrapping_add(offset).cast::<AtomicU32>() }
        };
        let cases = [
            (4, 9, PoolSetupError::BadVersion(9)),
            (8, 96, PoolSetupError::BadBufferSize(96)),
            (
                8,
                256,
                PoolSetupError::BadGeometry {
                    field: "region_size",
                    value: 5120,
                },
            ),
            (12, 0, PoolSetupError::BadBufferCount(0)),
            (
                16,
                128,
                PoolSetupError::BadGeometry {
                    field: "data_offset",
                    value: 128,
                },
            ),
            (
                24,
                1 << 20,
                PoolSetupError::BadGeometry {
                    field: "region_size",
                    value: 1 << 20,
                },
            ),
        ];
        for (offset, value, expected) in cases {
            let saved = word(offset).load(Ordering::Relaxed);
            word(offset).store(value, Ordering::Relaxed);
            assert_eq!(attach().unwrap_err(), expected, "offset {offset}");
            word(offset).store(saved, Ordering::Relaxed);
        }
        // SAFETY: as above, with a length shorter than the header says.
        let short = unsafe { PoolView::attach(base, len - 1) };
        assert_eq!(
            short.unwrap_err(),
            PoolSetupError::RegionTooSmall {
                needed: len,
                actual: len - 1
            }
        );
        assert!(!PoolSetupError::BadMagic(0).to_string().is_empty());
    }
}
