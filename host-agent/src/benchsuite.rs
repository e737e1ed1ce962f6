//! `bench-suite`: RDMA beside the raw path it runs on, measured in one run.
//!
//! Every goodput round runs, between two endpoints on the built-in switch (two VMs, or
//! natively): `net-bench` UDP with 1024-byte datagrams (the payload of one RoCE packet at MTU
//! 1024, so both move the same number of packets for the same bytes) and `rdma-bench`
//! `write_bw` with 64 KiB messages at MTU 1024, back to back in alternating order, then UDP with
//! the largest datagram of the 1500-byte link (1472 bytes) and TCP with 64 KiB writes and
//! 64-byte round trips. Every latency pair runs UDP's 64-byte round trips and `write_lat` with
//! 64-byte messages back to back, from fresh endpoints, in alternating order. Rounds and pairs
//! repeat, so that every measurement sees the same mix of machine conditions; each figure is
//! the median over them.
//!
//! The comparison puts RDMA WRITE goodput against UDP goodput with the same packet payload, and
//! RDMA's round trip against UDP's. `write_lat` reports half a round trip, as perftest does;
//! the comparison doubles it, so both sides of the latency ratio are round trips.
//!
//! # Why the compared measurements come in pairs
//!
//! On a host with fewer CPUs than engine threads (four per pair of endpoints), a round trip is
//! mostly hand-offs between threads, and what a hand-off costs depends on which threads the
//! scheduler put together when the endpoints started: two runs of the same test differ by a
//! third or more, and goodput moves with what else the host runs. A round trip measured after
//! a goodput measurement in the same run inherits the placement the load of that measurement
//! left, which a fresh run does not get. So the compared measurements start the same way, one
//! right after the other, and the order alternates, so that neither side always runs first;
//! the medians over the rounds and pairs compare like with like.

use std::time::Duration;

use apps::netbench::Transport;
use apps::rdma::Test;
use roce::verbs::Mtu;
use serde::Serialize;

use crate::native::{NativeError, NativeTuning};
use crate::netbench::{self, NetBenchError, NetBenchParams, NetBenchReport, NetPath};
use crate::rdmabench::{self, RdmaBenchParams, RdmaBenchReport};
use crate::vm::{VmConfig, VmError};

/// UDP payload compared with RDMA WRITE: one RoCE packet's payload at [`RDMA_MTU`].
pub const UDP_COMPARED_SIZE: u32 = 1024;
/// The largest UDP payload on the 1500-byte link.
pub const UDP_LARGEST_SIZE: u32 = 1472;
/// TCP write size.
pub const TCP_SIZE: u32 = 65536;
/// RDMA WRITE message size of the goodput comparison.
pub const RDMA_SIZE: u32 = 65536;
/// Path MTU of the RDMA measurements.
pub const RDMA_MTU: Mtu = Mtu::Mtu1024;
/// Message size of every round-trip measurement.
pub const SMALL_SIZE: u32 = 64;
/// RDMA WRITE goodput should be at least this fraction of UDP's.
pub const GOODPUT_GOAL: f64 = 0.9;
/// RDMA's round trip should be at most this multiple of UDP's.
pub const LATENCY_GOAL: f64 = 1.2;

/// How much to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuiteParams {
    /// Rounds.
    pub runs: u32,
    /// UDP datagrams per goodput measurement.
    pub udp_count: u64,
    /// TCP writes per goodput measurement.
    pub tcp_count: u64,
    /// Round trips per UDP and TCP measurement.
    pub rtt_count: u64,
    /// Latency pairs (UDP round trips, then `write_lat`, or the other way round).
    pub lat_pairs: u32,
    /// RDMA WRITEs of `write_bw`.
    pub rdma_iters: u32,
    /// Round trips of `write_lat`.
    pub lat_iters: u32,
}

impl SuiteParams {
    /// Defaults for native endpoints: the compared goodputs each move the same 312.5 MiB
    /// (320 000 datagrams of 1 KiB, 5000 WRITEs of 64 KiB; long enough that starting up does not
    /// count), TCP 125 MiB, and 2000 round trips in each of 9 latency pairs.
    pub const NATIVE: SuiteParams = SuiteParams {
        runs: 5,
        udp_count: 320_000,
        tcp_count: 2000,
        rtt_count: 2000,
        lat_pairs: 9,
        rdma_iters: 5000,
        lat_iters: 2000,
    };
    /// The demo's short native suite (a few seconds): 3 rounds of 100 MiB of UDP against
    /// 2000 WRITEs of 64 KiB (125 MiB), and 3 latency pairs of 2000 round trips.
    pub const DEMO: SuiteParams = SuiteParams {
        runs: 3,
        udp_count: 100_000,
        tcp_count: 500,
        rtt_count: 2000,
        lat_pairs: 3,
        rdma_iters: 2000,
        lat_iters: 2000,
    };
    /// Defaults for VMs, whose guests may be emulated: a few seconds each.
    pub const VM: SuiteParams = SuiteParams {
        runs: 1,
        udp_count: 200,
        tcp_count: 4,
        rtt_count: 20,
        lat_pairs: 1,
        rdma_iters: 4,
        lat_iters: 20,
    };
}

