//! loom models of the ring protocol and the wake-up handshake.
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p shm-ring --release --test loom
//! ```
//!
//! Each model explores every interleaving with at most 3 preemptions (what [`model`] sets when
//! `LOOM_MAX_PREEMPTIONS` is not given; the whole file then runs in seconds). Set
//! `LOOM_MAX_PREEMPTIONS` for a deeper search; without any bound each wake-up model runs for
//! more than five minutes.
//!
//! Under `--cfg loom` the ring's atomics, fences and slot cells are loom's (see `src/sync.rs`),
//! so these tests explore the interleavings and weak-memory outcomes of the code the guests run,
//! and loom reports any slot read that races with a write.
//!
//! The models were checked against broken variants of `src/ring.rs`: removing either
//! `fence(SeqCst)` of the consumer wake-up handshake makes `consumer_wakeup_is_never_lost` and
//! `consumer_that_polls_before_sleeping_is_never_lost` deadlock (a lost wake-up), and weakening
//! any of the four index stores (`push`, `commit`, `pop`, `release_first`) from Release to
//! Relaxed makes loom report a data race on a slot ("Causality violation"). Each model finishes
//! in a few seconds with the default bound.
#![cfg(loom)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::sync::Arc;

use loom::sync::Notify;
use loom::sync::atomic::{AtomicU32, Ordering, fence};
use loom::thread;
use shm_ring::desc::Desc;
use shm_ring::ring::{self, Consumer, Producer, PushError};

/// Runs `body` under loom, with a preemption bound of 3 unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise.
fn model<F: Fn() + Sync + Send + 'static>(body: F) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(body);
}

/// A heap stand-in for shared memory, shared by the two threads.
struct Region {
    pointer: *mut u8,
    layout: Layout,
}

// SAFETY: plain memory, accessed only through the ring handles.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `ring_pair` with this layout.
        unsafe { dealloc(self.pointer, self.layout) };
    }
}

/// A ring handle with the reference that keeps its region alive.
type Side<Handle> = (Handle, Arc<Region>);

/// A ring of `capacity` descriptors; each handle comes with a reference to the region.
fn ring_pair(capacity: u32) -> (Side<Producer<Desc>>, Side<Consumer<Desc>>) {
    let size = ring::region_size::<Desc>(capacity);
    let layout = Layout::from_size_align(size, ring::RING_ALIGN).unwrap();
    // SAFETY: non-zero size.
    let pointer = unsafe { alloc_zeroed(layout) };
    assert!(!pointer.is_null());
    let region = Arc::new(Region { pointer, layout });
    // SAFETY: fresh region of `size` bytes; it outlives the handles, which travel with an `Arc`
    // of it; one producer and one consumer.
    unsafe { ring::init::<Desc>(pointer, size, capacity) }.unwrap();
    // SAFETY: as above.
    let producer = unsafe { Producer::attach(pointer, size) }.unwrap();
    // SAFETY: as above.
    let consumer = unsafe { Consumer::attach(pointer, size) }.unwrap();
    ((producer, Arc::clone(&region)), (consumer, region))
}

fn item(i: u32) -> Desc {
    Desc {
        offset: i,
        len: i + 100,
        flags: i ^ 0xff,
        meta: !i,
    }
}

