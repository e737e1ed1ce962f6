//! Lock-free single-producer/single-consumer descriptor rings in shared memory.
//!
//! A ring lives in a caller-provided region of memory (a raw pointer and a length, typically part
//! of the shared segment) that two parties map: the host lays it out and calls [`init`]; one side
//! attaches a [`Producer`], the other a [`Consumer`]. The ring carries fixed-size descriptors
//! ([`crate::desc::Desc`] or any [`Descriptor`] type) by value; the bytes they point at live in a
//! [buffer pool](crate::pool).
//!
//! # Example
//!
//! ```
//! use shm_ring::desc::Desc;
//! use shm_ring::ring::{self, Consumer, Producer, RING_ALIGN};
//!
//! // Stand-in for shared memory: a 128-byte aligned region of the size the ring needs.
//! const SIZE: usize = ring::region_size::<Desc>(8);
//! #[repr(C, align(128))]
//! struct Region([u8; SIZE]);
//! let mut memory = Region([0; SIZE]);
//! let region = memory.0.as_mut_ptr();
//! assert_eq!(region as usize % RING_ALIGN, 0);
//!
//! // SAFETY: `region` is valid for `SIZE` bytes for as long as the handles live, only ring code
//! // touches it, and there is one producer and one consumer.
//! let (mut producer, mut consumer) = unsafe {
//!     ring::init::<Desc>(region, SIZE, 8)?;
//!     (Producer::<Desc>::attach(region, SIZE)?, Consumer::<Desc>::attach(region, SIZE)?)
//! };
//!
//! producer.push(Desc::new(4096, 60)).expect("ring has room");
//! if producer.needs_wakeup() {
//!     // Send the consumer its "ring has work" interrupt.
//! }
//! assert_eq!(consumer.pop()?, Some(Desc::new(4096, 60)));
//! assert_eq!(consumer.pop()?, None);
//!
//! // Batches: one index store publishes (or releases) many descriptors.
//! let mut batch = producer.reserve(32)?;
//! assert_eq!(batch.len(), 8);
//! for i in 0..8 {
//!     batch.push(Desc::new(i * 2048, 64)).expect("reserved");
//! }
//! batch.commit();
//! let batch = consumer.peek(32)?;
//! let total: u32 = batch.iter().map(|desc| desc.len).sum();
//! assert_eq!(total, 8 * 64);
//! batch.release();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! The region must be aligned to [`RING_ALIGN`] (128 bytes, two cache lines, so that the
//! adjacent-line prefetcher does not pair the two indices) and at least [`region_size`] bytes
//! long. All fields are little-endian `u32`/`u64`:
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | magic [`RING_MAGIC`] | host, at [`init`] |
//! | 4 | layout version [`RING_VERSION`] | host, at [`init`] |
//! | 8 | capacity (a power of two) | host, at [`init`] |
//! | 12 | descriptor size in bytes | host, at [`init`] |
//! | 16 | descriptor alignment in bytes | host, at [`init`] |
//! | 20 | offset of the slots ([`RING_HEADER_SIZE`]) | host, at [`init`] |
//! | 24 | region size (`u64`, [`region_size`]) | host, at [`init`] |
//! | 128 | producer index | producer only |
//! | 256 | consumer index | consumer only |
//! | 384 | consumer needs wake-up flag | consumer only |
//! | 388 | producer needs wake-up flag | producer only |
//! | 512 | `capacity` descriptor slots | producer; read by the consumer |
//!
//! # Invariants
//!
//! - The indices are free-running `u32` counters compared with wrapping arithmetic; slot `i` is
//!   `i & (capacity - 1)`. The capacity is a power of two no larger than [`MAX_CAPACITY`], so
//!   `producer - consumer` (wrapping) is always the number of descriptors in flight, between 0
//!   and `capacity`.
//! - Each side keeps its own index in its handle and only ever stores it; it never reads it back
//!   from shared memory after [`Producer::attach`] / [`Consumer::attach`]. Each side keeps a
//!   cached copy of the peer's index and re-reads the shared one only when the ring looks full
//!   (producer) or empty (consumer) for the operation at hand.
//! - The geometry (capacity, mask, slot address) is validated once at attach and copied into the
//!   handle; it is never re-read from shared memory, so a peer that rewrites the header later
//!   changes nothing.
//! - The peer is untrusted. A peer index is accepted only if it moved forwards, and no further
//!   than the protocol allows: the consumer index must stay within `[last seen, producer index]`
//!   and the producer index within `[last seen, consumer index + capacity]`. Anything else is a
//!   [`PeerError`]; the handle then stays failed (every later operation that would look at the
//!   peer's index reports the same error, and none touches a slot), and the only way back is a
//!   fresh attach after the peer was reset. A torn or scribbled descriptor is still a valid value
//!   of the descriptor type (`zerocopy::FromBytes`); it is the pool's job to validate what it
//!   points at (see [`crate::pool::PoolView::check`]).
//!
//! # Memory ordering
//!
//! Only Acquire and Release are used on the indices:
//!
//! - The producer writes slots, then stores its index with Release. The consumer loads the
//!   producer index with Acquire before reading the slots below it, so it sees the descriptors
//!   completely written.
//! - The consumer copies descriptors out of their slots, then stores its index with Release. The
//!   producer loads the consumer index with Acquire before overwriting the slots below it, so the
//!   consumer's reads happen before the producer's next writes to those slots.
//!
//! Wake-up suppression is the store-buffering pattern, which Acquire/Release cannot order: the
//! sleeper stores its "needs wake-up" flag and then loads the peer's index, the waker stores its
//! index and then loads the flag. Both sides put a `fence(SeqCst)` between the store and the load
//! (as Linux does with `smp_mb()` for io_uring's `IORING_SQ_NEED_WAKEUP` and AF_XDP's
//! `XDP_RING_NEED_WAKEUP`). The two fences are ordered one way or the other in the single total
//! order of SeqCst operations, so at least one side sees the other's store: either the sleeper
//! sees the new descriptor and does not sleep, or the waker sees the flag and signals. No
//! wake-up is lost. The loom model in `tests/loom.rs` checks exactly this (loom 0.7 models
//! `fence(SeqCst)` faithfully; it would not model SeqCst loads and stores, which it treats as
//! AcqRel, so the protocol deliberately uses fences, not SeqCst accesses).
//!
//! The protocol for a consumer that wants to sleep:
//!
//! 1. [`Consumer::prepare_to_sleep`]: sets the flag, fences, re-reads the producer index. If the
//!    ring is no longer empty it clears the flag and returns `false`: go on consuming.
//! 2. Otherwise sleep (for duovm: `sti; hlt` until [`crate::layout::RING_VECTOR`]) and call
//!    [`Consumer::woke_up`] when woken.
//!
//! The producer calls [`Producer::needs_wakeup`] after publishing a burst (one fence per burst,
//! not per descriptor) and signals the consumer if it returns `true`. The same handshake runs the
//! other way for a producer waiting for room ([`Producer::prepare_to_sleep`],
//! [`Consumer::needs_wakeup`]).

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::sync::{AtomicU32, AtomicU64, Ordering, Slot, fence};

/// `magic` of a ring header: "dvRG" as little-endian bytes.
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"dvRG");
/// Version of the ring layout; bumped on any incompatible change.
pub const RING_VERSION: u32 = 1;
/// Required alignment of a ring region, in bytes.
pub const RING_ALIGN: usize = 128;
/// Size of the ring header; the descriptor slots start at this offset.
pub const RING_HEADER_SIZE: usize = size_of::<Header>();
/// Largest ring capacity, in descriptors.
pub const MAX_CAPACITY: u32 = 1 << 24;
/// Largest descriptor size, in bytes.
pub const MAX_DESCRIPTOR_SIZE: usize = 4096;

/// A type that can travel on a ring: plain old data that any bit pattern makes valid.
///
/// Implemented for every `Copy` type that is `zerocopy::{FromBytes, IntoBytes, Immutable}`;
/// derive those (with `#[repr(C)]`) for your own descriptor types.
pub trait Descriptor: FromBytes + IntoBytes + Immutable + Copy {}

impl<T: FromBytes + IntoBytes + Immutable + Copy> Descriptor for T {}

/// Size in bytes of a ring region for `capacity` descriptors of type `D`, rounded up to
/// [`RING_ALIGN`] so that regions can be laid out back to back.
///
/// `capacity` should be a power of two no larger than [`MAX_CAPACITY`]; [`init`] rejects
/// anything else.
pub const fn region_size<D: Descriptor>(capacity: u32) -> usize {
    let slots = (capacity as usize).saturating_mul(size_of::<Slot<D>>());
    let size = RING_HEADER_SIZE.saturating_add(slots);
    size.div_ceil(RING_ALIGN).saturating_mul(RING_ALIGN)
}

