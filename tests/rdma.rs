//! RDMA between two VMs on the built-in switch: every test (and so every opcode: SEND,
//! SEND_WITH_IMM, RDMA_WRITE, RDMA_WRITE_WITH_IMM (the end of `write_bw`), RDMA_READ,
//! FETCH_AND_ADD, CMP_AND_SWP (the end of `atomic_lat`)) end to end with OS A's verbs engine
//! and OS B carrying the RoCEv2 packets, every byte and completion checked on both sides; and
//! the captured traffic decodes in tshark.

use std::time::Duration;

use apps::rdma::Test;
use duovm_tests::{config, kvm_available, workload};
use host_agent::rdmabench::{RdmaBenchParams, run_vms};
use host_agent::vcpu::OsEnd;
use roce::verbs::Mtu;
use shm_ring::bootinfo::WorkloadKind;
use shm_ring::layout::Role;

fn params(test: Test, size: u32, iters: u32, loss: f64) -> RdmaBenchParams {
    RdmaBenchParams {
        loss,
        ..RdmaBenchParams::new(test, size, iters)
    }
}

fn run(
    test: Test,
    size: u32,
    iters: u32,
    loss: f64,
    capture: Option<&std::path::Path>,
) -> host_agent::rdmabench::RdmaBenchReport {
    run_verified(&params(test, size, iters, loss), capture).0
}

/// Runs `params` between two VMs; every message must have completed, verified.
fn run_verified(
    params: &RdmaBenchParams,
    capture: Option<&std::path::Path>,
) -> (
    host_agent::rdmabench::RdmaBenchReport,
    Vec<host_agent::vm::RunReport>,
) {
    let hello = workload(WorkloadKind::Hello, &[]);
    let (report, runs) = run_vms(
        &config([hello, hello]),
        params,
        Duration::from_secs(240),
        capture,
    )
    .unwrap();
    assert!(report.verified, "{params:?}: {report:#?}\n{runs:#?}");
    assert_eq!(report.figures.messages, u64::from(params.iters));
    (report, runs)
}

/// The IP packets of the RoCEv2 frames (UDP port 4791) in the pcap file at `path`.
fn captured_roce_packets(path: &std::path::Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &bytes[at + 16..at + 16 + len];
        at += 16 + len;
        if frame.len() > 38 && frame[12..14] == [0x08, 0x00] && frame[36..38] == [0x12, 0xb7] {
            packets.push(frame[14..].to_vec());
        }
    }
    packets
}

/// Checks what the VMs' NICs did with the ICRCs and that every RoCEv2 packet in the capture
/// at `path` has a right one.
fn check_icrcs(runs: &[host_agent::vm::RunReport], path: &std::path::Path, offloaded: bool) {
    let packets = captured_roce_packets(path);
    assert!(
        packets.len() > 8,
        "{} RoCEv2 packets captured",
        packets.len()
    );
    for (index, packet) in packets.iter().enumerate() {
        assert_eq!(roce::icrc::verify(packet), Ok(()), "packet {index}");
    }
    for run in runs {
        let nic = run.nic.expect("every VM has a NIC");
        assert_eq!(
            (nic.tx_icrc_offloaded > 0, nic.rx_icrc_checked > 0),
            (offloaded, offloaded),
            "{nic:?}"
        );
        assert_eq!(nic.rx_bad_icrc, 0, "{nic:?}");
        let by = if offloaded { "NIC" } else { "OS" };
        let said = run
            .os(Role::A)
            .serial_lines
            .iter()
            .any(|line| line.ends_with(&format!("ICRC by the {by}")));
        assert!(said, "{:#?}", run.os(Role::A).serial_lines);
    }
}

#[test]
fn every_rdma_test_runs_between_two_vms() {
    if !kvm_available("every_rdma_test_runs_between_two_vms") {
        return;
    }
    run(Test::WriteBw, 4096, 8, 0.0, None);
    run(Test::SendBw, 1500, 10, 0.0, None);
    run(Test::WriteLat, 64, 10, 0.0, None);
    run(Test::ReadLat, 2048, 10, 0.0, None);
    run(Test::AtomicLat, 8, 10, 0.0, None);
    run(Test::Pingpong, 1024, 10, 0.0, None);
}

