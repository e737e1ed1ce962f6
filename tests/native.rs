//! Native mode: the same OS A applications and OS B network service as in the VMs, as host
//! threads joined by real shm-ring rings, on the built-in switch.

use std::net::{Ipv4Addr, SocketAddrV4};

use apps::Outcome;
use host_agent::devices::switch::{FaultConfig, Switch, SwitchConfig};
use host_agent::native::{NativeMember, spawn};

fn member(switch: &Switch, index: u8, app: host_agent::native::NativeApp) -> NativeMember {
    let mac = [0x02, 0xd1, 0, 0, index, 0x0b];
    NativeMember {
        tag: format!("n{index}"),
        mac,
        ipv4: Ipv4Addr::new(10, 78, 0, index),
        prefix_len: 24,
        backend: Box::new(switch.port(Some(mac)).unwrap()),
        app,
        echo: true,
        idle_spin: host_agent::native::DEFAULT_IDLE_SPIN,
        cpus: (None, None),
        one_thread: false,
    }
}

#[test]
fn native_endpoints_exchange_tcp_and_udp_over_a_lossy_switch() {
    let faults = FaultConfig {
        loss: 0.03,
        duplication: 0.01,
        reordering: 0.01,
        seed: 11,
    };
    let switch = Switch::new(SwitchConfig {
        faults,
        ..SwitchConfig::default()
    });
    let server = SocketAddrV4::new(Ipv4Addr::new(10, 78, 0, 1), 7);
    let echo = spawn(member(
        &switch,
        1,
        Box::new(|os, client| apps::net::tcp_echo(os, client, 7, 0, 0)),
    ))
    .unwrap();
    let tcp = spawn(member(
        &switch,
        2,
        Box::new(move |os, client| apps::net::tcp_client(os, client, server, 256 * 1024)),
    ))
    .unwrap();
    let udp = spawn(member(
        &switch,
        3,
        Box::new(move |os, client| apps::net::udp_echo(os, client, server, 50, 1000)),
    ))
    .unwrap();
    let tcp = tcp.join().unwrap();
    assert_eq!(tcp.outcome, Outcome::Success, "{:?}", tcp.lines);
    assert!(tcp.lines.iter().any(|l| {
        l.starts_with("net: tcp client: 262144 of 262144 bytes came back intact and in order")
    }));
    let udp = udp.join().unwrap();
    assert_eq!(udp.outcome, Outcome::Success, "{:?}", udp.lines);
    echo.stop();
    let echo = echo.join().unwrap();
    assert_eq!(echo.outcome, Outcome::Success, "{:?}", echo.lines);
    let counters = switch.counters();
    assert!(counters.lost > 0, "{counters:?}");
}

#[test]
fn pinned_endpoints_run_where_their_placement_says() {
    use host_agent::native::{Placement, allowed_cpus};
    let allowed = allowed_cpus();
    assert!(!allowed.is_empty(), "this process's CPUs cannot be read");
    for placement in [
        Placement::Endpoint,
        Placement::Split,
        Placement::Cross,
        Placement::Shared,
    ] {
        let switch = Switch::new(SwitchConfig::default());
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 78, 0, 1), 7);
        let mut echo = member(
            &switch,
            1,
            Box::new(|os, client| apps::net::tcp_echo(os, client, 7, 0, 0)),
        );
        echo.cpus = placement.cpus(0, &allowed);
        echo.one_thread = placement.one_thread(allowed.len());
        let mut client = member(
            &switch,
            2,
            Box::new(move |os, client| apps::net::tcp_client(os, client, server, 64 * 1024)),
        );
        client.cpus = placement.cpus(1, &allowed);
        client.one_thread = placement.one_thread(allowed.len());
        let expected = [echo.cpus, client.cpus];
        let echo = spawn(echo).unwrap();
        let client = spawn(client).unwrap().join().unwrap();
        assert_eq!(client.outcome, Outcome::Success, "{:?}", client.lines);
        echo.stop();
        let echo = echo.join().unwrap();
        assert_eq!(echo.outcome, Outcome::Success, "{:?}", echo.lines);
        assert_eq!(
            [echo.cpus, client.cpus],
            expected,
            "{placement:?} on CPUs {allowed:?}"
        );
    }
}

/// What each endpoint's RDMA application returned, by endpoint.
type Results = Vec<(u8, Result<apps::rdma::TestReport, apps::rdma::TestFailure>)>;

