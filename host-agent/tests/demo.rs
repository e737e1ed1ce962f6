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
            ("native", true),
        ]
    );
    let tests: Vec<&str> = lines[3..]
        .iter()
        .map(|line| line["report"]["test"].as_str().unwrap())
        .collect();
    assert_eq!(
        tests,
        [
            "write_bw",
            "read_lat",
            "atomic_lat",
            "write_bw",
            "write_lat"
        ]
    );
    for line in &lines[3..] {
        let report = &line["report"];
        assert_eq!(report["verified"], true, "{report}");
    }
    // The figures are flattened into each report (the documented `rdma-bench --json` keys).
    let native_bw = &lines[6]["report"];
    assert!(
        native_bw["gbit_per_sec"].as_f64().unwrap() > 0.0,
        "{native_bw}"
    );
    assert_eq!(native_bw["bytes"], 2000 * 65536, "{native_bw}");
    let native_lat = &lines[7]["report"];
    assert!(
        native_lat["lat_p50_us"].as_f64().unwrap() > 0.0,
        "{native_lat}"
    );

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
        && line.ends_with("all verified")));
}
