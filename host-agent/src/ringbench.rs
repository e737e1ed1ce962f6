//! `ring-bench`: the shared-memory ring between OS A and OS B, measured inside the VM.
//!
//! OS A produces `descriptors` payloads of `size` bytes in batches of `batch`; OS B validates
//! every descriptor against the pool, checks each payload's sequence number and checksum, and
//! returns the buffers. Both use the same `shm_ring::stream` code the host benchmarks natively;
//! a side that finds nothing to do polls for `spin_us` before it sleeps (see
//! `shm_ring::stream`).
//! The figures come from the guests' own reports (TSC ticks, IPI counts) and the host's exit
//! counters.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use shm_ring::bootinfo::{Workload, WorkloadKind};
use shm_ring::control::report;
use shm_ring::layout::Role;

use crate::exits::ExitSummary;
use crate::vm::{RunReport, Vm, VmConfig, VmError};

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBenchParams {
    /// Descriptors to move.
    pub descriptors: u64,
    /// Payload bytes per descriptor.
    pub size: u64,
    /// Descriptors per batch.
    pub batch: u64,
    /// Post one descriptor outside the pool after this many good ones (a test).
    pub hostile_after: Option<u64>,
    /// How long a side that finds nothing to do polls before it sleeps, in microseconds of
    /// guest TSC time (0: sleep at once, signalled by an IPI).
    pub spin_us: u64,
}

impl RingBenchParams {
    /// The default spin budget, in microseconds: longer than the gaps between bursts at
    /// saturation under instruction emulation (about 1 µs per guest instruction), so that
    /// neither side sleeps while the other has more to send.
    pub const DEFAULT_SPIN_US: u64 = 20_000;
}

/// The result, with stable JSON keys.
#[derive(Clone, Debug, Serialize)]
pub struct RingBenchReport {
    /// Descriptors OS B verified.
    pub descriptors: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Payload bytes per descriptor.
    pub size: u64,
    /// Batch size.
    pub batch: u64,
    /// Time from OS B's first descriptor to its last, from its TSC.
    pub seconds: f64,
    /// `descriptors / seconds`.
    pub descriptors_per_sec: f64,
    /// IPIs both OSes sent.
    pub ipis_sent: u64,
    /// IPIs per 1000 descriptors.
    pub ipis_per_1000_descriptors: f64,
    /// Times the OSes went to sleep on a ring.
    pub sleeps: u64,
    /// Times the OSes found a ring idle, polled, and found work before the spin budget ran out.
    pub spins: u64,
    /// The spin budget, microseconds.
    pub spin_us: u64,
    /// Descriptors OS B rejected.
    pub rejected: u64,
    /// Exits to user space of each OS, and the sum.
    pub exits: BTreeMap<String, ExitSummary>,
    /// True only if every payload checked out, nothing was rejected and both OSes succeeded.
    pub verified: bool,
    /// Both OSes ended successfully.
    pub success: bool,
    /// Wall-clock seconds of the whole VM run (boot included).
    pub run_seconds: f64,
}

impl RingBenchReport {
    /// Derives the benchmark figures from a run.
    pub fn from_run(params: &RingBenchParams, run: &RunReport) -> RingBenchReport {
        let a = &run.os(Role::A).report;
        let b = &run.os(Role::B).report;
        let slot = |values: &Vec<u64>, index: usize| values.get(index).copied().unwrap_or(0);
        let verified_count = slot(b, report::VERIFIED);
        let rejected = slot(b, report::REJECTED);
        let seconds = slot(b, report::ELAPSED_TSC) as f64 / (run.tsc_khz.max(1) as f64 * 1000.0);
        let ipis_sent = slot(a, report::IPIS_SENT) + slot(b, report::IPIS_SENT);
        let mut exits = BTreeMap::new();
        let mut total = crate::exits::ExitCounters::default().summary();
        for os in &run.oses {
            total.total += os.exits.total;
            total.fast_path += os.exits.fast_path;
            total.supervisor_path += os.exits.supervisor_path;
            for (reason, count) in &os.exits.by_reason {
                *total.by_reason.entry(reason.clone()).or_default() += count;
            }
            exits.insert(format!("os_{}", os.os), os.exits.clone());
        }
        exits.insert("total".to_owned(), total);
        let expected_rejections = u64::from(params.hostile_after.is_some());
        RingBenchReport {
            descriptors: verified_count,
            bytes: slot(b, report::BYTES),
            size: params.size,
            batch: params.batch,
            seconds,
            descriptors_per_sec: if seconds > 0.0 {
                verified_count as f64 / seconds
            } else {
                0.0
            },
            ipis_sent,
            ipis_per_1000_descriptors: if verified_count > 0 {
                ipis_sent as f64 * 1000.0 / verified_count as f64
            } else {
                0.0
            },
            sleeps: slot(a, report::SLEEPS) + slot(b, report::SLEEPS),
            spins: slot(a, report::SPINS) + slot(b, report::SPINS),
            spin_us: params.spin_us,
            rejected,
            exits,
            verified: run.success()
                && verified_count == params.descriptors
                && rejected == expected_rejections,
            success: run.success(),
            run_seconds: run.seconds,
        }
    }
}

/// The workloads of both OSes for a ring benchmark.
pub fn workloads(params: &RingBenchParams) -> [Workload; 2] {
    let kind = if params.hostile_after.is_some() {
        WorkloadKind::HostileDescriptor
    } else {
        WorkloadKind::RingBench
    };
    let workload = Workload {
        kind: kind as u32,
        flags: 0,
        args: [
            params.descriptors,
            params.size,
            params.batch,
            params.hostile_after.unwrap_or(0),
            params.spin_us.saturating_mul(1000),
            0,
        ],
    };
    [workload; 2]
}

/// Runs the benchmark in a VM built from `config` (its workloads are replaced).
pub fn run(
    mut config: VmConfig,
    params: &RingBenchParams,
    timeout: Duration,
) -> Result<(RingBenchReport, RunReport), VmError> {
    config.workloads = workloads(params);
    let run = Vm::build(&config)?.run(timeout)?;
    Ok((RingBenchReport::from_run(params, &run), run))
}
