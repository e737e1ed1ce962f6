//! `host-agent`: the duovm VMM's command line.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use apps::netbench::Transport;
use apps::rdma::{Handshake, Test, TestParams};
use clap::{Args, Parser, Subcommand, ValueEnum};
use host_agent::benchsuite::{self, SuiteMode, SuiteParams, SuiteReport, rate, ratio_text};
use host_agent::cluster::{Member, run_group};
use host_agent::devices::net_backend::NetBackend;
use host_agent::devices::netif;
use host_agent::devices::pcap::{Captured, PcapWriter};
use host_agent::devices::switch::{Switch, SwitchConfig};
use host_agent::devices::tap::Tap;
use host_agent::endpoint::{self, EndpointReport, Figures, Identity};
use host_agent::native::{NativeTuning, Placement};
use host_agent::netbench::{self, NetBenchParams, NetBenchReport, NetPath, TapPath};
use host_agent::rdmabench::{self, RdmaBenchParams, RdmaBenchReport, RdmaPath};
use host_agent::ringbench::{self, RingBenchParams, RingBenchReport};
use host_agent::vm::{EndRequest, RunReport, Vm, VmConfig};
use host_agent::{exitbench, images};
use roce::verbs::Mtu;
use shm_ring::bootinfo::{NetConfig, Workload, WorkloadKind};
use shm_ring::layout::MemoryMap;
use shm_ring::shared::SharedConfig;

/// duovm's host agent: runs two bare-metal OSes in one KVM virtual machine.
///
/// OS A (vCPU 0) runs the application and the RDMA engine; OS B (vCPU 1) runs the network
/// stack. They share one memory segment and talk through lock-free rings and IPIs. The agent
/// builds the guest kernels when needed, builds the VM, handles its exits and reports.
///
/// Ctrl-C ends any command in order (the report says what was done; exit status 130); a
/// second Ctrl-C ends it at once.
#[derive(Debug, Parser)]
#[command(name = "host-agent", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The tour: boot the pair, exchange IPIs, move verified data through the ring, join two
    /// VMs on the built-in switch, run RDMA between them, then the same engines natively to
    /// show how fast RDMA is beside UDP over the same path.
    Demo(DemoArgs),
    /// Boot the pair and run one workload (for diagnostics and tests).
    Run(RunArgs),
    /// Move descriptors from OS A to OS B through the shared ring and measure it.
    ///
    /// OS A fills pool buffers with numbered, checksummed payloads and posts them in batches;
    /// OS B validates and verifies every one and returns the buffers. A side that finds nothing
    /// to do polls for --spin-us, then sleeps; IPIs are sent only to a side that sleeps.
    /// JSON keys: descriptors, bytes, size, batch, seconds, descriptors_per_sec, ipis_sent,
    /// ipis_per_1000_descriptors, sleeps, spins, spin_us, rejected, exits, verified, success,
    /// run_seconds.
    RingBench(RingBenchArgs),
    /// Run an RDMA test between two endpoints on the built-in switch (or, with --tap, through
    /// the host's network).
    ///
    /// Endpoint 1 (10.77.9.1) serves, endpoint 2 (10.77.9.2) is the client; they connect
    /// over TCP 18515 as ibv_rc_pingpong does and run the test, checking every byte and
    /// completion. Without --native each endpoint is a VM (OS A runs the verbs engine, OS B
    /// carries its RoCEv2 packets); with --native the same engines run as host threads.
    /// JSON keys: test, mode, path, placement (native: where the threads ran, see --pin; null
    /// in VMs), size, iters, mtu, qp_timeout, retry_cnt, loss, icrc (nic
    /// or engine: who computed the ICRCs), messages, bytes, seconds, gbit_per_sec, messages_per_sec, lat_p50_us, lat_p99_us,
    /// retransmissions, verified, error (why the run failed, or null). A step at which no PSN
    /// moves for --stall-timeout seconds fails the run; a slow one on a lossy path does not.
    RdmaBench(RdmaBenchArgs),
    /// Measure UDP or TCP goodput and small-message round trips through OS B's network service.
    ///
    /// The client first sends COUNT messages of SIZE bytes (fewer if --seconds comes first) as
    /// fast as its OS B takes them, then makes RTT_COUNT round trips of RTT_SIZE bytes, one at
    /// a time. The server checks every message (number, pattern, no duplicates) and reports
    /// what it received. Goodput is the bytes it got intact, for UDP over the time from the
    /// first datagram's arrival to the last's (UDP has no flow control: what the path could
    /// not carry is lost, and counted), for TCP over the time from the client's first byte to
    /// the server's summary of the checked stream. On the built-in switch, endpoint 1 (10.77.10.1) serves and
    /// endpoint 2 (10.77.10.2) measures; with --tap, the endpoint measures against the host,
    /// which the agent serves itself on the TAP's host address. Without --native each endpoint
    /// is a VM; with --native the same engines run as host threads.
    /// JSON keys: mode (vm, native), path (switch, tap), placement (native: where the threads
    /// ran, see --pin; null in VMs), transport (udp, tcp), size (goodput
    /// message bytes; UDP: the datagram's payload), messages (sent), received (intact),
    /// lost, window, credit_stalls, bytes, seconds, gbit_per_sec, packets_per_sec (UDP: datagrams received per second;
    /// TCP: goodput in full-sized 1460-byte segments per second), rtt_size, round_trips,
    /// rtt_us_p50, rtt_us_p99, verified, error (why the run failed, or null).
    NetBench(NetBenchArgs),
    /// Run net-bench and rdma-bench side by side, and compare RDMA with the raw path.
    ///
    /// Each goodput round runs, between two endpoints on the built-in switch: UDP goodput with
    /// 1024-byte datagrams (one RoCE packet's payload at MTU 1024) and RDMA write_bw (64 KiB
    /// messages, MTU 1024) back to back, the order alternating, then UDP goodput with
    /// 1472-byte datagrams and TCP goodput with 64 KiB writes and 64-byte round trips. Each
    /// latency pair runs UDP 64-byte round trips and RDMA write_lat (64 bytes) back to back
    /// from fresh endpoints, the order alternating (where threads outnumber CPUs, a round
    /// trip depends on how the scheduler placed them). Rounds (--runs) and pairs
    /// (--lat-pairs) repeat; each figure is the median over them.
    /// The comparison puts RDMA WRITE goodput against UDP's with 1024-byte datagrams, and
    /// RDMA's round trip (twice write_lat, which reports half a round trip as perftest does)
    /// against UDP's.
    /// JSON keys: mode, runs, lat_pairs, udp, udp_rtt, udp_largest, tcp (net-bench reports),
    /// write_bw, write_lat (rdma-bench reports), each as {median, gbit_per_sec_runs,
    /// latency_us_p50_runs}; comparison {udp_size, rdma_mtu, rdma_size, udp_gbit_per_sec,
    /// rdma_write_gbit_per_sec, goodput_ratio, goodput_goal, goodput_goal_met,
    /// udp_largest_gbit_per_sec, rtt_size, udp_rtt_us_p50, rdma_write_lat_us_p50,
    /// rdma_rtt_us_p50, latency_ratio, latency_ratio_pairs, latency_goal, latency_goal_met};
    /// verified.
    BenchSuite(BenchSuiteArgs),
    /// Run one RDMA endpoint against a peer on a real network (a TAP device).
    ///
    /// The peer may be another duovm endpoint, rdma-core's ibv_rc_pingpong (--test rc-pingpong;
    /// give it `-g <index of its IPv4 GID>`), or a perftest server started with `-x <GID
    /// index>` (--handshake perftest: ib_write_bw for write-bw, ib_send_bw for send-bw,
    /// ib_read_lat for read-lat, ib_write_lat for write-lat, ib_atomic_lat for atomic-lat),
    /// for instance on a Linux host running the rdma_rxe (SoftRoCE) driver. Without --server
    /// this endpoint is the server (rc_pingpong's exchange only). Size and iterations must
    /// match the peer's (-s, -n). See docs/INTEROP.md.
    /// JSON keys: test, mode, handshake, role, peer, size, iters, mtu, qp_timeout, icrc (nic or
    /// engine: who computed the ICRCs), messages, bytes, seconds, gbit_per_sec, messages_per_sec, lat_p50_us, lat_p99_us, retransmissions,
    /// verified, error (why the test failed, or null).
    Rdma(RdmaArgs),
    /// Measure the two exit paths: fast (on the vCPU thread) and supervisor (handed over).
    ///
    /// OS A makes COUNT exits of each kind; the agent counts the vCPU thread's context switches
    /// and host time around each. JSON keys: count, fast_path, supervisor_path (each: exits,
    /// context_switches, context_switches_per_exit, host_us_per_exit), success.
    ExitBench(ExitBenchArgs),
    /// Build the guest kernels into the image directory.
    BuildImages {
        /// Where to put them.
        #[arg(long, default_value_os_t = images::default_dir())]
        images: PathBuf,
    },
}

