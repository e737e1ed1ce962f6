//! The benchmark's messages and data patterns.
//!
//! # Header
//!
//! Every UDP datagram, and the first and last message of a TCP connection, starts with a
//! 16-byte header (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic, `dnb1` |
//! | 4 | [`Kind`] |
//! | 5..8 | zero |
//! | 8..16 | `value`: what it means depends on the kind |
//!
//! # UDP
//!
//! | kind | `value` | after the header | answer |
//! |---|---|---|---|
//! | `Start` | session | messages announced, bytes per datagram, credit window (three `u64`) | the same bytes back |
//! | `Data` | message number | the message's [`fill`] pattern | `Credit` now and then, if the window is not 0 |
//! | `Credit` | session | the highest message number received so far, plus one (`u64`) | none (server to client) |
//! | `Ping` | message number | the message's [`fill`] pattern | the same bytes back |
//! | `End` | session | DATA datagrams sent (`u64`) | `EndAck`: session, then a [`Summary`] |
//!
//! A client that paces itself announces a credit window `W` (datagrams) in `Start`: it then
//! sends message `n` only once the server has reported a `Credit` above `n - W`, which the
//! server does every `W / 8` (at least 1) new messages. So the client never has more than `W`
//! datagrams on the way and measures what the path carries without overrunning the receiver;
//! a lost `Credit` is made good by the next. A window of 0 sends as fast as OS B takes
//! datagrams, and the server sends no credits.
//!
//! A session is a number the client picks; a `Start` for the session already running is
//! answered again without starting anew, so the client may repeat it until answered (the first
//! datagrams may wait for ARP). `End` is repeated the same way.
//!
//! # TCP
//!
//! The client opens with a header of kind `Stream` or `Echo`, `value` the message size. Then
//! messages of that size, each the [`fill`] pattern of its number with its first 8 bytes
//! replaced by the number (with [`LAST_MESSAGE`] set in the last message of a stream). For
//! `Stream` the server checks them and, after the last, sends a `Summary` header (`value` 0)
//! and a [`Summary`]; for `Echo` it sends every byte back. The client closes.

/// Bytes of a header.
pub const HEADER_LEN: usize = 16;
/// Bytes of an encoded [`Summary`].
pub const SUMMARY_LEN: usize = 40;
/// Bytes of a UDP `Start` datagram.
pub const START_LEN: usize = HEADER_LEN + 24;
/// Bytes of a UDP `Credit` datagram.
pub const CREDIT_LEN: usize = HEADER_LEN + 8;
/// Bytes of a UDP `End` datagram.
pub const END_LEN: usize = HEADER_LEN + 8;
/// Bytes of a UDP `EndAck` datagram, and of a TCP summary.
pub const ANSWER_LEN: usize = HEADER_LEN + SUMMARY_LEN;
/// The smallest message: a header.
pub const MIN_SIZE: usize = HEADER_LEN;
/// The largest TCP message.
pub const MAX_TCP_SIZE: usize = 1 << 20;
/// Set in the first word of a stream's last TCP message.
pub const LAST_MESSAGE: u64 = 1 << 63;

const MAGIC: [u8; 4] = *b"dnb1";
const MIX_MESSAGE: u64 = 0x9e37_79b9_7f4a_7c15;
const MIX_WORD: u64 = 0xbf58_476d_1ce4_e5b9;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// UDP: a session begins.
    Start = 1,
    /// UDP: a message of a goodput stream.
    Data = 2,
    /// UDP: a round-trip message.
    Ping = 3,
    /// UDP: a session ends.
    End = 4,
    /// UDP: the answer to `End`.
    EndAck = 5,
    /// TCP: the connection carries a goodput stream.
    Stream = 6,
    /// TCP: the connection carries round trips.
    Echo = 7,
    /// TCP: the receiver's summary of a stream.
    Summary = 8,
    /// UDP: how far the server has received a paced stream.
    Credit = 9,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Start,
            2 => Kind::Data,
            3 => Kind::Ping,
            4 => Kind::End,
            5 => Kind::EndAck,
            6 => Kind::Stream,
            7 => Kind::Echo,
            8 => Kind::Summary,
            9 => Kind::Credit,
            _ => return None,
        })
    }
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The kind.
    pub kind: Kind,
    /// Session, message number or message size, by kind.
    pub value: u64,
}

