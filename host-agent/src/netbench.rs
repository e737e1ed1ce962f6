//! `net-bench`: UDP and TCP goodput and small-message round trips through OS B's network
//! service (`duovm-apps`' `netbench`), in two VMs or natively (the same engines as host
//! threads).
//!
//! Two paths:
//! - **switch**: endpoint 1 (10.77.10.1) serves, endpoint 2 (10.77.10.2) measures, both on the
//!   built-in switch;
//! - **tap**: one endpoint measures against the host: its OS B's NIC is a TAP interface whose
//!   host end the agent addresses and serves itself ([`HostServer`], the same protocol state
//!   machines over the host's sockets).
//!
//! The client first measures goodput (`count` messages of `size` bytes, or fewer if the time
//! limit comes first), then `rtt_count` round trips of `rtt_size` bytes. Goodput is what the
//! receiver got intact, over the time from the first datagram's arrival to the last's (UDP) or
//! from the client's first byte to the receiver's summary of the checked stream (TCP).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apps::Outcome;
use apps::netbench::responder::{TcpResponder, UdpResponder};
use apps::netbench::{BenchReport, DEFAULT_PORT, Plan, PlanReport, Transport, run_plan};
use nix::sys::socket::sockopt;
use serde::Serialize;
use shm_ring::bootinfo::{NetConfig, Workload, WorkloadKind};
use shm_ring::control::report;
use shm_ring::layout::Role;

use crate::cluster::{Member, run_group_until};
use crate::devices::net_backend::NetBackend;
use crate::devices::switch::{Switch, SwitchConfig};
use crate::devices::tap::{Tap, TapError};
use crate::endpoint::{failure, vm_failure};
use crate::native::{NativeApp, NativeError, NativeMember, NativeTuning, allowed_cpus, spawn};
use crate::vm::{RunReport, Vm, VmConfig, VmError};

/// TCP payload bytes in a full-sized segment on a 1500-byte link (for `packets_per_sec`).
pub const TCP_SEGMENT_PAYLOAD: u64 = 1460;

/// What to measure: the client application's own description of it.
pub type NetBenchParams = apps::netbench::Measurements;

/// The host end of the TAP path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapPath {
    /// The TAP interface (created if missing).
    pub name: String,
    /// The host's address on it.
    pub host: Ipv4Addr,
    /// The endpoint's address.
    pub guest: Ipv4Addr,
    /// Prefix length of both.
    pub prefix_len: u8,
}

/// Where the benchmark runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetPath {
    /// Two endpoints on the built-in switch.
    Switch,
    /// One endpoint and the host, over a TAP.
    Tap(TapPath),
}

impl NetPath {
    fn name(&self) -> &'static str {
        match self {
            NetPath::Switch => "switch",
            NetPath::Tap(_) => "tap",
        }
    }
}

/// The result, with stable JSON keys.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NetBenchReport {
    /// `vm` or `native`.
    pub mode: &'static str,
    /// `switch` or `tap`.
    pub path: &'static str,
    /// Native runs: where the engine threads ran (`scheduler`, `endpoint`, `split` or
    /// `cross`, `--pin auto` resolved); null in VMs.
    pub placement: Option<&'static str>,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// Goodput message size in bytes (UDP: the datagram's payload).
    pub size: u32,
    /// Goodput messages sent.
    pub messages: u64,
    /// Of those, received intact.
    pub received: u64,
    /// Sent but not received (UDP).
    pub lost: u64,
    /// UDP: the credit window the client paced itself with, in datagrams (0: unpaced).
    pub window: u32,
    /// UDP, paced: times the client sent on without a credit after waiting 20 ms.
    pub credit_stalls: u64,
    /// Bytes received intact.
    pub bytes: u64,
    /// Seconds of the goodput measurement: UDP from the first datagram's arrival to the
    /// last's, TCP from the client's first byte to the receiver's summary.
    pub seconds: f64,
    /// Goodput.
    pub gbit_per_sec: f64,
    /// UDP: datagrams received per second; TCP: the goodput in full-sized segments (1460
    /// payload bytes) per second.
    pub packets_per_sec: f64,
    /// Round-trip message size in bytes.
    pub rtt_size: u32,
    /// Round trips that came back intact.
    pub round_trips: u64,
    /// Median round trip, microseconds.
    pub rtt_us_p50: f64,
    /// 99th percentile round trip, microseconds.
    pub rtt_us_p99: f64,
    /// Every message that arrived checked out (none twice); for TCP and round trips every
    /// message also arrived; both sides ended well.
    pub verified: bool,
    /// Why the run failed (`client: ...` or `server: ...`), or `null`.
    pub error: Option<String>,
}