#[derive(Debug, Args, Clone)]
struct VmArgs {
    /// Directory of the guest images; when given, they are used as they are (not rebuilt).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Size of each OS's private segment, in MiB (a multiple of 2).
    #[arg(long, default_value_t = 32)]
    segment_mib: u64,
    /// Size of the shared segment, in MiB (a multiple of 2).
    #[arg(long, default_value_t = 16)]
    shared_mib: u64,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Do not echo the guests' serial logs.
    #[arg(long)]
    quiet: bool,
    /// Print one JSON object with the full report instead of text.
    #[arg(long)]
    json: bool,
}

/// How native endpoints wait.
#[derive(Debug, Args)]
struct NativeSpinArgs {
    /// With --native: how long an engine thread that finds nothing to do keeps polling
    /// (yielding the CPU between polls where threads share it) before it sleeps, in
    /// microseconds. 0 sleeps at once, so that every burst after an idle moment costs a
    /// wake-up.
    #[arg(long, default_value_t = host_agent::native::DEFAULT_IDLE_SPIN.as_micros() as u64)]
    spin_us: u64,
    /// With --native: where each endpoint's OS A and OS B run: on threads of their own, pinned
    /// or not, or taking turns on one thread per endpoint (shared). Threads on a host with
    /// fewer CPUs than engine threads hand off through context switches and stay about where
    /// they were put as they started, which decides the figures (docs/PERFORMANCE.md).
    #[arg(long, value_enum, default_value_t = Placement::Auto)]
    pin: Placement,
}

impl NativeSpinArgs {
    fn tuning(&self) -> NativeTuning {
        NativeTuning {
            idle_spin: Duration::from_micros(self.spin_us),
            placement: self.pin,
        }
    }
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    vm: VmArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WorkloadArg {
    /// Both OSes boot and exchange one IPI each way.
    Hello,
    /// OS A reads OS B's segment and must fault.
    TouchPeer,
    /// OS A triple-faults.
    TripleFault,
    /// OS A spins forever with interrupts off; the timeout must end it.
    Spin,
    /// OS B brings up its NIC, broadcasts a probe frame and waits for one frame back.
    NicProbe,
}

#[derive(Debug, Args)]
struct RingBenchArgs {
    /// Descriptors to move.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    descriptors: u64,
    /// Payload bytes per descriptor (16 to 2048).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=2048))]
    size: u64,
    /// Descriptors per batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// How long a side (OS A waiting for room or buffers, OS B waiting for descriptors) polls
    /// the rings before it raises its wake-up flag and sleeps, in microseconds of guest time.
    /// 0: sleep at once, so that every burst after an idle moment costs an IPI. The budget
    /// bounds the polling per idle period; it adds no latency.
    #[arg(long, default_value_t = RingBenchParams::DEFAULT_SPIN_US)]
    spin_us: u64,
    #[command(flatten)]
    vm: VmArgs,
}

/// The tests, by their kebab-case names; the snake-case names that the JSON reports and
/// perftest's `ib_*` tools suggest (`write_bw`) are accepted too.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum TestArg {
    /// RDMA WRITE bandwidth.
    #[value(alias = "write_bw")]
    WriteBw,
    /// RDMA WRITE latency (ping-pong of WRITEs, each side polling its memory, as ib_write_lat).
    #[value(alias = "write_lat")]
    WriteLat,
    /// RDMA READ latency.
    #[value(alias = "read_lat")]
    ReadLat,
    /// SEND bandwidth.
    #[value(alias = "send_bw")]
    SendBw,
    /// FETCH_AND_ADD latency.
    #[value(alias = "atomic_lat")]
    AtomicLat,
    /// ibv_rc_pingpong's SEND ping-pong.
    #[value(alias = "rc_pingpong")]
    RcPingpong,
}

impl TestArg {
    fn test(self) -> Test {
        match self {
            TestArg::WriteBw => Test::WriteBw,
            TestArg::WriteLat => Test::WriteLat,
            TestArg::ReadLat => Test::ReadLat,
            TestArg::SendBw => Test::SendBw,
            TestArg::AtomicLat => Test::AtomicLat,
            TestArg::RcPingpong => Test::Pingpong,
        }
    }
}

