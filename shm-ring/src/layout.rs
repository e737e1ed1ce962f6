//! The guest-physical memory map, I/O ports and interrupt vectors of a duovm VM.
//!
//! Every address, port and vector that more than one party relies on is defined here and nowhere
//! else. The map is sparse: each segment starts at a fixed, 2 MiB aligned base so that guest
//! kernels can be linked at fixed addresses while segment sizes stay configurable.
//!
//! ```text
//! 0x0000_0000  .. 0x0010_0000   low memory: one system area per OS (GDT, boot info, page tables)
//! 0x0100_0000  .. +segment_a    segment A: OS A image, stack, heap         (OS A only)
//! 0x4000_0000  .. +segment_b    segment B: OS B image, stack, heap, virtio  (OS B only)
//! 0x8000_0000  .. +shared       shared segment: rings, buffer pools, mailboxes (both)
//! 0xD000_0000  .. +0x1000       virtio-mmio network device                 (OS B only)
//! 0xFEC0_0000                   IOAPIC (in-kernel irqchip)
//! 0xFEE0_0000                   local APIC                                  (both)
//! ```
//!
//! Within its system area each OS has a GDT page, a boot info page (both mapped read-only for
//! that OS) and its page tables, which are not mapped at all: an OS cannot rewrite its own
//! translation, so the partition between the segments is enforced by the MMU.

/// Size of a small page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of a large page; segment bases and sizes are multiples of it.
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;

/// Which of the two OSes a value refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Role {
    /// OS A: runs the application and the RDMA transport.
    A = 0,
    /// OS B: runs the network stack and the virtio-net driver.
    B = 1,
}

impl Role {
    /// Both roles, in vCPU order.
    pub const ALL: [Role; 2] = [Role::A, Role::B];

    /// The role for a raw boot info value.
    pub const fn from_u32(value: u32) -> Option<Role> {
        match value {
            0 => Some(Role::A),
            1 => Some(Role::B),
            _ => None,
        }
    }

    /// The vCPU index (and APIC ID) this OS runs on.
    pub const fn vcpu_index(self) -> u32 {
        self as u32
    }

    /// The other OS.
    pub const fn peer(self) -> Role {
        match self {
            Role::A => Role::B,
            Role::B => Role::A,
        }
    }

    /// A one-letter tag for logs: `a` or `b`.
    pub const fn tag(self) -> &'static str {
        match self {
            Role::A => "a",
            Role::B => "b",
        }
    }

    /// Base of this OS's system area (GDT, boot info, page tables).
    pub const fn system_area_base(self) -> u64 {
        match self {
            Role::A => SYSTEM_AREA_A,
            Role::B => SYSTEM_AREA_B,
        }
    }

    /// Guest-physical address of this OS's boot info block.
    pub const fn boot_info_address(self) -> u64 {
        self.system_area_base() + BOOT_INFO_OFFSET
    }

    /// Guest-physical address of this OS's GDT.
    pub const fn gdt_address(self) -> u64 {
        self.system_area_base() + GDT_OFFSET
    }

    /// Guest-physical address of this OS's page tables (PML4 first).
    pub const fn page_tables_address(self) -> u64 {
        self.system_area_base() + PAGE_TABLES_OFFSET
    }

    /// Base of this OS's private segment (also the image's link base).
    pub const fn segment_base(self) -> u64 {
        match self {
            Role::A => SEGMENT_A_BASE,
            Role::B => SEGMENT_B_BASE,
        }
    }

    /// The largest size this OS's segment may have before it would run into the next region.
    pub const fn segment_max_size(self) -> u64 {
        match self {
            Role::A => SEGMENT_B_BASE - SEGMENT_A_BASE,
            Role::B => SHARED_BASE - SEGMENT_B_BASE,
        }
    }

    /// This OS's serial port (a 16550-style transmit register).
    pub const fn serial_port(self) -> u16 {
        match self {
            Role::A => SERIAL_PORT_A,
            Role::B => SERIAL_PORT_B,
        }
    }
}

/// System area of OS A.
pub const SYSTEM_AREA_A: u64 = 0x1_0000;
/// System area of OS B.
pub const SYSTEM_AREA_B: u64 = 0x2_0000;
/// Size of each system area.
pub const SYSTEM_AREA_SIZE: u64 = 0x1_0000;
/// Offset of the GDT in a system area (one page, mapped read-only).
pub const GDT_OFFSET: u64 = 0;
/// Offset of the boot info block in a system area (one page, mapped read-only).
pub const BOOT_INFO_OFFSET: u64 = 0x1000;
/// Offset of the page tables in a system area (not mapped for the guest).
pub const PAGE_TABLES_OFFSET: u64 = 0x2000;
/// Space for page tables in a system area.
pub const PAGE_TABLES_SIZE: u64 = SYSTEM_AREA_SIZE - PAGE_TABLES_OFFSET;
/// End of low memory.
pub const LOW_MEMORY_SIZE: u64 = 0x10_0000;

