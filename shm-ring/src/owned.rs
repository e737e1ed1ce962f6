//! Heap-allocated stand-ins for shared memory (`std` feature), for tests, host tools and
//! benchmarks.

use core::ptr::NonNull;
use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};

/// Alignment of an [`OwnedRegion`]: a page, which satisfies [`crate::ring::RING_ALIGN`] and
/// [`crate::pool::POOL_ALIGN`].
pub const OWNED_REGION_ALIGN: usize = 4096;

/// A zeroed, page-aligned heap allocation that rings and pools can live in.
///
/// The rings and pools reach the memory only through raw pointers, atomics and volatile
/// accesses, as they do with real shared memory; this type only owns the allocation. The
/// `channel` and `new_owned` helpers share one between the handles with an `Arc`, so that it is
/// freed when the last handle is dropped.
#[derive(Debug)]
pub struct OwnedRegion {
    pointer: NonNull<u8>,
    layout: Layout,
    len: usize,
}

// SAFETY: the region is plain memory with no thread affinity; all accesses to it go through
// atomics or raw-pointer copies made by the ring and pool code.
unsafe impl Send for OwnedRegion {}
// SAFETY: as above; `OwnedRegion` itself offers no access to the bytes through `&self`.
unsafe impl Sync for OwnedRegion {}

impl OwnedRegion {
    /// Allocates `len` zeroed bytes aligned to [`OWNED_REGION_ALIGN`] (at least one byte is
    /// allocated, so the pointer is always valid).
    ///
    /// # Panics
    ///
    /// If `len` rounded up to the alignment overflows `isize`.
    pub fn new(len: usize) -> OwnedRegion {
        let layout = match Layout::from_size_align(len.max(1), OWNED_REGION_ALIGN) {
            Ok(layout) => layout,
            Err(_) => panic!("region of {len} bytes is too large"),
        };
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(pointer) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        OwnedRegion {
            pointer,
            layout,
            len,
        }
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.pointer.as_ptr()
    }

    /// The length in bytes, as asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region was asked for with a length of zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for OwnedRegion {
    fn drop(&mut self) {
        // SAFETY: `pointer` was returned by `alloc_zeroed` with exactly this layout.
        unsafe { dealloc(self.pointer.as_ptr(), self.layout) };
    }
}