/// How the RDMA tests' queue pairs resend, and who computes the ICRCs.
#[derive(Debug, Args)]
struct QpArgs {
    /// The QPs' local ACK timeout: unacknowledged packets are resent after 4.096 µs << N
    /// (perftest's -u; 0 waits forever). Default: 14 (67 ms) natively, 20 (4.3 s) in VMs,
    /// whose emulated guests take milliseconds per packet.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=31))]
    qp_timeout: Option<u8>,
    /// The QPs' transport retries before a request fails with RETRY_EXC_ERR (0 to 7; 7, as
    /// ibv_rc_pingpong and perftest set it, never runs out, as in rdma_rxe).
    #[arg(long, value_name = "N", default_value_t = apps::rdma::DEFAULT_RETRY_CNT,
          value_parser = clap::value_parser!(u8).range(0..=7))]
    retry_cnt: u8,
    /// Seconds any step of the test may go without headway (no PSN acknowledged or taken)
    /// before it fails; a slow step on a lossy path goes on as long as PSNs move.
    #[arg(long, value_name = "SECONDS", default_value_t = apps::rdma::DEFAULT_STALL_TIMEOUT,
          value_parser = clap::value_parser!(u16).range(1..))]
    stall_timeout: u16,
    /// In VMs, have the guests compute and check the RoCEv2 ICRCs themselves. By default the
    /// virtio-net device does, as a RoCE NIC's hardware does: it fills in the ICRC of every
    /// RoCEv2 packet it sends and drops received ones whose ICRC is wrong, and OS A leaves
    /// them to it. (Native endpoints always compute them.)
    #[arg(long)]
    no_icrc_offload: bool,
}

#[derive(Debug, Args)]
struct RdmaBenchArgs {
    /// The test.
    #[arg(long, value_enum, default_value = "write-bw")]
    test: TestArg,
    /// Message size in bytes.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    size: u32,
    /// Messages.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Frame loss the switch injects (at least 0, below 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_loss)]
    loss: f64,
    /// Path MTU (256, 512, 1024, 2048 or 4096; at most 1024 on the 1500-byte switch).
    #[arg(long, default_value_t = 1024)]
    mtu: u32,
    #[command(flatten)]
    qp: QpArgs,
    /// Run the engines as host threads instead of in VMs.
    #[arg(long)]
    native: bool,
    /// Join the two endpoints through the host's network instead of the built-in switch: each
    /// endpoint's NIC is a TAP interface, and both TAPs are ports of a Linux bridge made for
    /// the run and deleted after it (named dv<pid>-<n>b; the TAPs end in s and c). Needs
    /// CAP_NET_ADMIN; the switch's --loss has no counterpart here.
    #[arg(long, conflicts_with = "loss")]
    tap: bool,
    /// Capture the client VM's NIC to this pcap file (tshark decodes it as RoCE).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    #[command(flatten)]
    spin: NativeSpinArgs,
    #[command(flatten)]
    vm: VmArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    /// UDP datagrams.
    Udp,
    /// One TCP connection.
    Tcp,
}

#[derive(Debug, Args)]
struct NetBenchArgs {
    /// The transport.
    #[arg(long, value_enum, default_value = "udp")]
    transport: TransportArg,
    /// Goodput message size in bytes: UDP datagram payload (16 to 1472; default 1472, the
    /// largest on a 1500-byte link) or TCP write (16 to 1048576; default 65536).
    #[arg(long)]
    size: Option<u32>,
    /// Goodput messages (0: no goodput measurement) [default: native UDP 100000, native TCP
    /// 2000, VM UDP 200, VM TCP 4; with --seconds, 100 million].
    #[arg(long)]
    count: Option<u64>,
    /// Stop sending goodput messages after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// UDP goodput: keep at most this many datagrams on the way, paced by credits the server
    /// sends back every WINDOW/8 datagrams, so the figure is what the path carries without
    /// overrunning the receiver. 0 sends as fast as OS B takes datagrams and counts what the
    /// receiver could not take as lost.
    #[arg(long, default_value_t = apps::netbench::DEFAULT_WINDOW)]
    window: u32,
    /// Round-trip message size in bytes (16 to the transport's largest).
    #[arg(long, default_value_t = 64)]
    rtt_size: u32,
    /// Round trips (0: none) [default: native 2000, VM 20].
    #[arg(long)]
    rtt_count: Option<u64>,
    /// Run the engines as host threads instead of in VMs.
    #[arg(long)]
    native: bool,
    /// Measure against the host over this TAP interface instead of between two endpoints on
    /// the built-in switch. The agent creates it if missing, gives it --host-address and
    /// brings it up (this needs CAP_NET_ADMIN), and serves the benchmark on that address.
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
    /// The host's address on the TAP (prefix length 24).
    #[arg(long, default_value = "10.77.1.1")]
    host_address: Ipv4Addr,
    /// The endpoint's address on the TAP (prefix length 24).
    #[arg(long, default_value = "10.77.1.2")]
    guest_address: Ipv4Addr,
    #[command(flatten)]
    spin: NativeSpinArgs,
    #[command(flatten)]
    vm: VmArgs,
}

#[derive(Debug, Args)]
struct BenchSuiteArgs {
    /// Run the engines as host threads instead of in VMs.
    #[arg(long)]
    native: bool,
    /// Goodput rounds [default: native 5, VM 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    runs: Option<u32>,
    /// Latency pairs [default: native 9, VM 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    lat_pairs: Option<u32>,
    /// UDP datagrams per goodput measurement [default: native 320000, VM 200].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    udp_count: Option<u64>,
    /// TCP writes of 64 KiB per goodput measurement [default: native 2000, VM 4].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    tcp_count: Option<u64>,
    /// Round trips per UDP and TCP measurement [default: native 2000, VM 20].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rtt_count: Option<u64>,
    /// RDMA WRITEs of 64 KiB [default: native 5000, VM 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rdma_iters: Option<u32>,
    /// write_lat round trips [default: native 2000, VM 20].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    lat_iters: Option<u32>,
    #[command(flatten)]
    spin: NativeSpinArgs,
    #[command(flatten)]
    vm: VmArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HandshakeArg {
    /// ibv_rc_pingpong's LID:QPN:PSN:GID exchange (duovm peers add their memory's key).
    RcPingpong,
    /// perftest's exchange; this endpoint is the client of a perftest server.
    Perftest,
}

#[derive(Debug, Args)]
struct RdmaArgs {
    /// The test.
    #[arg(long, value_enum, default_value = "rc-pingpong")]
    test: TestArg,
    /// The server's IPv4 address; without it this endpoint serves.
    #[arg(long)]
    server: Option<std::net::Ipv4Addr>,
    /// This endpoint's address and prefix, e.g. 10.77.0.2/24.
    #[arg(long, value_parser = parse_cidr)]
    ip: (std::net::Ipv4Addr, u8),
    /// The TAP interface of this endpoint's NIC (created if missing; put it on the peer's
    /// network yourself, or give --bridge).
    #[arg(long, value_name = "NAME")]
    tap: String,
    /// Add the TAP to this existing Linux bridge and bring it up (as `ip link set TAP master
    /// BRIDGE up`), for a peer on the bridge's network.
    #[arg(long, value_name = "BRIDGE")]
    bridge: Option<String>,
    /// The NIC's MAC address.
    #[arg(long, default_value = "02:d0:00:00:00:0b", value_parser = parse_mac)]
    mac: [u8; 6],
    /// Message size in bytes (ibv_rc_pingpong's and perftest's -s).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    size: u32,
    /// Messages (ibv_rc_pingpong's and perftest's -n).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// TCP port of the connection exchange.
    #[arg(long, default_value_t = roce::oob::DEFAULT_PORT)]
    port: u16,
    /// Path MTU (256, 512, 1024, 2048 or 4096; at most 1024 on the 1500-byte link).
    #[arg(long, default_value_t = 1024)]
    mtu: u32,
    #[command(flatten)]
    qp: QpArgs,
    /// The connection exchange the peer speaks.
    #[arg(long, value_enum, default_value = "rc-pingpong")]
    handshake: HandshakeArg,
    /// Run the engines as host threads instead of in a VM.
    #[arg(long)]
    native: bool,
    /// Capture this endpoint's frames to this pcap file.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    #[command(flatten)]
    vm: VmArgs,
}

#[derive(Debug, Args)]
struct ExitBenchArgs {
    /// Exits of each kind.
    #[arg(long, default_value_t = 2000)]
    count: u64,
    #[command(flatten)]
    vm: VmArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// What to run.
    #[arg(long, value_enum, default_value = "hello")]
    workload: WorkloadArg,
    /// Give OS B a virtio-net NIC on this TAP interface (created if missing; bring it up and
    /// address it yourself, e.g. in a network namespace). Without it, OS B's NIC (if the
    /// workload needs one) is on the built-in switch.
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
    /// Capture OS B's NIC to this pcap file (readable by tshark/wireshark).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// OS B's MAC address.
    #[arg(long, default_value = "02:d0:00:00:00:0b", value_parser = parse_mac)]
    mac: [u8; 6],
    #[command(flatten)]
    vm: VmArgs,
}

impl VmArgs {
    fn memory(&self) -> Result<MemoryMap> {
        MemoryMap::new(
            self.segment_mib << 20,
            self.segment_mib << 20,
            self.shared_mib << 20,
        )
        .map_err(|error| anyhow::anyhow!("memory sizes do not fit: {error}"))
    }

