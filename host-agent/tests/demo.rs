//! The README's first command, `host-agent demo`, as a user runs it: every stage runs and
//! passes, the JSON lines (`--json`) carry each stage's verified report, and the text ends with
//! the summary. Needs `/dev/kvm`; without it the test says so loudly and passes.

use std::process::Command;

fn kvm_available() -> bool {
    let available = host_agent::vm::kvm_usable();
    if !available {
        eprintln!("\n!!!! SKIPPED the demo test: /dev/kvm is missing or not usable here !!!!\n");
    }
    available
}

fn demo(json: bool) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_host-agent"));
    command.arg("demo");
    if json {
        command.arg("--json");
    }
    let output = command.output().expect("run host-agent demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_demo_runs_every_stage_and_reports_it() {
    if !kvm_available() {
        return;
    }
    let stdout = demo(true);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let stages: Vec<(&str, bool)> = lines
        .iter()
        .map(|line| (line["stage"].as_str().unwrap(), line["success"] == true))
        .collect();
    assert_eq!(
        stages,
        [
            ("hello", true),
            ("ring", true),
            ("switch", true),
            ("rdma", true),
            ("rdma", true),
            ("rdma", true),
            ("native", true),
        ]
    );
    let tests: Vec<&str> = lines[3..6]
        .iter()
        .map(|line| line["report"]["test"].as_str().unwrap())
        .collect();
    assert_eq!(tests, ["write_bw", "read_lat", "atomic_lat"]);
    for line in &lines[3..] {
        let report = &line["report"];
        assert_eq!(report["verified"], true, "{report}");
    }
    // Stage 5 is a short native suite (the `bench-suite --json` report): RDMA WRITE and UDP
    // goodput side by side, and their round trips, with the documented keys.
    let suite = &lines[6]["report"];
    assert_eq!(suite["mode"], "native", "{suite}");
    assert_eq!(
        (suite["runs"].as_u64(), suite["lat_pairs"].as_u64()),
        (Some(3), Some(3))
    );
    let write_bw = &suite["write_bw"]["median"];
    assert_eq!(write_bw["test"], "write_bw", "{write_bw}");
    assert_eq!(write_bw["bytes"], 2000 * 65536, "{write_bw}");
    assert_eq!(
        suite["write_bw"]["gbit_per_sec_runs"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let write_lat = &suite["write_lat"]["median"];
    assert!(
        write_lat["lat_p50_us"].as_f64().unwrap() > 0.0,
        "{write_lat}"
    );
    let comparison = &suite["comparison"];
    for key in [
        "udp_gbit_per_sec",
        "rdma_write_gbit_per_sec",
        "goodput_ratio",
        "latency_ratio",
    ] {
        assert!(
            comparison[key].as_f64().unwrap() > 0.0,
            "{key}: {comparison}"
        );
    }
    let ratio = comparison["rdma_write_gbit_per_sec"].as_f64().unwrap()
        / comparison["udp_gbit_per_sec"].as_f64().unwrap();
    assert!((ratio - comparison["goodput_ratio"].as_f64().unwrap()).abs() < 1e-9);

    let text = demo(false);
    for stage in 1..=5 {
        assert!(
            text.contains(&format!("stage {stage} passed")),
            "stage {stage}: {text}"
        );
    }
    let summary = text
        .lines()
        .skip_while(|line| !line.starts_with("== summary"))
        .collect::<Vec<_>>();
    assert!(
        summary
            .first()
            .is_some_and(|line| line.contains("every stage passed")),
        "{text}"
    );
    assert!(
        summary
            .iter()
            .any(|line| line.contains("two VMs (emulated)") && line.ends_with("all verified"))
    );
    assert!(summary.iter().any(|line| line.contains("native engines")
        && line.contains("write_bw 64 KiB")
        && line.contains("x UDP over the same path")));
    assert!(
        summary
            .iter()
            .any(|line| line.contains("RDMA WRITE round trip 64 B")
                && line.ends_with("all verified"))
    );
    // Every measurement of the suite is shown as it ends.
    assert!(text.contains("round 3/3: rdma write_bw 65536 B"), "{text}");
    assert!(text.contains("latency pair 3/3: udp 64 B"), "{text}");
}
