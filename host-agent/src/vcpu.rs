//! The vCPU thread: `KVM_RUN` in a loop, fast exits handled in place, the rest handed over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;
use shm_ring::layout::{ExitStatus, Role};

use crate::exits::{Exit, ExitCounters, FastAction, Route, SupervisorRequest, classify};
use crate::serial::{SerialLog, StderrSink};

/// A request from a vCPU thread to the supervisor.
#[derive(Debug)]
pub struct SupervisorMessage {
    /// Which OS asks.
    pub role: Role,
    /// What it needs.
    pub request: SupervisorRequest,
    /// Where the answer goes (read data for reads).
    pub reply: Sender<u64>,
}

/// The facts a faulting OS passes when it ends with the fault status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FaultInfo {
    /// Exception vector.
    pub vector: u64,
    /// Exception error code.
    pub error_code: u64,
    /// CR2 (page faults).
    pub address: u64,
    /// Where it happened.
    pub rip: u64,
}

/// How an OS ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OsEnd {
    /// The OS wrote its status to the debug-exit port.
    Exited {
        /// The status (0 is success).
        status: u32,
        /// Fault details when the status is the fault status.
        fault: Option<FaultInfo>,
    },
    /// The vCPU shut down: a triple fault.
    TripleFault {
        /// RIP when it happened.
        rip: u64,
    },
    /// KVM could not go on running the vCPU.
    Fatal {
        /// What KVM reported.
        reason: String,
        /// RIP at the time.
        rip: u64,
    },
    /// The host stopped the OS (its peer failed, or the run timed out).
    Stopped {
        /// RIP when stopped.
        rip: u64,
    },
}

/// Context switches of a thread, from `/proc/thread-self/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContextSwitches {
    /// The thread gave up the CPU (blocked).
    pub voluntary: u64,
    /// The thread was preempted.
    pub involuntary: u64,
}

impl ContextSwitches {
    /// The calling thread's counts so far.
    pub fn of_current_thread() -> ContextSwitches {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().parse().ok())
                .unwrap_or(0)
        };
        ContextSwitches {
            voluntary: field("voluntary_ctxt_switches:"),
            involuntary: field("nonvoluntary_ctxt_switches:"),
        }
    }

    /// The switches since `earlier`.
    pub fn since(self, earlier: ContextSwitches) -> ContextSwitches {
        ContextSwitches {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }
}

/// What a vCPU thread returns.
#[derive(Debug)]
pub struct VcpuOutcome {
    /// Which OS.
    pub role: Role,
    /// How it ended.
    pub end: OsEnd,
    /// Exit counters.
    pub counters: ExitCounters,
    /// Context switches of the thread while it ran the vCPU.
    pub context_switches: ContextSwitches,
    /// Context switches during fast-path exit handling (measured only with `measure_exits`;
    /// should be zero).
    pub fast_path_context_switches: ContextSwitches,
    /// Context switches while waiting for the supervisor (measured only with `measure_exits`).
    pub supervisor_path_context_switches: ContextSwitches,
    /// Hypercalls by number.
    pub hypercalls: u64,
    /// The serial log's lines.
    pub serial_lines: Vec<String>,
    /// Serial bytes written.
    pub serial_bytes: u64,
}

/// Everything a vCPU thread owns.
#[derive(Debug)]
pub struct VcpuContext {
    /// Which OS runs here.
    pub role: Role,
    /// The vCPU.
    pub vcpu: VcpuFd,
    /// Set by the supervisor to stop this vCPU; followed by a kick.
    pub stop: Arc<AtomicBool>,
    /// To the supervisor.
    pub supervisor: Sender<SupervisorMessage>,
    /// The serial log.
    pub serial: SerialLog<StderrSink>,
    /// Measure context switches and host time around every exit (costs reads of /proc per
    /// exit; for the exit benchmark).
    pub measure_exits: bool,
}

/// `Exit` for a kvm-ioctls exit, and the data buffer of reads.
fn narrow<'a>(exit: VcpuExit<'a>) -> (Exit, Option<&'a mut [u8]>) {
    fn value(data: &[u8]) -> u64 {
        let mut bytes = [0u8; 8];
        let len = data.len().min(8);
        bytes[..len].copy_from_slice(&data[..len]);
        u64::from_le_bytes(bytes)
    }
    match exit {
        VcpuExit::IoIn(port, data) => (
            Exit::IoIn {
                port,
                size: data.len() as u8,
            },
            Some(data),
        ),
        VcpuExit::IoOut(port, data) => (
            Exit::IoOut {
                port,
                value: value(data) as u32,
                size: data.len() as u8,
            },
            None,
        ),
        VcpuExit::MmioRead(address, data) => (
            Exit::MmioRead {
                address,
                size: data.len() as u8,
            },
            Some(data),
        ),
        VcpuExit::MmioWrite(address, data) => (
            Exit::MmioWrite {
                address,
                value: value(data),
                size: data.len() as u8,
            },
            None,
        ),
        VcpuExit::Hlt => (Exit::Halt, None),
        VcpuExit::Shutdown => (Exit::Shutdown, None),
        VcpuExit::FailEntry(reason, _) => (Exit::FailEntry(reason), None),
        VcpuExit::InternalError => (Exit::InternalError, None),
        VcpuExit::SystemEvent(kind, _) => (Exit::SystemEvent(kind), None),
        _ => (Exit::Other("unhandled exit"), None),
    }
}

