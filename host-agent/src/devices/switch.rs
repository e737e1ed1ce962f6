//! The built-in L2 switch: joins the virtual NICs of the VMs one agent process runs.
//!
//! A learning switch: it records the source MAC of every frame against the port it came from,
//! forwards a unicast frame to the port that owns its destination MAC, and floods broadcast,
//! multicast and unknown-unicast frames to every other port. A port created with a MAC knows it
//! from the start.
//!
//! Each port receives through a bounded channel; a frame for a full port is dropped and counted,
//! so a slow receiver never blocks a sender. A port's eventfd is signalled when a frame arrives
//! for a receiver that may be asleep: one that asked for it before sleeping
//! ([`NetBackend::prepare_to_wait`]: it raises a flag, then looks again; a sender enqueues,
//! then checks the flag, with a full fence on each side, so a frame is always either seen or
//! signalled). A receiver that is busy, or polls its queue, costs its senders no system call,
//! and the receiving NIC's worker can still `poll` one set of descriptors for all its event
//! sources. Frame buffers go back to a switch-wide pool when received, so frames cost no
//! allocation once the pool is warm.
//!
//! The switch's lock covers forwarding decisions and queueing, never a system call.
//!
//! Fault injection, per switch, for testing transports above it: every frame entering the switch
//! may be lost, duplicated (delivered twice) or reordered (held back and delivered right after
//! the next frame that enters the switch), each with its own probability. Decisions come from a
//! seeded SplitMix64 generator, three draws per frame whatever the rates, so a run is reproducible
//! from its seed. A frame held back when traffic stops stays held until the next frame or
//! [`Switch::flush_held`].

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::bus::lock_device;
use crate::devices::net_backend::{BackendError, NetBackend};

/// An Ethernet MAC address.
pub type MacAddress = [u8; 6];

/// Bytes of an Ethernet header (destination, source, EtherType).
const ETHERNET_HEADER_LEN: usize = 14;

/// Frame buffers the switch keeps for reuse.
const POOL_BUFFERS: usize = 4096;

/// Capacity of a new frame buffer: an Ethernet frame of a 1500-byte link, with room to spare.
const BUFFER_CAPACITY: usize = 2048;

/// Fault probabilities (each per frame, between 0 and 1) and the generator's seed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a frame is delivered twice.
    pub duplication: f64,
    /// Probability that a frame is held back and delivered after the next one.
    pub reordering: f64,
    /// Seed of the fault generator.
    pub seed: u64,
}

/// How a switch is built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwitchConfig {
    /// Frames each port can hold before further frames for it are dropped.
    pub port_queue_len: usize,
    /// Fault injection.
    pub faults: FaultConfig,
}

impl Default for SwitchConfig {
    fn default() -> SwitchConfig {
        SwitchConfig {
            port_queue_len: 1024,
            faults: FaultConfig::default(),
        }
    }
}

/// What the switch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SwitchCounters {
    /// Frames that entered the switch.
    pub frames_in: u64,
    /// Frames shorter than an Ethernet header, dropped.
    pub malformed: u64,
    /// Frames forwarded to the one port that owns their destination.
    pub unicast: u64,
    /// Frames flooded (broadcast, multicast, unknown unicast).
    pub flooded: u64,
    /// Unicast frames whose destination is on the port they came from, dropped.
    pub filtered: u64,
    /// Frames placed in a port's queue.
    pub delivered: u64,
    /// Frames dropped because a port's queue was full.
    pub dropped_full: u64,
    /// Injected: frames lost.
    pub lost: u64,
    /// Injected: frames duplicated.
    pub duplicated: u64,
    /// Injected: frames held back behind the next one.
    pub reordered: u64,
}

/// SplitMix64: a tiny, fast, well-mixed generator; plenty for fault decisions.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `probability` (clamped to [0, 1]); always draws once.
    pub fn chance(&mut self, probability: f64) -> bool {
        let sample = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        sample < probability
    }
}

