//! Model-based property tests: random sequences of ring operations against a `VecDeque`.

use std::collections::VecDeque;

use proptest::prelude::*;
use shm_ring::OwnedRegion;
use shm_ring::desc::Desc;
use shm_ring::ring::{self, Consumer, Producer, PushError};

#[derive(Clone, Debug)]
enum Op {
    Push,
    PushSlice(usize),
    /// Reserve up to `max`, fill `fill` of the slots, then commit or drop.
    Reserve {
        max: u32,
        fill: u32,
        commit: bool,
    },
    Pop,
    PopSlice(usize),
    /// Peek up to `max`, then release the first `release` (or drop the batch).
    Peek {
        max: u32,
        release: Option<u32>,
    },
    Free,
    Available,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Push),
        1 => (0..80usize).prop_map(Op::PushSlice),
        2 => (0..80u32, 0..80u32, any::<bool>())
            .prop_map(|(max, fill, commit)| Op::Reserve { max, fill, commit }),
        3 => Just(Op::Pop),
        1 => (0..80usize).prop_map(Op::PopSlice),
        2 => (0..80u32, proptest::option::of(0..80u32))
            .prop_map(|(max, release)| Op::Peek { max, release }),
        1 => Just(Op::Free),
        1 => Just(Op::Available),
    ]
}

/// A ring whose indices start at `start` (to cross the `u32` wrap early).
struct Ring {
    _region: OwnedRegion,
    tx: Producer<Desc>,
    rx: Consumer<Desc>,
}

fn ring(capacity: u32, start: u32) -> Ring {
    let size = ring::region_size::<Desc>(capacity);
    let region = OwnedRegion::new(size);
    // SAFETY: fresh region of `size` bytes, used only through the handles below, which never
    // touch it when dropped and are not used after the `Ring` is gone.
    unsafe { ring::init::<Desc>(region.as_ptr(), size, capacity) }.unwrap();
    for offset in [128, 256] {
        let word = region.as_ptr().wrapping_add(offset);
        // SAFETY: the producer and consumer index words of the documented layout: aligned and
        // inside the region.
        let word = unsafe { &*word.cast::<std::sync::atomic::AtomicU32>() };
        word.store(start, std::sync::atomic::Ordering::Relaxed);
    }
    // SAFETY: as above; one producer and one consumer.
    let tx = unsafe { Producer::attach(region.as_ptr(), size) }.unwrap();
    // SAFETY: as above.
    let rx = unsafe { Consumer::attach(region.as_ptr(), size) }.unwrap();
    Ring {
        _region: region,
        tx,
        rx,
    }
}

fn item(n: u32) -> Desc {
    Desc {
        offset: n,
        len: n.rotate_left(7),
        flags: !n,
        meta: n.wrapping_mul(0x9e37_79b9),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    #[cfg_attr(miri, ignore)]
    fn ring_behaves_like_a_bounded_queue(
        capacity_log in 0u32..7,
        start in prop_oneof![Just(0u32), (u32::MAX - 200..=u32::MAX)],
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let capacity = 1u32 << capacity_log;
        let Ring { _region, mut tx, mut rx } = ring(capacity, start);
        let mut model: VecDeque<Desc> = VecDeque::new();
        let mut next = 0u32;
        for op in ops {
            let room = capacity as usize - model.len();
            match op {
                Op::Push => {
                    let result = tx.push(item(next));
                    if room == 0 {
                        prop_assert_eq!(result, Err(PushError::Full));
                    } else {
                        prop_assert_eq!(result, Ok(()));
                        model.push_back(item(next));
                        next += 1;
                    }
                }
                Op::PushSlice(n) => {
                    let items: Vec<Desc> = (next..next + n as u32).map(item).collect();
                    let pushed = tx.push_slice(&items).unwrap();
                    prop_assert_eq!(pushed, n.min(room));
                    model.extend(&items[..pushed]);
                    next += pushed as u32;
                }
                Op::Reserve { max, fill, commit } => {
                    let mut batch = tx.reserve(max).unwrap();
                    prop_assert_eq!(batch.len() as usize, (max as usize).min(room));
                    let mut filled = Vec::new();
                    for i in 0..fill {
                        let value = item(next + i);
                        if batch.push(value).is_ok() {
                            filled.push(value);
                        }
                    }
                    prop_assert_eq!(filled.len() as u32, fill.min(batch.len()));
                    prop_assert_eq!(batch.written(), filled.len() as u32);
                    if commit {
                        prop_assert_eq!(batch.commit(), filled.len() as u32);
                        next += filled.len() as u32;
                        model.extend(filled);
                    }
                }
                Op::Pop => prop_assert_eq!(rx.pop().unwrap(), model.pop_front()),
                Op::PopSlice(n) => {
                    let mut out = vec![Desc::default(); n];
                    let popped = rx.pop_slice(&mut out).unwrap();
                    prop_assert_eq!(popped, n.min(model.len()));
                    let expected: Vec<Desc> = model.drain(..popped).collect();
                    prop_assert_eq!(&out[..popped], &expected[..]);
                }
                Op::Peek { max, release } => {
                    let batch = rx.peek(max).unwrap();
                    prop_assert_eq!(batch.len() as usize, (max as usize).min(model.len()));
                    let seen: Vec<Desc> = batch.iter().collect();
                    let expected: Vec<Desc> = model.iter().take(seen.len()).copied().collect();
                    prop_assert_eq!(&seen, &expected);
                    for (i, value) in seen.iter().enumerate() {
                        prop_assert_eq!(batch.get(i as u32), Some(*value));
                    }
                    if let Some(release) = release {
                        let released = release.min(batch.len()) as usize;
                        batch.release_first(release);
                        model.drain(..released);
                    }
                }
                Op::Free => prop_assert_eq!(tx.free().unwrap() as usize, room),
                Op::Available => prop_assert_eq!(rx.available().unwrap() as usize, model.len()),
            }
            prop_assert_eq!(tx.index().wrapping_sub(rx.index()) as usize, model.len());
        }
        // Drain: everything published arrives, in order, exactly once.
        while let Some(value) = rx.pop().unwrap() {
            prop_assert_eq!(Some(value), model.pop_front());
        }
        prop_assert!(model.is_empty());
        prop_assert_eq!(tx.fault(), None);
        prop_assert_eq!(rx.fault(), None);
    }
}

#[test]
fn small_model_run_without_proptest() {
    // A fixed walk through wrap-around that also runs under Miri.
    let Ring {
        _region,
        mut tx,
        mut rx,
    } = ring(4, u32::MAX - 2);
    let mut model = VecDeque::new();
    for n in 0..50u32 {
        if n % 3 != 2 && tx.push(item(n)).is_ok() {
            model.push_back(item(n));
        }
        if n % 4 == 3 {
            let batch = rx.peek(3).unwrap();
            for value in &batch {
                assert_eq!(Some(value), model.pop_front());
            }
            batch.release();
        }
    }
    while let Some(value) = rx.pop().unwrap() {
        assert_eq!(Some(value), model.pop_front());
    }
    assert!(model.is_empty());
}
