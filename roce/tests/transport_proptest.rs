//! Property tests of the engine against hostile input and random work.
//!
//! * Arbitrary bytes, and valid packets with bytes changed (checksums and ICRC repaired, so
//!   that the changes reach the transport), never make `receive` panic, and never change
//!   memory that no valid request could write: regions without remote write access and not
//!   posted as receive or READ buffers stay as they were.
//! * Random sequences of work requests over a lossy, duplicating, reordering network
//!   complete exactly once each, in order, with the right data (or, when heavy loss
//!   exhausts the retries, with `RETRY_EXC_ERR` then `WR_FLUSH_ERR`, never twice, never
//!   with wrong data).

mod transport_support;

use proptest::prelude::*;
use roce::verbs::*;
use roce::wire::Rocev2Packet;
use transport_support::*;

/// A connected pair with, on each side, a region no valid request may write (local write
/// only, never posted) and a remote-read-only region, both filled with a pattern.
struct Victim {
    net: Net,
    ends: [End; 2],
    guarded: [[MrHandle; 2]; 2],
}

fn victim() -> Victim {
    let setup = Setup {
        region_len: 256 * 1024,
        ..Setup::default()
    };
    let (mut net, ends) = connect(&setup, Faults::NONE, 1);
    let mut guarded = Vec::new();
    for (device, end) in net.devices.iter_mut().zip(&ends) {
        let pd = end.pd;
        let private = device.reg_mr(pd, 8192, AccessFlags::LOCAL_WRITE).unwrap();
        let readable = device.reg_mr(pd, 8192, AccessFlags::REMOTE_READ).unwrap();
        for (index, mr) in [private, readable].into_iter().enumerate() {
            let fill = pattern(100 + index as u64, 8192);
            device
                .mr_mut(mr)
                .unwrap()
                .as_mut_slice()
                .copy_from_slice(&fill);
        }
        guarded.push([private, readable]);
        for wr_id in 0..4 {
            let sge = end.info.sge(128 * 1024 + wr_id * 8192, 8192);
            device
                .post_recv(
                    end.qp,
                    &RecvWr {
                        wr_id,
                        sg_list: &[sge],
                    },
                )
                .unwrap();
        }
    }
    Victim {
        net,
        ends,
        guarded: [guarded[0], guarded[1]],
    }
}

impl Victim {
    fn check_guarded(&self) {
        for side in 0..2 {
            for (index, mr) in self.guarded[side].iter().enumerate() {
                let bytes = self.net.devices[side].mr(*mr).unwrap().as_slice();
                assert!(
                    bytes == pattern(100 + index as u64, 8192).as_slice(),
                    "guarded region {index} of side {side} changed"
                );
            }
        }
    }
}

/// Valid packets of every kind, both directions: (receiver, bytes).
fn corpus() -> Vec<(usize, Vec<u8>)> {
    let mut victim = victim();
    let [a, b] = victim.ends;
    let net = &mut victim.net;
    net.record = Some(Vec::new());
    let remote = |offset: u64| b.info.addr + offset;
    let operations = [
        WrOperation::Send,
        WrOperation::SendWithImm { imm_data: 5 },
        WrOperation::RdmaWrite {
            remote_addr: remote(0),
            rkey: b.info.rkey,
        },
        WrOperation::RdmaWriteWithImm {
            remote_addr: remote(4096),
            rkey: b.info.rkey,
            imm_data: 6,
        },
        WrOperation::RdmaRead {
            remote_addr: remote(0),
            rkey: b.info.rkey,
        },
        WrOperation::AtomicFetchAndAdd {
            remote_addr: remote(64 * 1024),
            rkey: b.info.rkey,
            compare_add: 3,
        },
        WrOperation::AtomicCmpAndSwp {
            remote_addr: remote(64 * 1024),
            rkey: b.info.rkey,
            compare_add: 3,
            swap: 9,
        },
    ];
    for (wr_id, operation) in operations.into_iter().enumerate() {
        let length = match operation {
            WrOperation::AtomicCmpAndSwp { .. } | WrOperation::AtomicFetchAndAdd { .. } => 8,
            _ => 2500,
        };
        let sge = [a.info.sge(32 * 1024, length)];
        net.devices[0]
            .post_send(a.qp, &SendWr::new(wr_id as u64, operation, &sge).signaled())
            .unwrap();
    }
    net.run_until(1_000_000_000, |net| {
        net.devices[0].cq(a.cq).unwrap().len() == operations.len()
    });
    net.record
        .take()
        .unwrap()
        .into_iter()
        .map(|(from, bytes)| (1 - from, bytes))
        .collect()
}

