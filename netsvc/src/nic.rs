//! The NIC boundary: the [`Nic`] trait the kernel (or native mode) implements, the queue of
//! frames waiting for a full NIC, and the smoltcp [`Device`] adapter over both.
//!
//! The service reads each received frame itself first (the RoCE fast path and ARP snooping look
//! at it), then hands the frames meant for smoltcp over one at a time through smoltcp's device
//! adapter. Every frame going out, smoltcp's or the fast path's, goes through one queue, so
//! frames leave in the order they were made.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// An Ethernet NIC as the service sees it. OS B's kernel implements it over virtio-net; native
/// mode over a TAP device or the built-in switch; tests over an in-memory wire.
///
/// # Implementation contract
///
/// Frames are whole Ethernet II frames without the FCS. Neither method blocks.
pub trait Nic {
    /// Hands `frame` to the device. `Err(NicFull)` means the device has no room now; the frame
    /// was not taken and the service tries again later.
    fn transmit(&mut self, frame: &[u8]) -> Result<(), NicFull>;
    /// Copies the next received frame into `buf` and returns its length, or `None` if none is
    /// waiting. A frame longer than `buf` is dropped by the implementation.
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// The device's MAC address.
    fn mac(&self) -> [u8; 6];
}

/// The NIC cannot take a frame now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicFull;

impl fmt::Display for NicFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NIC transmit queue full")
    }
}

impl core::error::Error for NicFull {}

/// A frame in a reusable buffer: `bytes[..len]` is the frame.
#[derive(Debug)]
pub(crate) struct Frame {
    pub bytes: Vec<u8>,
    pub len: usize,
}

impl Frame {
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Counters of the transmit path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Frames the NIC took.
    pub frames: u64,
    /// Frames that had to wait in the backlog because the NIC was full.
    pub backlogged: u64,
    /// Frames dropped because the backlog was full too.
    pub dropped: u64,
}

/// Frames waiting for room in the NIC, and spare frame buffers.
#[derive(Debug)]
pub(crate) struct TxQueue {
    backlog: VecDeque<Frame>,
    spare: Vec<Vec<u8>>,
    limit: usize,
    frame_len: usize,
    pub stats: TxStats,
}

impl TxQueue {
    pub(crate) fn new(limit: usize, frame_len: usize) -> TxQueue {
        TxQueue {
            backlog: VecDeque::with_capacity(limit),
            spare: Vec::new(),
            limit,
            frame_len,
            stats: TxStats::default(),
        }
    }

    /// A buffer of a frame's size (recycled when possible).
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| vec![0u8; self.frame_len])
    }

    /// Gives a buffer back for reuse.
    pub(crate) fn recycle(&mut self, bytes: Vec<u8>) {
        if self.spare.len() < self.limit && bytes.len() == self.frame_len {
            self.spare.push(bytes);
        }
    }

    /// Whether another frame fits the backlog.
    pub(crate) fn has_room(&self) -> bool {
        self.backlog.len() < self.limit
    }

    /// Frames waiting in the backlog.
    pub(crate) fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Sends `frame` now if the NIC takes it and nothing is waiting before it, else queues it;
    /// returns `false` if it was dropped (backlog full).
    pub(crate) fn send<N: Nic + ?Sized>(&mut self, nic: &mut N, frame: Frame) -> bool {
        if self.backlog.is_empty() && nic.transmit(frame.as_slice()).is_ok() {
            self.stats.frames += 1;
            self.recycle(frame.bytes);
            return true;
        }
        if self.backlog.len() >= self.limit {
            self.stats.dropped += 1;
            self.recycle(frame.bytes);
            return false;
        }
        self.stats.backlogged += 1;
        self.backlog.push_back(frame);
        true
    }

    /// Moves waiting frames to the NIC until it is full; returns how many it took.
    pub(crate) fn flush<N: Nic + ?Sized>(&mut self, nic: &mut N) -> usize {
        let mut sent = 0;
        while let Some(frame) = self.backlog.front() {
            if nic.transmit(frame.as_slice()).is_err() {
                break;
            }
            sent += 1;
            self.stats.frames += 1;
            if let Some(frame) = self.backlog.pop_front() {
                self.recycle(frame.bytes);
            }
        }
        sent
    }
}

/// smoltcp's view of the NIC for one step: at most one received frame (already read by the
/// service), and transmission through the [`TxQueue`].
pub(crate) struct Phy<'a, N: Nic + ?Sized> {
    pub nic: &'a mut N,
    pub tx: &'a mut TxQueue,
    pub rx: Option<&'a [u8]>,
    pub frame_len: usize,
}

impl<N: Nic + ?Sized> Device for Phy<'_, N> {
    type RxToken<'b>
        = RxFrame<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxFrame<'b, N>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxFrame<'_>, TxFrame<'_, N>)> {
        let frame = self.rx.take()?;
        Some((
            RxFrame(frame),
            TxFrame {
                nic: &mut *self.nic,
                tx: &mut *self.tx,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxFrame<'_, N>> {
        // When the backlog is full smoltcp keeps its data and tries again on a later poll.
        if !self.tx.has_room() {
            return None;
        }
        Some(TxFrame {
            nic: &mut *self.nic,
            tx: &mut *self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_len;
        caps
    }
}

/// A received frame handed to smoltcp.
pub(crate) struct RxFrame<'a>(&'a [u8]);

impl RxToken for RxFrame<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

/// A frame smoltcp is about to send.
pub(crate) struct TxFrame<'a, N: Nic + ?Sized> {
    nic: &'a mut N,
    tx: &'a mut TxQueue,
}

impl<N: Nic + ?Sized> TxToken for TxFrame<'_, N> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut bytes = self.tx.buffer();
        if bytes.len() < len {
            bytes.resize(len, 0);
        }
        let result = f(&mut bytes[..len]);
        self.tx.send(self.nic, Frame { bytes, len });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Limited {
        room: usize,
        sent: Vec<Vec<u8>>,
    }

    impl Nic for Limited {
        fn transmit(&mut self, frame: &[u8]) -> Result<(), NicFull> {
            if self.room == 0 {
                return Err(NicFull);
            }
            self.room -= 1;
            self.sent.push(frame.to_vec());
            Ok(())
        }
        fn receive(&mut self, _buf: &mut [u8]) -> Option<usize> {
            None
        }
        fn mac(&self) -> [u8; 6] {
            [2, 0, 0, 0, 0, 1]
        }
    }

    fn frame(queue: &mut TxQueue, tag: u8) -> Frame {
        let mut bytes = queue.buffer();
        bytes[0] = tag;
        Frame { bytes, len: 1 }
    }

    #[test]
    fn frames_wait_in_order_and_drop_when_the_backlog_is_full() {
        let mut nic = Limited {
            room: 1,
            sent: Vec::new(),
        };
        let mut queue = TxQueue::new(2, 64);
        for tag in 0..4 {
            let frame = frame(&mut queue, tag);
            queue.send(&mut nic, frame);
        }
        assert_eq!(queue.stats.frames, 1);
        assert_eq!(queue.stats.backlogged, 2);
        assert_eq!(queue.stats.dropped, 1);
        assert!(!queue.has_room());
        nic.room = 10;
        assert_eq!(queue.flush(&mut nic), 2);
        let tags: Vec<u8> = nic.sent.iter().map(|frame| frame[0]).collect();
        assert_eq!(tags, [0, 1, 2]);
        assert!(queue.has_room());
    }
}
