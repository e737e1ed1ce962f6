//! The guest's own driver against the device model: the `virtio-drivers` crate's `VirtIONetRaw`
//! runs on the host, its DMA memory carved out of a `GuestMemory` (guest-physical addresses are
//! real addresses in that memory) and its register accesses forwarded to the device through the
//! MMIO bus, while the device's worker thread processes the queues concurrently.
//!
//! The register accesses go through [`BusTransport`], which performs, register by register, the
//! accesses `virtio_drivers::transport::mmio::MmioTransport` makes for a version 2 device (that
//! transport needs a real MMIO mapping that traps, which a host test has no way to provide);
//! `mmio_transport_accepts_the_register_block` separately checks that `MmioTransport` accepts
//! the device's register block.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use host_agent::devices::bus::{Bus, lock_device};
use host_agent::devices::net_backend::NetBackend;
use host_agent::devices::switch::{Switch, SwitchConfig};
use host_agent::devices::virtio::InterruptLine;
use host_agent::devices::virtio::mmio::register;
use host_agent::devices::virtio::net::{Net, NetConfig, VirtioNet};
use host_agent::devices::worker::NetDeviceHandle;
use host_agent::memory::{GuestAddress, GuestMemory};
use shm_ring::layout::{Region, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, MmioVersion, VirtIOHeader};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Base of the DMA memory (OS B's segment in a real VM).
const DMA_BASE: u64 = 0x4000_0000;
/// Pages of DMA memory.
const DMA_PAGES: usize = 2048;
const QUEUE_SIZE: usize = 16;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
const TIMEOUT: Duration = Duration::from_secs(20);

/// Guest memory and a first-fit page allocator over it, shared by every test in this file.
struct Dma {
    memory: Arc<GuestMemory>,
    pages: Mutex<Vec<bool>>,
}

fn dma() -> &'static Dma {
    static DMA: OnceLock<Dma> = OnceLock::new();
    DMA.get_or_init(|| Dma {
        memory: Arc::new(
            GuestMemory::new(&[Region::new(DMA_BASE, (DMA_PAGES * PAGE_SIZE) as u64)]).unwrap(),
        ),
        pages: Mutex::new(vec![false; DMA_PAGES]),
    })
}

impl Dma {
    fn allocate(&self, count: usize) -> PhysAddr {
        let mut pages = self.pages.lock().unwrap();
        let start = (0..=DMA_PAGES - count)
            .find(|start| pages[*start..*start + count].iter().all(|used| !used))
            .expect("DMA memory exhausted");
        pages[start..start + count].fill(true);
        let address = DMA_BASE + (start * PAGE_SIZE) as u64;
        self.memory
            .zero(GuestAddress(address), (count * PAGE_SIZE) as u64)
            .unwrap();
        address
    }

    fn free(&self, address: PhysAddr, count: usize) {
        let start = ((address - DMA_BASE) as usize) / PAGE_SIZE;
        self.pages.lock().unwrap()[start..start + count].fill(false);
    }
}

/// A HAL whose physical addresses are guest-physical addresses in [`dma`]'s memory; shared
/// buffers are bounced through it.
struct TestHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory inside the guest memory mapping that
// no other allocation uses until `dma_dealloc`; `share` returns the guest address of a bounce
// buffer of the buffer's size, and `unshare` copies it back and frees it.
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let address = dma().allocate(pages);
        let pointer = dma()
            .memory
            .host_pointer(GuestAddress(address), (pages * PAGE_SIZE) as u64)
            .unwrap();
        (address, NonNull::new(pointer).unwrap())
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        dma().free(paddr, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // Only the PCI transport maps BARs; these tests never use it.
        NonNull::dangling()
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let len = buffer.len();
        let address = dma().allocate(len.div_ceil(PAGE_SIZE).max(1));
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller guarantees `buffer` is valid and not accessed by anyone else
            // during this call.
            let bytes = unsafe { buffer.as_ref() };
            dma().memory.write(GuestAddress(address), bytes).unwrap();
        }
        address
    }

    unsafe fn unshare(paddr: PhysAddr, mut buffer: NonNull<[u8]>, direction: BufferDirection) {
        let len = buffer.len();
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: as in `share`.
            let bytes = unsafe { buffer.as_mut() };
            dma().memory.read(GuestAddress(paddr), bytes).unwrap();
        }
        dma().free(paddr, len.div_ceil(PAGE_SIZE).max(1));
    }
}

