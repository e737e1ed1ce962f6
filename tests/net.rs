//! OS B's virtio-net device on real KVM: the guest driver (virtio-drivers) against the host's
//! virtio-mmio device, with queue notifications through ioeventfds and the interrupt through
//! an irqfd MSI, on the built-in switch.

use std::time::{Duration, Instant};

use duovm_tests::{config, kvm_available, workload};
use host_agent::devices::net_backend::NetBackend;
use host_agent::devices::switch::{Switch, SwitchConfig};
use host_agent::vm::Vm;
use shm_ring::bootinfo::{NetConfig, WorkloadKind};
use shm_ring::layout::Role;

const GUEST_MAC: [u8; 6] = [0x02, 0xd0, 0x00, 0x00, 0x00, 0x0b];
const TEST_MAC: [u8; 6] = [0x02, 0xd0, 0x00, 0x00, 0x00, 0xee];
const PROBE_ETHER_TYPE: u16 = 0x88b5; // IEEE local experimental

#[test]
fn os_b_sends_and_receives_frames_through_its_virtio_nic() {
    if !kvm_available("os_b_sends_and_receives_frames_through_its_virtio_nic") {
        return;
    }
    let probe = workload(WorkloadKind::NicProbe, &[u64::from(PROBE_ETHER_TYPE)]);
    let mut config = config([probe, probe]);
    config.net = NetConfig {
        mac: GUEST_MAC,
        has_nic: 1,
        ..NetConfig::default()
    };
    let switch = Switch::new(SwitchConfig::default());
    let mut vm = Vm::build(&config).expect("build the VM");
    vm.attach_nic(
        GUEST_MAC,
        Box::new(switch.port(Some(GUEST_MAC)).unwrap()),
        None,
    )
    .unwrap();
    let mut port = switch.port(Some(TEST_MAC)).unwrap();
    let runner = std::thread::spawn(move || vm.run(Duration::from_secs(60)).expect("run the VM"));

    // The guest's broadcast arrives on our port.
    let mut frame = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    let len = loop {
        if let Some(len) = port.receive(&mut frame).unwrap() {
            break len;
        }
        assert!(Instant::now() < deadline, "no frame from the guest");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(len, 64);
    assert_eq!(&frame[0..6], &[0xff; 6]);
    assert_eq!(&frame[6..12], &GUEST_MAC);
    assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), PROBE_ETHER_TYPE);
    assert_eq!(&frame[14..30], b"duovm nic probe!");

    // Our answer reaches the guest.
    let mut reply = [0u8; 60];
    reply[0..6].copy_from_slice(&GUEST_MAC);
    reply[6..12].copy_from_slice(&TEST_MAC);
    reply[12..14].copy_from_slice(&PROBE_ETHER_TYPE.to_be_bytes());
    reply[14..29].copy_from_slice(b"hello from host");
    port.send(&reply).unwrap();

    let report = runner.join().unwrap();
    let b = report.os(Role::B);
    assert!(report.success(), "{report:#?}");
    assert!(
        b.serial_lines
            .iter()
            .any(|l| l == "nic: virtio-net up, MAC 02:d0:00:00:00:0b"),
        "{b:#?}"
    );
    assert!(
        b.serial_lines.iter().any(|l| l
            .starts_with("nic: received a 60-byte frame, EtherType 0x88b5")
            && l.ends_with("hello from host")),
        "{b:#?}"
    );
    let nic = report.nic.expect("NIC counters");
    assert!(nic.tx_packets >= 1 && nic.rx_packets == 1, "{nic:?}");
    // Register accesses went to the supervisor; queue notifications did not exit at all.
    assert!(b.exits.supervisor_path > 0);
    assert_eq!(report.unhandled_accesses, 0);
}

