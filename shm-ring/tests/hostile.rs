//! A hostile peer: scribbled headers, indices, descriptors and buffer returns must produce
//! errors, never a panic or an access outside the region.

use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use shm_ring::OwnedRegion;
use shm_ring::desc::Desc;
use shm_ring::pool::{self, PoolError, PoolOwner, PoolView, ReclaimError};
use shm_ring::ring::{self, AttachError, Consumer, IndexKind, Producer, PushError};

const CAPACITY: u32 = 8;
const PRODUCER_INDEX: usize = 128;
const CONSUMER_INDEX: usize = 256;
const BUFFER_SIZE: u32 = 256;
const BUFFERS: u32 = 16;

/// A data ring, a return ring and a pool, each in its own region, plus the honest handles.
struct World {
    ring: OwnedRegion,
    pool: OwnedRegion,
    return_ring: OwnedRegion,
}

impl World {
    fn new() -> World {
        let ring_size = ring::region_size::<Desc>(CAPACITY);
        let pool_size = pool::pool_region_size(BUFFER_SIZE, BUFFERS);
        let world = World {
            ring: OwnedRegion::new(ring_size),
            pool: OwnedRegion::new(pool_size),
            return_ring: OwnedRegion::new(ring_size),
        };
        // SAFETY: fresh regions of the right sizes, unused.
        unsafe {
            ring::init::<Desc>(world.ring.as_ptr(), ring_size, CAPACITY).unwrap();
        }
        // SAFETY: as above.
        unsafe {
            ring::init::<Desc>(world.return_ring.as_ptr(), ring_size, CAPACITY).unwrap();
        }
        // SAFETY: as above.
        unsafe { pool::init(world.pool.as_ptr(), pool_size, BUFFER_SIZE, BUFFERS).unwrap() };
        world
    }

    fn ring_bytes(&self) -> usize {
        self.ring.len()
    }

    /// Overwrites bytes of the data ring region, as a hostile peer would.
    fn scribble_ring(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.ring.len());
        for (i, byte) in bytes.iter().enumerate() {
            // SAFETY: inside the region; a racing writer is exactly what the ring must survive,
            // and here nothing runs concurrently.
            unsafe {
                self.ring
                    .as_ptr()
                    .wrapping_add(offset + i)
                    .write_volatile(*byte)
            };
        }
    }

    fn ring_word(&self, offset: usize) -> &AtomicU32 {
        assert!(offset + 4 <= self.ring.len() && offset.is_multiple_of(4));
        // SAFETY: an aligned word inside the region.
        unsafe { &*self.ring.as_ptr().wrapping_add(offset).cast::<AtomicU32>() }
    }

    fn producer(&self) -> Result<Producer<Desc>, AttachError> {
        // SAFETY: the region outlives the handles in these tests; one producer at a time.
        unsafe { Producer::attach(self.ring.as_ptr(), self.ring.len()) }
    }

    fn consumer(&self) -> Result<Consumer<Desc>, AttachError> {
        // SAFETY: as above; one consumer at a time.
        unsafe { Consumer::attach(self.ring.as_ptr(), self.ring.len()) }
    }

    fn return_pair(&self) -> (Producer<Desc>, Consumer<Desc>) {
        let (base, len) = (self.return_ring.as_ptr(), self.return_ring.len());
        // SAFETY: as above.
        let tx = unsafe { Producer::attach(base, len) }.unwrap();
        // SAFETY: as above.
        let rx = unsafe { Consumer::attach(base, len) }.unwrap();
        (tx, rx)
    }

    fn view(&self) -> PoolView {
        // SAFETY: as above.
        unsafe { PoolView::attach(self.pool.as_ptr(), self.pool.len()) }.unwrap()
    }
}

