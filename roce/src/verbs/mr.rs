//! Memory regions: the bytes, their virtual address range, their keys and access rights.
//!
//! # Keys
//!
//! As in rdma_rxe (`rxe_mr.c`), a key is `index << 8 | key byte`: the index names a slot of
//! the region table, the key byte is drawn from the device's generator each time the slot is
//! (re)used and differs from the slot's previous one. An lkey and its rkey are equal; a region
//! without remote access has rkey 0, which names nothing. A stale key (of a deregistered
//! region whose slot was reused) or a guessed one fails the lookup, and a failed remote lookup
//! sends the peer a remote access error NAK, which ends its connection: a peer gets one guess.
//!
//! # Addresses
//!
//! A region covers `[addr, addr + length)` in a virtual address space of the device; its byte
//! `i` is at address `addr + i`. The device picks `addr` ([`crate::verbs::Device::reg_mr`],
//! page-aligned, ranges never reused) or the application does
//! ([`crate::verbs::Device::reg_mr_at`], for example to mirror a peer's layout). Ranges of
//! live regions never overlap, so an address names at most one byte.

use super::types::{AccessFlags, MrHandle, PdHandle, Sge, VerbsError};
use crate::icrc::Icrc;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

/// A registered memory region (`struct ibv_mr` with its memory).
pub struct MemoryRegion {
    pd: PdHandle,
    lkey: u32,
    rkey: u32,
    addr: u64,
    access: AccessFlags,
    data: Box<[u8]>,
}

impl core::fmt::Debug for MemoryRegion {
    /// The region's numbers, not its bytes.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("pd", &self.pd)
            .field("lkey", &self.lkey)
            .field("rkey", &self.rkey)
            .field("addr", &self.addr)
            .field("len", &self.data.len())
            .field("access", &self.access)
            .finish()
    }
}

/// The numbers of a region an application hands out (`struct ibv_mr`'s fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MrInfo {
    /// Virtual address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub length: u64,
    /// Local key, for SGEs.
    pub lkey: u32,
    /// Remote key, for a peer's RDMA and atomic requests (0 without remote access).
    pub rkey: u32,
}

impl MrInfo {
    /// The handle of the region.
    pub const fn handle(&self) -> MrHandle {
        MrHandle(self.lkey)
    }

    /// An SGE for `length` bytes at byte `offset` of the region.
    pub const fn sge(&self, offset: u64, length: u32) -> Sge {
        Sge {
            addr: self.addr.wrapping_add(offset),
            length,
            lkey: self.lkey,
        }
    }
}

/// Why a region access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MrFault {
    /// The key names no region (deregistered meanwhile).
    Key,
    /// The range leaves the region, or the region lacks the access.
    Range,
}

impl MemoryRegion {
    /// Virtual address of the first byte.
    pub const fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The local key.
    pub const fn lkey(&self) -> u32 {
        self.lkey
    }

    /// The remote key (0 without remote access).
    pub const fn rkey(&self) -> u32 {
        self.rkey
    }

    /// The access rights given at registration.
    pub const fn access(&self) -> AccessFlags {
        self.access
    }

    /// The protection domain.
    pub const fn pd(&self) -> PdHandle {
        self.pd
    }

