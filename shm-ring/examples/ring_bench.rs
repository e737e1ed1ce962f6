//! Two-thread throughput of shm-ring against rtrb, crossbeam's `ArrayQueue` and heapless'
//! SPSC queue, measured side by side in the same run.
//!
//! ```text
//! cargo run --release -p shm-ring --features std --example ring_bench -- --json
//! ```
//!
//! Options:
//!
//! - `--json`: one JSON object per line instead of a table.
//! - `--descriptors N`: descriptors per run (default 20 000 000).
//! - `--runs R`: runs per case; the median is reported (default 3).
//! - `--capacity C`: ring capacity (default 1024; heapless holds one less).
//! - `--impl NAME`, `--batch B`, `--desc-size 16|32`: run only matching cases (repeatable).
//! - `--single-thread`: one thread alternately pushes and pops `batch` descriptors (shm-ring,
//!   rtrb, and `--impl baseline`, the same loop without a ring): the per-descriptor cost without
//!   cache-line transfers, for instruction counting under `valgrind --tool=callgrind`.
//!
//! Every case moves the same descriptors: the producer writes a sequence number into each; the
//! consumer checks the sequence and sums a field, so nothing can be optimised away. At batch 32
//! the producer publishes up to 32 at a time and the consumer takes up to 32 at a time with each
//! library's best batch API (shm-ring `reserve`/`commit` and `peek`/`release`, rtrb
//! `write_chunk_uninit`/`read_chunk`); libraries without one run a loop of single operations.
//! The `shm-ring+wakeup` case adds the producer's wake-up check (`needs_wakeup`, one
//! `fence(SeqCst)`) after every publish, as a guest that may have to send an interrupt does.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use shm_ring::desc::{Desc, Desc32};
use shm_ring::ring::{self, Descriptor};

/// What the benchmark needs from a descriptor type.
trait BenchDesc: Descriptor + Default + Send + Sync + 'static {
    fn make(sequence: u64) -> Self;
    fn sequence(&self) -> u32;
    fn value(&self) -> u64;
}

impl BenchDesc for Desc {
    #[inline(always)]
    fn make(sequence: u64) -> Desc {
        let low = sequence as u32;
        Desc {
            offset: low,
            len: low & 0x7ff,
            flags: 1,
            meta: (sequence >> 32) as u32,
        }
    }

    #[inline(always)]
    fn sequence(&self) -> u32 {
        self.offset
    }

    #[inline(always)]
    fn value(&self) -> u64 {
        u64::from(self.len)
    }
}

impl BenchDesc for Desc32 {
    #[inline(always)]
    fn make(sequence: u64) -> Desc32 {
        let low = sequence as u32;
        Desc32 {
            offset: low,
            len: low & 0x7ff,
            flags: 1,
            meta: 2,
            user_data: sequence,
            aux: sequence ^ 0xffff,
        }
    }

    #[inline(always)]
    fn sequence(&self) -> u32 {
        self.offset
    }

    #[inline(always)]
    fn value(&self) -> u64 {
        u64::from(self.len) + (self.user_data & 1)
    }
}

/// Waits a little for the peer: spins, and yields the CPU after a while so that a peer that
/// shares a core with other work gets to run (the machine has two cores). Every implementation
/// uses the same waiting policy.
#[inline(always)]
fn wait(spins: &mut u32) {
    *spins += 1;
    if *spins < 128 {
        std::hint::spin_loop();
    } else {
        *spins = 0;
        thread::yield_now();
    }
}

/// The consumer's running check: sequence order and a checksum.
struct Checker {
    expected: u64,
    sum: u64,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            expected: 0,
            sum: 0,
        }
    }

    #[inline(always)]
    fn check<D: BenchDesc>(&mut self, descriptor: &D) {
        if descriptor.sequence() != self.expected as u32 {
            wrong_sequence(descriptor.sequence(), self.expected);
        }
        self.sum = self.sum.wrapping_add(descriptor.value());
        self.expected += 1;
    }

    /// Compares the checksum with the one computed directly.
    fn finish<D: BenchDesc>(self, count: u64) {
        assert_eq!(self.expected, count);
        let expected: u64 = (0..count)
            .map(|i| D::make(i).value())
            .fold(0, u64::wrapping_add);
        assert_eq!(self.sum, expected, "checksum mismatch");
    }
}

