//! duovm as the client of perftest's servers: `ib_write_bw`, `ib_send_bw`, `ib_read_lat`,
//! `ib_write_lat` and `ib_atomic_lat`, started with `-x` (a GID index) on a Linux RoCE host.
//! The exchange is [`roce::perftest`]'s.
//!
//! What each test checks, since perftest's servers fill their buffers with random bytes:
//! * `write_bw`, `send_bw`: every work request completes with success and the server, which
//!   counts what arrived (`ib_send_bw`) or takes the client's report (`ib_write_bw`), ends well;
//! * `read_lat`: every READ returns the same bytes (the server's buffer does not change);
//! * `atomic_lat`: each FETCH_AND_ADD of 1 returns one more than the one before;
//! * `write_lat`: the server WRITEs its next message only after it saw this side's last one
//!   land (it polls the last byte of its buffer for the count), and its WRITEs land in this
//!   side's memory as perftest makes them: zeros and the count in the last byte.

use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};

use roce::oob::Destination;
use roce::perftest::{self, BwReport, Keys, Program};
use roce::verbs::{Gid, WrOperation};

use super::{
    Expect, Link, Os, Resources, Test, TestError, TestParams, TestReport, connect, depth,
    latency_report, post_send, read_or_atomic_lat, send_bw, write_bw,
};
use crate::log;

/// perftest's `BUFF_SIZE`: the message, at least the cycle buffer.
fn half(size: u32) -> u64 {
    u64::from(size).max(perftest::CYCLE_BUFFER as u64)
}

/// Where the memory the peer targets starts: after the send buffers.
fn receive_at(size: u32) -> u64 {
    (u64::from(size) * depth(size) as u64).max(half(size))
}

/// Bytes this side registers: its send buffers, then the half the peer targets.
pub(super) fn region_len(size: u32) -> u64 {
    receive_at(size) + half(size)
}

fn program(test: Test) -> Result<Program, TestError> {
    Ok(match test {
        Test::WriteBw => Program::WriteBw,
        Test::SendBw => Program::SendBw,
        Test::ReadLat => Program::ReadLat,
        Test::WriteLat => Program::WriteLat,
        Test::AtomicLat => Program::AtomicLat,
        Test::Pingpong => {
            return Err(TestError::Exchange(
                "rc_pingpong uses ibv_rc_pingpong's exchange, not perftest's",
            ));
        }
    })
}

/// One exchange: writes `ours`, then reads as many bytes from the server.
fn exchange<O: Os>(link: &mut Link<'_, O>, ours: &[u8]) -> Result<Vec<u8>, TestError> {
    link.tcp_send_all(ours)?;
    link.tcp_take(ours.len())
}

