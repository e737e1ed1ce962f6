//! RDMA applications: perftest-like tests and `rc_pingpong`, over the verbs engine of `roce`.
//!
//! The engine ([`roce::verbs::Device`]) turns verbs into whole RoCEv2 IPv4 packets; this module
//! carries them through OS B ([`NetClient::roce_send`], and [`Event::RoceRx`] back), drives the
//! engine's timers, and sets connections up the way `ibv_rc_pingpong` does: over TCP port 18515,
//! each side sends `LID:QPN:PSN:GID` (52 bytes), the server answers with its own, the client
//! says `done`. For the tests that target the server's memory (WRITE, READ, atomics), the
//! server appends its region's `RKEY:VADDR` (`%08x:%016x` and a NUL, 26 bytes) to its message:
//! duovm's extension, not sent to `rc_pingpong` peers.
//!
//! Every test checks what it moved: WRITE slots hold the pattern of the last message written
//! to them, SENDs arrive in order with their pattern, READs return the server's pattern, every
//! FETCH_ADD returns the count before it, and every work request completes exactly once with
//! success.

use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};

use netsvc::netmsg::Event;
use roce::oob::{self, Destination};
use roce::transport::MAX_UNACKED_PSNS;
use roce::verbs::{
    AccessFlags, CqHandle, Device, DeviceConfig, Gid, MrHandle, Mtu, QpCap, QpHandle, QpInitAttr,
    RecvWr, SendWr, Sge, WcFlags, WcStatus, WorkCompletion, WrOperation,
};

use crate::{NetClient, Os, log, percentile};

mod perftest;

/// The tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Test {
    /// RDMA WRITE bandwidth.
    WriteBw = 1,
    /// RDMA WRITE ping-pong latency, as `ib_write_lat` measures it.
    WriteLat = 2,
    /// RDMA READ latency.
    ReadLat = 3,
    /// SEND bandwidth.
    SendBw = 4,
    /// FETCH_AND_ADD latency.
    AtomicLat = 5,
    /// `ibv_rc_pingpong`'s SEND ping-pong.
    Pingpong = 6,
}

impl Test {
    /// The test for a raw value.
    pub const fn from_u32(value: u32) -> Option<Test> {
        Some(match value {
            1 => Test::WriteBw,
            2 => Test::WriteLat,
            3 => Test::ReadLat,
            4 => Test::SendBw,
            5 => Test::AtomicLat,
            6 => Test::Pingpong,
            _ => return None,
        })
    }

    /// Its name, as `host-agent rdma-bench --test` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Test::WriteBw => "write_bw",
            Test::WriteLat => "write_lat",
            Test::ReadLat => "read_lat",
            Test::SendBw => "send_bw",
            Test::AtomicLat => "atomic_lat",
            Test::Pingpong => "rc_pingpong",
        }
    }

    fn targets_server_memory(self) -> bool {
        matches!(
            self,
            Test::WriteBw | Test::WriteLat | Test::ReadLat | Test::AtomicLat
        )
    }
}

/// How the two sides exchange their connection details before the test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u32)]
pub enum Handshake {
    /// `ibv_rc_pingpong`'s exchange ([`roce::oob`]); for the tests that target the server's
    /// memory the server appends its region's key and address (duovm's extension), so both
    /// sides must be duovm except for `rc_pingpong`.
    #[default]
    RcPingpong = 0,
    /// perftest's exchange ([`roce::perftest`]): duovm is the client of `ib_write_bw`
    /// (`write_bw`), `ib_send_bw` (`send_bw`), `ib_read_lat` (`read_lat`), `ib_write_lat`
    /// (`write_lat`) or `ib_atomic_lat` (`atomic_lat`) started with `-x` (a GID index).
    Perftest = 1,
}

impl Handshake {
    /// The handshake for a raw value.
    pub const fn from_u32(value: u32) -> Option<Handshake> {
        match value {
            0 => Some(Handshake::RcPingpong),
            1 => Some(Handshake::Perftest),
            _ => None,
        }
    }

    /// Its name, as `host-agent` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Handshake::RcPingpong => "rc_pingpong",
            Handshake::Perftest => "perftest",
        }
    }
}

/// The QP's local ACK timeout unless told otherwise, as `ibv_rc_pingpong` and perftest set it:
/// `4.096 µs << 14`, about 67 ms.
pub const DEFAULT_QP_TIMEOUT: u8 = 14;

/// The largest local ACK timeout (the attribute has 5 bits): `4.096 µs << 31`, about 2.4 hours.
pub const MAX_QP_TIMEOUT: u8 = 31;

/// Transport retries unless told otherwise: 7, as `ibv_rc_pingpong` and perftest set it,
/// which never runs out ([`roce::transport::UNLIMITED_RETRIES`]); it is also the largest.
pub const DEFAULT_RETRY_CNT: u8 = roce::transport::UNLIMITED_RETRIES;

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestParams {
    /// The test.
    pub test: Test,
    /// Message size in bytes (8 for atomics).
    pub size: u32,
    /// Messages.
    pub iters: u32,
    /// The server to connect to; `None` makes this side the server.
    pub server: Option<Ipv4Addr>,
    /// This side's IPv4 address (the RoCE device's).
    pub local: Ipv4Addr,
    /// TCP port of the connection exchange.
    pub port: u16,
    /// Path MTU.
    pub mtu: Mtu,
    /// The connection exchange.
    pub handshake: Handshake,
    /// The QP's local ACK timeout: the requester resends what is not acknowledged after
    /// `4.096 µs << qp_timeout` (0 waits forever; at most 31). A peer that takes long per
    /// packet (an emulated guest) wants more than [`DEFAULT_QP_TIMEOUT`], or the requester
    /// resends what is only queued.
    pub qp_timeout: u8,
    /// The QP's transport retries before a request fails with `RETRY_EXC_ERR` (0 to 7; 7, as
    /// `ibv_rc_pingpong` and perftest set it, never runs out, as in rdma_rxe).
    pub retry_cnt: u8,
    /// Seconds any step of the test may go without headway (no PSN acknowledged or taken,
    /// no step done) before the test fails; 0 means [`DEFAULT_STALL_TIMEOUT`]. A slow step
    /// on a lossy path goes on as long as PSNs move.
    pub stall_timeout: u16,
}

/// Seconds a step may go without headway unless told otherwise.
pub const DEFAULT_STALL_TIMEOUT: u16 = 60;

impl TestParams {
    /// The parameters as the arguments and flags of an `RdmaTest` workload (see
    /// `shm_ring::bootinfo`); `local` is not among them: the guest has it from its network
    /// configuration.
    pub fn to_args(&self) -> ([u64; 6], u32) {
        let server = self.server.map_or(0, |ip| u64::from(u32::from(ip)));
        let args = [
            self.test as u64,
            u64::from(self.size),
            u64::from(self.iters),
            server,
            u64::from(self.port),
            u64::from(self.mtu.bytes())
                | u64::from(self.qp_timeout) << 32
                | u64::from(self.retry_cnt) << 40
                | u64::from(self.stall_timeout) << 48,
        ];
        (args, self.handshake as u32)
    }

    /// The parameters in a workload's arguments and flags, for the side at `local`; `None` if
    /// the test is unknown. What is out of range takes its default: port
    /// [`oob::DEFAULT_PORT`], MTU 1024, the `ibv_rc_pingpong` exchange, [`DEFAULT_QP_TIMEOUT`],
    /// [`DEFAULT_RETRY_CNT`].
    pub fn from_args(args: [u64; 6], flags: u32, local: Ipv4Addr) -> Option<TestParams> {
        let port = u16::try_from(args[4]).unwrap_or(0);
        Some(TestParams {
            test: Test::from_u32(u32::try_from(args[0]).ok()?)?,
            size: args[1] as u32,
            iters: args[2] as u32,
            server: (args[3] != 0).then(|| Ipv4Addr::from(args[3] as u32)),
            local,
            port: if port == 0 { oob::DEFAULT_PORT } else { port },
            mtu: Mtu::from_bytes(args[5] as u32).unwrap_or(Mtu::Mtu1024),
            handshake: Handshake::from_u32(flags).unwrap_or_default(),
            qp_timeout: Some((args[5] >> 32) as u8)
                .filter(|timeout| *timeout <= MAX_QP_TIMEOUT)
                .unwrap_or(DEFAULT_QP_TIMEOUT),
            retry_cnt: Some((args[5] >> 40) as u8)
                .filter(|retries| *retries <= DEFAULT_RETRY_CNT)
                .unwrap_or(DEFAULT_RETRY_CNT),
            stall_timeout: (args[5] >> 48) as u16,
        })
    }
}