/// The register accesses of `virtio_drivers`' MMIO transport (version 2), through the bus.
struct BusTransport {
    bus: Arc<Bus>,
}

impl BusTransport {
    fn read(&self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        assert!(self.bus.read(VIRTIO_MMIO_BASE + offset, &mut data));
        u32::from_le_bytes(data)
    }

    fn write(&self, offset: u64, value: u32) {
        assert!(
            self.bus
                .write(VIRTIO_MMIO_BASE + offset, &value.to_le_bytes())
        );
    }
}

impl Transport for BusTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::try_from(self.read(register::DEVICE_ID)).unwrap()
    }

    fn read_device_features(&mut self) -> u64 {
        self.write(register::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.read(register::DEVICE_FEATURES));
        self.write(register::DEVICE_FEATURES_SEL, 1);
        low | (u64::from(self.read(register::DEVICE_FEATURES)) << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.write(register::DRIVER_FEATURES_SEL, 0);
        self.write(register::DRIVER_FEATURES, driver_features as u32);
        self.write(register::DRIVER_FEATURES_SEL, 1);
        self.write(register::DRIVER_FEATURES, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.write(register::QUEUE_SEL, queue.into());
        self.read(register::QUEUE_NUM_MAX)
    }

    fn notify(&mut self, queue: u16) {
        self.write(register::QUEUE_NOTIFY, queue.into());
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.read(register::STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.write(register::STATUS, status.bits());
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.write(register::QUEUE_SEL, queue.into());
        self.write(register::QUEUE_NUM, size);
        self.write(register::QUEUE_DESC_LOW, descriptors as u32);
        self.write(register::QUEUE_DESC_HIGH, (descriptors >> 32) as u32);
        self.write(register::QUEUE_DRIVER_LOW, driver_area as u32);
        self.write(register::QUEUE_DRIVER_HIGH, (driver_area >> 32) as u32);
        self.write(register::QUEUE_DEVICE_LOW, device_area as u32);
        self.write(register::QUEUE_DEVICE_HIGH, (device_area >> 32) as u32);
        self.write(register::QUEUE_READY, 1);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.write(register::QUEUE_SEL, queue.into());
        self.write(register::QUEUE_READY, 0);
        let deadline = Instant::now() + TIMEOUT;
        while self.read(register::QUEUE_READY) != 0 {
            assert!(Instant::now() < deadline, "QueueReady does not read back 0");
        }
        for offset in [
            register::QUEUE_NUM,
            register::QUEUE_DESC_LOW,
            register::QUEUE_DESC_HIGH,
            register::QUEUE_DRIVER_LOW,
            register::QUEUE_DRIVER_HIGH,
            register::QUEUE_DEVICE_LOW,
            register::QUEUE_DEVICE_HIGH,
        ] {
            self.write(offset, 0);
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.write(register::QUEUE_SEL, queue.into());
        self.read(register::QUEUE_READY) != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let status = self.read(register::INTERRUPT_STATUS);
        if status != 0 {
            self.write(register::INTERRUPT_ACK, status);
        }
        InterruptStatus::from_bits_truncate(status)
    }

    fn read_config_generation(&self) -> u32 {
        self.read(register::CONFIG_GENERATION)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let mut value = T::new_zeroed();
        let address = VIRTIO_MMIO_BASE + register::CONFIG + offset as u64;
        assert!(self.bus.read(address, value.as_mut_bytes()));
        Ok(value)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let address = VIRTIO_MMIO_BASE + register::CONFIG + offset as u64;
        assert!(self.bus.write(address, value.as_bytes()));
        Ok(())
    }
}

#[derive(Default)]
struct CountingInterrupt(AtomicU64);

impl InterruptLine for CountingInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A NIC over the shared DMA memory, on a bus, with its interrupt counter.
fn nic(config: NetConfig) -> (Arc<Mutex<VirtioNet>>, Arc<Bus>, Arc<CountingInterrupt>) {
    let interrupts = Arc::new(CountingInterrupt::default());
    let nic = VirtioNet::new(Net::new(config), dma().memory.clone(), interrupts.clone()).unwrap();
    let nic = Arc::new(Mutex::new(nic));
    let mut bus = Bus::new();
    bus.insert(VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, nic.clone())
        .unwrap();
    (nic, Arc::new(bus), interrupts)
}

fn frame(destination: [u8; 6], source: [u8; 6], sequence: u8, len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend((0..len - 14).map(|index| (index as u8).wrapping_add(sequence)));
    frame
}

/// Runs `work` on its own thread and fails the test if it does not finish in time (the
/// driver's blocking calls spin forever if the device never answers).
fn with_timeout<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(work());
    });
    receiver
        .recv_timeout(TIMEOUT)
        .expect("the driver did not finish: it is waiting for the device")
}