    /// The numbers to hand out.
    pub fn info(&self) -> MrInfo {
        MrInfo {
            addr: self.addr,
            length: self.data.len() as u64,
            lkey: self.lkey,
            rkey: self.rkey,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Copies `data` to byte `offset`; [`VerbsError::SgeOutOfRange`] if it does not fit.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), VerbsError> {
        let end = offset
            .checked_add(data.len())
            .ok_or(VerbsError::SgeOutOfRange)?;
        self.data
            .get_mut(offset..end)
            .ok_or(VerbsError::SgeOutOfRange)?
            .copy_from_slice(data);
        Ok(())
    }

    /// Copies the bytes at `offset` into `buffer`; [`VerbsError::SgeOutOfRange`] if the
    /// region ends first.
    pub fn read(&self, offset: usize, buffer: &mut [u8]) -> Result<(), VerbsError> {
        let end = offset
            .checked_add(buffer.len())
            .ok_or(VerbsError::SgeOutOfRange)?;
        buffer.copy_from_slice(
            self.data
                .get(offset..end)
                .ok_or(VerbsError::SgeOutOfRange)?,
        );
        Ok(())
    }

    /// The byte range of `[addr, addr + length)` inside the data, if the region covers it.
    pub(crate) fn range(&self, addr: u64, length: u64) -> Option<Range<usize>> {
        let start = addr.checked_sub(self.addr)?;
        let end = start.checked_add(length)?;
        if end > self.data.len() as u64 {
            return None;
        }
        Some(start as usize..end as usize)
    }
}

/// The first virtual address the device hands out, and the gap it leaves between regions.
const FIRST_ADDRESS: u64 = 0x0000_1000_0000_0000;
const PAGE: u64 = 4096;

/// The region table of a device.
#[derive(Debug)]
pub(crate) struct MrTable {
    /// Slot `i` holds the region whose key index is `i + 1`.
    slots: Vec<Option<MemoryRegion>>,
    /// The key byte each slot used last.
    last_key: Vec<u8>,
    free: Vec<usize>,
    live: usize,
    limit: usize,
    next_address: u64,
}

impl MrTable {
    pub(crate) fn new(limit: usize) -> Self {
        MrTable {
            slots: Vec::new(),
            last_key: Vec::new(),
            free: Vec::new(),
            live: 0,
            limit,
            next_address: FIRST_ADDRESS,
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Whether some live region belongs to `pd`.
    pub(crate) fn uses_pd(&self, pd: PdHandle) -> bool {
        self.slots.iter().flatten().any(|mr| mr.pd == pd)
    }

    /// Registers a region of `length` zeroed bytes; `addr: None` lets the table pick the
    /// address. `key_byte` is a fresh random byte.
    pub(crate) fn register(
        &mut self,
        pd: PdHandle,
        addr: Option<u64>,
        length: u64,
        access: AccessFlags,
        key_byte: u8,
    ) -> Result<MrHandle, VerbsError> {
        if self.live >= self.limit {
            return Err(VerbsError::NoResources);
        }
        let size = usize::try_from(length).map_err(|_| VerbsError::NoResources)?;
        let addr = match addr {
            Some(addr) => {
                let end = addr.checked_add(length).ok_or(VerbsError::AddressInUse)?;
                let overlaps = self.slots.iter().flatten().any(|mr| {
                    let other_end = mr.addr + mr.data.len() as u64;
                    addr < other_end && mr.addr < end
                });
                if overlaps {
                    return Err(VerbsError::AddressInUse);
                }
                addr
            }
            None => {
                let addr = self.next_address;
                let span = length.div_ceil(PAGE).max(1) * PAGE + PAGE;
                self.next_address = self
                    .next_address
                    .checked_add(span)
                    .ok_or(VerbsError::NoResources)?;
                addr
            }
        };
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                if self.slots.len() >= 0x00ff_fffe {
                    return Err(VerbsError::NoResources);
                }
                self.slots.push(None);
                self.last_key.push(0);
                self.slots.len() - 1
            }
        };
        let key_byte = if key_byte == self.last_key[index] {
            key_byte.wrapping_add(1)
        } else {
            key_byte
        };
        self.last_key[index] = key_byte;
        let lkey = ((index as u32 + 1) << 8) | u32::from(key_byte);
        let rkey = if access.0 & AccessFlags::REMOTE.0 != 0 {
            lkey
        } else {
            0
        };
        self.slots[index] = Some(MemoryRegion {
            pd,
            lkey,
            rkey,
            addr,
            access,
            data: vec![0u8; size].into_boxed_slice(),
        });
        self.live += 1;
        Ok(MrHandle(lkey))
    }

    pub(crate) fn deregister(&mut self, handle: MrHandle) -> Result<(), VerbsError> {
        let index = Self::index(handle.0).ok_or(VerbsError::InvalidHandle)?;
        match self.slots.get_mut(index) {
            Some(slot) if slot.as_ref().is_some_and(|mr| mr.lkey == handle.0) => {
                *slot = None;
                self.free.push(index);
                self.live -= 1;
                Ok(())
            }
            _ => Err(VerbsError::InvalidHandle),
        }
    }

    const fn index(key: u32) -> Option<usize> {
        match (key >> 8).checked_sub(1) {
            Some(index) => Some(index as usize),
            None => None,
        }
    }

    /// The region whose lkey is `lkey`.
    pub(crate) fn get(&self, lkey: u32) -> Option<&MemoryRegion> {
        let mr = self.slots.get(Self::index(lkey)?)?.as_ref()?;
        (mr.lkey == lkey).then_some(mr)
    }

