//! `rdma-bench`: an RDMA test between two endpoints, in two VMs or natively (the same engines
//! as host threads), joined by the built-in switch or by the host kernel's network.
//!
//! Endpoint 1 (10.77.9.1) is the server, endpoint 2 (10.77.9.2) the client; they connect
//! over TCP port 18515 the way `ibv_rc_pingpong` does, then run the test. The client's figures
//! are the result; `verified` is true only if both sides checked every byte and completion.
//!
//! On the [`RdmaPath::Tap`] path each endpoint's NIC is a TAP interface, and the two TAPs are
//! ports of a Linux bridge made for the run ([`TapLink`]): every frame goes through the host
//! kernel's TAP driver and bridge, as it would between VMs of any other VMM on the host.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use apps::Outcome;
use apps::rdma::{DEFAULT_QP_TIMEOUT, Handshake, Test, TestParams, TestReport};
use roce::verbs::Mtu;
use serde::Serialize;
use shm_ring::bootinfo::{Workload, WorkloadKind};
use shm_ring::layout::Role;

use crate::cluster::{Member, run_group_until};
use crate::devices::net_backend::NetBackend;
use crate::devices::netif::{Bridge, BridgeError};
use crate::devices::switch::{FaultConfig, Switch, SwitchConfig};
use crate::devices::tap::{Tap, TapError};
use crate::endpoint::{
    Figures, Identity, ReportSlot, failure, native_member, published, vm_failure, workload,
};
use crate::native::{NativeError, NativeTuning, allowed_cpus, spawn};
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
    /// The QPs' local ACK timeout (`4.096 µs << qp_timeout`); `None`: [`DEFAULT_QP_TIMEOUT`]
    /// natively, [`VM_QP_TIMEOUT`] in VMs.
    pub qp_timeout: Option<u8>,
    /// The QPs' transport retries (0 to 7; 7 never runs out, as in rdma_rxe).
    pub retry_cnt: u8,
    /// Seconds a step may go without headway before the test fails (0: the default).
    pub stall_timeout: u16,
    /// What joins the two endpoints.
    pub path: RdmaPath,
    /// In VMs, the virtio-net devices compute and check the RoCEv2 ICRCs and the guests leave
    /// them to it (`shm_ring::bootinfo::OFFLOAD_ROCE_ICRC`); otherwise the guests compute
    /// and check them themselves. Native endpoints always compute them.
    pub icrc_offload: bool,
}

/// What joins the two endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RdmaPath {
    /// The built-in switch (which can inject loss).
    #[default]
    Switch,
    /// Two TAP interfaces on a Linux bridge made for the run (needs `CAP_NET_ADMIN`).
    Tap,
}

impl RdmaPath {
    /// `switch` or `tap`.
    pub fn name(self) -> &'static str {
        match self {
            RdmaPath::Switch => "switch",
            RdmaPath::Tap => "tap",
        }
    }
}

/// Why the endpoints could not be joined through TAPs.
#[derive(Debug, thiserror::Error)]
pub enum TapLinkError {
    /// The bridge could not be made or a TAP added to it.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// A TAP could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The switch's fault injection has no counterpart on the host's network.
    #[error("loss is injected by the built-in switch; the TAP path has none (drop --loss)")]
    Loss,
}

/// Two TAP interfaces, one per endpoint, on a bridge of their own. The TAPs disappear when
/// their back-ends are dropped, the bridge when this is.
#[derive(Debug)]
pub struct TapLink {
    bridge: Bridge,
    taps: Vec<Tap>,
}

impl TapLink {
    /// Makes the bridge `dv<pid>-<n>b` and the TAPs `dv<pid>-<n>s` (server) and `dv<pid>-<n>c`
    /// (client), unique within the host while this process runs.
    pub fn create() -> Result<TapLink, TapLinkError> {
        static LINKS: AtomicU32 = AtomicU32::new(0);
        let stem = format!(
            "dv{:x}-{:x}",
            std::process::id(),
            LINKS.fetch_add(1, Ordering::Relaxed) & 0xff
        );
        let bridge = Bridge::create(&format!("{stem}b"))?;
        let mut taps = Vec::new();
        for end in ["s", "c"] {
            let tap = Tap::open(&format!("{stem}{end}"))?;
            bridge.add(tap.name())?;
            taps.push(tap);
        }
        Ok(TapLink { bridge, taps })
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        self.bridge.name()
    }