/// A cache-line pair: keeps the fields of different writers apart.
#[repr(C, align(128))]
struct CacheLine<T>(T);

/// Geometry of the ring. Written by the host at [`init`] and never changed afterwards; each side
/// reads it once, at attach.
#[repr(C)]
struct Geometry {
    /// [`RING_MAGIC`], stored last (Release) by [`init`]. Written by the host only.
    magic: AtomicU32,
    /// [`RING_VERSION`]. Written by the host only.
    version: AtomicU32,
    /// Capacity in descriptors, a power of two. Written by the host only.
    capacity: AtomicU32,
    /// `size_of::<D>()`. Written by the host only.
    descriptor_size: AtomicU32,
    /// `align_of::<D>()`. Written by the host only.
    descriptor_align: AtomicU32,
    /// Offset of the slots, [`RING_HEADER_SIZE`]. Written by the host only.
    slots_offset: AtomicU32,
    /// [`region_size`] for the capacity and descriptor type. Written by the host only.
    region_size: AtomicU64,
}

/// The wake-up flags, on a line of their own: written rarely, read once per burst.
#[repr(C)]
struct WakeupFlags {
    /// Non-zero while the consumer sleeps or is about to. Written by the consumer only.
    consumer_needs_wakeup: AtomicU32,
    /// Non-zero while the producer waits for room or is about to. Written by the producer only.
    producer_needs_wakeup: AtomicU32,
}

/// The ring header at the start of the region.
#[repr(C)]
struct Header {
    /// Written by the host only.
    geometry: CacheLine<Geometry>,
    /// Next index the producer will fill. Written by the producer only.
    producer_index: CacheLine<AtomicU32>,
    /// Next index the consumer will read. Written by the consumer only.
    consumer_index: CacheLine<AtomicU32>,
    /// Written by one side each, see [`WakeupFlags`].
    wakeup: CacheLine<WakeupFlags>,
}

#[cfg(not(loom))]
const _: () = assert!(RING_HEADER_SIZE == 512 && align_of::<Header>() == RING_ALIGN);

/// Compile-time checks on a descriptor type.
const fn check_descriptor<D: Descriptor>() {
    assert!(size_of::<D>() > 0, "descriptors must not be zero-sized");
    assert!(
        size_of::<D>() <= MAX_DESCRIPTOR_SIZE,
        "descriptor too large"
    );
    assert!(
        align_of::<D>() <= RING_ALIGN,
        "descriptor alignment above RING_ALIGN"
    );
}

/// Why a ring region could not be initialised or attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttachError {
    /// The region pointer is null.
    NullRegion,
    /// The region is not aligned to [`RING_ALIGN`].
    Misaligned {
        /// Address of the region.
        address: usize,
    },
    /// The region is shorter than the ring needs.
    RegionTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes provided.
        actual: usize,
    },
    /// The magic number is wrong: not a ring, or not initialised.
    BadMagic(u32),
    /// The layout version is one this build does not speak.
    BadVersion(u32),
    /// The capacity is zero, not a power of two, or above [`MAX_CAPACITY`].
    BadCapacity(u32),
    /// The ring was initialised for descriptors of another size or alignment.
    DescriptorMismatch {
        /// Size and alignment this side expects.
        expected: (u32, u32),
        /// Size and alignment in the header.
        found: (u32, u32),
    },
    /// A geometry field disagrees with the capacity and descriptor size.
    BadGeometry {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The indices are further apart than the capacity.
    BadIndices {
        /// The producer index.
        producer: u32,
        /// The consumer index.
        consumer: u32,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::NullRegion => write!(f, "ring region is null"),
            AttachError::Misaligned { address } => {
                write!(
                    f,
                    "ring region {address:#x} is not aligned to {RING_ALIGN} bytes"
                )
            }
            AttachError::RegionTooSmall { needed, actual } => {
                write!(
                    f,
                    "ring region of {actual} bytes is too small: {needed} needed"
                )
            }
            AttachError::BadMagic(magic) => write!(f, "ring magic {magic:#010x} is wrong"),
            AttachError::BadVersion(version) => {
                write!(f, "ring layout version {version} is not {RING_VERSION}")
            }
            AttachError::BadCapacity(capacity) => write!(
                f,
                "ring capacity {capacity} is not a power of two between 1 and {MAX_CAPACITY}"
            ),
            AttachError::DescriptorMismatch { expected, found } => write!(
                f,
                "ring holds descriptors of {} bytes (align {}), expected {} (align {})",
                found.0, found.1, expected.0, expected.1
            ),
            AttachError::BadGeometry { field, value } => {
                write!(
                    f,
                    "ring header field {field} has inconsistent value {value}"
                )
            }
            AttachError::BadIndices { producer, consumer } => write!(
                f,
                "ring indices are inconsistent: producer {producer}, consumer {consumer}"
            ),
        }
    }
}

impl core::error::Error for AttachError {}

/// Which index a [`PeerError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// The producer index (seen by a consumer).
    Producer,
    /// The consumer index (seen by a producer).
    Consumer,
}

/// The peer broke the ring protocol: its index moved backwards or past where it may be.
///
/// The handle that saw it stays failed: see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerError {
    /// Which index.
    pub index: IndexKind,
    /// The value read from shared memory.
    pub found: u32,
    /// The lowest acceptable value (the one seen last).
    pub low: u32,
    /// The highest acceptable value (wrapping; `low..=high` is the window).
    pub high: u32,
}

impl PeerError {
    /// Whether the index moved backwards (rather than too far forwards).
    pub fn moved_backwards(&self) -> bool {
        // Closer behind `low` than ahead of `high`.
        self.low.wrapping_sub(self.found) <= self.found.wrapping_sub(self.high)
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let which = match self.index {
            IndexKind::Producer => "producer",
            IndexKind::Consumer => "consumer",
        };
        let how = if self.moved_backwards() {
            "moved backwards"
        } else {
            "ran ahead"
        };
        write!(
            f,
            "peer's {which} index {how}: {} is outside {}..={}",
            self.found, self.low, self.high
        )
    }
}

impl core::error::Error for PeerError {}

/// Why [`Producer::push`] did not push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The ring is full; try again after the consumer made room.
    Full,
    /// The peer broke the protocol.
    Peer(PeerError),
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full => write!(f, "ring is full"),
            PushError::Peer(error) => error.fmt(f),
        }
    }
}

impl core::error::Error for PushError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            PushError::Full => None,
            PushError::Peer(error) => Some(error),
        }
    }
}

impl From<PeerError> for PushError {
    fn from(error: PeerError) -> PushError {
        PushError::Peer(error)
    }
}

/// Counters one side keeps about its own work (local to the handle, not in shared memory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Times the peer's index was re-read from shared memory (the ring looked full or empty).
    pub peer_index_reads: u64,
    /// Times [`Producer::needs_wakeup`] or [`Consumer::needs_wakeup`] returned `true`: signals
    /// this side should have sent.
    pub wakeups_requested: u64,
    /// Times `prepare_to_sleep` allowed this side to sleep.
    pub sleeps: u64,
}

/// What the header of a ring says, for inspection by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingState {
    /// Capacity in descriptors.
    pub capacity: u32,
    /// Descriptor size in bytes.
    pub descriptor_size: u32,
    /// The producer index.
    pub producer_index: u32,
    /// The consumer index.
    pub consumer_index: u32,
    /// Whether the consumer asked to be woken.
    pub consumer_needs_wakeup: bool,
    /// Whether the producer asked to be woken.
    pub producer_needs_wakeup: bool,
}

impl RingState {
    /// Descriptors published and not yet consumed, if the indices are consistent.
    pub fn len(&self) -> Option<u32> {
        let len = self.producer_index.wrapping_sub(self.consumer_index);
        (len <= self.capacity).then_some(len)
    }

    /// Whether the ring holds no descriptors.
    pub fn is_empty(&self) -> bool {
        self.producer_index == self.consumer_index
    }
}

/// Checks the pointer, alignment and that the header fits.
fn check_region(region: *mut u8, len: usize) -> Result<NonNull<Header>, AttachError> {
    let Some(region) = NonNull::new(region) else {
        return Err(AttachError::NullRegion);
    };
    if !(region.as_ptr() as usize).is_multiple_of(RING_ALIGN) {
        return Err(AttachError::Misaligned {
            address: region.as_ptr() as usize,
        });
    }
    if len < RING_HEADER_SIZE {
        return Err(AttachError::RegionTooSmall {
            needed: RING_HEADER_SIZE,
            actual: len,
        });
    }
    Ok(region.cast())
}

fn check_capacity(capacity: u32) -> Result<(), AttachError> {
    if capacity == 0 || !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
        return Err(AttachError::BadCapacity(capacity));
    }
    Ok(())
}