/// Base of segment A; OS A's image is linked here.
pub const SEGMENT_A_BASE: u64 = 0x0100_0000;
/// Base of segment B; OS B's image is linked here.
pub const SEGMENT_B_BASE: u64 = 0x4000_0000;
/// Base of the shared segment.
pub const SHARED_BASE: u64 = 0x8000_0000;
/// The largest shared segment.
pub const SHARED_MAX_SIZE: u64 = VIRTIO_MMIO_BASE - SHARED_BASE;
/// Default size of each OS segment.
pub const DEFAULT_SEGMENT_SIZE: u64 = 32 << 20;
/// Default size of the shared segment.
pub const DEFAULT_SHARED_SIZE: u64 = 16 << 20;

/// Base of OS B's virtio-mmio network device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xD000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of the virtio-net interrupt (routed to OS B through the IOAPIC).
pub const VIRTIO_NET_GSI: u32 = 5;
/// Guest-physical base of the IOAPIC.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Guest-physical base of the local APIC (xAPIC MMIO).
pub const LAPIC_BASE: u64 = 0xFEE0_0000;

/// OS A's serial port.
pub const SERIAL_PORT_A: u16 = 0x3F8;
/// OS B's serial port.
pub const SERIAL_PORT_B: u16 = 0x2F8;
/// Debug-exit port: a 32-bit write ends the VM with that status (0 is success).
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Hypercall port: a 32-bit write of a [`Hypercall`] number notifies the host.
pub const HYPERCALL_PORT: u16 = 0x510;
/// A port the supervisor thread answers (a 32-bit read returns a running count): used to
/// measure the supervisor path of exit handling.
pub const SUPERVISOR_PROBE_PORT: u16 = 0x512;

/// The status an OS writes to [`DEBUG_EXIT_PORT`] to end itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u32)]
pub enum ExitStatus {
    /// The workload finished and everything checked out.
    Success = 0,
    /// The kernel panicked; the message is on its serial log.
    Panic = 1,
    /// A CPU exception. The guest passes `RSI` = vector, `R9` = error code, `RCX` = CR2 and
    /// `R8` = the faulting RIP along with the port write.
    Fault = 2,
    /// A check of the workload failed; the reason is on the serial log.
    Failed = 3,
    /// The boot info block was rejected.
    BadBoot = 4,
}

impl ExitStatus {
    /// The status for a raw port value.
    pub const fn from_u32(value: u32) -> Option<ExitStatus> {
        match value {
            0 => Some(ExitStatus::Success),
            1 => Some(ExitStatus::Panic),
            2 => Some(ExitStatus::Fault),
            3 => Some(ExitStatus::Failed),
            4 => Some(ExitStatus::BadBoot),
            _ => None,
        }
    }

    /// A short description for reports.
    pub const fn describe(self) -> &'static str {
        match self {
            ExitStatus::Success => "success",
            ExitStatus::Panic => "panic",
            ExitStatus::Fault => "CPU exception",
            ExitStatus::Failed => "workload check failed",
            ExitStatus::BadBoot => "boot info rejected",
        }
    }
}

/// Notifications a guest sends the host through [`HYPERCALL_PORT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u32)]
pub enum Hypercall {
    /// The OS finished booting and its boot info was accepted.
    Ready = 1,
    /// The OS wrote a reply into its control mailbox.
    ControlReply = 2,
    /// The OS published a new report in its report block.
    Report = 3,
    /// Nothing: a no-op, used to measure the fast path of exit handling.
    Ping = 4,
}

impl Hypercall {
    /// The hypercall for a raw port value.
    pub const fn from_u32(value: u32) -> Option<Hypercall> {
        match value {
            1 => Some(Hypercall::Ready),
            2 => Some(Hypercall::ControlReply),
            3 => Some(Hypercall::Report),
            4 => Some(Hypercall::Ping),
            _ => None,
        }
    }
}

/// Local APIC timer interrupt.
pub const TIMER_VECTOR: u8 = 0x20;
/// "A ring you consume has work" (or "a ring you produce has room").
pub const RING_VECTOR: u8 = 0x40;
/// "The host wrote a request into your control mailbox."
pub const CONTROL_VECTOR: u8 = 0x41;
/// The virtio-net device interrupt (OS B).
pub const NET_VECTOR: u8 = 0x42;
/// Local APIC spurious interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// A range of guest-physical memory.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
#[repr(C)]
pub struct Region {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Region {
    /// A region from base and size.
    pub const fn new(base: u64, size: u64) -> Region {
        Region { base, size }
    }

