//! A verified descriptor stream over one ring pair: the ring test and benchmark of duovm.
//!
//! The producer fills pool buffers with numbered, checksummed payloads and posts them in
//! batches; the consumer validates every descriptor against the pool, checks sequence number,
//! length and checksum, and returns the buffers. Both sides sleep only through the rings'
//! wake-up handshake, so under load no signal is sent at all. The same code runs in the guest
//! kernels (signals are IPIs, sleep is `hlt`) and natively on the host (threads), so the cost
//! measured on the host is the cost the guests pay.
//!
//! # Waiting: spin, then sleep
//!
//! A side that finds nothing to do (the consumer an empty ring, the producer a full ring or no
//! free buffer) first polls its rings for up to [`StreamParams::spin_ns`] of [`Platform::now`]
//! time, and only then raises its "needs wake-up" flag and sleeps. While it polls, its flag is
//! down, so the peer sends no signal for what it publishes. At saturation (the peer always has
//! more) the gaps between bursts are shorter than the budget and neither side sleeps, so no
//! signal is sent at all; when the traffic stops, a side spins once for the budget and sleeps,
//! and the next descriptor wakes it with one signal, as without spinning. The budget bounds
//! the CPU time spent polling per idle period; it adds no latency: a descriptor published
//! while the peer polls is seen at the next poll, one published while it sleeps is signalled.
//! A sleep that ends without work (the platform's backstop timer) goes straight back to sleep
//! without spinning again. Polling only delays the rings' wake-up handshake, which stays as it
//! is, so the argument that no wake-up is lost ([`crate::ring`], `tests/loom.rs`) still holds.
//!
//! Payload layout (little-endian), at least [`MIN_PAYLOAD`] bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | sequence number |
//! | 8..12 | checksum of bytes 16.. (FNV-style, over 8-byte words) |
//! | 12..16 | payload length |
//! | 16.. | byte `i` is `(sequence + i) mod 256` |

use core::fmt;

use crate::desc::Desc;
use crate::pool::{PoolError, PoolOwner, PoolView, ReclaimError};
use crate::ring::{Consumer, PeerError, Producer};

/// The smallest payload: the header.
pub const MIN_PAYLOAD: usize = 16;
/// The largest payload the stream moves (a scratch buffer of this size lives on the stack).
pub const MAX_PAYLOAD: usize = 2048;

/// Where a side of the stream sleeps and how it wakes the other.
pub trait Platform {
    /// Wakes the peer (an IPI in the VM).
    fn signal_peer(&mut self);
    /// Arms a sleep: returns a token for [`Platform::sleep`]. Called before the ring's
    /// `prepare_to_sleep`, so a signal that arrives in between is not lost.
    fn arm_sleep(&mut self) -> u64;
    /// Sleeps until a signal that came after `token` was taken (or a backstop timer fires).
    fn sleep(&mut self, token: u64);
    /// A monotonic tick counter (the TSC in the VM).
    fn now(&mut self) -> u64;
    /// The number of [`Platform::now`] ticks in `nanoseconds` (saturating).
    fn ticks_from_ns(&self, nanoseconds: u64) -> u64;
}

/// What to move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamParams {
    /// Good descriptors to move.
    pub descriptors: u64,
    /// Payload bytes per descriptor ([`MIN_PAYLOAD`]..=[`MAX_PAYLOAD`], at most a buffer).
    pub payload: usize,
    /// Descriptors per batch (at least 1).
    pub batch: u32,
    /// Post one descriptor that points outside the pool after this many good ones (a test of
    /// the consumer's checks).
    pub hostile_after: Option<u64>,
    /// How long a side that finds nothing to do polls its rings before it sleeps, in
    /// nanoseconds (0: sleep at once). See the [module docs](self).
    pub spin_ns: u64,
}

impl StreamParams {
    /// Descriptors the consumer will see in all, good and hostile.
    pub fn total(&self) -> u64 {
        self.descriptors + u64::from(self.hostile_after.is_some())
    }
}