impl NetBenchReport {
    /// The report of a client's [`PlanReport`].
    pub fn new(
        mode: &'static str,
        path: &NetPath,
        params: &NetBenchParams,
        measured: &PlanReport,
        ended_well: bool,
        error: Option<String>,
    ) -> NetBenchReport {
        let goodput = measured.goodput.unwrap_or_default();
        let round_trips = measured.round_trips.unwrap_or_default();
        let seconds = goodput.elapsed_ns as f64 / 1e9;
        let per_second = |value: f64| if seconds > 0.0 { value / seconds } else { 0.0 };
        let packets = match params.transport {
            Transport::Udp => goodput.received,
            Transport::Tcp => goodput.bytes.div_ceil(TCP_SEGMENT_PAYLOAD),
        };
        let complete = (params.count == 0 || measured.goodput.is_some())
            && (params.rtt_count == 0 || measured.round_trips.is_some());
        NetBenchReport {
            mode,
            path: path.name(),
            placement: None,
            transport: params.transport.name(),
            size: params.size,
            messages: goodput.sent,
            received: goodput.received,
            lost: goodput.sent.saturating_sub(goodput.received),
            window: if params.transport == Transport::Udp {
                params.window
            } else {
                0
            },
            credit_stalls: goodput.credit_stalls,
            bytes: goodput.bytes,
            seconds,
            gbit_per_sec: per_second(goodput.bytes as f64 * 8.0) / 1e9,
            packets_per_sec: per_second(packets as f64),
            rtt_size: params.rtt_size,
            round_trips: round_trips.received,
            rtt_us_p50: round_trips.p50_ns as f64 / 1000.0,
            rtt_us_p99: round_trips.p99_ns as f64 / 1000.0,
            verified: ended_well && complete && measured.verified(),
            error,
        }
    }
}