/// Where the endpoints run.
#[derive(Debug)]
pub enum SuiteMode<'a> {
    /// Host threads, which poll before they sleep and run where the tuning says.
    Native {
        /// See [`crate::native::NativeTuning`].
        tuning: NativeTuning,
    },
    /// VMs built from `base`, each run given up after `timeout`.
    Vm {
        /// The VM configuration (workloads and network are set per measurement).
        base: &'a VmConfig,
        /// The timeout of each run.
        timeout: Duration,
    },
}

/// Errors running the suite.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// A network benchmark failed to run.
    #[error(transparent)]
    Net(#[from] NetBenchError),
    /// A native RDMA endpoint failed to start.
    #[error(transparent)]
    Native(#[from] NativeError),
    /// An RDMA VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The user asked the runs to end (Ctrl-C).
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
    /// A measurement has no round (cannot happen: at least one round runs).
    #[error("a measurement has no round")]
    NoRounds,
}

/// One measurement over the rounds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Entry<R> {
    /// The round with the median of the measurement's main figure (goodput, or for latency
    /// measurements the median latency); `verified` only if every round verified; for
    /// net-bench goodput, the round-trip figures are the medians over the rounds.
    pub median: R,
    /// Goodput of each round, Gbit/s.
    pub gbit_per_sec_runs: Vec<f64>,
    /// Median latency of each round, microseconds (round trips for net-bench, `write_lat`'s
    /// half round trip for RDMA).
    pub latency_us_p50_runs: Vec<f64>,
}

/// RDMA against UDP on the same path.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Comparison {
    /// UDP payload per datagram of the goodput comparison, bytes.
    pub udp_size: u32,
    /// RDMA path MTU: payload per RoCE packet, bytes.
    pub rdma_mtu: u32,
    /// RDMA WRITE message size, bytes.
    pub rdma_size: u32,
    /// UDP goodput with `udp_size` datagrams, Gbit/s.
    pub udp_gbit_per_sec: f64,
    /// RDMA WRITE goodput, Gbit/s.
    pub rdma_write_gbit_per_sec: f64,
    /// RDMA WRITE goodput / UDP goodput.
    pub goodput_ratio: f64,
    /// The least `goodput_ratio` wanted.
    pub goodput_goal: f64,
    /// `goodput_ratio` >= `goodput_goal`.
    pub goodput_goal_met: bool,
    /// UDP goodput with the largest datagrams, Gbit/s (for reference).
    pub udp_largest_gbit_per_sec: f64,
    /// Message size of the round trips, bytes.
    pub rtt_size: u32,
    /// UDP round trip, median, microseconds.
    pub udp_rtt_us_p50: f64,
    /// `write_lat` as it reports it (half a round trip), median, microseconds.
    pub rdma_write_lat_us_p50: f64,
    /// RDMA WRITE round trip (twice `rdma_write_lat_us_p50`), microseconds.
    pub rdma_rtt_us_p50: f64,
    /// RDMA round trip / UDP round trip, of the medians over the latency pairs.
    pub latency_ratio: f64,
    /// The ratio within each latency pair, in the order they ran.
    pub latency_ratio_pairs: Vec<f64>,
    /// The largest `latency_ratio` wanted.
    pub latency_goal: f64,
    /// `latency_ratio` <= `latency_goal`.
    pub latency_goal_met: bool,
}

