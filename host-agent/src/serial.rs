//! Each OS's serial log: bytes collected on the OS's vCPU thread, written out a line at a time
//! with a `[a]` / `[b]` prefix, and rate-limited so that a guest cannot flood the host.
//!
//! The log belongs to one vCPU thread and is touched by nothing else: collecting a byte is a
//! fast-path exit with no lock and no hand-off. A finished line that is to be shown goes, as a
//! whole, through a channel to the VM's [`LinePrinter`] thread, which writes it to standard
//! error with one `write(2)`: the vCPU thread never waits for the terminal or for a lock on
//! standard error, and lines of the two OSes never interleave mid-line.

use std::io::Write;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Sender, unbounded};

/// The longest line kept; longer lines are cut and marked.
pub const MAX_LINE: usize = 512;
/// Bytes per second a guest may log before lines are dropped.
pub const RATE_BYTES_PER_SECOND: u64 = 256 * 1024;
/// Bytes a guest may log in a burst.
pub const BURST_BYTES: u64 = 1024 * 1024;

/// Where finished lines go.
pub trait LineSink: Send {
    /// Takes one finished line (no newline).
    fn line(&mut self, tag: &str, line: &str);
}

/// Shows lines as `[tag] line` on standard error (through a [`LinePrinter`]) and keeps them.
#[derive(Debug, Default)]
pub struct StderrSink {
    /// Also keep every line (for tests and reports).
    pub keep: bool,
    /// The kept lines.
    pub lines: Vec<String>,
    /// The printer's channel; `None`: do not show.
    pub echo: Option<Sender<String>>,
}

impl LineSink for StderrSink {
    fn line(&mut self, tag: &str, line: &str) {
        if let Some(echo) = &self.echo {
            // Never blocks (the channel is unbounded); a printer that is gone loses the line.
            let _ = echo.send(format!("[{tag}] {line}\n"));
        }
        if self.keep {
            self.lines.push(line.to_owned());
        }
    }
}

/// The thread that writes the serial lines of a VM's OSes to standard error, so that their
/// vCPU threads do not.
#[derive(Debug)]
pub struct LinePrinter {
    sender: Sender<String>,
    thread: JoinHandle<()>,
}

impl LinePrinter {
    /// Starts the printer.
    pub fn start() -> std::io::Result<LinePrinter> {
        let (sender, receiver) = unbounded::<String>();
        let thread = std::thread::Builder::new()
            .name("serial-printer".to_owned())
            .spawn(move || {
                for text in receiver {
                    // One write per line; a failed log write is not worth stopping a VM for.
                    let _ = std::io::stderr().lock().write_all(text.as_bytes());
                }
            })?;
        Ok(LinePrinter { sender, thread })
    }

    /// A channel for a [`StderrSink`].
    pub fn sender(&self) -> Sender<String> {
        self.sender.clone()
    }

    /// Waits until every line sent so far is written. Call after the senders are dropped (the
    /// vCPU threads have ended), or it waits for them.
    pub fn finish(self) {
        drop(self.sender);
        let _ = self.thread.join();
    }
}

/// A token bucket over bytes.
#[derive(Debug)]
struct RateLimit {
    tokens: u64,
    last: Instant,
}

impl RateLimit {
    fn take(&mut self, bytes: u64) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last);
        let refill = (elapsed.as_micros() as u64).saturating_mul(RATE_BYTES_PER_SECOND) / 1_000_000;
        if refill > 0 {
            self.tokens = (self.tokens + refill).min(BURST_BYTES);
            self.last = now;
        }
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

/// One OS's serial log.
#[derive(Debug)]
pub struct SerialLog<S> {
    tag: &'static str,
    line: Vec<u8>,
    truncated: bool,
    limit: RateLimit,
    dropped_bytes: u64,
    /// Total bytes the guest wrote.
    pub bytes: u64,
    /// The sink.
    pub sink: S,
}

impl<S: LineSink> SerialLog<S> {
    /// A log whose lines are prefixed with `tag`.
    pub fn new(tag: &'static str, sink: S) -> SerialLog<S> {
        SerialLog {
            tag,
            line: Vec::with_capacity(MAX_LINE),
            truncated: false,
            limit: RateLimit {
                tokens: BURST_BYTES,
                last: Instant::now(),
            },
            dropped_bytes: 0,
            bytes: 0,
            sink,
        }
    }

    /// Takes one byte from the guest.
    pub fn push(&mut self, byte: u8) {
        self.bytes += 1;
        match byte {
            b'\n' => self.flush(),
            b'\r' => {}
            _ if self.line.len() < MAX_LINE => self.line.push(byte),
            _ => self.truncated = true,
        }
    }

    /// Emits the pending partial line, if any.
    pub fn flush(&mut self) {
        if self.line.is_empty() && !self.truncated {
            return;
        }
        let cost = self.line.len() as u64 + 1;
        if self.limit.take(cost) {
            if self.dropped_bytes > 0 {
                let note = format!(
                    "({} bytes of log dropped: the guest logs too fast)",
                    self.dropped_bytes
                );
                self.sink.line(self.tag, &note);
                self.dropped_bytes = 0;
            }
            let mut text = String::from_utf8_lossy(&self.line).into_owned();
            text.retain(|c| !c.is_control() || c == '\t');
            if self.truncated {
                text.push_str(" [line cut]");
            }
            self.sink.line(self.tag, &text);
        } else {
            self.dropped_bytes += cost;
        }
        self.line.clear();
        self.truncated = false;
    }

    /// Bytes dropped by the rate limit and not yet reported.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> SerialLog<StderrSink> {
        SerialLog::new(
            "a",
            StderrSink {
                keep: true,
                lines: Vec::new(),
                echo: None,
            },
        )
    }

    #[test]
    fn splits_lines_and_cleans_them() {
        let mut log = log();
        for byte in b"hello\r\nwor\x07ld\npartial" {
            log.push(*byte);
        }
        assert_eq!(log.sink.lines, ["hello", "world"]);
        log.flush();
        assert_eq!(log.sink.lines, ["hello", "world", "partial"]);
    }

    #[test]
    fn cuts_long_lines() {
        let mut log = log();
        for _ in 0..MAX_LINE * 3 {
            log.push(b'x');
        }
        log.push(b'\n');
        assert_eq!(log.sink.lines.len(), 1);
        assert!(log.sink.lines[0].ends_with("[line cut]"));
        assert_eq!(log.sink.lines[0].len(), MAX_LINE + " [line cut]".len());
    }

    #[test]
    fn a_flood_is_dropped_and_reported() {
        let mut log = log();
        let line = [b'y'; 200];
        for _ in 0..20_000 {
            for byte in line {
                log.push(byte);
            }
            log.push(b'\n');
        }
        let kept = log.sink.lines.len();
        assert!(kept < 20_000, "the flood was not limited");
        assert!(log.dropped_bytes() > 0 || log.sink.lines.iter().any(|l| l.contains("dropped")));
    }
}