/// What a side counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Descriptors produced or consumed.
    pub descriptors: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Descriptors whose payload checked out (consumer).
    pub verified: u64,
    /// Descriptors rejected (consumer).
    pub rejected: u64,
    /// Signals sent to the peer.
    pub signals: u64,
    /// Times this side slept.
    pub sleeps: u64,
    /// Times this side found nothing to do, polled, and found work before its spin budget ran
    /// out (each one a sleep, and a signal from the peer, saved).
    pub spins: u64,
    /// Ticks from the first descriptor to the last.
    pub elapsed: u64,
    /// The first rejection's code ([`Rejection::code`]), or 0.
    pub first_rejection: u64,
}

/// Why the consumer rejected a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The descriptor does not lie inside the pool.
    OutOfPool(PoolError),
    /// Its length is not the agreed payload length.
    BadLength(u32),
    /// Its payload's sequence number is not the next one.
    BadSequence {
        /// Expected.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// The checksum or the data did not match.
    BadChecksum,
}

impl Rejection {
    /// A small number for reports: 1 out of pool, 2 length, 3 sequence, 4 checksum.
    pub fn code(&self) -> u64 {
        match self {
            Rejection::OutOfPool(_) => 1,
            Rejection::BadLength(_) => 2,
            Rejection::BadSequence { .. } => 3,
            Rejection::BadChecksum => 4,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::OutOfPool(error) => write!(f, "descriptor outside the pool: {error}"),
            Rejection::BadLength(len) => write!(f, "descriptor length {len} is wrong"),
            Rejection::BadSequence { expected, found } => {
                write!(f, "sequence {found}, expected {expected}")
            }
            Rejection::BadChecksum => write!(f, "payload checksum mismatch"),
        }
    }
}

/// Why a side of the stream stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The parameters are out of range.
    BadParams,
    /// The peer broke a ring's protocol.
    Peer(PeerError),
    /// The pool refused an operation.
    Pool(PoolError),
    /// The peer returned a buffer that was not in flight.
    Reclaim(ReclaimError),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::BadParams => write!(f, "stream parameters out of range"),
            StreamError::Peer(error) => write!(f, "peer broke the ring protocol: {error}"),
            StreamError::Pool(error) => write!(f, "pool error: {error}"),
            StreamError::Reclaim(error) => write!(f, "bad buffer return: {error}"),
        }
    }
}

impl From<PeerError> for StreamError {
    fn from(error: PeerError) -> Self {
        StreamError::Peer(error)
    }
}

impl From<PoolError> for StreamError {
    fn from(error: PoolError) -> Self {
        StreamError::Pool(error)
    }
}

impl From<ReclaimError> for StreamError {
    fn from(error: ReclaimError) -> Self {
        StreamError::Reclaim(error)
    }
}

/// Eight payload bytes starting at byte `index` of the pattern of `sequence`: byte `k` is
/// `(sequence + index + k) mod 256`, computed for all eight lanes at once without carries
/// between them.
#[inline]
fn pattern_word(sequence: u64, index: usize) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const STEPS: u64 = 0x0706_0504_0302_0100;
    let base = u64::from((sequence as usize).wrapping_add(index) as u8) * 0x0101_0101_0101_0101;
    ((base & LOW7) + STEPS) ^ (base & HIGH)
}

/// A word-at-a-time checksum of the pattern bytes (cheap in a guest where every instruction
/// counts): FNV-style mixing of little-endian 8-byte words, the tail zero-padded.
fn checksum(data: &[u8]) -> u32 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut word = [0u8; 8];
        word[..tail.len()].copy_from_slice(tail);
        hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash ^ (hash >> 32)) as u32
}

