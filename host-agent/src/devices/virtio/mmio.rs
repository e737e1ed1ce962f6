//! The virtio-mmio register block (virtio 1.x section 4.2.2, version 2) in front of a
//! [`VirtioDevice`].
//!
//! [`MmioTransport`] is a [`BusDevice`]: the VMM maps it at the device's window and forwards
//! MMIO exits to it. It owns what every virtio device has (status, feature negotiation, queues,
//! interrupt status) and hands the device a [`DeviceContext`] to process its queues.
//!
//! Rules enforced, none of them with a panic:
//! - registers are 32-bit, aligned accesses; any other access to the first 0x100 bytes reads
//!   zero and is ignored when written (with a rate-limited log line). The configuration space at
//!   0x100 accepts any size.
//! - the status moves forward only: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, each requiring
//!   the previous ones (several may be set by one write). A write that clears bits (other than
//!   the reset value 0) or sets a bit before its prerequisites is ignored and logged.
//! - FEATURES_OK is accepted only if the driver's features are a subset of the offered ones and
//!   include `VIRTIO_F_VERSION_1`; otherwise the bit stays clear, as the specification asks, so
//!   the driver sees the failure when it reads the status back.
//! - driver features are writable only between DRIVER and FEATURES_OK; a queue's configuration
//!   only after FEATURES_OK and while that queue is not ready.
//! - a bad queue configuration (checked when the driver sets QueueReady) or a bad value found
//!   while processing a queue puts the device in the "needs reset" state: the
//!   `DEVICE_NEEDS_RESET` status bit, a configuration-change interrupt once DRIVER_OK is set, one
//!   log line, and no more queue processing until the driver writes 0 to the status.
//!
//! Queue notifications: a write of queue index `n` to QueueNotify signals `queue_events()[n]`.
//! The VMM may register those eventfds as KVM ioeventfds at the window's base plus
//! [`register::QUEUE_NOTIFY`] with `n` as the data match, so that notifications never leave the
//! kernel; the bus path stays correct without it.

use std::fmt;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::queue::{Queue, QueueFeatures};
use super::{InterruptLine, VirtioDevice, features, interrupt, status};
use crate::devices::bus::BusDevice;
use crate::devices::ratelimit::RateLimitedLog;
use crate::memory::{GuestAddress, GuestMemory};

/// Register offsets.
pub mod register {
    /// "virt".
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Transport version (2).
    pub const VERSION: u64 = 0x004;
    /// Device type.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor.
    pub const VENDOR_ID: u64 = 0x00c;
    /// The offered features, 32 bits selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Which 32 bits `DEVICE_FEATURES` shows.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// The accepted features, 32 bits selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Which 32 bits `DRIVER_FEATURES` sets.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// The queue the queue registers refer to.
    pub const QUEUE_SEL: u64 = 0x030;
    /// The selected queue's maximum size (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// The selected queue's size.
    pub const QUEUE_NUM: u64 = 0x038;
    /// The selected queue is ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// The driver notifies the queue whose index it writes.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Why the device interrupted.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Acknowledges interrupt reasons.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring (driver area) address, low 32 bits.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Available ring address, high 32 bits.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Used ring (device area) address, low 32 bits.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Used ring address, high 32 bits.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Shared memory region selector (no regions here).
    pub const SHM_SEL: u64 = 0x0ac;
    /// Shared memory region length, low 32 bits (all ones: no region).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory region length, high 32 bits.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Shared memory region base, low 32 bits.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Shared memory region base, high 32 bits.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Per-queue reset (not offered: reads 0).
    pub const QUEUE_RESET: u64 = 0x0c0;
    /// Changes whenever the configuration space changes.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// `MagicValue`: "virt" in little-endian bytes.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version implemented (virtio 1.x, non-legacy).
pub const VERSION: u32 = 2;
/// `VendorID`: "duov" in little-endian bytes.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"duov");

/// Status bits a driver may set.
const DRIVER_STATUS_BITS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK | status::FAILED;

/// What a device sees of its transport while it processes its queues: guest memory, the queues,
/// the status and the interrupt.
pub struct DeviceContext {
    name: &'static str,
    memory: Arc<GuestMemory>,
    queues: Vec<Queue>,
    status: u32,
    driver_features: u64,
    interrupt_status: u32,
    interrupt: Arc<dyn InterruptLine>,
    interrupts: u64,
    log: RateLimitedLog,
}

impl fmt::Debug for DeviceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceContext")
            .field("name", &self.name)
            .field("queues", &self.queues)
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .field("interrupt_status", &self.interrupt_status)
            .field("interrupts", &self.interrupts)
            .finish_non_exhaustive()
    }
}