#[test]
fn two_vms_exchange_frames_over_the_built_in_switch() {
    if !kvm_available("two_vms_exchange_frames_over_the_built_in_switch") {
        return;
    }
    use host_agent::cluster::{Member, run_group};
    let probe = workload(WorkloadKind::NicProbe, &[u64::from(PROBE_ETHER_TYPE)]);
    let macs = [[0x02, 0xd0, 0, 0, 1, 0x0b], [0x02, 0xd0, 0, 0, 2, 0x0b]];
    let members = macs
        .iter()
        .map(|mac| {
            let mut config = config([probe, probe]);
            config.net = NetConfig {
                mac: *mac,
                has_nic: 1,
                ..NetConfig::default()
            };
            Member {
                config,
                nic: None,
                capture: None,
            }
        })
        .collect();
    let switch = Switch::new(SwitchConfig::default());
    let reports = run_group(members, &switch, Duration::from_secs(60)).unwrap();
    for report in &reports {
        assert!(report.success(), "{report:#?}");
        let b = report.os(Role::B);
        // Each VM's OS B received the other's broadcast probe.
        assert!(
            b.serial_lines.iter().any(|l| l
                .starts_with("nic: received a 64-byte frame, EtherType 0x88b5")
                && l.ends_with("duovm nic probe!")),
            "{b:#?}"
        );
    }
}

/// Two VMs on one switch (with `loss` injected both ways): VM 1's OS A runs the echo server,
/// VM 2's OS A runs `client`. Returns both reports.
fn echo_pair(
    client: shm_ring::bootinfo::Workload,
    server: shm_ring::bootinfo::Workload,
    loss: f64,
) -> Vec<host_agent::vm::RunReport> {
    use host_agent::cluster::{Member, run_group_until};
    use host_agent::devices::switch::FaultConfig;
    let service = workload(WorkloadKind::NetService, &[]);
    let members = [(server, 1u8), (client, 2u8)]
        .into_iter()
        .map(|(os_a, index)| {
            let mut config = config([os_a, service]);
            config.net = NetConfig {
                mac: [0x02, 0xd0, 0, 0, index, 0x0b],
                prefix_len: 24,
                has_nic: 1,
                ipv4: [10, 77, 3, index],
                gateway: [0; 4],
                ..NetConfig::default()
            };
            Member {
                config,
                nic: None,
                capture: None,
            }
        })
        .collect();
    let faults = FaultConfig {
        loss,
        seed: 7,
        ..FaultConfig::default()
    };
    let switch = Switch::new(SwitchConfig {
        faults,
        ..SwitchConfig::default()
    });
    // The server serves until the client is done, then it is asked to end.
    let reports = run_group_until(members, &switch, Duration::from_secs(300), &[1]).unwrap();
    if loss > 0.0 {
        assert!(
            switch.counters().lost > 0,
            "no frame was lost: {:?}",
            switch.counters()
        );
    }
    reports
}

const SERVER: u64 = u32::from_be_bytes([10, 77, 3, 1]) as u64;

#[test]
fn two_vms_exchange_tcp_over_the_switch_with_and_without_loss() {
    if !kvm_available("two_vms_exchange_tcp_over_the_switch_with_and_without_loss") {
        return;
    }
    for loss in [0.0, 0.05] {
        let server = workload(WorkloadKind::TcpEcho, &[7, 1, 0]);
        let client = workload(WorkloadKind::TcpClient, &[SERVER, 7, 16 * 1024]);
        let reports = echo_pair(client, server, loss);
        assert!(reports[1].success(), "loss {loss}: {:#?}", reports[1]);
        let client = reports[1].os(Role::A);
        assert!(
            client.serial_lines.iter().any(|l| l.starts_with(
                "net: tcp client: 16384 of 16384 bytes came back intact and in order"
            )),
            "loss {loss}: {client:#?}"
        );
    }
}