    fn images(&self) -> Result<[Vec<u8>; 2]> {
        let paths = match &self.images {
            Some(dir) => images::existing(dir)?,
            None => images::build(&images::default_dir(), !self.json)?,
        };
        Ok(images::read(&paths)?)
    }

    fn config(&self, images: [Vec<u8>; 2], workloads: [Workload; 2]) -> Result<VmConfig> {
        Ok(VmConfig {
            memory: self.memory()?,
            images,
            workloads,
            shared: SharedConfig::default(),
            net: NetConfig::default(),
            echo_serial: !self.quiet && !self.json,
            measure_exits: false,
            end: EndRequest::default(),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout.max(0.1))
    }
}

fn workload(kind: WorkloadKind) -> Workload {
    Workload {
        kind: kind as u32,
        ..Workload::default()
    }
}

fn print_report(report: &RunReport) {
    for os in &report.oses {
        println!("{}", os.summary);
        let exits = &os.exits;
        println!(
            "  exits: {} ({} fast path, {} supervisor); vCPU thread context switches: {} voluntary, {} involuntary",
            exits.total,
            exits.fast_path,
            exits.supervisor_path,
            os.context_switches.voluntary,
            os.context_switches.involuntary
        );
    }
    println!(
        "run took {:.2} s{}",
        report.seconds,
        if report.timed_out { " (timed out)" } else { "" }
    );
}

fn run_workload(args: &RunArgs) -> Result<RunReport> {
    let kind = match args.workload {
        WorkloadArg::Hello => WorkloadKind::Hello,
        WorkloadArg::TouchPeer => WorkloadKind::TouchPeerSegment,
        WorkloadArg::TripleFault => WorkloadKind::TripleFault,
        WorkloadArg::Spin => WorkloadKind::Spin,
        WorkloadArg::NicProbe => WorkloadKind::NicProbe,
    };
    let mut workload = workload(kind);
    workload.args[0] = 0x88b5;
    let images = args.vm.images()?;
    let mut config = args.vm.config(images, [workload; 2])?;
    let wants_nic = args.tap.is_some() || args.pcap.is_some() || kind == WorkloadKind::NicProbe;
    if wants_nic {
        config.net = NetConfig {
            mac: args.mac,
            has_nic: 1,
            ..NetConfig::default()
        };
    }
    let mut vm = Vm::build(&config).context("cannot build the VM")?;
    // Keeps the switch (and so the NIC's port) alive for the run.
    let switch = Switch::new(SwitchConfig::default());
    if wants_nic {
        let capture = match &args.pcap {
            Some(path) => Some(
                PcapWriter::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            ),
            None => None,
        };
        let backend: Box<dyn NetBackend> = match &args.tap {
            Some(name) => {
                Box::new(Tap::open(name).with_context(|| format!("cannot open TAP {name}"))?)
            }
            None => Box::new(switch.port(Some(args.mac))?),
        };
        vm.attach_nic(args.mac, backend, capture)?;
    }
    Ok(vm.run(args.vm.timeout())?)
}

/// Prints `report` as one JSON object, or as text through `print`.
fn output<T: serde::Serialize>(json: bool, report: &T, print: impl Fn(&T)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print(report);
    }
    Ok(())
}

/// Parses `a.b.c.d/len`.
fn parse_cidr(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (address, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("{text}: expected an address and prefix, e.g. 10.77.0.2/24"))?;
    let address = address
        .parse()
        .map_err(|error| format!("{address}: {error}"))?;
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|prefix| (1..=32).contains(prefix))
        .ok_or_else(|| format!("{prefix}: the prefix must be 1 to 32"))?;
    Ok((address, prefix))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
/// A loss probability: at least 0 and below 1 (a link that loses everything never connects).
fn parse_loss(text: &str) -> Result<f64, String> {
    let loss: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..1.0).contains(&loss) {
        Ok(loss)
    } else {
        Err(format!("{loss} is not at least 0 and below 1"))
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!(
            "{text} is not a MAC address like 02:d0:00:00:00:0b"
        ));
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{text} is not a MAC address"))?;
    }
    Ok(mac)
}

fn print_ring_report(report: &RingBenchReport) {
    println!(
        "ring: {} descriptors of {} B in batches of {}: {} ({} rejected)",
        report.descriptors,
        report.size,
        report.batch,
        if report.verified {
            "every payload verified"
        } else {
            "NOT verified"
        },
        report.rejected
    );
    println!(
        "ring: {:.3} s in the guests, {:.0} descriptors/s; {} IPIs ({:.3} per 1000 descriptors), {} sleeps, {} spins of at most {} us",
        report.seconds,
        report.descriptors_per_sec,
        report.ipis_sent,
        report.ipis_per_1000_descriptors,
        report.sleeps,
        report.spins,
        report.spin_us
    );
    if let Some(total) = report.exits.get("total") {
        println!(
            "ring: {} exits to user space in all ({} fast path, {} supervisor)",
            total.total, total.fast_path, total.supervisor_path
        );
    }
}