/// The suite's result, with stable JSON keys.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SuiteReport {
    /// `vm` or `native`.
    pub mode: &'static str,
    /// Goodput rounds.
    pub runs: u32,
    /// Latency pairs.
    pub lat_pairs: u32,
    /// UDP goodput, [`UDP_COMPARED_SIZE`]-byte datagrams.
    pub udp: Entry<NetBenchReport>,
    /// UDP round trips of [`SMALL_SIZE`] bytes, one per latency pair.
    pub udp_rtt: Entry<NetBenchReport>,
    /// UDP, [`UDP_LARGEST_SIZE`]-byte datagrams.
    pub udp_largest: Entry<NetBenchReport>,
    /// TCP, [`TCP_SIZE`]-byte writes, and round trips.
    pub tcp: Entry<NetBenchReport>,
    /// RDMA WRITE goodput.
    pub write_bw: Entry<RdmaBenchReport>,
    /// RDMA WRITE latency, one per latency pair.
    pub write_lat: Entry<RdmaBenchReport>,
    /// RDMA against UDP.
    pub comparison: Comparison,
    /// Every measurement of every round verified its data.
    pub verified: bool,
}

/// What the suite needs of a report.
trait Figures: Clone {
    fn gbit(&self) -> f64;
    fn latency_us_p50(&self) -> f64;
    fn verified(&self) -> bool;
    fn set_verified(&mut self, verified: bool);
}

impl Figures for NetBenchReport {
    fn gbit(&self) -> f64 {
        self.gbit_per_sec
    }
    fn latency_us_p50(&self) -> f64 {
        self.rtt_us_p50
    }
    fn verified(&self) -> bool {
        self.verified
    }
    fn set_verified(&mut self, verified: bool) {
        self.verified = verified;
    }
}

impl Figures for RdmaBenchReport {
    fn gbit(&self) -> f64 {
        self.figures.gbit_per_sec
    }
    fn latency_us_p50(&self) -> f64 {
        self.figures.lat_p50_us
    }
    fn verified(&self) -> bool {
        self.verified
    }
    fn set_verified(&mut self, verified: bool) {
        self.verified = verified;
    }
}

/// The median of `values` (the upper one of an even count; 0 if empty).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// The entry of `rounds` (at least one), its median round chosen by latency or by goodput.
fn entry<R: Figures>(rounds: &[R], by_latency: bool) -> Option<Entry<R>> {
    let gbit: Vec<f64> = rounds.iter().map(Figures::gbit).collect();
    let latency: Vec<f64> = rounds.iter().map(Figures::latency_us_p50).collect();
    let key = if by_latency { &latency } else { &gbit };
    let target = median(key);
    let index = key.iter().position(|value| *value == target)?;
    let mut median_round = rounds.get(index)?.clone();
    median_round.set_verified(rounds.iter().all(Figures::verified));
    Some(Entry {
        median: median_round,
        gbit_per_sec_runs: gbit,
        latency_us_p50_runs: latency,
    })
}

/// A net-bench entry: the median goodput round, with the medians of the round trips.
fn net_entry(rounds: &[NetBenchReport]) -> Option<Entry<NetBenchReport>> {
    let mut entry = entry(rounds, false)?;
    let p99: Vec<f64> = rounds.iter().map(|round| round.rtt_us_p99).collect();
    entry.median.rtt_us_p50 = median(&entry.latency_us_p50_runs);
    entry.median.rtt_us_p99 = median(&p99);
    Some(entry)
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

/// One `net-bench` measurement between fresh endpoints.
fn run_net(mode: &SuiteMode<'_>, params: &NetBenchParams) -> Result<NetBenchReport, SuiteError> {
    crate::interrupt::check()?;
    Ok(match mode {
        SuiteMode::Native { tuning } => {
            netbench::run_native(params, &NetPath::Switch, *tuning, false)?.0
        }
        SuiteMode::Vm { base, timeout } => {
            netbench::run_vms(base, params, &NetPath::Switch, *timeout)?.0
        }
    })
}

/// One `rdma-bench` measurement between fresh endpoints.
fn run_rdma(mode: &SuiteMode<'_>, params: &RdmaBenchParams) -> Result<RdmaBenchReport, SuiteError> {
    crate::interrupt::check()?;
    Ok(match mode {
        SuiteMode::Native { tuning } => rdmabench::run_native(params, *tuning, false)?.0,
        SuiteMode::Vm { base, timeout } => rdmabench::run_vms(base, params, *timeout, None)?.0,
    })
}

/// `, NOT verified` for a measurement that did not verify.
fn unverified(verified: bool) -> &'static str {
    if verified { "" } else { ", NOT verified" }
}

/// The progress line of a `net-bench` measurement.
fn net_line(report: &NetBenchReport) -> String {
    let mut line = format!("{} {} B: ", report.transport, report.size);
    if report.messages > 0 {
        line += &format!(
            "{}, {} of {} received",
            rate(report.gbit_per_sec),
            report.received,
            report.messages
        );
    }
    if report.round_trips > 0 {
        if report.messages > 0 {
            line += ", ";
        }
        line += &format!(
            "round trip p50 {:.1} us ({} B)",
            report.rtt_us_p50, report.rtt_size
        );
    }
    line + unverified(report.verified)
}

