//! Guest memory: one memfd, mapped once into the agent, split into the VM's regions.
//!
//! Guest-physical addresses ([`GuestAddress`]) and host pointers never mix: every access goes
//! through [`GuestMemory`], which checks that the whole range lies inside one region and then
//! copies through raw pointers. Guest memory is shared with running vCPUs, so nothing here
//! hands out a `&[u8]` into it. The memfd lets snapshot and migration back-ends map the same
//! memory.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use shm_ring::layout::Region;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestAddress(pub u64);

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Errors of guest memory set-up and access.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The memfd could not be created or sized.
    #[error("cannot create guest memory of {size} bytes")]
    Create {
        /// Total bytes asked for.
        size: u64,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The memory could not be mapped.
    #[error("cannot map guest memory")]
    Map(#[source] nix::Error),
    /// An access touched memory outside every region.
    #[error("guest range {address}+{len} is outside guest memory")]
    OutOfRange {
        /// First byte.
        address: GuestAddress,
        /// Length.
        len: u64,
    },
    /// Regions overlap or are not page aligned.
    #[error("guest memory region {0:#x?} overlaps another or is not page aligned")]
    BadRegion(Region),
}

/// One contiguous range of guest-physical memory and where it lives in the memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest-physical range.
    pub guest: Region,
    /// Offset of the range in the memfd (and in the host mapping).
    pub file_offset: u64,
}