fn fill(data: Option<&mut [u8]>, value: u64) {
    if let Some(data) = data {
        let bytes = value.to_le_bytes();
        let len = data.len().min(8);
        data[..len].copy_from_slice(&bytes[..len]);
        data[len..].fill(0);
    }
}

impl VcpuContext {
    fn rip(&self) -> u64 {
        self.vcpu.get_regs().map(|regs| regs.rip).unwrap_or(0)
    }

    fn fault_info(&self) -> Option<FaultInfo> {
        let regs = self.vcpu.get_regs().ok()?;
        Some(FaultInfo {
            vector: regs.rsi,
            error_code: regs.r9,
            address: regs.rcx,
            rip: regs.r8,
        })
    }

    /// Runs the vCPU until its OS ends or the supervisor stops it.
    pub fn run(mut self, reply: (Sender<u64>, Receiver<u64>)) -> VcpuOutcome {
        let start_switches = ContextSwitches::of_current_thread();
        let mut counters = ExitCounters::default();
        let mut fast_switches = ContextSwitches::default();
        let mut supervisor_switches = ContextSwitches::default();
        let mut hypercalls = 0u64;
        let end = loop {
            if self.stop.load(Ordering::Acquire) {
                break OsEnd::Stopped { rip: self.rip() };
            }
            let (exit, data) = match self.vcpu.run() {
                Ok(exit) => narrow(exit),
                Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                    (Exit::Interrupted, None)
                }
                Err(error) => {
                    break OsEnd::Fatal {
                        reason: format!("KVM_RUN failed: {error}"),
                        rip: 0,
                    };
                }
            };
            let route = classify(self.role, &exit);
            counters.count(&exit, &route);
            match route {
                Route::Fast(action) => {
                    let before = self
                        .measure_exits
                        .then(|| (ContextSwitches::of_current_thread(), Instant::now()));
                    match action {
                        FastAction::SerialByte(byte) => self.serial.push(byte),
                        FastAction::SerialRead(value) => fill(data, u64::from(value)),
                        FastAction::Hypercall(_) => hypercalls += 1,
                        FastAction::Kicked | FastAction::Ignore => {}
                        FastAction::DebugExit(status) => {
                            let fault = (status == ExitStatus::Fault as u32)
                                .then(|| self.fault_info())
                                .flatten();
                            break OsEnd::Exited { status, fault };
                        }
                    }
                    if let Some((switches, started)) = before {
                        counters.fast_handling_ns += started.elapsed().as_nanos() as u64;
                        let after = ContextSwitches::of_current_thread().since(switches);
                        fast_switches.voluntary += after.voluntary;
                        fast_switches.involuntary += after.involuntary;
                    }
                }
                Route::Supervisor(request) => {
                    let switches = self.measure_exits.then(ContextSwitches::of_current_thread);
                    let started = Instant::now();
                    let message = SupervisorMessage {
                        role: self.role,
                        request,
                        reply: reply.0.clone(),
                    };
                    let answer = self
                        .supervisor
                        .send(message)
                        .ok()
                        .and_then(|()| reply.1.recv().ok());
                    counters.supervisor_wait_ns += started.elapsed().as_nanos() as u64;
                    if let Some(switches) = switches {
                        let after = ContextSwitches::of_current_thread().since(switches);
                        supervisor_switches.voluntary += after.voluntary;
                        supervisor_switches.involuntary += after.involuntary;
                    }
                    if let SupervisorRequest::Fatal(exit) = request {
                        let rip = self.rip();
                        break match exit {
                            Exit::Shutdown => OsEnd::TripleFault { rip },
                            other => OsEnd::Fatal {
                                reason: format!("{other:?}"),
                                rip,
                            },
                        };
                    }
                    fill(data, answer.unwrap_or(0));
                }
            }
        };
        self.serial.flush();
        VcpuOutcome {
            role: self.role,
            end,
            counters,
            context_switches: ContextSwitches::of_current_thread().since(start_switches),
            fast_path_context_switches: fast_switches,
            supervisor_path_context_switches: supervisor_switches,
            hypercalls,
            serial_bytes: self.serial.bytes,
            serial_lines: std::mem::take(&mut self.serial.sink.lines),
        }
    }
}
