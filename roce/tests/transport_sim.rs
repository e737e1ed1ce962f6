//! End-to-end tests of the RC transport: two devices joined by a simulated network with
//! seeded loss, duplication, reordering and delay, driven by a simulated clock.

mod transport_support;

use roce::verbs::*;
use std::collections::VecDeque;
use transport_support::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Memory layout of each side's region in the mixed workload.
mod layout {
    use super::MIB;
    /// Where outgoing SEND/WRITE data is staged, slot by slot.
    pub const SOURCE: u64 = 0;
    /// Where the peer's RDMA WRITEs land.
    pub const WRITE_TARGET: u64 = 4 * MIB;
    /// What the peer READs (filled at start).
    pub const READ_SOURCE: u64 = 8 * MIB;
    /// Where READ results land.
    pub const READ_TARGET: u64 = 10 * MIB;
    /// Receive buffers.
    pub const RECEIVE: u64 = 12 * MIB;
    /// The word the peer's FETCH_ADDs increment.
    pub const COUNTER: u64 = 14 * MIB;
    /// The word the peer's CMP_SWAPs advance.
    pub const SWAP_WORD: u64 = 14 * MIB + 8;
    /// Where atomic results land, one word per slot.
    pub const ATOMIC_RESULT: u64 = 14 * MIB + 4096;
    pub const REGION: u64 = 16 * MIB;
    pub const SLOT: u64 = 8 * 1024;
    pub const SLOTS: u64 = 256;
    pub const READ_SOURCE_LEN: u64 = 2 * MIB;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Send,
    SendImm,
    Write,
    WriteImm,
    Read,
    FetchAdd,
    CmpSwap,
}

/// A posted send work request and what its completion must show.
#[derive(Debug, Clone, Copy)]
struct Posted {
    wr_id: u64,
    kind: Kind,
    length: u32,
    slot: u64,
    /// READ: offset in the peer's READ_SOURCE. Atomics: the expected original value.
    extra: u64,
}

/// A message the peer must receive (SEND or WRITE with immediate), in order.
#[derive(Debug, Clone, Copy)]
struct Expected {
    kind: Kind,
    length: u32,
    tag: u64,
}

/// One side of the mixed workload.
struct Side {
    end: End,
    rng: Rng,
    to_post: usize,
    posted: usize,
    outstanding: VecDeque<Posted>,
    completed: usize,
    fetch_adds: u64,
    cmp_swaps: u64,
    recv_posted: u64,
    recv_slots: VecDeque<u64>,
    received: usize,
}

struct Workload {
    sides: [Side; 2],
    /// Messages in flight from side `i` to side `1 - i`.
    expected: [VecDeque<Expected>; 2],
    max_length: u32,
    mix: &'static [Kind],
}

impl Workload {
    fn new(net: &mut Net, ends: [End; 2], per_side: usize, max_length: u32, seed: u64) -> Self {
        for (side, end) in ends.iter().enumerate() {
            let mr = net.devices[side].mr_mut(end.mr).unwrap();
            let fill = pattern(1000 + side as u64, layout::READ_SOURCE_LEN as usize);
            mr.write(layout::READ_SOURCE as usize, &fill).unwrap();
        }
        let side = |index: usize| Side {
            end: ends[index],
            rng: Rng::new(seed * 2 + index as u64),
            to_post: per_side,
            posted: 0,
            outstanding: VecDeque::new(),
            completed: 0,
            fetch_adds: 0,
            cmp_swaps: 0,
            recv_posted: 0,
            recv_slots: VecDeque::new(),
            received: 0,
        };
        Workload {
            sides: [side(0), side(1)],
            expected: [VecDeque::new(), VecDeque::new()],
            max_length,
            mix: &[
                Kind::Send,
                Kind::Send,
                Kind::SendImm,
                Kind::Write,
                Kind::Write,
                Kind::WriteImm,
                Kind::Read,
                Kind::Read,
                Kind::FetchAdd,
                Kind::CmpSwap,
            ],
        }
    }

    fn done(&self) -> bool {
        self.sides
            .iter()
            .all(|side| side.completed == side.to_post && side.outstanding.is_empty())
            && self.expected.iter().all(VecDeque::is_empty)
    }

    /// Posts, replenishes receives and checks completions on both sides.
    fn drive(&mut self, net: &mut Net) {
        for index in 0..2 {
            self.replenish_receives(net, index);
            self.post(net, index);
            self.check_completions(net, index);
        }
    }

    fn replenish_receives(&mut self, net: &mut Net, index: usize) {
        let side = &mut self.sides[index];
        while side.recv_slots.len() < 100 {
            let slot = side.recv_posted % 128;
            let sge = side
                .end
                .info
                .sge(layout::RECEIVE + slot * layout::SLOT, layout::SLOT as u32);
            net.devices[index]
                .post_recv(
                    side.end.qp,
                    &RecvWr {
                        wr_id: (1 << 40) | side.recv_posted,
                        sg_list: &[sge],
                    },
                )
                .unwrap();
            side.recv_slots.push_back(slot);
            side.recv_posted += 1;
        }
    }