/// Reads and validates the type-independent part of the header.
///
/// # Safety
///
/// `header` must be valid for reads of `len` bytes (at least [`RING_HEADER_SIZE`]).
unsafe fn read_geometry(header: NonNull<Header>, len: usize) -> Result<RingState, AttachError> {
    // SAFETY: the caller guarantees the header is readable; it is made of atomics only, so a
    // shared reference is sound even while the peer writes to it.
    let header = unsafe { header.as_ref() };
    let geometry = &header.geometry.0;
    let magic = geometry.magic.load(Ordering::Acquire);
    if magic != RING_MAGIC {
        return Err(AttachError::BadMagic(magic));
    }
    let version = geometry.version.load(Ordering::Relaxed);
    if version != RING_VERSION {
        return Err(AttachError::BadVersion(version));
    }
    let capacity = geometry.capacity.load(Ordering::Relaxed);
    check_capacity(capacity)?;
    let slots_offset = geometry.slots_offset.load(Ordering::Relaxed);
    if slots_offset as usize != RING_HEADER_SIZE {
        return Err(AttachError::BadGeometry {
            field: "slots_offset",
            value: slots_offset.into(),
        });
    }
    let region_size = geometry.region_size.load(Ordering::Relaxed);
    if region_size > len as u64 {
        return Err(AttachError::RegionTooSmall {
            needed: usize::try_from(region_size).unwrap_or(usize::MAX),
            actual: len,
        });
    }
    Ok(RingState {
        capacity,
        descriptor_size: geometry.descriptor_size.load(Ordering::Relaxed),
        producer_index: header.producer_index.0.load(Ordering::Acquire),
        consumer_index: header.consumer_index.0.load(Ordering::Acquire),
        consumer_needs_wakeup: header
            .wakeup
            .0
            .consumer_needs_wakeup
            .load(Ordering::Relaxed)
            != 0,
        producer_needs_wakeup: header
            .wakeup
            .0
            .producer_needs_wakeup
            .load(Ordering::Relaxed)
            != 0,
    })
}

/// Initialises a ring for `capacity` descriptors of type `D` in `region` (host side).
///
/// Writes the header and zeroes the indices, flags and slots; the magic is stored last, with
/// Release, so a side that attaches and sees it sees the rest.
///
/// # Safety
///
/// `region` must be valid for writes of `len` bytes, and no one may use the region as a ring
/// (attached handles) while it is initialised.
pub unsafe fn init<D: Descriptor>(
    region: *mut u8,
    len: usize,
    capacity: u32,
) -> Result<(), AttachError> {
    const { check_descriptor::<D>() };
    let header = check_region(region, len)?;
    check_capacity(capacity)?;
    let needed = region_size::<D>(capacity);
    if len < needed {
        return Err(AttachError::RegionTooSmall {
            needed,
            actual: len,
        });
    }
    let fresh = Header {
        geometry: CacheLine(Geometry {
            magic: AtomicU32::new(0),
            version: AtomicU32::new(RING_VERSION),
            capacity: AtomicU32::new(capacity),
            descriptor_size: AtomicU32::new(size_of::<D>() as u32),
            descriptor_align: AtomicU32::new(align_of::<D>() as u32),
            slots_offset: AtomicU32::new(RING_HEADER_SIZE as u32),
            region_size: AtomicU64::new(needed as u64),
        }),
        producer_index: CacheLine(AtomicU32::new(0)),
        consumer_index: CacheLine(AtomicU32::new(0)),
        wakeup: CacheLine(WakeupFlags {
            consumer_needs_wakeup: AtomicU32::new(0),
            producer_needs_wakeup: AtomicU32::new(0),
        }),
    };
    // SAFETY: the region is writable for `len >= needed` bytes and aligned for `Header`
    // (checked above); the caller guarantees no one else uses it.
    unsafe { header.write(fresh) };
    // SAFETY: the slots start at `RING_HEADER_SIZE < needed`, inside the region.
    let slots = unsafe { region.add(RING_HEADER_SIZE) }.cast::<Slot<D>>();
    for i in 0..capacity as usize {
        // SAFETY: slot `i < capacity` lies inside the region (`needed` covers all slots).
        let slot = unsafe { slots.add(i) };
        // SAFETY: the slot is inside the region and aligned: the slots start 128-aligned and
        // `size_of::<Slot<D>>()` is a multiple of the descriptor's alignment.
        unsafe { slot.write(Slot::new(D::new_zeroed())) };
    }
    // SAFETY: the header was just written and lives as long as the region.
    let header = unsafe { header.as_ref() };
    header.geometry.0.magic.store(RING_MAGIC, Ordering::Release);
    Ok(())
}

/// Reads the header of a ring without attaching to it (host side: stats, snapshot checks).
///
/// Checks magic, version, capacity and that the region is large enough; the indices are
/// returned as found, untrusted.
///
/// # Safety
///
/// `region` must be valid for reads of `len` bytes.
pub unsafe fn inspect(region: *mut u8, len: usize) -> Result<RingState, AttachError> {
    let header = check_region(region, len)?;
    // SAFETY: the caller guarantees the region is readable for `len` bytes.
    unsafe { read_geometry(header, len) }
}

/// The part of a handle that points into shared memory, validated at attach.
struct RawRing<D> {
    header: NonNull<Header>,
    slots: NonNull<Slot<D>>,
    /// `capacity - 1`: a copy of the validated geometry, never re-read.
    mask: u32,
    capacity: u32,
    /// Keeps an [`crate::OwnedRegion`] alive (rings made by [`channel`]).
    #[cfg(any(test, feature = "std"))]
    _owner: Option<std::sync::Arc<crate::owned::OwnedRegion>>,
    _descriptor: PhantomData<D>,
}

impl<D: Descriptor> RawRing<D> {
    /// Validates the header for descriptors of type `D`.
    ///
    /// # Safety
    ///
    /// As for [`Producer::attach`].
    unsafe fn attach(region: *mut u8, len: usize) -> Result<(RawRing<D>, RingState), AttachError> {
        const { check_descriptor::<D>() };
        let header = check_region(region, len)?;
        // SAFETY: the caller guarantees the region is valid for `len` bytes.
        let state = unsafe { read_geometry(header, len) }?;
        // SAFETY: `header` was checked to be non-null and aligned, and the caller guarantees it
        // is valid; it holds atomics only.
        let geometry = &unsafe { header.as_ref() }.geometry.0;
        let expected = (size_of::<D>() as u32, align_of::<D>() as u32);
        let found = (
            state.descriptor_size,
            geometry.descriptor_align.load(Ordering::Relaxed),
        );
        if expected != found {
            return Err(AttachError::DescriptorMismatch { expected, found });
        }
        let needed = region_size::<D>(state.capacity);
        let region_size = geometry.region_size.load(Ordering::Relaxed);
        if region_size != needed as u64 {
            return Err(AttachError::BadGeometry {
                field: "region_size",
                value: region_size,
            });
        }
        if len < needed {
            return Err(AttachError::RegionTooSmall {
                needed,
                actual: len,
            });
        }
        if state.len().is_none() {
            return Err(AttachError::BadIndices {
                producer: state.producer_index,
                consumer: state.consumer_index,
            });
        }
        // SAFETY: `RING_HEADER_SIZE < needed <= len`, so the slots start inside the region.
        let slots = unsafe { header.cast::<u8>().add(RING_HEADER_SIZE) }.cast::<Slot<D>>();
        let ring = RawRing {
            header,
            slots,
            mask: state.capacity - 1,
            capacity: state.capacity,
            #[cfg(any(test, feature = "std"))]
            _owner: None,
            _descriptor: PhantomData,
        };
        Ok((ring, state))
    }

    #[inline(always)]
    fn header(&self) -> &Header {
        // SAFETY: validated at attach; the attach contract keeps the region alive and mapped for
        // as long as the handle lives. The header holds atomics only.
        unsafe { self.header.as_ref() }
    }

    /// The slot for a free-running index.
    #[inline(always)]
    fn slot(&self, index: u32) -> &Slot<D> {
        self.slots().get(index)
    }

    /// The slot array, as a value that batch loops keep in registers.
    #[inline(always)]
    fn slots(&self) -> Slots<'_, D> {
        Slots {
            base: self.slots,
            mask: self.mask,
            _ring: PhantomData,
        }
    }
}

/// A copy of a validated ring's slot address and mask, borrowed from its handle.
struct Slots<'a, D> {
    base: NonNull<Slot<D>>,
    mask: u32,
    _ring: PhantomData<&'a RawRing<D>>,
}

impl<D> Clone for Slots<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for Slots<'_, D> {}

