//! `host-agent rdma-bench` as a script runs it: one JSON object, the exit status, and a
//! failure that says why in the `error` key; and Ctrl-C, natively, through TAPs and between
//! VMs. Native mode needs neither KVM nor a TAP; the VM test skips loudly without KVM.

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
    // Native engines compute their ICRCs themselves.
    assert_eq!(report["icrc"], "engine", "{report}");
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
    // Each names the argument and the value it refuses, before anything starts.
    let cases: [(&[&str], &str); 7] = [
        (
            &["rdma-bench", "--native", "--stall-timeout", "0"],
            "--stall-timeout",
        ),
        (
            &["rdma-bench", "--native", "--size", "0"],
            "'0' for '--size",
        ),
        (
            &["rdma-bench", "--native", "--iters", "0"],
            "'0' for '--iters",
        ),
        (
            &["rdma-bench", "--native", "--loss", "1"],
            "'1' for '--loss",
        ),
        (
            &["rdma-bench", "--native", "--loss=-0.5"],
            "'-0.5' for '--loss",
        ),
        (
            &["bench-suite", "--native", "--lat-pairs", "0"],
            "'0' for '--lat-pairs",
        ),
        (&["ring-bench", "--size", "8"], "8 is not in 16..=2048"),
    ];
    for (args, expected) in cases {
        let started = std::time::Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_host-agent"))
            .args(args)
            .output()
            .expect("run host-agent");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
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

/// Starts a long `rdma-bench --native --json` with `args`, sends it Ctrl-C after `after`, and
/// returns its exit status, its report and its standard error.
fn interrupted(
    args: &[&str],
    after: std::time::Duration,
) -> (Option<i32>, serde_json::Value, String, u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let child = Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .args([
            "rdma-bench",
            "--native",
            "--json",
            "--test",
            "write-bw",
            "--size",
            "4096",
        ])
        .args(["--iters", "1000000000"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run host-agent rdma-bench");
    let pid = child.id();
    std::thread::sleep(after);
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).expect("send SIGINT");
    let started = std::time::Instant::now();
    let output = child.wait_with_output().expect("wait for host-agent");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?} to end",
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("not one JSON object ({error}): {stdout}\n{stderr}"));
    (output.status.code(), report, stderr, pid)
}

#[test]
fn ctrl_c_ends_a_run_in_order_with_what_it_measured() {
    let (status, report, stderr, _) = interrupted(&[], std::time::Duration::from_secs(2));
    assert_eq!(status, Some(130), "{stderr}");
    assert!(stderr.ends_with("host-agent: interrupted\n"), "{stderr}");
    assert_eq!(report["verified"], false);
    assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("stopped"), "{report}");
}

#[test]
fn ctrl_c_removes_the_bridge_and_taps_made_for_the_run() {
    if !may_make_taps() {
        eprintln!(
            "!!!! SKIPPED ctrl_c_removes_the_bridge_and_taps_made_for_the_run: needs CAP_NET_ADMIN and /dev/net/tun !!!!"
        );
        return;
    }
    let (status, report, stderr, pid) = interrupted(&["--tap"], std::time::Duration::from_secs(2));
    assert_eq!(status, Some(130), "{stderr}");
    assert_eq!(report["path"], "tap");
    assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
    // The run's interfaces are named after the agent's process id.
    let prefix = format!("dv{pid:x}-");
    let left: Vec<_> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Whether this process may make TAPs and bridges: `/dev/net/tun` and CAP_NET_ADMIN (bit 12 of
/// the effective capabilities).
fn may_make_taps() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let net_admin = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0);
    net_admin && std::path::Path::new("/dev/net/tun").exists()
}

#[test]
fn ctrl_c_ends_a_run_between_vms_in_order_with_what_it_measured() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !host_agent::vm::kvm_usable() {
        eprintln!(
            "!!!! SKIPPED ctrl_c_ends_a_run_between_vms_in_order_with_what_it_measured: /dev/kvm is not usable !!!!"
        );
        return;
    }
    // Shown as the text report (the guests' logs on standard error), so that Ctrl-C comes
    // once data moves: the server's first progress line (after 10 s) says how many messages
    // it took; more than fit in the requester's window of 128 packets means that the client
    // has had completions too.
    let mut child = Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(["rdma-bench", "--test", "write-bw", "--size", "4096"])
        .args(["--iters", "100000000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run host-agent rdma-bench");
    let (moving, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("standard error");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let taken = line
                .split_once(" s, waiting for the client: ")
                .and_then(|(_, rest)| rest.split(' ').next()?.parse::<u64>().ok());
            if taken.is_some_and(|messages| messages > 32) {
                let _ = moving.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let waited = lines.recv_timeout(Duration::from_secs(240));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("send SIGINT");
    let asked = Instant::now();
    let output = child.wait_with_output().expect("wait for host-agent");
    let took = asked.elapsed();
    let stderr = reader.join().expect("the reading thread");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(waited.is_ok(), "no data moved:\n{stderr}");
    assert!(took < Duration::from_secs(20), "took {took:?} to end");
    assert_eq!(output.status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("host-agent: ending in order (Ctrl-C again ends at once)\n")
            && stderr.contains("host-agent: interrupted\n"),
        "{stderr}"
    );
    // Each OS A stopped its test, each OS B closed the exchange connection and ended by
    // itself: no VM was stopped by force.
    assert_eq!(stderr.matches("failed: stopped ").count(), 2, "{stderr}");
    assert_eq!(
        stderr
            .matches("[b] net: OS A's connections closed: 1 with a FIN")
            .count(),
        2,
        "{stderr}"
    );
    assert!(
        stdout.contains("OS b finished successfully") && !stdout.contains("was stopped"),
        "{stdout}"
    );
    // What it measured up to then.
    let messages: u64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("rdma: write_bw (vm), "))
        .and_then(|rest| rest.split(" x ").next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no report line: {stdout}"));
    assert!(messages > 0, "{stdout}");
    assert!(stdout.contains("rdma: failed, "), "{stdout}");
    assert!(stdout.contains(": stopped "), "{stdout}");
}