#[cold]
#[inline(never)]
fn wrong_sequence(got: u32, expected: u64) -> ! {
    panic!("descriptor {got} arrived when {expected} was expected");
}

/// Runs `produce` and `consume` on two threads; returns the time from the common start to the
/// last descriptor consumed, after checking the consumer's checksum (outside the timing).
fn two_threads<D, P, C>(count: u64, produce: P, consume: C) -> Duration
where
    D: BenchDesc,
    P: FnOnce() + Send,
    C: FnOnce() -> Checker + Send,
{
    let barrier = Barrier::new(2);
    thread::scope(|scope| {
        scope.spawn(|| {
            barrier.wait();
            produce();
        });
        barrier.wait();
        let start = Instant::now();
        let checker = consume();
        let elapsed = start.elapsed();
        checker.finish::<D>(count);
        elapsed
    })
}

fn shm_ring<D: BenchDesc>(count: u64, batch: u32, capacity: u32, wakeup: bool) -> Duration {
    let (mut tx, mut rx) = ring::channel::<D>(capacity).expect("valid capacity");
    let produce = move || {
        let mut spins = 0;
        let mut sequence = 0;
        if batch == 1 {
            while sequence < count {
                if tx.push(D::make(sequence)).is_ok() {
                    sequence += 1;
                    if wakeup && tx.needs_wakeup() {
                        unreachable!("the consumer never sleeps here");
                    }
                } else {
                    wait(&mut spins);
                }
            }
            return;
        }
        while sequence < count {
            let want = (count - sequence).min(u64::from(batch)) as u32;
            let mut chunk = tx.reserve(want).expect("honest peer");
            if chunk.is_empty() {
                wait(&mut spins);
                continue;
            }
            let len = u64::from(chunk.len());
            chunk.fill_from_iter((sequence..sequence + len).map(D::make));
            sequence += len;
            chunk.commit();
            if wakeup && tx.needs_wakeup() {
                unreachable!("the consumer never sleeps here");
            }
        }
    };
    let consume = move || {
        let mut spins = 0;
        let mut checker = Checker::new();
        if batch == 1 {
            while checker.expected < count {
                match rx.pop().expect("honest peer") {
                    Some(descriptor) => checker.check(&descriptor),
                    None => wait(&mut spins),
                }
            }
        } else {
            while checker.expected < count {
                let chunk = rx.peek(batch).expect("honest peer");
                if chunk.is_empty() {
                    wait(&mut spins);
                    continue;
                }
                for descriptor in &chunk {
                    checker.check(&descriptor);
                }
                chunk.release();
            }
        }
        checker
    };
    two_threads::<D, _, _>(count, produce, consume)
}

fn rtrb_single<D: BenchDesc>(count: u64, batch: u32, capacity: u32) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::<D>::new(capacity as usize);
    let produce = move || produce_each(count, batch, |descriptor| tx.push(descriptor).is_ok());
    let consume = move || consume_each(count, batch, || rx.pop().ok());
    two_threads::<D, _, _>(count, produce, consume)
}

fn rtrb_chunk<D: BenchDesc>(count: u64, batch: u32, capacity: u32) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::<D>::new(capacity as usize);
    let produce = move || {
        let mut spins = 0;
        let mut sequence = 0;
        while sequence < count {
            let want = (count - sequence).min(u64::from(batch)) as usize;
            let chunk = match tx.write_chunk_uninit(want) {
                Ok(chunk) => chunk,
                Err(rtrb::chunks::ChunkError::TooFewSlots(0)) => {
                    wait(&mut spins);
                    continue;
                }
                Err(rtrb::chunks::ChunkError::TooFewSlots(available)) => {
                    tx.write_chunk_uninit(available).expect("available")
                }
            };
            let len = chunk.len() as u64;
            chunk.fill_from_iter((sequence..sequence + len).map(D::make));
            sequence += len;
        }
    };
    let consume = move || {
        let mut spins = 0;
        let mut checker = Checker::new();
        while checker.expected < count {
            let chunk = match rx.read_chunk(batch as usize) {
                Ok(chunk) => chunk,
                Err(rtrb::chunks::ChunkError::TooFewSlots(0)) => {
                    wait(&mut spins);
                    continue;
                }
                Err(rtrb::chunks::ChunkError::TooFewSlots(available)) => {
                    rx.read_chunk(available).expect("available")
                }
            };
            let (first, second) = chunk.as_slices();
            for descriptor in first.iter().chain(second) {
                checker.check(descriptor);
            }
            chunk.commit_all();
        }
        checker
    };
    two_threads::<D, _, _>(count, produce, consume)
}

