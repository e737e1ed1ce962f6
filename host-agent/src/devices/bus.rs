//! A bus mapping guest-physical ranges to devices, so the supervisor can route MMIO exits.
//!
//! Devices see only [`BusDevice::read`] and [`BusDevice::write`] with an offset into their own
//! range: they know nothing of KVM or of where they are mapped. The bus zero-fills every read
//! buffer before the device sees it, so a device that ignores an access answers zero.
//!
//! Each device sits behind its own `Mutex`, shared with whatever else drives it (a virtio device's
//! queue worker, for example). A poisoned lock is taken over rather than propagated: the device's
//! state is plain data, and the VMM must not panic because another thread did.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device on the bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range. `data` arrives
    /// zero-filled; bytes the device does not write read as zero.
    fn read(&mut self, offset: u64, data: &mut [u8]);

    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a range could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// First address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// First address.
        base: u64,
        /// Length.
        len: u64,
        /// First address of the device already there.
        other_base: u64,
        /// Its length.
        other_len: u64,
    },
}

/// One device's range.
struct BusRange {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

impl fmt::Debug for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}+{:#x}", self.base, self.len)
    }
}

impl BusRange {
    /// Offset of `[address, address + len)` in this range, if it lies wholly inside.
    fn offset_of(&self, address: u64, len: usize) -> Option<u64> {
        let offset = address.checked_sub(self.base)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.len).then_some(offset)
    }
}

/// Guest-physical ranges and their devices.
#[derive(Debug, Default)]
pub struct Bus {
    /// Sorted by base, never overlapping.
    ranges: Vec<BusRange>,
}

/// Locks a device, taking over a lock poisoned by a panicking thread.
pub fn lock_device<T: ?Sized>(device: &Mutex<T>) -> MutexGuard<'_, T> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::BadRange { base, len }),
        };
        if let Some(other) = self
            .ranges
            .iter()
            .find(|other| base < other.base + other.len && other.base < end)
        {
            return Err(BusError::Overlap {
                base,
                len,
                other_base: other.base,
                other_len: other.len,
            });
        }
        let position = self.ranges.partition_point(|other| other.base < base);
        self.ranges.insert(position, BusRange { base, len, device });
        Ok(())
    }

    /// The range holding the whole access, and the access's offset into it.
    fn find(&self, address: u64, len: usize) -> Option<(&BusRange, u64)> {
        let index = self
            .ranges
            .partition_point(|range| range.base <= address)
            .checked_sub(1)?;
        let range = &self.ranges[index];
        range.offset_of(address, len).map(|offset| (range, offset))
    }

    /// Reads at guest-physical `address`; `data` is zero-filled first. Returns whether a device
    /// handled the access (an access that is not wholly inside one device is not).
    pub fn read(&self, address: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        match self.find(address, data.len()) {
            Some((range, offset)) => {
                lock_device(&range.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes at guest-physical `address`. Returns whether a device handled the access.
    pub fn write(&self, address: u64, data: &[u8]) -> bool {
        match self.find(address, data.len()) {
            Some((range, offset)) => {
                lock_device(&range.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write; reads answer `offset` in every byte.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            assert!(
                data.iter().all(|byte| *byte == 0),
                "reads arrive zero-filled"
            );
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_accesses_by_range() {
        let mut bus = Bus::new();
        let first = Arc::new(Mutex::new(Probe::default()));
        let second = Arc::new(Mutex::new(Probe::default()));
        bus.insert(0x2000, 0x1000, second.clone()).unwrap();
        bus.insert(0x1000, 0x1000, first.clone()).unwrap();

        let mut data = [0xffu8; 4];
        assert!(bus.read(0x1004, &mut data));
        assert_eq!(data, [4; 4]);
        assert!(bus.read(0x2ffc, &mut data));
        assert_eq!(data, [0xfc; 4]);
        assert!(bus.write(0x2010, &[1, 2]));
        assert_eq!(lock_device(&second).last_write, Some((0x10, vec![1, 2])));
        assert!(lock_device(&first).last_write.is_none());
    }

    #[test]
    fn unhandled_accesses_read_zero() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x1000, Arc::new(Mutex::new(Probe::default())))
            .unwrap();
        let mut data = [0xffu8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert_eq!(data, [0; 4]);
        // An access straddling the end of the range is not the device's.
        data.fill(0xff);
        assert!(!bus.read(0x1ffe, &mut data));
        assert_eq!(data, [0; 4]);
        assert!(!bus.write(0x2000, &[1]));
        assert!(!bus.read(u64::MAX, &mut data));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let probe = || Arc::new(Mutex::new(Probe::default()));
        bus.insert(0x1000, 0x1000, probe()).unwrap();
        assert!(matches!(
            bus.insert(0x1800, 0x1000, probe()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x0800, 0x1000, probe()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x0, 0x10000, probe()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x5000, 0, probe()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, probe()),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(0x2000, 0x1000, probe()).unwrap();
        bus.insert(0x0, 0x1000, probe()).unwrap();
    }
}