impl<'a, D: Descriptor> Slots<'a, D> {
    /// The slot for a free-running index.
    #[inline(always)]
    fn get(self, index: u32) -> &'a Slot<D> {
        // SAFETY: `index & mask < capacity`, and attach checked that `capacity` slots fit in the
        // region.
        let slot = unsafe { self.base.add((index & self.mask) as usize) };
        // SAFETY: the slot is inside the region, which the attach contract keeps valid while the
        // handle (borrowed for 'a) lives, and aligned for `D` (and to 8 bytes if `D`'s size is a
        // multiple of 8: the slots start 128-byte aligned); slots are interior-mutable cells.
        unsafe { slot.as_ref() }
    }

    /// Asks the CPU to start bringing the slots of the `count` descriptors from `index` on
    /// into this core's cache, one request per cache line, without waiting for them. A
    /// consumer that takes batches asks for the next batch while it works on this one, so that
    /// the lines the producer wrote cross between the cores several at a time instead of one
    /// after the other (on a 2-vCPU Xeon, 32-byte descriptors at batch 32 went from about 215
    /// to 275 M/s, 16-byte ones from 350 to 480; see docs/PERFORMANCE.md). A prefetch reads
    /// nothing into the program and cannot fault, whatever the peer wrote. Builds without SSE
    /// (the guests) have no prefetch instruction to use and skip it: where guest instructions
    /// are emulated, each would cost about a microsecond and save nothing.
    #[inline(always)]
    fn prefetch(self, index: u32, count: u32) {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse", not(loom)))]
        {
            let per_line = (64 / size_of::<D>()).max(1) as u32;
            let mut next = 0;
            while next < count {
                let slot = self
                    .base
                    .as_ptr()
                    .wrapping_add((index.wrapping_add(next) & self.mask) as usize);
                // SAFETY: a prefetch is a hint: it neither reads into the program nor faults,
                // and the address lies in the slot array anyway (masked index, as in `get`).
                unsafe {
                    core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                        slot.cast::<i8>(),
                    );
                }
                next += per_line;
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse", not(loom))))]
        let _ = (index, count);
    }
}

/// The producing side of a ring: fills slots and publishes them.
///
/// Not `Clone`: [`Producer::attach`]'s contract makes it the only producer of its ring.
pub struct Producer<D: Descriptor> {
    ring: RawRing<D>,
    /// Next index to fill. Authoritative: never read back from shared memory.
    head: u32,
    /// The consumer index as last seen.
    cached_tail: u32,
    fault: Option<PeerError>,
    stats: RingStats,
}

// SAFETY: the handle owns its side of the ring; the region stays valid wherever the handle goes
// (attach contract), and descriptors are plain data.
unsafe impl<D: Descriptor + Send> Send for Producer<D> {}

impl<D: Descriptor> fmt::Debug for Producer<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.capacity)
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

impl<D: Descriptor> Producer<D> {
    /// Attaches the producer side to a ring that [`init`] set up.
    ///
    /// Validates the header (magic, version, capacity, descriptor size and alignment, region
    /// size, alignment of `region`) and the indices, and takes its starting index from shared
    /// memory, so a producer can re-attach to a live ring.
    ///
    /// # Safety
    ///
    /// - `region` must be valid for reads and writes of `len` bytes for as long as the handle
    ///   lives, and must not be accessed other than through ring handles or [`inspect`].
    /// - At most one producer handle may exist for a region at a time (one per ring, across both
    ///   parties).
    pub unsafe fn attach(region: *mut u8, len: usize) -> Result<Producer<D>, AttachError> {
        // SAFETY: forwarded contract.
        let (ring, state) = unsafe { RawRing::attach(region, len) }?;
        Ok(Producer {
            ring,
            head: state.producer_index,
            cached_tail: state.consumer_index,
            fault: None,
            stats: RingStats::default(),
        })
    }

    /// Capacity of the ring in descriptors.
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.ring.capacity
    }

    /// This side's free-running index: descriptors published since the ring was initialised,
    /// modulo 2^32.
    #[inline]
    pub fn index(&self) -> u32 {
        self.head
    }

    /// This side's counters.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// The protocol error this handle saw, if any (it then stays failed).
    pub fn fault(&self) -> Option<PeerError> {
        self.fault
    }

    /// Free slots as last known, without touching shared memory.
    #[inline]
    fn cached_free(&self) -> u32 {
        self.ring
            .capacity
            .wrapping_sub(self.head.wrapping_sub(self.cached_tail))
    }

    /// Re-reads the consumer index; returns the free slots.
    #[inline(never)]
    fn refresh(&mut self) -> Result<u32, PeerError> {
        if let Some(fault) = self.fault {
            return Err(fault);
        }
        self.stats.peer_index_reads += 1;
        let tail = self.ring.header().consumer_index.0.load(Ordering::Acquire);
        let (low, high) = (self.cached_tail, self.head);
        if tail.wrapping_sub(low) > high.wrapping_sub(low) {
            let fault = PeerError {
                index: IndexKind::Consumer,
                found: tail,
                low,
                high,
            };
            self.fault = Some(fault);
            // Looks full from now on, so every operation takes the slow path and fails.
            self.cached_tail = self.head.wrapping_sub(self.ring.capacity);
            return Err(fault);
        }
        self.cached_tail = tail;
        Ok(self.cached_free())
    }

    /// Free slots, re-reading the consumer index.
    pub fn free(&mut self) -> Result<u32, PeerError> {
        self.refresh()
    }

    /// Free slots as cached, re-reading the consumer index only if the cache shows none: the
    /// cheap way to ask whether the next [`Producer::push`] will find room.
    #[inline]
    pub fn room(&mut self) -> Result<u32, PeerError> {
        self.room_for(1)
    }

    /// Free slots as cached, re-reading the consumer index only if the cache shows fewer than
    /// `want` (as [`Producer::reserve`] does).
    #[inline]
    pub fn room_for(&mut self, want: u32) -> Result<u32, PeerError> {
        match self.cached_free() {
            free if free >= want => Ok(free),
            _ => self.refresh(),
        }
    }

    /// Publishes one descriptor.
    #[inline]
    pub fn push(&mut self, descriptor: D) -> Result<(), PushError> {
        if self.cached_free() == 0 && self.refresh()? == 0 {
            return Err(PushError::Full);
        }
        // SAFETY: the slot at `head` is free: `head - tail < capacity` for the consumer index
        // `tail` observed with Acquire, so the consumer is done with it.
        unsafe { self.ring.slot(self.head).write(descriptor) };
        self.head = self.head.wrapping_add(1);
        self.ring
            .header()
            .producer_index
            .0
            .store(self.head, Ordering::Release);
        Ok(())
    }

    /// Reserves up to `max` slots for a batch; the batch may be shorter (or empty) if the ring
    /// has less room. Re-reads the consumer index only if the cached one shows less than `max`
    /// free slots.
    #[inline]
    pub fn reserve(&mut self, max: u32) -> Result<WriteBatch<'_, D>, PeerError> {
        let mut free = self.cached_free();
        if free < max {
            free = self.refresh()?;
        }
        Ok(WriteBatch {
            len: free.min(max),
            written: 0,
            producer: self,
        })
    }

    /// Publishes as many descriptors from the front of `descriptors` as fit, with one index
    /// store; returns how many.
    pub fn push_slice(&mut self, descriptors: &[D]) -> Result<usize, PeerError> {
        let max = u32::try_from(descriptors.len()).unwrap_or(u32::MAX);
        let mut batch = self.reserve(max)?;
        let count = batch.len() as usize;
        for descriptor in &descriptors[..count] {
            // Cannot fail: the batch has exactly `count` slots.
            let _ = batch.push(*descriptor);
        }
        batch.commit();
        Ok(count)
    }

    /// Whether the consumer asked to be woken; call after publishing a burst, and signal the
    /// consumer if this returns `true`.
    ///
    /// Issues the `fence(SeqCst)` of the wake-up handshake (see the [module docs](self)), so call
    /// it once per burst rather than once per descriptor.
    #[inline]
    pub fn needs_wakeup(&mut self) -> bool {
        fence(Ordering::SeqCst);
        let wanted = self
            .ring
            .header()
            .wakeup
            .0
            .consumer_needs_wakeup
            .load(Ordering::Relaxed)
            != 0;
        if wanted {
            self.stats.wakeups_requested += 1;
        }
        wanted
    }

    /// Prepares to sleep until the consumer makes room; returns `true` if the caller may sleep
    /// (the ring is still full and the consumer will see the request), `false` if there is room
    /// (or the peer broke the protocol, which the next operation reports): go on producing.
    ///
    /// After sleeping, call [`Producer::woke_up`].
    pub fn prepare_to_sleep(&mut self) -> bool {
        if self.cached_free() != 0 {
            return false;
        }
        let flag = &self.ring.header().wakeup.0.producer_needs_wakeup;
        flag.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.refresh() == Ok(0) {
            self.stats.sleeps += 1;
            return true;
        }
        self.ring
            .header()
            .wakeup
            .0
            .producer_needs_wakeup
            .store(0, Ordering::Relaxed);
        false
    }

    /// Withdraws the wake-up request made by [`Producer::prepare_to_sleep`].
    pub fn woke_up(&mut self) {
        self.ring
            .header()
            .wakeup
            .0
            .producer_needs_wakeup
            .store(0, Ordering::Relaxed);
    }
}