/// What a side measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TestReport {
    /// Messages completed.
    pub messages: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Nanoseconds from the first post to the last completion.
    pub elapsed_ns: u64,
    /// Median latency per message, nanoseconds (latency tests).
    pub p50_ns: u64,
    /// 99th percentile latency, nanoseconds (latency tests).
    pub p99_ns: u64,
    /// Packets the engine sent again.
    pub retransmissions: u64,
    /// Everything checked out.
    pub verified: bool,
}

/// Why a test stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestError {
    /// A verb failed.
    Verbs(roce::verbs::VerbsError),
    /// The network service refused.
    Net(netsvc::ClientError),
    /// The connection exchange failed or sent something unreadable.
    Exchange(&'static str),
    /// A work request completed with an error.
    Completion(WcStatus),
    /// No PSN moved for `seconds` ([`TestParams::stall_timeout`]) while the test was at
    /// step `what`.
    Timeout {
        /// The step.
        what: &'static str,
        /// How long nothing moved.
        seconds: u16,
    },
    /// The platform asked the application to end ([`Os::should_stop`]) while it waited.
    Stopped(&'static str),
    /// The peer ended the test before it finished: it closed the exchange connection, which a
    /// duovm peer keeps open until the end of the test, while this side was at step `what`.
    PeerEnded(&'static str),
    /// The test's path MTU is larger than the port's active MTU, the largest the link carries.
    Mtu {
        /// The test's path MTU, in bytes.
        path: u32,
        /// The port's active MTU, in bytes.
        active: u32,
    },
}

/// How a [`TestError::Timeout`] reads, up to its duration: `nothing moved for 60 s ...`.
pub const STALLED: &str = "nothing moved";
/// How a [`TestError::PeerEnded`] reads, up to the step.
pub const PEER_ENDED: &str = "the peer ended the test (it closed the connection)";
/// How a [`TestError::Exchange`] reads when the peer closed the connection during the exchange.
const PEER_CLOSED_EARLY: &str = "the peer closed the connection early";

/// Whether a failure, as [`TestError`] displays it, is what the peer's failure (or silence)
/// left this side with, rather than a cause of its own: a stall, or the peer ending.
pub fn is_consequence(why: &str) -> bool {
    why.starts_with(STALLED) || why.starts_with(PEER_ENDED) || why.ends_with(PEER_CLOSED_EARLY)
}

impl core::fmt::Display for TestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TestError::Verbs(error) => write!(f, "a verb failed: {error:?}"),
            TestError::Net(error) => write!(f, "the network service refused: {error:?}"),
            TestError::Exchange(what) => write!(f, "connection exchange: {what}"),
            TestError::Completion(status) => {
                write!(f, "a work request completed with {status:?}")
            }
            TestError::Timeout { what, seconds } => {
                write!(f, "{STALLED} for {seconds} s {what}")
            }
            TestError::Stopped(what) => write!(f, "stopped {what}"),
            TestError::PeerEnded(what) => write!(f, "{PEER_ENDED} {what}"),
            TestError::Mtu { path, active } => write!(
                f,
                "path MTU {path} is larger than the link carries (the port's active MTU is {active})"
            ),
        }
    }
}

/// A test that ended early: why, and what this side had done by then.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TestFailure {
    /// Why.
    pub error: TestError,
    /// Messages this side completed or carried out, their bytes, the time since the link
    /// came up and the packets resent, all until the failure; never `verified`.
    pub so_far: TestReport,
}

impl core::fmt::Display for TestFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.error.fmt(f)
    }
}

impl From<TestError> for TestFailure {
    fn from(error: TestError) -> Self {
        TestFailure {
            error,
            so_far: TestReport::default(),
        }
    }
}

impl From<roce::verbs::VerbsError> for TestFailure {
    fn from(error: roce::verbs::VerbsError) -> Self {
        TestError::Verbs(error).into()
    }
}

impl From<roce::verbs::VerbsError> for TestError {
    fn from(error: roce::verbs::VerbsError) -> Self {
        TestError::Verbs(error)
    }
}

impl From<netsvc::ClientError> for TestError {
    fn from(error: netsvc::ClientError) -> Self {
        TestError::Net(error)
    }
}

/// Immediate data of the client's final "done" SEND.
const DONE_IMM: u32 = u32::from_be_bytes(*b"DONE");
/// What each side sends on the exchange connection when its part of a test is complete
/// ([`Link::end_barrier`]).
const END_MESSAGE: &[u8] = b"end\0";
/// Work requests in flight in bandwidth tests (at most).
const TX_DEPTH: usize = 64;
/// Bytes of the `write_bw` server's slots, about.
///
/// A bandwidth test's buffers are kept few, so that they stay in the CPU's caches: the sender
/// has as many as its window needs ([`send_window`]), the `write_bw` server this much.
/// perftest's `ib_write_bw` sends every message from one buffer into one remote buffer; duovm
/// gives each message its own pattern, so that the server can check what landed, and cycles
/// through a few. With 64 buffers of 64 KiB (4 MiB) and 16 slots (1 MiB), `write_bw` measured
/// cache misses more than the path: on a host with 512 KiB of L2 per core, 4 buffers and 4
/// slots ran 1.19 times as fast (median ratio of 20 alternating pairs, docs/PERFORMANCE.md).
const WORKING_SET: u64 = 256 << 10;
/// Receives kept posted (at most).
const RX_DEPTH: usize = 256;
/// Bytes of buffers each side registers, at most (fewer, deeper queues for small messages).
const BUFFER_BUDGET: usize = 4 << 20;

/// Buffers of `size` bytes each side keeps: receives posted, writes in flight.
fn depth(size: u32) -> usize {
    (BUFFER_BUDGET / size.max(1) as usize).clamp(16, RX_DEPTH)
}

/// Messages of `size` bytes a bandwidth test keeps posted at path MTU `mtu`, each from its own
/// buffer: the fewest that cover twice the packets a QP may have unacknowledged (so that the
/// engine always has the next message while the application handles completions), at least
/// 4, at most [`TX_DEPTH`] and the buffers the region holds. At MTU 1024 that is 256 KiB
/// and one message at most, or 4 messages when they are larger.
fn send_window(size: u32, mtu: Mtu) -> u64 {
    let packets = size.div_ceil(mtu.bytes()).max(1);
    let window = (2 * MAX_UNACKED_PSNS).div_ceil(packets) as usize;
    window.clamp(4, TX_DEPTH).min(depth(size)) as u64
}

/// Bytes a side of `test` registers under the `ibv_rc_pingpong` exchange: what its buffers
/// need, at least a page. SENDs need their posted receives ([`depth`] of them); `write_bw` its
/// window's buffers on the client and the slots on the server; the latency tests one message
/// each way. (Registering more costs its zeroing, which is slow where guest instructions are
/// emulated: 4 MiB took a guest about 0.4 s.)
fn region_len(test: Test, size: u32, mtu: Mtu) -> u64 {
    let bytes = u64::from(size);
    let len = match test {
        Test::Pingpong | Test::SendBw => bytes * depth(size) as u64,
        Test::WriteBw => bytes * send_window(size, mtu).max(write_slots(size)),
        Test::WriteLat => write_lat_outgoing(size) as u64 + bytes,
        Test::ReadLat | Test::AtomicLat => bytes,
    };
    len.max(4096)
}

/// Slots of `size` bytes the `write_bw` client WRITEs into, round robin, in the server's
/// region: as many as fit in [`WORKING_SET`], 2 to 16. The server checks that each holds the
/// last message written to it.
fn write_slots(size: u32) -> u64 {
    (WORKING_SET / u64::from(size.max(1))).clamp(2, 16)
}