    /// The region whose lkey is `lkey`, mutably.
    pub(crate) fn get_mut(&mut self, lkey: u32) -> Option<&mut MemoryRegion> {
        let mr = self.slots.get_mut(Self::index(lkey)?)?.as_mut()?;
        (mr.lkey == lkey).then_some(mr)
    }

    /// Checks an SGE of a work request posted on a QP of `pd`; `write` when the device will
    /// write into it.
    pub(crate) fn check_sge(&self, sge: &Sge, pd: PdHandle, write: bool) -> Result<(), VerbsError> {
        let mr = self.get(sge.lkey).ok_or(VerbsError::InvalidLkey)?;
        if mr.pd != pd {
            return Err(VerbsError::InvalidLkey);
        }
        mr.range(sge.addr, u64::from(sge.length))
            .ok_or(VerbsError::SgeOutOfRange)?;
        if write && !mr.access.contains(AccessFlags::LOCAL_WRITE) {
            return Err(VerbsError::AccessDenied);
        }
        Ok(())
    }

    /// The region a peer names with `rkey` for `[va, va + length)` with `access`, if it belongs
    /// to `pd`, has the access and covers the range; returns its lkey and the byte range.
    pub(crate) fn remote(
        &self,
        rkey: u32,
        pd: PdHandle,
        va: u64,
        length: u64,
        access: AccessFlags,
    ) -> Option<(u32, Range<usize>)> {
        if rkey == 0 {
            return None;
        }
        let mr = self.slots.get(Self::index(rkey)?)?.as_ref()?;
        if mr.rkey != rkey || mr.pd != pd || !mr.access.contains(access) {
            return None;
        }
        Some((mr.lkey, mr.range(va, length)?))
    }

    /// The bytes `range` of the region `lkey` (from [`MrTable::remote`]).
    pub(crate) fn bytes(&self, lkey: u32, range: Range<usize>) -> Option<&[u8]> {
        self.get(lkey)?.data.get(range)
    }

    /// The bytes `range` of the region `lkey`, mutably.
    pub(crate) fn bytes_mut(&mut self, lkey: u32, range: Range<usize>) -> Option<&mut [u8]> {
        self.get_mut(lkey)?.data.get_mut(range)
    }

    /// Copies the bytes from `offset` of the buffer the SGEs describe into `destination`,
    /// folding them into `icrc`.
    pub(crate) fn gather(
        &self,
        sges: &[Sge],
        offset: u64,
        destination: &mut [u8],
        icrc: &mut Icrc,
    ) -> Result<(), MrFault> {
        let mut skip = offset;
        let mut done = 0;
        for sge in sges {
            if done == destination.len() {
                break;
            }
            let length = u64::from(sge.length);
            if skip >= length {
                skip -= length;
                continue;
            }
            let take = (length - skip).min((destination.len() - done) as u64);
            let mr = self.get(sge.lkey).ok_or(MrFault::Key)?;
            let range = mr
                .range(sge.addr.wrapping_add(skip), take)
                .ok_or(MrFault::Range)?;
            let take = take as usize;
            icrc.update_copy(&mut destination[done..done + take], &mr.data[range]);
            done += take;
            skip = 0;
        }
        if done == destination.len() {
            Ok(())
        } else {
            Err(MrFault::Range)
        }
    }