/// Drives a consumer over whatever the ring holds: pops, validates against the pool, copies.
/// Returns how many descriptors were accepted; errors are fine, panics are not.
fn consume_everything(consumer: &mut Consumer<Desc>, view: &PoolView) -> usize {
    let mut accepted = 0;
    let mut buffer = vec![0u8; BUFFER_SIZE as usize];
    for _ in 0..4 * CAPACITY {
        match consumer.pop() {
            Ok(Some(desc)) => {
                if let Ok(span) = view.check(&desc) {
                    // Accepted spans are inside the pool.
                    assert!(
                        u64::from(span.offset) + u64::from(span.len)
                            <= u64::from(BUFFER_SIZE * BUFFERS)
                    );
                    assert_eq!(view.read(&desc, &mut buffer), Ok(desc.len as usize));
                    view.write_at(&desc, 0, &buffer[..desc.len as usize])
                        .unwrap();
                    accepted += 1;
                } else {
                    assert!(view.read(&desc, &mut buffer).is_err());
                }
            }
            Ok(None) => break,
            Err(_) => {
                assert!(consumer.fault().is_some());
                break;
            }
        }
        let batch = match consumer.peek(3) {
            Ok(batch) => batch,
            Err(_) => break,
        };
        for desc in &batch {
            let _ = view.check(&desc);
        }
        batch.release();
    }
    accepted
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Random bytes anywhere in the header (and slots): attach fails cleanly or the handles
    /// work without panicking.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn scribbled_header_never_panics(
        writes in proptest::collection::vec((0usize..640, proptest::collection::vec(any::<u8>(), 1..16)), 1..8),
    ) {
        let world = World::new();
        let view = world.view();
        for (offset, bytes) in &writes {
            let end = (*offset + bytes.len()).min(world.ring_bytes());
            world.scribble_ring(*offset, &bytes[..end - offset]);
        }
        if let Ok(mut consumer) = world.consumer() {
            consume_everything(&mut consumer, &view);
        }
        if let Ok(mut producer) = world.producer() {
            for i in 0..2 * CAPACITY {
                match producer.push(Desc::new(i * BUFFER_SIZE, 1)) {
                    Ok(()) | Err(PushError::Full) => {}
                    Err(PushError::Peer(_)) => prop_assert!(producer.fault().is_some()),
                }
            }
            let _ = producer.needs_wakeup();
            let _ = producer.prepare_to_sleep();
        }
    }

    /// An honest producer, and a hostile one that rewrites indices and slots between
    /// operations: the consumer reports errors, and everything it accepts is inside the pool.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn scribbled_indices_and_descriptors_never_panic(
        steps in proptest::collection::vec(
            (0u32..6, any::<u32>(), any::<u32>(), 0usize..(CAPACITY as usize * 4)),
            1..40,
        ),
    ) {
        let world = World::new();
        let view = world.view();
        let mut producer = world.producer().unwrap();
        let mut consumer = world.consumer().unwrap();
        for (kind, a, b, slot_word) in steps {
            match kind {
                0 => world.ring_word(PRODUCER_INDEX).store(a, Ordering::Relaxed),
                1 => world.ring_word(CONSUMER_INDEX).store(a, Ordering::Relaxed),
                2 => world.ring_word(ring::RING_HEADER_SIZE + slot_word * 4).store(a, Ordering::Relaxed),
                3 => {
                    let current = world.ring_word(PRODUCER_INDEX).load(Ordering::Relaxed);
                    world.ring_word(PRODUCER_INDEX).store(current.wrapping_add(b % 20), Ordering::Relaxed);
                }
                _ => {
                    let _ = producer.push(Desc::new(a % (2 * BUFFER_SIZE * BUFFERS), b % 512));
                }
            }
            consume_everything(&mut consumer, &view);
        }
    }

    /// Arbitrary descriptors: accepted exactly when the span is inside one buffer.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn descriptor_validation_matches_the_definition(offset in any::<u32>(), len in any::<u32>()) {
        let world = World::new();
        let view = world.view();
        let desc = Desc::new(offset, len);
        let inside = u64::from(offset) < u64::from(BUFFER_SIZE * BUFFERS)
            && u64::from(offset % BUFFER_SIZE) + u64::from(len) <= u64::from(BUFFER_SIZE);
        prop_assert_eq!(view.check(&desc).is_ok(), inside);
        prop_assert_eq!(view.return_desc(&desc).is_ok(), inside);
    }

    /// Arbitrary return offsets (and repeats) never corrupt the owner's free set.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn bogus_returns_never_corrupt_the_free_set(returns in proptest::collection::vec(any::<u32>(), 0..64)) {
        let world = World::new();
        let mut owner = PoolOwner::new(world.view(), vec![0u64; pool::owner_storage_words(BUFFERS)]).unwrap();
        let mut in_flight = Vec::new();
        for _ in 0..BUFFERS / 2 {
            let buffer = owner.alloc().unwrap();
            in_flight.push(owner.submit(buffer, 0, 1).unwrap().offset);
        }
        let submitted = in_flight.clone();
        for offset in returns.iter().chain(&submitted).chain(&returns).copied() {
            let expected_ok = in_flight.contains(&offset);
            prop_assert_eq!(owner.reclaim(offset).is_ok(), expected_ok);
            in_flight.retain(|&o| o != offset);
        }
        prop_assert_eq!(owner.free_count(), BUFFERS);
        let mut allocated = 0;
        while owner.alloc().is_some() {
            allocated += 1;
        }
        prop_assert_eq!(allocated, BUFFERS);
    }
}