    fn post(&mut self, net: &mut Net, index: usize) {
        let peer_info = self.sides[1 - index].end.info;
        let side = &mut self.sides[index];
        while side.posted < side.to_post && side.outstanding.len() < 48 {
            let wr_id = side.posted as u64;
            let slot = wr_id % layout::SLOTS;
            let kind = self.mix[side.rng.below(self.mix.len() as u64) as usize];
            let length = match side.rng.below(8) {
                0 => 0,
                1 => 1024 * (1 + side.rng.below(3) as u32),
                _ => side.rng.below(u64::from(self.max_length) + 1) as u32,
            }
            .min(self.max_length);
            let tag = ((index as u64) << 32) | wr_id;
            let device = &mut net.devices[index];
            let info = side.end.info;
            let source = info.sge(layout::SOURCE + slot * layout::SLOT, length);
            let data = pattern(tag, length as usize);
            let mut posted = Posted {
                wr_id,
                kind,
                length,
                slot,
                extra: 0,
            };
            let operation = match kind {
                Kind::Send => WrOperation::Send,
                Kind::SendImm => WrOperation::SendWithImm {
                    imm_data: tag as u32,
                },
                Kind::Write => WrOperation::RdmaWrite {
                    remote_addr: peer_info.addr + layout::WRITE_TARGET + slot * layout::SLOT,
                    rkey: peer_info.rkey,
                },
                Kind::WriteImm => WrOperation::RdmaWriteWithImm {
                    remote_addr: peer_info.addr + layout::WRITE_TARGET + slot * layout::SLOT,
                    rkey: peer_info.rkey,
                    imm_data: tag as u32,
                },
                Kind::Read => {
                    let offset = side
                        .rng
                        .below(layout::READ_SOURCE_LEN - u64::from(self.max_length));
                    posted.extra = offset;
                    WrOperation::RdmaRead {
                        remote_addr: peer_info.addr + layout::READ_SOURCE + offset,
                        rkey: peer_info.rkey,
                    }
                }
                Kind::FetchAdd => {
                    posted.extra = side.fetch_adds;
                    side.fetch_adds += 1;
                    WrOperation::AtomicFetchAndAdd {
                        remote_addr: peer_info.addr + layout::COUNTER,
                        rkey: peer_info.rkey,
                        compare_add: 1,
                    }
                }
                Kind::CmpSwap => {
                    posted.extra = side.cmp_swaps;
                    side.cmp_swaps += 1;
                    WrOperation::AtomicCmpAndSwp {
                        remote_addr: peer_info.addr + layout::SWAP_WORD,
                        rkey: peer_info.rkey,
                        compare_add: posted.extra,
                        swap: posted.extra + 1,
                    }
                }
            };
            let sge = match kind {
                Kind::Read => info.sge(layout::READ_TARGET + slot * layout::SLOT, length),
                Kind::FetchAdd | Kind::CmpSwap => {
                    posted.length = 8;
                    info.sge(layout::ATOMIC_RESULT + slot * 8, 8)
                }
                _ => {
                    let mr = device.mr_mut(side.end.mr).unwrap();
                    mr.write((layout::SOURCE + slot * layout::SLOT) as usize, &data)
                        .unwrap();
                    source
                }
            };
            // Split some sends and writes over two SGEs.
            let sges: Vec<Sge> = if length > 1 && matches!(kind, Kind::Send | Kind::Write) {
                let first = length / 3;
                vec![
                    Sge {
                        length: first,
                        ..sge
                    },
                    Sge {
                        addr: sge.addr + u64::from(first),
                        length: length - first,
                        lkey: sge.lkey,
                    },
                ]
            } else {
                vec![sge]
            };
            device
                .post_send(
                    side.end.qp,
                    &SendWr::new(wr_id, operation, &sges).signaled(),
                )
                .unwrap();
            if matches!(kind, Kind::Send | Kind::SendImm | Kind::WriteImm) {
                self.expected[index].push_back(Expected { kind, length, tag });
            }
            side.outstanding.push_back(posted);
            side.posted += 1;
        }
    }

    fn check_completions(&mut self, net: &mut Net, index: usize) {
        let peer = 1 - index;
        let completions = poll_all(&mut net.devices[index], self.sides[index].end.cq);
        for wc in completions {
            if wc.status != WcStatus::Success {
                eprintln!(
                    "now {} counters 0 {:#?}\ncounters 1 {:#?}",
                    net.now,
                    net.devices[0].counters(),
                    net.devices[1].counters()
                );
            }
            assert_eq!(wc.status, WcStatus::Success, "side {index}: {wc:?}");
            assert_eq!(wc.qp_num, self.sides[index].end.qp.qp_num());
            if wc.wr_id >> 40 == 1 {
                self.check_receive(net, index, &wc);
                continue;
            }
            let side = &mut self.sides[index];
            let posted = side
                .outstanding
                .pop_front()
                .unwrap_or_else(|| panic!("side {index}: unexpected completion {wc:?}"));
            assert_eq!(
                wc.wr_id, posted.wr_id,
                "side {index}: completions in order, once"
            );
            assert_eq!(wc.byte_len, posted.length, "{posted:?}");
            side.completed += 1;
            let tag = ((index as u64) << 32) | posted.wr_id;
            let local = net.devices[index].mr(side.end.mr).unwrap().as_slice();
            let remote = net.devices[peer]
                .mr(self.sides[peer].end.mr)
                .unwrap()
                .as_slice();
            let length = posted.length as usize;
            match posted.kind {
                Kind::Send | Kind::SendImm => assert_eq!(wc.opcode, WcOpcode::Send),
                Kind::Write | Kind::WriteImm => {
                    assert_eq!(wc.opcode, WcOpcode::RdmaWrite);
                    let start = (layout::WRITE_TARGET + posted.slot * layout::SLOT) as usize;
                    assert!(
                        remote[start..start + length] == pattern(tag, length),
                        "side {index}: WRITE {} data",
                        posted.wr_id
                    );
                }
                Kind::Read => {
                    assert_eq!(wc.opcode, WcOpcode::RdmaRead);
                    let start = (layout::READ_TARGET + posted.slot * layout::SLOT) as usize;
                    let source = (layout::READ_SOURCE + posted.extra) as usize;
                    assert!(
                        local[start..start + length] == remote[source..source + length],
                        "side {index}: READ {} data",
                        posted.wr_id
                    );
                }
                Kind::FetchAdd | Kind::CmpSwap => {
                    assert_eq!(
                        wc.opcode,
                        if posted.kind == Kind::FetchAdd {
                            WcOpcode::FetchAdd
                        } else {
                            WcOpcode::CompSwap
                        }
                    );
                    let start = (layout::ATOMIC_RESULT + posted.slot * 8) as usize;
                    let original = u64::from_le_bytes(local[start..start + 8].try_into().unwrap());
                    assert_eq!(
                        original, posted.extra,
                        "side {index}: atomic {} executed once, in order",
                        posted.wr_id
                    );
                }
            }
        }
    }

