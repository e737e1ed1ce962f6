//! The RoCE fast path's own ARP cache.
//!
//! RoCE packets from OS A bypass smoltcp, so they cannot use smoltcp's neighbour cache. This
//! cache learns addresses by snooping: the sender of every ARP request or reply that concerns
//! us (targets our address, or names an address we know or are resolving), and the source of
//! every IPv4 frame sent to our MAC from an on-link address. On a miss the service queues a few
//! packets per destination, broadcasts an ARP request itself, repeats it every
//! [`NetConfig::arp_retry_ns`](crate::NetConfig::arp_retry_ns), and after
//! [`NetConfig::arp_attempts`](crate::NetConfig::arp_attempts) requests drops the queued packets
//! (the RoCE transport retransmits). smoltcp's own traffic keeps using smoltcp's cache.
//!
//! Both tables are small vectors searched linearly: they hold a few dozen entries at most, and
//! a linear scan of those is cheaper than hashing.

use alloc::vec::Vec;
use core::net::Ipv4Addr;

use crate::nic::Frame;

#[derive(Debug)]
struct Entry {
    ip: Ipv4Addr,
    mac: [u8; 6],
    expires_ns: u64,
}

#[derive(Debug)]
struct Pending {
    ip: Ipv4Addr,
    frames: Vec<Frame>,
    requests_sent: u32,
    next_request_ns: u64,
}

/// Limits of an [`ArpCache`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ArpLimits {
    pub entries: usize,
    pub lifetime_ns: u64,
    pub pending_destinations: usize,
    pub queue_per_destination: usize,
    pub retry_ns: u64,
    pub attempts: u32,
}

/// What [`ArpCache::enqueue`] did with a packet.
#[derive(Debug)]
pub(crate) enum Enqueued {
    /// Queued; send an ARP request for the destination now if `request`.
    Queued { request: bool },
    /// No room: the frame comes back to be dropped.
    Full(Frame),
}

/// An IPv4 -> MAC cache with per-destination queues of packets waiting for resolution.
#[derive(Debug)]
pub(crate) struct ArpCache {
    entries: Vec<Entry>,
    pending: Vec<Pending>,
    limits: ArpLimits,
}

impl ArpCache {
    pub(crate) fn new(limits: ArpLimits) -> ArpCache {
        ArpCache {
            entries: Vec::with_capacity(limits.entries),
            pending: Vec::new(),
            limits,
        }
    }

    /// The MAC of `ip`, if known and fresh.
    pub(crate) fn lookup(&self, ip: Ipv4Addr, now_ns: u64) -> Option<[u8; 6]> {
        self.entries
            .iter()
            .find(|entry| entry.ip == ip && entry.expires_ns > now_ns)
            .map(|entry| entry.mac)
    }

    /// Whether `ip` is known or being resolved (so an ARP packet from it is worth learning).
    pub(crate) fn is_tracked(&self, ip: Ipv4Addr) -> bool {
        self.entries.iter().any(|entry| entry.ip == ip)
            || self.pending.iter().any(|pending| pending.ip == ip)
    }

