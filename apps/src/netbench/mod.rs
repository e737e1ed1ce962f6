//! Network benchmarks through OS B's service: UDP and TCP goodput, and small-message round
//! trips. This is the raw path the RDMA tests are measured against: OS A's application, the
//! rings, OS B's smoltcp and NIC, and the same on the other side.
//!
//! A client ([`run_client`]) measures against a server ([`serve`]) that answers both
//! transports on one port:
//!
//! - **UDP goodput**: the client sends numbered datagrams of one size as fast as OS B takes
//!   them; the server checks each (its number, its pattern, that it is new) and counts it.
//!   Goodput is the bytes the server received intact over the time from the first datagram's
//!   arrival to the last's; what did not arrive is lost (UDP has no flow control).
//! - **TCP goodput**: the client streams numbered messages on one connection; the server checks
//!   every word and, after the last message, sends its summary. Goodput is the bytes over the
//!   time from the client's first byte to the summary's arrival.
//! - **Round trips**: the client sends one message, waits for it to come back (the server
//!   reflects it), checks it and records the time; then the next.
//!
//! The messages are described in [`wire`]; the server's side is a pair of state machines in
//! [`responder`], which the host agent also runs over its own sockets (the host end of a TAP).

pub mod responder;
pub mod wire;

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};

use netsvc::ClientError;
use netsvc::netmsg::{ErrorCode, Event};

use self::responder::{TcpResponder, UdpResponder};
use self::wire::{
    ANSWER_LEN, CREDIT_LEN, END_LEN, HEADER_LEN, Header, Kind, MAX_TCP_SIZE, MIN_SIZE, START_LEN,
    Summary, check, fill, fill_tcp_message, read_u64,
};
use crate::{NetClient, Os, log, percentile};

/// The server's port unless told otherwise.
pub const DEFAULT_PORT: u16 = 5301;
/// The largest UDP datagram on a 1500-byte link (IPv4 and UDP headers take 28 bytes).
pub const MAX_UDP_SIZE: usize = 1472;

/// The credit window UDP goodput clients use unless told otherwise. It is well below what the
/// built-in switch's port queue (1024 frames) and OS B's event ring to OS A (1024 slots) hold,
/// so a paced stream is not lost to queues that overflow; it is larger than RDMA's window of
/// 128 packets, so that UDP is not held back by its pacing more than RDMA is by its window.
pub const DEFAULT_WINDOW: u32 = 256;
/// How long a paced UDP client waits for a credit before it assumes the datagrams or credits
/// on the way were lost and sends on.
pub const CREDIT_STALL_NS: u64 = 20_000_000;
/// How long any one step (connecting, a handshake, the final answer) may take.
const STEP_TIMEOUT_NS: u64 = 60_000_000_000;
/// How long a round-trip message may take before it counts as lost (UDP) or fails (TCP).
const REPLY_TIMEOUT_NS: u64 = 2_000_000_000;
/// How often a handshake datagram is repeated until answered.
const RETRY_NS: u64 = 200_000_000;
/// Datagrams sent between two wake-ups of OS B.
const KICK_EVERY: u64 = 32;
/// Answers from the server kept until the client looks at them.
const MAX_QUEUED_ANSWERS: usize = 1024;
/// How long the server keeps answering repeated `End`s after its last session.
const LINGER_NS: u64 = 300_000_000;

/// UDP or TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Transport {
    /// UDP.
    Udp = 1,
    /// TCP.
    Tcp = 2,
}

impl Transport {
    /// The transport for a raw value.
    pub const fn from_u32(value: u32) -> Option<Transport> {
        match value {
            1 => Some(Transport::Udp),
            2 => Some(Transport::Tcp),
            _ => None,
        }
    }

    /// Its name, as `host-agent net-bench --transport` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    /// The largest message size.
    pub const fn max_size(self) -> usize {
        match self {
            Transport::Udp => MAX_UDP_SIZE,
            Transport::Tcp => MAX_TCP_SIZE,
        }
    }
}

/// What a client measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Bytes per second, one way.
    Goodput,
    /// Round trips of one message at a time.
    RoundTrip,
}