/// Brings the driver up, then moves frames both ways with its non-blocking and blocking calls.
fn exchange_frames(config: NetConfig) {
    let (nic, bus, interrupts) = nic(config);
    let switch = Switch::new(SwitchConfig::default());
    let mut peer = switch.port(Some(PEER)).unwrap();
    let worker = NetDeviceHandle::spawn(nic.clone(), switch.port(Some(MAC)).unwrap()).unwrap();

    let driver_bus = bus.clone();
    let (driver_side, peer_side) = (mpsc::channel::<Vec<u8>>(), mpsc::channel::<()>());
    let (to_peer, from_driver) = driver_side;
    let (peer_done, wait_peer) = peer_side;

    let driver = std::thread::spawn(move || {
        let transport = BusTransport { bus: driver_bus };
        let mut net = VirtIONetRaw::<TestHal, BusTransport, QUEUE_SIZE>::new(transport).unwrap();
        assert_eq!(net.mac_address(), MAC);

        // Post receive buffers.
        let mut buffers: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 2048]).collect();
        let mut tokens = HashMap::new();
        for (index, buffer) in buffers.iter_mut().enumerate() {
            // SAFETY: the buffer is left alone until `receive_complete` returns it.
            let token = unsafe { net.receive_begin(buffer) }.unwrap();
            tokens.insert(token, index);
        }
        // Tell the peer to send, then receive its frames.
        to_peer.send(Vec::new()).unwrap();
        let mut received = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while received.len() < 6 {
            assert!(
                Instant::now() < deadline,
                "frames from the peer did not arrive"
            );
            let Some(token) = net.poll_receive() else {
                std::thread::yield_now();
                continue;
            };
            let index = tokens.remove(&token).unwrap();
            // SAFETY: the same buffer that `receive_begin` returned this token for.
            let (header, len) =
                unsafe { net.receive_complete(token, &mut buffers[index]) }.unwrap();
            assert_eq!(header, 12);
            received.push(buffers[index][header..header + len].to_vec());
            // SAFETY: as above, the buffer is posted again.
            let token = unsafe { net.receive_begin(&mut buffers[index]) }.unwrap();
            tokens.insert(token, index);
        }
        assert!(
            net.ack_interrupt()
                .contains(InterruptStatus::QUEUE_INTERRUPT)
        );

        // Transmit with the blocking call (header and frame in two buffers).
        for sequence in 0..4 {
            net.send(&frame(PEER, MAC, sequence, 60 + usize::from(sequence)))
                .unwrap();
        }
        // Transmit with the non-blocking calls (header filled in place, one buffer).
        let mut packet = vec![0u8; 12 + 100];
        let header = net.fill_buffer_header(&mut packet).unwrap();
        packet[header..].copy_from_slice(&frame(PEER, MAC, 9, 100));
        // SAFETY: `packet` is not touched until `transmit_complete`.
        let token = unsafe { net.transmit_begin(&packet) }.unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while net.poll_transmit() != Some(token) {
            assert!(
                Instant::now() < deadline,
                "the transmission did not complete"
            );
            std::thread::yield_now();
        }
        // SAFETY: the same buffer as `transmit_begin`.
        unsafe { net.transmit_complete(token, &packet) }.unwrap();
        wait_peer.recv_timeout(TIMEOUT).unwrap();
        received
        // Dropping `net` lets go of both queues.
    });

    from_driver.recv_timeout(TIMEOUT).unwrap();
    let sent: Vec<Vec<u8>> = (0..6)
        .map(|sequence| frame(MAC, PEER, sequence, 64 + 100 * usize::from(sequence)))
        .collect();
    for frame in &sent {
        peer.send(frame).unwrap();
    }
    let mut from_nic = Vec::new();
    for _ in 0..5 {
        from_nic.push(
            peer.receive_timeout(TIMEOUT)
                .expect("a frame from the driver"),
        );
    }
    peer_done.send(()).unwrap();
    let received = with_timeout(move || driver.join().unwrap());
    assert_eq!(received, sent);
    let expected: Vec<Vec<u8>> = (0..4)
        .map(|sequence| frame(PEER, MAC, sequence, 60 + usize::from(sequence)))
        .chain([frame(PEER, MAC, 9, 100)])
        .collect();
    assert_eq!(from_nic, expected);

    let nic = lock_device(&nic);
    let counters = nic.counters();
    assert_eq!((counters.rx_packets, counters.tx_packets), (6, 5));
    assert_eq!(counters.tx_malformed + counters.rx_malformed, 0);
    assert!(interrupts.0.load(Ordering::Relaxed) > 0);
    // The driver took what was offered: indirect descriptors (its `send` puts header and frame
    // in an indirect table) and the event index, when offered.
    let negotiated = nic.context().driver_features();
    assert_eq!(negotiated & (1 << 28) != 0, config.indirect_desc);
    assert_eq!(negotiated & (1 << 29) != 0, config.event_idx);
    // The driver released both queues when it was dropped.
    assert!(!nic.context().queue(0).unwrap().is_ready());
    assert!(!nic.context().queue(1).unwrap().is_ready());
    drop(nic);
    worker.stop().unwrap();
}

