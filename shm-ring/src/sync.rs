//! The synchronisation primitives the rings are built from, swappable for loom's models.
//!
//! Under `--cfg loom` the atomics, the fence and the slot cell come from [loom], so that the
//! model tests in `tests/loom.rs` explore every interleaving and weak-memory outcome of the very
//! code that runs in the guests, and check every slot access for data races. Otherwise they are
//! the `core` atomics and a cell that is read and written with volatile accesses.
//!
//! [loom]: https://docs.rs/loom

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(not(loom))]
use core::mem::MaybeUninit;

use zerocopy::{FromBytes, IntoBytes};

/// One descriptor slot of a ring, in shared memory.
///
/// Both sides reach a slot only through [`Slot::read`] and [`Slot::write`], which copy the
/// descriptor by value: no reference to the descriptor itself is ever formed, so a peer that
/// writes a slot at the wrong time can tear the value a reader sees but cannot cause undefined
/// behaviour in the reader (every bit pattern is a valid descriptor, see `zerocopy::FromBytes`).
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct Slot<D>(core::cell::UnsafeCell<D>);

#[cfg(not(loom))]
impl<D: Copy + FromBytes + IntoBytes> Slot<D> {
    /// Whether descriptors are copied as 64-bit words (a multiple of 8 bytes long): two moves
    /// instead of four for a 16-byte descriptor. The slot array starts 128-byte aligned and its
    /// stride is then a multiple of 8, so every slot is 8-byte aligned.
    const BY_WORDS: bool = size_of::<D>().is_multiple_of(8);

    /// A slot holding `value`.
    pub(crate) const fn new(value: D) -> Slot<D> {
        Slot(core::cell::UnsafeCell::new(value))
    }

    /// Copies the descriptor out of the slot, with volatile reads: each byte is read exactly
    /// once, so the copy cannot change after the caller validated it.
    ///
    /// # Safety
    ///
    /// - The ring protocol must give the caller the slot: it lies between the consumer and the
    ///   producer index as the consumer last observed them (with Acquire).
    /// - The slot lies in a ring's slot array (so it is 8-byte aligned if `BY_WORDS`).
    #[inline(always)]
    pub(crate) unsafe fn read(&self) -> D {
        if !Self::BY_WORDS {
            // SAFETY: the pointer comes from a live `UnsafeCell` and is aligned for `D`. A racing
            // write by a misbehaving peer can only tear the copy, which the caller validates.
            return unsafe { self.0.get().read_volatile() };
        }
        let mut value = MaybeUninit::<D>::uninit();
        let source = self.0.get().cast::<u64>();
        let destination = value.as_mut_ptr().cast::<u64>();
        for i in 0..size_of::<D>() / 8 {
            // SAFETY: word `i` lies inside the slot, which is 8-byte aligned (caller contract).
            let word = unsafe { source.wrapping_add(i).read_volatile() };
            // SAFETY: word `i` lies inside the local `value` (which may be less aligned).
            unsafe { destination.wrapping_add(i).write_unaligned(word) };
        }
        // SAFETY: every byte of `value` was written above, and any bytes are a valid `D`
        // (`FromBytes`).
        unsafe { value.assume_init() }
    }

    /// Copies a descriptor into the slot, with volatile writes.
    ///
    /// # Safety
    ///
    /// - The ring protocol must give the caller the slot: it lies between the producer index and
    ///   the consumer index plus the capacity, as the producer last observed them (with
    ///   Acquire).
    /// - The slot lies in a ring's slot array (so it is 8-byte aligned if `BY_WORDS`).
    #[inline(always)]
    pub(crate) unsafe fn write(&self, value: D) {
        if !Self::BY_WORDS {
            // SAFETY: the pointer comes from a live `UnsafeCell` and is aligned for `D`; the
            // caller owns the slot, so no well-behaved party reads it concurrently.
            return unsafe { self.0.get().write_volatile(value) };
        }
        let source = (&raw const value).cast::<u64>();
        let destination = self.0.get().cast::<u64>();
        for i in 0..size_of::<D>() / 8 {
            // SAFETY: word `i` lies inside `value`, whose bytes are all initialised (`IntoBytes`:
            // no padding).
            let word = unsafe { source.wrapping_add(i).read_unaligned() };
            // SAFETY: word `i` lies inside the slot, which is 8-byte aligned (caller contract).
            unsafe { destination.wrapping_add(i).write_volatile(word) };
        }
    }
}

/// One descriptor slot of a ring (loom model: every access is checked for data races).
#[cfg(loom)]
pub(crate) struct Slot<D>(loom::cell::UnsafeCell<D>);

#[cfg(loom)]
impl<D: Copy + FromBytes + IntoBytes> Slot<D> {
    /// A slot holding `value`.
    pub(crate) fn new(value: D) -> Slot<D> {
        Slot(loom::cell::UnsafeCell::new(value))
    }

    /// Copies the descriptor out of the slot.
    ///
    /// # Safety
    ///
    /// As for the non-loom slot.
    pub(crate) unsafe fn read(&self) -> D {
        // SAFETY: loom checks that this read does not race with a write.
        self.0.with(|pointer| unsafe { pointer.read() })
    }

    /// Copies a descriptor into the slot.
    ///
    /// # Safety
    ///
    /// As for the non-loom slot.
    pub(crate) unsafe fn write(&self, value: D) {
        // SAFETY: loom checks that this write does not race with another access.
        self.0.with_mut(|pointer| unsafe { pointer.write(value) })
    }
}
