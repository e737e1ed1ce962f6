//! `rdma-bench`: an RDMA test between two endpoints on the built-in switch, in two VMs or
//! natively (the same engines as host threads).
//!
//! Endpoint 1 (10.77.9.1) is the server, endpoint 2 (10.77.9.2) the client; they connect
//! over TCP port 18515 the way `ibv_rc_pingpong` does, then run the test. The client's figures
//! are the result; `verified` is true only if both sides checked every byte and completion.

use std::net::Ipv4Addr;
use std::time::Duration;

use apps::Outcome;
use apps::rdma::{Handshake, Test, TestParams, TestReport, run_test};
use roce::verbs::Mtu;
use serde::Serialize;
use shm_ring::bootinfo::{NetConfig, Workload, WorkloadKind};
use shm_ring::layout::Role;

use crate::cluster::{Member, run_group_until};
use crate::devices::switch::{FaultConfig, Switch, SwitchConfig};
use crate::native::{NativeApp, NativeMember, spawn};
use crate::vm::{RunReport, VmConfig, VmError};

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct RdmaBenchParams {
    /// The test.
    pub test: Test,
    /// Message size in bytes.
    pub size: u32,
    /// Messages.
    pub iters: u32,
    /// Frame loss injected by the switch (0 to 1).
    pub loss: f64,
    /// Path MTU.
    pub mtu: Mtu,
}

/// The result, with stable JSON keys.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RdmaBenchReport {
    /// `write_bw`, `write_lat`, `read_lat`, `send_bw`, `atomic_lat` or `rc_pingpong`.
    pub test: &'static str,
    /// `vm` or `native`.
    pub mode: &'static str,
    /// Message size in bytes.
    pub size: u32,
    /// Messages asked for.
    pub iters: u32,
    /// Path MTU.
    pub mtu: u32,
    /// Frame loss injected.
    pub loss: f64,
    /// Messages the client completed.
    pub messages: u64,
    /// Payload bytes the client moved.
    pub bytes: u64,
    /// Seconds from the client's first post to its last completion.
    pub seconds: f64,
    /// Goodput.
    pub gbit_per_sec: f64,
    /// Messages per second.
    pub messages_per_sec: f64,
    /// Median latency (latency tests), microseconds.
    pub lat_p50_us: f64,
    /// 99th percentile latency (latency tests), microseconds.
    pub lat_p99_us: f64,
    /// Packets retransmitted by both sides.
    pub retransmissions: u64,
    /// Every byte and completion checked out on both sides.
    pub verified: bool,
}

impl RdmaBenchReport {
    fn new(
        mode: &'static str,
        params: &RdmaBenchParams,
        client: &TestReport,
        server: &TestReport,
        both_ok: bool,
    ) -> Self {
        let seconds = client.elapsed_ns as f64 / 1e9;
        RdmaBenchReport {
            test: params.test.name(),
            mode,
            size: params.size,
            iters: params.iters,
            mtu: params.mtu.bytes(),
            loss: params.loss,
            messages: client.messages,
            bytes: client.bytes,
            seconds,
            gbit_per_sec: if seconds > 0.0 {
                client.bytes as f64 * 8.0 / seconds / 1e9
            } else {
                0.0
            },
            messages_per_sec: if seconds > 0.0 {
                client.messages as f64 / seconds
            } else {
                0.0
            },
            lat_p50_us: client.p50_ns as f64 / 1000.0,
            lat_p99_us: client.p99_ns as f64 / 1000.0,
            retransmissions: client.retransmissions + server.retransmissions,
            verified: both_ok
                && client.verified
                && server.verified
                && client.messages == u64::from(params.iters),
        }
    }
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 1);

fn address(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 9, index)
}

fn mac(index: u8) -> [u8; 6] {
    [0x02, 0xd0, 0, 9, index, 0x0b]
}

fn switch(loss: f64) -> Switch {
    Switch::new(SwitchConfig {
        faults: FaultConfig {
            loss,
            seed: 42,
            ..FaultConfig::default()
        },
        ..SwitchConfig::default()
    })
}

