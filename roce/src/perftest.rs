//! Out-of-band connection set-up in the format of perftest (`ib_write_bw`, `ib_send_bw`,
//! `ib_read_lat`, `ib_write_lat`, `ib_atomic_lat`), so that perftest on a Linux host can be the
//! server of duovm's tests.
//!
//! Checked against perftest 4.5-0.17 (its protocol version "6.06"), `src/perftest_communication.c`
//! (`exchange_versions`, `check_sys_data`, `check_mtu`, `ctx_hand_shake`, `ethernet_write_keys`,
//! `ethernet_read_keys`, `xchg_bw_reports`, `ctx_close_connection`) and the tests' `main`s.
//!
//! # The exchange
//!
//! Over TCP, port 18515. Every step is an *exchange* of two equal-sized messages: the client
//! writes its message and then reads the server's; the server reads and then writes. In order:
//!
//! 1. the version, [`VERSION_LEN`] (16) bytes, NUL-padded text such as `"6.06"`; the reader
//!    compares it as a decimal number ([`version_hundredths`]);
//! 2. if the peer's version is at least 5.32, the "system data": the cycle buffer (page size)
//!    and then the cache line size, each a big-endian `i32`, each its own exchange; both sides
//!    use the larger values;
//! 3. if at least 5.1, the MTU: `sprintf("%d", enum ibv_mtu)` in 2 bytes (4 before 5.31),
//!    e.g. `"3\0"` for 1024 ([`mtu_message`]); both sides use the smaller one;
//! 4. *handshakes*: each side's [`Keys`] (LID, outstanding reads, QPN, PSN, rkey, virtual
//!    address, GID, SRQ number) in [`KEYS_LEN`] (108) bytes, repeated as a barrier. Only the
//!    first carries information; the others repeat it. The number of handshakes before the
//!    traffic depends on the test ([`setup_handshakes`]); each side moves its QP to RTR and
//!    RTS once it has the peer's keys;
//! 5. the traffic; the client targets the server's rkey and address from the keys;
//! 6. for `ib_write_bw` (the server waits for the client): one more handshake, then the
//!    client's bandwidth report ([`BwReport`], five 8-byte exchanges);
//! 7. closing ([`closes`]): one more handshake; then each side writes `"done"` and its NUL
//!    and closes. `ib_write_lat` skips this and just ends.
//!
//! The key message needs a GID index on both sides (`-x` in perftest): without one perftest
//! sends 59 bytes and no GID, which cannot address a RoCE peer.

use core::fmt::Write;

use crate::oob::{Cursor, OobError, c_text, hex_field};
use crate::verbs::{Gid, Mtu};

/// Bytes of the version message.
pub const VERSION_LEN: usize = 16;

/// The protocol version this implementation speaks (that of perftest 4.5-0.17).
pub const VERSION: [u8; VERSION_LEN] = *b"6.06\0\0\0\0\0\0\0\0\0\0\0\0";

/// Bytes of a key message with a GID: 107 characters and the NUL.
pub const KEYS_LEN: usize = 108;

/// Bytes of the MTU message (peers from version 5.31 on).
pub const MTU_LEN: usize = 2;

/// Bytes of each bandwidth report exchange.
pub const REPORT_FIELD_LEN: usize = 8;

/// The final message of each side: `"done"` and its NUL.
pub const DONE: [u8; 5] = *b"done\0";

/// The cycle buffer duovm announces: the page size.
pub const CYCLE_BUFFER: i32 = 4096;

/// The cache line size duovm announces.
pub const CACHE_LINE: i32 = 64;

/// The perftest programs duovm can be the client of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `ib_write_bw`.
    WriteBw,
    /// `ib_send_bw`.
    SendBw,
    /// `ib_read_lat`.
    ReadLat,
    /// `ib_write_lat`.
    WriteLat,
    /// `ib_atomic_lat`.
    AtomicLat,
}

/// Handshakes both sides make before the traffic starts.
pub const fn setup_handshakes(program: Program) -> usize {
    match program {
        // One with the keys, one "remote" print, one after RTR.
        Program::WriteBw => 3,
        // `ib_send_bw` adds one after the server posted its receives; the latency tests
        // shake hands once more before the per-QP exchange.
        Program::SendBw | Program::ReadLat | Program::WriteLat | Program::AtomicLat => 4,
    }
}

/// Whether the program closes with a last handshake and `"done"` (`ib_write_lat` just ends
/// after the traffic).
pub const fn closes(program: Program) -> bool {
    !matches!(program, Program::WriteLat)
}