/// All of a VM's memory.
#[derive(Debug)]
pub struct GuestMemory {
    memfd: OwnedFd,
    mapping: NonNull<u8>,
    mapping_size: usize,
    regions: Vec<MemoryRegion>,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access goes through
// bounds-checked volatile copies, which are sound from any thread.
unsafe impl Send for GuestMemory {}
// SAFETY: as above: no method hands out references into the mapping.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Creates memory for `guest_regions` (page-aligned, non-overlapping), zero-filled.
    pub fn new(guest_regions: &[Region]) -> Result<GuestMemory, MemoryError> {
        let mut regions = Vec::with_capacity(guest_regions.len());
        let mut file_offset = 0u64;
        for (index, region) in guest_regions.iter().enumerate() {
            let aligned = region.base % 4096 == 0 && region.size % 4096 == 0 && region.size > 0;
            let overlaps = guest_regions[..index]
                .iter()
                .any(|other| other.overlaps(region));
            if !aligned || overlaps || region.end().is_none() {
                return Err(MemoryError::BadRegion(*region));
            }
            regions.push(MemoryRegion {
                guest: *region,
                file_offset,
            });
            file_offset += region.size;
        }
        let size = file_offset;
        let memfd = memfd_create(c"duovm-guest-memory", MFdFlags::MFD_CLOEXEC)
            .map_err(|source| MemoryError::Create { size, source })?;
        nix::unistd::ftruncate(&memfd, size as i64)
            .map_err(|source| MemoryError::Create { size, source })?;
        let length = std::num::NonZeroUsize::new(size as usize).ok_or(MemoryError::Create {
            size,
            source: nix::Error::EINVAL,
        })?;
        // SAFETY: a fresh shared mapping of the whole memfd, at an address the kernel picks; it
        // aliases no Rust object and is unmapped only in `drop`.
        let mapping = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE,
                &memfd,
                0,
            )
        }
        .map_err(MemoryError::Map)?;
        Ok(GuestMemory {
            memfd,
            mapping: mapping.cast(),
            mapping_size: size as usize,
            regions,
        })
    }

    /// The regions, in the order they were given.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions
    }

    /// The memfd backing all regions.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// Host address of a region's first byte (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_address(&self, region: &MemoryRegion) -> u64 {
        self.mapping.as_ptr() as u64 + region.file_offset
    }

    /// Offset into the mapping of `[address, address + len)`, if it lies inside one region.
    fn offset_of(&self, address: GuestAddress, len: u64) -> Result<usize, MemoryError> {
        self.regions
            .iter()
            .find(|region| region.guest.contains_range(address.0, len))
            .map(|region| (region.file_offset + (address.0 - region.guest.base)) as usize)
            .ok_or(MemoryError::OutOfRange { address, len })
    }

    /// A host pointer to `[address, address + len)`, for atomics on shared structures.
    ///
    /// The pointer stays valid as long as `self` lives; callers access it only with atomic or
    /// volatile operations.
    pub fn host_pointer(&self, address: GuestAddress, len: u64) -> Result<*mut u8, MemoryError> {
        let offset = self.offset_of(address, len)?;
        // SAFETY: `offset + len` lies inside the mapping (checked by `offset_of`).
        Ok(unsafe { self.mapping.as_ptr().add(offset) })
    }

    /// Copies guest memory at `address` into `buffer`.
    ///
    /// A vCPU may write the same bytes concurrently; the copy may then be torn, which callers
    /// treat like any other untrusted guest data.
    pub fn read(&self, address: GuestAddress, buffer: &mut [u8]) -> Result<(), MemoryError> {
        let source = self.host_pointer(address, buffer.len() as u64)?;
        // SAFETY: `source..source + buffer.len()` is inside the mapping (checked by
        // `host_pointer`) and cannot overlap `buffer`, which is host memory.
        unsafe { std::ptr::copy_nonoverlapping(source, buffer.as_mut_ptr(), buffer.len()) };
        Ok(())
    }

    /// Copies `data` into guest memory at `address`.
    pub fn write(&self, address: GuestAddress, data: &[u8]) -> Result<(), MemoryError> {
        let destination = self.host_pointer(address, data.len() as u64)?;
        // SAFETY: the destination range is inside the mapping and cannot overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), destination, data.len()) };
        Ok(())
    }

    /// Fills `[address, address + len)` with zeros.
    pub fn zero(&self, address: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let destination = self.host_pointer(address, len)?;
        // SAFETY: the range is inside the mapping.
        unsafe { std::ptr::write_bytes(destination, 0, len as usize) };
        Ok(())
    }

    /// Reads a plain-data object.
    pub fn read_obj<T: FromBytes + IntoBytes>(
        &self,
        address: GuestAddress,
    ) -> Result<T, MemoryError> {
        let mut value = T::new_zeroed();
        self.read(address, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Writes a plain-data object.
    pub fn write_obj<T: IntoBytes + Immutable>(
        &self,
        address: GuestAddress,
        value: &T,
    ) -> Result<(), MemoryError> {
        self.write(address, value.as_bytes())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this size and nothing refers to it once
        // `self` is dropped (vCPUs and KVM slots are torn down first by their owners).
        let _ = unsafe { munmap(self.mapping.cast(), self.mapping_size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemory {
        GuestMemory::new(&[Region::new(0, 0x10000), Region::new(0x100000, 0x2000)]).unwrap()
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let memory = memory();
        memory.write(GuestAddress(0x100ff0), &[1, 2, 3]).unwrap();
        let mut buffer = [0u8; 3];
        memory.read(GuestAddress(0x100ff0), &mut buffer).unwrap();
        assert_eq!(buffer, [1, 2, 3]);
        memory.write_obj(GuestAddress(8), &0x1122_3344_u32).unwrap();
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(8)).unwrap(),
            0x1122_3344
        );
    }

    #[test]
    fn rejects_ranges_outside_or_across_regions() {
        let memory = memory();
        let mut buffer = [0u8; 16];
        assert!(memory.read(GuestAddress(0x10000 - 8), &mut buffer).is_err());
        assert!(memory.read(GuestAddress(0x20000), &mut buffer).is_err());
        assert!(
            memory
                .read(GuestAddress(u64::MAX - 4), &mut buffer)
                .is_err()
        );
        assert!(memory.write(GuestAddress(0x101ff8), &buffer).is_err());
    }

    #[test]
    fn rejects_bad_layouts() {
        assert!(GuestMemory::new(&[Region::new(0, 0x1000), Region::new(0x800, 0x1000)]).is_err());
        assert!(GuestMemory::new(&[Region::new(1, 0x1000)]).is_err());
    }
}