/// What a port's receiver and the switch share.
#[derive(Debug)]
struct Doorbell {
    /// Readable while frames may be waiting for a receiver that may be asleep.
    ready: EventFd,
    /// Raised by a receiver about to sleep; taken down by the first sender that enqueues
    /// after that, which then signals `ready`. A receiver that polls leaves it down, and its
    /// senders make no system call.
    armed: AtomicBool,
    /// Signals written to `ready` so far.
    signals: AtomicU64,
}

impl Doorbell {
    /// The sender's half of the handshake, after enqueueing: signal a receiver that may sleep.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::Relaxed) {
            // An eventfd write fails only if its counter would overflow: it is readable then.
            let _ = self.ready.write(1);
            self.signals.fetch_add(1, Ordering::Release);
        }
    }

    /// The receiver's half, before it sleeps: reset `ready` if it was signalled since
    /// `drained` (the signal count the receiver last reset), then ask to be signalled; the
    /// caller must look at its queue once more afterwards.
    fn arm(&self, drained: &mut u64) {
        // A signal counted here was written before: one read resets it and any before it. A
        // write not counted yet leaves `ready` readable for one spurious wake-up, after which
        // the next arm sees its count.
        let signals = self.signals.load(Ordering::Acquire);
        if signals != *drained {
            let _ = self.ready.read();
            *drained = signals;
        }
        // A receiver whose sleeps keep being cut short arms again and again: writing the flag
        // only when it is down keeps its cache line shared with the senders, which read it
        // after every frame.
        if !self.armed.load(Ordering::Relaxed) {
            self.armed.store(true, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
    }
}

/// Recycled frame buffers, shared by all ports of a switch.
#[derive(Clone, Debug)]
struct BufferPool {
    put: Sender<Vec<u8>>,
    take: Receiver<Vec<u8>>,
}

impl BufferPool {
    fn new() -> BufferPool {
        let (put, take) = crossbeam_channel::bounded(POOL_BUFFERS);
        BufferPool { put, take }
    }

    /// A buffer holding a copy of `frame`.
    fn copy_of(&self, frame: &[u8]) -> Vec<u8> {
        let mut buffer = self
            .take
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BUFFER_CAPACITY.max(frame.len())));
        buffer.clear();
        buffer.extend_from_slice(frame);
        buffer
    }

    /// Hands a buffer back (dropped if the pool is full).
    fn recycle(&self, buffer: Vec<u8>) {
        let _ = self.put.try_send(buffer);
    }
}

/// One port as the switch sees it.
#[derive(Debug)]
struct PortEntry {
    sender: Sender<Vec<u8>>,
    doorbell: Arc<Doorbell>,
    /// The source MAC last learned from this port, and the table generation it was learned
    /// in: a frame from the same MAC in the same generation needs no table update.
    learned: Option<(MacAddress, u64)>,
    /// The destination of this port's last frame, where the table sent it (`None`: flooded),
    /// and in which generation.
    route: Option<(MacAddress, Option<u32>, u64)>,
}

impl PortEntry {
    fn new(sender: Sender<Vec<u8>>, doorbell: Arc<Doorbell>) -> PortEntry {
        PortEntry {
            sender,
            doorbell,
            learned: None,
            route: None,
        }
    }
}

/// A frame held back by reordering: its source port, bytes and number of copies.
type HeldFrame = (u32, Vec<u8>, u32);

#[derive(Debug)]
struct State {
    ports: BTreeMap<u32, PortEntry>,
    next_port: u32,
    macs: HashMap<MacAddress, u32>,
    /// Bumped whenever `macs` changes, which invalidates the ports' caches.
    generation: u64,
    faults: FaultConfig,
    /// Whether any fault probability is above 0 (otherwise no draws are made).
    faulty: bool,
    rng: SplitMix64,
    held: Option<HeldFrame>,
    port_queue_len: usize,
    counters: SwitchCounters,
    pool: BufferPool,
}

/// Doorbells to ring once the switch's lock is released.
type Rings = Vec<Arc<Doorbell>>;