impl Header {
    /// Splits `bytes` into a header and what follows it; `None` if it does not start with one.
    pub fn parse(bytes: &[u8]) -> Option<(Header, &[u8])> {
        let (head, rest) = bytes.split_at_checked(HEADER_LEN)?;
        if head[..4] != MAGIC || head[5..8] != [0; 3] {
            return None;
        }
        let kind = Kind::from_u8(head[4])?;
        let value = read_u64(&head[8..16])?;
        Some((Header { kind, value }, rest))
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out` (which must hold them).
    pub fn emit(&self, out: &mut [u8]) {
        if let Some(head) = out.get_mut(..HEADER_LEN) {
            head[..4].copy_from_slice(&MAGIC);
            head[4] = self.kind as u8;
            head[5..8].fill(0);
            head[8..16].copy_from_slice(&self.value.to_le_bytes());
        }
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        self.emit(&mut out);
        out
    }
}

/// A little-endian `u64` from the first 8 bytes of `bytes`.
pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// What the receiving side of a goodput measurement saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages received intact (each counted once).
    pub received: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Nanoseconds from the first message's arrival to the last's.
    pub elapsed_ns: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages (or TCP words) that did not check out.
    pub bad: u64,
}

impl Summary {
    /// The summary as bytes.
    pub fn to_bytes(&self) -> [u8; SUMMARY_LEN] {
        let mut out = [0; SUMMARY_LEN];
        let fields = [
            self.received,
            self.bytes,
            self.elapsed_ns,
            self.duplicates,
            self.bad,
        ];
        for (chunk, field) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&field.to_le_bytes());
        }
        out
    }

    /// Reads a summary from the first [`SUMMARY_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<Summary> {
        let field = |index: usize| read_u64(bytes.get(index * 8..)?);
        Some(Summary {
            received: field(0)?,
            bytes: field(1)?,
            elapsed_ns: field(2)?,
            duplicates: field(3)?,
            bad: field(4)?,
        })
    }
}

/// Word `index` (from 0) of message `message`'s pattern.
fn word(message: u64, index: usize) -> u64 {
    message
        .wrapping_mul(MIX_MESSAGE)
        .wrapping_add((index as u64 + 1).wrapping_mul(MIX_WORD))
}

/// Fills `bytes` with message `message`'s pattern: 8-byte little-endian words, the last one
/// cut short if the length is not a multiple of 8.
pub fn fill(bytes: &mut [u8], message: u64) {
    let mut value = message.wrapping_mul(MIX_MESSAGE);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        value = value.wrapping_add(MIX_WORD);
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    let tail = chunks.into_remainder();
    value = value.wrapping_add(MIX_WORD);
    let tail_len = tail.len();
    tail.copy_from_slice(&value.to_le_bytes()[..tail_len]);
}

/// Whether `bytes` hold message `message`'s pattern (see [`fill`]).
pub fn check(bytes: &[u8], message: u64) -> bool {
    let mut value = message.wrapping_mul(MIX_MESSAGE);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        value = value.wrapping_add(MIX_WORD);
        if read_u64(chunk) != Some(value) {
            return false;
        }
    }
    let tail = chunks.remainder();
    value = value.wrapping_add(MIX_WORD);
    *tail == value.to_le_bytes()[..tail.len()]
}

/// Fills `bytes` with TCP message `message` (see the [module docs](self)); `last` marks the
/// last message of a stream. `bytes` must hold at least 8.
pub fn fill_tcp_message(bytes: &mut [u8], message: u64, last: bool) {
    fill(bytes, message);
    let first = if last {
        message | LAST_MESSAGE
    } else {
        message
    };
    if let Some(head) = bytes.get_mut(..8) {
        head.copy_from_slice(&first.to_le_bytes());
    }
}

/// Checks a TCP byte stream of messages of one size as it arrives, in pieces of any length.
#[derive(Clone, Debug)]
pub struct StreamChecker {
    size: usize,
    message: u64,
    offset: usize,
    word: [u8; 8],
    last_seen: bool,
    finished: bool,
    bytes: u64,
    bad: u64,
}

impl StreamChecker {
    /// A checker for messages of `size` bytes (from [`MIN_SIZE`] to [`MAX_TCP_SIZE`]).
    pub fn new(size: usize) -> StreamChecker {
        StreamChecker {
            size: size.clamp(MIN_SIZE, MAX_TCP_SIZE),
            message: 0,
            offset: 0,
            word: [0; 8],
            last_seen: false,
            finished: false,
            bytes: 0,
            bad: 0,
        }
    }

    /// Messages completed.
    pub fn messages(&self) -> u64 {
        self.message
    }

    /// Bytes taken.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Words that did not check out, and bytes after the last message.
    pub fn bad(&self) -> u64 {
        self.bad
    }

