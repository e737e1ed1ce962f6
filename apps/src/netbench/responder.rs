//! The server's side of the protocol, as state machines with no I/O: bytes in, bytes out.
//!
//! OS A's server ([`super::serve`]) drives them over OS B's service; the host agent drives the
//! same machines over its own sockets (the host end of a TAP), so both ends speak one
//! protocol, checked once.

use alloc::vec::Vec;

use super::wire::{
    ANSWER_LEN, CREDIT_LEN, END_LEN, HEADER_LEN, Header, Kind, MAX_TCP_SIZE, MIN_SIZE, START_LEN,
    StreamChecker, Summary, check, read_u64,
};

/// Messages of a UDP session the receiver tracks one by one (for duplicates): 64 Mi, a bitmap
/// of at most 8 MiB, grown only as far as the messages that arrive.
const MAX_TRACKED: u64 = 1 << 26;

/// One UDP session.
#[derive(Debug)]
struct Session {
    id: u64,
    size: usize,
    /// Messages announced, capped at [`MAX_TRACKED`].
    tracked: u64,
    seen: Vec<u64>,
    summary: Summary,
    /// New messages between two credits (0: the client does not pace itself).
    credit_every: u64,
    /// The highest message number received, plus one.
    next: u64,
    first_ns: Option<u64>,
    last_ns: u64,
    ended: bool,
}

impl Session {
    /// Marks `message` seen; `Some(true)` if it was new, `None` if it cannot be tracked.
    fn mark(&mut self, message: u64) -> Option<bool> {
        if message >= self.tracked {
            return None;
        }
        let word = (message / 64) as usize;
        if word >= self.seen.len() {
            let grow = (word + 1)
                .max(self.seen.len() * 2)
                .min(self.tracked.div_ceil(64) as usize);
            self.seen.try_reserve_exact(grow - self.seen.len()).ok()?;
            self.seen.resize(grow, 0);
        }
        let bit = 1u64 << (message % 64);
        let new = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        Some(new)
    }
}

/// The UDP server: answers `Start`, reflects `Ping`, checks and counts `Data`, answers `End`.
#[derive(Debug, Default)]
pub struct UdpResponder {
    session: Option<Session>,
    sessions_ended: u64,
    answer: Vec<u8>,
    stray: u64,
}

impl UdpResponder {
    /// A server with no session.
    pub fn new() -> UdpResponder {
        UdpResponder::default()
    }

    /// Sessions that ended (each counted once).
    pub fn sessions_ended(&self) -> u64 {
        self.sessions_ended
    }

    /// Datagrams that were not part of the protocol or of the running session.
    pub fn stray(&self) -> u64 {
        self.stray
    }

    /// Takes one datagram that arrived at `now_ns`; returns the answer to send back, if any.
    pub fn datagram<'a>(&'a mut self, datagram: &'a [u8], now_ns: u64) -> Option<&'a [u8]> {
        let Some((header, body)) = Header::parse(datagram) else {
            self.stray += 1;
            return None;
        };
        match header.kind {
            Kind::Start if datagram.len() == START_LEN => {
                let size = read_u64(body.get(8..)?)?;
                let running = self.session.as_ref().is_some_and(|s| s.id == header.value);
                if !running && (MIN_SIZE as u64..=u64::from(u16::MAX)).contains(&size) {
                    let announced = read_u64(body)?;
                    let window = read_u64(body.get(16..)?)?;
                    self.session = Some(Session {
                        id: header.value,
                        size: size as usize,
                        tracked: announced.min(MAX_TRACKED),
                        seen: Vec::new(),
                        summary: Summary::default(),
                        credit_every: if window == 0 { 0 } else { (window / 8).max(1) },
                        next: 0,
                        first_ns: None,
                        last_ns: now_ns,
                        ended: false,
                    });
                }
                let started = self.session.as_ref().is_some_and(|s| s.id == header.value);
                started.then_some(datagram)
            }
            Kind::Data => {
                let Some(session) = self.session.as_mut().filter(|s| !s.ended) else {
                    self.stray += 1;
                    return None;
                };
                let intact = datagram.len() == session.size && check(body, header.value);
                match intact.then(|| session.mark(header.value)).flatten() {
                    Some(true) => {
                        session.summary.received += 1;
                        session.summary.bytes += datagram.len() as u64;
                        session.first_ns.get_or_insert(now_ns);
                        session.last_ns = now_ns;
                        session.next = session.next.max(header.value + 1);
                        let every = session.credit_every;
                        if every != 0 && session.summary.received.is_multiple_of(every) {
                            let body = session.next.to_le_bytes();
                            compose(&mut self.answer, Kind::Credit, session.id, &body);
                            debug_assert_eq!(self.answer.len(), CREDIT_LEN);
                            return Some(&self.answer);
                        }
                    }
                    Some(false) => session.summary.duplicates += 1,
                    None => session.summary.bad += 1,
                }
                None
            }
            Kind::Ping => {
                if let Some(session) = self.session.as_mut().filter(|s| !s.ended) {
                    session.summary.received += 1;
                    session.summary.bytes += datagram.len() as u64;
                }
                Some(datagram)
            }
            Kind::End if datagram.len() == END_LEN => {
                let session = self.session.as_mut().filter(|s| s.id == header.value)?;
                if !session.ended {
                    session.ended = true;
                    session.summary.elapsed_ns =
                        session.last_ns - session.first_ns.unwrap_or(session.last_ns);
                    self.sessions_ended += 1;
                }
                let body = session.summary.to_bytes();
                compose(&mut self.answer, Kind::EndAck, session.id, &body);
                debug_assert_eq!(self.answer.len(), ANSWER_LEN);
                Some(&self.answer)
            }
            _ => {
                self.stray += 1;
                None
            }
        }
    }
}

