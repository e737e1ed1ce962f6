//! An in-memory Ethernet wire between two [`Nic`]s (`std` feature), for tests, benchmarks and
//! single-process native runs.
//!
//! A frame one port transmits is queued for the other port to receive, unless the wire's seeded
//! generator decides to lose it ([`WireConfig::loss_ppm`]). Each direction holds at most
//! [`WireConfig::queue_limit`] frames; beyond that `transmit` reports [`NicFull`], as a real
//! NIC with a full transmit ring does. The ports share the wire through a mutex, so they may
//! live on different threads.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec::Vec;

use crate::nic::{Nic, NicFull};

/// How the wire behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireConfig {
    /// Frames lost per million, in each direction.
    pub loss_ppm: u32,
    /// Seed of the loss generator.
    pub seed: u64,
    /// Frames queued per direction before `transmit` reports full.
    pub queue_limit: usize,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            loss_ppm: 0,
            seed: 1,
            queue_limit: 1024,
        }
    }
}

/// What one port saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames this port transmitted onto the wire (lost ones included).
    pub transmitted: u64,
    /// Of those, frames the wire lost.
    pub lost: u64,
    /// Frames this port received.
    pub received: u64,
    /// Transmit attempts refused because the other port's queue was full.
    pub full: u64,
}

#[derive(Debug)]
struct Wire {
    /// Frames waiting for port 0 and port 1.
    queues: [VecDeque<Vec<u8>>; 2],
    spare: Vec<Vec<u8>>,
    stats: [PortStats; 2],
    state: u64,
    config: WireConfig,
}

impl Wire {
    /// xorshift64*: deterministic for a seed.
    fn next_random(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One end of the wire.
#[derive(Debug)]
pub struct WirePort {
    side: usize,
    mac: [u8; 6],
    wire: Arc<Mutex<Wire>>,
}

/// A wire with a port at each end, for NICs with `mac_a` and `mac_b`.
pub fn pair(mac_a: [u8; 6], mac_b: [u8; 6], config: WireConfig) -> (WirePort, WirePort) {
    let wire = Arc::new(Mutex::new(Wire {
        queues: [VecDeque::new(), VecDeque::new()],
        spare: Vec::new(),
        stats: [PortStats::default(); 2],
        state: config.seed | 1,
        config,
    }));
    (
        WirePort {
            side: 0,
            mac: mac_a,
            wire: wire.clone(),
        },
        WirePort {
            side: 1,
            mac: mac_b,
            wire,
        },
    )
}

impl WirePort {
    fn wire(&self) -> MutexGuard<'_, Wire> {
        // A panic elsewhere while holding the lock leaves plain queues: keep using them.
        self.wire
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This port's counters.
    pub fn stats(&self) -> PortStats {
        self.wire().stats[self.side]
    }

    /// Changes the loss rate (both directions).
    pub fn set_loss_ppm(&self, loss_ppm: u32) {
        self.wire().config.loss_ppm = loss_ppm;
    }

    /// Frames waiting for this port.
    pub fn pending(&self) -> usize {
        self.wire().queues[self.side].len()
    }
}

impl Nic for WirePort {
    fn transmit(&mut self, frame: &[u8]) -> Result<(), NicFull> {
        let mut wire = self.wire();
        let other = 1 - self.side;
        if wire.queues[other].len() >= wire.config.queue_limit {
            wire.stats[self.side].full += 1;
            return Err(NicFull);
        }
        wire.stats[self.side].transmitted += 1;
        let loss = u64::from(wire.config.loss_ppm);
        if loss > 0 && wire.next_random() % 1_000_000 < loss {
            wire.stats[self.side].lost += 1;
            return Ok(());
        }
        let mut bytes = wire.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(frame);
        wire.queues[other].push_back(bytes);
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut wire = self.wire();
        loop {
            let bytes = wire.queues[self.side].pop_front()?;
            wire.stats[self.side].received += 1;
            let len = bytes.len();
            let fits = len <= buf.len();
            if fits {
                buf[..len].copy_from_slice(&bytes);
            }
            if wire.spare.len() < 256 {
                wire.spare.push(bytes);
            }
            if fits {
                return Some(len);
            }
        }
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_loss_is_seeded() {
        let (mut a, mut b) = pair(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            WireConfig::default(),
        );
        a.transmit(b"one").unwrap();
        a.transmit(b"two").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(b.receive(&mut buf), Some(3));
        assert_eq!(&buf[..3], b"one");
        assert_eq!(b.receive(&mut buf), Some(3));
        assert_eq!(b.receive(&mut buf), None);
        assert_eq!(a.receive(&mut buf), None);

        let lossy = |seed| {
            let config = WireConfig {
                loss_ppm: 100_000,
                seed,
                queue_limit: 100_000,
            };
            let (mut a, b) = pair([2; 6], [4; 6], config);
            for _ in 0..10_000 {
                a.transmit(b"x").unwrap();
            }
            b.pending()
        };
        assert_eq!(lossy(7), lossy(7));
        assert!((8_500..9_500).contains(&lossy(7)));
    }

    #[test]
    fn a_full_queue_refuses() {
        let config = WireConfig {
            queue_limit: 1,
            ..WireConfig::default()
        };
        let (mut a, _b) = pair([2; 6], [4; 6], config);
        assert_eq!(a.transmit(b"x"), Ok(()));
        assert_eq!(a.transmit(b"y"), Err(NicFull));
        assert_eq!(a.stats().full, 1);
    }
}
