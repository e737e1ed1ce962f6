//! The virtio-net device (virtio 1.x section 5.1): one receive queue, one transmit queue.
//!
//! Offered features: `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC`, `VIRTIO_NET_F_STATUS`, and by
//! default `VIRTIO_RING_F_INDIRECT_DESC`; `VIRTIO_RING_F_EVENT_IDX` on request
//! ([`NetConfig::event_idx`]). No checksum or segmentation offloads and no mergeable receive
//! buffers, so every packet is one whole Ethernet frame behind a 12-byte `virtio_net_hdr_v1`
//! whose fields are all zero (`num_buffers` 1 on receive).
//!
//! - Transmit (queue 1): each chain holds the header then the frame, device-readable only. The
//!   header is skipped, the frame (14 to [`MAX_FRAME_LEN`] bytes) goes to the back-end, and the
//!   chain is returned with length 0. A malformed chain (writable buffers, too short, too long)
//!   is returned unsent and counted.
//! - Receive (queue 0): each chain is device-writable only and must hold the header plus the
//!   whole frame (a driver posting 1526-byte buffers receives any frame of a 1500-byte MTU). A
//!   frame is dropped and counted when no buffer is available, and also when the next buffer is
//!   too small (that buffer stays available for the next frame).
//!
//! - RoCEv2 ICRC offload ([`NetConfig::roce_icrc`]; not a virtio feature: the host tells the
//!   guests through their boot information, `shm_ring::bootinfo::OFFLOAD_ROCE_ICRC`). The
//!   device computes the ICRC of every RoCEv2 frame it sends (IPv4, UDP to port 4791) into the
//!   frame's last four UDP bytes, and checks that of every RoCEv2 frame it receives, dropping
//!   and counting those whose ICRC is wrong or cannot be computed, as a RoCE NIC's hardware
//!   does. The guests then neither compute nor check ICRCs. A frame to send whose ICRC cannot
//!   be computed (IPv4 options, lengths that disagree) is dropped as malformed.
//!
//! Threads: the device lives in a [`VirtioNet`] (an [`MmioTransport`] of [`Net`]) behind one
//! `Mutex`. The supervisor locks it for register accesses, the worker
//! ([`crate::devices::worker`]) for [`VirtioNet::process_tx`] / [`VirtioNet::process_rx`]. The
//! back-end belongs to the worker and is passed in.

use std::sync::Arc;

use serde::Serialize;

use super::mmio::{DeviceContext, MmioTransport};
use super::{VirtioDevice, device_type, feature_bit, features};
use crate::devices::net_backend::{BackendError, NetBackend};
use crate::devices::pcap::PcapWriter;
use crate::devices::ratelimit::RateLimitedLog;
use crate::memory::GuestMemory;

/// The device has a MAC address in its configuration space.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// The configuration space has a link status field.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Link status bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of `virtio_net_hdr_v1` (the header of every packet with `VIRTIO_F_VERSION_1`).
pub const NET_HEADER_LEN: usize = 12;
/// Largest Ethernet frame accepted from the driver or delivered to it.
pub const MAX_FRAME_LEN: usize = 65550;
/// Smallest Ethernet frame (a header, no payload).
pub const MIN_FRAME_LEN: usize = 14;
/// Default (and maximum offered) queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Frames taken from the back-end per [`VirtioNet::process_rx`] call, so that one busy peer
/// cannot keep the device locked.
pub const RX_BATCH: usize = 256;
/// Size of the configuration space: `mac`, `status`, `max_virtqueue_pairs`.
const CONFIG_LEN: usize = 10;

/// How a network device is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address the driver reads from the configuration space.
    pub mac: [u8; 6],
    /// The largest queue size offered (a power of two).
    pub queue_size: u16,
    /// Offer `VIRTIO_RING_F_EVENT_IDX`.
    pub event_idx: bool,
    /// Offer `VIRTIO_RING_F_INDIRECT_DESC`.
    pub indirect_desc: bool,
    /// Compute the ICRC of RoCEv2 frames sent and check that of frames received (see the
    /// module docs).
    pub roce_icrc: bool,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            mac: [0x02, 0, 0, 0, 0, 0x01],
            queue_size: DEFAULT_QUEUE_SIZE,
            event_idx: false,
            indirect_desc: true,
            roce_icrc: false,
        }
    }
}