    fn check_receive(&mut self, net: &mut Net, index: usize, wc: &WorkCompletion) {
        let peer = 1 - index;
        let peer_qpn = self.sides[peer].end.qp.qp_num();
        let side = &mut self.sides[index];
        let slot = side.recv_slots.pop_front().unwrap();
        assert_eq!(
            wc.wr_id & 0xffff_ffff,
            side.received as u64,
            "receives in order"
        );
        side.received += 1;
        let expected = self.expected[peer]
            .pop_front()
            .unwrap_or_else(|| panic!("side {index}: receive without a message {wc:?}"));
        assert_eq!(wc.byte_len, expected.length, "{expected:?}");
        assert_eq!(wc.src_qp, peer_qpn);
        match expected.kind {
            Kind::Send | Kind::SendImm => {
                assert_eq!(wc.opcode, WcOpcode::Recv);
                let mr = net.devices[index].mr(side.end.mr).unwrap();
                let start = (layout::RECEIVE + slot * layout::SLOT) as usize;
                let length = expected.length as usize;
                assert!(
                    mr.as_slice()[start..start + length] == pattern(expected.tag, length),
                    "side {index}: SEND data"
                );
                if expected.kind == Kind::SendImm {
                    assert_eq!(wc.imm(), Some(expected.tag as u32));
                } else {
                    assert_eq!(wc.imm(), None);
                }
            }
            _ => {
                assert_eq!(wc.opcode, WcOpcode::RecvRdmaWithImm);
                assert_eq!(wc.imm(), Some(expected.tag as u32));
            }
        }
    }

    fn run(&mut self, net: &mut Net, limit_ns: u64) {
        let end = net.now + limit_ns;
        loop {
            self.drive(net);
            if self.done() {
                break;
            }
            assert!(net.now < end, "simulated time limit reached");
            assert!(net.step(), "network idle before the workload finished");
        }
        // Nothing more may complete afterwards.
        net.advance(50_000_000);
        for index in 0..2 {
            let extra: Vec<_> = poll_all(&mut net.devices[index], self.sides[index].end.cq)
                .into_iter()
                .filter(|wc| wc.wr_id >> 40 != 1)
                .collect();
            assert!(
                extra.is_empty(),
                "side {index}: extra completions {extra:?}"
            );
            let counter = {
                let mr = net.devices[index]
                    .mr(self.sides[index].end.mr)
                    .unwrap()
                    .as_slice();
                let word = |at: u64| {
                    u64::from_le_bytes(mr[at as usize..at as usize + 8].try_into().unwrap())
                };
                (word(layout::COUNTER), word(layout::SWAP_WORD))
            };
            let peer = &self.sides[1 - index];
            assert_eq!(
                counter,
                (peer.fetch_adds, peer.cmp_swaps),
                "atomics ran once each"
            );
        }
    }
}

fn workload_setup(mtu: Mtu) -> Setup {
    Setup {
        mtu,
        region_len: layout::REGION,
        ..Setup::default()
    }
}

#[test]
fn mixed_workload_lossless() {
    let setup = workload_setup(Mtu::Mtu1024);
    let (mut net, ends) = connect(&setup, Faults::NONE, 1);
    let mut workload = Workload::new(&mut net, ends, 600, 5000, 1);
    workload.run(&mut net, 10_000_000_000);
    for device in &net.devices {
        let counters = device.counters();
        assert_eq!(counters.retransmitted_packets, 0, "{counters:?}");
        assert_eq!(
            counters.drops.total() + counters.icrc_errors,
            0,
            "{counters:?}"
        );
    }
}

/// With the ICRC left to the NIC, the devices put the same packets on the wire, byte for
/// byte, once the NIC has filled in the ICRCs.
#[test]
fn icrc_offload_puts_the_same_bytes_on_the_wire() {
    let run = |icrc_offload: bool| {
        let setup = Setup {
            icrc_offload,
            ..workload_setup(Mtu::Mtu1024)
        };
        let (mut net, ends) = connect(&setup, Faults::NONE, 1);
        net.record = Some(Vec::new());
        let mut workload = Workload::new(&mut net, ends, 200, 5000, 1);
        workload.run(&mut net, 10_000_000_000);
        for device in &net.devices {
            let counters = device.counters();
            assert_eq!(counters.drops.total() + counters.icrc_errors, 0);
        }
        assert_eq!(net.nic_icrc_drops, 0);
        net.record.take().unwrap()
    };
    let offloaded = run(true);
    let computed = run(false);
    assert!(offloaded.len() > 1000, "{} packets", offloaded.len());
    assert_eq!(offloaded.len(), computed.len());
    for (index, (offloaded, computed)) in offloaded.iter().zip(&computed).enumerate() {
        assert_eq!(offloaded, computed, "packet {index}");
    }
}

