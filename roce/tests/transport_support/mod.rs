//! A deterministic network of two devices for the transport tests: seeded loss,
//! duplication, reordering and delay, and a simulated clock that follows the devices'
//! deadlines.

#![allow(dead_code)]

use roce::verbs::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;

/// xorshift64*: small, seeded, good enough for fault injection.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
}

/// How the network misbehaves.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet is held back (delivered after later ones).
    pub reorder: f64,
    /// One-way delay in nanoseconds.
    pub delay: u64,
    /// Random extra delay up to this many nanoseconds.
    pub jitter: u64,
    /// Link speed in bits per nanosecond (Gbit/s); 0 for infinite. Packets queue behind
    /// each other on the link.
    pub gbit_per_s: u64,
}

impl Faults {
    pub const NONE: Faults = Faults {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        delay: 2_000,
        jitter: 0,
        gbit_per_s: 10,
    };

    pub const fn lossy(loss: f64) -> Faults {
        Faults {
            loss,
            duplicate: 0.05,
            reorder: 0.1,
            delay: 5_000,
            jitter: 3_000,
            gbit_per_s: 10,
        }
    }
}

pub const ADDRESSES: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];

/// A packet on the wire: arrival time, sequence number, receiver, bytes.
type InFlight = (u64, u64, usize, Vec<u8>);

/// Two devices and the network between them.
pub struct Net {
    pub now: u64,
    pub devices: [Device; 2],
    pub faults: Faults,
    /// Drop everything device `i` sends.
    pub cut: [bool; 2],
    rng: Rng,
    /// Packets on the wire: (arrival time, sequence number, receiver, bytes).
    in_flight: BinaryHeap<Reverse<InFlight>>,
    /// Arrival time of the last in-order packet from each device.
    last_arrival: [u64; 2],
    /// When each device's link has sent everything given to it.
    link_free: [u64; 2],
    sequence: u64,
    buffer: Vec<u8>,
    pub sent: u64,
    pub lost: u64,
    /// Every packet sent, with its source, if recording.
    pub record: Option<Vec<(usize, Vec<u8>)>>,
    /// The NIC computes the ICRC of every packet sent (which the devices must leave as
    /// zeros) and drops received packets whose ICRC is wrong, as a NIC with ICRC offload
    /// does.
    pub nic_icrc: bool,
    /// Packets the NIC dropped for a wrong ICRC.
    pub nic_icrc_drops: u64,
}

impl Net {
    pub fn new(configs: [DeviceConfig; 2], faults: Faults, seed: u64) -> Self {
        let buffer_len = configs
            .iter()
            .map(|c| roce::transport::max_packet_len(c.active_mtu.bytes()))
            .max()
            .unwrap();
        Net {
            now: 1_000_000,
            devices: configs.map(Device::new),
            faults,
            cut: [false; 2],
            rng: Rng::new(seed),
            in_flight: BinaryHeap::new(),
            last_arrival: [0; 2],
            link_free: [0; 2],
            sequence: 0,
            buffer: vec![0; buffer_len],
            sent: 0,
            lost: 0,
            record: None,
            nic_icrc: configs[0].icrc_offload,
            nic_icrc_drops: 0,
        }
    }

    fn launch(&mut self, from: usize, length: usize) {
        self.sent += 1;
        assert!(
            self.in_flight.len() < 200_000,
            "packets pile up on the network: {:#?}",
            self.devices
        );
        let mut packet = self.buffer[..length].to_vec();
        if self.nic_icrc {
            let trailer = &packet[length - roce::icrc::ICRC_LEN..];
            assert_eq!(trailer, [0; 4], "a device with ICRC offload wrote an ICRC");
            roce::icrc::fill(&mut packet).expect("the NIC computes the ICRC");
        }
        if let Some(record) = &mut self.record {
            record.push((from, packet.clone()));
        }
        // The link is busy sending it (Ethernet framing included), lost further on or not.
        if let Some(busy) = ((length as u64 + 38) * 8).checked_div(self.faults.gbit_per_s) {
            self.link_free[from] = self.now.max(self.link_free[from]) + busy;
        }
        let departure = self.link_free[from].max(self.now);
        if self.cut[from] || self.rng.chance(self.faults.loss) {
            self.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            // A link is FIFO (jitter delays the packets behind too) except for the packets
            // picked for reordering, which are held back and overtaken.
            let mut arrival = departure + self.faults.delay;
            if self.faults.jitter > 0 {
                arrival += self.rng.below(self.faults.jitter);
            }
            arrival = arrival.max(self.last_arrival[from]);
            if self.rng.chance(self.faults.reorder) {
                arrival += self.faults.delay * (1 + self.rng.below(4));
            } else {
                self.last_arrival[from] = arrival;
            }
            self.sequence += 1;
            self.in_flight
                .push(Reverse((arrival, self.sequence, 1 - from, packet.clone())));
        }
    }