/// Connects to the perftest server at `server`, runs the test and closes as perftest does.
pub(super) fn run<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
    server: Ipv4Addr,
) -> Result<TestReport, TestError> {
    let program = program(params.test)?;
    link.connect_exchange(SocketAddrV4::new(server, params.port))?;

    let version = exchange(link, &perftest::VERSION)?;
    let peer_version = perftest::version_hundredths(&version)
        .ok_or(TestError::Exchange("the perftest version is unreadable"))?;
    if peer_version >= 532 {
        exchange(link, &perftest::CYCLE_BUFFER.to_be_bytes())?;
        exchange(link, &perftest::CACHE_LINE.to_be_bytes())?;
    }
    let mut mtu = params.mtu;
    if peer_version >= 510 {
        let mut ours = [0u8; 4];
        ours[..perftest::MTU_LEN].copy_from_slice(&perftest::mtu_message(mtu));
        let len = if peer_version >= 531 { 2 } else { 4 };
        let theirs = exchange(link, &ours[..len])?;
        match perftest::parse_mtu(&theirs[..2]) {
            Some(peer) if peer.bytes() < mtu.bytes() => mtu = peer,
            Some(_) => {}
            None => return Err(TestError::Exchange("the perftest MTU is unreadable")),
        }
    }

    let own = Keys {
        lid: 0,
        out_reads: 1,
        qpn: resources.qp.qp_num(),
        psn: resources.psn,
        rkey: resources.rkey,
        vaddr: resources.base + receive_at(size),
        gid: Gid::from_ipv4(params.local),
        srqn: 0,
    }
    .to_message();
    let keys = Keys::from_message(&exchange(link, &own)?)
        .map_err(|_| TestError::Exchange("the perftest keys are unreadable"))?;
    let remote = Destination {
        lid: keys.lid,
        qpn: keys.qpn,
        psn: keys.psn,
        gid: keys.gid,
    };
    connect(&mut link.device, resources, &remote, (mtu, params))?;
    for _ in 1..perftest::setup_handshakes(program) {
        exchange(link, &own)?;
    }
    log!(
        link.os,
        "rdma: connected to perftest {}.{:02} QPN {:#08x} at {server}, MTU {}",
        peer_version / 100,
        peer_version % 100,
        keys.qpn,
        mtu.bytes()
    );

    let memory = (keys.rkey, keys.vaddr);
    let report = match program {
        // perftest's target is one message long: every WRITE goes to the same place.
        Program::WriteBw => write_bw(link, resources, params, size, memory, 1)?,
        Program::SendBw => send_bw(link, resources, params, size)?,
        Program::ReadLat | Program::AtomicLat => {
            read_or_atomic_lat(link, resources, params, size, memory, Expect::Unchanged)?
        }
        Program::WriteLat => write_lat(link, resources, params, size, memory)?,
    };

    if program == Program::WriteBw {
        // The server waited for the client; it prints the client's figures as its result.
        exchange(link, &own)?;
        let seconds = (report.elapsed_ns as f64 / 1e9).max(1e-9);
        let mib_per_sec = report.bytes as f64 / seconds / f64::from(1 << 20);
        let figures = BwReport {
            size: u64::from(size),
            iters: report.messages,
            bw_peak: mib_per_sec,
            bw_avg: mib_per_sec,
            msg_rate: report.messages as f64 / seconds / 1e6,
        }
        .to_messages();
        for (index, field) in figures.iter().enumerate() {
            if index == 1 && peer_version < 533 {
                // Before 5.33 the count was an `int`.
                exchange(link, &(report.messages as u32).to_be_bytes())?;
            } else {
                exchange(link, field)?;
            }
        }
    }
    if perftest::closes(program) {
        exchange(link, &own)?;
        link.tcp_send_all(&perftest::DONE)?;
    }
    if let Some(handle) = link.exchange.handle {
        let _ = link.client.tcp_close(handle);
    }
    Ok(report)
}

/// `ib_write_lat`'s ping-pong: the server WRITEs first; this side waits for the server's
/// message with count `n` (zeros, the count in the last byte), which lands in the half this
/// side announced, and answers with its own message `n`, as perftest's client does.
fn write_lat<O: Os>(
    link: &mut Link<'_, O>,
    resources: &Resources,
    params: &TestParams,
    size: u32,
    (rkey, remote): (u32, u64),
) -> Result<TestReport, TestError> {
    let iters = u64::from(params.iters);
    let len = size as usize;
    let incoming = receive_at(size) as usize;
    link.device.mr_mut(resources.mr)?.as_mut_slice()[..len].fill(0);
    let mut samples = Vec::with_capacity(iters as usize);
    let mut sent = None;
    let start = link.os.now_ns();
    for count in 1..=iters {
        let mark = count as u8;
        let mr = resources.mr;
        link.until("waiting for the server's WRITE", |link| {
            link.device
                .mr(mr)
                .is_ok_and(|mr| mr.as_slice()[incoming + len - 1] == mark)
        })?;
        if let Some(sent) = sent {
            samples.push((link.os.now_ns() - sent) / 2);
        }
        link.device.mr_mut(resources.mr)?.as_mut_slice()[len - 1] = mark;
        sent = Some(link.os.now_ns());
        post_send(
            &mut link.device,
            resources,
            count,
            WrOperation::RdmaWrite {
                remote_addr: remote,
                rkey,
            },
            0,
            size,
        )?;
        link.completions(resources.cq, 1, "waiting for the WRITE to complete")?;
    }
    let elapsed_ns = link.os.now_ns() - start;
    let memory = link.device.mr(resources.mr)?.as_slice();
    let verified = memory[incoming..incoming + len - 1]
        .iter()
        .all(|&byte| byte == 0);
    if !verified {
        log!(
            link.os,
            "rdma: write_lat: the server's WRITEs are not what perftest writes"
        );
    }
    Ok(latency_report(iters, size, elapsed_ns, samples, verified))
}
