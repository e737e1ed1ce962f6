//! `host-agent`: the duovm VMM's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use apps::rdma::Test;
use clap::{Args, Parser, Subcommand, ValueEnum};
use host_agent::cluster::{Member, run_group};
use host_agent::devices::net_backend::NetBackend;
use host_agent::devices::pcap::PcapWriter;
use host_agent::devices::switch::{Switch, SwitchConfig};
use host_agent::devices::tap::Tap;
use host_agent::rdmabench::{self, RdmaBenchParams, RdmaBenchReport};
use host_agent::ringbench::{self, RingBenchParams, RingBenchReport};
use host_agent::vm::{RunReport, Vm, VmConfig};
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
#[derive(Debug, Parser)]
#[command(name = "host-agent", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The tour: boot the pair, exchange IPIs, move verified data through the ring, report.
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
    /// Run an RDMA test between two endpoints on the built-in switch.
    ///
    /// Endpoint 1 (10.77.9.1) serves, endpoint 2 (10.77.9.2) is the client; they connect
    /// over TCP 18515 as ibv_rc_pingpong does and run the test, checking every byte and
    /// completion. Without --native each endpoint is a VM (OS A runs the verbs engine, OS B
    /// carries its RoCEv2 packets); with --native the same engines run as host threads.
    /// JSON keys: test, mode, size, iters, mtu, loss, messages, bytes, seconds, gbit_per_sec,
    /// messages_per_sec, lat_p50_us, lat_p99_us, retransmissions, verified.
    RdmaBench(RdmaBenchArgs),
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
    #[arg(long, default_value_t = 100_000)]
    descriptors: u64,
    /// Payload bytes per descriptor (16 to 2048).
    #[arg(long, default_value_t = 64)]
    size: u64,
    /// Descriptors per batch.
    #[arg(long, default_value_t = 32)]
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TestArg {
    /// RDMA WRITE bandwidth.
    WriteBw,
    /// RDMA WRITE latency (ping-pong of WRITE with immediate).
    WriteLat,
    /// RDMA READ latency.
    ReadLat,
    /// SEND bandwidth.
    SendBw,
    /// FETCH_AND_ADD latency.
    AtomicLat,
    /// ibv_rc_pingpong's SEND ping-pong.
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

#[derive(Debug, Args)]
struct RdmaBenchArgs {
    /// The test.
    #[arg(long, value_enum, default_value = "write-bw")]
    test: TestArg,
    /// Message size in bytes.
    #[arg(long, default_value_t = 65536)]
    size: u32,
    /// Messages.
    #[arg(long, default_value_t = 100)]
    iters: u32,
    /// Frame loss the switch injects (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Path MTU (256, 512, 1024, 2048 or 4096; at most 1024 on the 1500-byte switch).
    #[arg(long, default_value_t = 1024)]
    mtu: u32,
    /// Run the engines as host threads instead of in VMs.
    #[arg(long)]
    native: bool,
    /// Capture the client VM's NIC to this pcap file (tshark decodes it as RoCE).
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

/// Parses `aa:bb:cc:dd:ee:ff`.
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
    if !(16..=2048).contains(&args.size) || args.batch == 0 || args.descriptors == 0 {
        anyhow::bail!("--size must be 16 to 2048, --batch and --descriptors at least 1");
    }
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
    if args.vm.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_ring_report(&report);
    }
    Ok(report.verified)
}

fn print_rdma_report(report: &RdmaBenchReport) {
    println!(
        "rdma: {} ({}), {} x {} B, MTU {}, loss {}: {}",
        report.test,
        report.mode,
        report.messages,
        report.size,
        report.mtu,
        report.loss,
        if report.verified {
            "every byte and completion verified"
        } else {
            "NOT verified"
        }
    );
    println!(
        "rdma: {:.3} s, {:.3} Gbit/s, {:.0} messages/s, latency p50 {:.1} us p99 {:.1} us, {} retransmissions",
        report.seconds,
        report.gbit_per_sec,
        report.messages_per_sec,
        report.lat_p50_us,
        report.lat_p99_us,
        report.retransmissions
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

fn rdma_bench(args: &RdmaBenchArgs) -> Result<bool> {
    let mtu = Mtu::from_bytes(args.mtu)
        .ok_or_else(|| anyhow::anyhow!("--mtu must be 256, 512, 1024, 2048 or 4096"))?;
    if !(0.0..1.0).contains(&args.loss) || args.iters == 0 || args.size == 0 {
        anyhow::bail!("--loss must be in [0, 1), --iters and --size at least 1");
    }
    let params = RdmaBenchParams {
        test: args.test.test(),
        size: args.size,
        iters: args.iters,
        loss: args.loss,
        mtu,
    };
    let report = if args.native {
        rdmabench::run_native(&params, !args.vm.quiet && !args.vm.json)?.0
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
    if args.vm.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_rdma_report(&report);
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

    if !json {
        println!();
        println!(
            "== stage 4: RDMA between the two VMs: OS A's verbs engine speaks RoCEv2, OS B carries it"
        );
    }
    let mut all = true;
    for (test, size, iters) in [
        (Test::WriteBw, 65536, 8),
        (Test::ReadLat, 64, 20),
        (Test::AtomicLat, 8, 20),
    ] {
        let params = RdmaBenchParams {
            test,
            size,
            iters,
            loss: 0.0,
            mtu: Mtu::Mtu1024,
        };
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
    }
    if !json {
        println!("stage 4 {}", if all { "passed" } else { "FAILED" });
        println!();
        println!(
            "In these VMs the guests' instructions are emulated, so the figures above measure the emulator; \
             `host-agent rdma-bench --native` runs the same engines at host speed."
        );
    }
    Ok(all)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => demo(args),
        Command::RingBench(args) => ring_bench(args),
        Command::ExitBench(args) => exit_bench(args),
        Command::RdmaBench(args) => rdma_bench(args),
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
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("host-agent: error: {error:#}");
            ExitCode::from(2)
        }
    }
}