    /// Sends everything the devices have to send now.
    pub fn flush(&mut self) {
        let mut packets = 0u64;
        loop {
            let mut any = false;
            for from in 0..2 {
                while let Some(length) =
                    self.devices[from].poll_transmit(self.now, &mut self.buffer)
                {
                    self.launch(from, length);
                    any = true;
                    packets += 1;
                    assert!(
                        packets < 1_000_000,
                        "a device keeps sending without time passing: {:#?}",
                        self.devices
                    );
                }
            }
            if !any {
                break;
            }
        }
    }

    /// Sends what is ready, then advances the clock to the next event (a delivery or a
    /// device deadline) and handles it. Returns false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.flush();
        let next_packet = self.in_flight.peek().map(|Reverse((time, ..))| *time);
        let next = [
            next_packet,
            self.devices[0].next_deadline(),
            self.devices[1].next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(Reverse((time, ..))) = self.in_flight.peek() {
            if *time > self.now {
                break;
            }
            let Reverse((_, _, to, packet)) = self.in_flight.pop().unwrap();
            if self.nic_icrc && roce::icrc::verify(&packet).is_err() {
                self.nic_icrc_drops += 1;
                continue;
            }
            self.devices[to].receive(&packet, self.now);
        }
        for device in &mut self.devices {
            device.handle_timeouts(self.now);
        }
        true
    }

    /// Runs until `done` holds (checked after every step), or panics after `limit_ns` of
    /// simulated time or when the network goes idle first.
    pub fn run_until(&mut self, limit_ns: u64, mut done: impl FnMut(&mut Net) -> bool) {
        let end = self.now + limit_ns;
        loop {
            if done(self) {
                return;
            }
            assert!(self.now <= end, "simulated time limit reached");
            if !self.step() {
                if !done(self) {
                    eprintln!("{:#?}", self.devices);
                    panic!("network idle and condition not met");
                }
                return;
            }
        }
    }

    /// Advances the simulated clock by `duration` ns, handling whatever happens.
    pub fn advance(&mut self, duration: u64) {
        let end = self.now + duration;
        loop {
            self.flush();
            let next_packet = self.in_flight.peek().map(|Reverse((time, ..))| *time);
            let next = [
                next_packet,
                self.devices[0].next_deadline(),
                self.devices[1].next_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(next) if next <= end => {
                    self.step();
                }
                _ => {
                    self.now = end;
                    for device in &mut self.devices {
                        device.handle_timeouts(self.now);
                    }
                    self.flush();
                    return;
                }
            }
        }
    }
}

/// One side of a connection.
#[derive(Debug, Clone, Copy)]
pub struct End {
    pub pd: PdHandle,
    pub cq: CqHandle,
    pub qp: QpHandle,
    pub mr: MrHandle,
    pub info: MrInfo,
}