    /// The server's and the client's back-ends, in that order (once; then none).
    fn backends(&mut self) -> Vec<Box<dyn NetBackend>> {
        self.taps
            .drain(..)
            .map(|tap| Box::new(tap) as Box<dyn NetBackend>)
            .collect()
    }
}

/// The TAP link for `params`, if it takes one.
fn tap_link(params: &RdmaBenchParams) -> Result<Option<TapLink>, TapLinkError> {
    match params.path {
        RdmaPath::Switch => Ok(None),
        RdmaPath::Tap if params.loss > 0.0 => Err(TapLinkError::Loss),
        RdmaPath::Tap => TapLink::create().map(Some),
    }
}

/// The local ACK timeout in VMs unless told otherwise: `4.096 µs << 20`, about 4.3 s. An
/// emulated guest spends milliseconds on a packet, so 128 packets in flight take from half a
/// second to more than a second to be acknowledged, depending on how fast the host emulates
/// (hosts of the same kind differed by a factor of three); at `ibv_rc_pingpong`'s 67 ms the
/// requester would resend what is only queued (measured: a third of all packets of a
/// `write_bw` run), and at 1.07 s it still did on the slower hosts (32 of 128).
pub const VM_QP_TIMEOUT: u8 = 20;

impl RdmaBenchParams {
    /// `iters` messages of `size` bytes of `test` on the built-in switch, with the defaults
    /// for everything else: no loss, MTU 1024, the default ACK timeout, unlimited retries and
    /// the default stall timeout, the ICRC offloaded in VMs.
    pub fn new(test: Test, size: u32, iters: u32) -> RdmaBenchParams {
        RdmaBenchParams {
            test,
            size,
            iters,
            loss: 0.0,
            mtu: Mtu::Mtu1024,
            qp_timeout: None,
            retry_cnt: apps::rdma::DEFAULT_RETRY_CNT,
            stall_timeout: 0,
            path: RdmaPath::Switch,
            icrc_offload: true,
        }
    }

    /// The local ACK timeout for a run in VMs (`vm`) or natively.
    pub fn qp_timeout(&self, vm: bool) -> u8 {
        self.qp_timeout.unwrap_or(if vm {
            VM_QP_TIMEOUT
        } else {
            DEFAULT_QP_TIMEOUT
        })
    }
}

/// The result, with stable JSON keys.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RdmaBenchReport {
    /// `write_bw`, `write_lat`, `read_lat`, `send_bw`, `atomic_lat` or `rc_pingpong`.
    pub test: &'static str,
    /// `vm` or `native`.
    pub mode: &'static str,
    /// `switch` or `tap`.
    pub path: &'static str,
    /// Native runs: where the engine threads ran (`scheduler`, `endpoint`, `split` or
    /// `cross`, `--pin auto` resolved); null in VMs.
    pub placement: Option<&'static str>,
    /// Message size in bytes.
    pub size: u32,
    /// Messages asked for.
    pub iters: u32,
    /// Path MTU.
    pub mtu: u32,
    /// The QPs' local ACK timeout exponent.
    pub qp_timeout: u8,
    /// The QPs' transport retries (7: unlimited).
    pub retry_cnt: u8,
    /// Frame loss injected.
    pub loss: f64,
    /// Who computed and checked the ICRCs: `nic` (the VMs' virtio-net devices, the default
    /// in VMs) or `engine` (OS A's RDMA device: natively, or with `--no-icrc-offload`).
    pub icrc: &'static str,
    /// The client's figures; `retransmissions` counts both sides'.
    #[serde(flatten)]
    pub figures: Figures,
    /// Every byte and completion checked out on both sides.
    pub verified: bool,
    /// Why the run failed, as the side that failed said it (`server: ...` or `client: ...`);
    /// `null` if both sides ran the test to its end (`verified` then says whether everything
    /// checked out).
    pub error: Option<String>,
}

/// The failure of the server or the client, named by side. When both failed, the one whose
/// failure is not a consequence of its peer's ([`apps::rdma::is_consequence`]: it stalled, or
/// saw the peer end) is the cause; else the server's.
fn first_failure(server: Option<String>, client: Option<String>) -> Option<String> {
    let failures =
        [("server", server), ("client", client)].map(|(side, why)| why.map(|why| (side, why)));
    let cause = failures
        .iter()
        .flatten()
        .find(|(_, why)| !apps::rdma::is_consequence(why))
        .or(failures.iter().flatten().next());
    cause.map(|(side, why)| format!("{side}: {why}"))
}