#[test]
fn backwards_producer_index() {
    let world = World::new();
    let mut producer = world.producer().unwrap();
    let mut consumer = world.consumer().unwrap();
    producer
        .push_slice(&[Desc::new(0, 1), Desc::new(256, 1)])
        .unwrap();
    assert!(consumer.pop().unwrap().is_some());
    assert!(consumer.pop().unwrap().is_some());
    world.ring_word(PRODUCER_INDEX).store(1, Ordering::Relaxed);
    let fault = consumer.pop().unwrap_err();
    assert_eq!(fault.index, IndexKind::Producer);
    assert!(fault.moved_backwards());
}

#[test]
fn producer_index_past_capacity() {
    let world = World::new();
    let mut consumer = world.consumer().unwrap();
    world
        .ring_word(PRODUCER_INDEX)
        .store(CAPACITY + 1, Ordering::Relaxed);
    let fault = consumer.peek(1).unwrap_err();
    assert_eq!(
        (fault.index, fault.found),
        (IndexKind::Producer, CAPACITY + 1)
    );
    assert!(!fault.moved_backwards());
}

#[test]
fn consumer_index_backwards_and_past_producer() {
    for bad in [u32::MAX, 3] {
        let world = World::new();
        let mut producer = world.producer().unwrap();
        let mut consumer = world.consumer().unwrap();
        producer.push_slice(&[Desc::new(0, 1); 8]).unwrap();
        consumer.pop().unwrap();
        consumer.pop().unwrap();
        assert_eq!(producer.free(), Ok(2));
        producer.push_slice(&[Desc::new(0, 1); 2]).unwrap();
        // The producer saw consumer index 2 and has published 10: only 2..=10 is legal.
        world
            .ring_word(CONSUMER_INDEX)
            .store(if bad == 3 { 11 } else { bad }, Ordering::Relaxed);
        let result = producer.push(Desc::new(0, 1));
        assert!(
            matches!(result, Err(PushError::Peer(fault)) if fault.index == IndexKind::Consumer),
            "{result:?}"
        );
    }
}