/// Every opcode, lossy, with the ICRC left to the NIC: every WR completes once, data intact.
#[test]
fn every_opcode_64k_lossy_with_icrc_offload() {
    for seed in 0..3 {
        every_opcode_with(Faults::lossy(0.1), [0x10_0000, 0x20_0000], seed, true);
    }
}

fn lossy(loss: f64, seed: u64, mtu: Mtu, per_side: usize) {
    let setup = workload_setup(mtu);
    let (mut net, ends) = connect(&setup, Faults::lossy(loss), seed);
    let mut workload = Workload::new(&mut net, ends, per_side, 5000, seed);
    workload.run(&mut net, 600_000_000_000);
    let counters = net.devices[0].counters();
    eprintln!(
        "loss {loss}: {} packets sent by the network, {} lost; device 0 sent {}, retransmitted {}, retries {}, timeouts {}, simulated {:.1} ms",
        net.sent,
        net.lost,
        counters.packets_sent,
        counters.retransmitted_packets,
        counters.retries,
        counters.timeouts,
        net.now as f64 / 1e6
    );
    assert!(net.lost > 0);
    assert!(counters.retransmitted_packets > 0, "{counters:?}");
    assert!(counters.duplicate_requests > 0, "{counters:?}");
}

#[test]
fn mixed_workload_5_percent_loss() {
    lossy(0.05, 2, Mtu::Mtu1024, 1500);
}

#[test]
fn mixed_workload_10_percent_loss() {
    lossy(0.10, 3, Mtu::Mtu1024, 1500);
}

#[test]
fn mixed_workload_20_percent_loss() {
    lossy(0.20, 4, Mtu::Mtu1024, 1000);
}

#[test]
fn mixed_workload_small_mtu_lossy() {
    lossy(0.10, 5, Mtu::Mtu256, 500);
}

#[test]
fn mixed_workload_many_seeds() {
    for seed in 10..16 {
        lossy(0.15, seed, Mtu::Mtu1024, 200);
    }
}

/// Every opcode with 64 KiB messages at MTU 1024 (64 packets each), lossless then lossy.
fn every_opcode(faults: Faults, sq_psn: [u32; 2], seed: u64) {
    every_opcode_with(faults, sq_psn, seed, false);
}

fn every_opcode_with(faults: Faults, sq_psn: [u32; 2], seed: u64, icrc_offload: bool) {
    let setup = Setup {
        sq_psn,
        region_len: 2 * MIB,
        icrc_offload,
        ..Setup::default()
    };
    let (mut net, [a, b]) = connect(&setup, faults, seed);
    const LEN: usize = 64 * 1024;
    let data = pattern(7, LEN);
    let read_source = pattern(8, LEN);
    net.devices[0]
        .mr_mut(a.mr)
        .unwrap()
        .write(0, &data)
        .unwrap();
    {
        let mr = net.devices[1].mr_mut(b.mr).unwrap();
        mr.write(MIB as usize, &read_source).unwrap();
        mr.write(MIB as usize + LEN, &40u64.to_le_bytes()).unwrap();
        mr.write(MIB as usize + LEN + 8, &1000u64.to_le_bytes())
            .unwrap();
    }
    // B: two receives, for the SEND WITH IMM and the WRITE WITH IMM, and one for the SEND.
    for (wr_id, offset) in [(100, 0u64), (101, 64 * KIB), (102, 128 * KIB)] {
        let sge = b.info.sge(512 * KIB + offset, 64 * 1024);
        net.devices[1]
            .post_recv(
                b.qp,
                &RecvWr {
                    wr_id,
                    sg_list: &[sge],
                },
            )
            .unwrap();
    }
    let source = a.info.sge(0, LEN as u32);
    let remote = |offset: u64| b.info.addr + offset;
    let requests = [
        (1, WrOperation::Send, source),
        (2, WrOperation::SendWithImm { imm_data: 0xabcd }, source),
        (
            3,
            WrOperation::RdmaWrite {
                remote_addr: remote(0),
                rkey: b.info.rkey,
            },
            source,
        ),
        (
            4,
            WrOperation::RdmaWriteWithImm {
                remote_addr: remote(256 * KIB),
                rkey: b.info.rkey,
                imm_data: 0x1234,
            },
            source,
        ),
        (
            5,
            WrOperation::RdmaRead {
                remote_addr: remote(MIB),
                rkey: b.info.rkey,
            },
            a.info.sge(MIB, LEN as u32),
        ),
        (
            6,
            WrOperation::AtomicFetchAndAdd {
                remote_addr: remote(MIB + LEN as u64),
                rkey: b.info.rkey,
                compare_add: 2,
            },
            a.info.sge(MIB + 128 * KIB, 8),
        ),
        (
            7,
            WrOperation::AtomicCmpAndSwp {
                remote_addr: remote(MIB + LEN as u64 + 8),
                rkey: b.info.rkey,
                compare_add: 1000,
                swap: 2000,
            },
            a.info.sge(MIB + 128 * KIB + 8, 8),
        ),
        (
            8,
            WrOperation::AtomicCmpAndSwp {
                remote_addr: remote(MIB + LEN as u64 + 8),
                rkey: b.info.rkey,
                compare_add: 1000,
                swap: 3000,
            },
            a.info.sge(MIB + 128 * KIB + 16, 8),
        ),
    ];
    for (wr_id, operation, sge) in requests {
        net.devices[0]
            .post_send(a.qp, &SendWr::new(wr_id, operation, &[sge]).signaled())
            .unwrap();
    }
    let mut sent = Vec::new();
    let mut received = Vec::new();
    net.run_until(60_000_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        received.extend(poll_all(&mut net.devices[1], b.cq));
        sent.len() == 8 && received.len() == 3
    });
    let statuses: Vec<_> = sent
        .iter()
        .map(|wc| (wc.wr_id, wc.status, wc.opcode))
        .collect();
    use WcOpcode::*;
    let ok = WcStatus::Success;
    assert_eq!(
        statuses,
        [
            (1, ok, Send),
            (2, ok, Send),
            (3, ok, RdmaWrite),
            (4, ok, RdmaWrite),
            (5, ok, RdmaRead),
            (6, ok, FetchAdd),
            (7, ok, CompSwap),
            (8, ok, CompSwap),
        ]
    );
    assert!(sent[..5].iter().all(|wc| wc.byte_len == LEN as u32));
    let received: Vec<_> = received
        .iter()
        .map(|wc| (wc.wr_id, wc.status, wc.opcode, wc.byte_len, wc.imm()))
        .collect();
    assert_eq!(
        received,
        [
            (100, ok, Recv, LEN as u32, None),
            (101, ok, Recv, LEN as u32, Some(0xabcd)),
            (102, ok, RecvRdmaWithImm, LEN as u32, Some(0x1234)),
        ]
    );
    let b_bytes = net.devices[1].mr(b.mr).unwrap().as_slice();
    assert!(b_bytes[512 * 1024..][..LEN] == data[..], "SEND data");
    assert!(
        b_bytes[576 * 1024..][..LEN] == data[..],
        "SEND WITH IMM data"
    );
    assert!(b_bytes[..LEN] == data[..], "WRITE data");
    assert!(
        b_bytes[256 * 1024..][..LEN] == data[..],
        "WRITE WITH IMM data"
    );
    let word = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(word(b_bytes, MIB as usize + LEN), 42, "fetch and add");
    assert_eq!(
        word(b_bytes, MIB as usize + LEN + 8),
        2000,
        "first swap won"
    );
    let a_bytes = net.devices[0].mr(a.mr).unwrap().as_slice();
    assert!(
        a_bytes[MIB as usize..][..LEN] == read_source[..],
        "READ data"
    );
    let results = MIB as usize + 128 * 1024;
    assert_eq!(word(a_bytes, results), 40);
    assert_eq!(word(a_bytes, results + 8), 1000);
    assert_eq!(
        word(a_bytes, results + 16),
        2000,
        "second swap saw the first"
    );
}