impl DeviceContext {
    /// Guest memory.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted (final once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether queues may be processed: DRIVER_OK set, FAILED and DEVICE_NEEDS_RESET clear.
    pub fn is_active(&self) -> bool {
        self.status & (status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET)
            == status::DRIVER_OK
    }

    /// Queue `index`.
    pub fn queue(&self, index: usize) -> Option<&Queue> {
        self.queues.get(index)
    }

    /// Queue `index` if the device is active and the queue is ready.
    pub fn active_queue(&mut self, index: usize) -> Option<&mut Queue> {
        if !self.is_active() {
            return None;
        }
        self.queues.get_mut(index).filter(|queue| queue.is_ready())
    }

    /// Interrupts raised so far.
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// The current `InterruptStatus`.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Sets `reason` in `InterruptStatus` and raises the interrupt.
    pub fn raise_interrupt(&mut self, reason: u32) {
        self.interrupt_status |= reason;
        self.interrupts += 1;
        if let Err(error) = self.interrupt.trigger() {
            self.log
                .log(format_args!("cannot raise the interrupt: {error}"));
        }
    }

    /// After used entries were added to queue `index`: raises the used-buffer interrupt unless
    /// the driver suppressed it.
    pub fn signal_used(&mut self, index: usize) {
        let memory = Arc::clone(&self.memory);
        let Some(queue) = self.queues.get_mut(index).filter(|queue| queue.is_ready()) else {
            return;
        };
        match queue.needs_notification(&memory) {
            Ok(true) => self.raise_interrupt(interrupt::USED_BUFFER),
            Ok(false) => {}
            Err(error) => self.set_needs_reset(format_args!("queue {index}: {error}")),
        }
    }

    /// Puts the device in the "needs reset" state: the status bit, a configuration-change
    /// interrupt if the driver is running, and one log line. Nothing more happens until reset.
    pub fn set_needs_reset(&mut self, reason: fmt::Arguments<'_>) {
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        self.log.log(format_args!(
            "device needs reset: {reason}; queues stopped until the driver resets the device"
        ));
        if self.status & status::DRIVER_OK != 0 {
            self.raise_interrupt(interrupt::CONFIG_CHANGE);
        }
    }
}

/// A virtio device behind the MMIO transport.
pub struct MmioTransport<D> {
    device: D,
    context: DeviceContext,
    device_features_select: u32,
    driver_features_select: u32,
    /// The driver wrote a non-zero value to a features word beyond the first 64 bits.
    driver_features_unknown: bool,
    queue_select: u32,
    config_generation: u32,
    queue_events: Vec<EventFd>,
    log: RateLimitedLog,
}

impl<D: fmt::Debug> fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device)
            .field("context", &self.context)
            .field("config_generation", &self.config_generation)
            .finish_non_exhaustive()
    }
}

