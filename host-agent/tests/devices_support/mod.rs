//! A guest-side virtio-net driver for tests: it sets the device up and uses its queues exactly
//! as a virtio 1.x driver does, through the MMIO bus and guest memory only.
//!
//! Layout of the test guest's memory (one region at [`MEMORY_BASE`]):
//! queue `q`'s rings at `MEMORY_BASE + q * 0x1_0000` (descriptor table, then the available
//! ring; the used ring at +0x8000), then one 4 KiB buffer slot per descriptor of each queue,
//! then a large area for oversized buffers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_agent::devices::bus::{Bus, lock_device};
use host_agent::devices::virtio::InterruptLine;
use host_agent::devices::virtio::mmio::register;
use host_agent::devices::virtio::net::{Net, NetConfig, VirtioNet};
use host_agent::devices::virtio::queue::{
    RawDescriptor, UsedElement, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, atomic_u16,
};
use host_agent::devices::virtio::status;
use host_agent::memory::{GuestAddress, GuestMemory};
use shm_ring::layout::{Region, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use zerocopy::little_endian::{U16, U32, U64};

/// Where the test guest's memory starts (OS B's segment in a real VM).
pub const MEMORY_BASE: u64 = 0x4000_0000;
/// Its size.
pub const MEMORY_SIZE: u64 = 8 << 20;
/// Buffer slot size.
pub const SLOT: u64 = 4096;
/// The largest queue size the test driver sets up.
pub const MAX_QUEUE: u16 = 256;
/// First buffer slot.
const SLOTS_BASE: u64 = MEMORY_BASE + 0x2_0000;
/// An area for buffers larger than a slot.
pub const LARGE_AREA: u64 = MEMORY_BASE + 0x40_0000;
/// Its size.
pub const LARGE_AREA_SIZE: u64 = 0x20_0000;
/// Receive queue index.
pub const RX: u16 = 0;
/// Transmit queue index.
pub const TX: u16 = 1;
/// `VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS`.
pub const BASIC_FEATURES: u64 = (1 << 32) | (1 << 5) | (1 << 16);

/// Counts interrupts.
#[derive(Debug, Default)]
pub struct CountingInterrupt(AtomicU64);

impl CountingInterrupt {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl InterruptLine for CountingInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// The driver's view of one queue.
#[derive(Debug)]
struct DriverQueue {
    index: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    last_used: u16,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
}

impl DriverQueue {
    fn new(index: u16, size: u16) -> DriverQueue {
        let base = MEMORY_BASE + u64::from(index) * 0x1_0000;
        DriverQueue {
            index,
            size,
            desc: base,
            avail: base + 16 * u64::from(size),
            used: base + 0x8000,
            avail_idx: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
        }
    }

    /// The buffer slot of descriptor `descriptor`.
    fn slot(&self, descriptor: u16) -> u64 {
        SLOTS_BASE + (u64::from(self.index) * u64::from(MAX_QUEUE) + u64::from(descriptor)) * SLOT
    }
}

/// One buffer of a chain to post: data to copy in (readable) or a length (writable).
#[derive(Clone, Debug)]
pub enum Part {
    /// A device-readable buffer in the descriptor's slot, holding these bytes.
    Readable(Vec<u8>),
    /// A device-writable buffer of this many bytes in the descriptor's slot.
    Writable(u32),
    /// A raw descriptor: address, length, flags (NEXT is managed by the driver).
    Raw(u64, u32, u16),
}

/// A test VM with one NIC, and the driver of that NIC.
pub struct Driver {
    pub memory: Arc<GuestMemory>,
    pub nic: Arc<Mutex<VirtioNet>>,
    pub bus: Bus,
    pub interrupts: Arc<CountingInterrupt>,
    queues: Vec<DriverQueue>,
    pub features: u64,
}

impl Driver {
    /// A VM whose NIC has `config`.
    pub fn new(config: NetConfig) -> Driver {
        let memory = Arc::new(GuestMemory::new(&[Region::new(MEMORY_BASE, MEMORY_SIZE)]).unwrap());
        let interrupts = Arc::new(CountingInterrupt::default());
        let nic = VirtioNet::new(Net::new(config), memory.clone(), interrupts.clone()).unwrap();
        let nic = Arc::new(Mutex::new(nic));
        let mut bus = Bus::new();
        bus.insert(VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, nic.clone())
            .unwrap();
        Driver {
            memory,
            nic,
            bus,
            interrupts,
            queues: Vec::new(),
            features: 0,
        }
    }

    pub fn read(&self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        assert!(self.bus.read(VIRTIO_MMIO_BASE + offset, &mut data));
        u32::from_le_bytes(data)
    }

    pub fn write(&self, offset: u64, value: u32) {
        assert!(
            self.bus
                .write(VIRTIO_MMIO_BASE + offset, &value.to_le_bytes())
        );
    }

    pub fn status(&self) -> u32 {
        self.read(register::STATUS)
    }

    /// Reads `len` bytes of the configuration space at `offset` with one access.
    pub fn read_config(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        assert!(
            self.bus
                .read(VIRTIO_MMIO_BASE + register::CONFIG + offset, &mut data)
        );
        data
    }

    /// The virtio 1.x initialisation sequence, accepting `wanted` of the offered features and
    /// setting both queues up with `queue_size` entries. Returns the negotiated features.
    pub fn init(&mut self, queue_size: u16, wanted: u64) -> u64 {
        assert_eq!(self.read(register::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(self.read(register::VERSION), 2);
        assert_eq!(self.read(register::DEVICE_ID), 1);
        self.write(register::STATUS, 0);
        self.write(register::STATUS, status::ACKNOWLEDGE);
        self.write(register::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write(register::DEVICE_FEATURES_SEL, 0);
        let mut offered = u64::from(self.read(register::DEVICE_FEATURES));
        self.write(register::DEVICE_FEATURES_SEL, 1);
        offered |= u64::from(self.read(register::DEVICE_FEATURES)) << 32;
        let accepted = offered & wanted;
        self.write(register::DRIVER_FEATURES_SEL, 0);
        self.write(register::DRIVER_FEATURES, accepted as u32);
        self.write(register::DRIVER_FEATURES_SEL, 1);
        self.write(register::DRIVER_FEATURES, (accepted >> 32) as u32);
        let features_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write(register::STATUS, features_ok);
        assert_eq!(
            self.status(),
            features_ok,
            "the device refused the features"
        );
        self.queues.clear();
        for index in [RX, TX] {
            let queue = DriverQueue::new(index, queue_size);
            self.write(register::QUEUE_SEL, u32::from(index));
            assert!(self.read(register::QUEUE_NUM_MAX) >= u32::from(queue_size));
            assert_eq!(self.read(register::QUEUE_READY), 0);
            // Rings start zeroed.
            self.memory
                .zero(GuestAddress(queue.desc), 0x1_0000)
                .unwrap();
            self.write(register::QUEUE_NUM, u32::from(queue_size));
            for (low, address) in [
                (register::QUEUE_DESC_LOW, queue.desc),
                (register::QUEUE_DRIVER_LOW, queue.avail),
                (register::QUEUE_DEVICE_LOW, queue.used),
            ] {
                self.write(low, address as u32);
                self.write(low + 4, (address >> 32) as u32);
            }
            self.write(register::QUEUE_READY, 1);
            assert_eq!(self.read(register::QUEUE_READY), 1);
            self.queues.push(queue);
        }
        self.write(register::STATUS, features_ok | status::DRIVER_OK);
        assert_eq!(self.status(), features_ok | status::DRIVER_OK);
        self.features = accepted;
        accepted
    }

    /// Free descriptors of `queue`.
    pub fn free_descriptors(&self, queue: u16) -> usize {
        self.queues[usize::from(queue)].free.len()
    }

    /// Writes a chain of `parts` into free descriptors and publishes it; no notification.
    /// Returns the head, or `None` if there are not enough free descriptors.
    pub fn push_chain(&mut self, queue: u16, parts: &[Part]) -> Option<u16> {
        let memory = self.memory.clone();
        let queue = &mut self.queues[usize::from(queue)];
        if queue.free.len() < parts.len() || parts.is_empty() {
            return None;
        }
        let indices: Vec<u16> = (0..parts.len())
            .map(|_| queue.free.pop().unwrap())
            .collect();
        for (position, (part, index)) in parts.iter().zip(&indices).enumerate() {
            let (address, len, mut flags) = match part {
                Part::Readable(bytes) => {
                    let slot = queue.slot(*index);
                    if bytes.len() as u64 <= SLOT {
                        memory.write(GuestAddress(slot), bytes).unwrap();
                        (slot, bytes.len() as u32, 0)
                    } else {
                        memory.write(GuestAddress(LARGE_AREA), bytes).unwrap();
                        (LARGE_AREA, bytes.len() as u32, 0)
                    }
                }
                Part::Writable(len) => (queue.slot(*index), *len, VIRTQ_DESC_F_WRITE),
                Part::Raw(address, len, flags) => (*address, *len, *flags),
            };
            let next = indices.get(position + 1).copied().unwrap_or(0);
            if position + 1 < indices.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let raw = RawDescriptor {
                address: U64::new(address),
                len: U32::new(len),
                flags: U16::new(flags),
                next: U16::new(next),
            };
            memory
                .write_obj(GuestAddress(queue.desc + u64::from(*index) * 16), &raw)
                .unwrap();
        }
        let head = indices[0];
        queue.chains.insert(head, indices);
        let slot = u64::from(queue.avail_idx % queue.size);
        memory
            .write_obj(GuestAddress(queue.avail + 4 + 2 * slot), &U16::new(head))
            .unwrap();
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        atomic_u16(&memory, GuestAddress(queue.avail + 2))
            .unwrap()
            .store(queue.avail_idx, Ordering::Release);
        Some(head)
    }

    /// Sets the available ring's flags (1: no interrupts, please).
    pub fn set_avail_flags(&self, queue: u16, flags: u16) {
        let queue = &self.queues[usize::from(queue)];
        atomic_u16(&self.memory, GuestAddress(queue.avail))
            .unwrap()
            .store(flags, Ordering::Release);
    }

    /// The used ring's flags, as the device wrote them (1: no notifications, please).
    pub fn used_flags(&self, queue: u16) -> u16 {
        let queue = &self.queues[usize::from(queue)];
        atomic_u16(&self.memory, GuestAddress(queue.used))
            .unwrap()
            .load(Ordering::Acquire)
    }

    /// Overwrites the available index (for tests of a hostile driver).
    pub fn set_avail_idx(&mut self, queue: u16, value: u16) {
        let queue = &mut self.queues[usize::from(queue)];
        queue.avail_idx = value;
        atomic_u16(&self.memory, GuestAddress(queue.avail + 2))
            .unwrap()
            .store(value, Ordering::Release);
    }

    /// The address of queue `queue`'s descriptor table.
    pub fn desc_table(&self, queue: u16) -> u64 {
        self.queues[usize::from(queue)].desc
    }

    pub fn notify(&self, queue: u16) {
        self.write(register::QUEUE_NOTIFY, u32::from(queue));
    }

    /// New used entries of `queue` (head, length), with their descriptors freed.
    pub fn take_used(&mut self, queue: u16) -> Vec<(u16, u32)> {
        let memory = self.memory.clone();
        let queue = &mut self.queues[usize::from(queue)];
        let used_idx = atomic_u16(&memory, GuestAddress(queue.used + 2))
            .unwrap()
            .load(Ordering::Acquire);
        let mut entries = Vec::new();
        while queue.last_used != used_idx {
            let slot = u64::from(queue.last_used % queue.size);
            let element: UsedElement = memory
                .read_obj(GuestAddress(queue.used + 4 + 8 * slot))
                .unwrap();
            let head = element.id.get() as u16;
            if let Some(indices) = queue.chains.remove(&head) {
                queue.free.extend(indices);
            }
            entries.push((head, element.len.get()));
            queue.last_used = queue.last_used.wrapping_add(1);
        }
        entries
    }

    /// Queues `frame` for transmission (header, then frame, two descriptors) and notifies.
    pub fn send(&mut self, frame: &[u8]) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.take_used(TX);
            if self.free_descriptors(TX) >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the device does not complete transmissions"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let head = self
            .push_chain(
                TX,
                &[Part::Readable(vec![0; 12]), Part::Readable(frame.to_vec())],
            )
            .unwrap();
        self.notify(TX);
        head
    }

    /// Posts `count` receive buffers of `len` bytes and notifies.
    pub fn post_rx(&mut self, count: usize, len: u32) {
        for _ in 0..count {
            self.push_chain(RX, &[Part::Writable(len)]).unwrap();
        }
        self.notify(RX);
    }

    /// Frames received so far (headers checked and stripped); each buffer is posted again.
    pub fn receive(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for (head, len) in self.take_used(RX) {
            let queue = &self.queues[usize::from(RX)];
            let mut bytes = vec![0u8; len as usize];
            self.memory
                .read(GuestAddress(queue.slot(head)), &mut bytes)
                .unwrap();
            assert!(bytes.len() >= 12, "a received packet has a header");
            assert_eq!(&bytes[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
            frames.push(bytes[12..].to_vec());
            self.push_chain(RX, &[Part::Writable(2048)]).unwrap();
        }
        if !frames.is_empty() {
            self.notify(RX);
        }
        frames
    }

    /// Waits until `count` frames have been received, or the timeout.
    pub fn receive_count(&mut self, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        while frames.len() < count && Instant::now() < deadline {
            let new = self.receive();
            if new.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
            frames.extend(new);
        }
        frames
    }

    /// The NIC, locked.
    pub fn nic(&self) -> std::sync::MutexGuard<'_, VirtioNet> {
        lock_device(&self.nic)
    }
}

/// An Ethernet frame from `source` to `destination` carrying `sequence` and `payload_len`
/// filler bytes (EtherType 0x88b5, local experimental).
pub fn frame(destination: [u8; 6], source: [u8; 6], sequence: u32, payload_len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(18 + payload_len);
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(&sequence.to_be_bytes());
    frame.extend((0..payload_len).map(|index| (index as u8) ^ (sequence as u8)));
    frame
}

/// The sequence number of a frame built by [`frame`].
pub fn sequence(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[14..18].try_into().unwrap())
}

/// Polls `condition` every millisecond until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