#[test]
fn two_vms_exchange_udp_over_the_switch_with_and_without_loss() {
    if !kvm_available("two_vms_exchange_udp_over_the_switch_with_and_without_loss") {
        return;
    }
    for loss in [0.0, 0.05] {
        let server = workload(WorkloadKind::TcpEcho, &[7, 0, 0]);
        let client = workload(WorkloadKind::UdpEcho, &[SERVER, 7, 20, 512]);
        let reports = echo_pair(client, server, loss);
        let client = reports[1].os(Role::A);
        assert!(reports[1].success(), "loss {loss}: {:#?}", reports[1]);
        assert!(
            client.serial_lines.iter().any(|l| l
                .starts_with("net: udp echo: 20 of 20 datagrams of 512 bytes came back intact")),
            "loss {loss}: {client:#?}"
        );
        // The server echoed every datagram it got (some twice, with loss) until it was asked
        // to end, once the client was done: it ended in order, and its OS B after it.
        let server = &reports[0];
        assert!(server.success() && server.end_requested, "{server:#?}");
        assert!(
            server
                .os(Role::A)
                .serial_lines
                .iter()
                .any(|l| l.starts_with("net: tcp echo stopped: served 0 connections, 0 bytes;")),
            "{server:#?}"
        );
    }
}

#[test]
fn a_guest_that_gives_the_nic_a_bad_queue_gets_needs_reset_and_the_agent_lives() {
    if !kvm_available("a_guest_that_gives_the_nic_a_bad_queue_gets_needs_reset_and_the_agent_lives")
    {
        return;
    }
    let hostile = workload(WorkloadKind::NicHostile, &[]);
    let mut config = config([hostile, hostile]);
    config.net = NetConfig {
        mac: GUEST_MAC,
        has_nic: 1,
        ..NetConfig::default()
    };
    let switch = Switch::new(SwitchConfig::default());
    let mut vm = Vm::build(&config).expect("build the VM");
    vm.attach_nic(
        GUEST_MAC,
        Box::new(switch.port(Some(GUEST_MAC)).unwrap()),
        None,
    )
    .unwrap();
    let mut port = switch.port(Some(TEST_MAC)).unwrap();
    let report = vm.run(Duration::from_secs(60)).expect("the agent survives");
    assert!(report.success(), "{report:#?}");
    let b = report.os(Role::B);
    assert!(
        b.serial_lines
            .iter()
            .any(|l| l == "nic: the device refused the bad queue and needs a reset, as it should"),
        "{b:#?}"
    );
    assert!(
        b.serial_lines
            .iter()
            .any(|l| l == "nic: after the reset the device is usable again"),
        "{b:#?}"
    );
    // The frame sent after the reset went out.
    let mut frame = [0u8; 2048];
    let len = port
        .receive(&mut frame)
        .unwrap()
        .expect("the frame sent after the reset");
    assert_eq!(&frame[14..30], b"after the reset!");
    assert_eq!(len, 60);
    assert_eq!(report.unhandled_accesses, 0);
}

#[test]
fn net_bench_measures_udp_and_tcp_between_two_vms() {
    use apps::netbench::Transport;
    use host_agent::netbench::{NetBenchParams, NetPath, run_vms};
    if !kvm_available("net_bench_measures_udp_and_tcp_between_two_vms") {
        return;
    }
    let hello = workload(WorkloadKind::Hello, &[]);
    for (transport, size, count) in [(Transport::Udp, 1472, 20), (Transport::Tcp, 8192, 4)] {
        let params = NetBenchParams {
            transport,
            size,
            count,
            duration_ms: 0,
            window: apps::netbench::DEFAULT_WINDOW,
            rtt_size: 64,
            rtt_count: 5,
        };
        let (report, runs) = run_vms(
            &config([hello, hello]),
            &params,
            &NetPath::Switch,
            Duration::from_secs(240),
        )
        .unwrap();
        assert!(report.verified, "{report:#?}\n{runs:#?}");
        assert_eq!((report.mode, report.path), ("vm", "switch"));
        assert_eq!(report.messages, count);
        // Nothing competes for the emulated NICs: every datagram arrives.
        assert_eq!(report.received, count, "{report:#?}");
        assert_eq!(report.bytes, count * u64::from(size));
        assert_eq!(report.round_trips, 5);
        assert!(report.gbit_per_sec > 0.0 && report.rtt_us_p50 > 0.0);
    }
}
