//! Virtio 1.x devices over the MMIO transport (version 2).
//!
//! - [`queue`]: split virtqueues read and written through [`GuestMemory`](crate::memory::GuestMemory),
//!   with every driver-controlled value validated;
//! - [`mmio`]: the virtio-mmio register block, the status state machine and feature negotiation,
//!   in front of any [`VirtioDevice`];
//! - [`net`]: the network device.
//!
//! A device model never touches KVM: register accesses reach it through
//! [`BusDevice`](crate::devices::bus::BusDevice), queue notifications through an `EventFd` (which
//! the VMM may register as an ioeventfd), and interrupts leave through an [`InterruptLine`]
//! (which the VMM may back with an irqfd).

pub mod mmio;
pub mod net;
pub mod queue;

use vmm_sys_util::eventfd::EventFd;

/// Device status bits (virtio 1.x section 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Device-independent feature bits (virtio 1.x section 6).
pub mod features {
    /// Descriptors may point to indirect descriptor tables.
    pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
    /// The `used_event` / `avail_event` fields suppress notifications.
    pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
    /// The device follows virtio 1.x (not the legacy interface).
    pub const VIRTIO_F_VERSION_1: u32 = 32;
}

/// Interrupt status bits (virtio-mmio `InterruptStatus`).
pub mod interrupt {
    /// A queue's used ring was updated.
    pub const USED_BUFFER: u32 = 1;
    /// The configuration changed (or the device needs a reset).
    pub const CONFIG_CHANGE: u32 = 2;
}

/// Device IDs (virtio 1.x section 5).
pub mod device_type {
    /// A network card.
    pub const NET: u32 = 1;
}

/// The bit for feature number `bit`.
pub const fn feature_bit(bit: u32) -> u64 {
    1 << bit
}

/// The interrupt a device raises towards its driver.
///
/// The VMM backs it with a KVM irqfd (an [`EventFd`] implements it directly); tests count calls.
pub trait InterruptLine: Send + Sync {
    /// Raises the interrupt. The device has already set the reason in `InterruptStatus`.
    fn trigger(&self) -> std::io::Result<()>;
}

impl InterruptLine for EventFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}

/// A virtio device model, as the transport sees it.
///
/// The transport owns the queues, the status and the negotiated features; the device describes
/// itself (type, features, queue sizes, configuration space) and processes its queues through
/// a [`mmio::DeviceContext`] when its owner asks it to.
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> u32;

    /// The features the device offers.
    fn device_features(&self) -> u64;

    /// The largest size of each queue; the slice's length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads the configuration space at `offset`; `data` arrives zero-filled and bytes past the
    /// end of the configuration space stay zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the configuration space at `offset`. Returns whether the write was accepted.
    fn write_config(&mut self, offset: u64, data: &[u8]) -> bool;

    /// The driver set DRIVER_OK with these negotiated features.
    fn activate(&mut self, _negotiated_features: u64) {}

    /// The driver reset the device.
    fn reset(&mut self) {}
}