/// What a client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientParams {
    /// UDP or TCP.
    pub transport: Transport,
    /// Goodput or round trips.
    pub measure: Measure,
    /// Bytes per message: a UDP datagram's payload, a TCP message (from [`wire::MIN_SIZE`] to
    /// [`Transport::max_size`]).
    pub size: u32,
    /// Messages (goodput) or round trips.
    pub count: u64,
    /// Goodput: stop sending after this many nanoseconds even if `count` is not reached
    /// (0: no limit).
    pub duration_ns: u64,
    /// UDP goodput: datagrams on the way at most, paced by the server's credits (0: as fast
    /// as OS B takes them; see [`wire`]).
    pub window: u32,
    /// The server.
    pub server: SocketAddrV4,
}

/// What a client measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchReport {
    /// Messages (or round-trip messages) sent.
    pub sent: u64,
    /// Goodput: messages the server received intact; round trips: messages that came back
    /// intact.
    pub received: u64,
    /// Their bytes.
    pub bytes: u64,
    /// UDP goodput: nanoseconds from the first datagram's arrival at the server to the
    /// last's; TCP goodput: from the client's first byte to the server's summary (the stream
    /// is then all received and checked); round trips: the client's time for all of them.
    pub elapsed_ns: u64,
    /// Round trips: median, nanoseconds.
    pub p50_ns: u64,
    /// Round trips: 99th percentile, nanoseconds.
    pub p99_ns: u64,
    /// UDP datagrams OS B refused to send (its socket buffer stayed full).
    pub refused: u64,
    /// Paced UDP goodput: times the client went on without a credit after waiting
    /// [`CREDIT_STALL_NS`] (credits or data were lost).
    pub credit_stalls: u64,
    /// Every message that arrived checked out (and none twice); for TCP and round trips,
    /// every message also arrived.
    pub verified: bool,
}

/// What a server did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// UDP sessions that ended.
    pub udp_sessions: u64,
    /// TCP connections that closed.
    pub tcp_connections: u64,
    /// Datagrams that were not part of a session.
    pub stray_datagrams: u64,
}

/// Why a benchmark stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchError {
    /// The parameters are out of range.
    BadParams(&'static str),
    /// The network service refused.
    Net(ClientError),
    /// The connection closed early.
    Closed,
    /// The server answered something unreadable.
    BadAnswer(&'static str),
    /// Nothing happened for too long.
    Timeout(&'static str),
}

impl core::fmt::Display for BenchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BenchError::BadParams(what) => write!(f, "bad parameters: {what}"),
            BenchError::Net(error) => write!(f, "the network service refused: {error:?}"),
            BenchError::Closed => write!(f, "the connection closed early"),
            BenchError::BadAnswer(what) => write!(f, "the server's {what} was unreadable"),
            BenchError::Timeout(what) => write!(f, "timed out {what}"),
        }
    }
}

impl From<ClientError> for BenchError {
    fn from(error: ClientError) -> Self {
        BenchError::Net(error)
    }
}

/// The client's view of the network: OS B's events sorted into what the benchmark waits for.
struct Link<'a, O: Os> {
    os: &'a mut O,
    client: &'a mut NetClient,
    udp: Option<u32>,
    tcp: Option<u32>,
    connected: bool,
    closed: bool,
    /// Datagrams from the server.
    answers: VecDeque<Vec<u8>>,
    /// TCP bytes from the server.
    inbox: Vec<u8>,
    /// Datagrams OS B refused.
    refused: u64,
}