/// Descriptors arrive in order, intact, exactly once, across wrap-around of a 2-slot ring,
/// with single pushes and pops.
#[test]
fn single_push_pop_in_order() {
    model(|| {
        const COUNT: u32 = 4;
        let ((mut tx, tx_region), (mut rx, rx_region)) = ring_pair(2);
        let producer = thread::spawn(move || {
            let _region = tx_region;
            let mut next = 0;
            while next < COUNT {
                match tx.push(item(next)) {
                    Ok(()) => next += 1,
                    Err(PushError::Full) => thread::yield_now(),
                    Err(error) => panic!("{error}"),
                }
            }
        });
        let mut expected = 0;
        while expected < COUNT {
            match rx.pop().unwrap() {
                Some(got) => {
                    assert_eq!(got, item(expected));
                    expected += 1;
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.pop().unwrap(), None);
        drop(rx_region);
    });
}

/// The same with the batch APIs: `reserve`/`commit` and `peek`/`release`.
#[test]
fn batches_in_order() {
    model(|| {
        const COUNT: u32 = 5;
        let ((mut tx, tx_region), (mut rx, rx_region)) = ring_pair(2);
        let producer = thread::spawn(move || {
            let _region = tx_region;
            let mut next = 0;
            while next < COUNT {
                let mut batch = tx.reserve(2).unwrap();
                while next < COUNT && batch.push(item(next)).is_ok() {
                    next += 1;
                }
                if batch.commit() == 0 {
                    thread::yield_now();
                }
            }
        });
        let mut expected = 0;
        while expected < COUNT {
            let batch = rx.peek(2).unwrap();
            if batch.is_empty() {
                thread::yield_now();
            }
            for got in &batch {
                assert_eq!(got, item(expected));
                expected += 1;
            }
            batch.release();
        }
        producer.join().unwrap();
        drop(rx_region);
    });
}

/// No lost wake-up: a consumer that decides to sleep is always woken if something it did not
/// see was published. The "interrupt" is a loom `Notify` (a latched event, like a pending IPI);
/// if the consumer slept while the producer decided not to signal, the consumer would wait
/// forever and loom would report a deadlock.
#[test]
fn consumer_wakeup_is_never_lost() {
    model(|| {
        const COUNT: u32 = 3;
        let ((mut tx, tx_region), (mut rx, rx_region)) = ring_pair(2);
        let interrupt = Arc::new(Notify::new());
        let signal = Arc::clone(&interrupt);
        let producer = thread::spawn(move || {
            let _region = tx_region;
            for i in 0..COUNT {
                // The ring holds 2: wait for room (the consumer does not sleep on a full ring).
                while let Err(error) = tx.push(item(i)) {
                    assert_eq!(error, PushError::Full);
                    thread::yield_now();
                }
                if tx.needs_wakeup() {
                    signal.notify();
                }
            }
        });
        let mut expected = 0;
        while expected < COUNT {
            if let Some(got) = rx.pop().unwrap() {
                assert_eq!(got, item(expected));
                expected += 1;
                continue;
            }
            if rx.prepare_to_sleep() {
                interrupt.wait();
                rx.woke_up();
            }
        }
        producer.join().unwrap();
        drop(rx_region);
    });
}

/// The same with the consumer of `shm_ring::stream`: it polls the ring a bounded number of times
/// before it goes through the handshake (spin, then sleep), and the producer publishes batches
/// and checks for a sleeping consumer once per batch.
#[test]
fn consumer_that_polls_before_sleeping_is_never_lost() {
    model(|| {
        const COUNT: u32 = 3;
        const POLLS: u32 = 2;
        let ((mut tx, tx_region), (mut rx, rx_region)) = ring_pair(2);
        let interrupt = Arc::new(Notify::new());
        let signal = Arc::clone(&interrupt);
        let producer = thread::spawn(move || {
            let _region = tx_region;
            let mut next = 0;
            while next < COUNT {
                let mut batch = tx.reserve(2).unwrap();
                while next < COUNT && batch.push(item(next)).is_ok() {
                    next += 1;
                }
                if batch.commit() == 0 {
                    thread::yield_now();
                    continue;
                }
                if tx.needs_wakeup() {
                    signal.notify();
                }
            }
        });
        let mut expected = 0;
        let mut idle_polls = 0;
        while expected < COUNT {
            let batch = rx.peek(2).unwrap();
            if !batch.is_empty() {
                for got in &batch {
                    assert_eq!(got, item(expected));
                    expected += 1;
                }
                batch.release();
                idle_polls = 0;
                continue;
            }
            if idle_polls < POLLS {
                // Poll again at once (loom may preempt here, as a spinning guest may be).
                idle_polls += 1;
                continue;
            }
            if rx.prepare_to_sleep() {
                interrupt.wait();
                rx.woke_up();
            }
        }
        producer.join().unwrap();
        drop(rx_region);
    });
}

/// The same handshake the other way: a producer waiting for room is always woken.
#[test]
fn producer_wakeup_is_never_lost() {
    model(|| {
        const COUNT: u32 = 3;
        let ((mut tx, tx_region), (mut rx, rx_region)) = ring_pair(1);
        let interrupt = Arc::new(Notify::new());
        let signal = Arc::clone(&interrupt);
        let producer = thread::spawn(move || {
            let _region = tx_region;
            let mut next = 0;
            while next < COUNT {
                match tx.push(item(next)) {
                    Ok(()) => next += 1,
                    Err(PushError::Full) => {
                        if tx.prepare_to_sleep() {
                            interrupt.wait();
                            tx.woke_up();
                        }
                    }
                    Err(error) => panic!("{error}"),
                }
            }
        });
        let mut expected = 0;
        while expected < COUNT {
            match rx.pop().unwrap() {
                Some(got) => {
                    assert_eq!(got, item(expected));
                    expected += 1;
                    if rx.needs_wakeup() {
                        signal.notify();
                    }
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        drop(rx_region);
    });
}

/// Store buffering with a `fence(SeqCst)` on each side: both loads cannot miss both stores.
/// This is the pattern of the wake-up handshake; the test shows loom models the fence.
#[test]
fn litmus_store_buffering_with_fences() {
    model(|| {
        let (x, y) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (x2, y2) = (Arc::clone(&x), Arc::clone(&y));
        let other = thread::spawn(move || {
            x2.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            y2.load(Ordering::Relaxed)
        });
        y.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let seen_x = x.load(Ordering::Relaxed);
        let seen_y = other.join().unwrap();
        assert!(
            seen_x == 1 || seen_y == 1,
            "both sides missed the other's store"
        );
    });
}

/// The control: without the fences loom does find the outcome where both loads miss, so the
/// test above passes because of the fences, not because loom never reorders.
#[test]
#[should_panic(expected = "both sides missed")]
fn litmus_store_buffering_without_fences_fails() {
    model(|| {
        let (x, y) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (x2, y2) = (Arc::clone(&x), Arc::clone(&y));
        let other = thread::spawn(move || {
            x2.store(1, Ordering::Release);
            y2.load(Ordering::Acquire)
        });
        y.store(1, Ordering::Release);
        let seen_x = x.load(Ordering::Acquire);
        let seen_y = other.join().unwrap();
        assert!(
            seen_x == 1 || seen_y == 1,
            "both sides missed the other's store"
        );
    });
}
