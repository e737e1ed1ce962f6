//! One RDMA endpoint on a network the caller provides: a VM (OS A runs the test, OS B carries
//! its packets) or the same engines as host threads, on a TAP or a switch port. The peer is
//! anything that speaks the chosen connection exchange: another duovm endpoint, rdma-core's
//! `ibv_rc_pingpong`, or perftest's `ib_*` tools on a Linux SoftRoCE host.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apps::Outcome;
use apps::rdma::{TestParams, TestReport, run_test};
use shm_ring::bootinfo::{NetConfig, OFFLOAD_ROCE_ICRC, Workload, WorkloadKind};
use shm_ring::control::report;
use shm_ring::layout::Role;

use crate::devices::net_backend::NetBackend;
use crate::devices::pcap::PcapWriter;
use crate::native::{NativeApp, NativeError, NativeMember, NativeReport, spawn};
use crate::vm::{RunReport, Vm, VmConfig, VmError};

/// OS A's workload that runs `params` (the local address comes from the VM's network).
pub fn workload(params: &TestParams) -> Workload {
    let (args, flags) = params.to_args();
    Workload {
        kind: WorkloadKind::RdmaTest as u32,
        flags,
        args,
    }
}

/// What OS A published about its test at the end of a run.
pub fn published(run: &RunReport) -> TestReport {
    let slots = &run.os(Role::A).report;
    let slot = |index: usize| slots.get(index).copied().unwrap_or(0);
    TestReport {
        messages: slot(report::RDMA_MESSAGES),
        bytes: slot(report::RDMA_BYTES),
        elapsed_ns: slot(report::RDMA_ELAPSED_NS),
        p50_ns: slot(report::RDMA_P50_NS),
        p99_ns: slot(report::RDMA_P99_NS),
        retransmissions: slot(report::RDMA_RETRANSMISSIONS),
        verified: slot(report::RDMA_VERIFIED) == 1,
    }
}

/// What OS A's application `app` (`rdma`, `netbench`) said when it failed (`<app>: [...]
/// failed: <why>`, logged by the OS A shell natively and in VMs), if it did.
pub fn failure<'a>(lines: &'a [String], app: &str) -> Option<&'a str> {
    lines.iter().rev().find_map(|line| {
        let (head, why) = line.split_once(" failed: ")?;
        let (name, _) = head.split_once(':')?;
        name.ends_with(app).then_some(why)
    })
}

/// Why OS A's application `app` failed in `run`, as it said ([`failure`]), or how the VM
/// ended if it did not end well and OS A said nothing.
pub fn vm_failure(run: &RunReport, app: &str) -> Option<String> {
    let os = run.os(Role::A);
    failure(&os.serial_lines, app)
        .map(str::to_owned)
        .or_else(|| (!run.success()).then(|| os.summary.clone()))
}

/// The network identity of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// OS B's MAC.
    pub mac: [u8; 6],
    /// The endpoint's IPv4 address (OS B's, and the RoCE device's).
    pub ipv4: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// In a VM, the virtio-net device computes and checks the RoCEv2 ICRCs and OS A leaves
    /// them to it ([`OFFLOAD_ROCE_ICRC`]). Native endpoints have no such device and ignore
    /// it: their engines compute the ICRCs.
    pub icrc_offload: bool,
}

impl Identity {
    /// The VM network configuration of this identity.
    pub fn net_config(&self) -> NetConfig {
        NetConfig {
            mac: self.mac,
            prefix_len: self.prefix_len,
            has_nic: 1,
            ipv4: self.ipv4.octets(),
            gateway: [0; 4],
            offloads: if self.icrc_offload {
                OFFLOAD_ROCE_ICRC
            } else {
                0
            },
            reserved: 0,
        }
    }
}

/// Runs one side of a test in a VM built from `base`, its NIC on `backend`.
///
/// `params.local` is ignored: the VM's address is `identity.ipv4`. Returns what OS A published
/// (all zeros if it failed before publishing) and the run's report.
pub fn run_vm(
    base: &VmConfig,
    params: &TestParams,
    identity: Identity,
    backend: Box<dyn NetBackend>,
    capture: Option<PcapWriter>,
    timeout: Duration,
) -> Result<(TestReport, RunReport), VmError> {
    let mut config = base.clone();
    let service = Workload {
        kind: WorkloadKind::NetService as u32,
        ..Workload::default()
    };
    config.workloads = [workload(params), service];
    config.net = identity.net_config();
    let mut vm = Vm::build(&config)?;
    vm.attach_nic(identity.mac, backend, capture)?;
    let run = vm.run(timeout)?;
    Ok((published(&run), run))
}

/// Where a native endpoint leaves its test's report, or what it had done when it failed
/// (`None` until the test ends).
pub type ReportSlot = Arc<Mutex<Option<TestReport>>>;

/// A native endpoint that runs one side of `params` (its local address is `identity`'s) on
/// `backend`, and the slot its report lands in.
pub fn native_member(
    params: &TestParams,
    identity: Identity,
    backend: Box<dyn NetBackend>,
    echo: bool,
) -> (NativeMember, ReportSlot) {
    let mut params = *params;
    params.local = identity.ipv4;
    let result: ReportSlot = Arc::default();
    let slot = result.clone();
    let app: NativeApp = Box::new(move |os, client| match run_test(os, client, &params) {
        Ok(report) => {
            let outcome = if report.verified {
                Outcome::Success
            } else {
                Outcome::Failed
            };
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(report);
            }
            outcome
        }
        Err(failure) => {
            apps::log!(os, "rdma: {} failed: {failure}", params.test.name());
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(failure.so_far);
            }
            Outcome::Failed
        }
    });
    let member = NativeMember {
        tag: format!("{}", identity.ipv4),
        mac: identity.mac,
        ipv4: identity.ipv4,
        prefix_len: identity.prefix_len,
        backend,
        app,
        echo,
        idle_spin: crate::native::DEFAULT_IDLE_SPIN,
        cpus: (None, None),
        one_thread: false,
    };
    (member, result)
}

