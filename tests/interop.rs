//! duovm against Linux SoftRoCE: rdma-core's `ibv_rc_pingpong` and perftest's servers, running
//! over the kernel's rdma_rxe driver in a QEMU guest (Debian's kernel and packages, built by
//! `tests/interop/peer/build.sh` once and cached), as duovm's peers.
//!
//! Each test makes a network namespace with a bridge, a TAP for the Linux peer and a TAP for
//! a duovm VM; the peer runs its tools from a script, duovm runs one VM per tool invocation.
//! Both sides must report success with the same byte counts, and every RoCE packet either
//! side sent must carry a correct ICRC, checked by an implementation written here from the
//! specification (rdma_rxe drops a packet with a bad ICRC silently, so a hang is what a wrong
//! ICRC would look like).
//!
//! The tests run one at a time: the peer's emulated CPU and the VM's share two cores.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use apps::rdma::{DEFAULT_QP_TIMEOUT, Handshake, Test, TestParams};
use duovm_tests::{NetNs, config, kvm_available, run_command, source_root, tap_available};
use host_agent::devices::pcap::{Captured, PcapWriter};
use host_agent::devices::tap::Tap;
use host_agent::endpoint::{self, Identity};
use roce::verbs::Mtu;
use shm_ring::bootinfo::Workload;
use shm_ring::layout::Role;

const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 30, 1);
const DUOVM_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 30, 2);
const DUOVM_MAC: [u8; 6] = [0x02, 0xd0, 0x00, 0x4d, 0x1e, 0x02];
const PEER_MAC: &str = "52:54:00:4d:1e:01";

/// One test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether everything the interop tests need is here; says loudly what is missing.
fn available(test: &str) -> bool {
    kvm_available(test) && tap_available(test)
}

/// The peer's kernel and initramfs, built (or found up to date) once per test process.
fn peer_image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("DUOVM_PEER_CACHE")
            .map_or_else(|| PathBuf::from("/var/cache/duovm/rxe-peer"), PathBuf::from);
        let script = source_root().join("tests/interop/peer/build.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg("--cache")
            .arg(&dir)
            .output()
            .expect("run the peer image builder");
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success(),
            "building the SoftRoCE peer failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        dir
    })
}