/// The log component of a device type.
fn component(device_type: u32) -> &'static str {
    match device_type {
        super::device_type::NET => "virtio-net",
        _ => "virtio",
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// A transport for `device` over `memory`, raising `interrupt`. Creates one non-blocking
    /// notification eventfd per queue.
    pub fn new(
        device: D,
        memory: Arc<GuestMemory>,
        interrupt: Arc<dyn InterruptLine>,
    ) -> std::io::Result<MmioTransport<D>> {
        let name = component(device.device_type());
        let queues: Vec<Queue> = device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max))
            .collect();
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            context: DeviceContext {
                name,
                memory,
                queues,
                status: 0,
                driver_features: 0,
                interrupt_status: 0,
                interrupt,
                interrupts: 0,
                log: RateLimitedLog::new(name),
            },
            device_features_select: 0,
            driver_features_select: 0,
            driver_features_unknown: false,
            queue_select: 0,
            config_generation: 0,
            queue_events,
            log: RateLimitedLog::new(name),
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The transport state the device works with.
    pub fn context(&self) -> &DeviceContext {
        &self.context
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.context.status
    }

    /// The notification eventfd of each queue, by queue index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The configuration generation.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// Runs `work` with the device and its context (the way a device processes its queues).
    pub fn with_device<R>(&mut self, work: impl FnOnce(&mut D, &mut DeviceContext) -> R) -> R {
        work(&mut self.device, &mut self.context)
    }

    /// Tells the driver that the configuration space changed.
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.context.status & status::DRIVER_OK != 0 {
            self.context.raise_interrupt(interrupt::CONFIG_CHANGE);
        }
    }

    /// Returns the device to its initial state (the driver wrote 0 to the status).
    fn reset(&mut self) {
        self.context.status = 0;
        self.context.driver_features = 0;
        self.context.interrupt_status = 0;
        for queue in &mut self.context.queues {
            queue.reset();
        }
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features_unknown = false;
        self.queue_select = 0;
        self.device.reset();
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.context.queues.get(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            register::MAGIC_VALUE => MAGIC,
            register::VERSION => VERSION,
            register::DEVICE_ID => self.device.device_type(),
            register::VENDOR_ID => VENDOR_ID,
            register::DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.device_features() as u32,
                1 => (self.device.device_features() >> 32) as u32,
                _ => 0,
            },
            register::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            register::QUEUE_READY => self.selected_queue().map_or(0, |q| q.is_ready().into()),
            register::INTERRUPT_STATUS => self.context.interrupt_status,
            register::STATUS => self.context.status,
            register::SHM_LEN_LOW
            | register::SHM_LEN_HIGH
            | register::SHM_BASE_LOW
            | register::SHM_BASE_HIGH => u32::MAX,
            register::CONFIG_GENERATION => self.config_generation,
            // Write-only and reserved registers read as zero.
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            register::DEVICE_FEATURES_SEL => self.device_features_select = value,
            register::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            register::DRIVER_FEATURES => self.write_driver_features(value),
            register::QUEUE_SEL => self.queue_select = value,
            register::QUEUE_NUM
            | register::QUEUE_DESC_LOW
            | register::QUEUE_DESC_HIGH
            | register::QUEUE_DRIVER_LOW
            | register::QUEUE_DRIVER_HIGH
            | register::QUEUE_DEVICE_LOW
            | register::QUEUE_DEVICE_HIGH => self.write_queue_config(offset, value),
            register::QUEUE_READY => self.write_queue_ready(value),
            register::QUEUE_NOTIFY => self.notify_queue(value),
            register::INTERRUPT_ACK => self.context.interrupt_status &= !value,
            register::STATUS => self.write_status(value),
            register::SHM_SEL => {}
            _ => {
                self.log.log(format_args!(
                    "write of {value:#x} to read-only or unknown register {offset:#x} ignored"
                ));
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let status = self.context.status;
        if status & status::DRIVER == 0 || status & (status::FEATURES_OK | status::FAILED) != 0 {
            self.log.log(format_args!(
                "driver features written in status {status:#x} (only between DRIVER and FEATURES_OK): ignored"
            ));
            return;
        }
        let features = &mut self.context.driver_features;
        match self.driver_features_select {
            0 => *features = (*features & !0xffff_ffff) | u64::from(value),
            1 => *features = (*features & 0xffff_ffff) | (u64::from(value) << 32),
            _ => self.driver_features_unknown |= value != 0,
        }
    }

    /// Whether the selected queue's configuration may be written now.
    fn queue_config_writable(&mut self, what: &str) -> bool {
        let status = self.context.status;
        let ready = self.selected_queue().map(Queue::is_ready);
        let allowed = status & status::FEATURES_OK != 0
            && status & status::FAILED == 0
            && ready == Some(false);
        if !allowed {
            self.log.log(format_args!(
                "{what} of queue {} written in status {status:#x} (queue {}): ignored",
                self.queue_select,
                match ready {
                    None => "does not exist",
                    Some(true) => "is ready",
                    Some(false) => "is not ready",
                }
            ));
        }
        allowed
    }

    fn write_queue_config(&mut self, offset: u64, value: u32) {
        if !self.queue_config_writable("the configuration") {
            return;
        }
        let Some(queue) = self.context.queues.get_mut(self.queue_select as usize) else {
            return;
        };
        let low =
            |address: GuestAddress| GuestAddress((address.0 & !0xffff_ffff) | u64::from(value));
        let high = |address: GuestAddress| {
            GuestAddress((address.0 & 0xffff_ffff) | (u64::from(value) << 32))
        };
        match offset {
            register::QUEUE_NUM => queue.set_size(value),
            register::QUEUE_DESC_LOW => queue.set_desc_table(low(queue.desc_table())),
            register::QUEUE_DESC_HIGH => queue.set_desc_table(high(queue.desc_table())),
            register::QUEUE_DRIVER_LOW => queue.set_avail_ring(low(queue.avail_ring())),
            register::QUEUE_DRIVER_HIGH => queue.set_avail_ring(high(queue.avail_ring())),
            register::QUEUE_DEVICE_LOW => queue.set_used_ring(low(queue.used_ring())),
            register::QUEUE_DEVICE_HIGH => queue.set_used_ring(high(queue.used_ring())),
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let index = self.queue_select as usize;
        match value {
            // Disabling is always allowed: drivers do it when they let go of a queue.
            0 => {
                if let Some(queue) = self.context.queues.get_mut(index) {
                    queue.disable();
                }
            }
            1 => {
                if self.selected_queue().is_some_and(Queue::is_ready)
                    || !self.queue_config_writable("QueueReady")
                {
                    return;
                }
                let features = QueueFeatures {
                    event_idx: self.negotiated(features::VIRTIO_RING_F_EVENT_IDX),
                    indirect_desc: self.negotiated(features::VIRTIO_RING_F_INDIRECT_DESC),
                };
                let memory = Arc::clone(&self.context.memory);
                let Some(queue) = self.context.queues.get_mut(index) else {
                    return;
                };
                if let Err(error) = queue.enable(&memory, features) {
                    self.context
                        .set_needs_reset(format_args!("queue {index}: {error}"));
                }
            }
            _ => {
                self.log.log(format_args!(
                    "QueueReady value {value:#x} (only 0 or 1) ignored"
                ));
            }
        }
    }

    fn negotiated(&self, feature: u32) -> bool {
        self.context.driver_features & super::feature_bit(feature) != 0
    }

    fn notify_queue(&mut self, value: u32) {
        match self.queue_events.get(value as usize) {
            Some(event) => {
                if let Err(error) = event.write(1) {
                    self.log
                        .log(format_args!("cannot signal queue {value}: {error}"));
                }
            }
            None => {
                self.log.log(format_args!(
                    "notification of missing queue {value} ignored"
                ));
            }
        }
    }

    /// The driver's features are acceptable: offered ones only, virtio 1.x among them.
    fn features_acceptable(&self) -> Result<(), String> {
        let offered = self.device.device_features();
        let accepted = self.context.driver_features;
        if accepted & !offered != 0 || self.driver_features_unknown {
            return Err(format!(
                "the driver accepted features {accepted:#x} beyond the offered {offered:#x}"
            ));
        }
        if !self.negotiated(features::VIRTIO_F_VERSION_1) {
            return Err("the driver did not accept VIRTIO_F_VERSION_1".to_owned());
        }
        Ok(())
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.context.status;
        // DEVICE_NEEDS_RESET belongs to the device: the driver can neither set nor clear it.
        let mut requested =
            (value & !status::DEVICE_NEEDS_RESET) | (current & status::DEVICE_NEEDS_RESET);
        let added = requested & !current;
        let out_of_order = (requested & current != current)
            || (value & !(DRIVER_STATUS_BITS | status::DEVICE_NEEDS_RESET) != 0)
            || (added & status::DRIVER != 0 && requested & status::ACKNOWLEDGE == 0)
            || (added & status::FEATURES_OK != 0 && requested & status::DRIVER == 0)
            || (added & status::DRIVER_OK != 0 && requested & status::FEATURES_OK == 0);
        if out_of_order {
            self.log.log(format_args!(
                "status write {value:#x} over {current:#x} is out of order: ignored"
            ));
            return;
        }
        if added & status::FEATURES_OK != 0
            && let Err(reason) = self.features_acceptable()
        {
            self.log.log(format_args!("FEATURES_OK refused: {reason}"));
            requested &= !(status::FEATURES_OK | status::DRIVER_OK);
        }
        self.context.status = requested;
        if requested & !current & status::DRIVER_OK != 0 {
            self.device.activate(self.context.driver_features);
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= register::CONFIG {
            self.device.read_config(offset - register::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.log.log(format_args!(
                "{}-byte read at register offset {offset:#x} (registers are 4-byte aligned): reads zero",
                data.len()
            ));
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= register::CONFIG {
            if !self.device.write_config(offset - register::CONFIG, data) {
                self.log.log(format_args!(
                    "{}-byte configuration write at {:#x} ignored",
                    data.len(),
                    offset - register::CONFIG
                ));
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.log.log(format_args!(
                "{}-byte write at register offset {offset:#x} (registers are 4 bytes): ignored",
                data.len()
            ));
            return;
        };
        if !offset.is_multiple_of(4) {
            self.log.log(format_args!(
                "unaligned write at register offset {offset:#x}: ignored"
            ));
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::feature_bit;
    use shm_ring::layout::Region;
    use std::sync::atomic::{AtomicU64, Ordering};

    const VERSION_1: u64 = 1 << features::VIRTIO_F_VERSION_1;
    /// A device-specific feature the test device offers.
    const EXTRA: u64 = 1 << 3;
    /// A feature it does not offer.
    const UNOFFERED: u64 = 1 << 4;

    #[derive(Default)]
    struct Counter(AtomicU64);

    impl InterruptLine for Counter {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[derive(Debug, Default)]
    struct TestDevice {
        config: [u8; 8],
        activated: Option<u64>,
        resets: u32,
    }

    impl VirtioDevice for TestDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn device_features(&self) -> u64 {
            VERSION_1 | EXTRA | feature_bit(features::VIRTIO_RING_F_EVENT_IDX)
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (index, byte) in data.iter_mut().enumerate() {
                *byte = self
                    .config
                    .get(offset as usize + index)
                    .copied()
                    .unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) -> bool {
            let Some(slice) = self
                .config
                .get_mut(offset as usize..offset as usize + data.len())
            else {
                return false;
            };
            slice.copy_from_slice(data);
            true
        }
        fn activate(&mut self, features: u64) {
            self.activated = Some(features);
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    struct Fixture {
        transport: MmioTransport<TestDevice>,
        interrupts: Arc<Counter>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let memory = Arc::new(GuestMemory::new(&[Region::new(0, 0x10000)]).unwrap());
            let interrupts = Arc::new(Counter::default());
            let transport =
                MmioTransport::new(TestDevice::default(), memory, interrupts.clone()).unwrap();
            Fixture {
                transport,
                interrupts,
            }
        }

        fn read(&mut self, offset: u64) -> u32 {
            let mut data = [0u8; 4];
            self.transport.read(offset, &mut data);
            u32::from_le_bytes(data)
        }

        fn write(&mut self, offset: u64, value: u32) {
            self.transport.write(offset, &value.to_le_bytes());
        }

        fn interrupts(&self) -> u64 {
            self.interrupts.0.load(Ordering::Relaxed)
        }

        fn write_features(&mut self, features: u64) {
            self.write(register::DRIVER_FEATURES_SEL, 0);
            self.write(register::DRIVER_FEATURES, features as u32);
            self.write(register::DRIVER_FEATURES_SEL, 1);
            self.write(register::DRIVER_FEATURES, (features >> 32) as u32);
        }

        /// Up to FEATURES_OK with `features`; returns the status read back.
        fn negotiate(&mut self, features: u64) -> u32 {
            self.write(register::STATUS, 0);
            self.write(register::STATUS, status::ACKNOWLEDGE);
            self.write(register::STATUS, status::ACKNOWLEDGE | status::DRIVER);
            self.write_features(features);
            self.write(
                register::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            );
            self.read(register::STATUS)
        }

        fn set_queue(&mut self, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
            self.write(register::QUEUE_SEL, index);
            self.write(register::QUEUE_NUM, size);
            self.write(register::QUEUE_DESC_LOW, desc as u32);
            self.write(register::QUEUE_DESC_HIGH, (desc >> 32) as u32);
            self.write(register::QUEUE_DRIVER_LOW, avail as u32);
            self.write(register::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
            self.write(register::QUEUE_DEVICE_LOW, used as u32);
            self.write(register::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
            self.write(register::QUEUE_READY, 1);
        }

        fn driver_ok(&mut self) {
            self.write(
                register::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
            );
        }
    }

    const FEATURES_OK_STATUS: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

    #[test]
    fn identification_registers() {
        let mut fixture = Fixture::new();
        assert_eq!(fixture.read(register::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(fixture.read(register::VERSION), 2);
        assert_eq!(fixture.read(register::DEVICE_ID), 42);
        assert_eq!(fixture.read(register::VENDOR_ID), VENDOR_ID);
        assert_eq!(fixture.read(register::CONFIG_GENERATION), 0);
        for shm in [
            register::SHM_LEN_LOW,
            register::SHM_LEN_HIGH,
            register::SHM_BASE_LOW,
            register::SHM_BASE_HIGH,
        ] {
            assert_eq!(fixture.read(shm), u32::MAX);
        }
        // Write-only and reserved registers read zero.
        for offset in [
            register::DEVICE_FEATURES_SEL,
            register::QUEUE_NOTIFY,
            register::QUEUE_DESC_LOW,
            register::QUEUE_RESET,
            0x0f0,
        ] {
            assert_eq!(fixture.read(offset), 0, "{offset:#x}");
        }
    }

    #[test]
    fn device_features_by_selector() {
        let mut fixture = Fixture::new();
        let offered = fixture.transport.device().device_features();
        fixture.write(register::DEVICE_FEATURES_SEL, 0);
        assert_eq!(fixture.read(register::DEVICE_FEATURES), offered as u32);
        fixture.write(register::DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            fixture.read(register::DEVICE_FEATURES),
            (offered >> 32) as u32
        );
        fixture.write(register::DEVICE_FEATURES_SEL, 2);
        assert_eq!(fixture.read(register::DEVICE_FEATURES), 0);
    }

    #[test]
    fn queue_num_max_by_selector() {
        let mut fixture = Fixture::new();
        for (index, max) in [(0, 16), (1, 8), (2, 0), (u32::MAX, 0)] {
            fixture.write(register::QUEUE_SEL, index);
            assert_eq!(fixture.read(register::QUEUE_NUM_MAX), max);
            assert_eq!(fixture.read(register::QUEUE_READY), 0);
        }
    }

    #[test]
    fn bad_sizes_and_alignment_are_ignored() {
        let mut fixture = Fixture::new();
        for (offset, len) in [(0u64, 1usize), (0, 2), (0, 8), (2, 4), (1, 1), (0xfe, 2)] {
            let mut data = vec![0u8; len];
            fixture.transport.read(offset, &mut data);
            assert!(data.iter().all(|byte| *byte == 0), "{offset:#x}/{len}");
        }
        fixture.transport.write(register::STATUS, &[1, 0]);
        fixture.transport.write(register::STATUS + 1, &[1, 0, 0, 0]);
        fixture.transport.write(register::STATUS, &[1; 8]);
        fixture.transport.write(register::STATUS, &[]);
        assert_eq!(fixture.read(register::STATUS), 0);
        // Read-only registers ignore writes.
        fixture.write(register::MAGIC_VALUE, 0);
        fixture.write(register::INTERRUPT_STATUS, 3);
        assert_eq!(fixture.read(register::MAGIC_VALUE), MAGIC);
    }

    #[test]
    fn negotiation_in_order() {
        let mut fixture = Fixture::new();
        assert_eq!(fixture.negotiate(VERSION_1 | EXTRA), FEATURES_OK_STATUS);
        fixture.set_queue(0, 16, 0x1000, 0x2000, 0x3000);
        fixture.set_queue(1, 4, 0x4000, 0x5000, 0x6000);
        fixture.driver_ok();
        assert_eq!(
            fixture.read(register::STATUS),
            FEATURES_OK_STATUS | status::DRIVER_OK
        );
        assert_eq!(
            fixture.transport.device().activated,
            Some(VERSION_1 | EXTRA)
        );
        let context = fixture.transport.context();
        assert!(context.is_active());
        let queue = context.queue(1).unwrap();
        assert!(queue.is_ready());
        assert_eq!(queue.size(), 4);
        assert_eq!(queue.desc_table(), GuestAddress(0x4000));
        assert_eq!(queue.avail_ring(), GuestAddress(0x5000));
        assert_eq!(queue.used_ring(), GuestAddress(0x6000));
        fixture.write(register::QUEUE_SEL, 1);
        assert_eq!(fixture.read(register::QUEUE_READY), 1);
    }

    #[test]
    fn all_status_bits_in_one_write() {
        let mut fixture = Fixture::new();
        fixture.write(register::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        fixture.write_features(VERSION_1);
        fixture.write(register::STATUS, FEATURES_OK_STATUS | status::DRIVER_OK);
        assert_eq!(
            fixture.read(register::STATUS),
            FEATURES_OK_STATUS | status::DRIVER_OK
        );
    }

    #[test]
    fn out_of_order_status_writes_are_ignored() {
        let mut fixture = Fixture::new();
        for value in [
            status::DRIVER,
            status::FEATURES_OK,
            status::DRIVER_OK,
            status::ACKNOWLEDGE | status::FEATURES_OK,
            status::ACKNOWLEDGE | status::DRIVER_OK,
            status::ACKNOWLEDGE | 0x10,
        ] {
            fixture.write(register::STATUS, value);
            assert_eq!(fixture.read(register::STATUS), 0, "{value:#x}");
        }
        fixture.write(register::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        fixture.write(
            register::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        // Clearing a bit without a reset.
        fixture.write(register::STATUS, status::ACKNOWLEDGE);
        assert_eq!(
            fixture.read(register::STATUS),
            status::ACKNOWLEDGE | status::DRIVER
        );
        // FAILED is always accepted, and stops the device.
        fixture.write(
            register::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FAILED,
        );
        assert_eq!(
            fixture.read(register::STATUS),
            status::ACKNOWLEDGE | status::DRIVER | status::FAILED
        );
        assert!(!fixture.transport.context().is_active());
    }

    #[test]
    fn features_ok_requires_offered_features_and_version_1() {
        let mut fixture = Fixture::new();
        assert_eq!(
            fixture.negotiate(VERSION_1 | UNOFFERED),
            status::ACKNOWLEDGE | status::DRIVER
        );
        assert_eq!(
            fixture.negotiate(EXTRA),
            status::ACKNOWLEDGE | status::DRIVER
        );
        // A non-zero third features word names features nobody offered.
        fixture.negotiate(0);
        fixture.write_features(VERSION_1);
        fixture.write(register::DRIVER_FEATURES_SEL, 2);
        fixture.write(register::DRIVER_FEATURES, 1);
        fixture.write(register::STATUS, FEATURES_OK_STATUS);
        assert_eq!(
            fixture.read(register::STATUS),
            status::ACKNOWLEDGE | status::DRIVER
        );
        // After a reset the same driver can succeed.
        assert_eq!(fixture.negotiate(VERSION_1), FEATURES_OK_STATUS);
    }

    #[test]
    fn driver_features_are_writable_only_between_driver_and_features_ok() {
        let mut fixture = Fixture::new();
        fixture.write_features(VERSION_1 | EXTRA);
        assert_eq!(fixture.transport.context().driver_features(), 0);
        assert_eq!(fixture.negotiate(VERSION_1), FEATURES_OK_STATUS);
        fixture.write_features(VERSION_1 | EXTRA);
        assert_eq!(fixture.transport.context().driver_features(), VERSION_1);
    }

    #[test]
    fn queue_configuration_needs_features_ok_and_a_disabled_queue() {
        let mut fixture = Fixture::new();
        fixture.write(register::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        fixture.write(register::QUEUE_SEL, 0);
        fixture.write(register::QUEUE_NUM, 4);
        fixture.write(register::QUEUE_READY, 1);
        let queue = fixture.transport.context().queue(0).unwrap();
        assert_eq!((queue.size(), queue.is_ready()), (16, false));

        fixture.negotiate(VERSION_1);
        fixture.set_queue(0, 8, 0x1000, 0x2000, 0x3000);
        // A ready queue's configuration is frozen.
        fixture.write(register::QUEUE_NUM, 2);
        fixture.write(register::QUEUE_DESC_LOW, 0x8000);
        let queue = fixture.transport.context().queue(0).unwrap();
        assert_eq!(
            (queue.size(), queue.desc_table()),
            (8, GuestAddress(0x1000))
        );
        // Disabling is always allowed, and unfreezes it.
        fixture.driver_ok();
        fixture.write(register::QUEUE_READY, 0);
        assert_eq!(fixture.read(register::QUEUE_READY), 0);
        fixture.write(register::QUEUE_NUM, 2);
        assert_eq!(fixture.transport.context().queue(0).unwrap().size(), 2);
        // Writes to a queue that does not exist go nowhere.
        fixture.write(register::QUEUE_SEL, 7);
        fixture.write(register::QUEUE_NUM, 2);
        fixture.write(register::QUEUE_READY, 1);
        assert_eq!(fixture.read(register::QUEUE_READY), 0);
        assert_eq!(
            fixture.read(register::STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
    }

    fn needs_reset(fixture: &mut Fixture) -> bool {
        fixture.read(register::STATUS) & status::DEVICE_NEEDS_RESET != 0
    }

    #[test]
    fn bad_queue_configurations_need_a_reset() {
        let cases: [(u32, u64, u64, u64); 8] = [
            (0, 0x1000, 0x2000, 0x3000),
            (3, 0x1000, 0x2000, 0x3000),
            (32, 0x1000, 0x2000, 0x3000),
            (8, 0x1_0000_0000, 0x2000, 0x3000),
            (8, 0x1000, 0xffff, 0x3000),
            (8, 0x1000, 0x2000, 0xfff8),
            (8, 0x1008, 0x2000, 0x3000),
            (8, 0x1000, 0x2000, u64::MAX - 3),
        ];
        for (size, desc, avail, used) in cases {
            let mut fixture = Fixture::new();
            fixture.negotiate(VERSION_1);
            fixture.set_queue(0, size, desc, avail, used);
            assert!(
                needs_reset(&mut fixture),
                "{size} {desc:#x} {avail:#x} {used:#x}"
            );
            assert_eq!(fixture.read(register::QUEUE_READY), 0);
            // Before DRIVER_OK no interrupt is due.
            assert_eq!(fixture.interrupts(), 0);
            fixture.driver_ok();
            assert!(!fixture.transport.context().is_active());
            // The driver cannot clear the bit; only a reset does.
            fixture.write(register::STATUS, FEATURES_OK_STATUS | status::DRIVER_OK);
            assert!(needs_reset(&mut fixture));
            fixture.write(register::STATUS, 0);
            assert_eq!(fixture.read(register::STATUS), 0);
        }
    }

    #[test]
    fn needs_reset_while_running_raises_a_config_interrupt_once() {
        let mut fixture = Fixture::new();
        fixture.negotiate(VERSION_1);
        fixture.set_queue(0, 8, 0x1000, 0x2000, 0x3000);
        fixture.driver_ok();
        fixture.transport.with_device(|_, context| {
            context.set_needs_reset(format_args!("test"));
            context.set_needs_reset(format_args!("test again"));
        });
        assert!(needs_reset(&mut fixture));
        assert_eq!(fixture.interrupts(), 1);
        assert_eq!(
            fixture.read(register::INTERRUPT_STATUS),
            interrupt::CONFIG_CHANGE
        );
        assert!(
            fixture
                .transport
                .with_device(|_, context| context.active_queue(0).is_none())
        );
    }

    #[test]
    fn interrupt_ack_clears_the_given_bits() {
        let mut fixture = Fixture::new();
        fixture.transport.with_device(|_, context| {
            context.raise_interrupt(interrupt::USED_BUFFER | interrupt::CONFIG_CHANGE);
        });
        assert_eq!(fixture.read(register::INTERRUPT_STATUS), 3);
        fixture.write(register::INTERRUPT_ACK, interrupt::USED_BUFFER);
        assert_eq!(fixture.read(register::INTERRUPT_STATUS), 2);
        fixture.write(register::INTERRUPT_ACK, 0xffff_ffff);
        assert_eq!(fixture.read(register::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn queue_notify_signals_the_queue_eventfd() {
        let mut fixture = Fixture::new();
        fixture.write(register::QUEUE_NOTIFY, 1);
        fixture.write(register::QUEUE_NOTIFY, 1);
        fixture.write(register::QUEUE_NOTIFY, 9);
        let events = fixture.transport.queue_events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].read().unwrap(), 2);
        assert!(events[0].read().is_err(), "queue 0 was not notified");
    }

    #[test]
    fn reset_returns_everything_to_the_start() {
        let mut fixture = Fixture::new();
        fixture.negotiate(VERSION_1 | EXTRA);
        fixture.set_queue(0, 8, 0x1000, 0x2000, 0x3000);
        fixture.driver_ok();
        fixture
            .transport
            .with_device(|_, context| context.raise_interrupt(1));
        fixture.write(register::STATUS, 0);
        assert_eq!(fixture.read(register::STATUS), 0);
        assert_eq!(fixture.read(register::INTERRUPT_STATUS), 0);
        assert_eq!(fixture.transport.context().driver_features(), 0);
        let queue = fixture.transport.context().queue(0).unwrap();
        assert_eq!(queue, &Queue::new(16));
        // `negotiate` starts with a reset too.
        assert_eq!(fixture.transport.device().resets, 2);
    }

    #[test]
    fn config_space_reaches_the_device() {
        let mut fixture = Fixture::new();
        fixture.transport.write(register::CONFIG + 2, &[7, 8]);
        let mut data = [0u8; 8];
        fixture.transport.read(register::CONFIG, &mut data);
        assert_eq!(data, [0, 0, 7, 8, 0, 0, 0, 0]);
        let mut byte = [0xffu8; 1];
        fixture.transport.read(register::CONFIG + 3, &mut byte);
        assert_eq!(byte, [8]);
        // Past the device's config space: ignored, reads zero.
        fixture.transport.write(register::CONFIG + 0x100, &[1]);
        let mut far = [0u8; 4];
        fixture.transport.read(register::CONFIG + 0x100, &mut far);
        assert_eq!(far, [0; 4]);

        fixture.transport.notify_config_change();
        assert_eq!(fixture.read(register::CONFIG_GENERATION), 1);
        assert_eq!(fixture.interrupts(), 0, "no interrupt before DRIVER_OK");
        fixture.negotiate(VERSION_1);
        fixture.driver_ok();
        fixture.transport.notify_config_change();
        assert_eq!(fixture.interrupts(), 1);
        assert_eq!(
            fixture.read(register::INTERRUPT_STATUS),
            interrupt::CONFIG_CHANGE
        );
    }
}