/// Errors running the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum NetBenchError {
    /// A VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A native endpoint could not start.
    #[error(transparent)]
    Native(#[from] NativeError),
    /// The TAP could not be opened or configured.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The host's end could not start.
    #[error("the host's end of the benchmark: {0}")]
    HostServer(#[source] std::io::Error),
    /// A switch port could not be made.
    #[error("switch port: {0}")]
    Switch(#[source] std::io::Error),
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 10, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 10, 2);

fn mac(index: u8) -> [u8; 6] {
    [0x02, 0xd0, 0, 10, index, 0x0b]
}

fn plan(params: &NetBenchParams, server: Option<Ipv4Addr>) -> Plan {
    Plan {
        measure: *params,
        server,
        port: DEFAULT_PORT,
    }
}

/// The client's measurements, from its OS A's report slots.
fn measured_in(run: &RunReport, params: &NetBenchParams) -> PlanReport {
    let os = run.os(Role::A);
    let slot = |index: usize| os.report.get(index).copied().unwrap_or(0);
    let verified = slot(report::NET_VERIFIED) == 1;
    PlanReport {
        goodput: (params.count != 0 && os.success).then(|| BenchReport {
            sent: slot(report::NET_SENT),
            received: slot(report::NET_RECEIVED),
            bytes: slot(report::NET_BYTES),
            elapsed_ns: slot(report::NET_ELAPSED_NS),
            credit_stalls: slot(report::NET_CREDIT_STALLS),
            verified,
            ..BenchReport::default()
        }),
        round_trips: (params.rtt_count != 0 && os.success).then(|| BenchReport {
            received: slot(report::NET_ROUND_TRIPS),
            p50_ns: slot(report::NET_RTT_P50_NS),
            p99_ns: slot(report::NET_RTT_P99_NS),
            verified,
            ..BenchReport::default()
        }),
        served: None,
    }
}

fn net_config(index_mac: [u8; 6], address: Ipv4Addr, prefix_len: u8) -> NetConfig {
    NetConfig {
        mac: index_mac,
        prefix_len,
        has_nic: 1,
        ipv4: address.octets(),
        gateway: [0; 4],
        ..NetConfig::default()
    }
}

fn workload(plan: &Plan) -> Workload {
    Workload {
        kind: WorkloadKind::NetBench as u32,
        flags: 0,
        args: plan.to_args(),
    }
}

const SERVICE: Workload = Workload {
    kind: WorkloadKind::NetService as u32,
    flags: 0,
    args: [0; 6],
};

/// Runs the benchmark in VMs built from `base` (workloads and network are set here); returns
/// the report and every VM's run.
pub fn run_vms(
    base: &VmConfig,
    params: &NetBenchParams,
    path: &NetPath,
    timeout: Duration,
) -> Result<(NetBenchReport, Vec<RunReport>), NetBenchError> {
    match path {
        NetPath::Switch => {
            let members = [(1u8, None, SERVER), (2, Some(SERVER), CLIENT)]
                .into_iter()
                .map(|(index, server, address)| {
                    let mut config = base.clone();
                    config.workloads = [workload(&plan(params, server)), SERVICE];
                    config.net = net_config(mac(index), address, 24);
                    Member {
                        config,
                        nic: None,
                        capture: None,
                    }
                })
                .collect();
            let switch = Switch::new(SwitchConfig::default());
            // Once the client is done the server is asked to end, if it has not ended by itself.
            let runs = run_group_until(members, &switch, timeout, &[1])?;
            let client = &runs[1];
            let measured = measured_in(client, params);
            let error = [("client", client), ("server", &runs[0])]
                .into_iter()
                .find_map(|(side, run)| {
                    vm_failure(run, "netbench").map(|why| format!("{side}: {why}"))
                });
            let report =
                NetBenchReport::new("vm", path, params, &measured, client.success(), error);
            Ok((report, runs))
        }
        NetPath::Tap(tap) => {
            let backend = open_tap(tap)?;
            let server = HostServer::start(SocketAddrV4::new(tap.host, DEFAULT_PORT))
                .map_err(NetBenchError::HostServer)?;
            let mut config = base.clone();
            config.workloads = [workload(&plan(params, Some(tap.host))), SERVICE];
            config.net = net_config(mac(2), tap.guest, tap.prefix_len);
            let mut vm = Vm::build(&config)?;
            vm.attach_nic(config.net.mac, Box::new(backend), None)?;
            let run = vm.run(timeout);
            server.stop();
            let run = run?;
            let measured = measured_in(&run, params);
            let error = vm_failure(&run, "netbench");
            let report = NetBenchReport::new("vm", path, params, &measured, run.success(), error);
            Ok((report, vec![run]))
        }
    }
}

fn open_tap(tap: &TapPath) -> Result<Tap, TapError> {
    let backend = Tap::open(&tap.name)?;
    backend.set_ipv4(tap.host, tap.prefix_len)?;
    Ok(backend)
}

/// Runs the benchmark with native endpoints, whose threads poll for the tuning's idle spin
/// before they sleep and run where its placement says (a `Duration` alone: that spin, wherever
/// the scheduler puts them); returns the report and each endpoint's log.
pub fn run_native(
    params: &NetBenchParams,
    path: &NetPath,
    tuning: impl Into<NativeTuning>,
    echo: bool,
) -> Result<(NetBenchReport, Vec<Vec<String>>), NetBenchError> {
    let NativeTuning {
        idle_spin,
        placement,
    } = tuning.into();
    let allowed = allowed_cpus();
    let measured: Arc<Mutex<Option<PlanReport>>> = Arc::default();
    let app = |plan: Plan, keep: bool| -> NativeApp {
        let measured = measured.clone();
        Box::new(move |os, client| match run_plan(os, client, &plan) {
            Ok(result) => {
                let outcome = if result.verified() {
                    Outcome::Success
                } else {
                    Outcome::Failed
                };
                if keep && let Ok(mut slot) = measured.lock() {
                    *slot = Some(result);
                }
                outcome
            }
            Err(error) => {
                apps::log!(os, "netbench: failed: {error}");
                Outcome::Failed
            }
        })
    };
    let mut handles = Vec::new();
    let mut host_server = None;
    // Keeps the switch (and so the ports) alive for the run.
    let switch = Switch::new(SwitchConfig::default());
    match path {
        NetPath::Switch => {
            for (index, server, address) in [(1u8, None, SERVER), (2, Some(SERVER), CLIENT)] {
                let backend = switch
                    .port(Some(mac(index)))
                    .map_err(NetBenchError::Switch)?;
                handles.push(spawn(NativeMember {
                    tag: format!("n{index}"),
                    mac: mac(index),
                    ipv4: address,
                    prefix_len: 24,
                    backend: Box::new(backend),
                    app: app(plan(params, server), server.is_some()),
                    echo,
                    idle_spin,
                    cpus: placement.cpus(usize::from(index - 1), &allowed),
                    one_thread: placement.one_thread(allowed.len()),
                })?);
            }
        }
        NetPath::Tap(tap) => {
            let backend: Box<dyn NetBackend> = Box::new(open_tap(tap)?);
            host_server = Some(
                HostServer::start(SocketAddrV4::new(tap.host, DEFAULT_PORT))
                    .map_err(NetBenchError::HostServer)?,
            );
            handles.push(spawn(NativeMember {
                tag: "n2".to_owned(),
                mac: mac(2),
                ipv4: tap.guest,
                prefix_len: tap.prefix_len,
                backend,
                app: app(plan(params, Some(tap.host)), true),
                echo,
                idle_spin,
                cpus: placement.cpus(0, &allowed),
                one_thread: placement.one_thread(allowed.len()),
            })?);
        }
    }
    // The client (spawned last) first; then the server, stopped if it still waits for
    // sessions a failed client never opened.
    let mut logs = Vec::new();
    let mut ended_well = true;
    while let Some(handle) = handles.pop() {
        match handle.join() {
            Ok(report) => {
                ended_well &= report.outcome == Outcome::Success;
                logs.push(report.lines);
            }
            Err(_) => {
                ended_well = false;
                logs.push(vec!["netbench: failed: its thread panicked".to_owned()]);
            }
        }
        if let Some(server) = handles.last() {
            server.stop();
        }
    }
    logs.reverse();
    if let Some(server) = host_server {
        server.stop();
    }
    let measured = measured
        .lock()
        .ok()
        .and_then(|slot| *slot)
        .unwrap_or_default();
    // The client's log is the last (it was spawned last).
    let error = logs
        .iter()
        .rev()
        .zip(["client", "server"])
        .find_map(|(lines, side)| failure(lines, "netbench").map(|why| format!("{side}: {why}")));
    let mut report = NetBenchReport::new("native", path, params, &measured, ended_well, error);
    report.placement = Some(placement.resolved(allowed.len()).name());
    Ok((report, logs))
}

/// The host's end of the TAP path: the benchmark's server on the host's own UDP and TCP
/// sockets, one thread for UDP, one accepting TCP connections and one per connection.
#[derive(Debug)]
pub struct HostServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How often the server's threads look at the stop flag.
const HOST_POLL: Duration = Duration::from_millis(50);

/// The host server's UDP receive buffer, in bytes.
const HOST_UDP_BUFFER: usize = 4 << 20;

impl HostServer {
    /// Binds UDP and TCP `address` (which must be one of the host's) and starts serving.
    pub fn start(address: SocketAddrV4) -> std::io::Result<HostServer> {
        let udp = UdpSocket::bind(address)?;
        udp.set_read_timeout(Some(HOST_POLL))?;
        // Room for a whole credit window of the largest datagrams: the kernel's default receive
        // buffer (about 200 KiB, a few hundred bytes of accounting per datagram) holds under a
        // hundred. Beyond `rmem_max` only CAP_NET_ADMIN may ask; without it the default stays
        // and a paced stream may lose what the buffer cannot hold (reported as lost).
        if nix::sys::socket::setsockopt(&udp, sockopt::RcvBufForce, &HOST_UDP_BUFFER).is_err() {
            let _ = nix::sys::socket::setsockopt(&udp, sockopt::RcvBuf, &HOST_UDP_BUFFER);
        }
        let listener = TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let udp_thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("netbench-udp".to_owned())
                .spawn(move || serve_udp(&udp, &stop, started))?
        };
        let tcp_thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("netbench-tcp".to_owned())
                .spawn(move || accept_tcp(&listener, &stop, started))?
        };
        Ok(HostServer {
            stop,
            threads: vec![udp_thread, tcp_thread],
        })
    }

    /// Stops serving and waits for the threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn serve_udp(socket: &UdpSocket, stop: &AtomicBool, started: Instant) {
    let mut responder = UdpResponder::new();
    let mut buffer = vec![0u8; 65536];
    while !stop.load(Ordering::Acquire) {
        let Ok((len, from)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        let now = started.elapsed().as_nanos() as u64;
        if let Some(answer) = responder.datagram(&buffer[..len], now) {
            let _ = socket.send_to(answer, from);
        }
    }
}

fn accept_tcp(listener: &TcpListener, stop: &Arc<AtomicBool>, started: Instant) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stop = stop.clone();
                let spawned = std::thread::Builder::new()
                    .name("netbench-conn".to_owned())
                    .spawn(move || serve_tcp(stream, &stop, started));
                if let Ok(handle) = spawned {
                    connections.push(handle);
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(HOST_POLL / 5);
            }
            Err(_) => std::thread::sleep(HOST_POLL),
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn serve_tcp(mut stream: TcpStream, stop: &AtomicBool, started: Instant) {
    let ready = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| stream.set_read_timeout(Some(HOST_POLL)));
    if ready.is_err() {
        return;
    }
    let mut responder = TcpResponder::new();
    let mut buffer = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Acquire) && !responder.refused() {
        let len = match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(len) => len,
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        responder.receive(&buffer[..len], started.elapsed().as_nanos() as u64);
        let outgoing = responder.outgoing();
        if !outgoing.is_empty() {
            if stream.write_all(outgoing).is_err() {
                break;
            }
            outgoing.clear();
        }
    }
}