fn ring_bench(args: &RingBenchArgs) -> Result<bool> {
    let params = RingBenchParams {
        descriptors: args.descriptors,
        size: args.size,
        batch: args.batch,
        hostile_after: None,
        spin_us: args.spin_us,
    };
    let images = args.vm.images()?;
    let config = args.vm.config(images, [Workload::default(); 2])?;
    let (report, _) = ringbench::run(config, &params, args.vm.timeout())?;
    output(args.vm.json, &report, print_ring_report)?;
    Ok(report.verified)
}

fn print_rdma_report(report: &RdmaBenchReport) {
    let path = match report.path {
        "switch" => String::new(),
        path => format!(", {path}"),
    };
    // Unlimited retries are the default (as ibv_rc_pingpong's); say so only when it is not.
    let retries = match report.retry_cnt {
        apps::rdma::DEFAULT_RETRY_CNT => String::new(),
        retries => format!(" x {retries} retries"),
    };
    let icrc = match report.icrc {
        "nic" => ", ICRC by the NICs",
        _ => "",
    };
    println!(
        "rdma: {} ({}{path}), {} x {} B, MTU {}, QP timeout {}{retries}, loss {}{icrc}: {}",
        report.test,
        report.mode,
        report.figures.messages,
        report.size,
        report.mtu,
        qp_timeout_text(report.qp_timeout),
        report.loss,
        if report.verified {
            "every byte and completion verified"
        } else {
            "NOT verified"
        }
    );
    print_figures(&report.figures);
    if let Some(error) = &report.error {
        println!("rdma: failed, {error}");
    }
}

/// A local ACK timeout as people read it: `20 (4.29 s)`.
fn qp_timeout_text(timeout: u8) -> String {
    if timeout == 0 {
        return "0 (never)".to_owned();
    }
    let seconds = (4096u64 << timeout.min(31)) as f64 / 1e9;
    if seconds < 1.0 {
        format!("{timeout} ({:.0} ms)", seconds * 1e3)
    } else {
        format!("{timeout} ({seconds:.2} s)")
    }
}

fn print_figures(figures: &Figures) {
    // Bandwidth tests measure no latency (their JSON says 0).
    let latency = if figures.lat_p50_us > 0.0 || figures.lat_p99_us > 0.0 {
        format!(
            ", latency p50 {:.1} us p99 {:.1} us",
            figures.lat_p50_us, figures.lat_p99_us
        )
    } else {
        String::new()
    };
    println!(
        "rdma: {:.3} s, {}, {:.0} messages/s{latency}, {} retransmissions",
        figures.seconds,
        rate(figures.gbit_per_sec),
        figures.messages_per_sec,
        figures.retransmissions
    );
}

/// The end of each OS's log, for a run that went wrong.
fn print_failure_logs(runs: &[RunReport]) {
    for (index, run) in runs.iter().enumerate() {
        for os in &run.oses {
            println!("vm {} OS {}: {}", index + 1, os.os, os.summary);
            let skip = os.serial_lines.len().saturating_sub(8);
            for line in &os.serial_lines[skip..] {
                println!("  [{}] {line}", os.os);
            }
        }
    }
}

/// `--mtu`: a path MTU whose packets the link carries.
fn path_mtu(bytes: u32) -> Result<Mtu> {
    let mtu = Mtu::from_bytes(bytes)
        .ok_or_else(|| anyhow::anyhow!("--mtu must be 256, 512, 1024, 2048 or 4096"))?;
    let link = netsvc::config::LINK_MTU as u32;
    let largest = Mtu::for_link_mtu(link).unwrap_or(Mtu::Mtu256);
    if mtu > largest {
        anyhow::bail!(
            "--mtu {bytes} does not fit the {link}-byte link (a RoCE packet adds up to 72 bytes \
             of headers to its payload); at most {}",
            largest.bytes()
        );
    }
    Ok(mtu)
}

fn rdma_bench(args: &RdmaBenchArgs) -> Result<bool> {
    let mtu = path_mtu(args.mtu)?;
    let params = RdmaBenchParams {
        test: args.test.test(),
        size: args.size,
        iters: args.iters,
        loss: args.loss,
        mtu,
        qp_timeout: args.qp.qp_timeout,
        retry_cnt: args.qp.retry_cnt,
        stall_timeout: args.qp.stall_timeout,
        icrc_offload: !args.qp.no_icrc_offload,
        path: if args.tap {
            RdmaPath::Tap
        } else {
            RdmaPath::Switch
        },
    };
    let report = if args.native {
        let echo = !args.vm.quiet && !args.vm.json;
        rdmabench::run_native(&params, args.spin.tuning(), echo)?.0
    } else {
        let images = args.vm.images()?;
        let config = args.vm.config(images, [Workload::default(); 2])?;
        let (report, runs) =
            rdmabench::run_vms(&config, &params, args.vm.timeout(), args.pcap.as_deref())?;
        if !report.verified && !args.vm.json {
            print_failure_logs(&runs);
        }
        report
    };
    output(args.vm.json, &report, print_rdma_report)?;
    Ok(report.verified)
}

fn print_net_report(report: &NetBenchReport) {
    println!(
        "net: {} over the {} ({}): {} of {} messages of {} B received ({} lost), {}",
        report.transport,
        report.path,
        report.mode,
        report.received,
        report.messages,
        report.size,
        report.lost,
        if report.verified {
            "every message verified"
        } else {
            "NOT verified"
        }
    );
    println!(
        "net: goodput {}, {:.0} packets/s over {:.3} s; {} round trips of {} B: p50 {:.1} us, p99 {:.1} us",
        rate(report.gbit_per_sec),
        report.packets_per_sec,
        report.seconds,
        report.round_trips,
        report.rtt_size,
        report.rtt_us_p50,
        report.rtt_us_p99
    );
    if let Some(error) = &report.error {
        println!("net: failed, {error}");
    }
}

