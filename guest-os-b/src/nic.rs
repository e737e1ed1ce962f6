//! OS B's NIC: the virtio-net device at `VIRTIO_MMIO_BASE`, driven through `virtio-drivers`'
//! non-blocking raw interface so that many frames are in flight at once.
//!
//! Receive buffers are posted once and re-posted as soon as their frame is copied out; transmit
//! buffers are reclaimed when the device reports them used. A token (the descriptor head the
//! driver returns) maps to the buffer it carries.

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use shm_ring::layout::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

/// Descriptors per queue.
pub const QUEUE_SIZE: usize = 256;
/// Bytes per buffer: a full Ethernet frame plus the virtio-net header.
const BUFFER_SIZE: usize = 2048;

/// DMA for a guest whose segments are identity-mapped: guest-physical equals virtual, and the
/// device (the host) can reach all of OS B's memory, so sharing needs no bounce buffer.
#[derive(Debug)]
pub struct IdentityHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory from the kernel heap that stays
// allocated until `dma_dealloc`; physical addresses equal virtual ones in this OS (the host
// identity-maps the segment), so the addresses handed to the device name that very memory.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Ok(layout) = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        // SAFETY: the layout has a non-zero size (virtio-drivers never asks for zero pages).
        let pointer = unsafe { alloc::alloc::alloc_zeroed(layout) };
        match NonNull::new(pointer) {
            Some(pointer) => (pointer.as_ptr() as PhysAddr, pointer),
            None => panic!("out of memory for {pages} DMA pages"),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let Ok(layout) = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE) else {
            return -1;
        };
        // SAFETY: `vaddr` came from `dma_alloc` with the same page count (the caller's
        // contract), hence the same layout.
        unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Why the NIC could not be used.
#[derive(Debug)]
pub enum NicError {
    /// The MMIO transport rejected the device.
    Transport(virtio_drivers::transport::mmio::MmioError),
    /// The driver failed.
    Driver(virtio_drivers::Error),
}

impl core::fmt::Display for NicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NicError::Transport(error) => write!(f, "virtio-mmio transport: {error}"),
            NicError::Driver(error) => write!(f, "virtio-net driver: {error}"),
        }
    }
}

type Buffer = [u8; BUFFER_SIZE];

/// The NIC with its buffers.
pub struct Nic {
    device: VirtIONetRaw<IdentityHal, MmioTransport<'static>, QUEUE_SIZE>,
    rx_buffers: Box<[Buffer]>,
    /// For each receive token, the buffer it carries.
    rx_token_buffer: [u16; QUEUE_SIZE],
    tx_buffers: Box<[Buffer]>,
    tx_token_buffer: [u16; QUEUE_SIZE],
    tx_free: Vec<u16>,
    /// Frames received, sent, and dropped because no transmit buffer was free.
    pub counters: [u64; 3],
}

impl core::fmt::Debug for Nic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Nic")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// The transmit queue is full: the frame was not sent.
#[derive(Clone, Copy, Debug)]
pub struct TransmitFull;

impl Nic {
    /// Probes the device, negotiates features and posts every receive buffer.
    pub fn new() -> Result<Nic, NicError> {
        let header = NonNull::new(VIRTIO_MMIO_BASE as *mut VirtIOHeader).ok_or(
            NicError::Transport(virtio_drivers::transport::mmio::MmioError::BadMagic(0)),
        )?;
        // SAFETY: the host maps OS B's virtio-mmio window at VIRTIO_MMIO_BASE (uncached) for
        // this OS only, for the VM's lifetime; nothing else in this kernel touches it.
        let transport = unsafe { MmioTransport::new(header, VIRTIO_MMIO_SIZE as usize) }
            .map_err(NicError::Transport)?;
        let device = VirtIONetRaw::new(transport).map_err(NicError::Driver)?;
        let mut nic = Nic {
            device,
            rx_buffers: alloc::vec![[0u8; BUFFER_SIZE]; QUEUE_SIZE].into_boxed_slice(),
            rx_token_buffer: [0; QUEUE_SIZE],
            tx_buffers: alloc::vec![[0u8; BUFFER_SIZE]; QUEUE_SIZE].into_boxed_slice(),
            tx_token_buffer: [0; QUEUE_SIZE],
            tx_free: (0..QUEUE_SIZE as u16).collect(),
            counters: [0; 3],
        };
        for index in 0..QUEUE_SIZE as u16 {
            nic.post_receive(index)?;
        }
        nic.device.enable_interrupts();
        Ok(nic)
    }

    /// The MAC address from the device's configuration space.
    pub fn mac(&self) -> [u8; 6] {
        self.device.mac_address()
    }

    fn post_receive(&mut self, index: u16) -> Result<(), NicError> {
        let buffer = &mut self.rx_buffers[usize::from(index)];
        // SAFETY: the buffer lives in `self.rx_buffers` (a heap allocation that never moves)
        // and is not touched again until the device returns this token.
        let token = unsafe { self.device.receive_begin(buffer) }.map_err(NicError::Driver)?;
        if let Some(slot) = self.rx_token_buffer.get_mut(usize::from(token)) {
            *slot = index;
        }
        Ok(())
    }

    /// Acknowledges the device's interrupt.
    pub fn ack_interrupt(&mut self) {
        let _ = self.device.ack_interrupt();
    }

