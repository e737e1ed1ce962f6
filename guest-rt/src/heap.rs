//! The kernel heap: everything between the end of the kernel image and the boot stack.
//!
//! The linker script marks the image's end with `__kernel_end`; the boot info names the stack.
//! The heap serves `alloc` (smoltcp's socket buffers, the RDMA engine's tables) and the DMA
//! buffers of the virtio driver (guest-physical equals virtual: the host maps each segment
//! one to one).

use linked_list_allocator::LockedHeap;

#[cfg(target_os = "none")]
#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

#[cfg(not(target_os = "none"))]
static HEAP: LockedHeap = LockedHeap::empty();

unsafe extern "C" {
    static __kernel_end: u8;
}

/// Hands the memory between the kernel's end and `stack_base` to the allocator.
pub(crate) fn init(stack_base: u64) {
    let start = (&raw const __kernel_end) as usize;
    let end = stack_base as usize;
    if end <= start {
        return;
    }
    // SAFETY: `[start, end)` lies in this OS's segment (the kernel image ends at `start`, the
    // host put the stack at `end` above it), is mapped read-write, and nothing else uses it;
    // `init` runs once, on the boot path.
    unsafe { HEAP.lock().init(start as *mut u8, end - start) };
}

/// Bytes of heap in use and free.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.free())
}