fn net_bench(args: &NetBenchArgs) -> Result<bool> {
    let transport = match args.transport {
        TransportArg::Udp => Transport::Udp,
        TransportArg::Tcp => Transport::Tcp,
    };
    let size = args.size.unwrap_or(match transport {
        Transport::Udp => apps::netbench::MAX_UDP_SIZE as u32,
        Transport::Tcp => 65536,
    });
    let sizes = 16..=transport.max_size() as u32;
    if !sizes.contains(&size) || !sizes.contains(&args.rtt_size) {
        anyhow::bail!(
            "--size and --rtt-size must be 16 to {} for {}",
            transport.max_size(),
            transport.name()
        );
    }
    let duration_ms = match args.seconds {
        Some(seconds) if seconds > 0.0 && seconds < 1e6 => (seconds * 1000.0).ceil() as u32,
        Some(_) => anyhow::bail!("--seconds must be positive (and under a million)"),
        None => 0,
    };
    let count = args
        .count
        .unwrap_or(match (duration_ms, args.native, transport) {
            (1.., _, _) => 100_000_000,
            (0, true, Transport::Udp) => 100_000,
            (0, true, Transport::Tcp) => 2000,
            (0, false, Transport::Udp) => 200,
            (0, false, Transport::Tcp) => 4,
        });
    let rtt_count = args
        .rtt_count
        .unwrap_or(if args.native { 2000 } else { 20 });
    if count == 0 && rtt_count == 0 {
        anyhow::bail!("nothing to measure: --count and --rtt-count are both 0");
    }
    let params = NetBenchParams {
        transport,
        size,
        count,
        duration_ms,
        window: args.window,
        rtt_size: args.rtt_size,
        rtt_count,
    };
    let path = match &args.tap {
        Some(name) => NetPath::Tap(TapPath {
            name: name.clone(),
            host: args.host_address,
            guest: args.guest_address,
            prefix_len: 24,
        }),
        None => NetPath::Switch,
    };
    let report = if args.native {
        let echo = !args.vm.quiet && !args.vm.json;
        let (report, logs) = netbench::run_native(&params, &path, args.spin.tuning(), echo)?;
        if !report.verified && !args.vm.json && !echo {
            for (index, lines) in logs.iter().enumerate() {
                let skip = lines.len().saturating_sub(8);
                for line in &lines[skip..] {
                    println!("  [n{}] {line}", index + 1);
                }
            }
        }
        report
    } else {
        let images = args.vm.images()?;
        let config = args.vm.config(images, [Workload::default(); 2])?;
        let (report, runs) = netbench::run_vms(&config, &params, &path, args.vm.timeout())?;
        if !report.verified && !args.vm.json {
            print_failure_logs(&runs);
        }
        report
    };
    output(args.vm.json, &report, print_net_report)?;
    Ok(report.verified)
}

fn print_suite_report(report: &SuiteReport) {
    let comparison = &report.comparison;
    let rounds = match report.runs {
        1 => "one round".to_owned(),
        runs => format!("median of {runs} rounds"),
    };
    let pairs = match report.lat_pairs {
        1 => "one pair".to_owned(),
        pairs => format!("median of {pairs} pairs"),
    };
    // Native runs say how their endpoints ran (`--pin`).
    let mode = match report.write_lat.median.placement {
        Some(placement) => format!("{}, placement {placement}", report.mode),
        None => report.mode.to_string(),
    };
    println!(
        "suite ({mode}, {rounds}): UDP {} B {}, UDP {} B {}, TCP {}",
        report.udp.median.size,
        rate(report.udp.median.gbit_per_sec),
        report.udp_largest.median.size,
        rate(report.udp_largest.median.gbit_per_sec),
        rate(report.tcp.median.gbit_per_sec)
    );
    println!(
        "suite: round trips of {} B ({pairs}): UDP p50 {:.1} us, RDMA WRITE p50 {:.1} us (write_lat {:.1} us); TCP p50 {:.1} us",
        comparison.rtt_size,
        comparison.udp_rtt_us_p50,
        comparison.rdma_rtt_us_p50,
        comparison.rdma_write_lat_us_p50,
        report.tcp.median.rtt_us_p50,
    );
    println!(
        "suite: RDMA WRITE {} B at MTU {}: {} = {} x UDP with {} B datagrams (goal >= {}: {})",
        comparison.rdma_size,
        comparison.rdma_mtu,
        rate(comparison.rdma_write_gbit_per_sec),
        ratio_text(comparison.goodput_ratio, comparison.goodput_goal),
        comparison.udp_size,
        comparison.goodput_goal,
        if comparison.goodput_goal_met {
            "met"
        } else {
            "NOT met"
        }
    );
    let pair_ratios: Vec<String> = comparison
        .latency_ratio_pairs
        .iter()
        .map(|ratio| format!("{ratio:.2}"))
        .collect();
    println!(
        "suite: RDMA round trip = {} x UDP's (pairs: {}; goal <= {}: {}); {}",
        ratio_text(comparison.latency_ratio, comparison.latency_goal),
        pair_ratios.join(" "),
        comparison.latency_goal,
        if comparison.latency_goal_met {
            "met"
        } else {
            "NOT met"
        },
        if report.verified {
            "every measurement verified"
        } else {
            "NOT verified"
        }
    );
}

fn bench_suite(args: &BenchSuiteArgs) -> Result<bool> {
    let defaults = if args.native {
        SuiteParams::NATIVE
    } else {
        SuiteParams::VM
    };
    let params = SuiteParams {
        runs: args.runs.unwrap_or(defaults.runs),
        udp_count: args.udp_count.unwrap_or(defaults.udp_count),
        tcp_count: args.tcp_count.unwrap_or(defaults.tcp_count),
        rtt_count: args.rtt_count.unwrap_or(defaults.rtt_count),
        lat_pairs: args.lat_pairs.unwrap_or(defaults.lat_pairs),
        rdma_iters: args.rdma_iters.unwrap_or(defaults.rdma_iters),
        lat_iters: args.lat_iters.unwrap_or(defaults.lat_iters),
    };
    let json = args.vm.json;
    let progress = |line: &str| {
        if !json {
            println!("{line}");
        }
    };
    let report = if args.native {
        let mode = SuiteMode::Native {
            tuning: args.spin.tuning(),
        };
        benchsuite::run(&mode, &params, progress)?
    } else {
        let images = args.vm.images()?;
        let config = args.vm.config(images, [Workload::default(); 2])?;
        let mode = SuiteMode::Vm {
            base: &config,
            timeout: args.vm.timeout(),
        };
        benchsuite::run(&mode, &params, progress)?
    };
    output(json, &report, print_suite_report)?;
    Ok(report.verified)
}