/// How often a test that runs long says how far it got.
const PROGRESS_INTERVAL_NS: u64 = 10_000_000_000;
/// Events [`Link::pump`] takes before it lets the engine transmit.
const PUMP_BATCH: usize = 32;
/// How long a side whose peer did not say it finished goes on answering after its test: a
/// peer whose last request's ACK was lost resends it after its QP's timeout, 67 ms for
/// `ibv_rc_pingpong` and perftest (timeout 14), and this covers three such resends.
const LINGER_NS: u64 = 250_000_000;
/// The server region's base address.
const REMOTE_BASE: u64 = 0x1_0000_0000;

/// The byte at `offset` of message `index`.
#[cfg(test)]
fn pattern(index: u64, offset: usize) -> u8 {
    (index as usize).wrapping_mul(31).wrapping_add(offset) as u8 ^ 0x5a
}

/// Two periods of the pattern: byte `i` is `i as u8 ^ 0x5a`. Message `index` is the run of
/// it from `(31 * index) mod 256`, repeated every 256 bytes.
const PATTERN_TABLE: [u8; 512] = {
    let mut table = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        table[i] = i as u8 ^ 0x5a;
        i += 1;
    }
    table
};

/// The pattern of message `index`, 256 bytes at a time, each paired with `len` of them.
fn pattern_runs(index: u64, len: usize) -> impl Iterator<Item = &'static [u8]> {
    let start = (index as usize).wrapping_mul(31) & 0xff;
    (0..len)
        .step_by(256)
        .map(move |at| &PATTERN_TABLE[start..start + (len - at).min(256)])
}

/// Writes message `index`'s pattern over `bytes`.
fn fill_pattern(bytes: &mut [u8], index: u64) {
    let runs = pattern_runs(index, bytes.len());
    for (chunk, run) in bytes.chunks_mut(256).zip(runs) {
        chunk.copy_from_slice(run);
    }
}

/// Whether `bytes` hold message `index`'s pattern.
fn has_pattern(bytes: &[u8], index: u64) -> bool {
    bytes
        .chunks(256)
        .zip(pattern_runs(index, bytes.len()))
        .all(|(chunk, run)| chunk == run)
}

/// The connection over TCP used for the exchange.
#[derive(Debug, Default)]
struct Exchange {
    listener: Option<u32>,
    handle: Option<u32>,
    connected: bool,
    closed: bool,
    inbox: Vec<u8>,
}

/// Everything a test uses.
struct Link<'a, O: Os> {
    os: &'a mut O,
    client: &'a mut NetClient,
    device: Device,
    transmit: Vec<u8>,
    exchange: Exchange,
    send_drops: u64,
    /// [`TestParams::stall_timeout`].
    stall_timeout: u16,
    /// When the link was made, and when the next progress line is due.
    started_ns: u64,
    next_progress_ns: u64,
    /// Messages the test counted done so far (see [`Link::messages`]).
    messages_done: u64,
    /// The peer said it finished ([`Link::end_barrier`]): it needs nothing more of this side.
    peer_finished: bool,
    /// The peer is a duovm that keeps the exchange connection open until the end of the test:
    /// its closing it means it ended ([`TestError::PeerEnded`]).
    watch_peer: bool,
}

