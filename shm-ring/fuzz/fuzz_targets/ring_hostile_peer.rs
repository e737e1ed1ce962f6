//! A hostile peer scribbles a ring, a return ring and a pool header; the honest side attaches,
//! consumes, validates and returns buffers. Nothing may panic or touch memory outside the
//! regions (run under the address sanitizer that `cargo fuzz` enables).
//!
//! Input: a sequence of commands, each `[target, offset_lo, offset_hi, len, bytes...]`:
//! - target 0..=2 overwrites `len` bytes of the data ring, the return ring or the pool header at
//!   `offset` (clamped to the region);
//! - target 3 makes the honest sides run: attach (if not attached yet), pop and peek on the data
//!   ring, validate and copy every descriptor, return it, and reclaim on the owner side;
//! - target 4 makes the honest producer push `len` descriptors with offsets from the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_ring::OwnedRegion;
use shm_ring::desc::Desc;
use shm_ring::pool::{self, PoolOwner, PoolView};
use shm_ring::ring::{self, Consumer, Producer};

const CAPACITY: u32 = 8;
const BUFFER_SIZE: u32 = 128;
const BUFFERS: u32 = 8;

struct Regions {
    data: OwnedRegion,
    returns: OwnedRegion,
    pool: OwnedRegion,
}

impl Regions {
    fn new() -> Regions {
        let ring_size = ring::region_size::<Desc>(CAPACITY);
        let pool_size = pool::pool_region_size(BUFFER_SIZE, BUFFERS);
        let regions = Regions {
            data: OwnedRegion::new(ring_size),
            returns: OwnedRegion::new(ring_size),
            pool: OwnedRegion::new(pool_size),
        };
        for ring in [&regions.data, &regions.returns] {
            // SAFETY: a fresh region of the right size, not yet shared.
            unsafe { ring::init::<Desc>(ring.as_ptr(), ring.len(), CAPACITY) }.unwrap();
        }
        // SAFETY: as above.
        unsafe { pool::init(regions.pool.as_ptr(), pool_size, BUFFER_SIZE, BUFFERS) }.unwrap();
        regions
    }

    fn scribble(&self, target: u8, offset: usize, bytes: &[u8]) {
        let region = match target {
            0 => &self.data,
            1 => &self.returns,
            // Only the header of the pool: the buffers are bytes, anything goes there.
            _ => &self.pool,
        };
        let limit = if target == 2 { 64 } else { region.len() };
        let offset = offset % limit;
        let len = bytes.len().min(limit - offset);
        for (i, byte) in bytes[..len].iter().enumerate() {
            // SAFETY: inside the region; the "peer" writes while no handle is mid-operation.
            unsafe { region.as_ptr().add(offset + i).write_volatile(*byte) };
        }
    }
}

/// The honest parties: consumer of the data ring (producer of returns) and the pool owner.
struct Honest {
    producer: Producer<Desc>,
    consumer: Consumer<Desc>,
    return_producer: Producer<Desc>,
    return_consumer: Consumer<Desc>,
    view: PoolView,
    owner: PoolOwner<Vec<u64>>,
}

fn attach(regions: &Regions) -> Option<Honest> {
    let (data, returns, pool) = (&regions.data, &regions.returns, &regions.pool);
    // SAFETY (all attaches): the regions outlive the handles (dropped first in `fuzz_target`);
    // one producer and one consumer per ring.
    let producer = unsafe { Producer::attach(data.as_ptr(), data.len()) }.ok()?;
    // SAFETY: as above.
    let consumer = unsafe { Consumer::attach(data.as_ptr(), data.len()) }.ok()?;
    // SAFETY: as above.
    let return_producer = unsafe { Producer::attach(returns.as_ptr(), returns.len()) }.ok()?;
    // SAFETY: as above.
    let return_consumer = unsafe { Consumer::attach(returns.as_ptr(), returns.len()) }.ok()?;
    // SAFETY: as above.
    let view = unsafe { PoolView::attach(pool.as_ptr(), pool.len()) }.ok()?;
    let words = pool::owner_storage_words(view.buffer_count());
    let owner = PoolOwner::new(view.clone(), vec![0; words]).ok()?;
    Some(Honest {
        producer,
        consumer,
        return_producer,
        return_consumer,
        view,
        owner,
    })
}

fn run(honest: &mut Honest) {
    let mut bytes = vec![0u8; honest.view.buffer_size() as usize];
    for _ in 0..2 * CAPACITY {
        match honest.consumer.pop() {
            Ok(Some(desc)) => {
                if let Ok(span) = honest.view.check(&desc) {
                    assert!(span.len <= honest.view.buffer_size());
                    assert_eq!(honest.view.read(&desc, &mut bytes), Ok(desc.len as usize));
                    let _ = honest
                        .view
                        .write_at(&desc, 0, &bytes[..span.len.min(4) as usize]);
                    let returned = honest.view.return_desc(&desc).unwrap();
                    let _ = honest.return_producer.push(returned);
                } else {
                    assert!(honest.view.read(&desc, &mut bytes).is_err());
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    if let Ok(batch) = honest.consumer.peek(4) {
        for desc in &batch {
            let _ = honest.view.check(&desc);
        }
        batch.release();
    }
    let _ = honest.return_producer.needs_wakeup();
    let _ = honest.consumer.prepare_to_sleep();
    honest.consumer.woke_up();
    let _ = honest.owner.reclaim_from(&mut honest.return_consumer, 16);
}

fn produce(honest: &mut Honest, seeds: &[u8]) {
    for &seed in seeds {
        match honest.owner.alloc() {
            Some(buffer) => {
                let _ = honest.owner.write(&buffer, 0, &[seed; 8]);
                let Ok(desc) = honest
                    .owner
                    .submit(buffer, u32::from(seed % 16), u32::from(seed))
                else {
                    continue;
                };
                if honest.producer.push(desc).is_err() {
                    let _ = honest.owner.reclaim(desc.offset & !(BUFFER_SIZE - 1));
                }
            }
            // Out of buffers: push a raw descriptor, as a buggy owner might.
            None => {
                let _ = honest
                    .producer
                    .push(Desc::new(u32::from(seed) << 4, u32::from(seed)));
            }
        }
    }
    let _ = honest.producer.needs_wakeup();
}

fuzz_target!(|input: &[u8]| {
    let regions = Regions::new();
    let mut honest: Option<Honest> = None;
    let mut rest = input;
    while let [target, low, high, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        let offset = usize::from(u16::from_le_bytes([*low, *high]));
        match target % 5 {
            target @ 0..=2 => regions.scribble(target, offset, bytes),
            3 => {
                if honest.is_none() {
                    honest = attach(&regions);
                }
                if let Some(honest) = honest.as_mut() {
                    run(honest);
                }
            }
            _ => {
                if let Some(honest) = honest.as_mut() {
                    produce(honest, bytes);
                }
            }
        }
        rest = next;
    }
    drop(honest);
    drop(regions);
});
