//! OS B's network service on a real TAP device in a network namespace: the host pings the
//! guest, a host TCP client reaches an echo service in OS A (carried by OS B), and OS A's UDP
//! datagrams reach a host socket and come back.

use std::time::Duration;

use duovm_tests::{NetNs, config, kvm_available, tap_available, workload};
use host_agent::devices::tap::Tap;
use host_agent::vm::{RunReport, Vm};
use shm_ring::bootinfo::{NetConfig, WorkloadKind};
use shm_ring::layout::Role;

const GUEST_MAC: [u8; 6] = [0x02, 0xd0, 0x00, 0x00, 0x00, 0x0b];

fn net_config(ip: [u8; 4]) -> NetConfig {
    NetConfig {
        mac: GUEST_MAC,
        prefix_len: 24,
        has_nic: 1,
        ipv4: ip,
        gateway: [0; 4],
        ..NetConfig::default()
    }
}

/// Starts a VM whose OS B serves the network on a TAP moved into `ns` (host side `host_ip`).
fn start(
    ns: &NetNs,
    tap: &str,
    host_address: &str,
    os_a: shm_ring::bootinfo::Workload,
    guest_ip: [u8; 4],
) -> std::thread::JoinHandle<RunReport> {
    let service = workload(WorkloadKind::NetService, &[]);
    let mut config = config([os_a, service]);
    config.net = net_config(guest_ip);
    let mut vm = Vm::build(&config).expect("build the VM");
    let backend = Tap::open(tap).expect("open the TAP");
    ns.adopt(tap, host_address);
    vm.attach_nic(GUEST_MAC, Box::new(backend), None).unwrap();
    std::thread::spawn(move || vm.run(Duration::from_secs(240)).expect("run the VM"))
}

#[test]
fn ping_and_tcp_echo_through_os_b_over_a_tap() {
    if !kvm_available("ping_and_tcp_echo_through_os_b_over_a_tap")
        || !tap_available("ping_and_tcp_echo_through_os_b_over_a_tap")
    {
        return;
    }
    let ns = NetNs::new("tcp");
    let tap = format!("dvt{}", std::process::id() % 100_000);
    let echo = workload(WorkloadKind::TcpEcho, &[7, 1]);
    let runner = start(&ns, &tap, "10.77.1.1/24", echo, [10, 77, 1, 2]);

    let ping = ns.exec("ping", &["-c", "3", "-W", "5", "-i", "0.5", "10.77.1.2"]);
    assert!(
        ping.status.success(),
        "ping failed: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // A host TCP client: 4 KiB in, the same 4 KiB back, then close.
    let client = r#"
import socket, sys
data = bytes((i * 7 + 3) % 251 for i in range(4096))
s = socket.create_connection(("10.77.1.2", 7), timeout=60)
s.sendall(data)
got = b""
while len(got) < len(data):
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
s.close()
sys.exit(0 if got == data else 1)
"#;
    let tcp = ns.exec("python3", &["-c", client]);
    assert!(
        tcp.status.success(),
        "TCP echo failed: {}",
        String::from_utf8_lossy(&tcp.stderr)
    );

    let report = runner.join().unwrap();
    assert!(report.success(), "{report:#?}");
    let a = report.os(Role::A);
    assert!(
        a.serial_lines
            .iter()
            .any(|l| l.starts_with("net: tcp echo served 1 connections, 4096 bytes")),
        "{a:#?}"
    );
    let b = report.os(Role::B);
    assert!(
        b.serial_lines
            .iter()
            .any(|l| l.starts_with("net: up: 10.77.1.2/24")),
        "{b:#?}"
    );
}

#[test]
fn os_a_udp_datagrams_reach_a_host_socket_and_come_back() {
    if !kvm_available("os_a_udp_datagrams_reach_a_host_socket_and_come_back")
        || !tap_available("os_a_udp_datagrams_reach_a_host_socket_and_come_back")
    {
        return;
    }
    let ns = NetNs::new("udp");
    let tap = format!("dvu{}", std::process::id() % 100_000);
    // The host side: a UDP echo server in the namespace that also records what it saw.
    let server = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.77.2.1", 7777))
s.settimeout(120)
seen = set()
while len(seen) < 20:
    data, peer = s.recvfrom(65536)
    seq = int.from_bytes(data[:8], "little")
    expect = bytearray((seq * 7 + i) % 256 for i in range(len(data)))
    expect[:8] = seq.to_bytes(8, "little")
    if bytes(expect) != data or len(data) != 300:
        print("bad datagram", seq, file=sys.stderr)
        sys.exit(1)
    seen.add(seq)
    s.sendto(data, peer)
print("received", len(seen))
"#;
    // The namespace and TAP exist before the server binds its address.
    let udp = workload(
        WorkloadKind::UdpEcho,
        &[u64::from(u32::from_be_bytes([10, 77, 2, 1])), 7777, 20, 300],
    );
    let service = workload(WorkloadKind::NetService, &[]);
    let mut config = config([udp, service]);
    config.net = net_config([10, 77, 2, 2]);
    let mut vm = Vm::build(&config).expect("build the VM");
    let backend = Tap::open(&tap).expect("open the TAP");
    ns.adopt(&tap, "10.77.2.1/24");
    let name = ns.name.clone();
    let host = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &name, "python3", "-c", server])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    vm.attach_nic(GUEST_MAC, Box::new(backend), None).unwrap();
    let report = vm.run(Duration::from_secs(240)).unwrap();
    let host = host.join().unwrap();
    assert!(
        host.status.success(),
        "host server: {}",
        String::from_utf8_lossy(&host.stderr)
    );
    assert!(String::from_utf8_lossy(&host.stdout).contains("received 20"));
    assert!(report.success(), "{report:#?}");
    let a = report.os(Role::A);
    assert!(
        a.serial_lines
            .iter()
            .any(|l| l
                .starts_with("net: udp echo: 20 of 20 datagrams of 300 bytes came back intact")),
        "{a:#?}"
    );
}

