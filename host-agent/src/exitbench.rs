//! `exit-bench`: the cost of the two exit paths, measured on the host.
//!
//! OS A makes `count` exits that the fast path handles on its vCPU thread (hypercall pings),
//! then `count` exits that go to the supervisor thread (reads of the supervisor probe port).
//! With exit measurement on, the vCPU thread reads its context-switch counters and the clock
//! around the handling of every exit, so the figures are per path.

use std::time::Duration;

use serde::Serialize;
use shm_ring::bootinfo::{Workload, WorkloadKind};
use shm_ring::layout::Role;

use crate::vcpu::ContextSwitches;
use crate::vm::{RunReport, Vm, VmConfig, VmError};

/// One path's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PathReport {
    /// Exits handled on this path.
    pub exits: u64,
    /// Context switches of the vCPU thread while handling them.
    pub context_switches: ContextSwitches,
    /// Voluntary plus involuntary switches per exit.
    pub context_switches_per_exit: f64,
    /// Mean host time per exit, in microseconds (for the supervisor path: from hand-off to
    /// answer, as the vCPU waits).
    pub host_us_per_exit: f64,
}

/// The result, with stable JSON keys.
#[derive(Clone, Debug, Serialize)]
pub struct ExitBenchReport {
    /// Exits asked of each path.
    pub count: u64,
    /// The fast path.
    pub fast_path: PathReport,
    /// The supervisor path.
    pub supervisor_path: PathReport,
    /// Both OSes finished successfully.
    pub success: bool,
}

fn path(exits: u64, switches: ContextSwitches, micros: f64) -> PathReport {
    let per_exit = |value: f64| {
        if exits == 0 {
            0.0
        } else {
            value / exits as f64
        }
    };
    PathReport {
        exits,
        context_switches: switches,
        context_switches_per_exit: per_exit((switches.voluntary + switches.involuntary) as f64),
        host_us_per_exit: micros,
    }
}

impl ExitBenchReport {
    /// Derives the figures from a run with exit measurement on.
    pub fn from_run(count: u64, run: &RunReport) -> ExitBenchReport {
        let a = run.os(Role::A);
        ExitBenchReport {
            count,
            fast_path: path(
                a.exits.fast_path,
                a.fast_path_context_switches,
                a.exits.fast_handling_us_mean,
            ),
            supervisor_path: path(
                a.exits.supervisor_path,
                a.supervisor_path_context_switches,
                a.exits.supervisor_wait_us_mean,
            ),
            success: run.success(),
        }
    }
}

/// Runs the benchmark in a VM built from `config` (workloads and measurement are set here).
pub fn run(
    mut config: VmConfig,
    count: u64,
    timeout: Duration,
) -> Result<ExitBenchReport, VmError> {
    let workload = Workload {
        kind: WorkloadKind::ExitBench as u32,
        flags: 0,
        args: [count, 0, 0, 0, 0, 0],
    };
    config.workloads = [workload; 2];
    config.measure_exits = true;
    let run = Vm::build(&config)?.run(timeout)?;
    Ok(ExitBenchReport::from_run(count, &run))
}