/// Writes the payload of `sequence` into `out` (its whole length).
pub fn fill_payload(sequence: u64, out: &mut [u8]) {
    if out.len() < MIN_PAYLOAD {
        return;
    }
    let (header, data) = out.split_at_mut(MIN_PAYLOAD);
    let mut chunks = data.chunks_exact_mut(8);
    let mut index = 0;
    for chunk in &mut chunks {
        chunk.copy_from_slice(&pattern_word(sequence, index).to_le_bytes());
        index += 8;
    }
    let tail = chunks.into_remainder();
    let last = pattern_word(sequence, index).to_le_bytes();
    let tail_len = tail.len();
    tail.copy_from_slice(&last[..tail_len]);
    header[0..8].copy_from_slice(&sequence.to_le_bytes());
    header[8..12].copy_from_slice(&checksum(data).to_le_bytes());
    header[12..16].copy_from_slice(&(MIN_PAYLOAD as u32 + data.len() as u32).to_le_bytes());
}

/// Checks that `payload` is the payload of `expected`.
pub fn verify_payload(expected: u64, payload: &[u8]) -> Result<(), Rejection> {
    if payload.len() < MIN_PAYLOAD {
        return Err(Rejection::BadLength(payload.len() as u32));
    }
    let (header, data) = payload.split_at(MIN_PAYLOAD);
    let word = |range: core::ops::Range<usize>| {
        let mut bytes = [0u8; 8];
        bytes[..range.len()].copy_from_slice(&header[range]);
        u64::from_le_bytes(bytes)
    };
    let found = word(0..8);
    if found != expected {
        return Err(Rejection::BadSequence { expected, found });
    }
    if word(12..16) != payload.len() as u64 {
        return Err(Rejection::BadLength(word(12..16) as u32));
    }
    let mut chunks = data.chunks_exact(8);
    let mut index = 0;
    let mut data_ok = true;
    for chunk in &mut chunks {
        data_ok &= chunk == pattern_word(expected, index).to_le_bytes();
        index += 8;
    }
    let tail = chunks.remainder();
    data_ok &= *tail == pattern_word(expected, index).to_le_bytes()[..tail.len()];
    if !data_ok || word(8..12) != u64::from(checksum(data)) {
        return Err(Rejection::BadChecksum);
    }
    Ok(())
}

/// Where a side is in its spin-then-sleep cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdleState {
    /// The side found work the last time it looked.
    Busy,
    /// The side has found nothing to do since [`Platform::now`] was `since`, and polls.
    Polling {
        /// When the side first found nothing to do.
        since: u64,
    },
    /// The budget is spent (or zero): the side sleeps whenever it finds nothing to do.
    Sleeping,
}

/// Spin-then-sleep bookkeeping of one side (see the [module docs](self)).
#[derive(Debug)]
struct Idle {
    state: IdleState,
    /// The spin budget in [`Platform::now`] ticks.
    budget: u64,
}

impl Idle {
    fn new(params: &StreamParams, platform: &impl Platform) -> Idle {
        Idle {
            state: IdleState::Busy,
            budget: platform.ticks_from_ns(params.spin_ns),
        }
    }

    /// The side found work; counts a spin that paid off.
    fn busy(&mut self, stats: &mut StreamStats) {
        if matches!(self.state, IdleState::Polling { .. }) {
            stats.spins += 1;
        }
        self.state = IdleState::Busy;
    }

    /// The side found nothing to do: whether to poll again (`true`, within the budget) or go
    /// through the sleep handshake (`false`). Once the budget is spent, stays `false` until
    /// [`Idle::busy`], so a side woken without work (a backstop timer) sleeps again at once.
    fn keep_polling(&mut self, platform: &mut impl Platform) -> bool {
        let since = match self.state {
            IdleState::Sleeping => return false,
            IdleState::Polling { since } => since,
            IdleState::Busy if self.budget == 0 => {
                self.state = IdleState::Sleeping;
                return false;
            }
            IdleState::Busy => {
                let now = platform.now();
                self.state = IdleState::Polling { since: now };
                now
            }
        };
        if platform.now().wrapping_sub(since) >= self.budget {
            self.state = IdleState::Sleeping;
            return false;
        }
        core::hint::spin_loop();
        true
    }
}