/// Slots reserved by [`Producer::reserve`], filled in order and published by
/// [`WriteBatch::commit`]. Dropping the batch without committing publishes nothing.
#[must_use = "a batch publishes nothing until it is committed"]
pub struct WriteBatch<'a, D: Descriptor> {
    producer: &'a mut Producer<D>,
    len: u32,
    written: u32,
}

impl<D: Descriptor> fmt::Debug for WriteBatch<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBatch")
            .field("len", &self.len)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<D: Descriptor> WriteBatch<'_, D> {
    /// Slots reserved.
    #[inline]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether no slot was reserved (the ring is full).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots filled so far.
    #[inline]
    pub fn written(&self) -> u32 {
        self.written
    }

    /// Fills the next reserved slot; gives the descriptor back if all are filled.
    #[inline]
    pub fn push(&mut self, descriptor: D) -> Result<(), D> {
        if self.written >= self.len {
            return Err(descriptor);
        }
        let index = self.producer.head.wrapping_add(self.written);
        // SAFETY: `index` is one of the `len` slots reserved from the free space computed from
        // a consumer index observed with Acquire; the consumer is done with it.
        unsafe { self.producer.ring.slot(index).write(descriptor) };
        self.written += 1;
        Ok(())
    }

    /// Fills the remaining reserved slots from `descriptors`, stopping when either runs out;
    /// returns how many were written.
    #[inline]
    pub fn fill_from_iter<I: IntoIterator<Item = D>>(&mut self, descriptors: I) -> u32 {
        let (start, len, head) = (self.written, self.len, self.producer.head);
        let slots = self.producer.ring.slots();
        let mut written = start;
        for descriptor in descriptors.into_iter().take((len - start) as usize) {
            // SAFETY: `written < len`: one of the slots reserved from the free space computed
            // from a consumer index observed with Acquire; the consumer is done with it.
            unsafe { slots.get(head.wrapping_add(written)).write(descriptor) };
            written += 1;
        }
        self.written = written;
        written - start
    }

    /// Publishes the filled slots with one Release store; returns how many.
    #[inline]
    pub fn commit(self) -> u32 {
        let producer = self.producer;
        if self.written != 0 {
            producer.head = producer.head.wrapping_add(self.written);
            producer
                .ring
                .header()
                .producer_index
                .0
                .store(producer.head, Ordering::Release);
        }
        self.written
    }
}

/// The consuming side of a ring: reads published descriptors and releases their slots.
///
/// Not `Clone`: [`Consumer::attach`]'s contract makes it the only consumer of its ring.
pub struct Consumer<D: Descriptor> {
    ring: RawRing<D>,
    /// Next index to read. Authoritative: never read back from shared memory.
    tail: u32,
    /// The producer index as last seen.
    cached_head: u32,
    fault: Option<PeerError>,
    stats: RingStats,
}

// SAFETY: as for `Producer`.
unsafe impl<D: Descriptor + Send> Send for Consumer<D> {}

impl<D: Descriptor> fmt::Debug for Consumer<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.capacity)
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

impl<D: Descriptor> Consumer<D> {
    /// Attaches the consumer side to a ring that [`init`] set up; validates as
    /// [`Producer::attach`] does and takes its starting index from shared memory.
    ///
    /// # Safety
    ///
    /// - `region` must be valid for reads and writes of `len` bytes for as long as the handle
    ///   lives, and must not be accessed other than through ring handles or [`inspect`].
    /// - At most one consumer handle may exist for a region at a time (one per ring, across both
    ///   parties).
    pub unsafe fn attach(region: *mut u8, len: usize) -> Result<Consumer<D>, AttachError> {
        // SAFETY: forwarded contract.
        let (ring, state) = unsafe { RawRing::attach(region, len) }?;
        Ok(Consumer {
            ring,
            tail: state.consumer_index,
            cached_head: state.producer_index,
            fault: None,
            stats: RingStats::default(),
        })
    }

    /// Capacity of the ring in descriptors.
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.ring.capacity
    }

    /// This side's free-running index: descriptors consumed since the ring was initialised,
    /// modulo 2^32.
    #[inline]
    pub fn index(&self) -> u32 {
        self.tail
    }

    /// This side's counters.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// The protocol error this handle saw, if any (it then stays failed).
    pub fn fault(&self) -> Option<PeerError> {
        self.fault
    }

    /// Descriptors available as last known, without touching shared memory.
    #[inline]
    fn cached_available(&self) -> u32 {
        self.cached_head.wrapping_sub(self.tail)
    }

    /// Re-reads the producer index; returns the descriptors available.
    #[inline]
    fn refresh(&mut self) -> Result<u32, PeerError> {
        if let Some(fault) = self.fault {
            return Err(fault);
        }
        self.stats.peer_index_reads += 1;
        let head = self.ring.header().producer_index.0.load(Ordering::Acquire);
        let (low, high) = (self.cached_head, self.tail.wrapping_add(self.ring.capacity));
        if head.wrapping_sub(low) > high.wrapping_sub(low) {
            return Err(self.fail(PeerError {
                index: IndexKind::Producer,
                found: head,
                low,
                high,
            }));
        }
        self.cached_head = head;
        Ok(self.cached_available())
    }

    #[cold]
    fn fail(&mut self, fault: PeerError) -> PeerError {
        self.fault = Some(fault);
        // Looks empty from now on, so every operation takes the slow path and fails.
        self.cached_head = self.tail;
        fault
    }

    /// Descriptors available, re-reading the producer index.
    pub fn available(&mut self) -> Result<u32, PeerError> {
        self.refresh()
    }

    /// Takes one descriptor, or `None` if the ring is empty.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<D>, PeerError> {
        if self.cached_available() == 0 && self.refresh()? == 0 {
            return Ok(None);
        }
        // SAFETY: `tail` is below the producer index observed with Acquire, so the slot is
        // published and the producer will not touch it before we release it.
        let descriptor = unsafe { self.ring.slot(self.tail).read() };
        self.tail = self.tail.wrapping_add(1);
        self.ring
            .header()
            .consumer_index
            .0
            .store(self.tail, Ordering::Release);
        Ok(Some(descriptor))
    }

    /// Looks at up to `max` published descriptors without releasing them; the batch may be
    /// shorter (or empty). Re-reads the producer index only if the cached one shows fewer than
    /// `max`, and prefetches the slots of up to `max` published descriptors after the batch
    /// (host builds). Release them with [`ReadBatch::release`]; dropping the batch releases
    /// nothing.
    #[inline]
    pub fn peek(&mut self, max: u32) -> Result<ReadBatch<'_, D>, PeerError> {
        let mut available = self.cached_available();
        if available < max {
            available = self.refresh()?;
        }
        let len = available.min(max);
        // The next batch, as far as it is published already (see `Slots::prefetch`).
        self.ring
            .slots()
            .prefetch(self.tail.wrapping_add(len), (available - len).min(max));
        Ok(ReadBatch {
            len,
            consumer: self,
        })
    }

    /// Takes as many descriptors as fit in `out` (and are available), with one index store;
    /// returns how many.
    pub fn pop_slice(&mut self, out: &mut [D]) -> Result<usize, PeerError> {
        let max = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let batch = self.peek(max)?;
        let count = batch.len() as usize;
        for (slot, descriptor) in out[..count].iter_mut().zip(batch.iter()) {
            *slot = descriptor;
        }
        batch.release();
        Ok(count)
    }

    /// Prepares to sleep until the producer publishes; returns `true` if the caller may sleep
    /// (the ring is still empty and the producer will see the request), `false` if there is
    /// work (or the peer broke the protocol, which the next operation reports): go on consuming.
    ///
    /// After sleeping, call [`Consumer::woke_up`].
    pub fn prepare_to_sleep(&mut self) -> bool {
        if self.cached_available() != 0 {
            return false;
        }
        let flag = &self.ring.header().wakeup.0.consumer_needs_wakeup;
        flag.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.refresh() == Ok(0) {
            self.stats.sleeps += 1;
            return true;
        }
        self.ring
            .header()
            .wakeup
            .0
            .consumer_needs_wakeup
            .store(0, Ordering::Relaxed);
        false
    }

    /// Withdraws the wake-up request made by [`Consumer::prepare_to_sleep`].
    pub fn woke_up(&mut self) {
        self.ring
            .header()
            .wakeup
            .0
            .consumer_needs_wakeup
            .store(0, Ordering::Relaxed);
    }

    /// Whether the producer asked to be woken when room appears; call after releasing a burst,
    /// and signal the producer if this returns `true`. Issues the handshake's `fence(SeqCst)`.
    #[inline]
    pub fn needs_wakeup(&mut self) -> bool {
        fence(Ordering::SeqCst);
        let wanted = self
            .ring
            .header()
            .wakeup
            .0
            .producer_needs_wakeup
            .load(Ordering::Relaxed)
            != 0;
        if wanted {
            self.stats.wakeups_requested += 1;
        }
        wanted
    }
}