/// A namespace with a bridge, the peer's TAP on it, and duovm's TAPs (one per VM) joining it.
struct Lab {
    ns: NetNs,
    tag: String,
    peer_tap: String,
    dir: PathBuf,
    /// Frame loss (percent) the peer's NIC applies each way.
    loss: Option<f64>,
    runs: std::cell::Cell<u32>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let ns = NetNs::new(tag);
        let id = std::process::id() % 10_000;
        let peer_tap = format!("dvp{tag}{id}");
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["link", "set", "br0", "up"]);
        ns.ip(&["addr", "add", "10.77.30.254/24", "dev", "br0"]);
        ns.ip(&["tuntap", "add", "dev", &peer_tap, "mode", "tap"]);
        ns.ip(&["link", "set", &peer_tap, "master", "br0", "up"]);
        let dir = std::env::temp_dir().join(format!("duovm-interop-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("make the test's directory");
        Lab {
            ns,
            tag: format!("{tag}{id}"),
            peer_tap,
            dir,
            loss: None,
            runs: std::cell::Cell::new(0),
        }
    }

    /// Has the peer drop `percent` of the frames its NIC sends and of those it receives (tc
    /// netem in the peer's kernel: this host's kernel has no netem).
    fn lose(&mut self, percent: f64) {
        self.loss = Some(percent);
    }

    /// Boots the Linux peer, which runs `script` (BusyBox sh) once its rxe device is up.
    fn boot_peer(&self, script: &str) -> Peer {
        let image = peer_image();
        let command = self.dir.join("peer-command.sh");
        std::fs::write(&command, script).expect("write the peer's command");
        let log = self.dir.join("peer-console.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, "timeout", "-k", "5", "400"])
            .arg("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "qemu64", "-M", "pc", "-m", "512M"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initramfs.gz"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 loglevel=3 peer.ip={PEER_IP}/24{}",
                self.loss
                    .map_or_else(String::new, |percent| format!(" peer.loss={percent}"))
            ))
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                self.peer_tap
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={PEER_MAC}"))
            .arg("-fw_cfg")
            .arg(format!("name=opt/duovm/cmd,file={}", command.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu-system-x86_64");
        Peer {
            child,
            log,
            started: Instant::now(),
        }
    }

    /// Runs one duovm endpoint (a VM, or the same engines natively) on a TAP of its own,
    /// capturing its frames; returns what the test reported (`None` if it failed, after
    /// printing the endpoint's logs) and the capture.
    fn run_duovm(
        &self,
        params: TestParams,
        mode: Mode,
        name: &str,
    ) -> (Option<apps::rdma::TestReport>, PathBuf) {
        let pcap = self.dir.join(format!("{name}.pcap"));
        let capture = PcapWriter::create(&pcap).expect("create the capture");
        // A TAP made here goes away with the endpoint; it joins the bridge in the namespace.
        let run_index = self.runs.get() + 1;
        self.runs.set(run_index);
        let tap_name = format!("dvd{}{run_index}", self.tag);
        let tap = Tap::open(&tap_name).expect("open duovm's TAP");
        run_command("ip", &["link", "set", &tap_name, "netns", &self.ns.name]);
        self.ns
            .ip(&["link", "set", &tap_name, "master", "br0", "up"]);
        let identity = Identity {
            mac: DUOVM_MAC,
            ipv4: DUOVM_IP,
            prefix_len: 24,
            // In a VM, the virtio-net device computes the ICRCs rxe checks.
            icrc_offload: true,
        };
        let report = match mode {
            Mode::Vm => {
                let base = config([Workload::default(); 2]);
                let (report, run) = endpoint::run_vm(
                    &base,
                    &params,
                    identity,
                    Box::new(tap),
                    Some(capture),
                    Duration::from_secs(240),
                )
                .expect("run the duovm VM");
                let ok = run.os(Role::A).success;
                if !ok {
                    for os in &run.oses {
                        eprintln!("duovm {name}: OS {}: {}", os.os, os.summary);
                        for line in &os.serial_lines {
                            eprintln!("  [{}] {line}", os.os);
                        }
                    }
                }
                ok.then_some(report)
            }
            Mode::Native => {
                let backend = Box::new(Captured {
                    inner: tap,
                    capture,
                });
                let (report, native) = endpoint::run_native(&params, identity, backend, false)
                    .expect("run the native duovm endpoint");
                if report.is_none() {
                    for line in &native.lines {
                        eprintln!("  [duovm {name}] {line}");
                    }
                }
                report
            }
        };
        (report, pcap)
    }
}

/// Where duovm's endpoint runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// In a VM: OS A's engine and OS B's network service in their guest kernels.
    Vm,
    /// The same engines as host threads. Used for the runs whose traffic the emulated
    /// guests here cannot keep up with: rxe sends a long message as one burst of packets
    /// and resends the whole burst every timeout, faster than an emulated OS B takes
    /// frames in (about 1 us per guest instruction).
    Native,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running Linux peer.
struct Peer {
    child: Child,
    log: PathBuf,
    started: Instant,
}

/// What the peer did.
#[derive(Debug)]
struct PeerRun {
    /// The script's exit status.
    status: Option<i32>,
    /// The console, from the moment rxe0 was ready.
    output: String,
    /// rxe0's non-zero counters after the script.
    counters: BTreeMap<String, u64>,
}

impl Peer {
    /// Stops the peer (after a failure on duovm's side) and returns what it printed.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        self.wait().output
    }

    fn wait(&mut self) -> PeerRun {
        let status = self.child.wait().expect("wait for qemu");
        let console = std::fs::read_to_string(&self.log).unwrap_or_default();
        let output = console
            .find("PEER-READY")
            .map_or(console.as_str(), |at| &console[at..])
            .to_string();
        let status_line = output
            .lines()
            .find_map(|line| line.trim().strip_prefix("PEER-CMD-END rc="));
        let counters = output
            .lines()
            .filter_map(|line| line.trim().strip_prefix("PEER-COUNTER "))
            .filter_map(|line| {
                let (name, value) = line.split_once(' ')?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect();
        eprintln!(
            "peer: qemu {status} after {:.1} s",
            self.started.elapsed().as_secs_f64()
        );
        PeerRun {
            status: status_line.and_then(|rc| rc.trim().parse().ok()),
            output,
            counters,
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it), bit by bit, straight from the
/// definition: independent of the engine's table-driven implementation.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The RoCEv2 packets of a capture, by source address: how many, and how many with a wrong
/// ICRC. The ICRC (IBTA annex A17) is the CRC-32 of 8 bytes of ones, the IPv4 header with TOS,
/// TTL and checksum set to ones, the UDP header with its checksum set to ones, the BTH with
/// its reserved byte (byte 4) set to ones, and the rest of the packet; sent least significant
/// byte first.
fn icrc_check(pcap: &Path) -> BTreeMap<Ipv4Addr, (u64, u64)> {
    let data = std::fs::read(pcap).expect("read the capture");
    let mut result = BTreeMap::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let captured = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &data[at + 16..(at + 16 + captured).min(data.len())];
        at += 16 + captured;
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[9] != 17 || total > ip.len() || total < header_len + 8 + 12 + 4 {
            continue;
        }
        if u16::from_be_bytes([ip[header_len + 2], ip[header_len + 3]]) != 4791 {
            continue;
        }
        let mut masked = vec![0xffu8; 8];
        masked.extend_from_slice(&ip[..total - 4]);
        let ip_at = 8;
        masked[ip_at + 1] = 0xff; // TOS
        masked[ip_at + 8] = 0xff; // TTL
        masked[ip_at + 10..ip_at + 12].fill(0xff); // header checksum
        let udp_at = ip_at + header_len;
        masked[udp_at + 6..udp_at + 8].fill(0xff); // UDP checksum
        masked[udp_at + 8 + 4] = 0xff; // BTH reserved byte
        let good = crc32(&masked).to_le_bytes() == ip[total - 4..total];
        let source = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let entry = result.entry(source).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += u64::from(!good);
    }
    result
}

/// Asserts that duovm sent RoCE packets in `pcap`, all with a correct ICRC, and that the
/// peer's packets pass the same check (which checks the checker).
fn assert_icrc(pcap: &Path, what: &str) {
    let packets = icrc_check(pcap);
    let (sent, bad) = packets.get(&DUOVM_IP).copied().unwrap_or((0, 0));
    assert!(sent > 0, "{what}: duovm sent no RoCE packet");
    assert_eq!(
        bad, 0,
        "{what}: {bad} of duovm's {sent} packets have a wrong ICRC"
    );
    let (peer_sent, peer_bad) = packets.get(&PEER_IP).copied().unwrap_or((0, 0));
    assert!(peer_sent > 0, "{what}: the peer sent no RoCE packet");
    assert_eq!(
        peer_bad, 0,
        "{what}: the checker refuses {peer_bad} of rxe's packets"
    );
}

fn params(
    test: Test,
    size: u32,
    iters: u32,
    server: Option<Ipv4Addr>,
    handshake: Handshake,
) -> TestParams {
    TestParams {
        test,
        size,
        iters,
        server,
        local: DUOVM_IP,
        port: roce::oob::DEFAULT_PORT,
        mtu: Mtu::Mtu1024,
        handshake,
        // ibv_rc_pingpong's and perftest's own: the peer is rxe, and the ping-pongs with loss
        // recover from tail losses by this timer.
        qp_timeout: DEFAULT_QP_TIMEOUT,
        retry_cnt: apps::rdma::DEFAULT_RETRY_CNT,
        stall_timeout: 0,
    }
}

/// The ping-pong runs: where duovm runs, the size and the iterations (`None`: the program's
/// defaults, 4096 bytes and 1000 iterations).
const PINGPONG_RUNS: [(Mode, Option<(u32, u32)>); 5] = [
    (Mode::Vm, Some((64, 40))),
    (Mode::Vm, Some((1024, 30))),
    (Mode::Vm, Some((4096, 20))),
    (Mode::Native, None),
    (Mode::Native, Some((65536, 50))),
];

/// `ibv_rc_pingpong`'s options for a run, and its size and iterations.
fn pingpong_options(run: Option<(u32, u32)>) -> (String, u32, u32) {
    match run {
        Some((size, iters)) => (format!("-s {size} -n {iters}"), size, iters),
        None => (String::new(), 4096, 1000),
    }
}

/// Runs duovm's side of every ping-pong, as client (`server` given) or server, and checks
/// what both sides report.
fn pingpong_runs(lab: &Lab, mut peer: Peer, server: Option<Ipv4Addr>) {
    for (mode, run) in PINGPONG_RUNS {
        let (_, size, iters) = pingpong_options(run);
        let name = format!("pingpong-{mode:?}-{size}-{iters}");
        let (report, pcap) = lab.run_duovm(
            params(Test::Pingpong, size, iters, server, Handshake::RcPingpong),
            mode,
            &name,
        );
        let Some(report) = report else {
            panic!("duovm's side of {name} failed; the peer:\n{}", peer.stop());
        };
        assert!(report.verified, "{name}");
        assert_eq!(report.messages, u64::from(iters), "{name}");
        assert_eq!(
            report.bytes,
            2 * u64::from(size) * u64::from(iters),
            "{name}"
        );
        assert_icrc(&pcap, &name);
    }
    let run = peer.wait();
    eprintln!("{}", run.output);
    assert_eq!(run.status, Some(0), "ibv_rc_pingpong failed");
    for (_, run_spec) in PINGPONG_RUNS {
        let (_, size, iters) = pingpong_options(run_spec);
        let bytes = 2 * u64::from(size) * u64::from(iters);
        assert!(
            run.output.contains(&format!("{bytes} bytes in ")),
            "ibv_rc_pingpong did not report {bytes} bytes for {size} B x {iters}"
        );
    }
}

#[test]
fn rc_pingpong_duovm_client_rxe_server() {
    let _serial = serial();
    if !available("rc_pingpong_duovm_client_rxe_server") {
        return;
    }
    let lab = Lab::new("pc");
    let script: String = PINGPONG_RUNS
        .iter()
        .map(|(_, run)| {
            let (options, ..) = pingpong_options(*run);
            format!("ibv_rc_pingpong -d rxe0 -g 1 -m 1024 {options} || exit 1\n")
        })
        .collect();
    let peer = lab.boot_peer(&script);
    pingpong_runs(&lab, peer, Some(PEER_IP));
}

#[test]
fn rc_pingpong_rxe_client_duovm_server() {
    let _serial = serial();
    if !available("rc_pingpong_rxe_client_duovm_server") {
        return;
    }
    let lab = Lab::new("ps");
    let script: String = PINGPONG_RUNS
        .iter()
        .map(|(_, run)| {
            let (options, ..) = pingpong_options(*run);
            format!(
                "peer-retry ibv_rc_pingpong -d rxe0 -g 1 -m 1024 {options} {DUOVM_IP} || exit 1\n"
            )
        })
        .collect();
    let peer = lab.boot_peer(&script);
    pingpong_runs(&lab, peer, None);
}

/// perftest's servers, one after the other; duovm is the client of each. Each line: the
/// program, duovm's test, size, iterations.
const PERFTEST_RUNS: [(&str, Test, u32, u32); 5] = [
    ("ib_write_bw", Test::WriteBw, 65536, 8),
    ("ib_send_bw", Test::SendBw, 4096, 20),
    ("ib_read_lat", Test::ReadLat, 64, 20),
    ("ib_write_lat", Test::WriteLat, 64, 20),
    ("ib_atomic_lat", Test::AtomicLat, 8, 20),
];

#[test]
fn perftest_servers_with_duovm_client() {
    let _serial = serial();
    if !available("perftest_servers_with_duovm_client") {
        return;
    }
    let lab = Lab::new("pt");
    let script: String = PERFTEST_RUNS
        .iter()
        .map(|(program, _, size, iters)| {
            let size = if *program == "ib_atomic_lat" {
                String::new()
            } else {
                format!("-s {size} ")
            };
            format!(
                "echo PEER-STEP {program}; {program} -d rxe0 -x 1 -m 1024 {size}-n {iters} || exit 1\n"
            )
        })
        .collect();
    let mut peer = lab.boot_peer(&script);
    for (program, test, size, iters) in PERFTEST_RUNS {
        let (report, pcap) = lab.run_duovm(
            params(test, size, iters, Some(PEER_IP), Handshake::Perftest),
            Mode::Vm,
            program,
        );
        let Some(report) = report else {
            panic!(
                "duovm as the client of {program} failed; the peer:\n{}",
                peer.stop()
            );
        };
        assert!(report.verified, "{program}: duovm's checks failed");
        assert_eq!(report.messages, u64::from(iters), "{program}");
        assert_icrc(&pcap, program);
    }
    let run = peer.wait();
    eprintln!("{}", run.output);
    assert_eq!(run.status, Some(0), "a perftest server failed");
    // ib_write_bw's server prints the client's report; ib_send_bw's counts what arrived.
    for (program, _, size, iters) in &PERFTEST_RUNS[..2] {
        let section = run
            .output
            .split("PEER-STEP ")
            .find(|section| section.starts_with(program))
            .unwrap_or_else(|| panic!("no output of {program}"));
        let result = section
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{size} ")))
            .unwrap_or_else(|| panic!("{program} printed no result line"));
        let fields: Vec<&str> = result.split_whitespace().collect();
        assert_eq!(
            fields.get(1),
            Some(&iters.to_string().as_str()),
            "{program}: {result}"
        );
    }
}

#[test]
fn rc_pingpong_survives_one_percent_loss() {
    let _serial = serial();
    if !available("rc_pingpong_survives_one_percent_loss") {
        return;
    }
    let mut lab = Lab::new("ls");
    lab.lose(1.0);
    let (size, iters) = (1024, 200);
    let mut peer = lab.boot_peer(&format!(
        "ibv_rc_pingpong -d rxe0 -g 1 -m 1024 -s {size} -n {iters}\n"
    ));
    let (report, pcap) = lab.run_duovm(
        params(
            Test::Pingpong,
            size,
            iters,
            Some(PEER_IP),
            Handshake::RcPingpong,
        ),
        Mode::Vm,
        "lossy",
    );
    let report = report.expect("duovm's rc_pingpong client failed with 1% loss");
    assert!(report.verified);
    assert_icrc(&pcap, "lossy");
    let run = peer.wait();
    eprintln!("{}", run.output);
    eprintln!("duovm retransmitted {} packets", report.retransmissions);
    assert_eq!(run.status, Some(0), "ibv_rc_pingpong failed with 1% loss");
    let bytes = 2 * u64::from(size) * u64::from(iters);
    assert!(run.output.contains(&format!("{bytes} bytes in ")));
    // netem really dropped frames (about 1% of some 900 each way).
    let dropped: u64 = run
        .output
        .lines()
        .filter_map(|line| line.split("dropped ").nth(1))
        .filter_map(|rest| rest.split(',').next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "netem dropped nothing");
    eprintln!("netem dropped {dropped} frames");
    let retries = run
        .counters
        .get("completer_retry_err")
        .copied()
        .unwrap_or(0);
    eprintln!("rxe retried {retries} times");
}

#[test]
fn icrc_checker_matches_zlib() {
    // zlib.crc32(b"123456789") is the CRC-32 check value.
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
}