fn rdma(args: &RdmaArgs) -> Result<bool> {
    let mtu = path_mtu(args.mtu)?;
    let handshake = match args.handshake {
        HandshakeArg::RcPingpong => Handshake::RcPingpong,
        HandshakeArg::Perftest => Handshake::Perftest,
    };
    if handshake == Handshake::Perftest && args.server.is_none() {
        anyhow::bail!("with --handshake perftest this endpoint is a client: give --server");
    }
    let (ipv4, prefix_len) = args.ip;
    let params = TestParams {
        test: args.test.test(),
        size: args.size,
        iters: args.iters,
        server: args.server,
        local: ipv4,
        port: args.port,
        mtu,
        handshake,
        qp_timeout: args.qp.qp_timeout.unwrap_or(if args.native {
            apps::rdma::DEFAULT_QP_TIMEOUT
        } else {
            rdmabench::VM_QP_TIMEOUT
        }),
        retry_cnt: args.qp.retry_cnt,
        stall_timeout: args.qp.stall_timeout,
    };
    let identity = Identity {
        mac: args.mac,
        ipv4,
        prefix_len,
        icrc_offload: !args.qp.no_icrc_offload,
    };
    let tap = Tap::open(&args.tap).with_context(|| format!("cannot open TAP {}", args.tap))?;
    if let Some(bridge) = &args.bridge {
        netif::add_to_bridge(bridge, tap.name())?;
    }
    let echo = !args.vm.quiet && !args.vm.json;
    let capture = match &args.pcap {
        Some(path) => Some(
            PcapWriter::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => None,
    };
    let (result, mode, error) = if args.native {
        let backend: Box<dyn NetBackend> = match capture {
            Some(capture) => Box::new(Captured {
                inner: tap,
                capture,
            }),
            None => Box::new(tap),
        };
        let (result, native) = endpoint::run_native(&params, identity, backend, echo)?;
        let error = endpoint::failure(&native.lines, "rdma").map(str::to_owned);
        if (error.is_some() || result.is_none()) && !echo {
            for line in native.lines.iter().rev().take(8).rev() {
                eprintln!("  {line}");
            }
        }
        (result, "native", error)
    } else {
        let images = args.vm.images()?;
        let config = args.vm.config(images, [Workload::default(); 2])?;
        let (result, run) = endpoint::run_vm(
            &config,
            &params,
            identity,
            Box::new(tap),
            capture,
            args.vm.timeout(),
        )?;
        let error = endpoint::vm_failure(&run, "rdma");
        if error.is_some() && !args.vm.json {
            print_failure_logs(std::slice::from_ref(&run));
        }
        (Some(result), "vm", error)
    };
    let report = EndpointReport::new(&params, mode, &identity, result.as_ref(), error);
    if args.vm.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "rdma: {} {} ({}, {} exchange) with {}: {} x {} B, MTU {}, QP timeout {}: {}",
            report.test,
            report.role,
            report.mode,
            report.handshake,
            report.peer,
            report.figures.messages,
            report.size,
            report.mtu,
            qp_timeout_text(report.qp_timeout),
            if report.verified {
                "every completion and check passed"
            } else {
                "FAILED"
            }
        );
        if result.is_some() {
            print_figures(&report.figures);
        }
        if let Some(error) = &report.error {
            println!("rdma: failed, {error}");
        }
    }
    Ok(report.verified)
}

fn exit_bench(args: &ExitBenchArgs) -> Result<bool> {
    let images = args.vm.images()?;
    let config = args.vm.config(images, [Workload::default(); 2])?;
    let report = exitbench::run(config, args.count, args.vm.timeout())?;
    if args.vm.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for (name, path) in [
            ("fast path", &report.fast_path),
            ("supervisor path", &report.supervisor_path),
        ] {
            println!(
                "{name}: {} exits, {:.1} us each on the host, {} voluntary + {} involuntary context switches ({:.4} per exit)",
                path.exits,
                path.host_us_per_exit,
                path.context_switches.voluntary,
                path.context_switches.involuntary,
                path.context_switches_per_exit
            );
        }
    }
    Ok(report.success)
}

