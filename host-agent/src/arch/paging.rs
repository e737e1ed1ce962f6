//! Per-OS page tables, built by the host and never mapped for the guest.
//!
//! Each OS gets its own 4-level identity map covering exactly: its GDT and boot info pages
//! (read-only), its own segment, the shared segment, and its devices. Everything else is absent,
//! so touching another OS's segment is a page fault in the guest. Large regions use 2 MiB
//! pages; anything not 2 MiB aligned uses 4 KiB pages. The tables live in the OS's system area
//! ([`Role::page_tables_address`]), which is itself not mapped.
//!
//! [`Role::page_tables_address`]: shm_ring::layout::Role::page_tables_address

use std::collections::BTreeMap;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

const SMALL: u64 = 0x1000;
const LARGE: u64 = 0x20_0000;

/// How a range is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Writes allowed.
    pub writable: bool,
    /// Instruction fetches allowed.
    pub executable: bool,
    /// Uncached (device memory).
    pub uncached: bool,
}

impl Access {
    /// Read-only data.
    pub const READ_ONLY: Access = Access {
        writable: false,
        executable: false,
        uncached: false,
    };
    /// Read-write data.
    pub const DATA: Access = Access {
        writable: true,
        executable: false,
        uncached: false,
    };
    /// Code and data.
    pub const CODE_AND_DATA: Access = Access {
        writable: true,
        executable: true,
        uncached: false,
    };
    /// Device registers.
    pub const DEVICE: Access = Access {
        writable: true,
        executable: false,
        uncached: true,
    };

    fn leaf_bits(self) -> u64 {
        let mut bits = PRESENT;
        if self.writable {
            bits |= WRITABLE;
        }
        if !self.executable {
            bits |= NO_EXECUTE;
        }
        if self.uncached {
            bits |= WRITE_THROUGH | CACHE_DISABLE;
        }
        bits
    }
}

/// Errors building page tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PagingError {
    /// The range is not 4 KiB aligned or wraps.
    #[error("range {address:#x}+{size:#x} is not page aligned")]
    Unaligned {
        /// Start.
        address: u64,
        /// Size.
        size: u64,
    },
    /// The space reserved for tables is exhausted.
    #[error("page tables need more than the {0} bytes reserved for them")]
    OutOfSpace(u64),
    /// The range overlaps a range already mapped.
    #[error("address {0:#x} is already mapped")]
    AlreadyMapped(u64),
    /// The address is not canonical for 4-level paging.
    #[error("address {0:#x} is beyond 4-level paging")]
    NotCanonical(u64),
}

/// Builds one address space in a reserved range of guest-physical memory.
#[derive(Debug)]
pub struct PageTableBuilder {
    base: u64,
    capacity: u64,
    tables: BTreeMap<u64, Box<[u64; 512]>>,
    next: u64,
}

impl PageTableBuilder {
    /// An empty address space whose tables go at `base` (the PML4 first), at most `capacity`
    /// bytes.
    pub fn new(base: u64, capacity: u64) -> Result<PageTableBuilder, PagingError> {
        let mut builder = PageTableBuilder {
            base,
            capacity,
            tables: BTreeMap::new(),
            next: base,
        };
        builder.allocate()?;
        Ok(builder)
    }

    /// Guest-physical address of the PML4 (the value for CR3).
    pub fn root(&self) -> u64 {
        self.base
    }

    fn allocate(&mut self) -> Result<u64, PagingError> {
        if self.next + SMALL > self.base + self.capacity {
            return Err(PagingError::OutOfSpace(self.capacity));
        }
        let address = self.next;
        self.next += SMALL;
        self.tables.insert(address, Box::new([0; 512]));
        Ok(address)
    }

    /// Returns the table the entry `index` of `table` points to, creating it if needed.
    fn next_level(&mut self, table: u64, index: usize) -> Result<u64, PagingError> {
        let entry = self.tables[&table][index];
        if entry & PRESENT != 0 {
            if entry & HUGE != 0 {
                return Err(PagingError::AlreadyMapped(0));
            }
            return Ok(entry & ADDRESS_MASK);
        }
        let child = self.allocate()?;
        if let Some(parent) = self.tables.get_mut(&table) {
            parent[index] = child | PRESENT | WRITABLE;
        }
        Ok(child)
    }

    fn set_leaf(
        &mut self,
        table: u64,
        index: usize,
        value: u64,
        virt: u64,
    ) -> Result<(), PagingError> {
        let Some(entries) = self.tables.get_mut(&table) else {
            return Err(PagingError::OutOfSpace(self.capacity));
        };
        if entries[index] & PRESENT != 0 {
            return Err(PagingError::AlreadyMapped(virt));
        }
        entries[index] = value;
        Ok(())
    }