/// Makes `out` a message of `kind` with `value`, followed by `body`.
fn compose(out: &mut Vec<u8>, kind: Kind, value: u64, body: &[u8]) {
    out.clear();
    out.extend_from_slice(&Header { kind, value }.to_bytes());
    out.extend_from_slice(body);
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the first header.
    Opening(Vec<u8>),
    /// Checking a stream.
    Stream {
        checker: StreamChecker,
        first_ns: Option<u64>,
        last_ns: u64,
    },
    /// Sending every byte back.
    Echo,
    /// The stream is checked and summarised; anything more is counted as bad.
    Done(Summary),
    /// The opening was not a header of this protocol.
    Refused,
}

/// The server's end of one TCP connection.
#[derive(Debug)]
pub struct TcpResponder {
    phase: Phase,
    outgoing: Vec<u8>,
}

impl Default for TcpResponder {
    fn default() -> Self {
        TcpResponder::new()
    }
}

impl TcpResponder {
    /// A connection that has sent nothing yet.
    pub fn new() -> TcpResponder {
        TcpResponder {
            phase: Phase::Opening(Vec::new()),
            outgoing: Vec::new(),
        }
    }

    /// Bytes to send to the client; the caller drains what it sent.
    pub fn outgoing(&mut self) -> &mut Vec<u8> {
        &mut self.outgoing
    }

    /// Whether the client opened with something else than this protocol (close it).
    pub fn refused(&self) -> bool {
        matches!(self.phase, Phase::Refused)
    }

    /// The summary of a checked stream, once its last message arrived.
    pub fn summary(&self) -> Option<Summary> {
        match self.phase {
            Phase::Done(summary) => Some(summary),
            _ => None,
        }
    }