/// Recomputes the IPv4 checksum and the ICRC, if the bytes still look like a packet.
fn repair(bytes: &mut [u8]) {
    if let Ok(mut packet) = Rocev2Packet::new_checked(&mut bytes[..]) {
        packet.ipv4_mut().fill_checksum();
        packet.udp_mut().set_checksum(0);
        let _ = packet.fill_icrc();
    }
}

fn corpus_cached() -> &'static [(usize, Vec<u8>)] {
    static CORPUS: std::sync::OnceLock<Vec<(usize, Vec<u8>)>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(corpus)
}

#[derive(Debug, Clone)]
enum Input {
    Random(usize, Vec<u8>),
    Mutated {
        index: usize,
        changes: Vec<(usize, u8)>,
        truncate: Option<usize>,
        repair: bool,
    },
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (0..2usize, proptest::collection::vec(any::<u8>(), 0..1200))
            .prop_map(|(to, bytes)| Input::Random(to, bytes)),
        (
            any::<prop::sample::Index>(),
            proptest::collection::vec((0..1200usize, any::<u8>()), 0..6),
            proptest::option::of(0..1200usize),
            prop::bool::weighted(0.8),
        )
            .prop_map(|(index, changes, truncate, repair)| Input::Mutated {
                index: index.index(corpus_cached().len()),
                changes,
                truncate,
                repair,
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn hostile_packets_never_panic_nor_corrupt(inputs in proptest::collection::vec(input(), 1..24)) {
        let corpus = corpus_cached();
        let mut victim = victim();
        // Outstanding requests on A, so that responses have something to match.
        let [a, b] = victim.ends;
        for wr_id in 0..3 {
            let operation = WrOperation::RdmaRead { remote_addr: b.info.addr, rkey: b.info.rkey };
            let sge = [a.info.sge(64 * 1024, 2500)];
            victim.net.devices[0]
                .post_send(a.qp, &SendWr::new(wr_id, operation, &sge).signaled())
                .unwrap();
        }
        victim.net.flush();
        for input in inputs {
            let (to, bytes) = match input {
                Input::Random(to, bytes) => (to, bytes),
                Input::Mutated { index, changes, truncate, repair: fix } => {
                    let (to, original) = &corpus[index];
                    let mut bytes = original.clone();
                    for (offset, value) in changes {
                        if !bytes.is_empty() {
                            let offset = offset % bytes.len();
                            bytes[offset] = value;
                        }
                    }
                    if let Some(length) = truncate {
                        bytes.truncate(length);
                    }
                    if fix {
                        repair(&mut bytes);
                    }
                    (*to, bytes)
                }
            };
            let now = victim.net.now;
            victim.net.devices[to].receive(&bytes, now);
            victim.net.advance(200_000);
        }
        victim.net.advance(100_000_000);
        victim.check_guarded();
        // Whatever happened, the QPs are in a state the verbs allow and answer queries.
        for side in 0..2 {
            let state = victim.net.devices[side].qp_state(victim.ends[side].qp).unwrap();
            prop_assert!(matches!(state, QpState::Rts | QpState::Err));
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Send(u32),
    Write(u32),
    Read(u32),
    FetchAdd,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6000u32).prop_map(Op::Send),
        (0..6000u32).prop_map(Op::Write),
        (0..6000u32).prop_map(Op::Read),
        Just(Op::FetchAdd),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_work_completes_exactly_once(
        ops in proptest::collection::vec(op(), 1..80),
        loss in 0.0..0.2f64,
        seed in any::<u64>(),
        mtu in prop_oneof![Just(Mtu::Mtu256), Just(Mtu::Mtu1024), Just(Mtu::Mtu4096)],
        sq_psn in prop_oneof![Just(0u32), Just(0xff_ffc0), any::<u32>().prop_map(|p| p & 0xff_ffff)],
        // Mostly 7 (never runs out, as ibv_rc_pingpong and perftest set it); sometimes a
        // budget that heavy loss can exhaust.
        retry_cnt in prop_oneof![3 => Just(7u8), 1 => 1..7u8],
    ) {
        let setup = Setup {
            mtu,
            sq_psn: [sq_psn, sq_psn ^ 0x55_5555],
            retry_cnt,
            region_len: 4 << 20,
            cap: QpCap { max_send_wr: 128, max_recv_wr: 128, ..QpCap::default() },
            ..Setup::default()
        };
        let faults = Faults { loss, ..Faults::lossy(loss) };
        let (mut net, [a, b]) = connect(&setup, faults, seed);
        const SLOT: u64 = 8192;
        let read_source = pattern(seed, 64 * 1024);
        net.devices[1].mr_mut(b.mr).unwrap().write(3 << 20, &read_source).unwrap();
        let mut receives = 0;
        for (wr_id, op) in ops.iter().enumerate() {
            let wr_id = wr_id as u64;
            let slot = wr_id * SLOT;
            let data = pattern(wr_id, 6000);
            let (operation, sge) = match *op {
                Op::Send(length) => {
                    let recv = b.info.sge(slot, SLOT as u32);
                    net.devices[1].post_recv(b.qp, &RecvWr { wr_id, sg_list: &[recv] }).unwrap();
                    receives += 1;
                    (WrOperation::Send, a.info.sge(slot, length))
                }
                Op::Write(length) => (
                    WrOperation::RdmaWrite { remote_addr: b.info.addr + (1 << 20) + slot, rkey: b.info.rkey },
                    a.info.sge(slot, length),
                ),
                Op::Read(length) => (
                    WrOperation::RdmaRead { remote_addr: b.info.addr + (3 << 20) + (wr_id % 8) * 4096, rkey: b.info.rkey },
                    a.info.sge((1 << 20) + slot, length),
                ),
                Op::FetchAdd => (
                    WrOperation::AtomicFetchAndAdd { remote_addr: b.info.addr + (2 << 20), rkey: b.info.rkey, compare_add: 1 },
                    a.info.sge((2 << 20) + wr_id * 8, 8),
                ),
            };
            net.devices[0].mr_mut(a.mr).unwrap().write(slot as usize, &data).unwrap();
            net.devices[0].post_send(a.qp, &SendWr::new(wr_id, operation, &[sge]).signaled()).unwrap();
        }
        let mut sent = Vec::new();
        let mut received = Vec::new();
        net.run_until(600_000_000_000, |net| {
            sent.extend(poll_all(&mut net.devices[0], a.cq));
            received.extend(poll_all(&mut net.devices[1], b.cq));
            let failed = net.devices[0].qp_state(a.qp) == Ok(QpState::Err);
            sent.len() >= ops.len() && (received.len() >= receives || failed)
        });
        // Heavy loss may exhaust a retry budget below 7 (RETRY_EXC_ERR, then flushes): the
        // connection is dead, so the responder is moved to ERR as an application would.
        let failed = net.devices[0].qp_state(a.qp) == Ok(QpState::Err);
        prop_assert!(!failed || retry_cnt < 7, "retry_cnt 7 never runs out");
        if failed {
            let error = QpAttr { qp_state: QpState::Err, ..QpAttr::default() };
            net.devices[1].modify_qp(b.qp, &error, QpAttrMask::STATE).unwrap();
        }
        net.advance(50_000_000);
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        received.extend(poll_all(&mut net.devices[1], b.cq));
        prop_assert_eq!(sent.len(), ops.len(), "every request completes once");
        prop_assert_eq!(received.len(), receives, "every receive completes once");
        let a_bytes = net.devices[0].mr(a.mr).unwrap().as_slice().to_vec();
        let b_bytes = net.devices[1].mr(b.mr).unwrap().as_slice().to_vec();
        let mut fetch_adds = 0u64;
        let mut error_seen = false;
        let mut received = received.into_iter();
        for (wc, (wr_id, op)) in sent.iter().zip(ops.iter().enumerate()) {
            prop_assert_eq!(wc.wr_id, wr_id as u64, "in order");
            let slot = wr_id * SLOT as usize;
            let data = pattern(wr_id as u64, 6000);
            if let Op::Send(length) = *op {
                // The matching receive: done (data intact) or, after an error, flushed.
                let recv = received.next().unwrap();
                prop_assert_eq!(recv.wr_id, wr_id as u64);
                if recv.status == WcStatus::Success {
                    prop_assert_eq!(recv.byte_len, length);
                    prop_assert!(b_bytes[slot..slot + length as usize] == data[..length as usize]);
                } else {
                    prop_assert!(failed);
                    prop_assert_eq!(recv.status, WcStatus::WrFlushErr);
                }
                if wc.status == WcStatus::Success {
                    prop_assert_eq!(recv.status, WcStatus::Success);
                }
            }
            if error_seen {
                prop_assert_eq!(wc.status, WcStatus::WrFlushErr);
                continue;
            }
            if wc.status != WcStatus::Success {
                prop_assert_eq!(wc.status, WcStatus::RetryExcErr);
                error_seen = true;
                continue;
            }
            match *op {
                Op::Send(_) => {}
                Op::Write(length) => {
                    let start = (1 << 20) + slot;
                    prop_assert!(b_bytes[start..start + length as usize] == data[..length as usize]);
                }
                Op::Read(length) => {
                    let start = (1 << 20) + slot;
                    let source = (wr_id % 8) * 4096;
                    prop_assert!(a_bytes[start..start + length as usize] == read_source[source..source + length as usize]);
                }
                Op::FetchAdd => {
                    let at = (2 << 20) + wr_id * 8;
                    let original = u64::from_le_bytes(a_bytes[at..at + 8].try_into().unwrap());
                    prop_assert_eq!(original, fetch_adds, "executed once each, in order");
                    fetch_adds += 1;
                }
            }
        }
        prop_assert_eq!(error_seen, failed);
        let counter = u64::from_le_bytes(b_bytes[2 << 20..(2 << 20) + 8].try_into().unwrap());
        // FETCH_ADDs that failed or were flushed may have been carried out with their answer
        // lost, never twice.
        let unanswered = sent
            .iter()
            .zip(&ops)
            .filter(|(wc, op)| wc.status != WcStatus::Success && matches!(op, Op::FetchAdd))
            .count() as u64;
        prop_assert!((fetch_adds..=fetch_adds + unanswered).contains(&counter));
        // The responder carried out each message once, whatever was lost, duplicated or
        // resent (those count as duplicates); after a failure, at most the posted ones and
        // at least the ones that completed.
        let executed = net.devices[1].counters().executed;
        let count = |kind: fn(&Op) -> bool| {
            let posted = ops.iter().filter(|op| kind(op)).count() as u64;
            let done = sent
                .iter()
                .zip(&ops)
                .filter(|(wc, op)| wc.status == WcStatus::Success && kind(op))
                .count() as u64;
            (done, posted)
        };
        for (name, got, (done, posted)) in [
            ("sends", executed.sends, count(|op| matches!(op, Op::Send(_)))),
            ("writes", executed.writes, count(|op| matches!(op, Op::Write(_)))),
            ("reads", executed.reads, count(|op| matches!(op, Op::Read(_)))),
            ("atomics", executed.atomics, count(|op| matches!(op, Op::FetchAdd))),
        ] {
            if failed {
                prop_assert!((done..=posted).contains(&got), "{} {} not in {}..={}", name, got, done, posted);
            } else {
                prop_assert_eq!(got, posted, "{} executed once each", name);
            }
        }
        prop_assert_eq!(net.devices[0].counters().executed, Default::default(), "A only requested");
        // Progress in PSNs: B took each of A's PSNs once, A saw each acknowledged once.
        let psns: u64 = ops
            .iter()
            .map(|op| match *op {
                Op::Send(len) | Op::Write(len) | Op::Read(len) => {
                    u64::from(len.div_ceil(mtu.bytes()).max(1))
                }
                Op::FetchAdd => 1,
            })
            .sum();
        let (accepted, acknowledged) = (
            net.devices[1].counters().accepted_psns,
            net.devices[0].counters().acknowledged_psns,
        );
        if failed {
            prop_assert!(acknowledged <= accepted && accepted <= psns);
        } else {
            prop_assert_eq!((accepted, acknowledged), (psns, psns));
        }
        prop_assert_eq!(net.devices[0].counters().accepted_psns, 0, "A only requested");
    }
}