/// Published descriptors handed out by [`Consumer::peek`]; released (handed back to the
/// producer) by [`ReadBatch::release`].
#[must_use = "a batch releases nothing until `release` is called"]
pub struct ReadBatch<'a, D: Descriptor> {
    consumer: &'a mut Consumer<D>,
    len: u32,
}

impl<D: Descriptor> fmt::Debug for ReadBatch<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadBatch")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<'a, D: Descriptor> ReadBatch<'a, D> {
    /// Descriptors in the batch.
    #[inline]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the batch is empty (the ring was).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of descriptor `i` of the batch.
    #[inline]
    pub fn get(&self, i: u32) -> Option<D> {
        if i >= self.len {
            return None;
        }
        // SAFETY: the slot is in the published range observed with Acquire and not released.
        Some(unsafe {
            self.consumer
                .ring
                .slot(self.consumer.tail.wrapping_add(i))
                .read()
        })
    }

    /// Copies of the descriptors, in order.
    #[inline]
    pub fn iter(&self) -> BatchIter<'_, D> {
        BatchIter {
            slots: self.consumer.ring.slots(),
            next: self.consumer.tail,
            remaining: self.len,
        }
    }

    /// Releases the whole batch with one Release store.
    #[inline]
    pub fn release(self) {
        let len = self.len;
        self.release_first(len);
    }

    /// Releases the first `count` descriptors of the batch (all of them if `count` is larger);
    /// the others stay published and are seen again by the next `peek` or `pop`.
    #[inline]
    pub fn release_first(self, count: u32) {
        let consumer = self.consumer;
        let count = count.min(self.len);
        if count != 0 {
            consumer.tail = consumer.tail.wrapping_add(count);
            consumer
                .ring
                .header()
                .consumer_index
                .0
                .store(consumer.tail, Ordering::Release);
        }
    }
}

impl<'b, D: Descriptor> IntoIterator for &'b ReadBatch<'_, D> {
    type Item = D;
    type IntoIter = BatchIter<'b, D>;

    fn into_iter(self) -> BatchIter<'b, D> {
        self.iter()
    }
}

/// Iterator over copies of the descriptors of a [`ReadBatch`].
pub struct BatchIter<'a, D: Descriptor> {
    slots: Slots<'a, D>,
    next: u32,
    remaining: u32,
}

