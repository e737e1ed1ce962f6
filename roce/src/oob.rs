//! Out-of-band connection set-up in the format of `ibv_rc_pingpong`, so that a Linux host
//! running `ibv_rc_pingpong` over rdma_rxe can be the peer.
//!
//! Checked against rdma-core `libibverbs/examples/rc_pingpong.c` (`pp_client_exch_dest`,
//! `pp_server_exch_dest`, `pp_connect_ctx`, `main`) and `pingpong.c` (`gid_to_wire_gid`,
//! `wire_gid_to_gid`).
//!
//! # The exchange
//!
//! Over TCP, port [`DEFAULT_PORT`] (18515). Each side describes its QP in one message of
//! exactly [`MESSAGE_LEN`] (52) bytes: `sprintf(msg, "%04x:%06x:%06x:%s", lid, qpn, psn,
//! gid)` into `char msg[sizeof "0000:000000:000000:00000000000000000000000000000000"]`,
//! i.e. 51 characters and the terminating NUL, all 52 bytes written. The GID is 32 lowercase
//! hex digits: `gid_to_wire_gid` prints each of the four 32-bit words of the GID, read in host
//! order and passed through `htonl`, with `%08x`, which gives the 16 bytes of the GID in
//! network order on any host. The LID is 0 on RoCE; the PSN is `lrand48() & 0xffffff`.
//!
//! * The **client** connects, writes its 52 bytes, reads the server's 52 bytes, writes
//!   `"done"` with its NUL ([`DONE`], `sizeof "done"` = 5 bytes), then parses the server's
//!   message (`sscanf("%x:%x:%x:%s")`) and moves its QP to RTR and RTS.
//! * The **server** accepts, reads the client's 52 bytes, parses them, moves its QP to RTR
//!   and RTS (before answering, so the client's first SEND finds it ready), writes its own 52
//!   bytes and reads the client's 5-byte `"done"`.
//!
//! [`Destination::to_message`] and [`Destination::from_message`] make and read the message;
//! [`Destination::rtr_attr`] and [`rts_attr`] give the attributes `pp_connect_ctx` uses.
//!
//! # What `ibv_rc_pingpong` then does (to mirror it)
//!
//! Options and defaults: `-p` port 18515, `-s` size 4096 bytes, `-m` MTU 1024, `-r` rx depth
//! 500, `-n` iterations 1000, `-g` GID index (needed on RoCE: without it the GID sent is all
//! zeros, the address vector has no GRH and rxe cannot send; give the index of the
//! IPv4-mapped RoCEv2 GID of the rxe device, as `ibv_devinfo -v` lists it).
//!
//! * One buffer of `size` bytes filled with `0x7b`, registered with `IBV_ACCESS_LOCAL_WRITE`
//!   only (so the peer may not RDMA into it), used for sending and receiving alike; one CQ
//!   of `rx_depth + 1` entries for both queues; an RC QP with `max_send_wr` 1, `max_recv_wr`
//!   `rx_depth`, one SGE each; QP access flags 0 at INIT; every SEND is signaled and inline
//!   when `size` fits the QP's inline limit.
//! * Before connecting each side posts `rx_depth` receives of the whole buffer (wr_id 1,
//!   `PINGPONG_RECV_WRID`), and reposts up to `rx_depth` whenever one or none is left.
//! * RTR: `path_mtu` from `-m`, the peer's QPN and PSN, `max_dest_rd_atomic` 1,
//!   `min_rnr_timer` 12, an address vector with the peer's GID, `hop_limit` 1 (rxe sends it
//!   as the IPv4 TTL) and the local GID index. RTS: `timeout` 14, `retry_cnt` 7,
//!   `rnr_retry` 7, `sq_psn` its own PSN, `max_rd_atomic` 1.
//! * The client posts the first SEND (wr_id 2, `PINGPONG_SEND_WRID`, `size` bytes of the
//!   buffer). Each side posts its next SEND when both its previous SEND and a receive have
//!   completed, so the server answers every message with one of its own, until `iters`
//!   messages went each way. The data is not checked. A completion with an error status
//!   ends the program. Each side prints `"%lld bytes in %.2f seconds = %.2f Mbit/sec"`
//!   (bytes = `size * iters * 2`) and `"%d iters in %.2f seconds = %.2f usec/iter"`.