/// Runs the test between two VMs built from `base` (workloads and network are set here),
/// capturing the client VM's NIC to `capture` if given.
pub fn run_vms(
    base: &VmConfig,
    params: &RdmaBenchParams,
    timeout: Duration,
    capture: Option<&std::path::Path>,
) -> Result<(RdmaBenchReport, Vec<RunReport>), VmError> {
    let members = [1u8, 2]
        .into_iter()
        .map(|index| {
            let test = TestParams {
                test: params.test,
                size: params.size,
                iters: params.iters,
                server: (index == 2).then_some(SERVER),
                local: address(index),
                port: roce::oob::DEFAULT_PORT,
                mtu: params.mtu,
                handshake: Handshake::RcPingpong,
            };
            let service = Workload {
                kind: WorkloadKind::NetService as u32,
                ..Workload::default()
            };
            let os_a = crate::endpoint::workload(&test);
            let mut config = base.clone();
            config.workloads = [os_a, service];
            config.net = NetConfig {
                mac: mac(index),
                prefix_len: 24,
                has_nic: 1,
                ipv4: address(index).octets(),
                gateway: [0; 4],
            };
            let capture = match capture {
                Some(path) if index == 2 => Some(
                    crate::devices::pcap::PcapWriter::create(path).map_err(|error| {
                        VmError::Nic(format!("capture {}: {error}", path.display()))
                    })?,
                ),
                _ => None,
            };
            Ok(Member { config, capture })
        })
        .collect::<Result<Vec<_>, VmError>>()?;
    let switch = switch(params.loss);
    let runs = run_group_until(members, &switch, timeout, &[])?;
    let side = crate::endpoint::published;
    let both_ok = runs.iter().all(|run| run.os(Role::A).success);
    let report = RdmaBenchReport::new("vm", params, &side(&runs[1]), &side(&runs[0]), both_ok);
    Ok((report, runs))
}

/// Runs the test between two native endpoints; returns the report and each side's log.
pub fn run_native(
    params: &RdmaBenchParams,
    echo: bool,
) -> Result<(RdmaBenchReport, Vec<Vec<String>>), crate::native::NativeError> {
    let switch = switch(params.loss);
    let results = std::sync::Arc::new(std::sync::Mutex::new([None, None]));
    let mut handles = Vec::new();
    for index in [1u8, 2] {
        let test_params = TestParams {
            test: params.test,
            size: params.size,
            iters: params.iters,
            server: (index == 2).then_some(SERVER),
            local: address(index),
            port: roce::oob::DEFAULT_PORT,
            mtu: params.mtu,
            handshake: Handshake::RcPingpong,
        };
        let results = results.clone();
        let app: NativeApp = Box::new(move |os, client| {
            let result = run_test(os, client, &test_params);
            let outcome = match &result {
                Ok(report) if report.verified => Outcome::Success,
                Ok(_) => Outcome::Failed,
                Err(error) => {
                    apps::log!(os, "rdma: failed: {error:?}");
                    Outcome::Failed
                }
            };
            if let Ok(mut slots) = results.lock() {
                slots[usize::from(index - 1)] = result.ok();
            }
            outcome
        });
        let backend = Box::new(switch.port(Some(mac(index)))?);
        handles.push(spawn(NativeMember {
            tag: format!("n{index}"),
            mac: mac(index),
            ipv4: address(index),
            prefix_len: 24,
            backend,
            app,
            echo,
        })?);
    }
    let mut logs = Vec::new();
    let mut both_ok = true;
    for handle in handles {
        match handle.join() {
            Ok(report) => {
                both_ok &= report.outcome == Outcome::Success;
                logs.push(report.lines);
            }
            Err(_) => both_ok = false,
        }
    }
    let slots = results.lock().map(|slots| *slots).unwrap_or([None, None]);
    let server = slots[0].unwrap_or_default();
    let client = slots[1].unwrap_or_default();
    Ok((
        RdmaBenchReport::new("native", params, &client, &server, both_ok),
        logs,
    ))
}