/// The progress line of an `rdma-bench` measurement.
fn rdma_line(report: &RdmaBenchReport) -> String {
    // A latency test's throughput says nothing; a bandwidth test measures no latency.
    let figure = if report.figures.lat_p50_us > 0.0 {
        format!(
            "latency p50 {:.1} us (round trip {:.1} us)",
            report.figures.lat_p50_us,
            2.0 * report.figures.lat_p50_us
        )
    } else {
        rate(report.figures.gbit_per_sec)
    };
    format!(
        "rdma {} {} B: {figure}{}",
        report.test,
        report.size,
        unverified(report.verified)
    )
}

/// A UDP and an RDMA measurement back to back, RDMA first when `rdma_first` (the suite
/// alternates, so that neither side always runs first); each reports a line to `progress`.
fn compared_pair(
    mode: &SuiteMode<'_>,
    (net, rdma): (&NetBenchParams, &RdmaBenchParams),
    rdma_first: bool,
    prefix: &str,
    progress: &mut impl FnMut(&str),
) -> Result<(NetBenchReport, RdmaBenchReport), SuiteError> {
    let measure_net = |progress: &mut dyn FnMut(&str)| {
        let report = run_net(mode, net)?;
        progress(&format!("{prefix}: {}", net_line(&report)));
        Ok::<_, SuiteError>(report)
    };
    let measure_rdma = |progress: &mut dyn FnMut(&str)| {
        let report = run_rdma(mode, rdma)?;
        progress(&format!("{prefix}: {}", rdma_line(&report)));
        Ok::<_, SuiteError>(report)
    };
    if rdma_first {
        let rdma = measure_rdma(progress)?;
        Ok((measure_net(progress)?, rdma))
    } else {
        let net = measure_net(progress)?;
        Ok((net, measure_rdma(progress)?))
    }
}

