//! Emulated devices: the MMIO bus, virtio-net over virtio-mmio, and its network back-ends.
//!
//! Device models know nothing of KVM. They see register accesses through
//! [`bus::BusDevice::read`] / [`bus::BusDevice::write`], queue notifications through eventfds
//! and raise interrupts through [`virtio::InterruptLine`]; the VMM wires those to MMIO exits,
//! ioeventfds and irqfds. Everything a guest writes (registers, rings, descriptors, packet
//! headers) is validated; a bad value is logged (rate-limited), counted, or puts the device in
//! the virtio "needs reset" state, and never panics the host or makes it touch memory outside
//! the guest's.
//!
//! The layers:
//! - [`bus`]: guest-physical ranges to devices;
//! - [`virtio`]: split virtqueues ([`virtio::queue`]), the virtio-mmio transport
//!   ([`virtio::mmio`]) and the network device ([`virtio::net`]);
//! - [`net_backend`]: where frames go, implemented by [`switch`] (an in-process learning switch
//!   with fault injection) and [`tap`] (a Linux TAP interface);
//! - [`pcap`]: packet capture of a NIC;
//! - [`worker`]: the thread that processes a NIC's queues.
//!
//! # Threads and locking
//!
//! A NIC is one [`virtio::net::VirtioNet`] behind one `Arc<Mutex<_>>`, shared by two threads:
//! the supervisor, which locks it for each register access routed by the [`bus::Bus`], and the
//! NIC's worker ([`worker::run_net_worker`]), which locks it to process the queues when a
//! queue notification eventfd or the back-end's descriptor becomes readable. One lock, held for
//! a register access or one batch of queue work, keeps the status, the queues and the counters
//! consistent without any ordering subtleties between the two threads; the worker never holds it
//! while waiting. The back-end belongs to the worker alone.
//!
//! # Wiring a NIC
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use host_agent::devices::bus::Bus;
//! use host_agent::devices::switch::{Switch, SwitchConfig};
//! use host_agent::devices::virtio::net::{Net, NetConfig, VirtioNet};
//! use host_agent::devices::worker::NetDeviceHandle;
//! use host_agent::memory::GuestMemory;
//! use shm_ring::layout::{Region, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
//! use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
//!
//! let memory = Arc::new(GuestMemory::new(&[Region::new(0, 0x10_0000)])?);
//! // The VMM registers this eventfd as the irqfd of the NIC's GSI.
//! let irq = Arc::new(EventFd::new(EFD_NONBLOCK)?);
//! let mac = [0x02, 0, 0, 0, 0, 0x0b];
//! let nic = VirtioNet::new(Net::new(NetConfig { mac, ..NetConfig::default() }), memory, irq)?;
//! // The VMM may register `nic.queue_events()[n]` as ioeventfds at
//! // VIRTIO_MMIO_BASE + register::QUEUE_NOTIFY with data match n.
//! let nic = Arc::new(Mutex::new(nic));
//!
//! let mut bus = Bus::new();
//! bus.insert(VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, nic.clone())?;
//!
//! let switch = Switch::new(SwitchConfig::default());
//! let worker = NetDeviceHandle::spawn(nic.clone(), switch.port(Some(mac))?)?;
//!
//! // The supervisor answers an MMIO read exit:
//! let mut value = [0u8; 4];
//! assert!(bus.read(VIRTIO_MMIO_BASE, &mut value));
//! assert_eq!(u32::from_le_bytes(value), 0x7472_6976);
//! worker.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What the guest driver does
//!
//! The usual virtio 1.x sequence over MMIO version 2 (the `virtio-drivers` crate's
//! `VirtIONetRaw` with its MMIO transport does exactly this):
//! 1. check MagicValue, Version 2 and DeviceID 1;
//! 2. write Status 0, then ACKNOWLEDGE | DRIVER;
//! 3. read DeviceFeatures (selector 0, then 1), write the accepted subset, which must include
//!    `VIRTIO_F_VERSION_1`, to DriverFeatures (selector 0, then 1);
//! 4. set FEATURES_OK (and read it back to see it was accepted);
//! 5. for queue 0 (receive) and queue 1 (transmit): QueueSel, read QueueNumMax, write QueueNum
//!    (a power of two, at most QueueNumMax), the three ring addresses, then QueueReady 1;
//! 6. read the MAC (and link status) from the configuration space;
//! 7. set DRIVER_OK, post receive buffers and notify queue 0.
//!
//! Every packet, both ways, starts with a 12-byte `virtio_net_hdr_v1`: all zeros on transmit,
//! all zeros but `num_buffers` = 1 on receive. Receive buffers should hold at least 1526 bytes
//! (header and a 1514-byte frame).

pub mod bus;
pub mod net_backend;
pub mod netif;
pub mod pcap;
pub mod ratelimit;
pub mod switch;
pub mod tap;
pub mod virtio;
pub mod worker;