/// Traffic counters of one device (kept across resets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetCounters {
    /// Frames handed to the back-end.
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames the back-end could not take (full), or sent while the link was down.
    pub tx_dropped: u64,
    /// Transmit chains that were not a valid packet (writable buffers, too short, too long).
    pub tx_malformed: u64,
    /// Frames written into receive buffers.
    pub rx_packets: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames dropped because no receive buffer was available (or the driver was not running,
    /// or the link was down).
    pub rx_dropped_no_buffer: u64,
    /// Frames dropped because the next receive buffer was too small.
    pub rx_dropped_buffer_too_small: u64,
    /// Frames from the back-end that were not a valid Ethernet frame, or did not fit.
    pub rx_malformed: u64,
    /// Receive chains with device-readable buffers, returned empty.
    pub rx_bad_chains: u64,
    /// Back-end I/O errors.
    pub backend_errors: u64,
    /// RoCEv2 frames sent whose ICRC the device computed ([`NetConfig::roce_icrc`]).
    pub tx_icrc_offloaded: u64,
    /// RoCEv2 frames received whose ICRC the device checked and found right.
    pub rx_icrc_checked: u64,
    /// RoCEv2 frames received and dropped because their ICRC was wrong or could not be
    /// computed.
    pub rx_bad_icrc: u64,
}

/// What became of one frame for the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into a receive buffer.
    Delivered,
    /// Dropped: no receive buffer (or the driver is not running, or the link is down).
    NoBuffer,
    /// Dropped: the next receive buffer is too small.
    BufferTooSmall,
    /// Dropped: not a valid frame.
    Malformed,
    /// Dropped: a RoCEv2 frame whose ICRC is wrong ([`NetConfig::roce_icrc`]).
    BadIcrc,
    /// Dropped: the receive queue is broken; the device needs a reset.
    QueueError,
}

/// The network device model.
#[derive(Debug)]
pub struct Net {
    config: NetConfig,
    queue_max_sizes: [u16; 2],
    link_up: bool,
    counters: NetCounters,
    capture: Option<PcapWriter>,
    frame: Vec<u8>,
    log: RateLimitedLog,
}

/// A network device behind its virtio-mmio transport: what the bus maps and the worker drives.
pub type VirtioNet = MmioTransport<Net>;

impl Net {
    /// A device with `config`; the link starts up.
    pub fn new(config: NetConfig) -> Net {
        Net {
            config,
            queue_max_sizes: [config.queue_size; 2],
            link_up: true,
            counters: NetCounters::default(),
            capture: None,
            frame: Vec::with_capacity(MAX_FRAME_LEN),
            log: RateLimitedLog::new("virtio-net"),
        }
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.config.mac
    }

    /// The counters.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Whether the link is up.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Captures every frame sent and received from now on (or stops, with `None`); returns the
    /// capture it replaces, for the caller to [`PcapWriter::finish`].
    pub fn set_capture(&mut self, capture: Option<PcapWriter>) -> Option<PcapWriter> {
        std::mem::replace(&mut self.capture, capture)
    }

    /// The capture, if any.
    pub fn capture(&self) -> Option<&PcapWriter> {
        self.capture.as_ref()
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut bytes = [0u8; CONFIG_LEN];
        bytes[..6].copy_from_slice(&self.config.mac);
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        bytes[6..8].copy_from_slice(&status.to_le_bytes());
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        bytes
    }