#[test]
fn a_full_window_between_vms_is_not_resent() {
    if !kvm_available("a_full_window_between_vms_is_not_resent") {
        return;
    }
    // 128 packets of 1 KiB: the whole window in flight at once. The emulated guests take
    // milliseconds per packet, so at ibv_rc_pingpong's 67 ms the requester would resend
    // packets that are only queued; the VM default waits long enough.
    let report = run(Test::WriteBw, 65536, 2, 0.0, None);
    assert_eq!(report.qp_timeout, host_agent::rdmabench::VM_QP_TIMEOUT);
    assert_eq!(report.figures.retransmissions, 0, "{report:#?}");
}

#[test]
fn rdma_between_vms_survives_loss() {
    if !kvm_available("rdma_between_vms_survives_loss") {
        return;
    }
    let report = run(Test::SendBw, 4096, 20, 0.03, None);
    assert!(report.figures.retransmissions > 0, "{report:#?}");
}

#[test]
fn a_stall_between_vms_fails_after_the_stall_timeout_and_says_why() {
    if !kvm_available("a_stall_between_vms_fails_after_the_stall_timeout_and_says_why") {
        return;
    }
    // Nothing gets through the switch: each OS A gives up after 3 s without headway (the
    // timeout travels to the guest in its workload arguments) and its log says why.
    let params = RdmaBenchParams {
        stall_timeout: 3,
        ..params(Test::WriteBw, 4096, 5, 0.999)
    };
    let started = std::time::Instant::now();
    failing_run(
        &params,
        "server: nothing moved for 3 s waiting for the client",
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// Runs `params` between two VMs, which must fail with `error`; returns the VMs' reports.
fn failing_run(params: &RdmaBenchParams, error: &str) -> Vec<host_agent::vm::RunReport> {
    let hello = workload(WorkloadKind::Hello, &[]);
    let (report, runs) = run_vms(
        &config([hello, hello]),
        params,
        Duration::from_secs(120),
        None,
    )
    .unwrap();
    assert!(!report.verified, "{report:#?}");
    assert_eq!(
        report.error.as_deref(),
        Some(error),
        "{report:#?}\n{runs:#?}"
    );
    runs
}

#[test]
fn a_vm_whose_application_fails_closes_its_connections_and_its_peer_fails_at_once() {
    if !kvm_available(
        "a_vm_whose_application_fails_closes_its_connections_and_its_peer_fails_at_once",
    ) {
        return;
    }
    // The server's OS A fails as it connects its QP (a path MTU the link cannot carry),
    // before it answers the client's connection message. Its OS B closes the exchange
    // connection as it winds down, so the client's OS A learns of it at once, not after the
    // stall timeout (60 s).
    let params = RdmaBenchParams {
        mtu: Mtu::Mtu2048,
        ..params(Test::WriteBw, 4096, 5, 0.0)
    };
    let started = std::time::Instant::now();
    let runs = failing_run(
        &params,
        "server: path MTU 2048 is larger than the link carries (the port's active MTU is 1024)",
    );
    let lines = || {
        runs.iter()
            .flat_map(|run| &run.oses)
            .flat_map(|os| &os.serial_lines)
    };
    assert!(
        lines().any(|line| line.starts_with("net: OS A's connections closed: 1 with a FIN")),
        "{runs:#?}"
    );
    assert!(
        lines().any(
            |line| line.contains("failed: connection exchange: the peer closed the connection")
        ),
        "{runs:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
}

/// Runs a `write_bw` far too long to finish between two VMs and asks them to end `after` it
/// started, as Ctrl-C asks; checks that every OS ended by itself (each OS A answered the
/// request and ended in order, each OS B after it, nothing stopped by force) soon after the
/// request; returns the report and the VMs' reports.
fn ended_in_order(
    after: Duration,
) -> (
    host_agent::rdmabench::RdmaBenchReport,
    Vec<host_agent::vm::RunReport>,
) {
    let hello = workload(WorkloadKind::Hello, &[]);
    let base = config([hello, hello]);
    let end = base.end.clone();
    let asker = std::thread::spawn(move || {
        std::thread::sleep(after);
        end.request();
        std::time::Instant::now()
    });
    let (report, runs) = run_vms(
        &base,
        &params(Test::WriteBw, 4096, 100_000_000, 0.0),
        Duration::from_secs(240),
        None,
    )
    .unwrap();
    let took = asker.join().expect("the asking thread").elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?} to end");
    assert!(!report.verified, "{report:#?}");
    for run in &runs {
        assert!(run.end_requested && !run.timed_out, "{run:#?}");
        let a = run.os(Role::A);
        assert!(matches!(a.end, OsEnd::Exited { .. }), "{a:#?}");
        let b = run.os(Role::B);
        assert!(b.success, "{b:#?}");
    }
    (report, runs)
}

#[test]
fn vms_asked_to_end_end_their_test_in_order_with_what_it_measured() {
    if !kvm_available("vms_asked_to_end_end_their_test_in_order_with_what_it_measured") {
        return;
    }
    // 20 s in, the test is well under way: each OS A stops it and publishes what it did; each
    // OS B closes the exchange connection with a FIN.
    let (report, runs) = ended_in_order(Duration::from_secs(20));
    assert!(report.figures.messages > 0, "{report:#?}");
    let error = report.error.as_deref().unwrap_or_default();
    assert!(error.contains(": stopped "), "{report:#?}");
    for run in &runs {
        let a = run.os(Role::A);
        assert!(
            a.serial_lines
                .iter()
                .any(|line| line.contains("failed: stopped ")),
            "{a:#?}"
        );
        let b = run.os(Role::B);
        assert!(
            b.serial_lines
                .iter()
                .any(|line| line.starts_with("net: OS A's connections closed: 1 with a FIN")),
            "{b:#?}"
        );
    }
}

#[test]
fn vms_asked_to_end_as_they_boot_end_in_order() {
    if !kvm_available("vms_asked_to_end_as_they_boot_end_in_order") {
        return;
    }
    // Asked before OS A has set anything up (the request waits in its mailbox, or finds it
    // waiting for OS B), each VM still ends by itself.
    let (_, runs) = ended_in_order(Duration::ZERO);
    for run in &runs {
        let a = run.os(Role::A);
        assert!(
            a.serial_lines.iter().any(|line| {
                line == "net: asked to end before OS B was up" || line.contains("failed: stopped ")
            }),
            "{a:#?}"
        );
    }
}

#[test]
fn captured_rdma_traffic_decodes_as_roce_in_tshark() {
    if !kvm_available("captured_rdma_traffic_decodes_as_roce_in_tshark") {
        return;
    }
    let path = std::env::temp_dir().join(format!("duovm-rdma-{}.pcap", std::process::id()));
    let (report, runs) = run_verified(&params(Test::WriteBw, 2048, 4, 0.0), Some(&path));
    // The VMs' NICs computed and checked every ICRC (the default), and the wire has them.
    assert_eq!(report.icrc, "nic");
    check_icrcs(&runs, &path, true);
    let tshark = std::process::Command::new("tshark").arg("-v").output();
    if tshark.is_err() {
        let _ = std::fs::remove_file(&path);
        eprintln!(
            "!!!! SKIPPED captured_rdma_traffic_decodes_as_roce_in_tshark (tshark part): tshark is not installed !!!!"
        );
        return;
    }
    let output = std::process::Command::new("tshark")
        .args([
            "-r",
            path.to_str().unwrap(),
            "-Y",
            "infiniband",
            "-T",
            "fields",
            "-e",
            "infiniband.bth.opcode",
            "-e",
            "_ws.expert.message",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // RDMA WRITE FIRST/MIDDLE/LAST (6, 7, 8) from the client, ACKs (17) from the server, and
    // the client's closing RDMA WRITE ONLY with immediate (11).
    assert!(
        lines.iter().any(|l| l.starts_with("11\t") || l == &"11"),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("6\t") || l == &"6"),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("8\t") || l == &"8"),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("17\t") || l == &"17"),
        "{text}"
    );
    assert!(!text.to_lowercase().contains("malformed"), "{text}");
}

#[test]
fn without_the_icrc_offload_the_guests_compute_and_check_every_icrc() {
    if !kvm_available("without_the_icrc_offload_the_guests_compute_and_check_every_icrc") {
        return;
    }
    let path = std::env::temp_dir().join(format!("duovm-rdma-own-{}.pcap", std::process::id()));
    for test in [Test::WriteBw, Test::ReadLat] {
        let params = RdmaBenchParams {
            icrc_offload: false,
            ..params(test, 2048, 4, 0.0)
        };
        let (report, runs) = run_verified(&params, Some(&path));
        assert_eq!(report.icrc, "engine");
        check_icrcs(&runs, &path, false);
    }
    let _ = std::fs::remove_file(&path);
}