fn rdma_pair(
    test: apps::rdma::Test,
    size: u32,
    iters: u32,
    faults: FaultConfig,
    one_thread: bool,
) -> (apps::rdma::TestReport, apps::rdma::TestReport) {
    use apps::rdma::{TestParams, run_test};
    use std::sync::{Arc, Mutex};
    let switch = Switch::new(SwitchConfig {
        faults,
        ..SwitchConfig::default()
    });
    let server_ip = Ipv4Addr::new(10, 78, 0, 1);
    let params = |local: Ipv4Addr, server: Option<Ipv4Addr>| TestParams {
        test,
        size,
        iters,
        server,
        local,
        port: 18515,
        mtu: roce::verbs::Mtu::Mtu1024,
        handshake: apps::rdma::Handshake::RcPingpong,
        qp_timeout: apps::rdma::DEFAULT_QP_TIMEOUT,
        retry_cnt: apps::rdma::DEFAULT_RETRY_CNT,
        stall_timeout: 0,
    };
    let results: Arc<Mutex<Results>> = Arc::default();
    let mut handles = Vec::new();
    for index in [1u8, 2] {
        let results = results.clone();
        let local = Ipv4Addr::new(10, 78, 0, index);
        let test_params = params(local, (index == 2).then_some(server_ip));
        let app: host_agent::native::NativeApp = Box::new(move |os, client| {
            let result = run_test(os, client, &test_params);
            let outcome = if result.as_ref().is_ok_and(|r| r.verified) {
                Outcome::Success
            } else {
                Outcome::Failed
            };
            results.lock().unwrap().push((index, result));
            outcome
        });
        let mut member = member(&switch, index, app);
        member.one_thread = one_thread;
        handles.push(spawn(member).unwrap());
    }
    for handle in handles {
        let report = handle.join().unwrap();
        assert_eq!(
            report.outcome,
            Outcome::Success,
            "{test:?}: {:?} {:?}",
            report.lines,
            results.lock().unwrap()
        );
    }
    let results = results.lock().unwrap();
    let get = |index: u8| {
        results
            .iter()
            .find(|(i, _)| *i == index)
            .unwrap()
            .1
            .unwrap()
    };
    (get(1), get(2))
}

#[test]
fn every_rdma_test_runs_natively_over_a_lossy_switch() {
    every_rdma_test_over_a_lossy_switch(false);
}

/// The same with each endpoint's OS A and OS B taking turns on one thread.
#[test]
fn every_rdma_test_runs_on_one_thread_per_endpoint_over_a_lossy_switch() {
    every_rdma_test_over_a_lossy_switch(true);
}

fn every_rdma_test_over_a_lossy_switch(one_thread: bool) {
    use apps::rdma::Test;
    let faults = FaultConfig {
        loss: 0.02,
        duplication: 0.01,
        reordering: 0.01,
        seed: 5,
    };
    for (test, size, iters) in [
        (Test::WriteBw, 65536, 64),
        (Test::SendBw, 4096, 200),
        (Test::WriteLat, 64, 100),
        (Test::ReadLat, 4096, 100),
        (Test::AtomicLat, 8, 100),
        (Test::Pingpong, 4096, 100),
    ] {
        let (server, client) = rdma_pair(test, size, iters, faults, one_thread);
        assert!(
            server.verified && client.verified,
            "{test:?}: {server:?} {client:?}"
        );
        assert_eq!(client.messages, u64::from(iters), "{test:?}");
    }
}