use crate::verbs::{AccessFlags, AhAttr, Gid, Mtu, QpAttr, QpAttrMask, QpState};
use core::fmt::Write;

/// The TCP port `ibv_rc_pingpong` listens on and connects to.
pub const DEFAULT_PORT: u16 = 18515;

/// Length of a QP description message, terminating NUL included.
pub const MESSAGE_LEN: usize = 52;

/// The client's final message: `"done"` and its NUL.
pub const DONE: [u8; 5] = *b"done\0";

/// The byte `ibv_rc_pingpong` fills its buffer with.
pub const FILL_BYTE: u8 = 0x7b;

/// Why a message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OobError {
    /// The fields are not `hex:hex:hex:32 hex digits`.
    #[error("malformed connection message")]
    Malformed,
    /// A field is out of range (LID above 16 bits, QPN or PSN above 24 bits).
    #[error("connection message field out of range")]
    OutOfRange,
}

/// What one side tells the other: `struct pingpong_dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Local identifier: 0 on RoCE.
    pub lid: u16,
    /// QP number (24 bits).
    pub qpn: u32,
    /// First PSN the side sends (24 bits).
    pub psn: u32,
    /// GID.
    pub gid: Gid,
}

/// The GID as `gid_to_wire_gid` writes it: 32 lowercase hex digits, bytes in network order.
pub fn gid_to_wire(gid: &Gid) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut wire = [0u8; 32];
    for (index, byte) in gid.0.iter().enumerate() {
        wire[2 * index] = HEX[usize::from(byte >> 4)];
        wire[2 * index + 1] = HEX[usize::from(byte & 0xf)];
    }
    wire
}