/// The version as `atof` reads it, in hundredths (`"6.06"` is 606, `"5.1"` is 510); `None` if
/// it does not start with a number.
pub fn version_hundredths(message: &[u8]) -> Option<u32> {
    let text = c_text(message);
    let text = text.trim_ascii_start();
    let integer_len = text.iter().take_while(|byte| byte.is_ascii_digit()).count();
    if integer_len == 0 || integer_len > 6 {
        return None;
    }
    let integer = text[..integer_len]
        .iter()
        .fold(0u32, |value, byte| value * 10 + u32::from(byte - b'0'));
    let mut fraction = 0;
    if text.get(integer_len) == Some(&b'.') {
        let digits = text[integer_len + 1..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit());
        for (place, byte) in digits.take(2).enumerate() {
            fraction += u32::from(byte - b'0') * if place == 0 { 10 } else { 1 };
        }
    }
    Some(integer * 100 + fraction)
}

/// The `enum ibv_mtu` value of `mtu` (1 for 256 up to 5 for 4096).
pub const fn mtu_enum(mtu: Mtu) -> u8 {
    match mtu {
        Mtu::Mtu256 => 1,
        Mtu::Mtu512 => 2,
        Mtu::Mtu1024 => 3,
        Mtu::Mtu2048 => 4,
        Mtu::Mtu4096 => 5,
    }
}

/// The MTU message: the `enum ibv_mtu` digit and a NUL.
pub const fn mtu_message(mtu: Mtu) -> [u8; MTU_LEN] {
    [b'0' + mtu_enum(mtu), 0]
}

/// The MTU a peer's message names (`strtol`; `None` if it is not a valid `enum ibv_mtu`).
pub fn parse_mtu(message: &[u8]) -> Option<Mtu> {
    match message.first()? {
        b'1' => Some(Mtu::Mtu256),
        b'2' => Some(Mtu::Mtu512),
        b'3' => Some(Mtu::Mtu1024),
        b'4' => Some(Mtu::Mtu2048),
        b'5' => Some(Mtu::Mtu4096),
        _ => None,
    }
    .filter(|_| matches!(message.get(1), None | Some(0)))
}

/// One side's description of its QP and memory: `struct pingpong_dest` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys {
    /// Local identifier: 0 on RoCE.
    pub lid: u16,
    /// Outstanding RDMA READs / atomics this side accepts (its `max_dest_rd_atomic`).
    pub out_reads: u16,
    /// QP number (24 bits).
    pub qpn: u32,
    /// First PSN this side sends (24 bits).
    pub psn: u32,
    /// The remote key of its buffer.
    pub rkey: u32,
    /// The virtual address the peer targets.
    pub vaddr: u64,
    /// GID.
    pub gid: Gid,
    /// SRQ number (0 without an SRQ).
    pub srqn: u32,
}

impl Keys {
    /// The 108-byte message: `"%04x:%04x:%06x:%06x:%08x:%016llx:"`, the 16 GID bytes as
    /// `"%02x:"` each, `"%08x:"` and the NUL.
    pub fn to_message(&self) -> [u8; KEYS_LEN] {
        let mut message = [0u8; KEYS_LEN];
        let mut cursor = Cursor::new(&mut message[..KEYS_LEN - 1]);
        // Every field is printed at its full width, so the text is exactly 107 characters.
        let _ = write!(
            cursor,
            "{:04x}:{:04x}:{:06x}:{:06x}:{:08x}:{:016x}:",
            self.lid,
            self.out_reads,
            self.qpn & 0xff_ffff,
            self.psn & 0xff_ffff,
            self.rkey,
            self.vaddr
        );
        for byte in self.gid.0 {
            let _ = write!(cursor, "{byte:02x}:");
        }
        let _ = write!(cursor, "{:08x}:", self.srqn);
        message
    }

    /// Reads a key message with a GID (the text up to its first NUL, or all of it).
    pub fn from_message(message: &[u8]) -> Result<Self, OobError> {
        let text = c_text(message);
        let mut fields = text.split(|&byte| byte == b':');
        let mut next =
            |max_digits| hex_field(fields.next().ok_or(OobError::Malformed)?, max_digits);
        let lid = next(4)?;
        let out_reads = next(4)?;
        let qpn = next(8)?;
        let psn = next(8)?;
        let rkey = next(8)? as u32;
        let vaddr = next(16)?;
        let mut gid = [0u8; 16];
        for byte in &mut gid {
            *byte = next(2)? as u8;
        }
        let srqn = next(8)? as u32;
        if qpn > 0xff_ffff || psn > 0xff_ffff {
            return Err(OobError::OutOfRange);
        }
        Ok(Keys {
            lid: lid as u16,
            out_reads: out_reads as u16,
            qpn: qpn as u32,
            psn: psn as u32,
            rkey,
            vaddr,
            gid: Gid(gid),
            srqn,
        })
    }
}

/// The client's bandwidth figures, which the `ib_write_bw` server prints as its result.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BwReport {
    /// Message size in bytes.
    pub size: u64,
    /// Messages.
    pub iters: u64,
    /// Peak bandwidth, MiB/s.
    pub bw_peak: f64,
    /// Average bandwidth, MiB/s.
    pub bw_avg: f64,
    /// Message rate, millions per second.
    pub msg_rate: f64,
}