/// The producing side: posts `params.descriptors` payloads and waits until every buffer is back.
pub fn produce<S: AsRef<[u64]> + AsMut<[u64]>>(
    tx: &mut Producer<Desc>,
    tx_return: &mut Consumer<Desc>,
    owner: &mut PoolOwner<S>,
    params: &StreamParams,
    platform: &mut impl Platform,
) -> Result<StreamStats, StreamError> {
    let buffer_size = owner.view().buffer_size() as usize;
    if params.payload < MIN_PAYLOAD
        || params.payload > MAX_PAYLOAD
        || params.payload > buffer_size
        || params.batch == 0
        || params
            .hostile_after
            .is_some_and(|at| at > params.descriptors)
    {
        return Err(StreamError::BadParams);
    }
    let mut scratch = [0u8; MAX_PAYLOAD];
    let payload = &mut scratch[..params.payload];
    let mut stats = StreamStats::default();
    let mut sequence = 0u64;
    let mut hostile_pending = params.hostile_after.is_some();
    let mut idle = Idle::new(params, platform);
    let start = platform.now();
    loop {
        let reclaimed = owner.reclaim_from(tx_return, 256)?;
        if reclaimed > 0 {
            idle.busy(&mut stats);
            // The consumer may be waiting for room on the return ring.
            if tx_return.needs_wakeup() {
                stats.signals += 1;
                platform.signal_peer();
            }
        }
        let remaining = params.descriptors - sequence;
        if remaining == 0 && owner.in_flight_count() == 0 {
            break;
        }
        let room = tx.free()?.min(params.batch);
        if hostile_pending && params.hostile_after == Some(sequence) && room > 0 {
            // A descriptor naming the first byte past the pool.
            hostile_pending = false;
            let outside = owner.view().buffer_size() * owner.view().buffer_count();
            tx.push(Desc::new(outside, params.payload as u32))
                .map_err(|_| StreamError::BadParams)?;
            stats.descriptors += 1;
            if tx.needs_wakeup() {
                stats.signals += 1;
                platform.signal_peer();
            }
            continue;
        }
        // Stop a batch where the hostile descriptor goes.
        let until_hostile = match params.hostile_after {
            Some(at) if hostile_pending => at.saturating_sub(sequence),
            _ => u64::MAX,
        };
        let wanted = (remaining.min(until_hostile).min(u64::from(params.batch)) as u32).min(room);
        let count = wanted.min(owner.free_count());
        if count == 0 {
            // Nothing to post: wait for returned buffers (or for room in the ring), polling
            // first.
            if idle.keep_polling(platform) {
                continue;
            }
            let token = platform.arm_sleep();
            let may_sleep = if room == 0 {
                tx.prepare_to_sleep()
            } else {
                tx_return.prepare_to_sleep()
            };
            if may_sleep {
                stats.sleeps += 1;
                platform.sleep(token);
            }
            tx.woke_up();
            tx_return.woke_up();
            continue;
        }
        idle.busy(&mut stats);
        let mut batch = tx.reserve(count)?;
        for _ in 0..count {
            let Some(buffer) = owner.alloc() else { break };
            fill_payload(sequence, payload);
            owner.write(&buffer, 0, payload)?;
            let desc = owner.submit(buffer, 0, params.payload as u32)?;
            if batch.push(desc).is_err() {
                break;
            }
            sequence += 1;
            stats.descriptors += 1;
            stats.bytes += params.payload as u64;
        }
        batch.commit();
        if tx.needs_wakeup() {
            stats.signals += 1;
            platform.signal_peer();
        }
    }
    stats.elapsed = platform.now().wrapping_sub(start);
    Ok(stats)
}