/// The GID of 32 hex digits (either case), as `wire_gid_to_gid` reads it.
pub fn wire_to_gid(wire: &[u8]) -> Result<Gid, OobError> {
    if wire.len() != 32 {
        return Err(OobError::Malformed);
    }
    let mut gid = [0u8; 16];
    for (index, pair) in wire.chunks_exact(2).enumerate() {
        gid[index] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Ok(Gid(gid))
}

fn hex_digit(byte: u8) -> Result<u8, OobError> {
    match byte {
        b'0'..=b'9' => Ok(byte - b'0'),
        b'a'..=b'f' => Ok(byte - b'a' + 10),
        b'A'..=b'F' => Ok(byte - b'A' + 10),
        _ => Err(OobError::Malformed),
    }
}

/// The text of a C string: up to its first NUL, or all of it.
pub(crate) fn c_text(message: &[u8]) -> &[u8] {
    message
        .iter()
        .position(|&byte| byte == 0)
        .map_or(message, |end| &message[..end])
}

/// A hex number of 1 to `max_digits` digits, as `%x` and `strtol(.., 16)` read a well-formed
/// one (leading blanks allowed).
pub(crate) fn hex_field(field: &[u8], max_digits: usize) -> Result<u64, OobError> {
    let digits = field.trim_ascii_start();
    if digits.is_empty() || digits.len() > max_digits {
        return Err(OobError::Malformed);
    }
    digits.iter().try_fold(0u64, |value, &byte| {
        Ok((value << 4) | u64::from(hex_digit(byte)?))
    })
}

/// A hex number of 1 to 8 digits.
fn hex_number(field: &[u8]) -> Result<u32, OobError> {
    hex_field(field, 8).map(|value| value as u32)
}

/// Formats into a fixed buffer.
pub(crate) struct Cursor<'a> {
    buffer: &'a mut [u8],
    written: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buffer`.
    pub(crate) fn new(buffer: &'a mut [u8]) -> Self {
        Cursor { buffer, written: 0 }
    }
}

impl Write for Cursor<'_> {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let end = self.written + text.len();
        self.buffer
            .get_mut(self.written..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(text.as_bytes());
        self.written = end;
        Ok(())
    }
}

impl Destination {
    /// The 52-byte message: `"%04x:%06x:%06x:%s"` and a NUL. QPN and PSN are masked to 24
    /// bits.
    pub fn to_message(&self) -> [u8; MESSAGE_LEN] {
        let mut message = [0u8; MESSAGE_LEN];
        let mut cursor = Cursor::new(&mut message[..MESSAGE_LEN - 1]);
        // 4 + 1 + 6 + 1 + 6 + 1 digits and separators fit the 19 bytes before the GID.
        let _ = write!(
            cursor,
            "{:04x}:{:06x}:{:06x}:",
            self.lid,
            self.qpn & 0xff_ffff,
            self.psn & 0xff_ffff
        );
        message[19..51].copy_from_slice(&gid_to_wire(&self.gid));
        message
    }

    /// Reads a message (the text up to its first NUL, or all of it).
    pub fn from_message(message: &[u8]) -> Result<Self, OobError> {
        let text = c_text(message);
        let mut fields = text.splitn(4, |&byte| byte == b':');
        let mut next = || fields.next().ok_or(OobError::Malformed);
        let lid = hex_number(next()?)?;
        let qpn = hex_number(next()?)?;
        let psn = hex_number(next()?)?;
        // `%s` stops at white space.
        let gid_text = next()?;
        let gid_text = gid_text
            .iter()
            .position(u8::is_ascii_whitespace)
            .map_or(gid_text, |end| &gid_text[..end]);
        let gid = wire_to_gid(gid_text)?;
        if lid > 0xffff || qpn > 0xff_ffff || psn > 0xff_ffff {
            return Err(OobError::OutOfRange);
        }
        Ok(Destination {
            lid: lid as u16,
            qpn,
            psn,
            gid,
        })
    }

    /// The INIT -> RTR attributes `pp_connect_ctx` sets to reach this destination, with
    /// `mtu`, and the mask. The address vector uses hop limit 64 (rc_pingpong sets 1).
    pub fn rtr_attr(&self, mtu: Mtu) -> (QpAttr, QpAttrMask) {
        let attr = QpAttr {
            qp_state: QpState::Rtr,
            path_mtu: mtu,
            dest_qp_num: self.qpn,
            rq_psn: self.psn,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            ah_attr: AhAttr::global(self.gid),
            ..QpAttr::default()
        };
        (attr, QpAttrMask::RTR_REQUIRED)
    }
}

/// The RESET -> INIT attributes `pp_init_ctx` sets (port 1, P_Key index 0), with the remote
/// access the peer gets, and the mask.
pub fn init_attr(access: AccessFlags) -> (QpAttr, QpAttrMask) {
    let attr = QpAttr {
        qp_state: QpState::Init,
        port_num: 1,
        pkey_index: 0,
        qp_access_flags: access,
        ..QpAttr::default()
    };
    (attr, QpAttrMask::INIT_REQUIRED)
}

/// The RTR -> RTS attributes `pp_connect_ctx` sets, with `sq_psn` the PSN this side sent in
/// its message, and the mask.
pub fn rts_attr(sq_psn: u32) -> (QpAttr, QpAttrMask) {
    let attr = QpAttr {
        qp_state: QpState::Rts,
        timeout: 14,
        retry_cnt: 7,
        rnr_retry: 7,
        sq_psn: sq_psn & 0xff_ffff,
        max_rd_atomic: 1,
        ..QpAttr::default()
    };
    (attr, QpAttrMask::RTS_REQUIRED)
}

/// Whether `message` is the client's final `"done"` (with or without its NUL).
pub fn is_done(message: &[u8]) -> bool {
    message == DONE || message == &DONE[..4]
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn message_is_sizeof_the_template() {
        assert_eq!(
            "0000:000000:000000:00000000000000000000000000000000".len() + 1,
            MESSAGE_LEN
        );
        assert_eq!(DONE.len(), "done".len() + 1);
    }

    /// What `sprintf("%04x:%06x:%06x:%s")` with `gid_to_wire_gid` gives for rxe's QP 0x11,
    /// PSN 0x3a5f1c and GID ::ffff:192.168.122.10 (written out by hand: the GID's bytes in
    /// order, 00 x10, ff ff, c0 a8 7a 0a).
    #[test]
    fn golden_message() {
        let destination = Destination {
            lid: 0,
            qpn: 0x11,
            psn: 0x3a5f1c,
            gid: Gid::from_ipv4(Ipv4Addr::new(192, 168, 122, 10)),
        };
        let expected = b"0000:000011:3a5f1c:00000000000000000000ffffc0a87a0a\0";
        assert_eq!(&destination.to_message(), expected);
        assert_eq!(Destination::from_message(expected), Ok(destination));
    }

    #[test]
    fn golden_link_local_gid() {
        // An IPv6 GID fe80::5054:ff:fe12:3456 as rdma-core prints it.
        let gid = Gid([
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56,
        ]);
        assert_eq!(&gid_to_wire(&gid), b"fe80000000000000505400fffe123456");
        assert_eq!(wire_to_gid(b"FE80000000000000505400FFFE123456"), Ok(gid));
        let destination = Destination {
            lid: 0x1234,
            qpn: 0xabcdef,
            psn: 0xffffff,
            gid,
        };
        let message = destination.to_message();
        assert_eq!(
            &message,
            b"1234:abcdef:ffffff:fe80000000000000505400fffe123456\0"
        );
        assert_eq!(Destination::from_message(&message), Ok(destination));
    }

    #[test]
    fn sscanf_leniency_and_errors() {
        // %x accepts fewer digits; the message may lack its NUL.
        let parsed = Destination::from_message(b"0:11:5:00000000000000000000ffff0a000001").unwrap();
        assert_eq!((parsed.lid, parsed.qpn, parsed.psn), (0, 0x11, 5));
        assert_eq!(parsed.gid.to_ipv4(), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            Destination::from_message(b"0000:000011:000005"),
            Err(OobError::Malformed)
        );
        assert_eq!(
            Destination::from_message(b"0000:0000g1:000005:00000000000000000000ffff0a000001"),
            Err(OobError::Malformed)
        );
        assert_eq!(
            Destination::from_message(b"0000:1000000:000005:00000000000000000000ffff0a000001"),
            Err(OobError::OutOfRange)
        );
        assert_eq!(
            Destination::from_message(b"0000:000011:000005:00000000000000000000ffff0a0000"),
            Err(OobError::Malformed)
        );
        assert!(is_done(b"done\0"));
        assert!(!is_done(b"don\0"));
    }

    #[test]
    fn connect_attributes_match_pp_connect_ctx() {
        let destination = Destination {
            lid: 0,
            qpn: 0x11,
            psn: 0x123456,
            gid: Gid::from_ipv4(Ipv4Addr::new(10, 0, 0, 2)),
        };
        let (rtr, mask) = destination.rtr_attr(Mtu::Mtu1024);
        assert_eq!(mask, QpAttrMask::RTR_REQUIRED);
        assert_eq!(
            (
                rtr.dest_qp_num,
                rtr.rq_psn,
                rtr.max_dest_rd_atomic,
                rtr.min_rnr_timer
            ),
            (0x11, 0x123456, 1, 12)
        );
        let (rts, mask) = rts_attr(0x654321);
        assert_eq!(mask, QpAttrMask::RTS_REQUIRED);
        assert_eq!(
            (
                rts.timeout,
                rts.retry_cnt,
                rts.rnr_retry,
                rts.sq_psn,
                rts.max_rd_atomic
            ),
            (14, 7, 7, 0x654321, 1)
        );
        let (init, mask) = init_attr(AccessFlags::REMOTE_WRITE);
        assert_eq!(mask, QpAttrMask::INIT_REQUIRED);
        assert_eq!(
            (init.qp_state, init.port_num, init.qp_access_flags),
            (QpState::Init, 1, AccessFlags::REMOTE_WRITE)
        );
    }
}