impl<O: Os> Link<'_, O> {
    /// Moves packets and events: received RoCE packets into the engine, the engine's packets
    /// out, its timers; TCP events of the exchange into `exchange`.
    ///
    /// At most [`PUMP_BATCH`] events are taken per call, so that a flood of packets (a peer
    /// resending a long message again and again) never keeps this side from answering:
    /// acknowledgements go out between batches. Returns whether events may be left.
    fn pump(&mut self) -> bool {
        let now = self.os.now_ns();
        let mut taken = 0;
        while taken < PUMP_BATCH {
            let Some(event) = self.client.poll() else {
                break;
            };
            taken += 1;
            let exchange = &mut self.exchange;
            match event {
                Event::RoceRx { packet } => self.device.receive(packet, now),
                Event::TcpAccepted {
                    listener, handle, ..
                } if Some(listener) == exchange.listener && exchange.handle.is_none() => {
                    exchange.handle = Some(handle);
                    exchange.connected = true;
                }
                Event::TcpConnected { handle, .. } if Some(handle) == exchange.handle => {
                    exchange.connected = true;
                }
                Event::TcpData { handle, data } if Some(handle) == exchange.handle => {
                    exchange.inbox.extend_from_slice(data);
                }
                Event::TcpEof { handle } | Event::Closed { handle, .. }
                    if Some(handle) == exchange.handle =>
                {
                    exchange.closed = true;
                }
                _ => {}
            }
        }
        self.device.handle_timeouts(now);
        while let Some(len) = self.device.poll_transmit(now, &mut self.transmit) {
            if self.client.roce_send(&self.transmit[..len]).is_err() {
                // The engine retransmits what the network lost; count it and go on.
                self.send_drops += 1;
            }
        }
        // Wake OS B, once for the whole burst, if it sleeps.
        self.os.wait(self.client, 0);
        taken == PUMP_BATCH
    }

    /// Sleeps until OS B signals, the engine's next timer, or 10 ms.
    fn idle(&mut self) {
        let now = self.os.now_ns();
        let deadline = self
            .device
            .next_deadline()
            .unwrap_or(u64::MAX)
            .min(now + 10_000_000);
        self.os.wait(self.client, deadline.max(now + 1_000));
    }

    /// PSNs the engine moved forward, as requester and as responder: it grows while the
    /// transport makes headway, however slowly (resent packets and duplicates do not count).
    fn headway(&self) -> u64 {
        let counters = self.device.counters();
        counters.accepted_psns + counters.acknowledged_psns
    }

    /// Messages done so far: those the test counted, or (a server's, whose responder does the
    /// work) those its responder carried out, whichever is more.
    fn messages(&self) -> u64 {
        let executed = self.device.counters().executed;
        // Counts a peer drives: added without overflow, however many it sent.
        let carried_out = [executed.writes, executed.reads, executed.atomics]
            .into_iter()
            .fold(executed.sends, u64::saturating_add);
        self.messages_done.max(carried_out)
    }

    /// Logs how far the test got: a long run (a lossy path, an emulated guest) is seen to move.
    fn progress(&mut self, what: &str, now: u64) {
        let counters = *self.device.counters();
        log!(
            self.os,
            "rdma: {} s, {what}: {} messages; PSNs {} acknowledged, {} taken; {} packets resent",
            now.saturating_sub(self.started_ns) / 1_000_000_000,
            self.messages(),
            counters.acknowledged_psns,
            counters.accepted_psns,
            counters.retransmitted_packets
        );
    }

    /// Seconds a step may go without headway.
    fn stall_seconds(&self) -> u16 {
        match self.stall_timeout {
            0 => DEFAULT_STALL_TIMEOUT,
            seconds => seconds,
        }
    }

    /// Nanoseconds a step may go without headway.
    fn stall_ns(&self) -> u64 {
        u64::from(self.stall_seconds()) * 1_000_000_000
    }

    /// Pumps until `done` holds, or fails once [`TestParams::stall_timeout`] passes with no
    /// headway: a long run on a lossy path is slow, not stuck, as long as PSNs move.
    fn until(
        &mut self,
        what: &'static str,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> Result<(), TestError> {
        let mut deadline = self.os.now_ns() + self.stall_ns();
        let mut headway = self.headway();
        loop {
            let more = self.pump();
            if done(self) {
                return Ok(());
            }
            let now = self.os.now_ns();
            if now >= self.next_progress_ns {
                self.next_progress_ns = now + PROGRESS_INTERVAL_NS;
                self.progress(what, now);
            }
            if self.headway() != headway {
                headway = self.headway();
                deadline = now + self.stall_ns();
            } else if now > deadline {
                return Err(TestError::Timeout {
                    what,
                    seconds: self.stall_seconds(),
                });
            }
            if self.os.should_stop() {
                return Err(TestError::Stopped(what));
            }
            if self.watch_peer && self.exchange.closed {
                return Err(TestError::PeerEnded(what));
            }
            if !more {
                self.idle();
            }
        }
    }

    /// Connects the exchange connection to `server`. The server may not listen yet: a refused
    /// connection is tried again, as `rxe-retry` does for rc_pingpong, for up to the stall
    /// timeout.
    fn connect_exchange(&mut self, server: SocketAddrV4) -> Result<(), TestError> {
        let give_up = self.os.now_ns() + self.stall_ns();
        loop {
            let handle = self.client.tcp_connect(server, 0, 0)?;
            self.exchange = Exchange {
                handle: Some(handle),
                ..Exchange::default()
            };
            self.until("connecting to the server", |link| {
                link.exchange.connected || link.exchange.closed
            })?;
            if self.exchange.connected {
                return Ok(());
            }
            if self.os.now_ns() > give_up {
                return Err(TestError::Exchange("the server refused the connection"));
            }
            let pause = self.os.now_ns() + 200_000_000;
            self.until("waiting to connect again", |link| link.os.now_ns() >= pause)?;
        }
    }

    /// Sends `data` on the exchange connection.
    fn tcp_send_all(&mut self, data: &[u8]) -> Result<(), TestError> {
        let handle = self
            .exchange
            .handle
            .ok_or(TestError::Exchange("no connection"))?;
        let mut sent = 0;
        self.until("sending the connection message", |link| {
            if let Ok(count) = link.client.tcp_send(handle, &data[sent..]) {
                sent += count;
            }
            sent == data.len() || link.exchange.closed
        })?;
        if sent < data.len() {
            return Err(TestError::Exchange(PEER_CLOSED_EARLY));
        }
        Ok(())
    }

    /// The end of a test, as perftest ends its tests: each side says on the exchange
    /// connection that it is done ([`END_MESSAGE`]) once its own work has completed, and waits
    /// for the peer to say so, answering the peer's resent requests meanwhile. Without it, a
    /// side that left at once could leave its peer without the acknowledgement of its last
    /// request (lost on the way), resending it to nobody until it failed. A peer that closes
    /// the connection instead (`ibv_rc_pingpong` closes it after the exchange) ends the wait.
    fn end_barrier(&mut self) -> Result<(), TestError> {
        self.watch_peer = false;
        let Some(handle) = self.exchange.handle else {
            return Ok(());
        };
        if !self.exchange.closed {
            self.tcp_send_all(END_MESSAGE)?;
        }
        self.until("waiting for the peer to finish", |link| {
            link.exchange.inbox.len() >= END_MESSAGE.len() || link.exchange.closed
        })?;
        self.peer_finished = self.exchange.inbox.starts_with(END_MESSAGE);
        let _ = self.client.tcp_close(handle);
        self.exchange.handle = None;
        Ok(())
    }

    /// Takes `len` bytes from the exchange connection.
    fn tcp_take(&mut self, len: usize) -> Result<Vec<u8>, TestError> {
        self.until("waiting for the peer's connection message", |link| {
            link.exchange.inbox.len() >= len || link.exchange.closed
        })?;
        if self.exchange.inbox.len() < len {
            return Err(TestError::Exchange(PEER_CLOSED_EARLY));
        }
        Ok(self.exchange.inbox.drain(..len).collect())
    }

    /// Takes the peer's connection message ([`Destination::to_message`]) from the exchange
    /// connection.
    fn take_destination(&mut self) -> Result<Destination, TestError> {
        let message = self.tcp_take(oob::MESSAGE_LEN)?;
        Destination::from_message(&message)
            .map_err(|_| TestError::Exchange("bad connection message"))
    }

    /// Takes the peer's `RKEY:VADDR` ([`memory_message`]) from the exchange connection.
    fn take_memory_message(&mut self) -> Result<(u32, u64), TestError> {
        let message = self.tcp_take(MEMORY_MESSAGE_LEN)?;
        parse_memory_message(&message).ok_or(TestError::Exchange("bad memory message"))
    }

    /// Polls `cq` until `count` completions arrived; each must be a success. Completions the
    /// CQ holds already are taken before the engine runs again, as an application polls a
    /// NIC's CQ: otherwise each completion taken would let the engine take another batch of
    /// packets first, consuming posted receives faster than the application posts them back.
    fn completions(
        &mut self,
        cq: CqHandle,
        count: usize,
        what: &'static str,
    ) -> Result<Vec<WorkCompletion>, TestError> {
        let mut out = Vec::with_capacity(count);
        let mut batch = [WorkCompletion::default(); 16];
        let mut failure = None;
        let done = |link: &mut Self,
                    out: &mut Vec<WorkCompletion>,
                    batch: &mut [WorkCompletion; 16],
                    failure: &mut Option<_>| {
            while out.len() < count {
                // Never take more than asked for: the rest stay queued for the next call.
                let room = (count - out.len()).min(batch.len());
                let Ok(got) = link.device.poll_cq(cq, &mut batch[..room]) else {
                    break;
                };
                if got == 0 {
                    break;
                }
                for completion in &batch[..got] {
                    if completion.status != WcStatus::Success && failure.is_none() {
                        *failure = Some(completion.status);
                    }
                    out.push(*completion);
                }
            }
            out.len() >= count || failure.is_some()
        };
        if !done(self, &mut out, &mut batch, &mut failure) {
            self.until(what, |link| done(link, &mut out, &mut batch, &mut failure))?;
        }
        match failure {
            Some(status) => Err(TestError::Completion(status)),
            None => Ok(out),
        }
    }
}

/// The queue pair and memory of one side.
struct Resources {
    cq: CqHandle,
    qp: QpHandle,
    mr: MrHandle,
    base: u64,
    lkey: u32,
    rkey: u32,
    psn: u32,
}

fn set_up(device: &mut Device, region: u64, seed: u64) -> Result<Resources, TestError> {
    let pd = device.alloc_pd()?;
    let mr = device.reg_mr_at(pd, REMOTE_BASE, region, AccessFlags::ALL)?;
    let info = device.mr(mr)?.info();
    let cq = device.create_cq(1024)?;
    let cap = QpCap {
        max_send_wr: 256,
        max_recv_wr: RX_DEPTH as u32 + 16,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    let qp = device.create_qp(pd, &QpInitAttr::new(cq, cq, cap))?;
    let (init, mask) = oob::init_attr(AccessFlags::ALL);
    device.modify_qp(qp, &init, mask)?;
    Ok(Resources {
        cq,
        qp,
        mr,
        base: info.addr,
        lkey: info.lkey,
        rkey: info.rkey,
        psn: (seed ^ (seed >> 24)) as u32 & 0xff_ffff,
    })
}

/// Takes the QP to RTR with the peer's `remote` and `mtu`, then to RTS with
/// `ibv_rc_pingpong`'s attributes and the local ACK timeout `qp_timeout`.
fn connect(
    device: &mut Device,
    resources: &Resources,
    remote: &Destination,
    (mtu, params): (Mtu, &TestParams),
) -> Result<(), TestError> {
    let active = device.query_port(1)?.active_mtu;
    if mtu > active {
        return Err(TestError::Mtu {
            path: mtu.bytes(),
            active: active.bytes(),
        });
    }
    let (rtr, mask) = remote.rtr_attr(mtu);
    device.modify_qp(resources.qp, &rtr, mask)?;
    let (mut rts, mask) = oob::rts_attr(resources.psn);
    rts.timeout = params.qp_timeout;
    rts.retry_cnt = params.retry_cnt;
    device.modify_qp(resources.qp, &rts, mask)?;
    Ok(())
}

fn post_recv(
    device: &mut Device,
    resources: &Resources,
    wr_id: u64,
    offset: u64,
    len: u32,
) -> Result<(), TestError> {
    let sge = [Sge {
        addr: resources.base + offset,
        length: len,
        lkey: resources.lkey,
    }];
    device.post_recv(
        resources.qp,
        &RecvWr {
            wr_id,
            sg_list: &sge,
        },
    )?;
    Ok(())
}

fn post_send(
    device: &mut Device,
    resources: &Resources,
    wr_id: u64,
    operation: WrOperation,
    offset: u64,
    len: u32,
) -> Result<(), TestError> {
    let sge = [Sge {
        addr: resources.base + offset,
        length: len,
        lkey: resources.lkey,
    }];
    device.post_send(
        resources.qp,
        &SendWr::new(wr_id, operation, &sge).signaled(),
    )?;
    Ok(())
}

/// The report of a latency test: `iters` messages of `size` bytes, the latency percentiles
/// of `samples`.
fn latency_report(
    iters: u64,
    size: u32,
    elapsed_ns: u64,
    mut samples: Vec<u64>,
    verified: bool,
) -> TestReport {
    samples.sort_unstable();
    TestReport {
        messages: iters,
        bytes: iters * u64::from(size),
        elapsed_ns,
        p50_ns: percentile(&samples, 0.5),
        p99_ns: percentile(&samples, 0.99),
        verified,
        ..TestReport::default()
    }
}

/// Length of [`memory_message`]'s message.
const MEMORY_MESSAGE_LEN: usize = 26;

/// A region's remote key and address, as the server appends them to its connection message
/// (and, for `write_lat`, the client to its own).
fn memory_message(rkey: u32, addr: u64) -> [u8; MEMORY_MESSAGE_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; MEMORY_MESSAGE_LEN];
    for (index, shift) in (0..8).rev().enumerate() {
        out[index] = HEX[((rkey >> (shift * 4)) & 0xf) as usize];
    }
    out[8] = b':';
    for (index, shift) in (0..16).rev().enumerate() {
        out[9 + index] = HEX[((addr >> (shift * 4)) & 0xf) as usize];
    }
    out
}