/// Runs the suite; `progress` gets a line after each measurement.
pub fn run(
    mode: &SuiteMode<'_>,
    params: &SuiteParams,
    mut progress: impl FnMut(&str),
) -> Result<SuiteReport, SuiteError> {
    let net = |transport, size, count, rtt_count| NetBenchParams {
        transport,
        size,
        count,
        duration_ms: 0,
        window: apps::netbench::DEFAULT_WINDOW,
        rtt_size: SMALL_SIZE,
        rtt_count,
    };
    let nets = [
        net(Transport::Udp, UDP_COMPARED_SIZE, params.udp_count, 0),
        net(Transport::Udp, UDP_LARGEST_SIZE, params.udp_count, 0),
        net(Transport::Tcp, TCP_SIZE, params.tcp_count, params.rtt_count),
    ];
    let rdma = |test, size, iters| RdmaBenchParams {
        mtu: RDMA_MTU,
        ..RdmaBenchParams::new(test, size, iters)
    };
    let write_bw_params = rdma(Test::WriteBw, RDMA_SIZE, params.rdma_iters);
    let udp_rtt_params = net(Transport::Udp, SMALL_SIZE, 0, params.rtt_count);
    let write_lat_params = rdma(Test::WriteLat, SMALL_SIZE, params.lat_iters);
    let runs = params.runs.max(1);
    let mut net_rounds: [Vec<NetBenchReport>; 3] = Default::default();
    let mut write_bw_rounds = Vec::new();
    for round in 1..=runs {
        let prefix = format!("round {round}/{runs}");
        let (udp, write_bw) = compared_pair(
            mode,
            (&nets[0], &write_bw_params),
            round % 2 == 0,
            &prefix,
            &mut progress,
        )?;
        net_rounds[0].push(udp);
        write_bw_rounds.push(write_bw);
        for (index, params) in nets.iter().enumerate().skip(1) {
            let report = run_net(mode, params)?;
            progress(&format!("{prefix}: {}", net_line(&report)));
            net_rounds[index].push(report);
        }
    }
    let lat_pairs = params.lat_pairs.max(1);
    let mut udp_rtt_pairs = Vec::new();
    let mut write_lat_pairs = Vec::new();
    let mut latency_ratio_pairs = Vec::new();
    for pair in 1..=lat_pairs {
        let (udp_rtt, write_lat) = compared_pair(
            mode,
            (&udp_rtt_params, &write_lat_params),
            pair % 2 == 0,
            &format!("latency pair {pair}/{lat_pairs}"),
            &mut progress,
        )?;
        latency_ratio_pairs.push(ratio(
            2.0 * write_lat.figures.lat_p50_us,
            udp_rtt.rtt_us_p50,
        ));
        udp_rtt_pairs.push(udp_rtt);
        write_lat_pairs.push(write_lat);
    }
    let [udp, udp_largest, tcp] = net_rounds;
    let udp = net_entry(&udp).ok_or(SuiteError::NoRounds)?;
    let udp_largest = net_entry(&udp_largest).ok_or(SuiteError::NoRounds)?;
    let tcp = net_entry(&tcp).ok_or(SuiteError::NoRounds)?;
    let write_bw = entry(&write_bw_rounds, false).ok_or(SuiteError::NoRounds)?;
    let udp_rtt = entry(&udp_rtt_pairs, true).ok_or(SuiteError::NoRounds)?;
    let write_lat = entry(&write_lat_pairs, true).ok_or(SuiteError::NoRounds)?;
    let goodput_ratio = ratio(
        write_bw.median.figures.gbit_per_sec,
        udp.median.gbit_per_sec,
    );
    let rdma_rtt = 2.0 * write_lat.median.figures.lat_p50_us;
    let latency_ratio = ratio(rdma_rtt, udp_rtt.median.rtt_us_p50);
    let comparison = Comparison {
        udp_size: UDP_COMPARED_SIZE,
        rdma_mtu: RDMA_MTU.bytes(),
        rdma_size: RDMA_SIZE,
        udp_gbit_per_sec: udp.median.gbit_per_sec,
        rdma_write_gbit_per_sec: write_bw.median.figures.gbit_per_sec,
        goodput_ratio,
        goodput_goal: GOODPUT_GOAL,
        goodput_goal_met: goodput_ratio >= GOODPUT_GOAL,
        udp_largest_gbit_per_sec: udp_largest.median.gbit_per_sec,
        rtt_size: SMALL_SIZE,
        udp_rtt_us_p50: udp_rtt.median.rtt_us_p50,
        rdma_write_lat_us_p50: write_lat.median.figures.lat_p50_us,
        rdma_rtt_us_p50: rdma_rtt,
        latency_ratio,
        latency_ratio_pairs,
        latency_goal: LATENCY_GOAL,
        latency_goal_met: latency_ratio > 0.0 && latency_ratio <= LATENCY_GOAL,
    };
    let verified = udp.median.verified
        && udp_largest.median.verified
        && tcp.median.verified
        && write_bw.median.verified
        && udp_rtt.median.verified
        && write_lat.median.verified;
    Ok(SuiteReport {
        mode: match mode {
            SuiteMode::Native { .. } => "native",
            SuiteMode::Vm { .. } => "vm",
        },
        runs,
        lat_pairs,
        udp,
        udp_rtt,
        udp_largest,
        tcp,
        write_bw,
        write_lat,
        comparison,
        verified,
    })
}

/// A rate in the unit that suits it: Gbit/s natively, Mbit/s or kbit/s from emulated guests.
pub fn rate(gbit_per_sec: f64) -> String {
    if gbit_per_sec >= 0.1 {
        format!("{gbit_per_sec:.3} Gbit/s")
    } else if gbit_per_sec >= 0.0001 {
        format!("{:.3} Mbit/s", gbit_per_sec * 1e3)
    } else {
        format!("{:.3} kbit/s", gbit_per_sec * 1e6)
    }
}

/// A ratio to set beside its goal: two decimals, or as many more (up to six) as it takes for
/// the figure not to read as the goal itself when it is not exactly the goal (0.8991 against
/// a goal of 0.9 reads "0.899", not "0.90" beside "NOT met").
pub fn ratio_text(value: f64, goal: f64) -> String {
    let mut text = format!("{value:.2}");
    for decimals in 3..=6 {
        if value == goal || text.parse::<f64>() != Ok(goal) {
            break;
        }
        text = format!("{value:.decimals$}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_never_reads_as_its_goal_unless_it_is() {
        assert_eq!(ratio_text(0.8991, 0.9), "0.899");
        assert_eq!(ratio_text(0.90004, 0.9), "0.90004");
        assert_eq!(ratio_text(1.2049, 1.2), "1.205");
        assert_eq!(ratio_text(0.9, 0.9), "0.90");
        assert_eq!(ratio_text(0.954, 0.9), "0.95");
        assert_eq!(ratio_text(1.3812, 1.2), "1.38");
    }

    #[test]
    fn median_takes_the_middle_round() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 4.0);
        assert_eq!(median(&[]), 0.0);
    }
}