fn demo(args: &DemoArgs) -> Result<bool> {
    let json = args.vm.json;
    let started = std::time::Instant::now();
    let images = args.vm.images()?;
    if !json {
        println!("== stage 1: boot OS A and OS B in one VM and exchange IPIs");
    }
    let config = args
        .vm
        .config(images.clone(), [workload(WorkloadKind::Hello); 2])?;
    let hello = Vm::build(&config)
        .context("cannot build the VM")?
        .run(args.vm.timeout())?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "stage": "hello", "success": hello.success(), "report": hello })
        );
    } else {
        print_report(&hello);
        println!(
            "stage 1 {}",
            if hello.success() {
                "passed: both OSes booted, IPIs delivered both ways"
            } else {
                "FAILED"
            }
        );
    }
    if !hello.success() {
        return Ok(false);
    }

    host_agent::interrupt::check()?;
    if !json {
        println!();
        println!(
            "== stage 2: OS A -> OS B through the shared ring (every payload verified by OS B)"
        );
    }
    let params = RingBenchParams {
        descriptors: 20_000,
        size: 64,
        batch: 32,
        hostile_after: None,
        spin_us: RingBenchParams::DEFAULT_SPIN_US,
    };
    let config = args.vm.config(images.clone(), [Workload::default(); 2])?;
    let (ring, _) = ringbench::run(
        config,
        &params,
        args.vm.timeout().max(Duration::from_secs(300)),
    )?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "stage": "ring", "success": ring.verified, "report": ring })
        );
    } else {
        print_ring_report(&ring);
        println!(
            "stage 2 {}",
            if ring.verified { "passed" } else { "FAILED" }
        );
    }
    if !ring.verified {
        return Ok(false);
    }

    host_agent::interrupt::check()?;
    if !json {
        println!();
        println!(
            "== stage 3: two VMs on the built-in switch; each OS B's virtio-net NIC reaches the other"
        );
    }
    let probe = Workload {
        kind: WorkloadKind::NicProbe as u32,
        flags: 0,
        args: [0x88b5, 0, 0, 0, 0, 0],
    };
    let members = (1..=2u8)
        .map(|index| {
            let mut config = args.vm.config(images.clone(), [probe; 2])?;
            config.net = NetConfig {
                mac: [0x02, 0xd0, 0, 0, index, 0x0b],
                has_nic: 1,
                ..NetConfig::default()
            };
            Ok(Member {
                config,
                nic: None,
                capture: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let switch = Switch::new(SwitchConfig::default());
    let reports = run_group(members, &switch, args.vm.timeout())?;
    let passed = reports.iter().all(RunReport::success);
    if json {
        println!(
            "{}",
            serde_json::json!({ "stage": "switch", "success": passed, "reports": reports })
        );
    } else {
        for (index, report) in reports.iter().enumerate() {
            let nic = report.nic.unwrap_or_default();
            println!(
                "vm {}: {}; its NIC sent {} frames and received {}",
                index + 1,
                report.os(shm_ring::layout::Role::B).summary,
                nic.tx_packets,
                nic.rx_packets
            );
        }
        println!("stage 3 {}", if passed { "passed" } else { "FAILED" });
    }
    if !passed {
        return Ok(false);
    }

    host_agent::interrupt::check()?;
    if !json {
        println!();
        println!(
            "== stage 4: RDMA between the two VMs: OS A's verbs engine speaks RoCEv2, OS B carries it"
        );
    }
    let mut all = true;
    let mut between_vms = Vec::new();
    for (test, size, iters) in [
        (Test::WriteBw, 65536, 8),
        (Test::ReadLat, 64, 20),
        (Test::AtomicLat, 8, 20),
    ] {
        let params = RdmaBenchParams::new(test, size, iters);
        host_agent::interrupt::check()?;
        let config = args.vm.config(images.clone(), [Workload::default(); 2])?;
        let (report, runs) = rdmabench::run_vms(
            &config,
            &params,
            args.vm.timeout().max(Duration::from_secs(300)),
            None,
        )?;
        all &= report.verified;
        if !report.verified && !json {
            print_failure_logs(&runs);
        }
        if json {
            println!(
                "{}",
                serde_json::json!({ "stage": "rdma", "success": report.verified, "report": report })
            );
        } else {
            print_rdma_report(&report);
        }
        between_vms.push(report);
    }
    if !json {
        println!("stage 4 {}", if all { "passed" } else { "FAILED" });
        println!();
        println!(
            "== stage 5: the same engines as host threads (native mode), on the same switch: how fast,"
        );
        println!(
            "   RDMA side by side with UDP over the same path, alternating, {} rounds and {} latency pairs",
            SuiteParams::DEMO.runs,
            SuiteParams::DEMO.lat_pairs
        );
        println!(
            "   (in the VMs above the guests' instructions are emulated, so those figures measure the emulator)"
        );
    }
    let mode = SuiteMode::Native {
        tuning: NativeTuning::default(),
    };
    let native = benchsuite::run(&mode, &SuiteParams::DEMO, |line| {
        if !json {
            println!("  {line}");
        }
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "stage": "native", "success": native.verified, "report": native })
        );
    } else {
        print_suite_report(&native);
        println!(
            "stage 5 {}",
            if native.verified { "passed" } else { "FAILED" }
        );
        print_demo_summary(
            started.elapsed(),
            (&ring, &between_vms, &native),
            all && native.verified,
        );
    }
    Ok(all && native.verified)
}

/// The demo's last lines: what ran, and the figures that matter.
fn print_demo_summary(
    elapsed: Duration,
    (ring, between_vms, native): (&RingBenchReport, &[RdmaBenchReport], &SuiteReport),
    passed: bool,
) {
    let figure = |report: &RdmaBenchReport| {
        let size = match report.size {
            size if size >= 1024 && size.is_multiple_of(1024) => format!("{} KiB", size / 1024),
            size => format!("{size} B"),
        };
        let value = match report.figures.lat_p50_us {
            0.0 => rate(report.figures.gbit_per_sec),
            p50 if p50 >= 1000.0 => format!("p50 {:.1} ms", p50 / 1000.0),
            p50 => format!("p50 {p50:.1} us"),
        };
        format!("{} {size} {value}", report.test)
    };
    let line = |reports: &[RdmaBenchReport]| {
        let figures = reports.iter().map(figure).collect::<Vec<_>>().join(", ");
        let verdict = if reports.iter().all(|report| report.verified) {
            "all verified"
        } else {
            "NOT all verified"
        };
        format!("{figures}; {verdict}")
    };
    println!();
    println!(
        "== summary: {} in {:.1} s",
        if passed {
            "every stage passed"
        } else {
            "a stage FAILED (see above)"
        },
        elapsed.as_secs_f64()
    );
    println!(
        "   one VM, two OSes    booted, IPIs both ways, {} ring descriptors verified by OS B",
        ring.descriptors
    );
    println!("   two VMs (emulated)  {}", line(between_vms));
    let compared = &native.comparison;
    println!(
        "   native engines      write_bw 64 KiB {}, {} x UDP over the same path ({})",
        rate(compared.rdma_write_gbit_per_sec),
        ratio_text(compared.goodput_ratio, compared.goodput_goal),
        rate(compared.udp_gbit_per_sec),
    );
    println!(
        "                       RDMA WRITE round trip 64 B p50 {:.1} us, {} x UDP's ({:.1} us); {}",
        compared.rdma_rtt_us_p50,
        ratio_text(compared.latency_ratio, compared.latency_goal),
        compared.udp_rtt_us_p50,
        if native.verified {
            "all verified"
        } else {
            "NOT all verified"
        }
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = host_agent::interrupt::install() {
        eprintln!("host-agent: cannot handle Ctrl-C: {error}");
    }
    let result = match &cli.command {
        Command::Demo(args) => demo(args),
        Command::RingBench(args) => ring_bench(args),
        Command::ExitBench(args) => exit_bench(args),
        Command::RdmaBench(args) => rdma_bench(args),
        Command::NetBench(args) => net_bench(args),
        Command::BenchSuite(args) => bench_suite(args),
        Command::Rdma(args) => rdma(args),
        Command::Run(args) => run_workload(args).map(|report| {
            if args.vm.json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print_report(&report);
            }
            report.success()
        }),
        Command::BuildImages { images: dir } => {
            images::build(dir, true).map(|_| true).map_err(Into::into)
        }
    };
    if host_agent::interrupt::requested() {
        if let Err(error) = &result {
            eprintln!("host-agent: error: {error:#}");
        }
        eprintln!("host-agent: interrupted");
        return ExitCode::from(130);
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("host-agent: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test `rdma-bench` (or `rdma`) was asked for.
    fn test_of(args: &[&str]) -> Test {
        match Cli::try_parse_from(args).map(|cli| cli.command) {
            Ok(Command::RdmaBench(args)) => args.test.test(),
            Ok(Command::Rdma(args)) => args.test.test(),
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn tests_take_kebab_and_snake_case_names() {
        for (kebab, snake, test) in [
            ("write-bw", "write_bw", Test::WriteBw),
            ("write-lat", "write_lat", Test::WriteLat),
            ("read-lat", "read_lat", Test::ReadLat),
            ("send-bw", "send_bw", Test::SendBw),
            ("atomic-lat", "atomic_lat", Test::AtomicLat),
            ("rc-pingpong", "rc_pingpong", Test::Pingpong),
        ] {
            for name in [kebab, snake] {
                assert_eq!(test_of(&["host-agent", "rdma-bench", "--test", name]), test);
            }
        }
        assert_eq!(
            test_of(&[
                "host-agent",
                "rdma",
                "--tap",
                "t0",
                "--ip",
                "10.0.0.2/24",
                "--test",
                "read_lat"
            ]),
            Test::ReadLat
        );
        assert!(Cli::try_parse_from(["host-agent", "rdma-bench", "--test", "write"]).is_err());
    }

    #[test]
    fn rdma_bench_over_taps_takes_no_loss() {
        let parsed = Cli::try_parse_from(["host-agent", "rdma-bench", "--native", "--tap"]);
        assert!(matches!(
            parsed.map(|cli| cli.command),
            Ok(Command::RdmaBench(RdmaBenchArgs { tap: true, .. }))
        ));
        let lossy = ["host-agent", "rdma-bench", "--tap", "--loss", "0.1"];
        assert!(Cli::try_parse_from(lossy).is_err());
    }
}