impl RdmaBenchReport {
    fn new(
        mode: &'static str,
        params: &RdmaBenchParams,
        client: &TestReport,
        server: &TestReport,
        both_ok: bool,
        error: Option<String>,
    ) -> Self {
        let mut figures = Figures::of(client);
        // What the guests published: any value, so added without overflow.
        figures.retransmissions = figures
            .retransmissions
            .saturating_add(server.retransmissions);
        RdmaBenchReport {
            test: params.test.name(),
            mode,
            path: params.path.name(),
            placement: None,
            size: params.size,
            iters: params.iters,
            mtu: params.mtu.bytes(),
            qp_timeout: params.qp_timeout(mode == "vm"),
            retry_cnt: params.retry_cnt,
            loss: params.loss,
            icrc: if mode == "vm" && params.icrc_offload {
                "nic"
            } else {
                "engine"
            },
            figures,
            verified: both_ok
                && client.verified
                && server.verified
                && client.messages == u64::from(params.iters),
            error,
        }
    }
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 1);

/// Endpoint `index` (1, the server, or 2, the client) on the switch.
fn identity(index: u8) -> Identity {
    Identity {
        mac: [0x02, 0xd0, 0, 9, index, 0x0b],
        ipv4: Ipv4Addr::new(10, 77, 9, index),
        prefix_len: 24,
        icrc_offload: false,
    }
}

/// What endpoint `index` runs.
fn side_params(params: &RdmaBenchParams, index: u8, vm: bool) -> TestParams {
    TestParams {
        test: params.test,
        size: params.size,
        iters: params.iters,
        server: (index == 2).then_some(SERVER),
        local: identity(index).ipv4,
        port: roce::oob::DEFAULT_PORT,
        mtu: params.mtu,
        handshake: Handshake::RcPingpong,
        qp_timeout: params.qp_timeout(vm),
        retry_cnt: params.retry_cnt,
        stall_timeout: params.stall_timeout,
    }
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
    let mut link = tap_link(params).map_err(|error| VmError::Nic(error.to_string()))?;
    let mut nics = link.as_mut().map(TapLink::backends).into_iter().flatten();
    let members = [1u8, 2]
        .into_iter()
        .map(|index| {
            let service = Workload {
                kind: WorkloadKind::NetService as u32,
                ..Workload::default()
            };
            let mut config = base.clone();
            config.workloads = [workload(&side_params(params, index, true)), service];
            config.net = Identity {
                icrc_offload: params.icrc_offload,
                ..identity(index)
            }
            .net_config();
            let capture = match capture {
                Some(path) if index == 2 => Some(
                    crate::devices::pcap::PcapWriter::create(path).map_err(|error| {
                        VmError::Nic(format!("capture {}: {error}", path.display()))
                    })?,
                ),
                _ => None,
            };
            Ok(Member {
                config,
                nic: nics.next(),
                capture,
            })
        })
        .collect::<Result<Vec<_>, VmError>>()?;
    let switch = switch(params.loss);
    let runs = run_group_until(members, &switch, timeout, &[])?;
    drop(link);
    let side = published;
    let both_ok = runs.iter().all(|run| run.os(Role::A).success);
    let error = first_failure(vm_failure(&runs[0], "rdma"), vm_failure(&runs[1], "rdma"));
    let report = RdmaBenchReport::new(
        "vm",
        params,
        &side(&runs[1]),
        &side(&runs[0]),
        both_ok,
        error,
    );
    Ok((report, runs))
}

