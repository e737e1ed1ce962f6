//! Packet capture of a NIC to a classic pcap file (LINKTYPE_ETHERNET, microsecond timestamps).
//!
//! The data path only timestamps and copies a frame into a bounded channel
//! ([`PcapWriter::capture`] never blocks: when the channel is full the frame is dropped from the
//! capture and counted); a writer thread formats records into a buffered file and flushes when
//! it goes idle and when the writer is finished or dropped. Frames of both directions go to the
//! same file, in the order they were captured.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::devices::net_backend::{BackendError, NetBackend};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

/// Magic of a classic pcap file with microsecond timestamps.
pub const PCAP_MAGIC: u32 = 0xa1b2_c3d4;
/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Largest frame recorded whole; longer frames are cut (their original length is kept).
pub const SNAPLEN: u32 = 262_144;
/// Frames that may wait for the writer thread.
pub const CAPTURE_QUEUE_LEN: usize = 4096;
/// How long the writer waits for more frames before flushing.
const IDLE_FLUSH: Duration = Duration::from_millis(100);

/// One captured frame.
#[derive(Debug)]
struct Record {
    time: Duration,
    frame: Vec<u8>,
}

/// A pcap capture being written by its own thread.
#[derive(Debug)]
pub struct PcapWriter {
    sender: Option<Sender<Record>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    dropped: Arc<AtomicU64>,
    captured: Arc<AtomicU64>,
}

/// The 24-byte file header.
fn file_header() -> [u8; 24] {
    let mut header = [0u8; 24];
    header[0..4].copy_from_slice(&PCAP_MAGIC.to_le_bytes());
    header[4..6].copy_from_slice(&2u16.to_le_bytes());
    header[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone and sigfigs stay zero.
    header[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    header
}

/// Writes one record (16-byte header, then the frame cut to [`SNAPLEN`]).
fn write_record(output: &mut impl Write, record: &Record) -> std::io::Result<()> {
    let original_len = u32::try_from(record.frame.len()).unwrap_or(u32::MAX);
    let kept = original_len.min(SNAPLEN);
    let mut header = [0u8; 16];
    let seconds = u32::try_from(record.time.as_secs()).unwrap_or(u32::MAX);
    header[0..4].copy_from_slice(&seconds.to_le_bytes());
    header[4..8].copy_from_slice(&record.time.subsec_micros().to_le_bytes());
    header[8..12].copy_from_slice(&kept.to_le_bytes());
    header[12..16].copy_from_slice(&original_len.to_le_bytes());
    output.write_all(&header)?;
    output.write_all(&record.frame[..kept as usize])
}

fn writer_loop(mut output: impl Write, records: Receiver<Record>) -> std::io::Result<()> {
    output.write_all(&file_header())?;
    loop {
        match records.recv_timeout(IDLE_FLUSH) {
            Ok(record) => write_record(&mut output, &record)?,
            Err(RecvTimeoutError::Timeout) => output.flush()?,
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    output.flush()
}

impl PcapWriter {
    /// Creates (or truncates) the capture file at `path`.
    pub fn create(path: &Path) -> std::io::Result<PcapWriter> {
        let file = File::create(path)?;
        PcapWriter::from_writer(BufWriter::with_capacity(256 * 1024, file))
    }

    /// A capture into any writer.
    pub fn from_writer(output: impl Write + Send + 'static) -> std::io::Result<PcapWriter> {
        let (sender, receiver) = crossbeam_channel::bounded(CAPTURE_QUEUE_LEN);
        let thread = std::thread::Builder::new()
            .name("duovm-pcap".to_owned())
            .spawn(move || writer_loop(output, receiver))?;
        Ok(PcapWriter {
            sender: Some(sender),
            thread: Some(thread),
            dropped: Arc::new(AtomicU64::new(0)),
            captured: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Records `frame`, timestamped now. Never blocks.
    pub fn capture(&self, frame: &[u8]) {
        let Some(sender) = &self.sender else { return };
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let record = Record {
            time,
            frame: frame.to_vec(),
        };
        match sender.try_send(record) {
            Ok(()) => self.captured.fetch_add(1, Ordering::Relaxed),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// Frames handed to the writer thread.
    pub fn captured(&self) -> u64 {
        self.captured.load(Ordering::Relaxed)
    }

    /// Frames left out of the capture because the writer fell behind (or failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes out every frame captured so far, closes the file and reports a write error.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> std::io::Result<()> {
        drop(self.sender.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the pcap writer thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for PcapWriter {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("pcap: the capture is incomplete: {error}");
        }
    }
}

/// A network back-end whose frames, both ways, are also captured (for endpoints that have
/// no virtio device to capture at, such as native mode).
#[derive(Debug)]
pub struct Captured<B> {
    /// The back-end.
    pub inner: B,
    /// The capture.
    pub capture: PcapWriter,
}

impl<B: NetBackend> NetBackend for Captured<B> {
    fn send(&mut self, frame: &[u8]) -> Result<(), BackendError> {
        self.inner.send(frame)?;
        self.capture.capture(frame);
        Ok(())
    }

    fn receive(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, BackendError> {
        let received = self.inner.receive(buffer)?;
        if let Some(len) = received {
            self.capture.capture(&buffer[..len]);
        }
        Ok(received)
    }

    fn ready_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.ready_fd()
    }

    fn prepare_to_wait(&mut self) -> bool {
        self.inner.prepare_to_wait()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer whose bytes the test can read after the capture is finished.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_header_and_records() {
        let output = Shared::default();
        let capture = PcapWriter::from_writer(output.clone()).unwrap();
        capture.capture(&[1, 2, 3]);
        capture.capture(&[4; 60]);
        assert_eq!(capture.captured(), 2);
        capture.finish().unwrap();
        let bytes = output.0.lock().unwrap().clone();
        assert_eq!(bytes.len(), 24 + 16 + 3 + 16 + 60);
        assert_eq!(&bytes[..4], &PCAP_MAGIC.to_le_bytes());
        assert_eq!(&bytes[20..24], &1u32.to_le_bytes());
        assert_eq!(&bytes[24 + 8..24 + 16], &[3, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&bytes[40..43], &[1, 2, 3]);
    }
}