impl<D: Descriptor> fmt::Debug for BatchIter<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchIter")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<D: Descriptor> Iterator for BatchIter<'_, D> {
    type Item = D;

    #[inline]
    fn next(&mut self) -> Option<D> {
        if self.remaining == 0 {
            return None;
        }
        // SAFETY: the slot is in the batch, which is published and not released while the
        // batch (and so this iterator's borrow of it) lives.
        let descriptor = unsafe { self.slots.get(self.next).read() };
        self.next = self.next.wrapping_add(1);
        self.remaining -= 1;
        Some(descriptor)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl<D: Descriptor> ExactSizeIterator for BatchIter<'_, D> {}

/// Creates a ring for `capacity` descriptors in a fresh heap region and returns both ends
/// (`std` feature: for tests, host tools and benchmarks). The region is freed when both handles
/// are dropped.
///
/// ```
/// let (mut tx, mut rx) = shm_ring::ring::channel::<shm_ring::desc::Desc>(64)?;
/// tx.push(shm_ring::desc::Desc::new(0, 1))?;
/// assert_eq!(rx.pop()?.map(|d| d.len), Some(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(any(test, feature = "std"))]
pub fn channel<D: Descriptor>(capacity: u32) -> Result<(Producer<D>, Consumer<D>), AttachError> {
    use std::sync::Arc;

    check_capacity(capacity)?;
    let size = region_size::<D>(capacity);
    let region = Arc::new(crate::owned::OwnedRegion::new(size));
    // SAFETY: the region is valid for `size` bytes and nothing else uses it yet.
    unsafe { init::<D>(region.as_ptr(), size, capacity) }?;
    // SAFETY: the region is valid for `size` bytes and each handle keeps it alive through its
    // `Arc`; this is the only producer.
    let mut producer = unsafe { Producer::attach(region.as_ptr(), size) }?;
    // SAFETY: as above; this is the only consumer.
    let mut consumer = unsafe { Consumer::attach(region.as_ptr(), size) }?;
    producer.ring._owner = Some(Arc::clone(&region));
    consumer.ring._owner = Some(region);
    Ok((producer, consumer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desc::{Desc, Desc32};
    use crate::owned::OwnedRegion;

    fn desc(i: u32) -> Desc {
        Desc {
            offset: i,
            len: i.wrapping_mul(3),
            flags: !i,
            meta: i ^ 0x5a5a,
        }
    }

    /// A region with a ring in it, and raw access to its header words for scribbling.
    struct Fixture {
        region: OwnedRegion,
    }

    impl Fixture {
        fn new<D: Descriptor>(capacity: u32) -> Fixture {
            let region = OwnedRegion::new(region_size::<D>(capacity));
            // SAFETY: fresh region of the right size, unused.
            unsafe { init::<D>(region.as_ptr(), region.len(), capacity) }.unwrap();
            Fixture { region }
        }

        fn word(&self, offset: usize) -> &AtomicU32 {
            assert!(offset + 4 <= RING_HEADER_SIZE && offset.is_multiple_of(4));
            // SAFETY: inside the header, aligned; header words are atomics.
            unsafe {
                &*self
                    .region
                    .as_ptr()
                    .wrapping_add(offset)
                    .cast::<AtomicU32>()
            }
        }

        fn poke(&self, offset: usize, value: u32) {
            self.word(offset).store(value, Ordering::Relaxed);
        }

        fn producer<D: Descriptor>(&self) -> Result<Producer<D>, AttachError> {
            // SAFETY: the region outlives the handle (tests drop handles first); one producer.
            unsafe { Producer::attach(self.region.as_ptr(), self.region.len()) }
        }

        fn consumer<D: Descriptor>(&self) -> Result<Consumer<D>, AttachError> {
            // SAFETY: as above; one consumer.
            unsafe { Consumer::attach(self.region.as_ptr(), self.region.len()) }
        }
    }

    const PRODUCER_INDEX: usize = 128;
    const CONSUMER_INDEX: usize = 256;

    #[test]
    fn sizes() {
        assert_eq!(region_size::<Desc>(1), 512 + 128);
        assert_eq!(region_size::<Desc>(8), 512 + 128);
        assert_eq!(region_size::<Desc>(16), 512 + 256);
        assert_eq!(region_size::<Desc32>(1024), 512 + 32 * 1024);
        assert_eq!(region_size::<Desc>(u32::MAX) % RING_ALIGN, 0);
    }

    #[test]
    fn push_pop_in_order_across_wrap_around() {
        let (mut tx, mut rx) = channel::<Desc>(4).unwrap();
        assert_eq!(rx.pop(), Ok(None));
        for round in 0..10u32 {
            for i in 0..3 {
                tx.push(desc(round * 3 + i)).unwrap();
            }
            for i in 0..3 {
                assert_eq!(rx.pop(), Ok(Some(desc(round * 3 + i))));
            }
            assert_eq!(rx.pop(), Ok(None));
        }
        assert_eq!(tx.index(), 30);
        assert_eq!(rx.index(), 30);
    }

    #[test]
    fn full_ring_rejects_push() {
        let (mut tx, mut rx) = channel::<Desc>(2).unwrap();
        tx.push(desc(0)).unwrap();
        tx.push(desc(1)).unwrap();
        assert_eq!(tx.push(desc(2)), Err(PushError::Full));
        assert_eq!(tx.free(), Ok(0));
        assert_eq!(rx.pop(), Ok(Some(desc(0))));
        assert_eq!(tx.free(), Ok(1));
        tx.push(desc(2)).unwrap();
        assert_eq!(rx.pop(), Ok(Some(desc(1))));
        assert_eq!(rx.pop(), Ok(Some(desc(2))));
        assert_eq!(rx.pop(), Ok(None));
    }

    #[test]
    fn room_rereads_only_when_the_cache_shows_none() {
        let (mut tx, mut rx) = channel::<Desc>(4).unwrap();
        tx.push(desc(0)).unwrap();
        let reads = tx.stats().peer_index_reads;
        assert_eq!(tx.room(), Ok(3));
        assert_eq!(tx.stats().peer_index_reads, reads, "the cache had room");
        for i in 1..4 {
            tx.push(desc(i)).unwrap();
        }
        rx.pop().unwrap();
        assert_eq!(tx.room(), Ok(1), "the cache showed none: re-read");
        assert!(tx.stats().peer_index_reads > reads);
        let reads = tx.stats().peer_index_reads;
        rx.pop().unwrap();
        assert_eq!(tx.room_for(1), Ok(1), "enough cached: no re-read");
        assert_eq!(tx.stats().peer_index_reads, reads);
        assert_eq!(tx.room_for(2), Ok(2), "too few cached: re-read");
        assert_eq!(tx.stats().peer_index_reads, reads + 1);
    }

    #[test]
    fn capacity_one() {
        let (mut tx, mut rx) = channel::<Desc>(1).unwrap();
        for i in 0..5 {
            tx.push(desc(i)).unwrap();
            assert_eq!(tx.push(desc(99)), Err(PushError::Full));
            assert_eq!(rx.pop(), Ok(Some(desc(i))));
        }
    }

    #[test]
    fn batches() {
        let (mut tx, mut rx) = channel::<Desc32>(8).unwrap();
        let item = |i: u32| Desc32 {
            offset: i,
            user_data: u64::from(i) << 32,
            ..Desc32::default()
        };
        for round in 0..5u32 {
            let mut batch = tx.reserve(6).unwrap();
            assert_eq!(batch.len(), 6);
            for i in 0..6 {
                batch.push(item(round * 6 + i)).unwrap();
            }
            assert!(batch.push(item(99)).is_err());
            assert_eq!(batch.commit(), 6);
            // Only 2 more fit.
            assert_eq!(tx.reserve(6).unwrap().len(), 2);

            let batch = rx.peek(4).unwrap();
            assert_eq!(batch.len(), 4);
            assert_eq!(batch.get(4), None);
            let got: Vec<u32> = batch.iter().map(|d| d.offset).collect();
            assert_eq!(got, (0..4).map(|i| round * 6 + i).collect::<Vec<_>>());
            assert_eq!(
                batch.get(3).unwrap().user_data,
                u64::from(round * 6 + 3) << 32
            );
            batch.release_first(1);
            let batch = rx.peek(100).unwrap();
            assert_eq!(batch.len(), 5);
            batch.release();
            assert!(rx.peek(1).unwrap().is_empty());
        }
    }

    #[test]
    fn uncommitted_and_unreleased_batches_change_nothing() {
        let (mut tx, mut rx) = channel::<Desc>(4).unwrap();
        let mut batch = tx.reserve(2).unwrap();
        batch.push(desc(1)).unwrap();
        drop(batch);
        assert_eq!(rx.pop(), Ok(None));
        tx.push(desc(2)).unwrap();
        drop(rx.peek(4).unwrap());
        assert_eq!(rx.pop(), Ok(Some(desc(2))));
        assert_eq!(tx.reserve(0).unwrap().commit(), 0);
    }

    #[test]
    fn slices() {
        let (mut tx, mut rx) = channel::<Desc>(8).unwrap();
        let items: Vec<Desc> = (0..20).map(desc).collect();
        assert_eq!(tx.push_slice(&items), Ok(8));
        let mut out = [Desc::default(); 5];
        assert_eq!(rx.pop_slice(&mut out), Ok(5));
        assert_eq!(&out[..], &items[..5]);
        assert_eq!(tx.push_slice(&items[8..]), Ok(5));
        let mut out = [Desc::default(); 20];
        assert_eq!(rx.pop_slice(&mut out), Ok(8));
        assert_eq!(&out[..8], &items[5..13]);
        assert_eq!(rx.pop_slice(&mut out), Ok(0));
    }

    #[test]
    fn indices_wrap_around_u32() {
        let fixture = Fixture::new::<Desc>(4);
        fixture.poke(PRODUCER_INDEX, u32::MAX - 5);
        fixture.poke(CONSUMER_INDEX, u32::MAX - 5);
        let mut tx = fixture.producer::<Desc>().unwrap();
        let mut rx = fixture.consumer::<Desc>().unwrap();
        for i in 0..20 {
            tx.push(desc(i)).unwrap();
            if i % 2 == 1 {
                assert_eq!(rx.pop(), Ok(Some(desc(i - 1))));
                assert_eq!(rx.pop(), Ok(Some(desc(i))));
            }
        }
        assert_eq!(tx.index(), 14);
        assert_eq!(rx.index(), 14);
    }

    #[test]
    fn reattach_continues_where_the_ring_is() {
        let fixture = Fixture::new::<Desc>(8);
        let mut tx = fixture.producer::<Desc>().unwrap();
        tx.push_slice(&[desc(1), desc(2), desc(3)]).unwrap();
        let mut rx = fixture.consumer::<Desc>().unwrap();
        assert_eq!(rx.pop(), Ok(Some(desc(1))));
        drop(rx);
        drop(tx);
        let mut tx = fixture.producer::<Desc>().unwrap();
        let mut rx = fixture.consumer::<Desc>().unwrap();
        assert_eq!(tx.free(), Ok(6));
        tx.push(desc(4)).unwrap();
        let mut out = [Desc::default(); 8];
        assert_eq!(rx.pop_slice(&mut out), Ok(3));
        assert_eq!(&out[..3], &[desc(2), desc(3), desc(4)]);
    }

    #[test]
    fn init_rejects_bad_arguments() {
        let region = OwnedRegion::new(4096);
        let size = region.len();
        let base = region.as_ptr();
        let init_with = |pointer: *mut u8, len: usize, capacity: u32| {
            // SAFETY: the pointers passed are null, or inside `region` with `len` bytes left.
            unsafe { init::<Desc>(pointer, len, capacity) }
        };
        assert_eq!(
            init_with(core::ptr::null_mut(), size, 4),
            Err(AttachError::NullRegion)
        );
        let misaligned = base.wrapping_add(64);
        assert_eq!(
            init_with(misaligned, size - 64, 4),
            Err(AttachError::Misaligned {
                address: misaligned as usize
            })
        );
        for capacity in [0, 3, 6, 1 << 25] {
            assert_eq!(
                init_with(base, size, capacity),
                Err(AttachError::BadCapacity(capacity))
            );
        }
        assert_eq!(
            init_with(base, 100, 4),
            Err(AttachError::RegionTooSmall {
                needed: RING_HEADER_SIZE,
                actual: 100
            })
        );
        assert_eq!(
            init_with(base, size, 256),
            Err(AttachError::RegionTooSmall {
                needed: 512 + 16 * 256,
                actual: size
            })
        );
        assert_eq!(init_with(base, size, 128), Ok(()));
        assert!(channel::<Desc>(5).is_err());
    }

    #[test]
    fn attach_rejects_bad_headers() {
        let fixture = Fixture::new::<Desc>(8);
        let len = fixture.region.len();
        assert!(fixture.producer::<Desc>().is_ok());
        assert_eq!(
            fixture.producer::<Desc32>().unwrap_err(),
            AttachError::DescriptorMismatch {
                expected: (32, 8),
                found: (16, 4)
            }
        );
        // SAFETY: the region is valid for `len` bytes.
        let short = unsafe { Consumer::<Desc>::attach(fixture.region.as_ptr(), len - 1) };
        assert_eq!(
            short.unwrap_err(),
            AttachError::RegionTooSmall {
                needed: len,
                actual: len - 1
            }
        );

        let cases: [(usize, u32, AttachError); 6] = [
            (0, 0xdead_beef, AttachError::BadMagic(0xdead_beef)),
            (4, 2, AttachError::BadVersion(2)),
            (8, 6, AttachError::BadCapacity(6)),
            (
                8,
                16,
                AttachError::BadGeometry {
                    field: "region_size",
                    value: 640,
                },
            ),
            (
                12,
                15,
                AttachError::DescriptorMismatch {
                    expected: (16, 4),
                    found: (15, 4),
                },
            ),
            (
                20,
                256,
                AttachError::BadGeometry {
                    field: "slots_offset",
                    value: 256,
                },
            ),
        ];
        for (offset, value, expected) in cases {
            let saved = fixture.word(offset).load(Ordering::Relaxed);
            fixture.poke(offset, value);
            assert_eq!(
                fixture.producer::<Desc>().unwrap_err(),
                expected,
                "offset {offset}"
            );
            assert_eq!(
                fixture.consumer::<Desc>().unwrap_err(),
                expected,
                "offset {offset}"
            );
            fixture.poke(offset, saved);
        }
        // Region size field (low word) too small for the capacity.
        fixture.poke(24, 520);
        assert_eq!(
            fixture.consumer::<Desc>().unwrap_err(),
            AttachError::BadGeometry {
                field: "region_size",
                value: 520
            }
        );
        fixture.poke(24, 640);

        fixture.poke(PRODUCER_INDEX, 9);
        assert_eq!(
            fixture.consumer::<Desc>().unwrap_err(),
            AttachError::BadIndices {
                producer: 9,
                consumer: 0
            }
        );
        fixture.poke(PRODUCER_INDEX, 0);
        fixture.poke(CONSUMER_INDEX, 1);
        assert_eq!(
            fixture.producer::<Desc>().unwrap_err(),
            AttachError::BadIndices {
                producer: 0,
                consumer: 1
            }
        );
    }

    #[test]
    fn consumer_detects_producer_index_running_ahead_and_stays_failed() {
        let fixture = Fixture::new::<Desc>(4);
        let mut rx = fixture.consumer::<Desc>().unwrap();
        fixture.poke(PRODUCER_INDEX, 5);
        let fault = PeerError {
            index: IndexKind::Producer,
            found: 5,
            low: 0,
            high: 4,
        };
        assert_eq!(rx.pop(), Err(fault));
        assert!(!fault.moved_backwards());
        // Even once the index looks sane again, the handle stays failed.
        fixture.poke(PRODUCER_INDEX, 1);
        assert_eq!(rx.pop(), Err(fault));
        assert_eq!(rx.peek(1).map(|b| b.len()), Err(fault));
        assert_eq!(rx.available(), Err(fault));
        assert!(!rx.prepare_to_sleep());
        assert_eq!(rx.fault(), Some(fault));
        assert!(fault.to_string().contains("ran ahead"), "{fault}");
    }

    #[test]
    fn consumer_detects_producer_index_moving_backwards() {
        let fixture = Fixture::new::<Desc>(4);
        let mut tx = fixture.producer::<Desc>().unwrap();
        let mut rx = fixture.consumer::<Desc>().unwrap();
        tx.push_slice(&[desc(0), desc(1), desc(2)]).unwrap();
        assert_eq!(rx.pop(), Ok(Some(desc(0))));
        fixture.poke(PRODUCER_INDEX, 2);
        // The consumer still has two cached descriptors and hands them out.
        assert_eq!(rx.pop(), Ok(Some(desc(1))));
        assert_eq!(rx.pop(), Ok(Some(desc(2))));
        let fault = PeerError {
            index: IndexKind::Producer,
            found: 2,
            low: 3,
            high: 7,
        };
        assert_eq!(rx.pop(), Err(fault));
        assert!(fault.moved_backwards());
        assert!(fault.to_string().contains("moved backwards"), "{fault}");
    }

    #[test]
    fn producer_detects_consumer_index_faults() {
        for (bad, backwards) in [(7u32, false), (u32::MAX, true), (1, true)] {
            let fixture = Fixture::new::<Desc>(4);
            let mut tx = fixture.producer::<Desc>().unwrap();
            let mut rx = fixture.consumer::<Desc>().unwrap();
            tx.push_slice(&[desc(0), desc(1), desc(2), desc(3)])
                .unwrap();
            assert_eq!(rx.pop(), Ok(Some(desc(0))));
            assert_eq!(rx.pop(), Ok(Some(desc(1))));
            assert_eq!(tx.free(), Ok(2));
            // Consumer index 2 seen; anything outside 2..=4 is a fault.
            fixture.poke(CONSUMER_INDEX, bad);
            tx.push_slice(&[desc(4), desc(5)]).unwrap();
            let fault = PeerError {
                index: IndexKind::Consumer,
                found: bad,
                low: 2,
                high: 6,
            };
            assert_eq!(tx.push(desc(6)), Err(PushError::Peer(fault)), "bad {bad}");
            assert_eq!(fault.moved_backwards(), backwards, "bad {bad}");
            fixture.poke(CONSUMER_INDEX, 3);
            assert_eq!(tx.push(desc(6)), Err(PushError::Peer(fault)));
            assert_eq!(tx.reserve(1).map(|b| b.len()), Err(fault));
            assert_eq!(tx.free(), Err(fault));
            assert!(!tx.prepare_to_sleep());
        }
    }

    #[test]
    fn scribbled_slots_are_just_values() {
        let fixture = Fixture::new::<Desc>(4);
        let mut rx = fixture.consumer::<Desc>().unwrap();
        for i in 0..16 {
            let byte = fixture.region.as_ptr().wrapping_add(RING_HEADER_SIZE + i);
            // SAFETY: inside the slots of the region.
            unsafe { byte.write(0xff) };
        }
        fixture.poke(PRODUCER_INDEX, 1);
        assert_eq!(
            rx.pop(),
            Ok(Some(Desc {
                offset: u32::MAX,
                len: u32::MAX,
                flags: u32::MAX,
                meta: u32::MAX
            }))
        );
    }

    #[test]
    fn consumer_wakeup_handshake() {
        let (mut tx, mut rx) = channel::<Desc>(4).unwrap();
        assert!(!tx.needs_wakeup());
        assert!(rx.prepare_to_sleep());
        assert!(tx.needs_wakeup());
        tx.push(desc(0)).unwrap();
        assert!(tx.needs_wakeup());
        rx.woke_up();
        assert!(!tx.needs_wakeup());
        // Work arrived before the consumer went to sleep: it must not sleep.
        assert!(!rx.prepare_to_sleep());
        assert!(!tx.needs_wakeup());
        assert_eq!(rx.pop(), Ok(Some(desc(0))));
        // Work published between the flag and the re-check.
        assert!(rx.prepare_to_sleep());
        assert_eq!(rx.stats().sleeps, 2);
        assert_eq!(tx.stats().wakeups_requested, 2);
        let state = {
            let region = rx.ring.header.cast::<u8>().as_ptr();
            // SAFETY: the region is live (both handles are) and at least `region_size` long.
            unsafe { inspect(region, region_size::<Desc>(4)) }.unwrap()
        };
        assert!(state.consumer_needs_wakeup && !state.producer_needs_wakeup);
        assert_eq!(
            (state.capacity, state.descriptor_size, state.len()),
            (4, 16, Some(0))
        );
    }

    #[test]
    fn producer_wakeup_handshake() {
        let (mut tx, mut rx) = channel::<Desc>(2).unwrap();
        assert!(!tx.prepare_to_sleep(), "ring has room");
        tx.push_slice(&[desc(0), desc(1)]).unwrap();
        assert!(!rx.needs_wakeup());
        assert!(tx.prepare_to_sleep());
        assert_eq!(rx.pop(), Ok(Some(desc(0))));
        assert!(rx.needs_wakeup());
        tx.woke_up();
        assert!(!rx.needs_wakeup());
        assert!(!tx.prepare_to_sleep(), "one slot free");
        assert_eq!(tx.stats().sleeps, 1);
        assert_eq!(rx.stats().wakeups_requested, 1);
    }

    #[test]
    fn errors_display() {
        let errors: [&dyn core::fmt::Display; 5] = [
            &AttachError::BadMagic(1),
            &AttachError::Misaligned { address: 64 },
            &AttachError::DescriptorMismatch {
                expected: (16, 4),
                found: (32, 8),
            },
            &PushError::Full,
            &PushError::Peer(PeerError {
                index: IndexKind::Consumer,
                found: 9,
                low: 0,
                high: 4,
            }),
        ];
        for error in errors {
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn threads_move_descriptors_in_order() {
        let count: u32 = if cfg!(miri) { 2_000 } else { 200_000 };
        let (mut tx, mut rx) = channel::<Desc>(16).unwrap();
        let producer = std::thread::spawn(move || {
            let mut next = 0;
            while next < count {
                if next % 7 == 0 {
                    let mut batch = tx.reserve(5).unwrap();
                    while next < count && batch.push(desc(next)).is_ok() {
                        next += 1;
                    }
                    batch.commit();
                } else if tx.push(desc(next)).is_ok() {
                    next += 1;
                }
                std::thread::yield_now();
            }
        });
        let mut expected = 0;
        while expected < count {
            let batch = rx.peek(3).unwrap();
            for got in &batch {
                assert_eq!(got, desc(expected));
                expected += 1;
            }
            batch.release();
            if let Some(got) = rx.pop().unwrap() {
                assert_eq!(got, desc(expected));
                expected += 1;
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.pop(), Ok(None));
    }
}