fn parse_memory_message(message: &[u8]) -> Option<(u32, u64)> {
    let text = core::str::from_utf8(message.get(..25)?).ok()?;
    let (rkey, addr) = text.split_once(':')?;
    Some((
        u32::from_str_radix(rkey, 16).ok()?,
        u64::from_str_radix(addr, 16).ok()?,
    ))
}

/// Runs one side of a test; a failure says why and what was done until then.
pub fn run_test(
    os: &mut impl Os,
    client: &mut NetClient,
    params: &TestParams,
) -> Result<TestReport, TestFailure> {
    let size = if params.test == Test::AtomicLat {
        8
    } else {
        params.size.max(1)
    };
    let region = match params.handshake {
        Handshake::RcPingpong => region_len(params.test, size, params.mtu),
        Handshake::Perftest => perftest::region_len(size),
    };
    let seed = os.now_ns();
    let mut config = DeviceConfig::new(params.local).with_icrc_offload(os.roce_icrc_offload());
    config.seed = seed;
    let mut device = Device::new(config);
    let resources = set_up(&mut device, region, seed)?;
    if params.server.is_none() && params.test == Test::ReadLat {
        // The pattern READs fetch, in place before the client can connect.
        let bytes = device.mr_mut(resources.mr)?.as_mut_slice();
        let len = bytes.len().min(size as usize);
        fill_pattern(&mut bytes[..len], 0);
    }
    if params.test == Test::WriteLat {
        // The slot the peer's messages land in holds no count before the peer can write (its
        // first WRITE may come before this side's exchange is over).
        let len = (size as usize).min(region as usize);
        device.mr_mut(resources.mr)?.as_mut_slice()[..len].fill(0);
    }
    // Receives go up before the connection exchange, as rc_pingpong posts them, so the
    // peer's first SEND never finds an empty receive queue.
    let initial_receives = match (params.server.is_some(), params.test) {
        (_, Test::Pingpong) => (params.iters as usize).min(depth(size)),
        (false, Test::SendBw) => depth(size),
        (false, _) => 1,
        (true, _) => 0,
    };
    for index in 0..initial_receives as u64 {
        let (wr_id, offset) = match params.test {
            Test::Pingpong => (1 << 32 | index, u64::from(size)),
            Test::SendBw => (index, index * u64::from(size)),
            _ => (0, 0),
        };
        let len = if matches!(params.test, Test::Pingpong | Test::SendBw) {
            size
        } else {
            0
        };
        post_recv(&mut device, &resources, wr_id, offset, len)?;
    }
    let transmit = vec![0u8; device.max_packet_len().max(4096 + 128)];
    let now = os.now_ns();
    let mut link = Link {
        os,
        client,
        device,
        transmit,
        exchange: Exchange::default(),
        send_drops: 0,
        stall_timeout: params.stall_timeout,
        started_ns: now,
        next_progress_ns: now + PROGRESS_INTERVAL_NS,
        messages_done: 0,
        peer_finished: false,
        watch_peer: false,
    };
    let outcome = connect_and_run(&mut link, &resources, params, size);
    finish(link, resources.cq, size, outcome)
}

/// Connects to the peer as the test's exchange says (rc_pingpong's or perftest's) and runs the
/// test over the connected QP.
fn connect_and_run<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
) -> Result<TestReport, TestError> {
    let own = Destination {
        lid: 0,
        qpn: resources.qp.qp_num(),
        psn: resources.psn,
        gid: Gid::from_ipv4(params.local),
    };

    if params.handshake == Handshake::Perftest {
        return match params.server {
            Some(server) => perftest::run(link, resources, params, size, server),
            None => Err(TestError::Exchange(
                "with perftest's exchange duovm is the client only",
            )),
        };
    }

    // The connection exchange, as rc_pingpong does it.
    let remote_memory = match params.server {
        None => {
            let listener = link.client.tcp_listen(params.port, 1, 0)?;
            link.exchange.listener = Some(listener);
            log!(
                link.os,
                "rdma: {} server waiting on TCP port {}",
                params.test.name(),
                params.port
            );
            link.until("waiting for the client", |link| link.exchange.connected)?;
            // One client, as rc_pingpong serves: a later one is refused (and retries) rather
            // than accepted by a server that is about to end.
            let _ = link.client.close(listener);
            link.exchange.listener = None;
            let remote = link.take_destination()?;
            connect(&mut link.device, resources, &remote, (params.mtu, params))?;
            link.tcp_send_all(&own.to_message())?;
            if params.test.targets_server_memory() {
                link.tcp_send_all(&memory_message(resources.rkey, resources.base))?;
            }
            // In write_lat the server WRITEs back: the client's memory follows its message.
            let client_memory = if params.test == Test::WriteLat {
                Some(link.take_memory_message()?)
            } else {
                None
            };
            let done = link.tcp_take(oob::DONE.len())?;
            if !oob::is_done(&done) {
                return Err(TestError::Exchange("no done from the client"));
            }
            log!(
                link.os,
                "rdma: connected to QPN {:#08x} at {}",
                remote.qpn,
                remote.gid.to_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED)
            );
            client_memory
        }
        Some(server) => {
            link.connect_exchange(SocketAddrV4::new(server, params.port))?;
            link.tcp_send_all(&own.to_message())?;
            let remote = link.take_destination()?;
            let memory = if params.test.targets_server_memory() {
                Some(link.take_memory_message()?)
            } else {
                None
            };
            connect(&mut link.device, resources, &remote, (params.mtu, params))?;
            if params.test == Test::WriteLat {
                link.tcp_send_all(&memory_message(resources.rkey, resources.base))?;
            }
            link.tcp_send_all(&oob::DONE)?;
            log!(
                link.os,
                "rdma: connected to QPN {:#08x} at {server}",
                remote.qpn
            );
            memory
        }
    };
    // rdma-core's `ibv_rc_pingpong` closes the exchange connection here; duovm keeps it for
    // the end of the test (`Link::end_barrier`), as perftest does. Only duovm runs the tests
    // other than rc_pingpong's, so for them a closed connection means the peer ended.
    link.watch_peer = params.test != Test::Pingpong;
    let report = match (params.server.is_some(), params.test) {
        (is_client, Test::WriteLat) => {
            let memory = remote_memory.ok_or(TestError::Exchange("no peer memory"))?;
            write_lat(link, resources, params, size, memory, is_client)
        }
        (false, test) => serve(link, resources, params, size, test),
        (true, Test::WriteBw) => {
            let memory = remote_memory.ok_or(TestError::Exchange("no server memory"))?;
            write_bw(link, resources, params, size, memory, write_slots(size))
                .and_then(|report| say_done(link, resources, Some(memory)).map(|()| report))
        }
        (true, Test::SendBw) => send_bw(link, resources, params, size)
            .and_then(|report| say_done(link, resources, None).map(|()| report)),
        (true, Test::ReadLat | Test::AtomicLat) => {
            let memory = remote_memory.ok_or(TestError::Exchange("no server memory"))?;
            read_or_atomic_lat(link, resources, params, size, memory, Expect::Pattern)
                .and_then(|report| say_done(link, resources, None).map(|()| report))
        }
        (true, Test::Pingpong) => pingpong(link, resources, params, size, true),
    }?;
    link.end_barrier()?;
    Ok(report)
}