#[test]
fn descriptors_out_of_pool_are_rejected() {
    let world = World::new();
    let view = world.view();
    let mut producer = world.producer().unwrap();
    let mut consumer = world.consumer().unwrap();
    let hostile = [
        Desc::new(BUFFER_SIZE * BUFFERS, 1),  // past the pool
        Desc::new(u32::MAX, 1),               // far past the pool
        Desc::new(0, BUFFER_SIZE + 1),        // longer than a buffer
        Desc::new(BUFFER_SIZE - 1, 2),        // straddles two buffers
        Desc::new(BUFFER_SIZE * 2, u32::MAX), // offset + len overflows u32
        Desc::new(u32::MAX, u32::MAX),        // everything at once
    ];
    producer.push_slice(&hostile).unwrap();
    let mut out = vec![0u8; 1 << 16];
    while let Some(desc) = consumer.pop().unwrap() {
        assert!(
            matches!(view.check(&desc), Err(PoolError::OutOfBounds { .. })),
            "{desc:?}"
        );
        assert!(view.read(&desc, &mut out).is_err());
        assert!(view.write_at(&desc, 0, &[1]).is_err());
        assert!(view.span_ptr(&desc).is_err());
        // SAFETY: rejected before any access.
        assert!(unsafe { view.span_bytes(&desc) }.is_err());
    }
}

#[test]
fn double_and_bogus_buffer_returns_are_errors() {
    let world = World::new();
    let view = world.view();
    let mut storage = [0u64; pool::owner_storage_words(BUFFERS)];
    let mut owner = PoolOwner::new(world.view(), &mut storage[..]).unwrap();
    let (mut return_tx, mut return_rx) = world.return_pair();
    let buffer = owner.alloc().unwrap();
    let desc = owner.submit(buffer, 4, 8).unwrap();
    let good = view.return_desc(&desc).unwrap();
    return_tx
        .push_slice(&[
            good,
            good,
            Desc::new(good.offset + 4, 0),
            Desc::new(BUFFER_SIZE * BUFFERS, 0),
            Desc::new(BUFFER_SIZE, 0),
        ])
        .unwrap();
    assert_eq!(
        owner.reclaim_from(&mut return_rx, 16),
        Err(ReclaimError::Pool(PoolError::NotInFlight(good.offset)))
    );
    assert_eq!(owner.free_count(), BUFFERS);
    assert_eq!(
        owner.reclaim_from(&mut return_rx, 16),
        Err(ReclaimError::Pool(PoolError::NotBufferStart(
            good.offset + 4
        )))
    );
    assert_eq!(
        owner.reclaim_from(&mut return_rx, 16),
        Err(ReclaimError::Pool(PoolError::OutsidePool(
            BUFFER_SIZE * BUFFERS
        )))
    );
    // Buffer 1 was never submitted.
    assert_eq!(
        owner.reclaim_from(&mut return_rx, 16),
        Err(ReclaimError::Pool(PoolError::NotInFlight(BUFFER_SIZE)))
    );
    assert_eq!(owner.reclaim_from(&mut return_rx, 16), Ok(0));
    assert_eq!(owner.stats().bad_returns, 4);
    assert_eq!(owner.free_count(), BUFFERS);
}

#[test]
fn hostile_return_ring_index() {
    let world = World::new();
    let mut storage = vec![0u64; pool::owner_storage_words(BUFFERS)];
    let mut owner = PoolOwner::new(world.view(), &mut storage[..]).unwrap();
    let (_return_tx, mut return_rx) = world.return_pair();
    // The return ring's producer index runs far ahead.
    // SAFETY: the producer index word of the return ring.
    let word = world.return_ring.as_ptr().wrapping_add(PRODUCER_INDEX);
    // SAFETY: an aligned word inside the region.
    let word = unsafe { &*word.cast::<AtomicU32>() };
    word.store(1000, Ordering::Relaxed);
    assert!(matches!(
        owner.reclaim_from(&mut return_rx, 16),
        Err(ReclaimError::Peer(_))
    ));
    assert!(matches!(
        owner.reclaim_from(&mut return_rx, 16),
        Err(ReclaimError::Peer(_))
    ));
}