#[test]
fn a_peer_that_goes_silent_fails_the_client_with_retry_exc_err_then_flushes() {
    use apps::rdma::{Handshake, Test, TestError, TestParams, run_test};
    use roce::verbs::WcStatus;
    use std::sync::{Arc, Mutex};
    let switch = Switch::new(SwitchConfig::default());
    let params = |index: u8, retry_cnt: u8| TestParams {
        test: Test::WriteBw,
        size: 4096,
        // Far more than runs before the link goes dead.
        iters: 10_000_000,
        server: (index == 2).then_some(Ipv4Addr::new(10, 78, 0, 1)),
        local: Ipv4Addr::new(10, 78, 0, index),
        port: 18515,
        mtu: roce::verbs::Mtu::Mtu1024,
        handshake: Handshake::RcPingpong,
        qp_timeout: 10, // 4.2 ms
        retry_cnt,
        stall_timeout: 0,
    };
    let results: Arc<Mutex<Results>> = Arc::default();
    let mut handles = Vec::new();
    // The server keeps rxe's unlimited retries; the client gives up after 3.
    for (index, retry_cnt) in [(1u8, 7u8), (2, 3)] {
        let results = results.clone();
        let test_params = params(index, retry_cnt);
        let app: host_agent::native::NativeApp = Box::new(move |os, client| {
            let result = run_test(os, client, &test_params);
            results.lock().unwrap().push((index, result));
            Outcome::Failed
        });
        handles.push(spawn(member(&switch, index, app)).unwrap());
    }
    // Once WRITEs flow, the link goes dead: every frame from now on is lost.
    let start = std::time::Instant::now();
    while switch.counters().delivered < 5000 {
        assert!(start.elapsed().as_secs() < 60, "{:?}", switch.counters());
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    switch.set_faults(FaultConfig {
        loss: 1.0,
        ..FaultConfig::default()
    });
    let mut handles = handles.into_iter();
    let server = handles.next().unwrap();
    let client = handles.next().unwrap().join().unwrap();
    // The client's first outstanding WRITE failed after its retries; everything behind it
    // was flushed.
    let result_of = |index: u8| {
        let results = results.lock().unwrap();
        results.iter().find(|(i, _)| *i == index).unwrap().1
    };
    let client_failure = result_of(2).unwrap_err();
    assert_eq!(
        client_failure.error,
        TestError::Completion(WcStatus::RetryExcErr),
        "{:?}",
        client.lines
    );
    // What it had done by then: the WRITEs that completed, and the resends that failed.
    let so_far = client_failure.so_far;
    assert!(so_far.messages > 0 && !so_far.verified, "{so_far:?}");
    assert_eq!(so_far.bytes, so_far.messages * 4096);
    assert!(so_far.retransmissions >= 3, "{so_far:?}");
    let summary = client
        .lines
        .iter()
        .find(|line| line.contains("completed with RetryExcErr"))
        .unwrap_or_else(|| panic!("{:?}", client.lines));
    let count = |word: &str| -> u64 {
        let (before, _) = summary.split_once(word).unwrap();
        before.rsplit(' ').nth(1).unwrap().parse().unwrap()
    };
    let (left, flushed) = (count("more completions"), count("of them WrFlushErr"));
    assert!(flushed > 0 && flushed == left, "{summary}");
    // The server (unlimited retries, waiting for WRITEs that never come) ends when asked.
    server.stop();
    let server = server.join().unwrap();
    let server_result = result_of(1).map_err(|failure| failure.error);
    assert!(
        matches!(server_result, Err(TestError::Stopped(_))),
        "{server_result:?} {:?}",
        server.lines
    );
    // Its responder placed every WRITE the client saw complete, and perhaps more whose ACKs
    // were lost.
    let placed = result_of(1).unwrap_err().so_far.messages;
    assert!(placed >= so_far.messages, "{placed} < {so_far:?}");
}

fn net_bench(
    transport: apps::netbench::Transport,
    size: u32,
    count: u64,
    path: &host_agent::netbench::NetPath,
) -> host_agent::netbench::NetBenchReport {
    let params = host_agent::netbench::NetBenchParams {
        transport,
        size,
        count,
        duration_ms: 0,
        window: apps::netbench::DEFAULT_WINDOW,
        rtt_size: 64,
        rtt_count: 50,
    };
    let (report, logs) = host_agent::netbench::run_native(
        &params,
        path,
        host_agent::native::DEFAULT_IDLE_SPIN,
        true,
    )
    .unwrap();
    assert!(report.verified, "{report:?} {logs:?}");
    assert_eq!(report.error, None);
    assert_eq!(report.messages, count, "{report:?}");
    assert!(
        report.received > 0 && report.received <= count,
        "{report:?}"
    );
    assert_eq!(report.lost, count - report.received);
    assert_eq!(report.bytes, report.received * u64::from(size));
    assert!(
        report.seconds > 0.0 && report.gbit_per_sec > 0.0,
        "{report:?}"
    );
    assert_eq!(report.round_trips, 50, "{report:?}");
    assert!(
        report.rtt_us_p50 > 0.0 && report.rtt_us_p50 <= report.rtt_us_p99,
        "{report:?}"
    );
    report
}

#[test]
fn net_bench_measures_udp_and_tcp_between_native_endpoints() {
    use apps::netbench::Transport;
    use host_agent::netbench::NetPath;
    // Paced by the server's credits, a long stream does not overrun the receiver.
    let udp = net_bench(Transport::Udp, 1024, 20_000, &NetPath::Switch);
    assert_eq!(
        (udp.mode, udp.path, udp.transport),
        ("native", "switch", "udp")
    );
    assert_eq!(udp.window, apps::netbench::DEFAULT_WINDOW);
    assert_eq!(udp.lost, 0, "{udp:?}");
    // Credits come back: a window may wait out the stall timer when the machine is busy (the
    // server's thread did not run for 20 ms), but not a quarter of them.
    let windows = udp.messages / u64::from(udp.window);
    assert!(udp.credit_stalls * 4 < windows, "{udp:?}");
    // The largest datagrams too: the receiving socket holds a full burst of them.
    let largest = net_bench(Transport::Udp, 1472, 20_000, &NetPath::Switch);
    assert_eq!(largest.lost, 0, "{largest:?}");
    let tcp = net_bench(Transport::Tcp, 4096, 100, &NetPath::Switch);
    assert_eq!(tcp.received, 100, "TCP loses nothing: {tcp:?}");
}

#[test]
fn net_bench_measures_against_the_host_over_a_tap() {
    use apps::netbench::Transport;
    use host_agent::netbench::{NetPath, TapPath};
    if !duovm_tests::tap_available("net_bench_measures_against_the_host_over_a_tap") {
        return;
    }
    // The TAP, its address and the host's sockets live in a namespace of the test's own.
    let ns = duovm_tests::NetNs::new("nb");
    let path = NetPath::Tap(TapPath {
        name: format!("dnb{}", std::process::id() % 100_000),
        host: Ipv4Addr::new(10, 79, 1, 1),
        guest: Ipv4Addr::new(10, 79, 1, 2),
        prefix_len: 24,
    });
    ns.run_inside(|| {
        let udp = net_bench(Transport::Udp, 1472, 300, &path);
        assert_eq!(udp.path, "tap");
        let tcp = net_bench(Transport::Tcp, 65536, 20, &path);
        assert_eq!(tcp.received, 20, "TCP loses nothing: {tcp:?}");
    });
}

#[test]
fn bench_suite_compares_rdma_with_udp_between_native_endpoints() {
    use host_agent::benchsuite::{self, SuiteMode, SuiteParams};
    let params = SuiteParams {
        runs: 2,
        udp_count: 2000,
        tcp_count: 20,
        rtt_count: 20,
        lat_pairs: 2,
        rdma_iters: 30,
        lat_iters: 20,
    };
    let mode = SuiteMode::Native {
        tuning: host_agent::native::DEFAULT_IDLE_SPIN.into(),
    };
    let mut lines = 0;
    let report = benchsuite::run(&mode, &params, |_| lines += 1).unwrap();
    assert!(report.verified, "{report:?}");
    assert_eq!((report.mode, report.runs), ("native", 2));
    assert_eq!(lines, 2 * 4 + 2 * 2, "a progress line per measurement");
    let udp = &report.udp.median;
    assert_eq!(
        (udp.messages, udp.lost),
        (2000, 0),
        "paced UDP loses nothing"
    );
    assert_eq!(report.write_bw.median.figures.messages, 30);
    let c = &report.comparison;
    assert!(
        c.udp_gbit_per_sec > 0.0 && c.rdma_write_gbit_per_sec > 0.0,
        "{c:?}"
    );
    assert!((c.goodput_ratio - c.rdma_write_gbit_per_sec / c.udp_gbit_per_sec).abs() < 1e-9);
    assert!((c.rdma_rtt_us_p50 - 2.0 * c.rdma_write_lat_us_p50).abs() < 1e-9);
    assert!((c.latency_ratio - c.rdma_rtt_us_p50 / c.udp_rtt_us_p50).abs() < 1e-9);
    assert_eq!(report.lat_pairs, 2);
    assert_eq!(c.latency_ratio_pairs.len(), 2, "{c:?}");
    assert!(
        c.latency_ratio_pairs.iter().all(|ratio| *ratio > 0.0),
        "{c:?}"
    );
    assert_eq!(report.udp_rtt.median.round_trips, 20);
    assert_eq!(
        report.udp.median.round_trips, 0,
        "goodput rounds measure no round trip"
    );
    assert_eq!(c.goodput_goal_met, c.goodput_ratio >= c.goodput_goal);
    assert_eq!(c.latency_goal_met, c.latency_ratio <= c.latency_goal);
}

#[test]
fn rdma_bench_runs_natively_through_a_linux_bridge() {
    use host_agent::rdmabench::{RdmaBenchParams, RdmaPath, run_native};
    if !duovm_tests::tap_available("rdma_bench_runs_natively_through_a_linux_bridge") {
        return;
    }
    // The bridge and the TAPs live in a namespace of the test's own.
    let ns = duovm_tests::NetNs::new("rb");
    let stem = format!("dv{:x}-", std::process::id());
    let left_behind = || ns.left_behind(|name| name.starts_with(&stem));
    let params = |test, size, iters, loss| RdmaBenchParams {
        loss,
        path: RdmaPath::Tap,
        ..RdmaBenchParams::new(test, size, iters)
    };
    for (test, size, iters) in [
        (apps::rdma::Test::WriteBw, 65536, 100),
        (apps::rdma::Test::ReadLat, 64, 200),
        (apps::rdma::Test::SendBw, 4096, 200),
    ] {
        let params = params(test, size, iters, 0.0);
        let (report, logs) = ns
            .run_inside(|| run_native(&params, std::time::Duration::from_millis(1), false))
            .unwrap();
        assert!(report.verified, "{test:?}: {report:#?} {logs:?}");
        assert_eq!(report.path, "tap");
        assert_eq!(report.figures.messages, u64::from(iters));
        assert_eq!(left_behind(), Vec::<String>::new());
    }
    // The switch's loss has no counterpart on the host's network: a clear error, and nothing
    // is made.
    let lossy = params(apps::rdma::Test::WriteBw, 4096, 1, 0.1);
    let error = ns
        .run_inside(|| run_native(&lossy, std::time::Duration::from_millis(1), false))
        .unwrap_err();
    assert!(error.to_string().contains("--loss"), "{error}");
    assert_eq!(left_behind(), Vec::<String>::new());
}

#[test]
fn a_step_may_outlast_the_stall_timeout_while_psns_move_and_a_stall_fails_clearly() {
    use apps::rdma::Test;
    use host_agent::rdmabench::{RdmaBenchParams, run_native};
    let params = |iters, loss| RdmaBenchParams {
        loss,
        stall_timeout: 1,
        ..RdmaBenchParams::new(Test::WriteBw, 65536, iters)
    };
    let spin = std::time::Duration::from_millis(1);
    // The write_bw server waits for one completion, the client's last WRITE_WITH_IMM, for
    // the whole run: a run longer than the stall timeout still ends well while PSNs move.
    // How long a run takes depends on the build and the host: more messages until it is.
    let mut iters = 2000;
    loop {
        let (report, logs) = run_native(&params(iters, 0.0), spin, false).unwrap();
        assert!(report.verified, "{report:#?} {logs:?}");
        assert_eq!(report.error, None);
        if report.figures.seconds > 1.5 {
            break;
        }
        assert!(
            iters < 1 << 20,
            "{iters} messages in {} s",
            report.figures.seconds
        );
        iters *= 4;
    }
    // Nothing gets through: each side fails after a second without headway, and says so.
    let started = std::time::Instant::now();
    let (report, logs) = run_native(&params(10, 1.0), spin, false).unwrap();
    assert!(!report.verified);
    let error = report.error.unwrap_or_default();
    assert!(
        error.starts_with("server: nothing moved for 1 s") && error.contains("the client"),
        "{error} {logs:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn an_endpoint_whose_application_fails_closes_its_connections_and_its_peer_fails_at_once() {
    use apps::rdma::Test;
    use host_agent::rdmabench::{RdmaBenchParams, run_native};
    // A path MTU the 1500-byte link cannot carry (the command line refuses it; the library
    // lets it through): the server fails as it connects its QP, before it answers the
    // client's connection message. Its OS B then closes the exchange connection, as a
    // kernel closes an exiting process's sockets, so the client learns of it at once rather
    // than after the stall timeout (60 s).
    let params = RdmaBenchParams {
        mtu: roce::verbs::Mtu::Mtu2048,
        ..RdmaBenchParams::new(Test::WriteBw, 4096, 10)
    };
    let started = std::time::Instant::now();
    let (report, logs) = run_native(&params, std::time::Duration::from_millis(1), false).unwrap();
    assert!(!report.verified);
    let error = report.error.unwrap_or_default();
    assert_eq!(
        error,
        "server: path MTU 2048 is larger than the link carries (the port's active MTU is 1024)",
        "{logs:?}"
    );
    let client_failed = logs
        .iter()
        .flatten()
        .any(|line| line.contains("failed: connection exchange: the peer closed the connection"));
    assert!(client_failed, "{logs:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_client_that_ends_mid_test_ends_its_server_at_once() {
    use apps::rdma::{Handshake, Test, TestError, TestParams, run_test};
    use std::sync::{Arc, Mutex};
    let switch = Switch::new(SwitchConfig::default());
    let results: Arc<Mutex<Results>> = Arc::default();
    let mut handles = Vec::new();
    for index in [1u8, 2] {
        let results = results.clone();
        let params = TestParams {
            test: Test::WriteBw,
            size: 4096,
            // Far more than runs before the client is stopped.
            iters: 100_000_000,
            server: (index == 2).then_some(Ipv4Addr::new(10, 78, 0, 1)),
            local: Ipv4Addr::new(10, 78, 0, index),
            port: 18515,
            mtu: roce::verbs::Mtu::Mtu1024,
            handshake: Handshake::RcPingpong,
            qp_timeout: apps::rdma::DEFAULT_QP_TIMEOUT,
            retry_cnt: apps::rdma::DEFAULT_RETRY_CNT,
            stall_timeout: 0,
        };
        let app: host_agent::native::NativeApp = Box::new(move |os, client| {
            let result = run_test(os, client, &params);
            results.lock().unwrap().push((index, result));
            Outcome::Failed
        });
        handles.push(spawn(member(&switch, index, app)).unwrap());
    }
    let start = std::time::Instant::now();
    while switch.counters().delivered < 2000 {
        assert!(start.elapsed().as_secs() < 60, "{:?}", switch.counters());
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The client is asked to end mid-test (as Ctrl-C asks): it stops, and its OS B closes the
    // exchange connection, which the server takes as the client's end, at once rather than
    // after the stall timeout (60 s).
    let mut handles = handles.into_iter();
    let server = handles.next().unwrap();
    let client = handles.next().unwrap();
    client.stop();
    let stopped = std::time::Instant::now();
    let client = client.join().unwrap();
    let server = server.join().unwrap();
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        stopped.elapsed()
    );
    let results = results.lock().unwrap();
    let error_of = |index: u8| {
        let (_, result) = results.iter().find(|(i, _)| *i == index).unwrap();
        result.as_ref().unwrap_err().error
    };
    assert!(
        matches!(error_of(2), TestError::Stopped(_)),
        "{:?}",
        client.lines
    );
    assert_eq!(
        error_of(1),
        TestError::PeerEnded("waiting for the client"),
        "{:?}",
        server.lines
    );
    assert_eq!(
        error_of(1).to_string(),
        "the peer ended the test (it closed the connection) waiting for the client"
    );
}

#[test]
fn rdma_survives_heavy_loss_natively() {
    use host_agent::rdmabench::{RdmaBenchParams, run_native};
    // 15% of frames lost each way: the connection exchange over TCP and most messages are
    // resent in part, NAKs and ACKs are lost too, and every message still arrives once,
    // intact, in order (the server checks each SEND's pattern and count).
    let params = RdmaBenchParams {
        loss: 0.15,
        ..RdmaBenchParams::new(apps::rdma::Test::SendBw, 4096, 300)
    };
    let (report, logs) = run_native(&params, std::time::Duration::from_millis(1), false).unwrap();
    assert!(report.verified, "{report:#?} {logs:?}");
    assert_eq!(report.error, None);
    assert_eq!(report.figures.messages, 300);
    assert!(report.figures.retransmissions > 100, "{report:#?}");
}

/// One RC endpoint whose packets cross the built-in switch: a verbs device and its port.
struct SwitchedQp {
    device: roce::verbs::Device,
    port: host_agent::devices::switch::SwitchPort,
    mac: [u8; 6],
    qp: roce::verbs::QpHandle,
    cq: roce::verbs::CqHandle,
    mr: roce::verbs::MrHandle,
    info: roce::verbs::MrInfo,
}

/// Completions so far, per end.
type Completions = [Vec<roce::verbs::WorkCompletion>; 2];

/// Two RC QPs, connected, whose every packet goes through `switch` in an Ethernet frame: the
/// transport's error paths with the switch's own loss, duplication and reordering.
fn switched_pair(switch: &Switch, rnr_retry: u8) -> [SwitchedQp; 2] {
    use roce::verbs::*;
    let ip = |index: usize| Ipv4Addr::new(10, 79, 0, index as u8 + 1);
    let mut ends = [0usize, 1].map(|index| {
        let mut device = Device::new(DeviceConfig::new(ip(index)).with_seed(index as u64 + 1));
        let pd = device.alloc_pd().unwrap();
        let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
        let mr = device.reg_mr(pd, 1 << 20, access).unwrap();
        let cq = device.create_cq(256).unwrap();
        let qp = device
            .create_qp(pd, &QpInitAttr::new(cq, cq, QpCap::default()))
            .unwrap();
        let (init, mask) = roce::oob::init_attr(AccessFlags::REMOTE_WRITE);
        device.modify_qp(qp, &init, mask).unwrap();
        let mac = [0x02, 0xd2, 0, 0, index as u8 + 1, 0x0b];
        let info = device.mr(mr).unwrap().info();
        SwitchedQp {
            device,
            port: switch.port(Some(mac)).unwrap(),
            mac,
            qp,
            cq,
            mr,
            info,
        }
    });
    // Connected as ibv_rc_pingpong connects, with timers for a fast path.
    let destinations = [0, 1].map(|index| roce::oob::Destination {
        lid: 0,
        qpn: ends[index].qp.qp_num(),
        psn: 0x100 * index as u32,
        gid: Gid::from_ipv4(ip(index)),
    });
    for (index, end) in ends.iter_mut().enumerate() {
        let (mut rtr, mask) = destinations[1 - index].rtr_attr(Mtu::Mtu1024);
        rtr.min_rnr_timer = 1; // 10 us
        end.device.modify_qp(end.qp, &rtr, mask).unwrap();
        let (mut rts, mask) = roce::oob::rts_attr(destinations[index].psn);
        rts.timeout = 8; // 1 ms
        rts.rnr_retry = rnr_retry;
        end.device.modify_qp(end.qp, &rts, mask).unwrap();
    }
    ends
}

/// Moves packets between the two ends through the switch and runs their timers until `done`
/// holds for the ends and their completions so far; panics after 20 s.
fn pump_until(
    ends: &mut [SwitchedQp; 2],
    switch: &Switch,
    completions: &mut Completions,
    mut done: impl FnMut(&[SwitchedQp; 2], &Completions) -> bool,
) {
    use host_agent::devices::net_backend::NetBackend;
    let start = std::time::Instant::now();
    let mut packet = vec![0u8; 2048];
    let mut frame = vec![0u8; 2048];
    let macs = [ends[0].mac, ends[1].mac];
    while !done(ends, completions) {
        assert!(start.elapsed().as_secs() < 20, "{completions:?}");
        let now = start.elapsed().as_nanos() as u64;
        for (index, end) in ends.iter_mut().enumerate() {
            end.device.handle_timeouts(now);
            while let Some(len) = end.device.poll_transmit(now, &mut packet) {
                frame[..6].copy_from_slice(&macs[1 - index]);
                frame[6..12].copy_from_slice(&end.mac);
                frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                frame[14..14 + len].copy_from_slice(&packet[..len]);
                end.port.send(&frame[..14 + len]).unwrap();
            }
            while let Some(len) = end.port.receive(&mut frame).unwrap() {
                end.device.receive(&frame[14..len], now);
            }
            let mut batch = [roce::verbs::WorkCompletion::default(); 16];
            while let Ok(got @ 1..) = end.device.poll_cq(end.cq, &mut batch) {
                completions[index].extend_from_slice(&batch[..got]);
            }
        }
        // A frame held back for reordering goes out behind the next one, or now.
        switch.flush_held();
        std::thread::yield_now();
    }
}

/// `(wr_id, status)` of each completion.
fn statuses(completions: &[roce::verbs::WorkCompletion]) -> Vec<(u64, roce::verbs::WcStatus)> {
    completions.iter().map(|wc| (wc.wr_id, wc.status)).collect()
}

#[test]
fn rnr_and_remote_access_errors_through_the_faulty_switch() {
    use roce::verbs::{RecvWr, SendWr, WcStatus, WrOperation};
    let faulty_switch = || {
        Switch::new(SwitchConfig {
            faults: FaultConfig {
                loss: 0.05,
                duplication: 0.02,
                reordering: 0.02,
                seed: 11,
            },
            ..SwitchConfig::default()
        })
    };
    let data: Vec<u8> = (0..9000u32).map(|i| (i * 7 + 1) as u8).collect();
    let send = |end: &mut SwitchedQp, wr_id: u64, operation: WrOperation| {
        let sge = end.info.sge(wr_id * 3000, 3000);
        let offset = wr_id as usize * 3000;
        end.device.mr_mut(end.mr).unwrap().as_mut_slice()[offset..offset + 3000]
            .copy_from_slice(&data[offset..offset + 3000]);
        end.device
            .post_send(end.qp, &SendWr::new(wr_id, operation, &[sge]).signaled())
            .unwrap();
    };

    // SENDs before the peer posted a receive: RNR NAKs; once receives are posted every SEND
    // lands, once and intact.
    let switch = faulty_switch();
    let mut ends = switched_pair(&switch, 7);
    let mut completions = Completions::default();
    for wr_id in 0..3 {
        send(&mut ends[0], wr_id, WrOperation::Send);
    }
    pump_until(&mut ends, &switch, &mut completions, |ends, _| {
        ends[0].device.counters().rnr_naks_received >= 3
    });
    assert!(completions[0].is_empty(), "{completions:?}");
    for wr_id in 0..3u64 {
        let sge = ends[1].info.sge(0x1_0000 + wr_id * 4096, 4096);
        let wr = RecvWr {
            wr_id,
            sg_list: &[sge],
        };
        ends[1].device.post_recv(ends[1].qp, &wr).unwrap();
    }
    pump_until(&mut ends, &switch, &mut completions, |_, done| {
        done[0].len() == 3 && done[1].len() == 3
    });
    let all_good = vec![
        (0, WcStatus::Success),
        (1, WcStatus::Success),
        (2, WcStatus::Success),
    ];
    assert_eq!(statuses(&completions[0]), all_good);
    assert_eq!(statuses(&completions[1]), all_good);
    let landed = ends[1].device.mr(ends[1].mr).unwrap().as_slice();
    for wr_id in 0..3 {
        let (to, from) = (0x1_0000 + wr_id * 4096, wr_id * 3000);
        assert!(
            landed[to..to + 3000] == data[from..from + 3000],
            "SEND {wr_id}"
        );
    }
    assert!(switch.counters().lost > 0, "{:?}", switch.counters());

    // No receive ever: after rnr_retry 2 the SEND fails, and the WRs behind it are flushed.
    let switch = faulty_switch();
    let mut ends = switched_pair(&switch, 2);
    let mut completions = Completions::default();
    for wr_id in 0..3 {
        send(&mut ends[0], wr_id, WrOperation::Send);
    }
    pump_until(&mut ends, &switch, &mut completions, |_, done| {
        done[0].len() == 3
    });
    assert_eq!(
        statuses(&completions[0]),
        [
            (0, WcStatus::RnrRetryExcErr),
            (1, WcStatus::WrFlushErr),
            (2, WcStatus::WrFlushErr),
        ]
    );

    // A WRITE with a key the peer never gave out: REM_ACCESS_ERR, the rest flushed, and the
    // peer's memory untouched.
    let switch = faulty_switch();
    let mut ends = switched_pair(&switch, 7);
    let mut completions = Completions::default();
    let (addr, rkey) = (ends[1].info.addr, ends[1].info.rkey);
    for wr_id in 0..3 {
        let key = if wr_id == 0 { rkey ^ 0x100 } else { rkey };
        let write = WrOperation::RdmaWrite {
            remote_addr: addr + wr_id * 3000,
            rkey: key,
        };
        send(&mut ends[0], wr_id, write);
    }
    pump_until(&mut ends, &switch, &mut completions, |_, done| {
        done[0].len() == 3
    });
    assert_eq!(
        statuses(&completions[0]),
        [
            (0, WcStatus::RemAccessErr),
            (1, WcStatus::WrFlushErr),
            (2, WcStatus::WrFlushErr),
        ]
    );
    let peer = ends[1].device.mr(ends[1].mr).unwrap().as_slice();
    assert!(
        peer[..3000].iter().all(|&byte| byte == 0),
        "a bad key wrote"
    );
}
