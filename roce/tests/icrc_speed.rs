//! ICRC throughput, for a quick look (not a benchmark suite):
//!
//! ```text
//! cargo test -p roce --release --test icrc_speed -- --ignored --nocapture
//! ```

use roce::icrc::Icrc;
use std::hint::black_box;
use std::time::Instant;

fn headers() -> ([u8; 20], [u8; 8], [u8; 12]) {
    ([0x45; 20], [0x12; 8], [0x04; 12])
}

fn measure(label: &str, size: usize, mut run: impl FnMut(&[u8], &mut [u8]) -> u32) {
    let source: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
    let mut destination = vec![0u8; size];
    // Warm up, then run for about half a second.
    for _ in 0..1000 {
        black_box(run(black_box(&source), &mut destination));
    }
    let mut iterations = 0u64;
    let start = Instant::now();
    while start.elapsed().as_millis() < 500 {
        for _ in 0..1000 {
            black_box(run(black_box(&source), &mut destination));
        }
        iterations += 1000;
    }
    let seconds = start.elapsed().as_secs_f64();
    let megabytes = (iterations as f64) * (size as f64) / 1e6;
    println!(
        "{label:>28} {size:>5} B: {:8.0} MB/s, {:6.0} ns/packet",
        megabytes / seconds,
        seconds * 1e9 / iterations as f64
    );
}

#[test]
#[ignore = "measures speed; run in release with --ignored --nocapture"]
fn icrc_throughput() {
    let (ip, udp, bth) = headers();
    for size in [1024, 4096] {
        measure("headers + update", size, |payload, _| {
            let mut icrc = Icrc::begin_ipv4(&ip, &udp, &bth);
            icrc.update(payload);
            icrc.finish()
        });
        measure("headers + update_copy", size, |payload, destination| {
            let mut icrc = Icrc::begin_ipv4(&ip, &udp, &bth);
            icrc.update_copy(destination, payload);
            icrc.finish()
        });
        measure("copy only (reference)", size, |payload, destination| {
            destination.copy_from_slice(payload);
            u32::from(destination[0])
        });
    }
}