impl BwReport {
    /// The five 8-byte messages, in exchange order: integers big-endian, doubles byte-swapped
    /// as 64-bit words (`bswap_64` on a little-endian host), i.e. their bits big-endian.
    pub fn to_messages(&self) -> [[u8; REPORT_FIELD_LEN]; 5] {
        [
            self.size.to_be_bytes(),
            self.iters.to_be_bytes(),
            self.bw_peak.to_bits().to_be_bytes(),
            self.bw_avg.to_bits().to_be_bytes(),
            self.msg_rate.to_bits().to_be_bytes(),
        ]
    }

    /// Reads the five messages.
    pub fn from_messages(messages: &[[u8; REPORT_FIELD_LEN]; 5]) -> Self {
        let word = |index: usize| u64::from_be_bytes(messages[index]);
        BwReport {
            size: word(0),
            iters: word(1),
            bw_peak: f64::from_bits(word(2)),
            bw_avg: f64::from_bits(word(3)),
            msg_rate: f64::from_bits(word(4)),
        }
    }
}

/// Whether `message` is a peer's final `"done"` (with or without its NUL).
pub fn is_done(message: &[u8]) -> bool {
    message == DONE || message == &DONE[..4]
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn sizes_are_those_of_the_formats() {
        let template = "0000:0000:000000:000000:00000000:0000000000000000:\
             00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00000000:";
        assert_eq!(template.len() + 1, KEYS_LEN);
        assert_eq!(&VERSION[..5], b"6.06\0");
    }

    /// What `sprintf(KEY_PRINT_FMT_GID, ...)` gives for rxe's QP 0x11 at 10.77.0.1 with
    /// rkey 0x1a2b, buffer 0x5604_3c7d_1000 (written out by hand).
    #[test]
    fn golden_keys() {
        let keys = Keys {
            lid: 0,
            out_reads: 0x80,
            qpn: 0x11,
            psn: 0x3a5f1c,
            rkey: 0x1a2b,
            vaddr: 0x5604_3c7d_1000,
            gid: Gid::from_ipv4(Ipv4Addr::new(10, 77, 0, 1)),
            srqn: 0,
        };
        let expected: &[u8; KEYS_LEN] = b"0000:0080:000011:3a5f1c:00001a2b:000056043c7d1000:\
00:00:00:00:00:00:00:00:00:00:ff:ff:0a:4d:00:01:00000000:\0";
        assert_eq!(&keys.to_message(), expected);
        assert_eq!(Keys::from_message(expected), Ok(keys));
    }

    #[test]
    fn keys_errors() {
        let good = Keys {
            lid: 0,
            out_reads: 1,
            qpn: 0x11,
            psn: 1,
            rkey: 2,
            vaddr: 3,
            gid: Gid::from_ipv4(Ipv4Addr::new(10, 0, 0, 1)),
            srqn: 0,
        }
        .to_message();
        let mut bad = good;
        bad[10] = b'x';
        assert_eq!(Keys::from_message(&bad), Err(OobError::Malformed));
        assert_eq!(Keys::from_message(&good[..60]), Err(OobError::Malformed));
        let mut big = good;
        big[10..16].copy_from_slice(b"000000");
        big[10] = b'1';
        big[9] = b'1';
        assert!(Keys::from_message(&big).is_err());
        // The 59-byte format without a GID is refused.
        assert_eq!(
            Keys::from_message(b"0000:0001:000011:000001:00000002:0000000000000003:00000000\0"),
            Err(OobError::Malformed)
        );
    }

    #[test]
    fn versions_compare_as_atof_does() {
        assert_eq!(version_hundredths(&VERSION), Some(606));
        assert_eq!(version_hundredths(b"5.1\0"), Some(510));
        assert_eq!(version_hundredths(b"5.33"), Some(533));
        assert_eq!(version_hundredths(b"6\0"), Some(600));
        assert_eq!(version_hundredths(b"x.1"), None);
        assert_eq!(version_hundredths(b""), None);
    }

    #[test]
    fn mtu_messages() {
        assert_eq!(&mtu_message(Mtu::Mtu1024), b"3\0");
        assert_eq!(parse_mtu(b"3\0"), Some(Mtu::Mtu1024));
        assert_eq!(parse_mtu(b"5\0"), Some(Mtu::Mtu4096));
        assert_eq!(parse_mtu(b"7\0"), None);
        assert_eq!(parse_mtu(b"35"), None);
    }

    #[test]
    fn report_round_trip() {
        let report = BwReport {
            size: 65536,
            iters: 1000,
            bw_peak: 120.5,
            bw_avg: 110.25,
            msg_rate: 0.001764,
        };
        let messages = report.to_messages();
        assert_eq!(messages[0], [0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(messages[1], [0, 0, 0, 0, 0, 0, 3, 0xe8]);
        assert_eq!(messages[2], 120.5f64.to_bits().to_be_bytes());
        assert_eq!(BwReport::from_messages(&messages), report);
    }
}