#[test]
fn virtio_drivers_net_raw_works_with_the_device() {
    exchange_frames(NetConfig {
        mac: MAC,
        ..NetConfig::default()
    });
}

#[test]
fn virtio_drivers_net_raw_works_with_event_index() {
    exchange_frames(NetConfig {
        mac: MAC,
        event_idx: true,
        ..NetConfig::default()
    });
}

#[test]
fn virtio_drivers_net_raw_works_without_indirect_descriptors() {
    exchange_frames(NetConfig {
        mac: MAC,
        indirect_desc: false,
        ..NetConfig::default()
    });
}

#[test]
fn mmio_transport_accepts_the_register_block() {
    let (_nic, bus, _) = nic(NetConfig {
        mac: MAC,
        ..NetConfig::default()
    });
    // A snapshot of the register block and configuration space, as the guest would see them.
    let mut page = vec![0u32; VIRTIO_MMIO_SIZE as usize / 4];
    for (index, word) in page.iter_mut().enumerate().take(0x110 / 4) {
        let mut data = [0u8; 4];
        bus.read(VIRTIO_MMIO_BASE + 4 * index as u64, &mut data);
        *word = u32::from_le_bytes(data);
    }
    let header = NonNull::new(page.as_mut_ptr().cast::<VirtIOHeader>()).unwrap();
    // SAFETY: `page` is a 4-byte aligned, VIRTIO_MMIO_SIZE-byte allocation that outlives the
    // transport and that nothing else accesses meanwhile.
    let transport = unsafe { MmioTransport::new(header, VIRTIO_MMIO_SIZE as usize) }.unwrap();
    assert_eq!(transport.version(), MmioVersion::Modern);
    assert_eq!(transport.device_type(), DeviceType::Network);
    assert_eq!(transport.read_config_space::<[u8; 6]>(0).unwrap(), MAC);
    drop(transport);
}