    /// Whether the last message has arrived whole.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Checks the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.finished {
                self.bad += data.len() as u64;
                return;
            }
            let in_word = self.offset % 8;
            let word_start = self.offset - in_word;
            let word_len = (self.size - word_start).min(8);
            if in_word == 0 && word_start > 0 && word_len == 8 && data.len() >= 8 {
                // Whole words in place: compare them directly.
                let words = (data.len() / 8).min((self.size - self.offset) / 8);
                let first = self.offset / 8;
                for (index, chunk) in (first..).zip(data[..words * 8].chunks_exact(8)) {
                    if read_u64(chunk) != Some(word(self.message, index)) {
                        self.bad += 1;
                    }
                }
                self.advance(words * 8);
                data = &data[words * 8..];
                continue;
            }
            let take = (word_len - in_word).min(data.len());
            self.word[in_word..in_word + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if in_word + take == word_len {
                self.check_word(word_start / 8, word_len);
            }
            self.advance(take);
        }
    }

    fn check_word(&mut self, index: usize, len: usize) {
        let got = &self.word[..len];
        if index == 0 {
            // The message number, with the last-message flag.
            let value = u64::from_le_bytes(self.word);
            if value & !LAST_MESSAGE == self.message {
                self.last_seen = value & LAST_MESSAGE != 0;
            } else {
                self.bad += 1;
            }
        } else if *got != word(self.message, index).to_le_bytes()[..len] {
            self.bad += 1;
        }
    }

    fn advance(&mut self, count: usize) {
        self.offset += count;
        self.bytes += count as u64;
        if self.offset == self.size {
            self.offset = 0;
            self.message += 1;
            if self.last_seen {
                self.finished = true;
            }
        }
    }
}

/// A control message for tests: the header of `kind` with `value`, then `words`
/// little-endian.
#[cfg(test)]
pub(crate) fn control(kind: Kind, value: u64, words: &[u64]) -> alloc::vec::Vec<u8> {
    let mut out = Header { kind, value }.to_bytes().to_vec();
    for word in words {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let header = Header {
            kind: Kind::Ping,
            value: 0x0102_0304_0506_0708,
        };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(b"rest");
        assert_eq!(Header::parse(&bytes), Some((header, &b"rest"[..])));
        assert_eq!(&bytes[..8], b"dnb1\x03\0\0\0");
        assert_eq!(Header::parse(&bytes[..15]), None);
        bytes[4] = 99;
        assert_eq!(Header::parse(&bytes), None);
        bytes[4] = 3;
        bytes[6] = 1;
        assert_eq!(Header::parse(&bytes), None);
    }

    #[test]
    fn summary_round_trips() {
        let summary = Summary {
            received: 1,
            bytes: 2,
            elapsed_ns: 3,
            duplicates: 4,
            bad: 5,
        };
        assert_eq!(Summary::parse(&summary.to_bytes()), Some(summary));
        assert_eq!(Summary::parse(&summary.to_bytes()[..39]), None);
    }

    #[test]
    fn patterns_check_and_differ_per_message() {
        for len in [0, 1, 7, 8, 9, 1472] {
            let mut bytes = vec![0u8; len];
            fill(&mut bytes, 42);
            assert!(check(&bytes, 42));
            if len > 0 {
                assert!(!check(&bytes, 43));
                bytes[len - 1] ^= 1;
                assert!(!check(&bytes, 42));
            }
        }
    }

    fn stream(size: usize, count: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for message in 0..count {
            let mut bytes = vec![0u8; size];
            fill_tcp_message(&mut bytes, message, message + 1 == count);
            out.extend_from_slice(&bytes);
        }
        out
    }

    #[test]
    fn stream_checker_takes_any_split() {
        for size in [16, 21, 64, 1000] {
            let data = stream(size, 5);
            for piece in [1, 3, 8, 13, 64, 4096] {
                let mut checker = StreamChecker::new(size);
                for chunk in data.chunks(piece) {
                    checker.feed(chunk);
                }
                assert!(checker.finished(), "size {size} piece {piece}");
                assert_eq!(checker.bad(), 0, "size {size} piece {piece}");
                assert_eq!(checker.messages(), 5);
                assert_eq!(checker.bytes(), data.len() as u64);
            }
        }
    }

    #[test]
    fn stream_checker_finds_damage_and_extra_bytes() {
        let mut data = stream(100, 3);
        data[150] ^= 0x10;
        let mut checker = StreamChecker::new(100);
        checker.feed(&data);
        assert!(checker.finished());
        assert_eq!(checker.bad(), 1);
        checker.feed(b"more");
        assert_eq!(checker.bad(), 5);

        let mut skipped = stream(100, 3);
        skipped.drain(100..200);
        let mut checker = StreamChecker::new(100);
        checker.feed(&skipped);
        assert!(checker.bad() > 0);
    }
}