    /// Takes bytes the client sent, arrived at `now_ns`.
    pub fn receive(&mut self, mut data: &[u8], now_ns: u64) {
        if let Phase::Opening(opening) = &mut self.phase {
            let take = (HEADER_LEN - opening.len()).min(data.len());
            opening.extend_from_slice(&data[..take]);
            data = &data[take..];
            if opening.len() < HEADER_LEN {
                return;
            }
            let size = |value: u64| (MIN_SIZE as u64..=MAX_TCP_SIZE as u64).contains(&value);
            self.phase = match Header::parse(opening) {
                Some((header, _)) if header.kind == Kind::Stream && size(header.value) => {
                    Phase::Stream {
                        checker: StreamChecker::new(header.value as usize),
                        first_ns: None,
                        last_ns: now_ns,
                    }
                }
                Some((header, _)) if header.kind == Kind::Echo => Phase::Echo,
                _ => Phase::Refused,
            };
        }
        if data.is_empty() {
            return;
        }
        match &mut self.phase {
            Phase::Opening(_) | Phase::Refused => {}
            Phase::Echo => self.outgoing.extend_from_slice(data),
            Phase::Done(summary) => summary.bad += data.len() as u64,
            Phase::Stream {
                checker,
                first_ns,
                last_ns,
            } => {
                first_ns.get_or_insert(now_ns);
                *last_ns = now_ns;
                checker.feed(data);
                if checker.finished() {
                    let summary = Summary {
                        received: checker.messages(),
                        bytes: checker.bytes(),
                        elapsed_ns: *last_ns - first_ns.unwrap_or(*last_ns),
                        duplicates: 0,
                        bad: checker.bad(),
                    };
                    self.outgoing.extend_from_slice(
                        &Header {
                            kind: Kind::Summary,
                            value: 0,
                        }
                        .to_bytes(),
                    );
                    self.outgoing.extend_from_slice(&summary.to_bytes());
                    self.phase = Phase::Done(summary);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::super::wire::{control, fill, fill_tcp_message};
    use super::*;

    fn start(session: u64, count: u64, size: u64, window: u64) -> Vec<u8> {
        control(Kind::Start, session, &[count, size, window])
    }

    fn message(kind: Kind, number: u64, size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size];
        Header {
            kind,
            value: number,
        }
        .emit(&mut out);
        fill(&mut out[HEADER_LEN..], number);
        out
    }

    fn end(session: u64, sent: u64) -> Vec<u8> {
        control(Kind::End, session, &[sent])
    }

    #[test]
    fn udp_session_counts_checks_and_summarises() {
        let mut server = UdpResponder::new();
        let opening = start(7, 100, 64, 0);
        assert_eq!(server.datagram(&opening, 0), Some(&opening[..]));
        for number in [0, 1, 2, 2, 5] {
            assert_eq!(
                server.datagram(&message(Kind::Data, number, 64), 10 + number),
                None
            );
        }
        // Damaged, wrong size, beyond the announced count.
        let mut damaged = message(Kind::Data, 3, 64);
        damaged[40] ^= 1;
        server.datagram(&damaged, 20);
        server.datagram(&message(Kind::Data, 4, 65), 20);
        server.datagram(&message(Kind::Data, 100, 64), 20);
        // A repeated start does not reset the session.
        assert_eq!(server.datagram(&opening, 30), Some(&opening[..]));
        let ping = message(Kind::Ping, 9, 64);
        assert_eq!(server.datagram(&ping, 40), Some(&ping[..]));
        let answer = server.datagram(&end(7, 6), 50).map(<[u8]>::to_vec).unwrap();
        let (header, body) = Header::parse(&answer).unwrap();
        assert_eq!((header.kind, header.value), (Kind::EndAck, 7));
        let summary = Summary::parse(body).unwrap();
        // Messages 0, 1, 2 and 5, and the ping; 2 twice; three bad ones.
        assert_eq!(
            summary,
            Summary {
                received: 5,
                bytes: 5 * 64,
                elapsed_ns: 5,
                duplicates: 1,
                bad: 3,
            }
        );
        assert_eq!(server.sessions_ended(), 1);
        // A repeated end gets the same answer and ends nothing more.
        assert_eq!(server.datagram(&end(7, 6), 60), Some(&answer[..]));
        assert_eq!(server.sessions_ended(), 1);
        assert_eq!(server.datagram(&end(8, 6), 60), None);
        assert_eq!(server.datagram(b"hello", 60), None);
        assert_eq!(server.stray(), 1);
    }

    #[test]
    fn a_paced_session_gets_credits() {
        let mut server = UdpResponder::new();
        // A window of 16: a credit every 2 new messages, carrying the highest number plus one.
        let opening = start(9, 100, 64, 16);
        assert_eq!(server.datagram(&opening, 0), Some(&opening[..]));
        let credit = |next: u64| control(Kind::Credit, 9, &[next]);
        let mut answers = Vec::new();
        for (time, number) in [0u64, 3, 3, 1, 7, 2].into_iter().enumerate() {
            let data = message(Kind::Data, number, 64);
            let answer = server.datagram(&data, time as u64);
            answers.push(answer.map(<[u8]>::to_vec));
        }
        // New messages 0 and 3 (credit 4), the duplicate 3 (nothing), 1 and 7 (credit 8), 2.
        assert_eq!(
            answers,
            [None, Some(credit(4)), None, None, Some(credit(8)), None]
        );
        assert_eq!(CREDIT_LEN, credit(0).len());
    }

    #[test]
    fn tcp_stream_is_checked_and_summarised() {
        let mut server = TcpResponder::new();
        let mut data = control(Kind::Stream, 32, &[]);
        for number in 0..4 {
            let mut bytes = vec![0u8; 32];
            fill_tcp_message(&mut bytes, number, number == 3);
            data.extend_from_slice(&bytes);
        }
        for (index, chunk) in data.chunks(7).enumerate() {
            server.receive(chunk, index as u64);
        }
        let summary = server.summary().unwrap();
        assert_eq!((summary.received, summary.bytes, summary.bad), (4, 128, 0));
        assert_eq!(server.outgoing().len(), ANSWER_LEN);
    }

    #[test]
    fn tcp_echo_sends_everything_back_and_garbage_is_refused() {
        let mut server = TcpResponder::new();
        let mut data = control(Kind::Echo, 64, &[]);
        data.extend_from_slice(b"ping");
        server.receive(&data, 0);
        server.receive(b"pong", 1);
        assert_eq!(server.outgoing(), b"pingpong");

        let mut server = TcpResponder::new();
        server.receive(b"GET / HTTP/1.1\r\n\r\n", 0);
        assert!(server.refused());
        assert!(server.outgoing().is_empty());
    }
}