#[test]
fn every_opcode_64k_lossless() {
    every_opcode(Faults::NONE, [0x10_0000, 0x20_0000], 1);
}

#[test]
fn every_opcode_64k_lossy() {
    for seed in 0..10 {
        every_opcode(Faults::lossy(0.1), [0x10_0000, 0x20_0000], seed);
    }
}

#[test]
fn psn_wraps_around() {
    every_opcode(Faults::NONE, [0xff_fff0, 0xff_ffe0], 1);
    for seed in 0..5 {
        every_opcode(Faults::lossy(0.1), [0xff_ffd0, 0xff_fffe], seed);
    }
}

#[test]
fn mixed_workload_across_psn_wrap() {
    let setup = Setup {
        sq_psn: [0xff_f000, 0xff_ff00],
        ..workload_setup(Mtu::Mtu1024)
    };
    let (mut net, ends) = connect(&setup, Faults::lossy(0.1), 9);
    let mut workload = Workload::new(&mut net, ends, 1500, 5000, 9);
    workload.run(&mut net, 600_000_000_000);
}

/// Posts a SEND of `length` bytes from A.
fn post_send(net: &mut Net, a: &End, wr_id: u64, length: u32) {
    let sge = a.info.sge(0, length);
    net.devices[0]
        .post_send(
            a.qp,
            &SendWr::new(wr_id, WrOperation::Send, &[sge]).signaled(),
        )
        .unwrap();
}

#[test]
fn rnr_then_success_when_receive_is_posted_late() {
    let setup = Setup {
        min_rnr_timer: 14, // 0.96 ms
        rnr_retry: 7,
        ..Setup::default()
    };
    let (mut net, [a, b]) = connect(&setup, Faults::NONE, 1);
    net.devices[0]
        .mr_mut(a.mr)
        .unwrap()
        .write(0, &pattern(1, 3000))
        .unwrap();
    post_send(&mut net, &a, 1, 3000);
    net.advance(5_000_000);
    assert!(poll_all(&mut net.devices[0], a.cq).is_empty());
    let rnr = net.devices[0].counters().rnr_naks_received;
    assert!(rnr >= 3, "RNR NAKs while no receive is posted: {rnr}");
    assert_eq!(net.devices[1].counters().rnr_naks_sent, rnr);
    // Each retry waits the RNR timer of the NAK: 5 ms / 0.96 ms.
    assert!(rnr <= 6, "{rnr} retries in 5 ms");
    let sge = b.info.sge(0, 4096);
    net.devices[1]
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 9,
                sg_list: &[sge],
            },
        )
        .unwrap();
    let mut sent = Vec::new();
    let mut received = Vec::new();
    net.run_until(100_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        received.extend(poll_all(&mut net.devices[1], b.cq));
        !sent.is_empty() && !received.is_empty()
    });
    assert_eq!(sent[0].status, WcStatus::Success);
    assert_eq!((received[0].wr_id, received[0].byte_len), (9, 3000));
    assert!(net.devices[1].mr(b.mr).unwrap().as_slice()[..3000] == pattern(1, 3000)[..]);
}