    /// Copies `source` to byte `offset` of the buffer the SGEs describe (which must have local
    /// write access).
    pub(crate) fn scatter(
        &mut self,
        sges: &[Sge],
        offset: u64,
        source: &[u8],
    ) -> Result<(), MrFault> {
        let mut skip = offset;
        let mut done = 0;
        for sge in sges {
            if done == source.len() {
                break;
            }
            let length = u64::from(sge.length);
            if skip >= length {
                skip -= length;
                continue;
            }
            let take = (length - skip).min((source.len() - done) as u64);
            let mr = self.get_mut(sge.lkey).ok_or(MrFault::Key)?;
            if !mr.access.contains(AccessFlags::LOCAL_WRITE) {
                return Err(MrFault::Range);
            }
            let range = mr
                .range(sge.addr.wrapping_add(skip), take)
                .ok_or(MrFault::Range)?;
            let take = take as usize;
            mr.data[range].copy_from_slice(&source[done..done + take]);
            done += take;
            skip = 0;
        }
        if done == source.len() {
            Ok(())
        } else {
            Err(MrFault::Range)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_when_a_slot_is_reused() {
        let mut table = MrTable::new(8);
        let pd = PdHandle(1);
        let first = table
            .register(pd, None, 100, AccessFlags::ALL, 0x42)
            .unwrap();
        assert_eq!(first.0, 0x142);
        table.deregister(first).unwrap();
        assert!(table.get(first.0).is_none());
        let second = table
            .register(pd, None, 100, AccessFlags::ALL, 0x42)
            .unwrap();
        assert_eq!(second.0 >> 8, 1, "slot reused");
        assert_ne!(second, first, "with another key byte");
        assert!(table.get(first.0).is_none());
        assert_eq!(table.deregister(first), Err(VerbsError::InvalidHandle));
    }

    #[test]
    fn rkey_only_with_remote_access() {
        let mut table = MrTable::new(8);
        let pd = PdHandle(1);
        let local = table
            .register(pd, None, 64, AccessFlags::LOCAL_WRITE, 1)
            .unwrap();
        assert_eq!(table.get(local.0).unwrap().rkey(), 0);
        assert!(
            table
                .remote(0, pd, 0, 0, AccessFlags::REMOTE_READ)
                .is_none()
        );
        let remote = table
            .register(pd, None, 64, AccessFlags::REMOTE_READ, 1)
            .unwrap();
        let mr = table.get(remote.0).unwrap();
        let (rkey, addr) = (mr.rkey(), mr.addr());
        assert_eq!(rkey, remote.0);
        assert_eq!(
            table.remote(rkey, pd, addr + 8, 56, AccessFlags::REMOTE_READ),
            Some((remote.0, 8..64))
        );
        assert!(
            table
                .remote(rkey, pd, addr + 8, 57, AccessFlags::REMOTE_READ)
                .is_none()
        );
        assert!(
            table
                .remote(rkey, pd, addr, 8, AccessFlags::REMOTE_WRITE)
                .is_none()
        );
        assert!(
            table
                .remote(rkey, PdHandle(2), addr, 8, AccessFlags::REMOTE_READ)
                .is_none()
        );
        assert!(
            table
                .remote(rkey, pd, addr.wrapping_sub(1), 8, AccessFlags::REMOTE_READ)
                .is_none()
        );
    }

    #[test]
    fn chosen_addresses_must_not_overlap() {
        let mut table = MrTable::new(8);
        let pd = PdHandle(1);
        table
            .register(pd, Some(0x1000), 0x1000, AccessFlags::ALL, 1)
            .unwrap();
        assert_eq!(
            table.register(pd, Some(0x1fff), 2, AccessFlags::ALL, 1),
            Err(VerbsError::AddressInUse)
        );
        assert_eq!(
            table.register(pd, Some(u64::MAX), 2, AccessFlags::ALL, 1),
            Err(VerbsError::AddressInUse)
        );
        table
            .register(pd, Some(0x2000), 0x1000, AccessFlags::ALL, 1)
            .unwrap();
    }

    #[test]
    fn gather_and_scatter_cross_sges() {
        let mut table = MrTable::new(8);
        let pd = PdHandle(1);
        let a = table
            .register(pd, None, 16, AccessFlags::LOCAL_WRITE, 1)
            .unwrap();
        let b = table
            .register(pd, None, 16, AccessFlags::LOCAL_WRITE, 2)
            .unwrap();
        let info_a = table.get(a.0).unwrap().info();
        let info_b = table.get(b.0).unwrap().info();
        let sges = [info_a.sge(10, 6), info_b.sge(0, 16)];
        table.scatter(&sges, 4, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(&table.get(a.0).unwrap().as_slice()[14..], &[1, 2]);
        assert_eq!(
            &table.get(b.0).unwrap().as_slice()[..6],
            &[3, 4, 5, 6, 7, 8]
        );
        let mut out = [0u8; 8];
        let mut icrc = Icrc::begin_ipv4(&[0; 20], &[0; 8], &[0; 12]);
        table.gather(&sges, 4, &mut out, &mut icrc).unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            table.scatter(&sges, 20, &[0; 3]),
            Err(MrFault::Range),
            "past the end of the SGEs"
        );
        table.deregister(b).unwrap();
        assert_eq!(
            table.gather(&sges, 0, &mut [0; 10], &mut icrc),
            Err(MrFault::Key)
        );
    }
}