    /// Sends every available transmit chain; returns how many chains were completed.
    fn process_tx(&mut self, context: &mut DeviceContext, backend: &mut dyn NetBackend) -> usize {
        let memory = Arc::clone(context.memory());
        let mut completed = 0;
        while let Some(queue) = context.active_queue(TX_QUEUE) {
            let chain = match queue.pop_available(&memory) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(error) => {
                    context.set_needs_reset(format_args!("transmit queue: {error}"));
                    break;
                }
            };
            self.transmit(&memory, &chain, backend);
            let Some(queue) = context.active_queue(TX_QUEUE) else {
                break;
            };
            if let Err(error) = queue.add_used(&memory, chain.head_index(), 0) {
                context.set_needs_reset(format_args!("transmit queue: {error}"));
                break;
            }
            completed += 1;
        }
        if completed > 0 {
            context.signal_used(TX_QUEUE);
        }
        completed
    }

    /// Sends the frame in one transmit chain, or counts why not.
    fn transmit(
        &mut self,
        memory: &GuestMemory,
        chain: &super::queue::DescriptorChain,
        backend: &mut dyn NetBackend,
    ) {
        let frame_len = chain.readable_len().checked_sub(NET_HEADER_LEN as u64);
        let frame_len = match frame_len {
            Some(len)
                if chain.writable_len() == 0
                    && (MIN_FRAME_LEN as u64..=MAX_FRAME_LEN as u64).contains(&len) =>
            {
                len as usize
            }
            _ => {
                self.counters.tx_malformed += 1;
                self.log.log(format_args!(
                    "transmit chain {} dropped: {} readable and {} writable bytes (a packet is a \
                     {NET_HEADER_LEN}-byte header and a {MIN_FRAME_LEN}..={MAX_FRAME_LEN}-byte \
                     frame, readable only)",
                    chain.head_index(),
                    chain.readable_len(),
                    chain.writable_len()
                ));
                return;
            }
        };
        self.frame.resize(frame_len, 0);
        if chain
            .read_readable(memory, NET_HEADER_LEN as u64, &mut self.frame)
            .is_err()
        {
            self.counters.tx_malformed += 1;
            return;
        }
        if !self.link_up {
            self.counters.tx_dropped += 1;
            return;
        }
        if self.config.roce_icrc && is_rocev2(&self.frame) {
            match roce::icrc::fill(&mut self.frame[ETHERNET_HEADER_LEN..]) {
                Ok(_) => self.counters.tx_icrc_offloaded += 1,
                Err(error) => {
                    self.counters.tx_malformed += 1;
                    self.log.log(format_args!(
                        "RoCEv2 frame of {frame_len} bytes dropped: its ICRC cannot be \
                         computed ({error})"
                    ));
                    return;
                }
            }
        }
        if let Some(capture) = &self.capture {
            capture.capture(&self.frame);
        }
        match backend.send(&self.frame) {
            Ok(()) => {
                self.counters.tx_packets += 1;
                self.counters.tx_bytes += frame_len as u64;
            }
            Err(BackendError::Full) => self.counters.tx_dropped += 1,
            Err(error) => {
                self.counters.backend_errors += 1;
                self.log
                    .log(format_args!("transmit to the back-end failed: {error}"));
            }
        }
    }

    /// Takes up to [`RX_BATCH`] frames from the back-end into receive buffers.
    fn process_rx(&mut self, context: &mut DeviceContext, backend: &mut dyn NetBackend) -> usize {
        let mut buffer = std::mem::take(&mut self.frame);
        buffer.resize(MAX_FRAME_LEN, 0);
        let used_before = used_index(context);
        let mut handled = 0;
        while handled < RX_BATCH {
            match backend.receive(&mut buffer) {
                Ok(Some(len)) => {
                    handled += 1;
                    let frame = &buffer[..len.min(buffer.len())];
                    self.deliver(context, frame);
                }
                Ok(None) => break,
                Err(BackendError::FrameTooLarge { .. }) => {
                    handled += 1;
                    self.counters.rx_malformed += 1;
                }
                Err(error) => {
                    self.counters.backend_errors += 1;
                    self.log
                        .log(format_args!("receive from the back-end failed: {error}"));
                    break;
                }
            }
        }
        self.frame = buffer;
        if used_index(context) != used_before {
            context.signal_used(RX_QUEUE);
        }
        handled
    }

    /// Writes one frame into the next receive buffer (without raising the interrupt).
    fn deliver(&mut self, context: &mut DeviceContext, frame: &[u8]) -> RxOutcome {
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.len()) {
            self.counters.rx_malformed += 1;
            return RxOutcome::Malformed;
        }
        if self.config.roce_icrc && is_rocev2(frame) {
            if roce::icrc::verify(&frame[ETHERNET_HEADER_LEN..]).is_err() {
                self.counters.rx_bad_icrc += 1;
                return RxOutcome::BadIcrc;
            }
            self.counters.rx_icrc_checked += 1;
        }
        let memory = Arc::clone(context.memory());
        let queue = match context.active_queue(RX_QUEUE) {
            Some(queue) if self.link_up => queue,
            _ => {
                self.counters.rx_dropped_no_buffer += 1;
                return RxOutcome::NoBuffer;
            }
        };
        // A frame that finds no buffer is dropped, never held, so the driver's notification
        // that it added receive buffers wakes nothing here: ask it not to send one (each is a
        // VM exit) while buffers are left, and to send one again once they ran out. (Setting
        // the flag cannot fail on a queue `pop_available` just used.)
        let chain = match queue.pop_available(&memory) {
            Ok(Some(chain)) => {
                let _ = queue.set_notification(&memory, false);
                chain
            }
            Ok(None) => {
                let _ = queue.set_notification(&memory, true);
                self.counters.rx_dropped_no_buffer += 1;
                return RxOutcome::NoBuffer;
            }
            Err(error) => {
                context.set_needs_reset(format_args!("receive queue: {error}"));
                return RxOutcome::QueueError;
            }
        };
        let needed = (NET_HEADER_LEN + frame.len()) as u64;
        let (used_len, outcome) = if chain.readable_len() > 0 {
            self.counters.rx_bad_chains += 1;
            self.log.log(format_args!(
                "receive chain {} has device-readable buffers: returned empty",
                chain.head_index()
            ));
            (0, RxOutcome::Malformed)
        } else if chain.writable_len() < needed {
            queue.undo_pop();
            self.counters.rx_dropped_buffer_too_small += 1;
            return RxOutcome::BufferTooSmall;
        } else {
            let mut header = [0u8; NET_HEADER_LEN];
            // num_buffers = 1; every other field zero: no offloads, no checksum information.
            header[10..12].copy_from_slice(&1u16.to_le_bytes());
            let written = chain
                .write_writable(&memory, 0, &header)
                .and_then(|()| chain.write_writable(&memory, NET_HEADER_LEN as u64, frame));
            match written {
                Ok(()) => (needed as u32, RxOutcome::Delivered),
                Err(_) => (0, RxOutcome::Malformed),
            }
        };
        if let Err(error) = queue.add_used(&memory, chain.head_index(), used_len) {
            context.set_needs_reset(format_args!("receive queue: {error}"));
            return RxOutcome::QueueError;
        }
        if outcome == RxOutcome::Delivered {
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += frame.len() as u64;
            if let Some(capture) = &self.capture {
                capture.capture(frame);
            }
        }
        outcome
    }
}

