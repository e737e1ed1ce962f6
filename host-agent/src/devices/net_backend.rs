//! Where a virtual NIC's frames go: the [`NetBackend`] trait.
//!
//! A back-end moves whole Ethernet frames (no virtio header) and never blocks: `send` either
//! takes the frame or says it is full, `receive` either hands over a frame or says there is
//! none. It exposes one file descriptor that becomes readable when frames may be waiting, so a
//! worker thread can wait on it with `poll` alongside its other event sources.
//!
//! A receiver that is about to wait calls [`NetBackend::prepare_to_wait`] first, and sleeps
//! only if that finds nothing waiting. A receiver that polls `receive` without sleeping never
//! calls it, and so costs its senders no wake-ups (a system call per frame on the built-in
//! switch).
//!
//! Implementations: [`crate::devices::switch::SwitchPort`] (the built-in L2 switch) and
//! [`crate::devices::tap::Tap`] (a Linux TAP interface).

use std::os::fd::BorrowedFd;

/// Why a back-end could not move a frame.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The back-end cannot take a frame now; the frame is dropped (and counted by the caller).
    #[error("the back-end is full")]
    Full,
    /// A received frame was larger than the buffer offered; it was dropped.
    #[error("a received frame of {len} bytes does not fit a buffer of {capacity}")]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The buffer's length.
        capacity: usize,
    },
    /// The other end is gone.
    #[error("the back-end is disconnected")]
    Disconnected,
    /// An I/O error.
    #[error("back-end I/O")]
    Io(#[source] std::io::Error),
}

/// A network back-end for one virtual NIC.
pub trait NetBackend: Send {
    /// Sends one Ethernet frame without blocking.
    fn send(&mut self, frame: &[u8]) -> Result<(), BackendError>;

    /// Receives one Ethernet frame into `buffer` without blocking; `Ok(None)` when none is
    /// waiting.
    fn receive(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, BackendError>;

    /// A descriptor that is readable (level-triggered) while frames may be waiting, once
    /// [`NetBackend::prepare_to_wait`] asked for it. It may also be readable when none are
    /// (a spurious wake-up, which a `receive` that finds nothing answers).
    fn ready_fd(&self) -> BorrowedFd<'_>;

    /// Asks to be woken: from now on [`NetBackend::ready_fd`] becomes readable when a frame
    /// arrives. Returns `false` if a frame is waiting already, in which case the caller
    /// receives it instead of sleeping (and calls this again before its next sleep).
    ///
    /// The default suits a descriptor the kernel keeps readable while frames wait (a TAP).
    fn prepare_to_wait(&mut self) -> bool {
        true
    }
}

impl<B: NetBackend + ?Sized> NetBackend for Box<B> {
    fn send(&mut self, frame: &[u8]) -> Result<(), BackendError> {
        (**self).send(frame)
    }

    fn receive(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, BackendError> {
        (**self).receive(buffer)
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        (**self).ready_fd()
    }

    fn prepare_to_wait(&mut self) -> bool {
        (**self).prepare_to_wait()
    }
}