    /// Records `ip` at `mac`; returns the frames that were waiting for it (their Ethernet
    /// headers still to be written), if any.
    pub(crate) fn learn(&mut self, ip: Ipv4Addr, mac: [u8; 6], now_ns: u64) -> Option<Vec<Frame>> {
        let expires_ns = now_ns.saturating_add(self.limits.lifetime_ns);
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.ip == ip) {
            entry.mac = mac;
            entry.expires_ns = expires_ns;
        } else {
            if self.entries.len() >= self.limits.entries {
                // Evict the entry closest to expiry.
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, entry)| entry.expires_ns)
                    .map(|(index, _)| index)
                {
                    self.entries.swap_remove(oldest);
                }
            }
            self.entries.push(Entry {
                ip,
                mac,
                expires_ns,
            });
        }
        let index = self.pending.iter().position(|pending| pending.ip == ip)?;
        Some(self.pending.swap_remove(index).frames)
    }

    /// Queues `frame` until `ip` is resolved.
    pub(crate) fn enqueue(&mut self, ip: Ipv4Addr, frame: Frame, now_ns: u64) -> Enqueued {
        if let Some(pending) = self.pending.iter_mut().find(|pending| pending.ip == ip) {
            if pending.frames.len() >= self.limits.queue_per_destination {
                return Enqueued::Full(frame);
            }
            pending.frames.push(frame);
            return Enqueued::Queued { request: false };
        }
        if self.pending.len() >= self.limits.pending_destinations {
            return Enqueued::Full(frame);
        }
        let mut frames = Vec::with_capacity(self.limits.queue_per_destination);
        frames.push(frame);
        self.pending.push(Pending {
            ip,
            frames,
            requests_sent: 1,
            next_request_ns: now_ns.saturating_add(self.limits.retry_ns),
        });
        Enqueued::Queued { request: true }
    }

    /// Runs the timers: calls `request` for each destination due for another ARP request and
    /// `drop` for each frame whose destination did not answer in time. Stale entries go too.
    pub(crate) fn maintain(
        &mut self,
        now_ns: u64,
        mut request: impl FnMut(Ipv4Addr),
        mut drop: impl FnMut(Frame),
    ) {
        self.entries.retain(|entry| entry.expires_ns > now_ns);
        let (retry_ns, attempts) = (self.limits.retry_ns, self.limits.attempts);
        self.pending.retain_mut(|pending| {
            if pending.next_request_ns > now_ns {
                return true;
            }
            if pending.requests_sent >= attempts {
                for frame in pending.frames.drain(..) {
                    drop(frame);
                }
                return false;
            }
            pending.requests_sent += 1;
            pending.next_request_ns = now_ns.saturating_add(retry_ns);
            request(pending.ip);
            true
        });
    }

    /// When [`ArpCache::maintain`] next has something to do (pending resolutions only).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.pending
            .iter()
            .map(|pending| pending.next_request_ns)
            .min()
    }

    /// Frames waiting for resolution.
    pub(crate) fn queued_frames(&self) -> usize {
        self.pending
            .iter()
            .map(|pending| pending.frames.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn limits() -> ArpLimits {
        ArpLimits {
            entries: 2,
            lifetime_ns: 1000,
            pending_destinations: 2,
            queue_per_destination: 2,
            retry_ns: 100,
            attempts: 3,
        }
    }

    fn frame(tag: u8) -> Frame {
        Frame {
            bytes: vec![tag; 16],
            len: 16,
        }
    }

    #[test]
    fn learn_lookup_expire_and_evict() {
        let mut cache = ArpCache::new(limits());
        let ip = |last| Ipv4Addr::new(10, 0, 0, last);
        assert_eq!(cache.lookup(ip(1), 0), None);
        assert!(cache.learn(ip(1), [2, 0, 0, 0, 0, 1], 0).is_none());
        assert_eq!(cache.lookup(ip(1), 999), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(cache.lookup(ip(1), 1000), None);
        cache.learn(ip(2), [2, 0, 0, 0, 0, 2], 10);
        cache.learn(ip(3), [2, 0, 0, 0, 0, 3], 20);
        // ip(1) expired first, so it was evicted.
        assert!(!cache.is_tracked(ip(1)));
        assert!(cache.is_tracked(ip(2)) && cache.is_tracked(ip(3)));
        cache.maintain(1015, |_| {}, |_| {});
        assert!(!cache.is_tracked(ip(2)));
        assert!(cache.is_tracked(ip(3)));
    }

    #[test]
    fn pending_frames_flush_on_reply_or_drop_after_the_attempts() {
        let mut cache = ArpCache::new(limits());
        let target = Ipv4Addr::new(10, 0, 0, 9);
        assert!(matches!(
            cache.enqueue(target, frame(1), 0),
            Enqueued::Queued { request: true }
        ));
        assert!(matches!(
            cache.enqueue(target, frame(2), 0),
            Enqueued::Queued { request: false }
        ));
        assert!(matches!(
            cache.enqueue(target, frame(3), 0),
            Enqueued::Full(_)
        ));
        assert_eq!(cache.next_deadline(), Some(100));
        let flushed = cache.learn(target, [2, 0, 0, 0, 0, 9], 50).unwrap();
        assert_eq!(flushed.len(), 2);
        assert_eq!(flushed[0].bytes[0], 1);
        assert_eq!(cache.next_deadline(), None);

        let other = Ipv4Addr::new(10, 0, 0, 8);
        cache.enqueue(other, frame(4), 0);
        let (mut requests, mut dropped) = (0, 0);
        for now in [100, 150, 200, 300] {
            cache.maintain(now, |_| requests += 1, |_| dropped += 1);
        }
        assert_eq!((requests, dropped), (2, 1));
        assert_eq!(cache.queued_frames(), 0);
    }
}