impl State {
    /// A frame from port `source` enters the switch; the doorbells of the ports it was queued
    /// for are added to `rings`.
    fn ingress(&mut self, source: u32, frame: &[u8], rings: &mut Rings) {
        self.counters.frames_in += 1;
        if frame.len() < ETHERNET_HEADER_LEN {
            self.counters.malformed += 1;
            return;
        }
        let mut source_mac = [0u8; 6];
        source_mac.copy_from_slice(&frame[6..12]);
        if source_mac[0] & 1 == 0 {
            self.learn(source, source_mac);
        }
        // Three draws per frame whatever the rates, so that a run is reproducible from its
        // seed; none on a switch without faults.
        let (lose, duplicate, reorder) = if self.faulty {
            (
                self.rng.chance(self.faults.loss),
                self.rng.chance(self.faults.duplication),
                self.rng.chance(self.faults.reordering),
            )
        } else {
            (false, false, false)
        };
        if lose {
            self.counters.lost += 1;
            return;
        }
        let copies = if duplicate {
            self.counters.duplicated += 1;
            2
        } else {
            1
        };
        if reorder && self.held.is_none() {
            self.counters.reordered += 1;
            self.held = Some((source, frame.to_vec(), copies));
            return;
        }
        self.forward(source, frame, copies, rings);
        if let Some((held_source, held_frame, held_copies)) = self.held.take() {
            self.forward(held_source, &held_frame, held_copies, rings);
        }
    }

    /// Records that `mac` is on port `source`, unless the port's cache says so already.
    fn learn(&mut self, source: u32, mac: MacAddress) {
        let generation = self.generation;
        if let Some(port) = self.ports.get(&source)
            && port.learned == Some((mac, generation))
        {
            return;
        }
        if self.macs.insert(mac, source) != Some(source) {
            self.generation += 1;
        }
        let generation = self.generation;
        if let Some(port) = self.ports.get_mut(&source) {
            port.learned = Some((mac, generation));
        }
    }

    /// Where the table sends a frame for `destination` from port `source` (`None`: flood),
    /// through the port's cache of its last destination.
    fn route(&mut self, source: u32, destination: MacAddress) -> Option<u32> {
        let generation = self.generation;
        if let Some(port) = self.ports.get(&source)
            && let Some((mac, target, cached_in)) = port.route
            && mac == destination
            && cached_in == generation
        {
            return target;
        }
        let target = (destination[0] & 1 == 0)
            .then(|| self.macs.get(&destination).copied())
            .flatten();
        if let Some(port) = self.ports.get_mut(&source) {
            port.route = Some((destination, target, generation));
        }
        target
    }

    /// Sends `copies` copies of `frame` to its destination port(s).
    fn forward(&mut self, source: u32, frame: &[u8], copies: u32, rings: &mut Rings) {
        let mut destination = [0u8; 6];
        destination.copy_from_slice(&frame[..6]);
        let known = self.route(source, destination);
        match known {
            Some(port) if port == source => self.counters.filtered += 1,
            Some(port) => {
                self.counters.unicast += 1;
                self.deliver(port, frame, copies, rings);
            }
            None => {
                self.counters.flooded += 1;
                let targets: Vec<u32> = self
                    .ports
                    .keys()
                    .copied()
                    .filter(|port| *port != source)
                    .collect();
                for target in targets {
                    self.deliver(target, frame, copies, rings);
                }
            }
        }
    }