/// Length of an Ethernet header (no VLAN tag).
const ETHERNET_HEADER_LEN: usize = 14;

/// Whether `frame` is a RoCEv2 frame for the ICRC offload: IPv4 (ethertype `0x0800`, version
/// 4), UDP, not a fragment, to UDP port 4791. Nothing else is checked here:
/// [`roce::icrc::fill`] and [`roce::icrc::verify`] check the lengths. This is the widest
/// reading of the frames OS B hands to OS A as RoCEv2 (`netsvc::frame`), so that none reaches
/// OS A unchecked.
pub fn is_rocev2(frame: &[u8]) -> bool {
    let destination_port = || {
        let ip = frame.get(ETHERNET_HEADER_LEN..)?;
        let first = *ip.first()?;
        let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
        let ipv4_udp = frame.get(12..14)? == [0x08, 0x00]
            && first >> 4 == 4
            && *ip.get(9)? == 17
            && fragment & 0x3fff == 0;
        let at = usize::from(first & 0x0f) * 4 + 2;
        ipv4_udp.then(|| Some(u16::from_be_bytes([*ip.get(at)?, *ip.get(at + 1)?])))?
    };
    destination_port() == Some(roce::wire::ROCEV2_UDP_PORT)
}

/// The receive queue's used index, to tell whether chains were returned.
fn used_index(context: &DeviceContext) -> Option<u16> {
    context.queue(RX_QUEUE).map(|queue| queue.next_used())
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn device_features(&self) -> u64 {
        let mut offered = feature_bit(features::VIRTIO_F_VERSION_1)
            | feature_bit(VIRTIO_NET_F_MAC)
            | feature_bit(VIRTIO_NET_F_STATUS);
        if self.config.indirect_desc {
            offered |= feature_bit(features::VIRTIO_RING_F_INDIRECT_DESC);
        }
        if self.config.event_idx {
            offered |= feature_bit(features::VIRTIO_RING_F_EVENT_IDX);
        }
        offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.config_bytes();
        let start = (offset as usize).min(CONFIG_LEN);
        let available = &bytes[start..];
        let len = available.len().min(data.len());
        data[..len].copy_from_slice(&available[..len]);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        // Every field is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR and friends.
        false
    }
}

impl MmioTransport<Net> {
    /// Sends every frame the driver has queued for transmission; returns the chains completed.
    pub fn process_tx(&mut self, backend: &mut dyn NetBackend) -> usize {
        self.with_device(|net, context| net.process_tx(context, backend))
    }

    /// Moves up to [`RX_BATCH`] frames from the back-end into receive buffers; returns how many
    /// frames were taken from the back-end (delivered or dropped).
    pub fn process_rx(&mut self, backend: &mut dyn NetBackend) -> usize {
        self.with_device(|net, context| net.process_rx(context, backend))
    }

    /// Delivers one frame to the driver and raises the interrupt if it was delivered.
    pub fn deliver_frame(&mut self, frame: &[u8]) -> RxOutcome {
        self.with_device(|net, context| {
            let used_before = used_index(context);
            let outcome = net.deliver(context, frame);
            if used_index(context) != used_before {
                context.signal_used(RX_QUEUE);
            }
            outcome
        })
    }

    /// Sets the link status the driver sees, with a configuration-change interrupt.
    pub fn set_link_up(&mut self, up: bool) {
        if self.device().link_up() != up {
            self.device_mut().link_up = up;
            self.notify_config_change();
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> NetCounters {
        self.device().counters()
    }
}