/// Logs the engine's counters if the test failed, lets the last ACKs go out and completes the
/// report.
fn finish<O: Os>(
    mut link: Link<'_, O>,
    cq: CqHandle,
    size: u32,
    outcome: Result<TestReport, TestError>,
) -> Result<TestReport, TestFailure> {
    if let Err(TestError::Completion(status)) = &outcome {
        // A failed request moves the QP to ERR, which completes everything else outstanding
        // with WR_FLUSH_ERR: say what is left.
        let (mut left, mut flushed) = (0u64, 0u64);
        let mut batch = [WorkCompletion::default(); 16];
        while let Ok(got @ 1..) = link.device.poll_cq(cq, &mut batch) {
            left += got as u64;
            flushed += batch[..got]
                .iter()
                .filter(|completion| completion.status == WcStatus::WrFlushErr)
                .count() as u64;
        }
        log!(
            link.os,
            "rdma: a work request completed with {status:?}; {left} more completions, \
             {flushed} of them WrFlushErr"
        );
    }
    if let Err(error) = &outcome {
        let counters = link.device.counters();
        let stats = link.client.stats();
        log!(
            link.os,
            "rdma: {error}: engine sent {} received {} retransmitted {} timeouts {} seq NAKs sent {} received {} out of sequence {} duplicates {} RNR NAKs {}/{}; {} packets OS B could not take; client {} requests {} events {} errors",
            counters.packets_sent,
            counters.packets_received,
            counters.retransmitted_packets,
            counters.timeouts,
            counters.seq_naks_sent,
            counters.seq_naks_received,
            counters.drops.out_of_sequence,
            counters.duplicate_requests,
            counters.rnr_naks_sent,
            counters.rnr_naks_received,
            link.send_drops,
            stats.requests,
            stats.events,
            stats.errors
        );
    }
    let mut report = match outcome {
        Ok(report) => report,
        Err(error) => {
            let messages = link.messages();
            return Err(TestFailure {
                error,
                so_far: TestReport {
                    messages,
                    bytes: messages.saturating_mul(u64::from(size)),
                    elapsed_ns: link.os.now_ns().saturating_sub(link.started_ns),
                    retransmissions: link.device.counters().retransmitted_packets,
                    ..TestReport::default()
                },
            });
        }
    };
    // A peer that did not say it finished may still want an acknowledgement resent: answer it
    // for a while before this side goes away.
    let until = link.os.now_ns() + if link.peer_finished { 0 } else { LINGER_NS };
    while link.os.now_ns() < until {
        if !link.pump() {
            link.idle();
        }
    }
    report.retransmissions = link.device.counters().retransmitted_packets;
    Ok(report)
}

/// The server side: mostly passive; checks its memory and the client's SENDs.
fn serve<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
    test: Test,
) -> Result<TestReport, TestError> {
    let iters = u64::from(params.iters);
    if test == Test::Pingpong {
        return pingpong(link, resources, params, size, false);
    }
    let mut report = TestReport {
        verified: true,
        ..TestReport::default()
    };
    let mut next_message = 0u64;
    let start = link.os.now_ns();
    loop {
        let completion = link.completions(resources.cq, 1, "waiting for the client")?[0];
        if completion.imm_data == DONE_IMM && completion.wc_flags.contains(WcFlags::WITH_IMM) {
            break;
        }
        // A SEND of the bandwidth test: check it and post the buffer again.
        let slot = completion.wr_id;
        let offset = (slot * u64::from(size)) as usize;
        let mr = link.device.mr(resources.mr)?;
        let received = &mr.as_slice()[offset..offset + completion.byte_len as usize];
        let intact = completion.byte_len == size && has_pattern(received, next_message);
        report.verified &= intact;
        next_message += 1;
        report.messages += 1;
        link.messages_done = report.messages;
        report.bytes += u64::from(completion.byte_len);
        post_recv(
            &mut link.device,
            resources,
            slot,
            slot * u64::from(size),
            size,
        )?;
    }
    report.elapsed_ns = link.os.now_ns() - start;
    // What the client asked of this side's responder, each carried out once: its READs and
    // atomics never reach this application otherwise. The client's closing message is a
    // WRITE with immediate after write_bw, a SEND with immediate after the others.
    let executed = link.device.counters().executed;
    let mr = link.device.mr(resources.mr)?;
    let memory = mr.as_slice();
    match test {
        Test::WriteBw => {
            // Each slot holds the last message written to it.
            let slots = write_slots(size);
            for slot in 0..slots.min(iters) {
                let last = (iters - 1 - slot) / slots * slots + slot;
                let last = if last >= iters { continue } else { last };
                let at = (slot * u64::from(size)) as usize;
                let intact = has_pattern(&memory[at..at + size as usize], last);
                report.verified &= intact;
            }
            report.verified &= executed.writes == iters + 1;
            report.messages = executed.writes.saturating_sub(1);
            report.bytes = iters * u64::from(size);
        }
        Test::AtomicLat => {
            let word = u64::from_le_bytes(memory[..8].try_into().unwrap_or([0; 8]));
            // The FETCH_AND_ADDs, then the two CMP_AND_SWPs of `swap_counter`.
            report.verified &= word == swapped_counter(iters) && executed.atomics == iters + 2;
            report.messages = executed.atomics.saturating_sub(2);
        }
        Test::ReadLat => {
            report.verified &= executed.reads == iters;
            report.messages = executed.reads;
            report.bytes = executed.reads * u64::from(size);
        }
        Test::SendBw => report.verified &= next_message == iters,
        Test::WriteLat | Test::Pingpong => {}
    }
    let served = match test {
        Test::WriteBw => " (WRITEs placed by its responder)",
        Test::ReadLat => " (READs answered by its responder)",
        Test::AtomicLat => " (atomics carried out by its responder)",
        Test::SendBw | Test::WriteLat | Test::Pingpong => "",
    };
    log!(
        link.os,
        "rdma: {} server: {} messages{served}, data {}",
        test.name(),
        report.messages,
        if report.verified { "verified" } else { "WRONG" }
    );
    Ok(report)
}

/// Tells the server the test is over with [`DONE_IMM`]: an empty RDMA WRITE with immediate
/// into `memory` (a WRITE test's), or else an empty SEND with immediate. Either consumes the
/// server's receive and completes there with the immediate.
fn say_done<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    memory: Option<(u32, u64)>,
) -> Result<(), TestError> {
    let operation = match memory {
        Some((rkey, remote_addr)) => WrOperation::RdmaWriteWithImm {
            remote_addr,
            rkey,
            imm_data: DONE_IMM,
        },
        None => WrOperation::SendWithImm { imm_data: DONE_IMM },
    };
    post_send(&mut link.device, resources, u64::MAX, operation, 0, 0)?;
    link.completions(resources.cq, 1, "sending done")?;
    Ok(())
}

fn fill(
    link: &mut Link<'_, impl Os>,
    resources: &Resources,
    offset: u64,
    len: u32,
    index: u64,
) -> Result<(), TestError> {
    let mr = link.device.mr_mut(resources.mr)?;
    let bytes = &mut mr.as_mut_slice()[offset as usize..offset as usize + len as usize];
    fill_pattern(bytes, index);
    Ok(())
}