    fn deliver(&mut self, target: u32, frame: &[u8], copies: u32, rings: &mut Rings) {
        let Some(port) = self.ports.get(&target) else {
            return;
        };
        for _ in 0..copies {
            match port.sender.try_send(self.pool.copy_of(frame)) {
                Ok(()) => self.counters.delivered += 1,
                Err(TrySendError::Full(buffer)) => {
                    self.counters.dropped_full += 1;
                    self.pool.recycle(buffer);
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        if !rings
            .iter()
            .any(|doorbell| Arc::ptr_eq(doorbell, &port.doorbell))
        {
            rings.push(Arc::clone(&port.doorbell));
        }
    }
}

/// A learning L2 switch; clones share the same switch.
#[derive(Clone, Debug)]
pub struct Switch {
    state: Arc<Mutex<State>>,
}

impl Switch {
    /// A switch with no ports.
    pub fn new(config: SwitchConfig) -> Switch {
        Switch {
            state: Arc::new(Mutex::new(State {
                ports: BTreeMap::new(),
                next_port: 0,
                macs: HashMap::new(),
                generation: 0,
                faulty: config.faults.loss > 0.0
                    || config.faults.duplication > 0.0
                    || config.faults.reordering > 0.0,
                faults: config.faults,
                rng: SplitMix64::new(config.faults.seed),
                held: None,
                port_queue_len: config.port_queue_len.max(1),
                counters: SwitchCounters::default(),
                pool: BufferPool::new(),
            })),
        }
    }

    /// Adds a port; with `mac`, unicast frames for that address reach it before it has sent
    /// anything.
    pub fn port(&self, mac: Option<MacAddress>) -> std::io::Result<SwitchPort> {
        // Armed from the start: the receiver may sleep before it ever looks at its queue.
        let doorbell = Arc::new(Doorbell {
            ready: EventFd::new(EFD_NONBLOCK)?,
            armed: AtomicBool::new(true),
            signals: AtomicU64::new(0),
        });
        let mut state = lock_device(&self.state);
        let (sender, receiver) = crossbeam_channel::bounded(state.port_queue_len);
        let id = state.next_port;
        state.next_port += 1;
        state
            .ports
            .insert(id, PortEntry::new(sender, Arc::clone(&doorbell)));
        if let Some(mac) = mac {
            state.macs.insert(mac, id);
            state.generation += 1;
        }
        Ok(SwitchPort {
            state: Arc::clone(&self.state),
            id,
            mac,
            receiver,
            doorbell,
            pool: state.pool.clone(),
            rings: Vec::new(),
            drained: 0,
        })
    }

    /// Changes the fault injection from the next frame on (a link that goes bad, or dead with
    /// a loss of 1, while the ports stay); the generator starts again from `faults.seed`.
    pub fn set_faults(&self, faults: FaultConfig) {
        let mut state = lock_device(&self.state);
        state.faulty = faults.loss > 0.0 || faults.duplication > 0.0 || faults.reordering > 0.0;
        state.faults = faults;
        state.rng = SplitMix64::new(faults.seed);
    }

    /// The counters so far.
    pub fn counters(&self) -> SwitchCounters {
        lock_device(&self.state).counters
    }

    /// Delivers a frame held back by reordering now, if there is one.
    pub fn flush_held(&self) {
        let mut rings = Rings::new();
        {
            let mut state = lock_device(&self.state);
            if let Some((source, frame, copies)) = state.held.take() {
                state.forward(source, &frame, copies, &mut rings);
            }
        }
        for doorbell in rings {
            doorbell.ring();
        }
    }
}

/// One port of a [`Switch`]: the back-end of one NIC.
#[derive(Debug)]
pub struct SwitchPort {
    state: Arc<Mutex<State>>,
    id: u32,
    mac: Option<MacAddress>,
    receiver: Receiver<Vec<u8>>,
    doorbell: Arc<Doorbell>,
    pool: BufferPool,
    /// Doorbells to ring after a send, kept to reuse its allocation.
    rings: Rings,
    /// The doorbell's signal count when this port last reset its eventfd.
    drained: u64,
}

impl SwitchPort {
    /// The port's number on its switch.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The MAC the port was created with.
    pub fn mac(&self) -> Option<MacAddress> {
        self.mac
    }

    /// Waits up to `timeout` for a frame (for peers driven by a test or a host thread rather
    /// than a worker's poll loop).
    pub fn receive_timeout(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        self.receiver.recv_timeout(timeout).ok()
    }

    /// Frames waiting in the port's queue.
    pub fn pending(&self) -> usize {
        self.receiver.len()
    }
}

impl NetBackend for SwitchPort {
    fn send(&mut self, frame: &[u8]) -> Result<(), BackendError> {
        lock_device(&self.state).ingress(self.id, frame, &mut self.rings);
        for doorbell in self.rings.drain(..) {
            doorbell.ring();
        }
        Ok(())
    }

    fn receive(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, BackendError> {
        let Ok(frame) = self.receiver.try_recv() else {
            return Ok(None);
        };
        let result = match buffer.get_mut(..frame.len()) {
            Some(destination) => {
                destination.copy_from_slice(&frame);
                Ok(Some(frame.len()))
            }
            None => Err(BackendError::FrameTooLarge {
                len: frame.len(),
                capacity: buffer.len(),
            }),
        };
        self.pool.recycle(frame);
        result
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by the doorbell, which `self` holds for the borrow's
        // lifetime.
        unsafe { BorrowedFd::borrow_raw(self.doorbell.ready.as_raw_fd()) }
    }

    fn prepare_to_wait(&mut self) -> bool {
        // Arm, then look again: a frame enqueued before the arm is seen now, one enqueued
        // after it signals the eventfd.
        self.doorbell.arm(&mut self.drained);
        self.receiver.is_empty()
    }
}

impl Drop for SwitchPort {
    fn drop(&mut self) {
        let mut state = lock_device(&self.state);
        state.ports.remove(&self.id);
        let id = self.id;
        state.macs.retain(|_, port| *port != id);
        state.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddress = [2, 0, 0, 0, 0, 0xa];
    const B: MacAddress = [2, 0, 0, 0, 0, 0xb];
    const C: MacAddress = [2, 0, 0, 0, 0, 0xc];
    const BROADCAST: MacAddress = [0xff; 6];

    fn frame(destination: MacAddress, source: MacAddress, sequence: u32) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&destination);
        frame.extend_from_slice(&source);
        frame.extend_from_slice(&[0x88, 0xb5]);
        frame.extend_from_slice(&sequence.to_be_bytes());
        frame
    }

    fn drain(port: &mut SwitchPort) -> Vec<Vec<u8>> {
        let mut buffer = vec![0u8; 2048];
        let mut frames = Vec::new();
        while let Some(len) = port.receive(&mut buffer).unwrap() {
            frames.push(buffer[..len].to_vec());
        }
        frames
    }

    #[test]
    fn learns_forwards_and_floods() {
        let switch = Switch::new(SwitchConfig::default());
        let mut a = switch.port(Some(A)).unwrap();
        let mut b = switch.port(None).unwrap();
        let mut c = switch.port(None).unwrap();

        // A is known from its port's MAC: only A gets the frame.
        b.send(&frame(A, B, 1)).unwrap();
        assert_eq!(drain(&mut a), [frame(A, B, 1)]);
        assert!(drain(&mut c).is_empty());

        // D is unknown: flooded to everyone but the sender.
        const D: MacAddress = [2, 0, 0, 0, 0, 0xd];
        c.send(&frame(D, C, 2)).unwrap();
        assert_eq!(drain(&mut a), [frame(D, C, 2)]);
        assert_eq!(drain(&mut b), [frame(D, C, 2)]);
        assert!(drain(&mut c).is_empty());

        // B was learned from its first frame.
        a.send(&frame(B, A, 3)).unwrap();
        assert_eq!(drain(&mut b), [frame(B, A, 3)]);
        assert!(drain(&mut c).is_empty());

        a.send(&frame(BROADCAST, A, 4)).unwrap();
        assert_eq!(drain(&mut b), [frame(BROADCAST, A, 4)]);
        assert_eq!(drain(&mut c), [frame(BROADCAST, A, 4)]);
        assert!(drain(&mut a).is_empty(), "no echo to the sender");

        a.send(&frame(A, A, 5)).unwrap();
        a.send(&[1, 2, 3]).unwrap();
        let counters = switch.counters();
        assert_eq!(counters.frames_in, 6);
        assert_eq!(counters.filtered, 1);
        assert_eq!(counters.malformed, 1);
        assert_eq!(counters.unicast, 2);
        assert_eq!(counters.flooded, 2);
        assert_eq!(counters.delivered, 6);
    }

    #[test]
    fn a_mac_that_moves_is_followed() {
        const D: MacAddress = [2, 0, 0, 0, 0, 0xd];
        let switch = Switch::new(SwitchConfig::default());
        let mut a = switch.port(Some(A)).unwrap();
        let mut b = switch.port(Some(B)).unwrap();
        let mut c = switch.port(None).unwrap();
        // Unknown: flooded (and b's cache of where D goes says so).
        b.send(&frame(D, B, 1)).unwrap();
        assert_eq!((drain(&mut a).len(), drain(&mut c).len()), (1, 1));
        // D shows up on c: b's next frame for D goes to c alone.
        c.send(&frame(B, D, 2)).unwrap();
        assert_eq!(drain(&mut b).len(), 1);
        b.send(&frame(D, B, 3)).unwrap();
        assert_eq!((drain(&mut a).len(), drain(&mut c).len()), (0, 1));
        // D moves to a, then back to c (whose cache of what it learned is out of date).
        a.send(&frame(B, D, 4)).unwrap();
        b.send(&frame(D, B, 5)).unwrap();
        assert_eq!((drain(&mut a).len(), drain(&mut c).len()), (1, 0));
        c.send(&frame(B, D, 6)).unwrap();
        b.send(&frame(D, B, 7)).unwrap();
        assert_eq!((drain(&mut a).len(), drain(&mut c).len()), (0, 1));
        assert_eq!(drain(&mut b).len(), 2);
        // A port that goes away is forgotten, cached routes included.
        drop(c);
        b.send(&frame(D, B, 8)).unwrap();
        assert_eq!(drain(&mut a).len(), 1, "flooded again");
    }

    #[test]
    fn a_full_port_drops_and_counts() {
        let switch = Switch::new(SwitchConfig {
            port_queue_len: 2,
            ..SwitchConfig::default()
        });
        let mut a = switch.port(Some(A)).unwrap();
        let mut b = switch.port(Some(B)).unwrap();
        for sequence in 0..5 {
            a.send(&frame(B, A, sequence)).unwrap();
        }
        assert_eq!(drain(&mut b).len(), 2);
        assert_eq!(switch.counters().dropped_full, 3);
    }

    #[test]
    fn the_ready_fd_follows_the_queue() {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let switch = Switch::new(SwitchConfig::default());
        let mut a = switch.port(Some(A)).unwrap();
        let mut b = switch.port(Some(B)).unwrap();
        let readable = |port: &SwitchPort| {
            let mut fds = [PollFd::new(port.ready_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
        };
        assert!(!readable(&b));
        a.send(&frame(B, A, 1)).unwrap();
        assert!(readable(&b));
        assert!(!b.prepare_to_wait(), "a frame waits: no sleep");
        assert_eq!(drain(&mut b).len(), 1);
        assert!(b.prepare_to_wait());
        assert!(!readable(&b));
        a.send(&frame(B, A, 2)).unwrap();
        assert!(readable(&b));
    }

    #[test]
    fn a_receiver_is_signalled_once_per_sleep_not_per_frame() {
        let switch = Switch::new(SwitchConfig::default());
        let mut a = switch.port(Some(A)).unwrap();
        let mut b = switch.port(Some(B)).unwrap();
        let signals = |port: &SwitchPort| port.doorbell.signals.load(Ordering::Relaxed);
        for sequence in 0..100 {
            a.send(&frame(B, A, sequence)).unwrap();
        }
        assert_eq!(
            signals(&b),
            1,
            "one signal: b was armed when the burst began"
        );
        assert_eq!(drain(&mut b).len(), 100);
        // b polls (it finds its queue empty again and again but never prepares to sleep): no
        // frame signals it.
        for sequence in 100..200 {
            a.send(&frame(B, A, sequence)).unwrap();
            assert_eq!(drain(&mut b).len(), 1);
        }
        assert_eq!(signals(&b), 1);
        // About to sleep, b is armed again: the next frame signals it, once.
        assert!(b.prepare_to_wait());
        a.send(&frame(B, A, 200)).unwrap();
        a.send(&frame(B, A, 201)).unwrap();
        assert_eq!(signals(&b), 2);
        assert_eq!(drain(&mut b).len(), 2);
    }

    #[test]
    fn no_wake_up_is_lost_between_threads() {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        const FRAMES: u32 = 20_000;
        let switch = Switch::new(SwitchConfig {
            port_queue_len: 64,
            ..SwitchConfig::default()
        });
        let mut a = switch.port(Some(A)).unwrap();
        let mut b = switch.port(Some(B)).unwrap();
        let receiver = std::thread::spawn(move || {
            let (mut received, mut timeouts) = (0u32, 0u32);
            let mut buffer = [0u8; 64];
            while received + u32::try_from(switch.counters().dropped_full).unwrap() < FRAMES {
                match b.receive(&mut buffer).unwrap() {
                    Some(_) => received += 1,
                    None if !b.prepare_to_wait() => {}
                    None => {
                        // A lost wake-up shows as a poll that times out with frames waiting.
                        let mut fds = [PollFd::new(b.ready_fd(), PollFlags::POLLIN)];
                        if poll(&mut fds, PollTimeout::from(2000u16)).unwrap() == 0
                            && b.pending() > 0
                        {
                            timeouts += 1;
                        }
                    }
                }
            }
            (received, timeouts)
        });
        for sequence in 0..FRAMES {
            a.send(&frame(B, A, sequence)).unwrap();
            if sequence % 97 == 0 {
                std::thread::yield_now();
            }
        }
        let (received, timeouts) = receiver.join().unwrap();
        assert_eq!(timeouts, 0, "a frame waited for a wake-up that never came");
        assert!(received > 0);
    }

    #[test]
    fn a_small_buffer_is_an_error_not_a_panic() {
        let switch = Switch::new(SwitchConfig::default());
        let mut a = switch.port(Some(A)).unwrap();
        let mut b = switch.port(Some(B)).unwrap();
        a.send(&frame(B, A, 1)).unwrap();
        let mut buffer = [0u8; 8];
        assert!(matches!(
            b.receive(&mut buffer),
            Err(BackendError::FrameTooLarge {
                len: 18,
                capacity: 8
            })
        ));
    }

    #[test]
    fn dropped_ports_are_forgotten() {
        let switch = Switch::new(SwitchConfig::default());
        let mut a = switch.port(Some(A)).unwrap();
        let b = switch.port(Some(B)).unwrap();
        drop(b);
        a.send(&frame(B, A, 1)).unwrap();
        let counters = switch.counters();
        assert_eq!((counters.flooded, counters.delivered), (1, 0));
    }

    #[test]
    fn faults_are_reproducible_and_counted() {
        let faults = FaultConfig {
            loss: 0.1,
            duplication: 0.1,
            reordering: 0.1,
            seed: 42,
        };
        let run = || {
            let switch = Switch::new(SwitchConfig {
                faults,
                ..SwitchConfig::default()
            });
            let mut a = switch.port(Some(A)).unwrap();
            let mut b = switch.port(Some(B)).unwrap();
            for sequence in 0..500 {
                a.send(&frame(B, A, sequence)).unwrap();
            }
            switch.flush_held();
            (drain(&mut b), switch.counters())
        };
        let (frames, counters) = run();
        assert_eq!(run(), (frames.clone(), counters), "same seed, same faults");
        assert!(counters.lost > 20 && counters.duplicated > 20 && counters.reordered > 20);
        assert_eq!(
            frames.len() as u64,
            500 - counters.lost + counters.duplicated,
        );
        let sequences: Vec<u32> = frames
            .iter()
            .map(|frame| u32::from_be_bytes(frame[14..18].try_into().unwrap()))
            .collect();
        let inversions = sequences
            .windows(2)
            .filter(|pair| pair[1] < pair[0])
            .count();
        // Each held frame arrives after its successor; only one still held at the end comes
        // out in order (by `flush_held`).
        let inversions = inversions as u64;
        assert!(
            inversions == counters.reordered || inversions + 1 == counters.reordered,
            "{inversions} inversions for {} reordered frames",
            counters.reordered
        );
    }

    #[test]
    fn splitmix_is_deterministic() {
        let mut first = SplitMix64::new(7);
        let mut second = SplitMix64::new(7);
        for _ in 0..10 {
            assert_eq!(first.next_u64(), second.next_u64());
        }
        assert!(!first.chance(0.0));
        assert!(first.chance(1.0));
    }
}
