//! Throughput and latency of the RC transport engine, two devices in one thread, no loss:
//! every packet one device writes is handed straight to the other's `receive`. Both ends'
//! work is on this one core, so the figures are for requester and responder together.
//!
//! ```text
//! cargo run -p roce --release --example transport_bench [-- seconds_per_case [case]] [--icrc-offload]
//! ```
//!
//! `--icrc-offload` leaves the ICRCs to the NIC, as OS A does in a VM (the harness's "NIC"
//! neither fills nor checks them, so the figures are the engine's own work).
//!
//! Prints one JSON object per line:
//! * `rdma_write`: 64 KiB RDMA WRITEs, 32 in flight, at MTU 1024 and 4096: goodput in
//!   Gbit/s, packets per second (request packets, ACKs not counted), messages per second.
//! * `send_pingpong`: 64-byte SEND ping-pong (as `ibv_rc_pingpong -s 64`): nanoseconds per
//!   round trip (two messages, two ACKs).
//! * `rdma_write_small`: 64-byte RDMA WRITEs, 64 in flight: messages per second.

use roce::verbs::*;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

struct Pair {
    devices: [Device; 2],
    qps: [QpHandle; 2],
    cqs: [CqHandle; 2],
    mrs: [MrInfo; 2],
    buffer: Vec<u8>,
    clock: Instant,
}