fn crossbeam_array_queue<D: BenchDesc>(count: u64, batch: u32, capacity: u32) -> Duration {
    let queue = Arc::new(crossbeam::queue::ArrayQueue::<D>::new(capacity as usize));
    let tx = Arc::clone(&queue);
    let produce = move || produce_each(count, batch, |descriptor| tx.push(descriptor).is_ok());
    let consume = move || consume_each(count, batch, || queue.pop());
    two_threads::<D, _, _>(count, produce, consume)
}

/// heapless' queue has a compile-time size; it holds `HEAPLESS_N - 1` descriptors.
const HEAPLESS_N: usize = 1024;

fn heapless_spsc<D: BenchDesc>(count: u64, batch: u32) -> Duration {
    let mut queue = Box::new(heapless::spsc::Queue::<D, HEAPLESS_N>::new());
    let (mut tx, mut rx) = queue.split();
    let produce = move || produce_each(count, batch, |descriptor| tx.enqueue(descriptor).is_ok());
    let consume = move || consume_each(count, batch, || rx.dequeue());
    two_threads::<D, _, _>(count, produce, consume)
}

/// The producer loop of a queue without a batch API: `count` descriptors, `batch` at a time,
/// one `push` each (false: full, wait and try again).
fn produce_each<D: BenchDesc>(count: u64, batch: u32, mut push: impl FnMut(D) -> bool) {
    let mut spins = 0;
    let mut sequence = 0;
    while sequence < count {
        let end = (sequence + u64::from(batch)).min(count);
        while sequence < end {
            if push(D::make(sequence)) {
                sequence += 1;
            } else {
                wait(&mut spins);
            }
        }
    }
}

/// The consumer loop of a queue without a batch API: up to `batch` `pop`s, then a wait if
/// none gave a descriptor, until `count` arrived; every one checked.
fn consume_each<D: BenchDesc>(
    count: u64,
    batch: u32,
    mut pop: impl FnMut() -> Option<D>,
) -> Checker {
    let mut spins = 0;
    let mut checker = Checker::new();
    while checker.expected < count {
        let mut taken = 0;
        while taken < batch {
            match pop() {
                Some(descriptor) => {
                    checker.check(&descriptor);
                    taken += 1;
                }
                None => break,
            }
        }
        if taken == 0 {
            wait(&mut spins);
        }
    }
    checker
}

/// One thread, alternately publishing and consuming `batch` descriptors through shm-ring.
#[inline(never)]
fn shm_ring_single_thread<D: BenchDesc>(count: u64, batch: u32, capacity: u32) -> Duration {
    let (mut tx, mut rx) = ring::channel::<D>(capacity).expect("valid capacity");
    let mut checker = Checker::new();
    let start = Instant::now();
    let mut sequence = 0;
    while sequence < count {
        let want = (count - sequence).min(u64::from(batch)) as u32;
        if batch == 1 {
            tx.push(D::make(sequence)).expect("room");
            sequence += 1;
            let descriptor = rx.pop().expect("honest").expect("one published");
            checker.check(&descriptor);
        } else {
            let mut chunk = tx.reserve(want).expect("honest");
            let len = u64::from(chunk.len());
            chunk.fill_from_iter((sequence..sequence + len).map(D::make));
            sequence += len;
            chunk.commit();
            let chunk = rx.peek(batch).expect("honest");
            for descriptor in &chunk {
                checker.check(&descriptor);
            }
            chunk.release();
        }
    }
    let elapsed = start.elapsed();
    checker.finish::<D>(count);
    elapsed
}

