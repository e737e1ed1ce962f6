//! The worker thread of a network device: waits for work and processes the queues.
//!
//! [`run_net_worker`] polls four descriptors: a stop eventfd, the transmit and receive queue
//! notification eventfds (signalled by QueueNotify writes, or directly by KVM when they are
//! registered as ioeventfds), and the back-end's ready descriptor. A transmit notification
//! processes the transmit queue; a receive notification (the driver added buffers) or a ready
//! back-end moves frames from the back-end into receive buffers. Each eventfd is read (reset)
//! before the work it announces, so a notification arriving during the work wakes the loop
//! again instead of being lost; the back-end is asked to signal
//! ([`NetBackend::prepare_to_wait`]) before each wait, and a back-end with frames waiting
//! already makes the wait a mere look at the other descriptors.
//!
//! The device is locked for the processing only, never while waiting.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::bus::lock_device;
use crate::devices::net_backend::NetBackend;
use crate::devices::ratelimit::RateLimitedLog;
use crate::devices::virtio::net::{RX_QUEUE, TX_QUEUE, VirtioNet};

/// Why a worker could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The device has no queue notification eventfds for both queues.
    #[error("the device has no notification eventfd for queue {0}")]
    MissingQueue(usize),
    /// An eventfd could not be created or cloned, or the thread could not start.
    #[error("cannot set the worker up")]
    Setup(#[source] std::io::Error),
    /// `poll` failed.
    #[error("cannot wait for device events")]
    Poll(#[source] Errno),
    /// The worker thread panicked.
    #[error("the network worker thread panicked")]
    Panicked,
}

/// The queue notification eventfds a worker waits on (clones of the transport's).
#[derive(Debug)]
pub struct QueueEvents {
    /// Signalled when the driver notifies the receive queue (it added buffers).
    pub rx: EventFd,
    /// Signalled when the driver notifies the transmit queue (it queued frames).
    pub tx: EventFd,
}

impl QueueEvents {
    /// Clones the notification eventfds of `device`.
    pub fn from_device(device: &VirtioNet) -> Result<QueueEvents, WorkerError> {
        let events = device.queue_events();
        let clone = |index: usize| {
            events
                .get(index)
                .ok_or(WorkerError::MissingQueue(index))?
                .try_clone()
                .map_err(WorkerError::Setup)
        };
        Ok(QueueEvents {
            rx: clone(RX_QUEUE)?,
            tx: clone(TX_QUEUE)?,
        })
    }
}

fn borrow_eventfd(event: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the eventfd owns its descriptor and keeps it open for the borrow's lifetime.
    unsafe { BorrowedFd::borrow_raw(event.as_raw_fd()) }
}

/// Which sources were ready in one poll.
#[derive(Clone, Copy, Debug, Default)]
struct Ready {
    stop: bool,
    tx: bool,
    rx: bool,
    backend: bool,
    backend_failed: bool,
}

/// Waits for any source; with `backend_waiting` (frames are waiting already) only looks.
fn wait(
    events: &QueueEvents,
    backend: &dyn NetBackend,
    stop: &EventFd,
    poll_backend: bool,
    backend_waiting: bool,
) -> Result<Ready, WorkerError> {
    let input = PollFlags::POLLIN;
    let mut fds = [
        PollFd::new(borrow_eventfd(stop), input),
        PollFd::new(borrow_eventfd(&events.tx), input),
        PollFd::new(borrow_eventfd(&events.rx), input),
        PollFd::new(backend.ready_fd(), input),
    ];
    let count = if poll_backend {
        fds.len()
    } else {
        fds.len() - 1
    };
    let timeout = if backend_waiting {
        PollTimeout::ZERO
    } else {
        PollTimeout::NONE
    };
    loop {
        match poll(&mut fds[..count], timeout) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(error) => return Err(WorkerError::Poll(error)),
        }
    }
    let flags = |index: usize| {
        fds[..count]
            .get(index)
            .and_then(PollFd::revents)
            .unwrap_or(PollFlags::empty())
    };
    let failure = PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL;
    Ok(Ready {
        stop: !flags(0).is_empty(),
        tx: flags(1).contains(input),
        rx: flags(2).contains(input),
        backend: backend_waiting || flags(3).contains(input),
        backend_failed: flags(3).intersects(failure),
    })
}

/// Runs a network device's queues until `stop` is signalled.
///
/// `device` is the same mutex the bus holds; `events` are clones of its queue notification
/// eventfds; `backend` carries the frames. A back-end whose descriptor reports an error or a
/// hang-up is no longer polled (logged once); transmit processing goes on.
pub fn run_net_worker(
    device: &Mutex<VirtioNet>,
    events: &QueueEvents,
    backend: &mut dyn NetBackend,
    stop: &EventFd,
) -> Result<(), WorkerError> {
    let mut log = RateLimitedLog::new("virtio-net worker");
    let mut poll_backend = true;
    loop {
        let backend_waiting = poll_backend && !backend.prepare_to_wait();
        let ready = wait(events, backend, stop, poll_backend, backend_waiting)?;
        if ready.stop {
            return Ok(());
        }
        // Reset the eventfds before the work they announce (non-blocking: an unset eventfd
        // reads as WouldBlock, which is fine).
        if ready.tx {
            let _ = events.tx.read();
        }
        if ready.rx {
            let _ = events.rx.read();
        }
        if ready.backend_failed && !ready.backend {
            poll_backend = false;
            log.log(format_args!(
                "the back-end's descriptor reports an error or hang-up: no longer receiving"
            ));
        }
        let mut device = lock_device(device);
        if ready.tx {
            device.process_tx(backend);
        }
        if ready.rx || ready.backend {
            device.process_rx(backend);
        }
    }
}

/// A network device's worker thread.
#[derive(Debug)]
pub struct NetDeviceHandle {
    stop: EventFd,
    thread: Option<JoinHandle<Result<(), WorkerError>>>,
}

impl NetDeviceHandle {
    /// Starts a worker thread for `device` with `backend`.
    pub fn spawn(
        device: Arc<Mutex<VirtioNet>>,
        mut backend: impl NetBackend + 'static,
    ) -> Result<NetDeviceHandle, WorkerError> {
        let events = QueueEvents::from_device(&lock_device(&device))?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Setup)?;
        let worker_stop = stop.try_clone().map_err(WorkerError::Setup)?;
        let thread = std::thread::Builder::new()
            .name("duovm-net".to_owned())
            .spawn(move || run_net_worker(&device, &events, &mut backend, &worker_stop))
            .map_err(WorkerError::Setup)?;
        Ok(NetDeviceHandle {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the worker and waits for it; reports why it ended if it ended on its own.
    pub fn stop(mut self) -> Result<(), WorkerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), WorkerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.write(1).map_err(WorkerError::Setup)?;
        thread.join().map_err(|_| WorkerError::Panicked)?
    }
}

impl Drop for NetDeviceHandle {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            eprintln!("virtio-net worker: {error}");
        }
    }
}