/// Streams `params.iters` messages of `size` bytes, at most a window of them in flight, each
/// posted with the operation `operation(index)` from a local buffer filled with its pattern;
/// then tells the server it is done.
fn stream<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
    what: &'static str,
    operation: impl Fn(u64) -> WrOperation,
) -> Result<TestReport, TestError> {
    let iters = u64::from(params.iters);
    // A local buffer is refilled only once its previous message completed (RC completes in
    // order): the window never exceeds the local buffers.
    let window = send_window(size, params.mtu);
    let start = link.os.now_ns();
    let (mut posted, mut completed) = (0u64, 0u64);
    while completed < iters {
        while posted < iters && posted - completed < window {
            let local = (posted % window) * u64::from(size);
            fill(link, resources, local, size, posted)?;
            post_send(
                &mut link.device,
                resources,
                posted,
                operation(posted),
                local,
                size,
            )?;
            posted += 1;
        }
        completed += link.completions(resources.cq, 1, what)?.len() as u64;
        link.messages_done = completed;
    }
    Ok(TestReport {
        messages: iters,
        bytes: iters * u64::from(size),
        elapsed_ns: link.os.now_ns() - start,
        verified: true,
        ..TestReport::default()
    })
}

/// RDMA WRITEs into `slots` slots of `size` bytes at the server's `memory`, round robin.
fn write_bw<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
    (rkey, remote): (u32, u64),
    slots: u64,
) -> Result<TestReport, TestError> {
    let slot_address = move |index: u64| remote + (index % slots) * u64::from(size);
    stream(
        link,
        resources,
        params,
        size,
        "waiting for WRITE completions",
        |index| WrOperation::RdmaWrite {
            remote_addr: slot_address(index),
            rkey,
        },
    )
}

/// SENDs into the server's posted receives.
fn send_bw<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
) -> Result<TestReport, TestError> {
    stream(
        link,
        resources,
        params,
        size,
        "waiting for SEND completions",
        |_| WrOperation::Send,
    )
}

/// `write_lat` as perftest's `ib_write_lat` runs it: plain RDMA WRITEs both ways, each side
/// polling its own memory for the last byte of the peer's next message (its count, modulo
/// 256) and waiting for its own WRITE's completion (the ACK) before it goes on; the client
/// WRITEs first and times each round trip. Messages land at the start of the peer's region
/// and go out from [`write_lat_outgoing`]; each carries the pattern of its count, checked on
/// arrival (the last byte lands last: a responder places packets in PSN order).
fn write_lat<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
    (rkey, remote): (u32, u64),
    is_client: bool,
) -> Result<TestReport, TestError> {
    let iters = u64::from(params.iters);
    let len = size as usize;
    let outgoing = write_lat_outgoing(size);
    let mut samples = Vec::with_capacity(if is_client { iters as usize } else { 0 });
    let mut verified = true;
    let start = link.os.now_ns();
    for count in 1..=iters {
        if !is_client {
            verified &= wait_for_write(link, resources, len, count)?;
        }
        let sent = link.os.now_ns();
        {
            let mr = link.device.mr_mut(resources.mr)?;
            let message = &mut mr.as_mut_slice()[outgoing..outgoing + len];
            fill_pattern(message, count);
            message[len - 1] = count as u8;
        }
        post_send(
            &mut link.device,
            resources,
            count,
            WrOperation::RdmaWrite {
                remote_addr: remote,
                rkey,
            },
            outgoing as u64,
            size,
        )?;
        link.completions(resources.cq, 1, "waiting for the WRITE to complete")?;
        if is_client {
            verified &= wait_for_write(link, resources, len, count)?;
            samples.push((link.os.now_ns() - sent) / 2);
        }
        link.messages_done = count;
    }
    let elapsed_ns = link.os.now_ns() - start;
    if !verified {
        log!(link.os, "rdma: write_lat: a message arrived damaged");
    }
    Ok(latency_report(iters, size, elapsed_ns, samples, verified))
}

/// Where a `write_lat` side's outgoing message lies in its region: after the incoming one.
fn write_lat_outgoing(size: u32) -> usize {
    (size as usize).next_multiple_of(64)
}

/// Waits until the peer's `write_lat` message `count` has landed; returns whether it carries
/// the pattern of `count`.
fn wait_for_write<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    len: usize,
    count: u64,
) -> Result<bool, TestError> {
    let mr = resources.mr;
    let mark = count as u8;
    link.until("waiting for the peer's WRITE", |link| {
        link.device
            .mr(mr)
            .is_ok_and(|mr| mr.as_slice()[len - 1] == mark)
    })?;
    Ok(has_pattern(
        &link.device.mr(mr)?.as_slice()[..len - 1],
        count,
    ))
}

/// What READs and atomics should find in the server's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A duovm server: READs return [`pattern`] 0, the counter starts at 0.
    Pattern,
    /// A server whose memory holds anything (perftest's is random): every READ returns what
    /// the first did, each FETCH_ADD returns one more than the one before.
    Unchanged,
}

fn read_or_atomic_lat<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
    (rkey, remote): (u32, u64),
    expect: Expect,
) -> Result<TestReport, TestError> {
    let iters = u64::from(params.iters);
    let mut samples = Vec::with_capacity(iters as usize);
    let mut verified = true;
    let mut first: Option<Vec<u8>> = None;
    let start = link.os.now_ns();
    for index in 0..iters {
        let operation = if params.test == Test::AtomicLat {
            WrOperation::AtomicFetchAndAdd {
                remote_addr: remote,
                rkey,
                compare_add: 1,
            }
        } else {
            WrOperation::RdmaRead {
                remote_addr: remote,
                rkey,
            }
        };
        let sent = link.os.now_ns();
        post_send(&mut link.device, resources, index, operation, 0, size)?;
        link.completions(resources.cq, 1, "waiting for the response")?;
        samples.push(link.os.now_ns() - sent);
        link.messages_done = index + 1;
        let mr = link.device.mr(resources.mr)?;
        let got = &mr.as_slice()[..size as usize];
        verified &= match (expect, params.test) {
            (Expect::Pattern, Test::AtomicLat) => {
                u64::from_le_bytes(got.try_into().unwrap_or([0xff; 8])) == index
            }
            (Expect::Pattern, _) => has_pattern(got, 0),
            (Expect::Unchanged, Test::AtomicLat) => {
                let value = u64::from_le_bytes(got.try_into().unwrap_or([0xff; 8]));
                let expected = first.as_ref().map(|first| {
                    u64::from_le_bytes(first[..8].try_into().unwrap_or([0; 8])) + index
                });
                first.get_or_insert_with(|| got.to_vec());
                expected.is_none_or(|expected| value == expected)
            }
            (Expect::Unchanged, _) => first.get_or_insert_with(|| got.to_vec()) == got,
        };
    }
    let elapsed_ns = link.os.now_ns() - start;
    if expect == Expect::Pattern && params.test == Test::AtomicLat {
        verified &= swap_counter(link, resources, (rkey, remote), iters)?;
    }
    if !verified {
        log!(
            link.os,
            "rdma: {}: the data that came back is WRONG",
            params.test.name()
        );
    }
    Ok(latency_report(iters, size, elapsed_ns, samples, verified))
}

/// The counter a duovm `atomic_lat` server holds at the end of `iters` FETCH_AND_ADDs: the
/// client swaps the count for its complement (see [`swap_counter`]).
fn swapped_counter(iters: u64) -> u64 {
    !iters
}

/// Ends a duovm `atomic_lat` with two CMP_AND_SWPs of the counter (`iters` after the
/// FETCH_AND_ADDs): one that compares wrong and leaves it, one that swaps it for
/// [`swapped_counter`]. Both return `iters`; returns whether they did.
fn swap_counter<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    (rkey, remote_addr): (u32, u64),
    iters: u64,
) -> Result<bool, TestError> {
    let mut returned_count = true;
    for compare_add in [iters.wrapping_add(1), iters] {
        let operation = WrOperation::AtomicCmpAndSwp {
            remote_addr,
            rkey,
            compare_add,
            swap: swapped_counter(iters),
        };
        post_send(&mut link.device, resources, u64::MAX, operation, 0, 8)?;
        link.completions(resources.cq, 1, "waiting for the CMP_AND_SWP")?;
        let old = link.device.mr(resources.mr)?.as_slice()[..8]
            .try_into()
            .map_or(u64::MAX, u64::from_le_bytes);
        returned_count &= old == iters;
    }
    Ok(returned_count)
}