impl Pair {
    fn new(mtu: Mtu, region: u64) -> Pair {
        let addresses = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        let offload = std::env::args().any(|argument| argument == "--icrc-offload");
        let mut devices = addresses.map(|address| {
            Device::new(
                DeviceConfig::new(address)
                    .with_mtu(mtu)
                    .with_icrc_offload(offload),
            )
        });
        let mut qps = Vec::new();
        let mut cqs = Vec::new();
        let mut mrs = Vec::new();
        for device in &mut devices {
            let pd = device.alloc_pd().unwrap();
            let mr = device.reg_mr(pd, region, AccessFlags::ALL).unwrap();
            let cq = device.create_cq(4096).unwrap();
            let cap = QpCap {
                max_send_wr: 1024,
                max_recv_wr: 1024,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 64,
            };
            let qp = device.create_qp(pd, &QpInitAttr::new(cq, cq, cap)).unwrap();
            let init = QpAttr {
                qp_state: QpState::Init,
                port_num: 1,
                qp_access_flags: AccessFlags::REMOTE,
                ..QpAttr::default()
            };
            device
                .modify_qp(qp, &init, QpAttrMask::INIT_REQUIRED)
                .unwrap();
            mrs.push(device.mr(mr).unwrap().info());
            qps.push(qp);
            cqs.push(cq);
        }
        for side in 0..2 {
            let peer = 1 - side;
            let rtr = QpAttr {
                qp_state: QpState::Rtr,
                path_mtu: mtu,
                dest_qp_num: qps[peer].qp_num(),
                rq_psn: 1000 * peer as u32,
                max_dest_rd_atomic: 16,
                min_rnr_timer: 1,
                ah_attr: AhAttr::global(Gid::from_ipv4(addresses[peer])),
                ..QpAttr::default()
            };
            devices[side]
                .modify_qp(qps[side], &rtr, QpAttrMask::RTR_REQUIRED)
                .unwrap();
            let rts = QpAttr {
                qp_state: QpState::Rts,
                sq_psn: 1000 * side as u32,
                timeout: 14,
                retry_cnt: 7,
                rnr_retry: 7,
                max_rd_atomic: 16,
                ..QpAttr::default()
            };
            devices[side]
                .modify_qp(qps[side], &rts, QpAttrMask::RTS_REQUIRED)
                .unwrap();
        }
        let buffer = vec![0; devices[0].max_packet_len()];
        Pair {
            devices,
            qps: [qps[0], qps[1]],
            cqs: [cqs[0], cqs[1]],
            mrs: [mrs[0], mrs[1]],
            buffer,
            clock: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Carries packets both ways until neither device has anything to send.
    fn pump(&mut self) {
        let now = self.now();
        loop {
            let mut moved = false;
            for from in 0..2 {
                let [first, second] = &mut self.devices;
                let (sender, receiver) = if from == 0 {
                    (first, second)
                } else {
                    (second, first)
                };
                while let Some(length) = sender.poll_transmit(now, &mut self.buffer) {
                    receiver.receive(&self.buffer[..length], now);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn poll(&mut self, side: usize, completions: &mut [WorkCompletion]) -> usize {
        let count = self.devices[side]
            .poll_cq(self.cqs[side], completions)
            .unwrap();
        for completion in &completions[..count] {
            assert_eq!(completion.status, WcStatus::Success, "{completion:?}");
        }
        count
    }
}

fn rdma_write(mtu: Mtu, message: u32, depth: usize, duration: Duration) {
    let mut pair = Pair::new(mtu, 64 << 20);
    let remote = pair.mrs[1];
    let local = pair.mrs[0];
    let slots = (local.length / u64::from(message)).min(512);
    let mut posted = 0u64;
    let mut completed = 0u64;
    let mut completions = [WorkCompletion::default(); 64];
    let packets_before = pair.devices[0].counters().packets_sent;
    let start = Instant::now();
    let mut stop_posting = false;
    loop {
        while !stop_posting && posted - completed < depth as u64 {
            let slot = posted % slots;
            let sge = [local.sge(slot * u64::from(message), message)];
            let operation = WrOperation::RdmaWrite {
                remote_addr: remote.addr + slot * u64::from(message),
                rkey: remote.rkey,
            };
            pair.devices[0]
                .post_send(
                    pair.qps[0],
                    &SendWr::new(posted, operation, &sge).signaled(),
                )
                .unwrap();
            posted += 1;
        }
        pair.pump();
        completed += pair.poll(0, &mut completions) as u64;
        if !stop_posting && start.elapsed() >= duration {
            stop_posting = true;
        }
        if stop_posting && completed == posted {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let packets = pair.devices[0].counters().packets_sent - packets_before;
    let bytes = completed as f64 * f64::from(message);
    println!(
        "{{\"bench\":\"rdma_write\",\"mtu\":{},\"message_bytes\":{},\"in_flight\":{},\"messages\":{},\"seconds\":{:.3},\"goodput_gbit_per_s\":{:.2},\"packets_per_s\":{:.0},\"messages_per_s\":{:.0}}}",
        mtu.bytes(),
        message,
        depth,
        completed,
        seconds,
        bytes * 8.0 / seconds / 1e9,
        packets as f64 / seconds,
        completed as f64 / seconds
    );
}

fn send_pingpong(size: u32, duration: Duration) {
    let mut pair = Pair::new(Mtu::Mtu1024, 1 << 20);
    let mut completions = [WorkCompletion::default(); 8];
    for side in 0..2 {
        for _ in 0..256 {
            let sge = [pair.mrs[side].sge(65536, size)];
            pair.devices[side]
                .post_recv(
                    pair.qps[side],
                    &RecvWr {
                        wr_id: 1,
                        sg_list: &sge,
                    },
                )
                .unwrap();
        }
    }
    let start = Instant::now();
    let mut round_trips = 0u64;
    while start.elapsed() < duration || round_trips == 0 {
        for _ in 0..1000 {
            // Ping.
            for side in 0..2 {
                let sge = [pair.mrs[side].sge(0, size)];
                pair.devices[side]
                    .post_send(
                        pair.qps[side],
                        &SendWr::new(2, WrOperation::Send, &sge).signaled(),
                    )
                    .unwrap();
                pair.pump();
                let peer = 1 - side;
                // The peer's receive, then this side's send completion.
                let mut received = 0;
                while received == 0 {
                    received = pair.poll(peer, &mut completions);
                }
                let sge = [pair.mrs[peer].sge(65536, size)];
                pair.devices[peer]
                    .post_recv(
                        pair.qps[peer],
                        &RecvWr {
                            wr_id: 1,
                            sg_list: &sge,
                        },
                    )
                    .unwrap();
                let mut sent = 0;
                while sent == 0 {
                    sent = pair.poll(side, &mut completions);
                }
            }
            round_trips += 1;
        }
    }
    let nanos = start.elapsed().as_nanos() as f64 / round_trips as f64;
    println!(
        "{{\"bench\":\"send_pingpong\",\"message_bytes\":{size},\"round_trips\":{round_trips},\"ns_per_round_trip\":{nanos:.0},\"ns_per_message\":{:.0}}}",
        nanos / 2.0
    );
}

fn main() {
    let mut positional = std::env::args().filter(|argument| !argument.starts_with("--"));
    let seconds: f64 = positional
        .nth(1)
        .and_then(|argument| argument.parse().ok())
        .unwrap_or(2.0);
    let duration = Duration::from_secs_f64(seconds);
    // An optional second argument runs one case only: write1024, write4096, write64, pingpong.
    let only = positional.next();
    let run = |name: &str| only.as_deref().is_none_or(|only| only == name);
    if run("write1024") {
        rdma_write(Mtu::Mtu1024, 64 * 1024, 32, duration);
    }
    if run("write4096") {
        rdma_write(Mtu::Mtu4096, 64 * 1024, 32, duration);
    }
    if run("write64") {
        rdma_write(Mtu::Mtu1024, 64, 64, duration);
    }
    if run("pingpong") {
        send_pingpong(64, duration);
    }
}