/// The single-thread loop through rtrb: single `push`/`pop` at batch 1, the chunk API above.
#[inline(never)]
fn rtrb_single_thread<D: BenchDesc>(count: u64, batch: u32, capacity: u32) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::<D>::new(capacity as usize);
    let mut checker = Checker::new();
    let start = Instant::now();
    let mut sequence = 0;
    while sequence < count {
        if batch == 1 {
            tx.push(D::make(sequence)).expect("room");
            sequence += 1;
            let descriptor = rx.pop().expect("one published");
            checker.check(&descriptor);
        } else {
            let want = (count - sequence).min(u64::from(batch)) as usize;
            let chunk = tx.write_chunk_uninit(want).expect("room");
            let len = chunk.len() as u64;
            chunk.fill_from_iter((sequence..sequence + len).map(D::make));
            sequence += len;
            let chunk = rx.read_chunk(len as usize).expect("published");
            let (first, second) = chunk.as_slices();
            for descriptor in first.iter().chain(second) {
                checker.check(descriptor);
            }
            chunk.commit_all();
        }
    }
    let elapsed = start.elapsed();
    checker.finish::<D>(count);
    elapsed
}

/// The single-thread loop without a ring: makes and checks the same descriptors, passing each
/// batch through a local array. Subtracting its cost from `shm_ring_single_thread`'s leaves the
/// ring's own.
#[inline(never)]
fn baseline_single_thread<D: BenchDesc>(count: u64, batch: u32) -> Duration {
    let mut checker = Checker::new();
    let mut staging = vec![D::default(); batch as usize];
    let start = Instant::now();
    let mut sequence = 0;
    if batch == 1 {
        for i in 0..count {
            let descriptor = std::hint::black_box(D::make(i));
            checker.check(&descriptor);
        }
        sequence = count;
    }
    while sequence < count {
        let len = (count - sequence).min(u64::from(batch)) as usize;
        for (slot, i) in staging[..len].iter_mut().zip(sequence..) {
            *slot = D::make(i);
        }
        sequence += len as u64;
        for descriptor in std::hint::black_box(&staging[..len]) {
            checker.check(descriptor);
        }
    }
    let elapsed = start.elapsed();
    checker.finish::<D>(count);
    elapsed
}

/// Implementations, in report order.
const IMPLS: [&str; 7] = [
    "shm-ring",
    "shm-ring+wakeup",
    "rtrb",
    "rtrb-chunk",
    "crossbeam-ArrayQueue",
    "heapless-spsc",
    "baseline",
];

fn run_case<D: BenchDesc>(name: &str, count: u64, batch: u32, capacity: u32) -> Duration {
    match name {
        "shm-ring" => shm_ring::<D>(count, batch, capacity, false),
        "shm-ring+wakeup" => shm_ring::<D>(count, batch, capacity, true),
        "rtrb" => rtrb_single::<D>(count, batch, capacity),
        "rtrb-chunk" => rtrb_chunk::<D>(count, batch, capacity),
        "crossbeam-ArrayQueue" => crossbeam_array_queue::<D>(count, batch, capacity),
        "heapless-spsc" => heapless_spsc::<D>(count, batch),
        _ => unreachable!("unknown implementation {name}"),
    }
}