    /// Copies the next received frame into `out`; returns its length.
    pub fn receive(&mut self, out: &mut [u8]) -> Option<usize> {
        let token = self.device.poll_receive()?;
        let index = *self.rx_token_buffer.get(usize::from(token))?;
        let buffer = &mut self.rx_buffers[usize::from(index)];
        // SAFETY: `token` was returned by `receive_begin` for exactly this buffer.
        let completed = unsafe { self.device.receive_complete(token, buffer) };
        let result = match completed {
            Ok((header, len)) if len <= out.len() => {
                out[..len].copy_from_slice(&buffer[header..header + len]);
                self.counters[0] += 1;
                Some(len)
            }
            _ => None,
        };
        // The buffer goes straight back to the device; a failure here only costs one buffer.
        let _ = self.post_receive(index);
        result.or_else(|| self.receive(out))
    }

    fn reclaim_transmitted(&mut self) {
        while let Some(token) = self.device.poll_transmit() {
            let Some(&index) = self.tx_token_buffer.get(usize::from(token)) else {
                return;
            };
            let buffer = &self.tx_buffers[usize::from(index)];
            // SAFETY: `token` was returned by `transmit_begin` for this buffer.
            if unsafe { self.device.transmit_complete(token, buffer) }.is_err() {
                return;
            }
            self.tx_free.push(index);
        }
    }

    /// Queues `frame` for transmission without waiting for the device.
    pub fn transmit(&mut self, frame: &[u8]) -> Result<(), TransmitFull> {
        self.reclaim_transmitted();
        let Some(index) = self.tx_free.pop() else {
            self.counters[2] += 1;
            return Err(TransmitFull);
        };
        let buffer = &mut self.tx_buffers[usize::from(index)];
        let Ok(header) = self.device.fill_buffer_header(buffer) else {
            self.tx_free.push(index);
            return Err(TransmitFull);
        };
        let Some(body) = buffer.get_mut(header..header + frame.len()) else {
            self.tx_free.push(index);
            return Err(TransmitFull);
        };
        body.copy_from_slice(frame);
        let buffer = &self.tx_buffers[usize::from(index)][..header + frame.len()];
        // SAFETY: the buffer lives in `self.tx_buffers` and is not written again until the
        // device returns this token (it is off the free list until then).
        match unsafe { self.device.transmit_begin(buffer) } {
            Ok(token) => {
                if let Some(slot) = self.tx_token_buffer.get_mut(usize::from(token)) {
                    *slot = index;
                }
                self.counters[1] += 1;
                Ok(())
            }
            Err(_) => {
                self.tx_free.push(index);
                Err(TransmitFull)
            }
        }
    }
}

/// Gives the device a transmit queue whose descriptor table lies outside guest memory, and
/// checks that it refuses it ("needs reset") and works again after a reset.
pub fn hostile_queue() -> guest_rt::exit::Status {
    use guest_rt::exit::Status;
    use guest_rt::println;
    use virtio_drivers::transport::{DeviceStatus, Transport};

    let Some(header) = NonNull::new(VIRTIO_MMIO_BASE as *mut VirtIOHeader) else {
        return Status::Failed;
    };
    // SAFETY: as in `Nic::new`: the window is mapped for this OS only and nothing else uses it.
    let mut transport = match unsafe { MmioTransport::new(header, VIRTIO_MMIO_SIZE as usize) } {
        Ok(transport) => transport,
        Err(error) => {
            println!("nic: {error}");
            return Status::Failed;
        }
    };
    const VERSION_1: u64 = 1 << 32;
    transport.set_status(DeviceStatus::empty());
    transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let features = transport.read_device_features() & VERSION_1;
    transport.write_driver_features(features);
    transport
        .set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    // Queue 1 (transmit): a descriptor table far outside guest memory.
    let outside = 0xF000_0000;
    let rings = alloc::vec![0u8; 4096].leak();
    let driver_area = rings.as_ptr() as u64;
    transport.queue_set(1, 16, outside, driver_area, driver_area + 2048);
    transport.set_status(
        DeviceStatus::ACKNOWLEDGE
            | DeviceStatus::DRIVER
            | DeviceStatus::FEATURES_OK
            | DeviceStatus::DRIVER_OK,
    );
    transport.notify(1);
    let status = transport.get_status();
    if !status.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
        println!(
            "nic: the device accepted a descriptor table outside guest memory (status {status:?})"
        );
        return Status::Failed;
    }
    println!("nic: the device refused the bad queue and needs a reset, as it should");
    transport.set_status(DeviceStatus::empty());
    if transport.get_status() != DeviceStatus::empty() {
        println!("nic: the device did not reset");
        return Status::Failed;
    }
    drop(transport);
    // A normal bring-up now works, and a frame goes out.
    let mut nic = match Nic::new() {
        Ok(nic) => nic,
        Err(error) => {
            println!("nic: bring-up after the reset failed: {error}");
            return Status::Failed;
        }
    };
    let mut frame = [0u8; 60];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&nic.mac());
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    frame[14..30].copy_from_slice(b"after the reset!");
    if nic.transmit(&frame).is_err() {
        println!("nic: transmit after the reset failed");
        return Status::Failed;
    }
    println!("nic: after the reset the device is usable again");
    Status::Success
}
