//! The paired-guest VM on real KVM: boot, IPIs, isolation, and the host's handling of guests
//! that fault, triple-fault or hang.

use std::time::{Duration, Instant};

use duovm_tests::{config, kvm_available, run, workload};
use host_agent::vcpu::OsEnd;
use shm_ring::bootinfo::WorkloadKind;
use shm_ring::layout::{Role, SEGMENT_B_BASE};

#[test]
fn both_oses_boot_and_exchange_ipis_both_ways() {
    if !kvm_available("both_oses_boot_and_exchange_ipis_both_ways") {
        return;
    }
    let hello = workload(WorkloadKind::Hello, &[]);
    let report = run(&config([hello, hello], None), Duration::from_secs(30));
    assert!(report.success(), "{report:#?}");
    let a = report.os(Role::A);
    let b = report.os(Role::B);
    assert!(a.serial_lines.iter().any(|line| line.starts_with("hello from OS A: apic 0")), "{a:#?}");
    assert!(b.serial_lines.iter().any(|line| line.starts_with("hello from OS B: apic 1")), "{b:#?}");
    // B saw A's IPI, and A saw B's answer.
    assert!(b.serial_lines.iter().any(|line| line == "hello: IPI from OS A received, answering"), "{b:#?}");
    assert!(a.serial_lines.iter().any(|line| line == "hello: IPI round trip with OS B done (1 sent, 1 received)"), "{a:#?}");
    // Every exit of a healthy boot is handled on the fast path.
    for os in [a, b] {
        assert_eq!(os.exits.supervisor_path, 0, "{os:#?}");
        assert!(os.exits.fast_path > 0);
    }
}

#[test]
fn os_a_touching_os_b_segment_faults_and_is_reported() {
    if !kvm_available("os_a_touching_os_b_segment_faults_and_is_reported") {
        return;
    }
    let touch = workload(WorkloadKind::TouchPeerSegment, &[]);
    let report = run(&config([touch, touch], None), Duration::from_secs(30));
    assert!(!report.success());
    let a = report.os(Role::A);
    match &a.end {
        OsEnd::Exited { status: 2, fault: Some(fault) } => {
            assert_eq!(fault.vector, 14, "page fault expected: {a:#?}");
            assert_eq!(fault.address, SEGMENT_B_BASE);
            // A read of a page that is not present: error code bits P=0, W=0.
            assert_eq!(fault.error_code & 0b11, 0);
        }
        other => panic!("OS A should have faulted, ended {other:?}"),
    }
    assert!(a.summary.starts_with("OS a faulted: exception 14"), "{}", a.summary);
    assert!(!a.serial_lines.iter().any(|line| line.contains("partition is broken")));
    // OS B was stopped by the host, not failed on its own.
    assert!(matches!(report.os(Role::B).end, OsEnd::Stopped { .. }), "{report:#?}");
    assert!(!report.timed_out);
}

#[test]
fn a_triple_fault_ends_the_run_with_a_clear_error() {
    if !kvm_available("a_triple_fault_ends_the_run_with_a_clear_error") {
        return;
    }
    let triple = workload(WorkloadKind::TripleFault, &[]);
    let started = Instant::now();
    let report = run(&config([triple, workload(WorkloadKind::Hello, &[])], None), Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(20));
    let a = report.os(Role::A);
    assert!(matches!(a.end, OsEnd::TripleFault { rip } if rip >= 0x100_0000), "{a:#?}");
    assert!(a.summary.contains("OS a triple-faulted"), "{}", a.summary);
    assert!(!report.timed_out);
}

#[test]
fn a_spinning_guest_is_stopped_at_the_timeout() {
    if !kvm_available("a_spinning_guest_is_stopped_at_the_timeout") {
        return;
    }
    let spin = workload(WorkloadKind::Spin, &[]);
    let started = Instant::now();
    let report = run(&config([spin, workload(WorkloadKind::Hello, &[])], None), Duration::from_secs(2));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(report.timed_out);
    let a = report.os(Role::A);
    assert!(matches!(a.end, OsEnd::Stopped { rip } if rip >= 0x100_0000), "{a:#?}");
    assert!(a.summary.contains("did not finish before the timeout"), "{}", a.summary);
}