/// Runs one side of a test natively (OS A's and OS B's engines as host threads) on `backend`.
///
/// Returns the test's report (what it had done, if it failed: the log says why; `None` if it
/// never ran) and the endpoint's.
pub fn run_native(
    params: &TestParams,
    identity: Identity,
    backend: Box<dyn NetBackend>,
    echo: bool,
) -> Result<(Option<TestReport>, NativeReport), NativeError> {
    let (member, result) = native_member(params, identity, backend, echo);
    let report = spawn(member)?
        .join()
        .map_err(|_| NativeError::Net("the endpoint's thread panicked".into()))?;
    let test = result.lock().ok().and_then(|slot| *slot);
    Ok((test, report))
}

/// What one side of a test measured, with stable JSON keys.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq)]
pub struct Figures {
    /// Messages completed.
    pub messages: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Seconds from the first post to the last completion.
    pub seconds: f64,
    /// Goodput.
    pub gbit_per_sec: f64,
    /// Messages per second.
    pub messages_per_sec: f64,
    /// Median latency (latency tests), microseconds.
    pub lat_p50_us: f64,
    /// 99th percentile latency (latency tests), microseconds.
    pub lat_p99_us: f64,
    /// Packets retransmitted.
    pub retransmissions: u64,
}

impl Figures {
    /// The figures of a test's report.
    pub fn of(report: &TestReport) -> Self {
        let seconds = report.elapsed_ns as f64 / 1e9;
        let per_second = |value: f64| if seconds > 0.0 { value / seconds } else { 0.0 };
        Figures {
            messages: report.messages,
            bytes: report.bytes,
            seconds,
            gbit_per_sec: per_second(report.bytes as f64 * 8.0) / 1e9,
            messages_per_sec: per_second(report.messages as f64),
            lat_p50_us: report.p50_ns as f64 / 1000.0,
            lat_p99_us: report.p99_ns as f64 / 1000.0,
            retransmissions: report.retransmissions,
        }
    }
}

/// The result of one endpoint's test, with stable JSON keys.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct EndpointReport {
    /// `write_bw`, `write_lat`, `read_lat`, `send_bw`, `atomic_lat` or `rc_pingpong`.
    pub test: &'static str,
    /// `vm` or `native`.
    pub mode: &'static str,
    /// `rc_pingpong` or `perftest`.
    pub handshake: &'static str,
    /// `client` or `server`.
    pub role: &'static str,
    /// The server's address (`any` for a server).
    pub peer: String,
    /// Message size in bytes.
    pub size: u32,
    /// Messages asked for.
    pub iters: u32,
    /// Path MTU asked for.
    pub mtu: u32,
    /// The QP's local ACK timeout exponent (`4.096 µs << qp_timeout`).
    pub qp_timeout: u8,
    /// Who computed and checked the ICRCs: `nic` (the VM's virtio-net device) or `engine`
    /// (OS A's RDMA device).
    pub icrc: &'static str,
    /// What this endpoint measured (its own retransmissions).
    #[serde(flatten)]
    pub figures: Figures,
    /// The test completed and every check passed.
    pub verified: bool,
    /// Why the test failed, as the application said it; `null` if it ran to its end.
    pub error: Option<String>,
}

impl EndpointReport {
    /// The report of `params` run in `mode` (`identity`'s ICRC offload applies in a VM);
    /// `result` is what the test did (`None` if it did not run), `error` why it failed, if it
    /// did.
    pub fn new(
        params: &TestParams,
        mode: &'static str,
        identity: &Identity,
        result: Option<&TestReport>,
        error: Option<String>,
    ) -> Self {
        let result = result.copied().unwrap_or_default();
        EndpointReport {
            test: params.test.name(),
            mode,
            handshake: params.handshake.name(),
            role: if params.server.is_some() {
                "client"
            } else {
                "server"
            },
            peer: params
                .server
                .map_or_else(|| "any".to_string(), |server| server.to_string()),
            size: params.size,
            iters: params.iters,
            mtu: params.mtu.bytes(),
            qp_timeout: params.qp_timeout,
            icrc: if mode == "vm" && identity.icrc_offload {
                "nic"
            } else {
                "engine"
            },
            figures: Figures::of(&result),
            verified: result.verified && result.messages == u64::from(params.iters),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::failure;

    #[test]
    fn an_applications_failure_line_is_found_and_nothing_else() {
        let lines: Vec<String> = [
            "net: connect failed: refused",
            "netbench: failed: timed out waiting for a round trip",
            "rdma: write_bw client failed: a work request completed with RemAccessErr",
            "[a] rdma: read_lat failed: nothing moved for 60 s waiting for READ completions",
            "rdma: 10 s, waiting for the client: 0 completions",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            failure(&lines, "rdma"),
            Some("nothing moved for 60 s waiting for READ completions")
        );
        assert_eq!(
            failure(&lines[..3], "rdma"),
            Some("a work request completed with RemAccessErr")
        );
        assert_eq!(
            failure(&lines, "netbench"),
            Some("timed out waiting for a round trip")
        );
        assert_eq!(failure(&lines[..1], "rdma"), None);
        assert_eq!(failure(&lines[..1], "net"), Some("refused"));
        assert_eq!(failure(&[], "rdma"), None);
    }
}