#[test]
fn rnr_retries_exhausted() {
    let setup = Setup {
        rnr_retry: 3,
        ..Setup::default()
    };
    let (mut net, [a, b]) = connect(&setup, Faults::NONE, 1);
    post_send(&mut net, &a, 1, 100);
    post_send(&mut net, &a, 2, 100);
    let mut sent = Vec::new();
    net.run_until(1_000_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        sent.len() == 2
    });
    assert_eq!(
        sent.iter()
            .map(|wc| (wc.wr_id, wc.status))
            .collect::<Vec<_>>(),
        [(1, WcStatus::RnrRetryExcErr), (2, WcStatus::WrFlushErr)]
    );
    assert_eq!(
        net.devices[0].counters().rnr_naks_received,
        4,
        "1 + 3 retries"
    );
    assert_eq!(net.devices[0].counters().rnr_retry_exceeded, 1);
    assert_eq!(net.devices[0].qp_state(a.qp), Ok(QpState::Err));
    // The responder is fine.
    assert_eq!(net.devices[1].qp_state(b.qp), Ok(QpState::Rts));
    // Later requests are flushed at once.
    post_send(&mut net, &a, 3, 100);
    let flushed = poll_all(&mut net.devices[0], a.cq);
    assert_eq!(flushed.len(), 1);
    assert_eq!(
        (flushed[0].wr_id, flushed[0].status),
        (3, WcStatus::WrFlushErr)
    );
}

#[test]
fn bad_rkey_is_a_remote_access_error() {
    let (mut net, [a, b]) = connect(&Setup::default(), Faults::NONE, 1);
    let sge = b.info.sge(0, 64);
    net.devices[1]
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 50,
                sg_list: &[sge],
            },
        )
        .unwrap();
    post_send(&mut net, &a, 1, 10);
    let source = a.info.sge(0, 2000);
    let bad_rkey = b.info.rkey ^ 0x5a;
    net.devices[0]
        .post_send(
            a.qp,
            &SendWr::new(
                2,
                WrOperation::RdmaWrite {
                    remote_addr: b.info.addr,
                    rkey: bad_rkey,
                },
                &[source],
            ),
        )
        .unwrap();
    post_send(&mut net, &a, 3, 10);
    net.devices[0]
        .post_send(
            a.qp,
            &SendWr::new(
                4,
                WrOperation::RdmaRead {
                    remote_addr: b.info.addr,
                    rkey: b.info.rkey,
                },
                &[a.info.sge(4096, 100)],
            ),
        )
        .unwrap();
    let mut sent = Vec::new();
    net.run_until(1_000_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        sent.len() == 4
    });
    assert_eq!(
        sent.iter()
            .map(|wc| (wc.wr_id, wc.status))
            .collect::<Vec<_>>(),
        [
            (1, WcStatus::Success),
            (2, WcStatus::RemAccessErr),
            (3, WcStatus::WrFlushErr),
            (4, WcStatus::WrFlushErr),
        ]
    );
    assert_eq!(net.devices[0].qp_state(a.qp), Ok(QpState::Err));
    // rxe moves the responder to ERR as well (class C error); its receives are flushed.
    net.advance(10_000_000);
    assert_eq!(net.devices[1].qp_state(b.qp), Ok(QpState::Err));
    let received = poll_all(&mut net.devices[1], b.cq);
    assert_eq!(
        received
            .iter()
            .map(|wc| (wc.wr_id, wc.status))
            .collect::<Vec<_>>(),
        [(50, WcStatus::Success)]
    );
    assert_eq!(net.devices[1].counters().error_naks_sent, 1);
    // Nothing of the bad WRITE reached memory.
    assert!(
        net.devices[1].mr(b.mr).unwrap().as_slice()[10..4096]
            .iter()
            .all(|&byte| byte == 0)
    );
    // New requests complete with WR_FLUSH_ERR, receives too.
    post_send(&mut net, &a, 5, 10);
    let flushed = poll_all(&mut net.devices[0], a.cq);
    assert_eq!(
        flushed
            .iter()
            .map(|wc| (wc.wr_id, wc.status))
            .collect::<Vec<_>>(),
        [(5, WcStatus::WrFlushErr)]
    );
    net.devices[1]
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 51,
                sg_list: &[sge],
            },
        )
        .unwrap();
    let flushed = poll_all(&mut net.devices[1], b.cq);
    assert_eq!(
        flushed
            .iter()
            .map(|wc| (wc.wr_id, wc.status))
            .collect::<Vec<_>>(),
        [(51, WcStatus::WrFlushErr)]
    );
}

#[test]
fn remote_errors_map_to_statuses() {
    // READ beyond the region: remote access error. WRITE to a QP without remote write:
    // invalid request.
    let (mut net, [a, b]) = connect(&Setup::default(), Faults::NONE, 1);
    net.devices[0]
        .post_send(
            a.qp,
            &SendWr::new(
                1,
                WrOperation::RdmaRead {
                    remote_addr: b.info.addr + b.info.length - 10,
                    rkey: b.info.rkey,
                },
                &[a.info.sge(0, 100)],
            ),
        )
        .unwrap();
    let mut sent = Vec::new();
    net.run_until(1_000_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        !sent.is_empty()
    });
    assert_eq!(sent[0].status, WcStatus::RemAccessErr);

    let (mut net, [a, b]) = connect(&Setup::default(), Faults::NONE, 2);
    let deny = QpAttr {
        qp_access_flags: AccessFlags::REMOTE_READ,
        ..QpAttr::default()
    };
    net.devices[1]
        .modify_qp(b.qp, &deny, QpAttrMask::ACCESS_FLAGS)
        .unwrap();
    net.devices[0]
        .post_send(
            a.qp,
            &SendWr::new(
                1,
                WrOperation::RdmaWrite {
                    remote_addr: b.info.addr,
                    rkey: b.info.rkey,
                },
                &[a.info.sge(0, 100)],
            ),
        )
        .unwrap();
    let mut sent = Vec::new();
    net.run_until(1_000_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        !sent.is_empty()
    });
    assert_eq!(sent[0].status, WcStatus::RemInvReqErr);

    // An unaligned atomic is an invalid request at the responder (a correct requester
    // refuses it when posting).
    let (mut net, [a, _]) = connect(&Setup::default(), Faults::NONE, 3);
    let sge = [a.info.sge(0, 8)];
    let unaligned = SendWr::new(
        1,
        WrOperation::AtomicFetchAndAdd {
            remote_addr: 4,
            rkey: 1,
            compare_add: 1,
        },
        &sge,
    );
    assert_eq!(
        net.devices[0].post_send(a.qp, &unaligned),
        Err(VerbsError::InvalidAtomic)
    );
}