#[test]
fn rdma_runs_between_two_vms_through_a_linux_bridge() {
    use apps::rdma::Test;
    use host_agent::rdmabench::{RdmaBenchParams, RdmaPath, run_vms};
    if !kvm_available("rdma_runs_between_two_vms_through_a_linux_bridge")
        || !tap_available("rdma_runs_between_two_vms_through_a_linux_bridge")
    {
        return;
    }
    let ns = NetNs::new("rv");
    let hello = workload(WorkloadKind::Hello, &[]);
    let params = RdmaBenchParams {
        path: RdmaPath::Tap,
        ..RdmaBenchParams::new(Test::WriteLat, 64, 10)
    };
    let (report, runs) = ns.run_inside(|| {
        run_vms(
            &config([hello, hello]),
            &params,
            Duration::from_secs(240),
            None,
        )
        .unwrap()
    });
    assert!(report.verified, "{report:#?}\n{runs:#?}");
    assert_eq!((report.mode, report.path), ("vm", "tap"));
    assert_eq!(report.figures.messages, 10);
    // Each OS B carried both ways the RoCE packets of ten round trips: ten WRITEs and ten
    // ACKs (more if any was resent).
    for run in &runs {
        let b = run.os(Role::B);
        let counted = |what: &str| {
            let marker = format!(" RoCE {what}");
            b.serial_lines.iter().find_map(|line| {
                let (before, _) = line.split_once(&marker)?;
                before.rsplit(' ').next()?.parse::<u64>().ok()
            })
        };
        assert!(counted("in") >= Some(20), "{b:#?}");
        assert!(counted("out") >= Some(20), "{b:#?}");
    }
}

#[test]
fn bridges_and_taps_come_and_go() {
    use host_agent::devices::netif::{Bridge, add_to_bridge};
    use host_agent::rdmabench::TapLink;
    if !tap_available("bridges_and_taps_come_and_go") {
        return;
    }
    let ns = NetNs::new("br");
    let stem = format!("dv{:x}-", std::process::id());
    let is_ours = |name: &str| name.starts_with(&stem) || name.starts_with("dvq");
    let ours = || -> Vec<String> {
        let mut names: Vec<String> = ns.interfaces().into_iter().filter(|n| is_ours(n)).collect();
        names.sort();
        names
    };
    // rdma-bench's link: a bridge and two TAPs on it, all gone once it is dropped.
    let link = ns.run_inside(|| TapLink::create().expect("make the link"));
    let bridge = link.bridge().to_owned();
    let names = ours();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&bridge), "{names:?}");
    for end in ["s", "c"] {
        let tap = format!("{}{end} master {bridge}", bridge.trim_end_matches('b'));
        assert!(names.contains(&tap), "{tap} in {names:?}");
    }
    drop(link);
    assert_eq!(ns.left_behind(is_ours), Vec::<String>::new());
    // `rdma --bridge`: a TAP of ours joins a bridge someone else made.
    let (bridge, tap) = ns.run_inside(|| {
        let bridge = Bridge::create("dvqb").expect("make a bridge");
        let tap = Tap::open("dvqt").expect("open a TAP");
        add_to_bridge("dvqb", tap.name()).expect("join the bridge");
        (bridge, tap)
    });
    assert_eq!(ours(), ["dvqb", "dvqt master dvqb"]);
    assert!(
        ns.run_inside(|| add_to_bridge("dvqb", "no-such-if"))
            .unwrap_err()
            .to_string()
            .contains("find no-such-if")
    );
    drop(tap);
    drop(bridge);
    assert_eq!(ns.left_behind(is_ours), Vec::<String>::new());
}