/// `ibv_rc_pingpong`'s exchange: SENDs of `size` bytes of 0x7b, the client first; each side
/// sends its next message once its previous one completed and a message arrived.
fn pingpong<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
    client: bool,
) -> Result<TestReport, TestError> {
    let iters = u64::from(params.iters);
    let receive_offset = u64::from(size);
    {
        let mr = link.device.mr_mut(resources.mr)?;
        mr.as_mut_slice()[..size as usize].fill(oob::FILL_BYTE);
    }
    // The first receives were posted before the connection exchange.
    let posted = (iters as usize).min(depth(size));
    let (mut sent, mut received, mut receives_posted) = (0u64, 0u64, posted as u64);
    let mut send_outstanding = false;
    let mut verified = true;
    let start = link.os.now_ns();
    if client {
        post_send(&mut link.device, resources, 0, WrOperation::Send, 0, size)?;
        send_outstanding = true;
    }
    while sent < iters || received < iters {
        let completion = link.completions(resources.cq, 1, "waiting for the ping-pong")?[0];
        if completion.wr_id >> 32 == 1 {
            received += 1;
            verified &= completion.byte_len == size;
            if receives_posted < iters {
                post_recv(
                    &mut link.device,
                    resources,
                    1 << 32 | receives_posted,
                    receive_offset,
                    size,
                )?;
                receives_posted += 1;
            }
        } else {
            sent += 1;
            send_outstanding = false;
        }
        link.messages_done = sent.min(received);
        // Send the next message once the last one completed and the peer's arrived.
        let may_send = if client {
            received >= sent
        } else {
            received > sent
        };
        if !send_outstanding && sent < iters && may_send {
            post_send(
                &mut link.device,
                resources,
                sent,
                WrOperation::Send,
                0,
                size,
            )?;
            send_outstanding = true;
        }
    }
    let elapsed_ns = link.os.now_ns() - start;
    let micros = (elapsed_ns / 1000).max(1);
    let bytes = 2 * iters * u64::from(size);
    log!(
        link.os,
        "{bytes} bytes in {}.{:06} seconds = {:.2} Mbit/sec",
        micros / 1_000_000,
        micros % 1_000_000,
        bytes as f64 * 8.0 / micros as f64
    );
    log!(
        link.os,
        "{iters} iters in {}.{:06} seconds = {:.2} usec/iter",
        micros / 1_000_000,
        micros % 1_000_000,
        micros as f64 / iters.max(1) as f64
    );
    Ok(TestReport {
        messages: iters,
        bytes,
        elapsed_ns,
        verified,
        ..TestReport::default()
    })
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    #[test]
    fn test_params_round_trip_through_workload_arguments() {
        let local = Ipv4Addr::new(10, 77, 9, 1);
        let params = TestParams {
            test: Test::ReadLat,
            size: 2048,
            iters: 300,
            server: Some(Ipv4Addr::new(10, 77, 9, 2)),
            local,
            port: 18600,
            mtu: Mtu::Mtu512,
            handshake: Handshake::Perftest,
            qp_timeout: 18,
            retry_cnt: 3,
            stall_timeout: 5,
        };
        let (args, flags) = params.to_args();
        assert_eq!(TestParams::from_args(args, flags, local), Some(params));
        let server = TestParams {
            server: None,
            qp_timeout: 0,
            retry_cnt: 0,
            stall_timeout: 0,
            ..params
        };
        let (args, flags) = server.to_args();
        assert_eq!(TestParams::from_args(args, flags, local), Some(server));
        // What is out of range takes its default; an unknown test is refused.
        let (mut args, _) = params.to_args();
        args[4] = 1 << 20;
        args[5] = 7 | 32 << 32 | 8 << 40;
        let odd = TestParams::from_args(args, 9, local).unwrap();
        assert_eq!(odd.port, oob::DEFAULT_PORT);
        assert_eq!(odd.mtu, Mtu::Mtu1024);
        assert_eq!(odd.handshake, Handshake::RcPingpong);
        assert_eq!(odd.qp_timeout, DEFAULT_QP_TIMEOUT);
        assert_eq!(odd.retry_cnt, DEFAULT_RETRY_CNT);
        args[0] = 0;
        assert_eq!(TestParams::from_args(args, 0, local), None);
        args[0] = 1 << 33;
        assert_eq!(TestParams::from_args(args, 0, local), None);
    }

    #[test]
    fn bandwidth_buffers_cover_the_window_and_stay_small() {
        // 64 KiB messages at MTU 1024: 64 packets each, so 4 cover twice the 128 packets a QP
        // may have unacknowledged; 4 slots of 64 KiB on the server.
        assert_eq!(send_window(65536, Mtu::Mtu1024), 4);
        assert_eq!(write_slots(65536), 4);
        assert_eq!(send_window(4096, Mtu::Mtu1024), 64);
        assert_eq!(write_slots(1024), 16);
        assert_eq!(write_slots(1 << 20), 2);
        let mtus = [Mtu::Mtu256, Mtu::Mtu1024, Mtu::Mtu4096];
        for size in [1u32, 64, 1000, 1024, 4096, 16384, 65536, 1 << 20, 4 << 20] {
            for mtu in mtus {
                let window = send_window(size, mtu);
                let packets = u64::from(size.div_ceil(mtu.bytes()));
                assert!(
                    window * packets >= 2 * u64::from(MAX_UNACKED_PSNS)
                        || window == TX_DEPTH as u64,
                    "size {size} mtu {mtu:?}: {window} messages do not cover the window"
                );
                assert!(window >= 4 && window as usize <= depth(size));
                // No more buffers than that: one fewer does not cover the window.
                assert!(window == 4 || (window - 1) * packets < 2 * u64::from(MAX_UNACKED_PSNS));
                if mtu == Mtu::Mtu1024 {
                    let size = u64::from(size);
                    assert!(window * size <= (WORKING_SET + size).max(4 * size));
                }
            }
            assert!(write_slots(size) == 2 || write_slots(size) * u64::from(size) <= WORKING_SET);
        }
    }

    #[test]
    fn each_test_registers_what_its_buffers_need_and_no_more() {
        let tests = [
            Test::WriteBw,
            Test::WriteLat,
            Test::ReadLat,
            Test::SendBw,
            Test::AtomicLat,
            Test::Pingpong,
        ];
        for size in [1u32, 8, 64, 1000, 4096, 65536, 1 << 20, 4 << 20] {
            for mtu in [Mtu::Mtu256, Mtu::Mtu1024, Mtu::Mtu4096] {
                let bytes = u64::from(size);
                for test in tests {
                    let region = region_len(test, size, mtu);
                    let needed = match test {
                        // The client's window of buffers, the server's slots.
                        Test::WriteBw => {
                            (send_window(size, mtu) * bytes).max(write_slots(size) * bytes)
                        }
                        // The incoming message at 0, the outgoing one after it.
                        Test::WriteLat => write_lat_outgoing(size) as u64 + bytes,
                        Test::ReadLat | Test::AtomicLat => bytes,
                        // Posted receives (a ping-pong's land at `size`, after the sends).
                        Test::SendBw | Test::Pingpong => depth(size) as u64 * bytes,
                    };
                    assert!(
                        region >= needed,
                        "{test:?} {size} {mtu:?}: {region} < {needed}"
                    );
                }
            }
        }
        // 64 KiB WRITEs register 256 KiB, where every test used to register 4 MiB.
        assert_eq!(region_len(Test::WriteBw, 65536, Mtu::Mtu1024), 256 << 10);
        assert_eq!(region_len(Test::SendBw, 65536, Mtu::Mtu1024), 4 << 20);
    }

    #[test]
    fn pattern_runs_match_the_byte_formula() {
        for len in [0usize, 1, 255, 256, 257, 1000, 4096, 65536] {
            for index in [0u64, 1, 8, 255, 256, 1 << 40] {
                let mut bytes = vec![0u8; len];
                fill_pattern(&mut bytes, index);
                assert!(
                    bytes
                        .iter()
                        .enumerate()
                        .all(|(at, byte)| *byte == pattern(index, at)),
                    "len {len} index {index}"
                );
                assert!(has_pattern(&bytes, index));
                if len > 0 {
                    assert!(!has_pattern(&bytes, index + 1));
                    bytes[len - 1] ^= 1;
                    assert!(!has_pattern(&bytes, index));
                }
            }
        }
    }
}