#[test]
fn receive_buffer_too_small() {
    let (mut net, [a, b]) = connect(&Setup::default(), Faults::NONE, 1);
    let sge = b.info.sge(0, 1000);
    net.devices[1]
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 7,
                sg_list: &[sge],
            },
        )
        .unwrap();
    post_send(&mut net, &a, 1, 3000);
    let mut sent = Vec::new();
    let mut received = Vec::new();
    net.run_until(1_000_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        received.extend(poll_all(&mut net.devices[1], b.cq));
        !sent.is_empty() && !received.is_empty()
    });
    assert_eq!(sent[0].status, WcStatus::RemInvReqErr);
    assert_eq!(received[0].status, WcStatus::LocLenErr);
}

#[test]
fn unreachable_peer_exhausts_retries() {
    let setup = Setup {
        timeout: 10, // 4.2 ms
        retry_cnt: 3,
        ..Setup::default()
    };
    let (mut net, [a, _]) = connect(&setup, Faults::NONE, 1);
    net.cut = [true, true];
    let start = net.now;
    for wr_id in 1..=3 {
        post_send(&mut net, &a, wr_id, 2000);
    }
    let mut sent = Vec::new();
    net.run_until(10_000_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        sent.len() == 3
    });
    assert_eq!(
        sent.iter()
            .map(|wc| (wc.wr_id, wc.status))
            .collect::<Vec<_>>(),
        [
            (1, WcStatus::RetryExcErr),
            (2, WcStatus::WrFlushErr),
            (3, WcStatus::WrFlushErr),
        ]
    );
    let counters = net.devices[0].counters();
    assert_eq!(counters.timeouts, 4, "first try and 3 retries");
    assert_eq!(counters.retries, 3);
    assert_eq!(counters.retry_exceeded, 1);
    // 4 timeouts of 4.096 us << 10.
    let elapsed = net.now - start;
    let timeout = 4096u64 << 10;
    assert!(
        (4 * timeout..5 * timeout).contains(&elapsed),
        "{elapsed} ns"
    );
    assert_eq!(net.devices[0].qp_state(a.qp), Ok(QpState::Err));
    assert_eq!(
        net.devices[0].next_deadline(),
        None,
        "no timer left running"
    );
}

#[test]
fn retry_cnt_7_outlasts_a_silent_peer_as_rxe_does() {
    let setup = Setup {
        timeout: 10, // 4.2 ms
        retry_cnt: 7,
        ..Setup::default()
    };
    let (mut net, [a, b]) = connect(&setup, Faults::NONE, 1);
    net.cut = [true, true];
    let data = pattern(1, 3000);
    net.devices[0]
        .mr_mut(a.mr)
        .unwrap()
        .write(0, &data)
        .unwrap();
    let write = WrOperation::RdmaWrite {
        remote_addr: b.info.addr + 4096,
        rkey: b.info.rkey,
    };
    net.devices[0]
        .post_send(
            a.qp,
            &SendWr::new(1, write, &[a.info.sge(0, 3000)]).signaled(),
        )
        .unwrap();
    // Thirty timeouts of silence: far past the 7 retries the IBTA would allow.
    net.advance(30 * (4096 << 10) + 1_000_000);
    let counters = net.devices[0].counters();
    assert!(counters.timeouts >= 30, "{counters:?}");
    assert_eq!(counters.retry_exceeded, 0);
    assert!(poll_all(&mut net.devices[0], a.cq).is_empty());
    assert_eq!(net.devices[0].qp_state(a.qp), Ok(QpState::Rts));
    // The peer comes back: the next retry gets through and the WRITE completes.
    net.cut = [false, false];
    let mut sent = Vec::new();
    net.run_until(100_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        !sent.is_empty()
    });
    assert_eq!(
        sent.iter()
            .map(|wc| (wc.wr_id, wc.status))
            .collect::<Vec<_>>(),
        [(1, WcStatus::Success)]
    );
    let landed = &net.devices[1].mr(b.mr).unwrap().as_slice()[4096..4096 + 3000];
    assert!(landed == &data[..]);
}

#[test]
fn infinite_timeout_never_fires() {
    let setup = Setup {
        timeout: 0,
        ..Setup::default()
    };
    let (mut net, [a, _]) = connect(&setup, Faults::NONE, 1);
    net.cut = [true, true];
    post_send(&mut net, &a, 1, 10);
    net.flush();
    assert_eq!(net.devices[0].next_deadline(), None);
}