struct Options {
    json: bool,
    descriptors: u64,
    runs: usize,
    capacity: u32,
    single_thread: bool,
    impls: Vec<String>,
    batches: Vec<u32>,
    desc_sizes: Vec<usize>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        json: false,
        descriptors: 20_000_000,
        runs: 3,
        capacity: 1024,
        single_thread: false,
        impls: Vec::new(),
        batches: Vec::new(),
        desc_sizes: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--json" => options.json = true,
            "--single-thread" => options.single_thread = true,
            "--descriptors" => {
                options.descriptors = value()?
                    .parse()
                    .map_err(|e| format!("--descriptors: {e}"))?
            }
            "--runs" => options.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--capacity" => {
                options.capacity = value()?.parse().map_err(|e| format!("--capacity: {e}"))?
            }
            "--impl" => options.impls.push(value()?),
            "--batch" => options
                .batches
                .push(value()?.parse().map_err(|e| format!("--batch: {e}"))?),
            "--desc-size" => options
                .desc_sizes
                .push(value()?.parse().map_err(|e| format!("--desc-size: {e}"))?),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.runs == 0 || options.descriptors == 0 {
        return Err("--runs and --descriptors must be positive".into());
    }
    if !options.capacity.is_power_of_two() {
        return Err("--capacity must be a power of two".into());
    }
    if options.batches.is_empty() {
        options.batches = vec![1, 32];
    }
    if options.desc_sizes.is_empty() {
        options.desc_sizes = vec![16, 32];
    }
    if options.single_thread && options.impls.is_empty() {
        options.impls.push("shm-ring".into());
    }
    if options.impls.is_empty() {
        options.impls = IMPLS.iter().map(|name| name.to_string()).collect();
    }
    for name in &options.impls {
        if !IMPLS.contains(&name.as_str()) {
            return Err(format!(
                "unknown implementation {name}; known: {}",
                IMPLS.join(", ")
            ));
        }
    }
    Ok(options)
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            eprintln!(
                "usage: ring_bench [--json] [--descriptors N] [--runs R] [--capacity C] \
                 [--impl NAME]... [--batch B]... [--desc-size 16|32]... [--single-thread]"
            );
            std::process::exit(2);
        }
    };
    let mode = if options.single_thread {
        "single-thread"
    } else {
        "two-thread"
    };
    if !options.json {
        println!(
            "{mode} throughput, {} descriptors per run, median of {} runs, capacity {}",
            options.descriptors, options.runs, options.capacity
        );
        println!(
            "{:<22} {:>5} {:>9} {:>16} {:>16} {:>16}",
            "impl", "batch", "desc_size", "Mdesc/s median", "min", "max"
        );
    }
    if options
        .desc_sizes
        .iter()
        .any(|&size| size != 16 && size != 32)
    {
        eprintln!("--desc-size must be 16 or 32");
        std::process::exit(2);
    }
    for &desc_size in &options.desc_sizes {
        for &batch in &options.batches {
            let names: Vec<&str> = options
                .impls
                .iter()
                .map(String::as_str)
                .filter(|&name| {
                    let wanted = if options.single_thread {
                        matches!(name, "shm-ring" | "rtrb" | "rtrb-chunk" | "baseline")
                    } else {
                        name != "baseline"
                    };
                    // rtrb's chunk API is its batch API; at batch 1 it is the same as `rtrb`.
                    wanted && !(name == "rtrb-chunk" && batch == 1)
                })
                .collect();
            // Round-robin: every implementation sees the same mix of machine conditions.
            let mut rates = vec![Vec::with_capacity(options.runs); names.len()];
            for _ in 0..options.runs {
                for (name, rates) in names.iter().zip(&mut rates) {
                    let elapsed = measure(name, &options, desc_size, batch);
                    rates.push(options.descriptors as f64 / elapsed.as_secs_f64());
                }
            }
            for (name, mut rates) in names.into_iter().zip(rates) {
                report(name, &options, desc_size, batch, &mut rates);
            }
        }
    }
}

/// One run of one case.
fn measure(name: &str, options: &Options, desc_size: usize, batch: u32) -> Duration {
    let (count, capacity) = (options.descriptors, options.capacity);
    match (desc_size, options.single_thread, name) {
        (16, false, _) => run_case::<Desc>(name, count, batch, capacity),
        (32, false, _) => run_case::<Desc32>(name, count, batch, capacity),
        (16, true, "baseline") => baseline_single_thread::<Desc>(count, batch),
        (32, true, "baseline") => baseline_single_thread::<Desc32>(count, batch),
        (16, true, "rtrb" | "rtrb-chunk") => rtrb_single_thread::<Desc>(count, batch, capacity),
        (32, true, "rtrb" | "rtrb-chunk") => rtrb_single_thread::<Desc32>(count, batch, capacity),
        (16, true, _) => shm_ring_single_thread::<Desc>(count, batch, capacity),
        _ => shm_ring_single_thread::<Desc32>(count, batch, capacity),
    }
}

/// Prints the median (and spread) of one case's rates.
fn report(name: &str, options: &Options, desc_size: usize, batch: u32, rates: &mut [f64]) {
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let (min, max) = (rates[0], rates[rates.len() - 1]);
    let mode = if options.single_thread {
        "single-thread"
    } else {
        "two-thread"
    };
    if options.json {
        println!(
            "{{\"impl\": \"{name}\", \"batch\": {batch}, \"desc_size\": {desc_size}, \
             \"descriptors_per_sec\": {median:.0}, \"min\": {min:.0}, \"max\": {max:.0}, \
             \"capacity\": {}, \"runs\": {}, \"descriptors\": {}, \"mode\": \"{mode}\"}}",
            options.capacity, options.runs, options.descriptors
        );
    } else {
        println!(
            "{name:<22} {batch:>5} {desc_size:>9} {:>16.1} {:>16.1} {:>16.1}",
            median / 1e6,
            min / 1e6,
            max / 1e6
        );
    }
}