    /// One past the last byte, or `None` if that overflows.
    pub const fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size)
    }

    /// Whether `[address, address + len)` lies inside this region.
    pub const fn contains_range(&self, address: u64, len: u64) -> bool {
        match (address.checked_add(len), self.end()) {
            (Some(end), Some(self_end)) => address >= self.base && end <= self_end,
            _ => false,
        }
    }

    /// Whether the two regions share a byte.
    pub const fn overlaps(&self, other: &Region) -> bool {
        match (self.end(), other.end()) {
            (Some(a_end), Some(b_end)) => self.base < b_end && other.base < a_end,
            _ => true,
        }
    }
}

/// Why a memory map was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMapError {
    /// A segment size is zero or not a multiple of [`LARGE_PAGE_SIZE`].
    Unaligned {
        /// Which segment.
        segment: &'static str,
        /// The size asked for.
        size: u64,
    },
    /// A segment is larger than the space the map has for it.
    TooLarge {
        /// Which segment.
        segment: &'static str,
        /// The size asked for.
        size: u64,
        /// The largest size that fits.
        max: u64,
    },
}

impl core::fmt::Display for MemoryMapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemoryMapError::Unaligned { segment, size } => write!(
                f,
                "{segment} size {size:#x} is not a non-zero multiple of 2 MiB"
            ),
            MemoryMapError::TooLarge { segment, size, max } => write!(
                f,
                "{segment} size {} MiB does not fit: at most {} MiB",
                size >> 20,
                max >> 20
            ),
        }
    }
}

/// The sizes of the three segments of a VM, validated against the fixed map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMap {
    /// Segment A.
    pub segment_a: Region,
    /// Segment B.
    pub segment_b: Region,
    /// The shared segment.
    pub shared: Region,
}

impl Default for MemoryMap {
    fn default() -> Self {
        match MemoryMap::new(
            DEFAULT_SEGMENT_SIZE,
            DEFAULT_SEGMENT_SIZE,
            DEFAULT_SHARED_SIZE,
        ) {
            Ok(map) => map,
            Err(_) => unreachable!("the default sizes fit the map"),
        }
    }
}

impl MemoryMap {
    /// A map with the given segment sizes, each a non-zero multiple of 2 MiB that fits its slot.
    pub const fn new(
        segment_a_size: u64,
        segment_b_size: u64,
        shared_size: u64,
    ) -> Result<MemoryMap, MemoryMapError> {
        let checks = [
            ("segment A", segment_a_size, Role::A.segment_max_size()),
            ("segment B", segment_b_size, Role::B.segment_max_size()),
            ("shared segment", shared_size, SHARED_MAX_SIZE),
        ];
        let mut i = 0;
        while i < checks.len() {
            let (segment, size, max) = checks[i];
            if size == 0 || size % LARGE_PAGE_SIZE != 0 {
                return Err(MemoryMapError::Unaligned { segment, size });
            }
            if size > max {
                return Err(MemoryMapError::TooLarge { segment, size, max });
            }
            i += 1;
        }
        Ok(MemoryMap {
            segment_a: Region::new(SEGMENT_A_BASE, segment_a_size),
            segment_b: Region::new(SEGMENT_B_BASE, segment_b_size),
            shared: Region::new(SHARED_BASE, shared_size),
        })
    }

    /// The private segment of an OS.
    pub const fn segment(&self, role: Role) -> Region {
        match role {
            Role::A => self.segment_a,
            Role::B => self.segment_b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_map_is_disjoint() {
        let map = MemoryMap::default();
        let low = Region::new(0, LOW_MEMORY_SIZE);
        let all = [low, map.segment_a, map.segment_b, map.shared];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
        assert!(!map.shared.contains_range(VIRTIO_MMIO_BASE, 1));
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(
            MemoryMap::new(3 << 20, 32 << 20, 16 << 20),
            Err(MemoryMapError::Unaligned {
                segment: "segment A",
                size: 3 << 20
            })
        );
        assert!(matches!(
            MemoryMap::new(32 << 20, 2 << 30, 16 << 20),
            Err(MemoryMapError::TooLarge {
                segment: "segment B",
                ..
            })
        ));
        assert!(MemoryMap::new(0, 2 << 20, 2 << 20).is_err());
        assert!(MemoryMap::new(2 << 20, 2 << 20, 2 << 20).is_ok());
    }

    #[test]
    fn region_range_checks_do_not_overflow() {
        let region = Region::new(u64::MAX - 10, 5);
        assert!(!region.contains_range(u64::MAX, 2));
        assert!(region.contains_range(u64::MAX - 10, 5));
        assert!(!region.contains_range(u64::MAX - 10, 6));
        assert!(Region::new(u64::MAX, 2).end().is_none());
    }

    #[test]
    fn system_areas_fit_low_memory() {
        for role in Role::ALL {
            let area = Region::new(role.system_area_base(), SYSTEM_AREA_SIZE);
            assert!(area.end().unwrap() <= LOW_MEMORY_SIZE);
            assert!(area.contains_range(role.boot_info_address(), PAGE_SIZE));
            assert!(area.contains_range(role.page_tables_address(), PAGE_TABLES_SIZE));
        }
    }
}
