//! OS A's network benchmark workload: one side of a `duovm-apps` network benchmark, the
//! client's figures published in the control block for the host.

use apps::netbench::{Plan, run_plan};
use apps::{NetClient, Outcome};
use guest_rt::peer::Peer;
use guest_rt::println;
use shm_ring::control::report;

use crate::net::GuestOs;

/// Runs the plan in the workload's arguments.
pub fn run(args: [u64; 6], peer: &Peer, os: &mut GuestOs, client: &mut NetClient) -> Outcome {
    let Some(plan) = Plan::from_args(args) else {
        println!("netbench: unknown transport {}", args[0]);
        return Outcome::Failed;
    };
    match run_plan(os, client, &plan) {
        Ok(result) => {
            let own = &peer.own;
            if let Some(goodput) = result.goodput {
                own.set_report(report::NET_SENT, goodput.sent);
                own.set_report(report::NET_RECEIVED, goodput.received);
                own.set_report(report::NET_BYTES, goodput.bytes);
                own.set_report(report::NET_ELAPSED_NS, goodput.elapsed_ns);
                own.set_report(report::NET_CREDIT_STALLS, goodput.credit_stalls);
            }
            if let Some(round_trips) = result.round_trips {
                own.set_report(report::NET_ROUND_TRIPS, round_trips.received);
                own.set_report(report::NET_RTT_P50_NS, round_trips.p50_ns);
                own.set_report(report::NET_RTT_P99_NS, round_trips.p99_ns);
            }
            own.set_report(report::NET_VERIFIED, u64::from(result.verified()));
            own.publish_report();
            if result.verified() {
                Outcome::Success
            } else {
                Outcome::Failed
            }
        }
        Err(error) => {
            println!("netbench: failed: {error}");
            Outcome::Failed
        }
    }
}