/// How to set up the two QPs.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub mtu: Mtu,
    pub region_len: u64,
    pub sq_psn: [u32; 2],
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub min_rnr_timer: u8,
    pub max_rd_atomic: u8,
    pub cap: QpCap,
    pub cq_depth: u32,
    pub access: AccessFlags,
    /// Virtual addresses of the two regions (`None`: the devices choose).
    pub region_addr: Option<[u64; 2]>,
    /// The devices leave the ICRC to the NIC ([`DeviceConfig::icrc_offload`]), which the
    /// network then plays.
    pub icrc_offload: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            mtu: Mtu::Mtu1024,
            region_len: 1 << 20,
            sq_psn: [0x10_0000, 0x20_0000],
            timeout: 8, // about 1 ms
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 1, // 10 us
            max_rd_atomic: 16,
            cap: QpCap {
                max_send_wr: 64,
                max_recv_wr: 256,
                max_send_sge: 4,
                max_recv_sge: 4,
                max_inline_data: 128,
            },
            cq_depth: 1024,
            access: AccessFlags::ALL,
            region_addr: None,
            icrc_offload: false,
        }
    }
}

pub fn configs(mtu: Mtu) -> [DeviceConfig; 2] {
    [
        DeviceConfig::new(ADDRESSES[0]).with_mtu(mtu).with_seed(11),
        DeviceConfig::new(ADDRESSES[1]).with_mtu(mtu).with_seed(22),
    ]
}

/// Two devices with one connected RC QP each, and one region each.
pub fn connect(setup: &Setup, faults: Faults, seed: u64) -> (Net, [End; 2]) {
    let configs = configs(setup.mtu).map(|config| config.with_icrc_offload(setup.icrc_offload));
    let mut net = Net::new(configs, faults, seed);
    let mut ends = Vec::new();
    for (index, device) in net.devices.iter_mut().enumerate() {
        let pd = device.alloc_pd().unwrap();
        let mr = match setup.region_addr {
            Some(addresses) => device
                .reg_mr_at(pd, addresses[index], setup.region_len, setup.access)
                .unwrap(),
            None => device.reg_mr(pd, setup.region_len, setup.access).unwrap(),
        };
        let info = device.mr(mr).unwrap().info();
        let cq = device.create_cq(setup.cq_depth).unwrap();
        let qp = device
            .create_qp(pd, &QpInitAttr::new(cq, cq, setup.cap))
            .unwrap();
        let init = QpAttr {
            qp_state: QpState::Init,
            port_num: 1,
            qp_access_flags: AccessFlags::REMOTE,
            ..QpAttr::default()
        };
        device
            .modify_qp(qp, &init, QpAttrMask::INIT_REQUIRED)
            .unwrap();
        ends.push(End {
            pd,
            cq,
            qp,
            mr,
            info,
        });
    }
    for side in 0..2 {
        let peer = 1 - side;
        let device = &mut net.devices[side];
        let rtr = QpAttr {
            qp_state: QpState::Rtr,
            path_mtu: setup.mtu,
            dest_qp_num: ends[peer].qp.qp_num(),
            rq_psn: setup.sq_psn[peer],
            max_dest_rd_atomic: setup.max_rd_atomic,
            min_rnr_timer: setup.min_rnr_timer,
            ah_attr: AhAttr::global(Gid::from_ipv4(ADDRESSES[peer])),
            ..QpAttr::default()
        };
        device
            .modify_qp(ends[side].qp, &rtr, QpAttrMask::RTR_REQUIRED)
            .unwrap();
        let rts = QpAttr {
            qp_state: QpState::Rts,
            sq_psn: setup.sq_psn[side],
            timeout: setup.timeout,
            retry_cnt: setup.retry_cnt,
            rnr_retry: setup.rnr_retry,
            max_rd_atomic: setup.max_rd_atomic,
            ..QpAttr::default()
        };
        device
            .modify_qp(ends[side].qp, &rts, QpAttrMask::RTS_REQUIRED)
            .unwrap();
    }
    (net, [ends[0], ends[1]])
}

/// Every completion waiting on `cq`.
pub fn poll_all(device: &mut Device, cq: CqHandle) -> Vec<WorkCompletion> {
    let mut all = Vec::new();
    let mut batch = [WorkCompletion::default(); 32];
    loop {
        let count = device.poll_cq(cq, &mut batch).unwrap();
        all.extend_from_slice(&batch[..count]);
        if count < batch.len() {
            return all;
        }
    }
}

/// A byte pattern that depends on `tag` and the position.
pub fn pattern(tag: u64, length: usize) -> Vec<u8> {
    let mut state = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