/// The consuming side: takes `params.total()` descriptors, verifies each, returns the buffers.
///
/// A rejected descriptor is counted (and its first rejection kept) but not returned: it names
/// no buffer of the pool.
pub fn consume(
    rx: &mut Consumer<Desc>,
    rx_return: &mut Producer<Desc>,
    pool: &PoolView,
    params: &StreamParams,
    platform: &mut impl Platform,
    mut on_rejection: impl FnMut(u64, &Rejection),
) -> Result<StreamStats, StreamError> {
    if params.payload > MAX_PAYLOAD || params.batch == 0 {
        return Err(StreamError::BadParams);
    }
    let mut scratch = [0u8; MAX_PAYLOAD];
    let mut stats = StreamStats::default();
    let mut expected = 0u64;
    let total = params.total();
    let mut idle = Idle::new(params, platform);
    let mut start = None;
    while stats.descriptors < total {
        let room = rx_return.free()?;
        let batch = rx.peek(params.batch.min(room))?;
        if batch.is_empty() {
            // Nothing to take (or no room to return buffers): poll first, then sleep.
            if idle.keep_polling(platform) {
                continue;
            }
            if room == 0 {
                // The owner has not drained its returns: wait for it.
                let token = platform.arm_sleep();
                if rx_return.prepare_to_sleep() {
                    stats.sleeps += 1;
                    platform.sleep(token);
                }
                rx_return.woke_up();
                continue;
            }
            let token = platform.arm_sleep();
            if rx.prepare_to_sleep() {
                stats.sleeps += 1;
                platform.sleep(token);
            }
            rx.woke_up();
            continue;
        }
        idle.busy(&mut stats);
        if start.is_none() {
            start = Some(platform.now());
        }
        let mut returns = rx_return.reserve(batch.len())?;
        for desc in batch.iter() {
            stats.descriptors += 1;
            let checked = pool
                .read(&desc, &mut scratch)
                .map_err(Rejection::OutOfPool)
                .and_then(|len| {
                    if len != params.payload {
                        return Err(Rejection::BadLength(len as u32));
                    }
                    verify_payload(expected, &scratch[..len])
                });
            match checked {
                Ok(()) => {
                    expected += 1;
                    stats.verified += 1;
                    stats.bytes += desc.len as u64;
                }
                Err(rejection) => {
                    stats.rejected += 1;
                    if stats.first_rejection == 0 {
                        stats.first_rejection = rejection.code();
                    }
                    on_rejection(stats.descriptors - 1, &rejection);
                    if matches!(rejection, Rejection::OutOfPool(_)) {
                        continue;
                    }
                }
            }
            if let Ok(back) = pool.return_desc(&desc) {
                let _ = returns.push(back);
            }
        }
        returns.commit();
        batch.release();
        let wake = rx.needs_wakeup() | rx_return.needs_wakeup();
        if wake {
            stats.signals += 1;
            platform.signal_peer();
        }
    }
    stats.elapsed = start.map_or(0, |start| platform.now().wrapping_sub(start));
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootinfo::SharedLayout;
    use crate::layout::Role;
    use crate::owned::OwnedRegion;
    use crate::pool::owner_storage_words;
    use crate::shared::{self, Endpoint, SharedConfig};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Instant;

    #[test]
    fn payloads_verify_and_tampering_is_caught() {
        let mut payload = [0u8; 64];
        fill_payload(7, &mut payload);
        assert_eq!(verify_payload(7, &payload), Ok(()));
        assert_eq!(
            verify_payload(8, &payload),
            Err(Rejection::BadSequence {
                expected: 8,
                found: 7
            })
        );
        payload[40] ^= 1;
        assert_eq!(verify_payload(7, &payload), Err(Rejection::BadChecksum));
        // The pattern wraps per byte: sequence 250, byte i is (250 + i) mod 256.
        let mut payload = [0u8; 37];
        fill_payload(250, &mut payload);
        for (i, byte) in payload[MIN_PAYLOAD..].iter().enumerate() {
            assert_eq!(*byte, (250 + i) as u8);
        }
        assert_eq!(verify_payload(250, &payload), Ok(()));
        payload[36] ^= 0x80;
        assert_eq!(verify_payload(250, &payload), Err(Rejection::BadChecksum));
        assert_eq!(verify_payload(0, &[0; 8]), Err(Rejection::BadLength(8)));
    }

    /// One side's signal: a counter and a condition variable.
    #[derive(Default)]
    struct Bell {
        rings: AtomicU64,
        lock: Mutex<()>,
        condvar: Condvar,
    }

    struct ThreadPlatform {
        mine: Arc<Bell>,
        peer: Arc<Bell>,
        started: Instant,
    }

    impl Platform for ThreadPlatform {
        fn signal_peer(&mut self) {
            let _guard = self.peer.lock.lock().unwrap();
            self.peer.rings.fetch_add(1, Ordering::SeqCst);
            self.peer.condvar.notify_one();
        }
        fn arm_sleep(&mut self) -> u64 {
            self.mine.rings.load(Ordering::SeqCst)
        }
        fn sleep(&mut self, token: u64) {
            let guard = self.mine.lock.lock().unwrap();
            // No backstop: a lost wake-up hangs the test (and fails it by timeout).
            let _unused = self
                .mine
                .condvar
                .wait_while(guard, |_| self.mine.rings.load(Ordering::SeqCst) == token)
                .unwrap();
        }
        fn now(&mut self) -> u64 {
            self.started.elapsed().as_nanos() as u64
        }
        fn ticks_from_ns(&self, nanoseconds: u64) -> u64 {
            nanoseconds
        }
    }

    fn run_stream(params: StreamParams, config: SharedConfig) -> (StreamStats, StreamStats) {
        let layout = SharedLayout::compute(4 << 20, config).unwrap();
        let region = Arc::new(OwnedRegion::new(4 << 20));
        // SAFETY: the region is valid for its length and outlives both threads (joined below).
        unsafe { shared::init(region.as_ptr(), region.len(), &layout).unwrap() };
        // SAFETY: as above; the only endpoint of role A.
        let mut a =
            unsafe { Endpoint::attach(region.as_ptr(), region.len(), &layout, Role::A) }.unwrap();
        // SAFETY: as above; the only endpoint of role B.
        let mut b =
            unsafe { Endpoint::attach(region.as_ptr(), region.len(), &layout, Role::B) }.unwrap();
        let (bell_a, bell_b) = (Arc::new(Bell::default()), Arc::new(Bell::default()));
        let mut platform_a = ThreadPlatform {
            mine: bell_a.clone(),
            peer: bell_b.clone(),
            started: Instant::now(),
        };
        let mut platform_b = ThreadPlatform {
            mine: bell_b,
            peer: bell_a,
            started: Instant::now(),
        };
        let consumer = std::thread::spawn(move || {
            let pool = b.peer_pool;
            consume(
                &mut b.rx,
                &mut b.rx_return,
                &pool,
                &params,
                &mut platform_b,
                |_, _| {},
            )
            .unwrap()
        });
        let mut storage = vec![0u64; owner_storage_words(config.buffers_per_pool)];
        let mut owner = PoolOwner::new(a.own_pool, &mut storage[..]).unwrap();
        let produced = produce(
            &mut a.tx,
            &mut a.tx_return,
            &mut owner,
            &params,
            &mut platform_a,
        )
        .unwrap();
        let consumed = consumer.join().unwrap();
        drop(region);
        (produced, consumed)
    }

    #[test]
    fn a_stream_moves_every_payload_across_threads() {
        let count: u64 = if cfg!(miri) { 300 } else { 20_000 };
        for (batch, spin_ns) in [(1, 0), (7, 0), (32, 0), (1, 20_000), (32, 20_000)] {
            let params = StreamParams {
                descriptors: count,
                payload: 64,
                batch,
                hostile_after: None,
                spin_ns,
            };
            let config = SharedConfig {
                ring_capacity: 16,
                buffer_size: 256,
                buffers_per_pool: 24,
            };
            let (produced, consumed) = run_stream(params, config);
            assert_eq!(produced.descriptors, count);
            assert_eq!(consumed.verified, count);
            assert_eq!(consumed.rejected, 0);
            assert_eq!(consumed.bytes, count * 64);
        }
    }

    /// At saturation, sides that poll for longer than the gaps between bursts never sleep, so
    /// neither signals the other.
    #[test]
    fn spinning_sides_send_no_signals_at_saturation() {
        let count: u64 = if cfg!(miri) { 200 } else { 50_000 };
        let params = StreamParams {
            descriptors: count,
            payload: 64,
            batch: 8,
            hostile_after: None,
            // Far longer than any gap, short of a descheduled thread.
            spin_ns: 2_000_000_000,
        };
        let config = SharedConfig {
            ring_capacity: 16,
            buffer_size: 256,
            buffers_per_pool: 24,
        };
        let (produced, consumed) = run_stream(params, config);
        assert_eq!(consumed.verified, count);
        assert_eq!((produced.sleeps, consumed.sleeps), (0, 0));
        assert_eq!((produced.signals, consumed.signals), (0, 0));
        assert!(produced.spins + consumed.spins > 0);
    }

    /// A platform whose clock only moves when told to.
    struct ManualPlatform {
        now: u64,
    }

    impl Platform for ManualPlatform {
        fn signal_peer(&mut self) {}
        fn arm_sleep(&mut self) -> u64 {
            0
        }
        fn sleep(&mut self, _token: u64) {}
        fn now(&mut self) -> u64 {
            self.now
        }
        fn ticks_from_ns(&self, nanoseconds: u64) -> u64 {
            nanoseconds / 10
        }
    }

    #[test]
    fn idle_polls_for_its_budget_then_sleeps_and_does_not_spin_again_until_busy() {
        let mut platform = ManualPlatform { now: 5 };
        let params = StreamParams {
            descriptors: 1,
            payload: MIN_PAYLOAD,
            batch: 1,
            hostile_after: None,
            spin_ns: 1000,
        };
        let mut stats = StreamStats::default();
        let mut idle = Idle::new(&params, &platform);
        assert_eq!(idle.budget, 100, "converted to ticks");
        // Work found while polling: a spin that paid off.
        assert!(idle.keep_polling(&mut platform));
        platform.now += 99;
        assert!(idle.keep_polling(&mut platform));
        idle.busy(&mut stats);
        assert_eq!(stats.spins, 1);
        // The budget runs out: sleep, and after a wake-up without work sleep again at once.
        assert!(idle.keep_polling(&mut platform));
        platform.now += 100;
        assert!(!idle.keep_polling(&mut platform));
        platform.now -= 50;
        assert!(!idle.keep_polling(&mut platform), "no second spin");
        idle.busy(&mut stats);
        assert_eq!(stats.spins, 1, "a sleep is not a spin");
        assert!(idle.keep_polling(&mut platform), "busy again: spins again");
        // A zero budget never polls.
        let params = StreamParams {
            spin_ns: 0,
            ..params
        };
        let mut idle = Idle::new(&params, &platform);
        assert!(!idle.keep_polling(&mut platform));
        idle.busy(&mut stats);
        assert_eq!(stats.spins, 1);
    }

    #[test]
    fn a_hostile_descriptor_is_rejected_and_the_rest_go_through() {
        let params = StreamParams {
            descriptors: 100,
            payload: 32,
            batch: 4,
            hostile_after: Some(10),
            spin_ns: 0,
        };
        let config = SharedConfig {
            ring_capacity: 8,
            buffer_size: 128,
            buffers_per_pool: 8,
        };
        let (produced, consumed) = run_stream(params, config);
        assert_eq!(produced.descriptors, 101);
        assert_eq!(consumed.verified, 100);
        assert_eq!(consumed.rejected, 1);
        assert_eq!(consumed.first_rejection, 1);
    }
}