#[test]
fn sqd_stops_new_requests_and_rts_resumes() {
    let (mut net, [a, b]) = connect(&Setup::default(), Faults::NONE, 1);
    for wr_id in 0..4 {
        let sge = b.info.sge(wr_id * 4096, 4096);
        net.devices[1]
            .post_recv(
                b.qp,
                &RecvWr {
                    wr_id,
                    sg_list: &[sge],
                },
            )
            .unwrap();
    }
    let sqd = QpAttr {
        qp_state: QpState::Sqd,
        ..QpAttr::default()
    };
    net.devices[0]
        .modify_qp(a.qp, &sqd, QpAttrMask::STATE)
        .unwrap();
    post_send(&mut net, &a, 1, 100);
    net.advance(10_000_000);
    assert!(poll_all(&mut net.devices[0], a.cq).is_empty());
    let rts = QpAttr {
        qp_state: QpState::Rts,
        ..QpAttr::default()
    };
    net.devices[0]
        .modify_qp(a.qp, &rts, QpAttrMask::STATE)
        .unwrap();
    let mut sent = Vec::new();
    net.run_until(1_000_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        !sent.is_empty()
    });
    assert_eq!(sent[0].status, WcStatus::Success);
}

#[test]
fn unsignaled_requests_complete_silently_and_free_cq_entries() {
    let setup = Setup {
        cq_depth: 8,
        cap: QpCap {
            max_send_wr: 8,
            max_recv_wr: 0,
            ..QpCap::default()
        },
        ..Setup::default()
    };
    let (mut net, [a, b]) = connect(&setup, Faults::NONE, 1);
    for round in 0..10 {
        for index in 0..8u64 {
            let wr_id = round * 8 + index;
            let operation = WrOperation::RdmaWrite {
                remote_addr: b.info.addr + index * 64,
                rkey: b.info.rkey,
            };
            let sge = [a.info.sge(0, 64)];
            let wr = SendWr::new(wr_id, operation, &sge);
            let wr = if index == 7 { wr.signaled() } else { wr };
            net.devices[0].post_send(a.qp, &wr).unwrap();
        }
        let mut sent = Vec::new();
        net.run_until(1_000_000_000, |net| {
            sent.extend(poll_all(&mut net.devices[0], a.cq));
            !sent.is_empty()
        });
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].wr_id, round * 8 + 7);
    }
    assert_eq!(net.devices[0].cq(a.cq).unwrap().available(), 8);
}

/// How much go-back-N costs under each kind of fault: 2000 RDMA WRITEs of 4 KiB (8000
/// packets), 32 in flight. Prints packets sent, retransmissions, timeouts and simulated
/// time; for a look, not a pass/fail:
///
/// ```text
/// cargo test -p roce --release --test transport_sim -- --ignored --nocapture recovery_cost
/// ```
#[test]
#[ignore = "prints figures; run with --ignored --nocapture"]
fn recovery_cost() {
    let cases = [
        ("no faults", Faults::NONE),
        (
            "1% loss",
            Faults {
                loss: 0.01,
                ..Faults::NONE
            },
        ),
        (
            "5% loss",
            Faults {
                loss: 0.05,
                ..Faults::NONE
            },
        ),
        (
            "20% loss",
            Faults {
                loss: 0.2,
                ..Faults::NONE
            },
        ),
        (
            "10% reordered",
            Faults {
                reorder: 0.1,
                ..Faults::NONE
            },
        ),
        (
            "5% duplicated",
            Faults {
                duplicate: 0.05,
                ..Faults::NONE
            },
        ),
        ("5% loss, dup, reorder, jitter", Faults::lossy(0.05)),
    ];
    for (label, faults) in cases {
        let setup = Setup {
            region_len: 1 << 20,
            ..Setup::default()
        };
        let (mut net, [a, b]) = connect(&setup, faults, 7);
        let start = net.now;
        let total = 2000u64;
        let (mut posted, mut done) = (0u64, 0u64);
        while done < total {
            while posted < total && posted - done < 32 {
                let sge = [a.info.sge(0, 4096)];
                let operation = WrOperation::RdmaWrite {
                    remote_addr: b.info.addr + (posted % 64) * 4096,
                    rkey: b.info.rkey,
                };
                net.devices[0]
                    .post_send(a.qp, &SendWr::new(posted, operation, &sge).signaled())
                    .unwrap();
                posted += 1;
            }
            for wc in poll_all(&mut net.devices[0], a.cq) {
                assert_eq!(wc.status, WcStatus::Success);
                done += 1;
            }
            if done < total && (posted == total || posted - done >= 32) {
                assert!(net.step());
            }
        }
        let counters = net.devices[0].counters();
        println!(
            "{label:>30}: {:>6} packets sent for 8000, {:>6} retransmitted, {:>4} go-back-Ns, {:>3} timeouts, {:>6.2} ms",
            counters.packets_sent,
            counters.retransmitted_packets,
            counters.retries,
            counters.timeouts,
            (net.now - start) as f64 / 1e6
        );
    }
}

/// Many more seeds of the mixed workload (slow in debug builds):
///
/// ```text
/// cargo test -p roce --release --test transport_sim -- --ignored seed_sweep
/// ```
#[test]
#[ignore = "long; run in release with --ignored"]
fn seed_sweep() {
    for seed in 100..400 {
        let mtu = [Mtu::Mtu256, Mtu::Mtu1024, Mtu::Mtu4096][seed as usize % 3];
        let setup = Setup {
            sq_psn: [(seed as u32).wrapping_mul(0x9e37) & 0xff_ffff, 0xff_ff00],
            ..workload_setup(mtu)
        };
        let loss = [0.0, 0.02, 0.05, 0.1][seed as usize % 4];
        let (mut net, ends) = connect(&setup, Faults::lossy(loss), seed);
        let mut workload = Workload::new(&mut net, ends, 300, 5000, seed);
        workload.run(&mut net, 600_000_000_000);
    }
}