    /// Identity-maps `[address, address + size)` with `access`.
    pub fn identity_map(
        &mut self,
        address: u64,
        size: u64,
        access: Access,
    ) -> Result<(), PagingError> {
        if !address.is_multiple_of(SMALL)
            || !size.is_multiple_of(SMALL)
            || address.checked_add(size).is_none()
        {
            return Err(PagingError::Unaligned { address, size });
        }
        let end = address + size;
        if end > 1 << 47 {
            return Err(PagingError::NotCanonical(end));
        }
        let mut virt = address;
        while virt < end {
            let pml4 = self.base;
            let pdpt = self.next_level(pml4, index(virt, 39))?;
            let directory = self.next_level(pdpt, index(virt, 30))?;
            if virt.is_multiple_of(LARGE) && end - virt >= LARGE {
                self.set_leaf(
                    directory,
                    index(virt, 21),
                    virt | HUGE | access.leaf_bits(),
                    virt,
                )?;
                virt += LARGE;
            } else {
                let table = self
                    .next_level(directory, index(virt, 21))
                    .map_err(|_| PagingError::AlreadyMapped(virt))?;
                self.set_leaf(table, index(virt, 12), virt | access.leaf_bits(), virt)?;
                virt += SMALL;
            }
        }
        Ok(())
    }

    /// Walks the tables like the MMU: the physical address and access of `virt`, if mapped.
    pub fn translate(&self, virt: u64) -> Option<(u64, Access)> {
        let mut table = self.base;
        for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
            let entry = self.tables.get(&table)?[index(virt, shift)];
            if entry & PRESENT == 0 {
                return None;
            }
            let leaf = level == 3 || (level == 2 && entry & HUGE != 0);
            if leaf {
                let page_size = 1u64 << shift;
                let physical = (entry & ADDRESS_MASK & !(page_size - 1)) | (virt & (page_size - 1));
                let access = Access {
                    writable: entry & WRITABLE != 0,
                    executable: entry & NO_EXECUTE == 0,
                    uncached: entry & CACHE_DISABLE != 0,
                };
                return Some((physical, access));
            }
            table = entry & ADDRESS_MASK;
        }
        None
    }

    /// The tables as (guest-physical address, page bytes), to be written into guest memory.
    pub fn pages(&self) -> impl Iterator<Item = (u64, [u8; 4096])> + '_ {
        self.tables.iter().map(|(address, entries)| {
            let mut bytes = [0u8; 4096];
            for (chunk, entry) in bytes.chunks_exact_mut(8).zip(entries.iter()) {
                chunk.copy_from_slice(&entry.to_le_bytes());
            }
            (*address, bytes)
        })
    }
}

fn index(virt: u64, shift: u32) -> usize {
    ((virt >> shift) & 0x1ff) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_ring::layout::{LAPIC_BASE, MemoryMap, Role};

    #[test]
    fn maps_large_and_small_pages() {
        let mut builder = PageTableBuilder::new(0x12000, 0xE000).unwrap();
        builder
            .identity_map(0x100_0000, 4 << 20, Access::CODE_AND_DATA)
            .unwrap();
        builder
            .identity_map(0x11000, 0x1000, Access::READ_ONLY)
            .unwrap();
        builder
            .identity_map(LAPIC_BASE, 0x1000, Access::DEVICE)
            .unwrap();
        assert_eq!(
            builder.translate(0x100_0000 + 0x1234),
            Some((0x100_1234, Access::CODE_AND_DATA))
        );
        assert_eq!(
            builder.translate(0x13f_ffff),
            Some((0x13f_ffff, Access::CODE_AND_DATA))
        );
        assert_eq!(builder.translate(0x140_0000), None);
        assert_eq!(
            builder.translate(0x11008),
            Some((0x11008, Access::READ_ONLY))
        );
        assert_eq!(
            builder.translate(0x12000),
            None,
            "page tables stay unmapped"
        );
        assert_eq!(
            builder.translate(LAPIC_BASE + 0x300),
            Some((LAPIC_BASE + 0x300, Access::DEVICE))
        );
    }

    #[test]
    fn os_a_cannot_see_segment_b() {
        let map = MemoryMap::default();
        let mut builder = PageTableBuilder::new(Role::A.page_tables_address(), 0xE000).unwrap();
        builder
            .identity_map(
                map.segment_a.base,
                map.segment_a.size,
                Access::CODE_AND_DATA,
            )
            .unwrap();
        builder
            .identity_map(map.shared.base, map.shared.size, Access::DATA)
            .unwrap();
        assert!(builder.translate(map.segment_b.base).is_none());
        assert!(
            builder
                .translate(map.segment_b.base + map.segment_b.size - 1)
                .is_none()
        );
        assert!(builder.translate(map.shared.base + 5).is_some());
        // Tables fit the reserved space with room to spare.
        assert!(builder.pages().count() <= 8);
    }

    #[test]
    fn rejects_bad_requests() {
        let mut builder = PageTableBuilder::new(0x1000, 0x3000).unwrap();
        assert!(matches!(
            builder.identity_map(0x1001, 0x1000, Access::DATA),
            Err(PagingError::Unaligned { .. })
        ));
        assert!(matches!(
            builder.identity_map(u64::MAX - 0xfff, 0x2000, Access::DATA),
            Err(PagingError::Unaligned { .. })
        ));
        assert!(matches!(
            builder.identity_map(1 << 48, 0x1000, Access::DATA),
            Err(PagingError::NotCanonical(_))
        ));
        builder
            .identity_map(0x40_0000, 0x20_0000, Access::DATA)
            .unwrap();
        assert!(matches!(
            builder.identity_map(0x40_0000, 0x1000, Access::DATA),
            Err(PagingError::AlreadyMapped(_))
        ));
        // The three tables are used up: mapping under another PML4 entry fails cleanly.
        assert_eq!(
            builder.identity_map(0x80_0000_0000, 0x1000, Access::DATA),
            Err(PagingError::OutOfSpace(0x3000))
        );
    }
}