impl<O: Os> Link<'_, O> {
    /// Takes every event OS B posted.
    fn pump(&mut self) {
        while let Some(event) = self.client.poll() {
            match event {
                Event::UdpRecv {
                    handle, payload, ..
                } if Some(handle) == self.udp && self.answers.len() < MAX_QUEUED_ANSWERS => {
                    self.answers.push_back(payload.to_vec());
                }
                Event::TcpConnected { handle, .. } if Some(handle) == self.tcp => {
                    self.connected = true;
                }
                Event::TcpData { handle, data } if Some(handle) == self.tcp => {
                    self.inbox.extend_from_slice(data);
                }
                Event::TcpEof { handle } | Event::Closed { handle, .. }
                    if Some(handle) == self.tcp =>
                {
                    self.closed = true;
                }
                Event::Error {
                    code: ErrorCode::NoBufferSpace,
                    ..
                } => self.refused += 1,
                _ => {}
            }
        }
    }

    /// Wakes OS B if it has requests to serve, without waiting.
    fn kick(&mut self) {
        self.os.wait(self.client, 0);
    }

    /// Sleeps until OS B signals or `deadline_ns`.
    fn wait(&mut self, deadline_ns: u64) {
        self.os.wait(self.client, deadline_ns);
    }

    /// Sleeps until OS B makes room for a request (ring slot or pool buffer), or briefly.
    fn wait_for_room(&mut self, error: ClientError) {
        // Taking the events also takes back returned buffers: there may be room now.
        self.pump();
        let buffers = self.client.pool_mut().free_count() > 0;
        let endpoint = self.client.endpoint_mut();
        let armed = match error {
            ClientError::RingFull => endpoint.tx.prepare_to_sleep(),
            _ => !buffers && endpoint.tx_return.prepare_to_sleep(),
        };
        let deadline = if armed {
            self.os.now_ns() + 10_000_000
        } else {
            0
        };
        self.os.wait(self.client, deadline);
        let endpoint = self.client.endpoint_mut();
        endpoint.tx.woke_up();
        endpoint.tx_return.woke_up();
    }

    /// Pumps and sleeps until `done` holds, or fails after `timeout_ns`.
    fn until(
        &mut self,
        what: &'static str,
        timeout_ns: u64,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> Result<(), BenchError> {
        let deadline = self.os.now_ns() + timeout_ns;
        loop {
            self.pump();
            if done(self) {
                return Ok(());
            }
            let now = self.os.now_ns();
            if now > deadline {
                return Err(BenchError::Timeout(what));
            }
            self.wait(deadline.min(now + 10_000_000));
        }
    }

    /// Sends one datagram to `server`, waiting for room if OS B is behind.
    fn send_datagram(&mut self, server: SocketAddrV4, datagram: &[u8]) -> Result<(), BenchError> {
        let socket = self.udp.ok_or(BenchError::Net(ClientError::BadHandle))?;
        let deadline = self.os.now_ns() + STEP_TIMEOUT_NS;
        loop {
            match self.client.udp_send(socket, server, datagram) {
                Ok(()) => return Ok(()),
                Err(error @ (ClientError::RingFull | ClientError::NoBuffer)) => {
                    if self.os.now_ns() > deadline {
                        return Err(BenchError::Timeout("waiting for OS B to take a datagram"));
                    }
                    self.wait_for_room(error);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Sends `datagram` every [`RETRY_NS`] until an answer from the server satisfies `answer`.
    fn handshake(
        &mut self,
        what: &'static str,
        server: SocketAddrV4,
        datagram: &[u8],
        mut answer: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u8>, BenchError> {
        let give_up = self.os.now_ns() + STEP_TIMEOUT_NS;
        while self.os.now_ns() < give_up {
            self.send_datagram(server, datagram)?;
            let retry = self.os.now_ns() + RETRY_NS;
            loop {
                self.pump();
                while let Some(got) = self.answers.pop_front() {
                    if answer(&got) {
                        return Ok(got);
                    }
                }
                let now = self.os.now_ns();
                if now >= retry {
                    break;
                }
                self.wait(retry);
            }
        }
        Err(BenchError::Timeout(what))
    }

    /// Opens a stream of `kind` for messages of `size` bytes; returns a message buffer.
    fn tcp_open(&mut self, kind: Kind, size: usize) -> Result<Vec<u8>, BenchError> {
        self.tcp_send_all(
            &Header {
                kind,
                value: size as u64,
            }
            .to_bytes(),
        )?;
        Ok(vec![0u8; size])
    }

    /// Sends all of `data` on the TCP connection.
    fn tcp_send_all(&mut self, data: &[u8]) -> Result<(), BenchError> {
        let handle = self.tcp.ok_or(BenchError::Closed)?;
        let deadline = self.os.now_ns() + STEP_TIMEOUT_NS;
        let mut sent = 0;
        while sent < data.len() {
            match self.client.tcp_send(handle, &data[sent..]) {
                Ok(count) => {
                    sent += count;
                    self.kick();
                }
                Err(ClientError::WouldBlock) => {
                    // Wait for OS B's `SendSpace` (it may be among the events just taken).
                    self.pump();
                    if self.closed {
                        return Err(BenchError::Closed);
                    }
                    if self
                        .client
                        .send_credit(handle)
                        .is_some_and(|credit| credit > 0)
                    {
                        continue;
                    }
                    let now = self.os.now_ns();
                    if now > deadline {
                        return Err(BenchError::Timeout("waiting for TCP send credit"));
                    }
                    self.wait(now + 10_000_000);
                }
                Err(error @ (ClientError::RingFull | ClientError::NoBuffer)) => {
                    self.wait_for_room(error);
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Opens the TCP connection, retrying while the server is not listening yet.
    fn tcp_connect(&mut self, server: SocketAddrV4) -> Result<(), BenchError> {
        let give_up = self.os.now_ns() + STEP_TIMEOUT_NS;
        loop {
            self.tcp = Some(self.client.tcp_connect(server, 0, 0)?);
            self.connected = false;
            self.closed = false;
            self.until("connecting to the server", STEP_TIMEOUT_NS, |link| {
                link.connected || link.closed
            })?;
            if self.connected {
                return Ok(());
            }
            if self.os.now_ns() > give_up {
                return Err(BenchError::Timeout("connecting to the server"));
            }
            let pause = self.os.now_ns() + RETRY_NS;
            while self.os.now_ns() < pause {
                self.pump();
                self.wait(pause);
            }
        }
    }

    /// Closes the TCP connection and waits (briefly) for OS B to confirm.
    fn tcp_close(&mut self) {
        if let Some(handle) = self.tcp
            && self.client.tcp_close(handle).is_ok()
        {
            let _ = self.until("closing", REPLY_TIMEOUT_NS, |link| link.closed);
        }
        self.tcp = None;
    }
}

/// Runs the client side of one measurement against the server at `params.server`.
pub fn run_client(
    os: &mut impl Os,
    client: &mut NetClient,
    params: &ClientParams,
) -> Result<BenchReport, BenchError> {
    let size = params.size as usize;
    if !(MIN_SIZE..=params.transport.max_size()).contains(&size) {
        return Err(BenchError::BadParams("message size out of range"));
    }
    if params.count == 0 {
        return Err(BenchError::BadParams("no messages"));
    }
    let mut link = Link {
        os,
        client,
        udp: None,
        tcp: None,
        connected: false,
        closed: false,
        answers: VecDeque::new(),
        inbox: Vec::new(),
        refused: 0,
    };
    let result = match (params.transport, params.measure) {
        (Transport::Udp, measure) => {
            link.udp = Some(link.client.udp_bind(0)?);
            let result = if measure == Measure::Goodput {
                udp_goodput(&mut link, params)
            } else {
                udp_round_trips(&mut link, params)
            };
            if let Some(socket) = link.udp.take() {
                let _ = link.client.close(socket);
            }
            result
        }
        (Transport::Tcp, measure) => {
            link.tcp_connect(params.server)?;
            let result = if measure == Measure::Goodput {
                tcp_goodput(&mut link, params)
            } else {
                tcp_round_trips(&mut link, params)
            };
            link.tcp_close();
            result
        }
    };
    let report = result?;
    let kind = match params.measure {
        Measure::Goodput => "goodput",
        Measure::RoundTrip => "round trips",
    };
    log!(
        link.os,
        "netbench: {} {kind}, {} B: {} sent, {} received, {} bytes in {} us, p50 {} ns p99 {} ns, {} refused by OS B, {}",
        params.transport.name(),
        size,
        report.sent,
        report.received,
        report.bytes,
        report.elapsed_ns / 1000,
        report.p50_ns,
        report.p99_ns,
        report.refused,
        if report.verified {
            "verified"
        } else {
            "NOT verified"
        }
    );
    Ok(report)
}

/// Opens a UDP session: `Start` until the server answers it.
fn udp_start<O: Os>(
    link: &mut Link<'_, O>,
    server: SocketAddrV4,
    session: u64,
    (count, size, window): (u64, usize, u32),
) -> Result<(), BenchError> {
    let mut start = [0u8; START_LEN];
    Header {
        kind: Kind::Start,
        value: session,
    }
    .emit(&mut start);
    start[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&count.to_le_bytes());
    start[HEADER_LEN + 8..HEADER_LEN + 16].copy_from_slice(&(size as u64).to_le_bytes());
    start[HEADER_LEN + 16..].copy_from_slice(&u64::from(window).to_le_bytes());
    link.handshake("waiting for the server to answer", server, &start, |got| {
        got == start
    })?;
    Ok(())
}

/// Ends a UDP session: `End` until the server answers with its summary.
fn udp_end<O: Os>(
    link: &mut Link<'_, O>,
    server: SocketAddrV4,
    session: u64,
    sent: u64,
) -> Result<Summary, BenchError> {
    let mut end = [0u8; END_LEN];
    Header {
        kind: Kind::End,
        value: session,
    }
    .emit(&mut end);
    end[HEADER_LEN..].copy_from_slice(&sent.to_le_bytes());
    let answer = link.handshake("waiting for the server's summary", server, &end, |got| {
        got.len() == ANSWER_LEN
            && Header::parse(got)
                .is_some_and(|(header, _)| header.kind == Kind::EndAck && header.value == session)
    })?;
    Summary::parse(&answer[HEADER_LEN..]).ok_or(BenchError::BadAnswer("summary"))
}

/// A session number: the clock, never 0.
fn session_id(os: &mut impl Os) -> u64 {
    os.now_ns() | 1
}

fn udp_goodput<O: Os>(
    link: &mut Link<'_, O>,
    params: &ClientParams,
) -> Result<BenchReport, BenchError> {
    let size = params.size as usize;
    let session = session_id(link.os);
    let window = u64::from(params.window);
    udp_start(
        link,
        params.server,
        session,
        (params.count, size, params.window),
    )?;
    let mut datagram = vec![0u8; size];
    let start = link.os.now_ns();
    let mut sent = 0u64;
    // Messages below `credit` reached the server (or were given up on after a stall).
    let mut credit = 0u64;
    let mut stalled_since = None;
    let mut credit_stalls = 0u64;
    while sent < params.count {
        if params.duration_ns != 0
            && sent.is_multiple_of(KICK_EVERY)
            && link.os.now_ns() - start >= params.duration_ns
        {
            break;
        }
        if window != 0 && sent >= credit.saturating_add(window) {
            link.pump();
            credit = credit.max(take_credits(&mut link.answers, session, sent));
            if sent >= credit.saturating_add(window) {
                let now = link.os.now_ns();
                let since = *stalled_since.get_or_insert(now);
                if now - since < CREDIT_STALL_NS {
                    link.wait(since + CREDIT_STALL_NS);
                    continue;
                }
                credit_stalls += 1;
                credit = sent + 1 - window;
            }
            stalled_since = None;
        }
        Header {
            kind: Kind::Data,
            value: sent,
        }
        .emit(&mut datagram);
        fill(&mut datagram[HEADER_LEN..], sent);
        link.send_datagram(params.server, &datagram)?;
        sent += 1;
        if sent.is_multiple_of(KICK_EVERY) {
            link.pump();
            credit = credit.max(take_credits(&mut link.answers, session, sent));
            link.kick();
        }
    }
    let summary = udp_end(link, params.server, session, sent)?;
    Ok(BenchReport {
        sent,
        received: summary.received,
        bytes: summary.bytes,
        elapsed_ns: summary.elapsed_ns,
        refused: link.refused,
        credit_stalls,
        verified: summary.bad == 0
            && summary.duplicates == 0
            && summary.received > 0
            && summary.received <= sent,
        ..BenchReport::default()
    })
}

/// Takes the answers; returns the highest credit among them for `session` (0 if none), at
/// most `sent`: the server cannot have received more than was sent, whatever it says.
fn take_credits(answers: &mut VecDeque<Vec<u8>>, session: u64, sent: u64) -> u64 {
    let mut credit = 0;
    for answer in answers.drain(..) {
        if answer.len() != CREDIT_LEN {
            continue;
        }
        if let Some((header, body)) = Header::parse(&answer)
            && header.kind == Kind::Credit
            && header.value == session
        {
            credit = credit.max(read_u64(body).unwrap_or(0));
        }
    }
    credit.min(sent)
}

fn udp_round_trips<O: Os>(
    link: &mut Link<'_, O>,
    params: &ClientParams,
) -> Result<BenchReport, BenchError> {
    let size = params.size as usize;
    let session = session_id(link.os);
    udp_start(link, params.server, session, (0, size, 0))?;
    let mut ping = vec![0u8; size];
    let mut samples = Vec::with_capacity(params.count.min(1 << 20) as usize);
    let mut bad = 0u64;
    let start = link.os.now_ns();
    for number in 0..params.count {
        Header {
            kind: Kind::Ping,
            value: number,
        }
        .emit(&mut ping);
        fill(&mut ping[HEADER_LEN..], number);
        let sent = link.os.now_ns();
        link.send_datagram(params.server, &ping)?;
        let deadline = sent + REPLY_TIMEOUT_NS;
        loop {
            link.pump();
            let mut back = false;
            while let Some(answer) = link.answers.pop_front() {
                let Some((header, body)) = Header::parse(&answer) else {
                    bad += 1;
                    continue;
                };
                if header.kind != Kind::Ping || header.value != number {
                    // A late answer to a message given up on, or stray.
                    continue;
                }
                if answer.len() == size && check(body, number) {
                    back = true;
                } else {
                    bad += 1;
                }
            }
            let now = link.os.now_ns();
            if back {
                samples.push(now - sent);
                break;
            }
            if now > deadline {
                break;
            }
            link.wait(deadline);
        }
    }
    let elapsed_ns = link.os.now_ns() - start;
    let summary = udp_end(link, params.server, session, 0)?;
    samples.sort_unstable();
    let received = samples.len() as u64;
    Ok(BenchReport {
        sent: params.count,
        received,
        bytes: received * size as u64,
        elapsed_ns,
        p50_ns: percentile(&samples, 0.5),
        p99_ns: percentile(&samples, 0.99),
        refused: link.refused,
        verified: bad == 0 && received == params.count && summary.received >= received,
        ..BenchReport::default()
    })
}

fn tcp_goodput<O: Os>(
    link: &mut Link<'_, O>,
    params: &ClientParams,
) -> Result<BenchReport, BenchError> {
    let size = params.size as usize;
    let mut message = link.tcp_open(Kind::Stream, size)?;
    let start = link.os.now_ns();
    let mut sent = 0u64;
    loop {
        let last = sent + 1 >= params.count
            || (params.duration_ns != 0 && link.os.now_ns() - start >= params.duration_ns);
        fill_tcp_message(&mut message, sent, last);
        link.tcp_send_all(&message)?;
        sent += 1;
        if last {
            break;
        }
    }
    link.kick();
    link.until(
        "waiting for the server's summary",
        STEP_TIMEOUT_NS,
        |link| link.inbox.len() >= ANSWER_LEN || link.closed,
    )?;
    let elapsed_ns = link.os.now_ns() - start;
    let summary = match Header::parse(&link.inbox) {
        Some((header, body)) if header.kind == Kind::Summary => Summary::parse(body),
        _ => None,
    }
    .ok_or(BenchError::BadAnswer("summary"))?;
    Ok(BenchReport {
        sent,
        received: summary.received,
        bytes: summary.bytes,
        elapsed_ns,
        verified: summary.bad == 0
            && summary.received == sent
            && summary.bytes == sent * size as u64
            && link.inbox.len() == ANSWER_LEN,
        ..BenchReport::default()
    })
}

fn tcp_round_trips<O: Os>(
    link: &mut Link<'_, O>,
    params: &ClientParams,
) -> Result<BenchReport, BenchError> {
    let size = params.size as usize;
    let mut message = link.tcp_open(Kind::Echo, size)?;
    let mut samples = Vec::with_capacity(params.count.min(1 << 20) as usize);
    let mut intact = 0u64;
    let start = link.os.now_ns();
    for number in 0..params.count {
        fill_tcp_message(&mut message, number, false);
        let sent = link.os.now_ns();
        link.tcp_send_all(&message)?;
        link.until("waiting for a round trip", REPLY_TIMEOUT_NS, |link| {
            link.inbox.len() >= size || link.closed
        })?;
        let now = link.os.now_ns();
        if link.inbox.len() < size {
            return Err(BenchError::Closed);
        }
        if link.inbox[..size] == message[..] {
            intact += 1;
        }
        link.inbox.drain(..size);
        samples.push(now - sent);
    }
    let elapsed_ns = link.os.now_ns() - start;
    samples.sort_unstable();
    Ok(BenchReport {
        sent: params.count,
        received: intact,
        bytes: intact * size as u64,
        elapsed_ns,
        p50_ns: percentile(&samples, 0.5),
        p99_ns: percentile(&samples, 0.99),
        verified: intact == params.count && link.inbox.is_empty(),
        ..BenchReport::default()
    })
}

/// What a client measures over one transport: goodput, then round trips (either may be left
/// out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurements {
    /// UDP or TCP.
    pub transport: Transport,
    /// Goodput message size: a UDP datagram's payload, or a TCP write.
    pub size: u32,
    /// Goodput messages (0: no goodput measurement).
    pub count: u64,
    /// Goodput time limit in milliseconds (0: none).
    pub duration_ms: u32,
    /// UDP goodput: the credit window in datagrams (0: unpaced; see [`ClientParams::window`]).
    pub window: u32,
    /// Round-trip message size.
    pub rtt_size: u32,
    /// Round trips (0: none).
    pub rtt_count: u64,
}

/// What one endpoint runs: a client's [`Measurements`], or the server for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What the client measures (the server waits for as many sessions).
    pub measure: Measurements,
    /// The server's address; `None` makes this endpoint the server.
    pub server: Option<Ipv4Addr>,
    /// The server's port.
    pub port: u16,
}

impl Plan {
    /// The plan as the arguments of a `NetBench` workload (see `shm_ring::bootinfo`).
    pub fn to_args(&self) -> [u64; 6] {
        let server = self.server.map_or(0, |ip| u64::from(u32::from(ip)));
        let measure = &self.measure;
        [
            measure.transport as u64,
            u64::from(measure.size) | u64::from(measure.rtt_size) << 32,
            measure.count,
            measure.rtt_count,
            server | u64::from(self.port) << 32,
            u64::from(measure.duration_ms) | u64::from(measure.window) << 32,
        ]
    }

    /// The plan in a `NetBench` workload's arguments; `None` if the transport is unknown.
    pub fn from_args(args: [u64; 6]) -> Option<Plan> {
        let server = args[4] as u32;
        let port = (args[4] >> 32) as u16;
        Some(Plan {
            measure: Measurements {
                transport: Transport::from_u32(args[0] as u32)?,
                size: args[1] as u32,
                count: args[2],
                duration_ms: args[5] as u32,
                window: (args[5] >> 32) as u32,
                rtt_size: (args[1] >> 32) as u32,
                rtt_count: args[3],
            },
            server: (server != 0).then(|| Ipv4Addr::from(server)),
            port: if port == 0 { DEFAULT_PORT } else { port },
        })
    }

    /// The sessions a client of this plan opens (what its server waits for).
    pub fn sessions(&self) -> u64 {
        u64::from(self.measure.count != 0) + u64::from(self.measure.rtt_count != 0)
    }
}

/// What a plan measured (a client) or did (the server).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanReport {
    /// The goodput measurement.
    pub goodput: Option<BenchReport>,
    /// The round trips.
    pub round_trips: Option<BenchReport>,
    /// The server's report.
    pub served: Option<ServeReport>,
}

impl PlanReport {
    /// Whether every measurement checked out.
    pub fn verified(&self) -> bool {
        [self.goodput, self.round_trips]
            .iter()
            .flatten()
            .all(|report| report.verified)
    }
}

/// Runs a plan: the client's measurements in turn, or the server until the client's sessions
/// have ended (or the OS asks to stop).
pub fn run_plan(
    os: &mut impl Os,
    client: &mut NetClient,
    plan: &Plan,
) -> Result<PlanReport, BenchError> {
    let Some(server) = plan.server else {
        let served = serve(os, client, plan.port, plan.sessions())?;
        return Ok(PlanReport {
            served: Some(served),
            ..PlanReport::default()
        });
    };
    let server = SocketAddrV4::new(server, plan.port);
    let mut report = PlanReport::default();
    if plan.measure.count != 0 {
        let params = ClientParams {
            transport: plan.measure.transport,
            measure: Measure::Goodput,
            size: plan.measure.size,
            count: plan.measure.count,
            duration_ns: u64::from(plan.measure.duration_ms) * 1_000_000,
            window: plan.measure.window,
            server,
        };
        report.goodput = Some(run_client(os, client, &params)?);
    }
    if plan.measure.rtt_count != 0 {
        let params = ClientParams {
            transport: plan.measure.transport,
            measure: Measure::RoundTrip,
            size: plan.measure.rtt_size,
            count: plan.measure.rtt_count,
            duration_ns: 0,
            window: 0,
            server,
        };
        report.round_trips = Some(run_client(os, client, &params)?);
    }
    Ok(report)
}

/// One accepted connection of the server.
struct Connection {
    handle: u32,
    responder: TcpResponder,
    /// The client has closed its side.
    eof: bool,
    /// This side asked OS B to close.
    closing: bool,
}

/// Serves clients on UDP and TCP `port` until `sessions` sessions (UDP sessions and TCP
/// connections) have ended, or, with `sessions` 0, until the OS asks to stop.
pub fn serve(
    os: &mut impl Os,
    client: &mut NetClient,
    port: u16,
    sessions: u64,
) -> Result<ServeReport, BenchError> {
    let udp = client.udp_bind(port)?;
    let listener = client.tcp_listen(port, 4, 0)?;
    log!(os, "netbench: serving UDP and TCP on port {port}");
    let mut responder = UdpResponder::new();
    let mut connections: Vec<Connection> = Vec::new();
    let mut answers: Vec<(SocketAddrV4, Vec<u8>)> = Vec::new();
    let mut closed = 0u64;
    let mut finished_at = None;
    loop {
        while let Some(event) = client.poll() {
            // Each message is stamped as it is taken, so that a burst taken at once still
            // spreads over the time it took.
            let now = os.now_ns();
            match event {
                Event::UdpRecv {
                    handle,
                    remote,
                    payload,
                } if handle == udp => {
                    if let Some(answer) = responder.datagram(payload, now) {
                        answers.push((remote, answer.to_vec()));
                    }
                }
                Event::TcpAccepted {
                    listener: from,
                    handle,
                    ..
                } if from == listener => connections.push(Connection {
                    handle,
                    responder: TcpResponder::new(),
                    eof: false,
                    closing: false,
                }),
                Event::TcpData { handle, data } => {
                    if let Some(connection) = connections.iter_mut().find(|c| c.handle == handle) {
                        connection.responder.receive(data, now);
                    }
                }
                Event::TcpEof { handle } => {
                    if let Some(connection) = connections.iter_mut().find(|c| c.handle == handle) {
                        connection.eof = true;
                    }
                }
                Event::Closed { handle, .. } => {
                    let before = connections.len();
                    connections.retain(|c| c.handle != handle);
                    closed += (before - connections.len()) as u64;
                }
                _ => {}
            }
        }
        for (remote, answer) in answers.drain(..) {
            // A lost answer is asked for again.
            let _ = client.udp_send(udp, remote, &answer);
        }
        for connection in &mut connections {
            let outgoing = connection.responder.outgoing();
            if !outgoing.is_empty()
                && let Ok(sent) = client.tcp_send(connection.handle, outgoing)
            {
                outgoing.drain(..sent);
            }
            let done = connection.eof || connection.responder.refused();
            if done && connection.responder.outgoing().is_empty() && !connection.closing {
                connection.closing = client.tcp_close(connection.handle).is_ok();
            }
        }
        let now = os.now_ns();
        if sessions != 0 && responder.sessions_ended() + closed >= sessions {
            let since = *finished_at.get_or_insert(now);
            if now - since > LINGER_NS {
                break;
            }
        }
        if os.should_stop() {
            break;
        }
        os.wait(client, now + 10_000_000);
    }
    let _ = client.close(udp);
    let _ = client.tcp_close(listener);
    let report = ServeReport {
        udp_sessions: responder.sessions_ended(),
        tcp_connections: closed,
        stray_datagrams: responder.stray(),
    };
    log!(
        os,
        "netbench: served {} UDP sessions and {} TCP connections ({} stray datagrams)",
        report.udp_sessions,
        report.tcp_connections,
        report.stray_datagrams
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_from_the_server_are_checked() {
        let credit = |session: u64, next: u64| wire::control(Kind::Credit, session, &[next]);
        let mut answers: VecDeque<Vec<u8>> = VecDeque::new();
        answers.push_back(credit(7, 40));
        answers.push_back(credit(8, 90)); // another session
        answers.push_back(credit(7, 30)); // older
        answers.push_back(credit(7, 60)[..CREDIT_LEN - 1].to_vec()); // short
        answers.push_back(b"noise".to_vec());
        assert_eq!(take_credits(&mut answers, 7, 100), 40);
        assert!(answers.is_empty());
        // A server claiming more than was sent is held to what was sent.
        answers.push_back(credit(7, u64::MAX));
        assert_eq!(take_credits(&mut answers, 7, 100), 100);
    }

    #[test]
    fn plans_round_trip_through_workload_arguments() {
        let plan = Plan {
            measure: Measurements {
                transport: Transport::Tcp,
                size: 65536,
                count: 1000,
                duration_ms: 2500,
                window: 512,
                rtt_size: 64,
                rtt_count: 300,
            },
            server: Some(Ipv4Addr::new(10, 77, 10, 1)),
            port: 6000,
        };
        assert_eq!(Plan::from_args(plan.to_args()), Some(plan));
        let server = Plan {
            server: None,
            port: DEFAULT_PORT,
            ..plan
        };
        assert_eq!(Plan::from_args(server.to_args()), Some(server));
        assert_eq!(server.sessions(), 2);
        let mut args = plan.to_args();
        args[0] = 3;
        assert_eq!(Plan::from_args(args), None);
        args[0] = 1;
        args[4] = u64::from(u32::from(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(Plan::from_args(args).map(|p| p.port), Some(DEFAULT_PORT));
    }
}
