//! OS A's RDMA workload: one side of a `duovm-apps` RDMA test, its figures published in the
//! control block for the host.

use core::net::Ipv4Addr;

use apps::rdma::{TestParams, TestReport, run_test};
use apps::{NetClient, Outcome};
use guest_rt::peer::Peer;
use guest_rt::{Platform, println};
use shm_ring::control::report;

use crate::net::GuestOs;

/// Runs the test the boot info names.
pub fn run(platform: &Platform, peer: &Peer, os: &mut GuestOs, client: &mut NetClient) -> Outcome {
    let info = &platform.boot_info;
    let args = info.workload.args;
    let local = Ipv4Addr::from(info.net.ipv4);
    let Some(params) = TestParams::from_args(args, info.workload.flags, local) else {
        println!("rdma: unknown test {}", args[0]);
        return Outcome::Failed;
    };
    let test = params.test;
    let server = params.server;
    let role = if server.is_some() { "client" } else { "server" };
    println!(
        "rdma: {} {role}, {} x {} bytes, MTU {}, ICRC by the {}",
        test.name(),
        params.iters,
        params.size,
        params.mtu.bytes(),
        if apps::Os::roce_icrc_offload(os) {
            "NIC"
        } else {
            "OS"
        }
    );
    match run_test(os, client, &params) {
        Ok(result) => {
            publish(peer, &result);
            println!(
                "rdma: {} {role} done: {} messages, {} bytes in {} us, {} retransmissions, {}",
                test.name(),
                result.messages,
                result.bytes,
                result.elapsed_ns / 1000,
                result.retransmissions,
                if result.verified {
                    "verified"
                } else {
                    "NOT verified"
                }
            );
            if result.verified {
                Outcome::Success
            } else {
                Outcome::Failed
            }
        }
        Err(failure) => {
            // What was done until then, for the host's report.
            publish(peer, &failure.so_far);
            println!("rdma: {} {role} failed: {failure}", test.name());
            Outcome::Failed
        }
    }
}

/// Publishes `result` in OS A's report slots.
fn publish(peer: &Peer, result: &TestReport) {
    let own = &peer.own;
    own.set_report(report::RDMA_MESSAGES, result.messages);
    own.set_report(report::RDMA_BYTES, result.bytes);
    own.set_report(report::RDMA_ELAPSED_NS, result.elapsed_ns);
    own.set_report(report::RDMA_P50_NS, result.p50_ns);
    own.set_report(report::RDMA_P99_NS, result.p99_ns);
    own.set_report(report::RDMA_RETRANSMISSIONS, result.retransmissions);
    own.set_report(report::RDMA_VERIFIED, u64::from(result.verified));
    own.publish_report();
}