/// Runs the test between two native endpoints, whose threads poll for the tuning's idle spin
/// before they sleep and run where its placement says (a `Duration` alone: that spin, wherever
/// the scheduler puts them); returns the report and each side's log.
pub fn run_native(
    params: &RdmaBenchParams,
    tuning: impl Into<NativeTuning>,
    echo: bool,
) -> Result<(RdmaBenchReport, Vec<Vec<String>>), NativeError> {
    let tuning = tuning.into();
    let allowed = allowed_cpus();
    let mut link = tap_link(params).map_err(|error| NativeError::Link(error.to_string()))?;
    let mut nics = link.as_mut().map(TapLink::backends).into_iter().flatten();
    let switch = switch(params.loss);
    let mut handles = Vec::new();
    let mut slots = Vec::new();
    for index in [1u8, 2] {
        let backend: Box<dyn NetBackend> = match nics.next() {
            Some(tap) => tap,
            None => Box::new(switch.port(Some(identity(index).mac))?),
        };
        let (mut member, slot) = native_member(
            &side_params(params, index, false),
            identity(index),
            backend,
            echo,
        );
        member.tag = format!("n{index}");
        member.idle_spin = tuning.idle_spin;
        member.cpus = tuning.placement.cpus(usize::from(index - 1), &allowed);
        member.one_thread = tuning.placement.one_thread(allowed.len());
        handles.push(spawn(member)?);
        slots.push(slot);
    }
    let mut logs = Vec::new();
    let mut both_ok = true;
    for handle in handles {
        match handle.join() {
            Ok(report) => {
                both_ok &= report.outcome == Outcome::Success;
                logs.push(report.lines);
            }
            Err(_) => {
                both_ok = false;
                logs.push(vec![
                    "rdma: endpoint failed: its thread panicked".to_owned(),
                ]);
            }
        }
    }
    drop(link);
    let report = |slot: &ReportSlot| slot.lock().ok().and_then(|slot| *slot).unwrap_or_default();
    let (server, client) = (report(&slots[0]), report(&slots[1]));
    let error = match logs.as_slice() {
        [server, client] => {
            let said = |lines: &[String]| failure(lines, "rdma").map(str::to_owned);
            first_failure(said(server), said(client))
        }
        _ => None,
    };
    let mut report = RdmaBenchReport::new("native", params, &client, &server, both_ok, error);
    report.placement = Some(tuning.placement.resolved(allowed.len()).name());
    Ok((report, logs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|line| (*line).to_owned()).collect()
    }

    /// The cause, from each side's log.
    fn cause(server: &[String], client: &[String]) -> Option<String> {
        let said = |lines: &[String]| failure(lines, "rdma").map(str::to_owned);
        first_failure(said(server), said(client))
    }

    #[test]
    fn figures_a_guest_published_add_up_without_overflow() {
        let params = RdmaBenchParams::new(Test::WriteBw, 4096, 10);
        let hostile = TestReport {
            messages: u64::MAX,
            bytes: u64::MAX,
            retransmissions: u64::MAX,
            verified: true,
            ..TestReport::default()
        };
        let report = RdmaBenchReport::new("vm", &params, &hostile, &hostile, true, None);
        assert_eq!(report.figures.retransmissions, u64::MAX);
        assert!(
            !report.verified,
            "{} messages are not the 10 asked for",
            u64::MAX
        );
    }

    #[test]
    fn the_failure_named_is_the_cause_not_the_stall_it_left_behind() {
        let waiting = log(&["rdma: write_bw server waiting on TCP port 18515"]);
        let stalled = log(&[
            "rdma: connected to QPN 0x000011 at 10.77.9.2",
            "rdma: write_bw failed: nothing moved for 60 s waiting for the client",
        ]);
        let refused = log(&[
            "rdma: a work request completed with RemAccessErr; 3 more completions",
            "rdma: write_bw client failed: a work request completed with RemAccessErr",
        ]);
        assert_eq!(cause(&waiting, &waiting), None);
        assert_eq!(
            cause(&stalled, &refused).as_deref(),
            Some("client: a work request completed with RemAccessErr")
        );
        assert_eq!(
            cause(&stalled, &stalled).as_deref(),
            Some("server: nothing moved for 60 s waiting for the client")
        );
        assert_eq!(
            cause(&waiting, &stalled).as_deref(),
            Some("client: nothing moved for 60 s waiting for the client")
        );
        // A side that saw its peer end, in the exchange or in the test, is not the cause.
        let ended = log(&[
            "rdma: write_bw failed: the peer ended the test (it closed the connection) waiting for the client",
        ]);
        let closed_early = log(&[
            "rdma: write_bw client failed: connection exchange: the peer closed the connection early",
        ]);
        let stopped = log(&["rdma: write_bw client failed: stopped sending"]);
        assert_eq!(
            cause(&ended, &stopped).as_deref(),
            Some("client: stopped sending")
        );
        assert_eq!(
            cause(&refused, &closed_early).as_deref(),
            Some("server: a work request completed with RemAccessErr")
        );
        assert_eq!(
            cause(&closed_early, &refused).as_deref(),
            Some("client: a work request completed with RemAccessErr")
        );
        // Lines that merely mention failing are not the application's verdict.
        let other = log(&["net: connect failed: refused"]);
        assert_eq!(cause(&other, &waiting), None);
    }
}
