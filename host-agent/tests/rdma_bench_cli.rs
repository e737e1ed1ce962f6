//! `host-agent rdma-bench` as a script runs it: one JSON object, the exit status, and a
//! failure that says why in the `error` key. Native mode needs neither KVM nor a TAP.

use std::process::Command;

fn rdma_bench(args: &[&str]) -> (bool, serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(["rdma-bench", "--native", "--json"])
        .args(args)
        .output()
        .expect("run host-agent rdma-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("not one JSON object ({error}): {stdout}\n{stderr}"));
    (output.status.success(), report, stderr)
}

#[test]
fn a_run_that_ends_well_reports_no_error() {
    let (success, report, stderr) =
        rdma_bench(&["--test", "read-lat", "--size", "2048", "--iters", "50"]);
    assert!(success, "{report}\n{stderr}");
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["messages"], 50, "{report}");
    assert!(report["error"].is_null(), "{report}");
}

#[test]
fn a_run_where_nothing_gets_through_fails_after_the_stall_timeout_and_says_why() {
    let started = std::time::Instant::now();
    let (success, report, stderr) = rdma_bench(&[
        "--test",
        "write-bw",
        "--size",
        "4096",
        "--iters",
        "10",
        "--loss",
        "0.999",
        "--stall-timeout",
        "1",
    ]);
    assert!(!success, "{report}\n{stderr}");
    assert_eq!(report["verified"], false, "{report}");
    assert_eq!(
        report["error"], "server: nothing moved for 1 s waiting for the client",
        "{report}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn bad_arguments_are_refused_plainly() {
    let output = Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(["rdma-bench", "--native", "--stall-timeout", "0"])
        .output()
        .expect("run host-agent rdma-bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--stall-timeout"), "{stderr}");
}

#[test]
fn a_path_mtu_the_link_cannot_carry_is_refused_before_anything_starts() {
    for command in ["rdma-bench", "rdma"] {
        let mut args = vec![command, "--native", "--mtu", "2048"];
        if command == "rdma" {
            args.extend(["--ip", "10.99.0.1/24", "--tap", "dvmtu0"]);
        }
        let started = std::time::Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_host-agent"))
            .args(&args)
            .output()
            .expect("run host-agent");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--mtu 2048 does not fit the 1500-byte link")
                && stderr.contains("at most 1024"),
            "{args:?}: {stderr}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
