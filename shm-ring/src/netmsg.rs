//! The network service protocol between OS A and OS B: the messages that travel on the rings.
//!
//! OS B owns the network (Ethernet, ARP, IPv4, UDP, TCP); OS A asks it for network service
//! through the rings of [`crate::shared`]: its **requests** travel on the A -> B ring in pool A
//! buffers, OS B's **events** travel on the B -> A ring in pool B buffers, and each side returns
//! the other's buffers on the matching return ring once it has copied a message out.
//!
//! # One message, one descriptor, one buffer
//!
//! | descriptor field | meaning |
//! |---|---|
//! | `offset`, `len` | the message bytes in the sender's pool: a fixed header (its size depends on the kind), then the payload |
//! | `flags` | the message kind: a [`RequestKind`] on the A -> B ring, an [`EventKind`] on the B -> A ring; any other value is an error |
//! | `meta` | a socket handle, or the cookie of a [`Request::Query`] (see each kind) |
//!
//! Every multi-byte field is little-endian. Headers are `#[repr(C)]`, unaligned
//! [`zerocopy`] structs; each field's doc says who writes it. Every message carries a buffer,
//! even one with no bytes (`len` 0), so buffer accounting is the same for all kinds.
//!
//! | kind | `flags` | `meta` | header | payload |
//! |---|---|---|---|---|
//! | [`Request::RoceTx`] | 0x01 | 0 | none | a whole IPv4 packet (IPv4 + UDP 4791 + IB + ICRC) |
//! | [`Request::UdpBind`] | 0x02 | new handle | [`PortHeader`] | none |
//! | [`Request::UdpSend`] | 0x03 | handle | [`AddressHeader`] | datagram |
//! | [`Request::TcpConnect`] | 0x04 | new handle | [`TcpConnectHeader`] | none |
//! | [`Request::TcpListen`] | 0x05 | new handle | [`TcpListenHeader`] | none |
//! | [`Request::TcpSend`] | 0x06 | handle | none | stream bytes (at least 1) |
//! | [`Request::Close`] | 0x07 | handle | [`CloseHeader`] | none |
//! | [`Request::Query`] | 0x08 | cookie | [`QueryHeader`] | none |
//! | [`Event::RoceRx`] | 0x81 | 0 | none | a whole received IPv4 packet |
//! | [`Event::UdpRecv`] | 0x82 | handle | [`AddressHeader`] | datagram |
//! | [`Event::Bound`] | 0x83 | handle | [`PortHeader`] | none |
//! | [`Event::TcpConnected`] | 0x84 | handle | [`EstablishedHeader`] | none |
//! | [`Event::TcpAccepted`] | 0x85 | new handle | [`EstablishedHeader`] | none |
//! | [`Event::TcpData`] | 0x86 | handle | none | stream bytes (at least 1) |
//! | [`Event::TcpEof`] | 0x87 | handle | none | none |
//! | [`Event::Closed`] | 0x88 | handle | [`ClosedHeader`] | none |
//! | [`Event::SendSpace`] | 0x89 | handle | [`SendSpaceHeader`] | none |
//! | [`Event::Error`] | 0x8a | the request's `meta` | [`ErrorHeader`] | none |
//! | [`Event::ConnectionTable`] | 0x8b | the query's cookie | [`TableHeader`] | `count` [`ConnectionEntry`] records |
//!
//! # Handles
//!
//! A handle names one socket of OS B: a UDP socket, a TCP listener or a TCP connection. OS A
//! picks the handle of every socket it opens (`UdpBind`, `TcpConnect`, `TcpListen`) from
//! `1..=0x7fff_ffff` ([`is_client_handle`]); OS B picks the handle of every connection it accepts
//! with bit 31 set ([`ACCEPTED_HANDLE_BIT`]), so the two never collide. Handle 0 is never a
//! socket. A handle stays taken until OS B sends [`Event::Closed`] for it; after that OS A may
//! reuse it. Every later request that names the handle is an error ([`ErrorCode::BadHandle`]).
//!
//! # Flow control
//!
//! OS A never has more TCP bytes in flight towards OS B than OS B can put in the connection's
//! send buffer, so OS B never has to hold pool A buffers hostage or drop stream bytes:
//!
//! - [`Event::TcpConnected`] and [`Event::TcpAccepted`] grant an initial **send credit** (bytes,
//!   the free space of the connection's send buffer).
//! - Each [`Request::TcpSend`] spends `len` bytes of credit. A request that would overdraw the
//!   credit is refused whole with [`ErrorCode::CreditExceeded`].
//! - As the peer acknowledges data and the send buffer drains, OS B grants more with
//!   [`Event::SendSpace`] (an increment, never an absolute value; OS B may batch grants, so
//!   credit comes back in steps rather than byte by byte). OS B keeps
//!   `granted - received <= free space of the send buffer` at all times, so every `TcpSend`
//!   within the credit fits the buffer whole.
//! - No credit is granted after OS A's [`Request::Close`]; the credit of a closed handle is
//!   void.
//!
//! In the other direction OS B reads a connection's receive buffer only while it has pool B
//! buffers and ring room for [`Event::TcpData`]; when OS A is slow to return them the receive
//! buffer fills and TCP's own window closes, which slows the remote sender. Datagrams
//! ([`Event::UdpRecv`]) wait in the socket's receive queue the same way, and are dropped by the
//! socket when it overflows, as UDP allows.
//!
//! # Validation
//!
//! [`Request::parse`] and [`Event::parse`] validate every field of a message from the peer
//! (kind, lengths against the buffer, handle ranges, reserved fields and flag bits, ports and
//! addresses) and never panic, whatever the bytes; a failure names the [`ErrorCode`] that OS B
//! reports back in an [`Event::Error`]. What a message means for the receiver's state (does the
//! handle exist, is there credit) is the receiver's to check.

use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::desc::Desc;

/// Version of this protocol; bumped on any incompatible change.
pub const NETMSG_VERSION: u32 = 1;

/// Bit 31 marks the handles that OS B picks (accepted TCP connections).
pub const ACCEPTED_HANDLE_BIT: u32 = 1 << 31;

/// The UDP port of RoCEv2. OS B hands received datagrams to this port to OS A whole
/// ([`Event::RoceRx`]); no socket may bind it.
pub const ROCE_UDP_PORT: u16 = 4791;

/// The smallest IPv4 packet ([`Request::RoceTx`], [`Event::RoceRx`]): a bare IPv4 header.
pub const MIN_IPV4_PACKET: usize = 20;

/// The largest IPv4 packet or UDP datagram a message may carry.
pub const MAX_IPV4_PACKET: usize = 65535;

/// The largest UDP payload a message may carry.
pub const MAX_UDP_PAYLOAD: usize = 65507;

/// The largest listen backlog.
pub const MAX_BACKLOG: u16 = 16;

/// Whether `handle` is one OS A may pick for a socket it opens.
pub const fn is_client_handle(handle: u32) -> bool {
    handle != 0 && handle & ACCEPTED_HANDLE_BIT == 0
}

/// Whether `handle` is one OS B picks for an accepted connection.
pub const fn is_accepted_handle(handle: u32) -> bool {
    handle != ACCEPTED_HANDLE_BIT && handle & ACCEPTED_HANDLE_BIT != 0
}

/// Whether `handle` may name a socket at all (not 0, not the bare [`ACCEPTED_HANDLE_BIT`]).
pub const fn is_handle(handle: u32) -> bool {
    is_client_handle(handle) || is_accepted_handle(handle)
}

/// The kind of a request (A -> B), carried in the descriptor's `flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RequestKind {
    /// [`Request::RoceTx`].
    RoceTx = 0x01,
    /// [`Request::UdpBind`].
    UdpBind = 0x02,
    /// [`Request::UdpSend`].
    UdpSend = 0x03,
    /// [`Request::TcpConnect`].
    TcpConnect = 0x04,
    /// [`Request::TcpListen`].
    TcpListen = 0x05,
    /// [`Request::TcpSend`].
    TcpSend = 0x06,
    /// [`Request::Close`].
    Close = 0x07,
    /// [`Request::Query`].
    Query = 0x08,
}

impl RequestKind {
    /// The kind for a raw `flags` value, if it is one.
    pub const fn from_u32(value: u32) -> Option<RequestKind> {
        Some(match value {
            0x01 => RequestKind::RoceTx,
            0x02 => RequestKind::UdpBind,
            0x03 => RequestKind::UdpSend,
            0x04 => RequestKind::TcpConnect,
            0x05 => RequestKind::TcpListen,
            0x06 => RequestKind::TcpSend,
            0x07 => RequestKind::Close,
            0x08 => RequestKind::Query,
            _ => return None,
        })
    }

    /// Size of the fixed header that starts a request of this kind.
    pub const fn header_len(self) -> usize {
        match self {
            RequestKind::RoceTx | RequestKind::TcpSend => 0,
            RequestKind::UdpBind => size_of::<PortHeader>(),
            RequestKind::UdpSend => size_of::<AddressHeader>(),
            RequestKind::TcpConnect => size_of::<TcpConnectHeader>(),
            RequestKind::TcpListen => size_of::<TcpListenHeader>(),
            RequestKind::Close => size_of::<CloseHeader>(),
            RequestKind::Query => size_of::<QueryHeader>(),
        }
    }
}

/// The kind of an event (B -> A), carried in the descriptor's `flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum EventKind {
    /// [`Event::RoceRx`].
    RoceRx = 0x81,
    /// [`Event::UdpRecv`].
    UdpRecv = 0x82,
    /// [`Event::Bound`].
    Bound = 0x83,
    /// [`Event::TcpConnected`].
    TcpConnected = 0x84,
    /// [`Event::TcpAccepted`].
    TcpAccepted = 0x85,
    /// [`Event::TcpData`].
    TcpData = 0x86,
    /// [`Event::TcpEof`].
    TcpEof = 0x87,
    /// [`Event::Closed`].
    Closed = 0x88,
    /// [`Event::SendSpace`].
    SendSpace = 0x89,
    /// [`Event::Error`].
    Error = 0x8a,
    /// [`Event::ConnectionTable`].
    ConnectionTable = 0x8b,
}

impl EventKind {
    /// The kind for a raw `flags` value, if it is one.
    pub const fn from_u32(value: u32) -> Option<EventKind> {
        Some(match value {
            0x81 => EventKind::RoceRx,
            0x82 => EventKind::UdpRecv,
            0x83 => EventKind::Bound,
            0x84 => EventKind::TcpConnected,
            0x85 => EventKind::TcpAccepted,
            0x86 => EventKind::TcpData,
            0x87 => EventKind::TcpEof,
            0x88 => EventKind::Closed,
            0x89 => EventKind::SendSpace,
            0x8a => EventKind::Error,
            0x8b => EventKind::ConnectionTable,
            _ => return None,
        })
    }

    /// Size of the fixed header that starts an event of this kind.
    pub const fn header_len(self) -> usize {
        match self {
            EventKind::RoceRx | EventKind::TcpData | EventKind::TcpEof => 0,
            EventKind::UdpRecv => size_of::<AddressHeader>(),
            EventKind::Bound => size_of::<PortHeader>(),
            EventKind::TcpConnected | EventKind::TcpAccepted => size_of::<EstablishedHeader>(),
            EventKind::Closed => size_of::<ClosedHeader>(),
            EventKind::SendSpace => size_of::<SendSpaceHeader>(),
            EventKind::Error => size_of::<ErrorHeader>(),
            EventKind::ConnectionTable => size_of::<TableHeader>(),
        }
    }
}

/// Why a message was refused. Carried in [`Event::Error`]; also what parsing returns.
///
/// Values this build does not know survive a round trip as [`ErrorCode::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The descriptor's `flags` is not a message kind of this direction.
    UnknownKind,
    /// The message is shorter or longer than its kind allows.
    BadLength,
    /// The handle is out of range, or names no socket of the right type.
    BadHandle,
    /// The handle of a socket to open is already taken.
    HandleInUse,
    /// The descriptor does not lie inside the sender's pool.
    BadDescriptor,
    /// A reserved field is not zero, a flag bit is unknown, or a value is out of range.
    BadField,
    /// An address or port is not usable (zero, broadcast, multicast, or reserved).
    BadAddress,
    /// A RoCE packet's IPv4 header is malformed or not ours to send.
    BadPacket,
    /// The local port is taken.
    PortInUse,
    /// OS B has no room for another socket.
    TooManySockets,
    /// A `TcpSend` would overdraw the connection's send credit.
    CreditExceeded,
    /// The connection cannot carry data (not yet connected, or already closed by OS A).
    NotConnected,
    /// No route to the destination (off-link and no gateway).
    NoRoute,
    /// The message is larger than the path allows.
    TooLarge,
    /// The socket's send buffer is full even after a transmit pass (for example while the
    /// destination's address is being resolved): the datagram was dropped, as UDP allows.
    NoBufferSpace,
    /// A code this build does not know.
    Unknown(u16),
}

impl ErrorCode {
    /// The wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            ErrorCode::UnknownKind => 1,
            ErrorCode::BadLength => 2,
            ErrorCode::BadHandle => 3,
            ErrorCode::HandleInUse => 4,
            ErrorCode::BadDescriptor => 5,
            ErrorCode::BadField => 6,
            ErrorCode::BadAddress => 7,
            ErrorCode::BadPacket => 8,
            ErrorCode::PortInUse => 9,
            ErrorCode::TooManySockets => 10,
            ErrorCode::CreditExceeded => 11,
            ErrorCode::NotConnected => 12,
            ErrorCode::NoRoute => 13,
            ErrorCode::TooLarge => 14,
            ErrorCode::NoBufferSpace => 15,
            ErrorCode::Unknown(value) => value,
        }
    }

    /// The code for a wire value.
    pub const fn from_u16(value: u16) -> ErrorCode {
        match value {
            1 => ErrorCode::UnknownKind,
            2 => ErrorCode::BadLength,
            3 => ErrorCode::BadHandle,
            4 => ErrorCode::HandleInUse,
            5 => ErrorCode::BadDescriptor,
            6 => ErrorCode::BadField,
            7 => ErrorCode::BadAddress,
            8 => ErrorCode::BadPacket,
            9 => ErrorCode::PortInUse,
            10 => ErrorCode::TooManySockets,
            11 => ErrorCode::CreditExceeded,
            12 => ErrorCode::NotConnected,
            13 => ErrorCode::NoRoute,
            14 => ErrorCode::TooLarge,
            15 => ErrorCode::NoBufferSpace,
            other => ErrorCode::Unknown(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ErrorCode::UnknownKind => "unknown message kind",
            ErrorCode::BadLength => "message length does not fit its kind",
            ErrorCode::BadHandle => "handle names no socket of that type",
            ErrorCode::HandleInUse => "handle already in use",
            ErrorCode::BadDescriptor => "descriptor outside the pool",
            ErrorCode::BadField => "reserved field, flag or value out of range",
            ErrorCode::BadAddress => "address or port not usable",
            ErrorCode::BadPacket => "malformed RoCE packet",
            ErrorCode::PortInUse => "port in use",
            ErrorCode::TooManySockets => "too many sockets",
            ErrorCode::CreditExceeded => "send credit exceeded",
            ErrorCode::NotConnected => "connection cannot carry data",
            ErrorCode::NoRoute => "no route to host",
            ErrorCode::TooLarge => "message too large",
            ErrorCode::NoBufferSpace => "no buffer space for the datagram",
            ErrorCode::Unknown(code) => return write!(f, "error code {code}"),
        };
        f.write_str(text)
    }
}

impl core::error::Error for ErrorCode {}

/// Why a socket closed ([`Event::Closed`]). Unknown values survive as [`CloseReason::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// OS A closed it and the close completed (for TCP: both FINs exchanged, or the peer
    /// acknowledged ours and is in TIME-WAIT's hands).
    Closed,
    /// A `TcpConnect` failed: refused or timed out.
    ConnectFailed,
    /// The connection was reset by the peer or timed out.
    Reset,
    /// OS A aborted it ([`CloseHeader::flags`] [`CLOSE_ABORT`]).
    Aborted,
    /// A reason this build does not know.
    Unknown(u16),
}

impl CloseReason {
    /// The wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            CloseReason::Closed => 1,
            CloseReason::ConnectFailed => 2,
            CloseReason::Reset => 3,
            CloseReason::Aborted => 4,
            CloseReason::Unknown(value) => value,
        }
    }

    /// The reason for a wire value.
    pub const fn from_u16(value: u16) -> CloseReason {
        match value {
            1 => CloseReason::Closed,
            2 => CloseReason::ConnectFailed,
            3 => CloseReason::Reset,
            4 => CloseReason::Aborted,
            other => CloseReason::Unknown(other),
        }
    }
}

/// [`TcpConnectHeader::flags`] / [`TcpListenHeader::flags`]: the application can re-establish
/// this connection (or the connections a listener accepts) by itself after a snapshot is
/// restored, so a snapshot may drop it while it is idle.
pub const OPEN_REPEATABLE: u32 = 1 << 0;
/// Every flag bit of an open request this build knows.
pub const OPEN_FLAGS: u32 = OPEN_REPEATABLE;

/// [`CloseHeader::flags`]: reset the connection (RST) instead of closing it in order.
pub const CLOSE_ABORT: u32 = 1 << 0;
/// Every flag bit of a close request this build knows.
pub const CLOSE_FLAGS: u32 = CLOSE_ABORT;

/// [`QueryHeader::what`]: the connection table ([`Event::ConnectionTable`]).
pub const QUERY_CONNECTIONS: u32 = 1;

/// [`TableHeader::flags`]: this is the last part of the table.
pub const TABLE_LAST: u16 = 1 << 0;

/// Header of [`Request::UdpBind`] and [`Event::Bound`].
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct PortHeader {
    /// `UdpBind` (written by OS A): the port to bind, 0 for one OS B picks. `Bound` (written by
    /// OS B): the port the socket is bound to.
    pub local_port: U16,
    /// Written as 0 by the sender; must be 0.
    pub reserved: U16,
}

/// Header of [`Request::UdpSend`] and [`Event::UdpRecv`]: the remote endpoint of a datagram.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct AddressHeader {
    /// `UdpSend` (written by OS A): the destination address. `UdpRecv` (written by OS B): the
    /// source address. In network order (the IPv4 address's octets).
    pub remote_addr: [u8; 4],
    /// The destination (`UdpSend`) or source (`UdpRecv`) port; never 0.
    pub remote_port: U16,
    /// Written as 0 by the sender; must be 0.
    pub reserved: U16,
}

/// Header of [`Request::TcpConnect`]. Written by OS A.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct TcpConnectHeader {
    /// The address to connect to (octets in network order).
    pub remote_addr: [u8; 4],
    /// The port to connect to; not 0.
    pub remote_port: U16,
    /// The local port, or 0 for one OS B picks.
    pub local_port: U16,
    /// [`OPEN_REPEATABLE`] or 0; other bits must be 0.
    pub flags: U32,
}

/// Header of [`Request::TcpListen`]. Written by OS A.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct TcpListenHeader {
    /// The port to listen on; not 0.
    pub local_port: U16,
    /// Connections OS B may hold half-open at once, `1..=`[`MAX_BACKLOG`].
    pub backlog: U16,
    /// [`OPEN_REPEATABLE`] (inherited by every accepted connection) or 0; other bits must be 0.
    pub flags: U32,
}

/// Header of [`Request::Close`]. Written by OS A.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct CloseHeader {
    /// [`CLOSE_ABORT`] or 0; other bits must be 0.
    pub flags: U32,
}

/// Header of [`Request::Query`]. Written by OS A.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct QueryHeader {
    /// What to report: [`QUERY_CONNECTIONS`].
    pub what: U32,
    /// Written as 0 by OS A; must be 0.
    pub reserved: U32,
}

/// Header of [`Event::TcpConnected`] and [`Event::TcpAccepted`]. Written by OS B.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct EstablishedHeader {
    /// `TcpAccepted`: the handle of the listener that accepted the connection. `TcpConnected`:
    /// 0.
    pub listener: U32,
    /// The peer's address (octets in network order).
    pub remote_addr: [u8; 4],
    /// The peer's port.
    pub remote_port: U16,
    /// The local port.
    pub local_port: U16,
    /// The initial send credit in bytes (see the module docs' flow control).
    pub send_credit: U32,
}

/// Header of [`Event::Closed`]. Written by OS B.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ClosedHeader {
    /// A [`CloseReason`] value.
    pub reason: U16,
    /// Written as 0 by OS B; must be 0.
    pub reserved: U16,
}

/// Header of [`Event::SendSpace`]. Written by OS B.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct SendSpaceHeader {
    /// Bytes of send credit added (an increment; never 0).
    pub credit: U32,
}

/// Header of [`Event::Error`]. Written by OS B.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ErrorHeader {
    /// The refused request's `flags` word, as OS A wrote it (so even an unknown kind is named).
    pub request_kind: U32,
    /// An [`ErrorCode`] value.
    pub code: U16,
    /// Written as 0 by OS B; must be 0.
    pub reserved: U16,
    /// A code-specific detail: the bytes of credit left for [`ErrorCode::CreditExceeded`], the
    /// descriptor's length for [`ErrorCode::BadLength`] and [`ErrorCode::BadDescriptor`], else 0.
    pub detail: U32,
}

/// Header of [`Event::ConnectionTable`]. Written by OS B.
///
/// A table larger than a buffer travels in several events with the same cookie, in order:
/// `first` counts the entries sent before, the last part has [`TABLE_LAST`].
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct TableHeader {
    /// Entries in the whole table.
    pub total: U32,
    /// Index of this part's first entry in the table.
    pub first: U32,
    /// Entries in this part; the payload is `count` [`ConnectionEntry`] records.
    pub count: U16,
    /// [`TABLE_LAST`] or 0; other bits are 0.
    pub flags: U16,
}

/// [`ConnectionEntry::protocol`]: a UDP socket.
pub const PROTOCOL_UDP: u8 = 1;
/// [`ConnectionEntry::protocol`]: a TCP listener.
pub const PROTOCOL_TCP_LISTENER: u8 = 2;
/// [`ConnectionEntry::protocol`]: a TCP connection.
pub const PROTOCOL_TCP: u8 = 3;

/// [`ConnectionEntry::flags`]: the socket can be re-established after a snapshot (see
/// [`ConnectionInfo::repeatable`]).
pub const ENTRY_REPEATABLE: u16 = 1 << 0;
/// [`ConnectionEntry::flags`]: OS A has closed it; OS B is finishing the close.
pub const ENTRY_CLOSING: u16 = 1 << 1;
/// Every entry flag bit this build knows.
pub const ENTRY_FLAGS: u16 = ENTRY_REPEATABLE | ENTRY_CLOSING;

/// One record of [`Event::ConnectionTable`]. Written by OS B (40 bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ConnectionEntry {
    /// The socket's handle, or 0 for a TCP connection whose handle OS B already released
    /// (TIME-WAIT).
    pub handle: U32,
    /// [`PROTOCOL_UDP`], [`PROTOCOL_TCP_LISTENER`] or [`PROTOCOL_TCP`].
    pub protocol: u8,
    /// A [`ConnectionState`] value.
    pub state: u8,
    /// [`ENTRY_REPEATABLE`], [`ENTRY_CLOSING`].
    pub flags: U16,
    /// Local address (octets in network order).
    pub local_addr: [u8; 4],
    /// Local port.
    pub local_port: U16,
    /// Remote port (0 for UDP sockets and listeners).
    pub remote_port: U16,
    /// Remote address (0.0.0.0 for UDP sockets and listeners).
    pub remote_addr: [u8; 4],
    /// Written as 0 by OS B.
    pub reserved: U32,
    /// Payload bytes received from the network for OS A.
    pub bytes_in: U64,
    /// Payload bytes OS A sent.
    pub bytes_out: U64,
}

/// The state of a socket in the connection table (TCP states after RFC 793).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectionState {
    /// A UDP socket, bound.
    Bound = 0,
    /// TCP CLOSED.
    Closed = 1,
    /// TCP LISTEN.
    Listen = 2,
    /// TCP SYN-SENT.
    SynSent = 3,
    /// TCP SYN-RECEIVED.
    SynReceived = 4,
    /// TCP ESTABLISHED.
    Established = 5,
    /// TCP FIN-WAIT-1.
    FinWait1 = 6,
    /// TCP FIN-WAIT-2.
    FinWait2 = 7,
    /// TCP CLOSE-WAIT.
    CloseWait = 8,
    /// TCP CLOSING.
    Closing = 9,
    /// TCP LAST-ACK.
    LastAck = 10,
    /// TCP TIME-WAIT.
    TimeWait = 11,
}

impl ConnectionState {
    /// The state for a wire value, if it is one.
    pub const fn from_u8(value: u8) -> Option<ConnectionState> {
        Some(match value {
            0 => ConnectionState::Bound,
            1 => ConnectionState::Closed,
            2 => ConnectionState::Listen,
            3 => ConnectionState::SynSent,
            4 => ConnectionState::SynReceived,
            5 => ConnectionState::Established,
            6 => ConnectionState::FinWait1,
            7 => ConnectionState::FinWait2,
            8 => ConnectionState::CloseWait,
            9 => ConnectionState::Closing,
            10 => ConnectionState::LastAck,
            11 => ConnectionState::TimeWait,
            _ => return None,
        })
    }
}

/// What kind of socket a connection table entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A UDP socket.
    Udp,
    /// A TCP listener.
    TcpListener,
    /// A TCP connection.
    Tcp,
}

/// One socket OS B carries: the parsed form of a [`ConnectionEntry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The handle, or 0 once OS B released it (a TCP connection in TIME-WAIT).
    pub handle: u32,
    /// The kind of socket.
    pub protocol: Protocol,
    /// Its state.
    pub state: ConnectionState,
    /// The local endpoint.
    pub local: SocketAddrV4,
    /// The remote endpoint (TCP connections only).
    pub remote: Option<SocketAddrV4>,
    /// Payload bytes received from the network for OS A.
    pub bytes_in: u64,
    /// Payload bytes OS A sent.
    pub bytes_out: u64,
    /// Whether a snapshot may drop it and the application re-establish it after restore:
    /// always for UDP sockets and listeners; for a TCP connection, when OS A opened it (or its
    /// listener) with [`OPEN_REPEATABLE`] and no byte is queued in either direction.
    pub repeatable: bool,
    /// Whether OS A closed it and OS B is finishing the close.
    pub closing: bool,
}

impl ConnectionInfo {
    /// Validates an entry.
    pub fn parse(entry: &ConnectionEntry) -> Result<ConnectionInfo, ErrorCode> {
        let protocol = match entry.protocol {
            PROTOCOL_UDP => Protocol::Udp,
            PROTOCOL_TCP_LISTENER => Protocol::TcpListener,
            PROTOCOL_TCP => Protocol::Tcp,
            _ => return Err(ErrorCode::BadField),
        };
        let state = ConnectionState::from_u8(entry.state).ok_or(ErrorCode::BadField)?;
        let flags = entry.flags.get();
        if flags & !ENTRY_FLAGS != 0 || entry.reserved.get() != 0 {
            return Err(ErrorCode::BadField);
        }
        let handle = entry.handle.get();
        let handle_ok = match protocol {
            Protocol::Tcp => handle == 0 || is_handle(handle),
            Protocol::Udp | Protocol::TcpListener => is_client_handle(handle),
        };
        if !handle_ok {
            return Err(ErrorCode::BadHandle);
        }
        let remote = SocketAddrV4::new(Ipv4Addr::from(entry.remote_addr), entry.remote_port.get());
        Ok(ConnectionInfo {
            handle,
            protocol,
            state,
            local: SocketAddrV4::new(Ipv4Addr::from(entry.local_addr), entry.local_port.get()),
            remote: (protocol == Protocol::Tcp).then_some(remote),
            bytes_in: entry.bytes_in.get(),
            bytes_out: entry.bytes_out.get(),
            repeatable: flags & ENTRY_REPEATABLE != 0,
            closing: flags & ENTRY_CLOSING != 0,
        })
    }

    /// The entry for this connection.
    pub fn to_entry(&self) -> ConnectionEntry {
        let protocol = match self.protocol {
            Protocol::Udp => PROTOCOL_UDP,
            Protocol::TcpListener => PROTOCOL_TCP_LISTENER,
            Protocol::Tcp => PROTOCOL_TCP,
        };
        let remote = self
            .remote
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let mut flags = 0;
        if self.repeatable {
            flags |= ENTRY_REPEATABLE;
        }
        if self.closing {
            flags |= ENTRY_CLOSING;
        }
        ConnectionEntry {
            handle: U32::new(self.handle),
            protocol,
            state: self.state as u8,
            flags: U16::new(flags),
            local_addr: self.local.ip().octets(),
            local_port: U16::new(self.local.port()),
            remote_port: U16::new(remote.port()),
            remote_addr: remote.ip().octets(),
            reserved: U32::new(0),
            bytes_in: U64::new(self.bytes_in),
            bytes_out: U64::new(self.bytes_out),
        }
    }
}

/// The entries of a [`Event::ConnectionTable`] part: a validated run of [`ConnectionEntry`]
/// records (its length is a multiple of the record size; each record is validated as it is
/// read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entries<'a> {
    bytes: &'a [u8],
}

impl<'a> Entries<'a> {
    /// Wraps `bytes`, which must be a whole number of records.
    pub fn new(bytes: &'a [u8]) -> Result<Entries<'a>, ErrorCode> {
        if !bytes.len().is_multiple_of(size_of::<ConnectionEntry>()) {
            return Err(ErrorCode::BadLength);
        }
        Ok(Entries { bytes })
    }

    /// The raw records.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.bytes.len() / size_of::<ConnectionEntry>()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The records, parsed (a record that fails validation yields its error).
    pub fn iter(&self) -> impl Iterator<Item = Result<ConnectionInfo, ErrorCode>> + 'a {
        self.bytes
            .chunks_exact(size_of::<ConnectionEntry>())
            .map(|chunk| {
                ConnectionEntry::read_from_bytes(chunk)
                    .map_err(|_| ErrorCode::BadLength)
                    .and_then(|entry| ConnectionInfo::parse(&entry))
            })
    }
}

/// Where a message goes in a descriptor: its `flags`, `meta` and `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The kind (the descriptor's `flags`).
    pub flags: u32,
    /// The handle or cookie (the descriptor's `meta`).
    pub meta: u32,
    /// Header plus payload bytes (the descriptor's `len`).
    pub len: u32,
}

impl Head {
    /// Stamps `flags` and `meta` on `desc` (the descriptor [`crate::pool::PoolOwner::submit`]
    /// made for the message's buffer).
    pub fn stamp(&self, desc: Desc) -> Desc {
        Desc {
            flags: self.flags,
            meta: self.meta,
            ..desc
        }
    }
}

/// Why a message could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitError {
    /// The output is shorter than the message.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        actual: usize,
    },
    /// A field holds a value the protocol does not allow (the parse of the result would fail).
    Invalid(ErrorCode),
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::BufferTooSmall { needed, actual } => {
                write!(f, "message of {needed} bytes does not fit {actual}")
            }
            EmitError::Invalid(code) => write!(f, "message not valid: {code}"),
        }
    }
}

impl core::error::Error for EmitError {}

/// A request from OS A to OS B (written by OS A, validated and read by OS B).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Send this IPv4 packet as it is: OS B only puts an Ethernet header in front. It must be
    /// UDP to port [`ROCE_UDP_PORT`] from OS B's address (OS B checks).
    RoceTx {
        /// The IPv4 packet.
        packet: &'a [u8],
    },
    /// Open a UDP socket. OS B answers [`Event::Bound`] or [`Event::Error`].
    UdpBind {
        /// The new socket's handle ([`is_client_handle`]).
        handle: u32,
        /// The port, or 0 for one OS B picks. Never [`ROCE_UDP_PORT`].
        local_port: u16,
    },
    /// Send a datagram from a UDP socket.
    UdpSend {
        /// The socket.
        handle: u32,
        /// The destination.
        remote: SocketAddrV4,
        /// The datagram.
        payload: &'a [u8],
    },
    /// Open a TCP connection. OS B answers [`Event::TcpConnected`], or [`Event::Closed`] with
    /// [`CloseReason::ConnectFailed`], or [`Event::Error`].
    TcpConnect {
        /// The new connection's handle ([`is_client_handle`]).
        handle: u32,
        /// The peer.
        remote: SocketAddrV4,
        /// The local port, or 0 for one OS B picks.
        local_port: u16,
        /// [`OPEN_REPEATABLE`] or 0.
        flags: u32,
    },
    /// Listen for TCP connections. OS B answers [`Event::Bound`] or [`Event::Error`], then
    /// [`Event::TcpAccepted`] for each connection.
    TcpListen {
        /// The listener's handle ([`is_client_handle`]).
        handle: u32,
        /// The port (not 0).
        local_port: u16,
        /// Half-open connections held at once (`1..=`[`MAX_BACKLOG`]).
        backlog: u16,
        /// [`OPEN_REPEATABLE`] or 0.
        flags: u32,
    },
    /// Send stream bytes on a connection, within its send credit.
    TcpSend {
        /// The connection.
        handle: u32,
        /// The bytes (at least one).
        data: &'a [u8],
    },
    /// Close a socket. A TCP connection closes in order (its queued bytes are sent first)
    /// unless `abort`; OS B answers [`Event::Closed`] when it is done.
    Close {
        /// The socket.
        handle: u32,
        /// Reset a TCP connection instead of closing it in order.
        abort: bool,
    },
    /// Ask for the connection table; OS B answers one or more [`Event::ConnectionTable`].
    Query {
        /// Echoed in the answer's `meta`.
        cookie: u32,
    },
}

fn check_handle(handle: u32) -> Result<u32, ErrorCode> {
    if is_handle(handle) {
        Ok(handle)
    } else {
        Err(ErrorCode::BadHandle)
    }
}

fn check_new_handle(handle: u32) -> Result<u32, ErrorCode> {
    if is_client_handle(handle) {
        Ok(handle)
    } else {
        Err(ErrorCode::BadHandle)
    }
}

fn check_remote(addr: [u8; 4], port: u16) -> Result<SocketAddrV4, ErrorCode> {
    let ip = Ipv4Addr::from(addr);
    if port == 0 || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(ErrorCode::BadAddress);
    }
    Ok(SocketAddrV4::new(ip, port))
}

/// Splits `bytes` into a `H` header and the rest.
fn split<H: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<(H, &[u8]), ErrorCode> {
    H::read_from_prefix(bytes).map_err(|_| ErrorCode::BadLength)
}

/// Splits `bytes` into a `H` header and nothing: a longer message is an error.
fn exact<H: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<H, ErrorCode> {
    H::read_from_bytes(bytes).map_err(|_| ErrorCode::BadLength)
}

fn zero16(value: U16) -> Result<(), ErrorCode> {
    if value.get() == 0 {
        Ok(())
    } else {
        Err(ErrorCode::BadField)
    }
}

fn known_flags(value: u32, known: u32) -> Result<u32, ErrorCode> {
    if value & !known == 0 {
        Ok(value)
    } else {
        Err(ErrorCode::BadField)
    }
}

/// What [`Request`] and [`Event`] are made of, as emitting them needs it.
trait Message {
    /// The same message type, borrowing other bytes.
    type Parsed<'b>: Message;

    /// The descriptor's `flags`: the message kind.
    fn flags(&self) -> u32;
    /// Length of the kind's fixed header.
    fn header_len(&self) -> usize;
    /// The descriptor's `meta`.
    fn meta(&self) -> u32;
    /// The payload after the fixed header.
    fn payload(&self) -> &[u8];
    /// The fixed header's bytes.
    fn header(&self) -> HeaderBytes;
    /// Parses a message of this type.
    fn parse<'b>(flags: u32, meta: u32, bytes: &'b [u8]) -> Result<Self::Parsed<'b>, ErrorCode>;

    /// Bytes of the whole message.
    fn buffer_len(&self) -> usize {
        self.header_len() + self.payload().len()
    }

    /// Where the message goes in its descriptor.
    fn head(&self) -> Head {
        Head {
            flags: self.flags(),
            meta: self.meta(),
            len: self.buffer_len() as u32,
        }
    }

    /// The fixed parts.
    fn frame(&self) -> Frame {
        Frame {
            head: self.head(),
            header: self.header(),
            payload_len: self.payload().len(),
        }
    }
}

/// Writes `message` into the front of `out`, checking that it parses back to the same.
fn emit_message<M: Message>(message: &M, out: &mut [u8]) -> Result<Head, EmitError> {
    let frame = message.frame();
    emit_checked(out, &frame, message.payload(), |bytes| {
        M::parse(frame.head.flags, frame.head.meta, bytes).map(|parsed| parsed.frame())
    })
}

/// The fixed parts of a message: where it goes, its header, how long its payload is.
struct Frame {
    head: Head,
    header: HeaderBytes,
    payload_len: usize,
}

impl Frame {
    fn same(&self, other: &Frame) -> bool {
        self.head == other.head
            && self.header.as_slice() == other.header.as_slice()
            && self.payload_len == other.payload_len
    }
}

/// Writes `frame`'s header and `payload` into `out` and checks that the bytes parse back
/// (`parse_back`) to the same fixed parts. The payload is copied verbatim, so this shows the
/// whole message parses back to what was emitted without a second pass over the payload.
fn emit_checked(
    out: &mut [u8],
    frame: &Frame,
    payload: &[u8],
    parse_back: impl FnOnce(&[u8]) -> Result<Frame, ErrorCode>,
) -> Result<Head, EmitError> {
    let len = emit_parts(out, frame.header.as_slice(), payload)?;
    match parse_back(&out[..len]) {
        Ok(parsed) if parsed.same(frame) => Ok(frame.head),
        Ok(_) => Err(EmitError::Invalid(ErrorCode::BadField)),
        Err(code) => Err(EmitError::Invalid(code)),
    }
}

/// Writes `header` and `payload` into `out`; returns the length.
fn emit_parts(out: &mut [u8], header: &[u8], payload: &[u8]) -> Result<usize, EmitError> {
    let needed = header.len() + payload.len();
    let actual = out.len();
    let Some(out) = out.get_mut(..needed) else {
        return Err(EmitError::BufferTooSmall { needed, actual });
    };
    let (head, tail) = out.split_at_mut(header.len());
    head.copy_from_slice(header);
    tail.copy_from_slice(payload);
    Ok(needed)
}

/// A fixed header as bytes, of at most [`MAX_HEADER_LEN`] bytes.
#[derive(Clone, Copy, Debug)]
pub struct HeaderBytes {
    bytes: [u8; MAX_HEADER_LEN],
    len: usize,
}

/// The largest fixed header of any message.
pub const MAX_HEADER_LEN: usize = 16;

impl HeaderBytes {
    fn of<H: IntoBytes + Immutable>(header: &H) -> HeaderBytes {
        let source = header.as_bytes();
        let mut bytes = [0u8; MAX_HEADER_LEN];
        let len = source.len().min(MAX_HEADER_LEN);
        bytes[..len].copy_from_slice(&source[..len]);
        HeaderBytes { bytes, len }
    }

    const fn empty() -> HeaderBytes {
        HeaderBytes {
            bytes: [0; MAX_HEADER_LEN],
            len: 0,
        }
    }

    /// The header's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<'a> Request<'a> {
    /// Parses and validates a request: `flags` and `meta` from its descriptor, `bytes` the
    /// descriptor's span. Never panics.
    pub fn parse(flags: u32, meta: u32, bytes: &'a [u8]) -> Result<Request<'a>, ErrorCode> {
        let kind = RequestKind::from_u32(flags).ok_or(ErrorCode::UnknownKind)?;
        Ok(match kind {
            RequestKind::RoceTx => {
                if meta != 0 {
                    return Err(ErrorCode::BadField);
                }
                if !(MIN_IPV4_PACKET..=MAX_IPV4_PACKET).contains(&bytes.len()) {
                    return Err(ErrorCode::BadLength);
                }
                Request::RoceTx { packet: bytes }
            }
            RequestKind::UdpBind => {
                let header: PortHeader = exact(bytes)?;
                zero16(header.reserved)?;
                let local_port = header.local_port.get();
                if local_port == ROCE_UDP_PORT {
                    return Err(ErrorCode::BadAddress);
                }
                Request::UdpBind {
                    handle: check_new_handle(meta)?,
                    local_port,
                }
            }
            RequestKind::UdpSend => {
                let (header, payload) = split::<AddressHeader>(bytes)?;
                zero16(header.reserved)?;
                if payload.len() > MAX_UDP_PAYLOAD {
                    return Err(ErrorCode::TooLarge);
                }
                Request::UdpSend {
                    handle: check_handle(meta)?,
                    remote: check_remote(header.remote_addr, header.remote_port.get())?,
                    payload,
                }
            }
            RequestKind::TcpConnect => {
                let header: TcpConnectHeader = exact(bytes)?;
                Request::TcpConnect {
                    handle: check_new_handle(meta)?,
                    remote: check_remote(header.remote_addr, header.remote_port.get())?,
                    local_port: header.local_port.get(),
                    flags: known_flags(header.flags.get(), OPEN_FLAGS)?,
                }
            }
            RequestKind::TcpListen => {
                let header: TcpListenHeader = exact(bytes)?;
                let local_port = header.local_port.get();
                if local_port == 0 {
                    return Err(ErrorCode::BadAddress);
                }
                let backlog = header.backlog.get();
                if !(1..=MAX_BACKLOG).contains(&backlog) {
                    return Err(ErrorCode::BadField);
                }
                Request::TcpListen {
                    handle: check_new_handle(meta)?,
                    local_port,
                    backlog,
                    flags: known_flags(header.flags.get(), OPEN_FLAGS)?,
                }
            }
            RequestKind::TcpSend => {
                if bytes.is_empty() {
                    return Err(ErrorCode::BadLength);
                }
                Request::TcpSend {
                    handle: check_handle(meta)?,
                    data: bytes,
                }
            }
            RequestKind::Close => {
                let header: CloseHeader = exact(bytes)?;
                let flags = known_flags(header.flags.get(), CLOSE_FLAGS)?;
                Request::Close {
                    handle: check_handle(meta)?,
                    abort: flags & CLOSE_ABORT != 0,
                }
            }
            RequestKind::Query => {
                let header: QueryHeader = exact(bytes)?;
                if header.what.get() != QUERY_CONNECTIONS || header.reserved.get() != 0 {
                    return Err(ErrorCode::BadField);
                }
                Request::Query { cookie: meta }
            }
        })
    }

    /// The kind.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::RoceTx { .. } => RequestKind::RoceTx,
            Request::UdpBind { .. } => RequestKind::UdpBind,
            Request::UdpSend { .. } => RequestKind::UdpSend,
            Request::TcpConnect { .. } => RequestKind::TcpConnect,
            Request::TcpListen { .. } => RequestKind::TcpListen,
            Request::TcpSend { .. } => RequestKind::TcpSend,
            Request::Close { .. } => RequestKind::Close,
            Request::Query { .. } => RequestKind::Query,
        }
    }

    /// The descriptor's `meta`: the handle, the cookie, or 0.
    pub fn meta(&self) -> u32 {
        match *self {
            Request::RoceTx { .. } => 0,
            Request::UdpBind { handle, .. }
            | Request::UdpSend { handle, .. }
            | Request::TcpConnect { handle, .. }
            | Request::TcpListen { handle, .. }
            | Request::TcpSend { handle, .. }
            | Request::Close { handle, .. } => handle,
            Request::Query { cookie } => cookie,
        }
    }

    /// The payload that follows the fixed header.
    pub fn payload(&self) -> &'a [u8] {
        match *self {
            Request::RoceTx { packet } => packet,
            Request::UdpSend { payload, .. } => payload,
            Request::TcpSend { data, .. } => data,
            _ => &[],
        }
    }

    /// The fixed header's bytes.
    pub fn header(&self) -> HeaderBytes {
        match *self {
            Request::RoceTx { .. } | Request::TcpSend { .. } => HeaderBytes::empty(),
            Request::UdpBind { local_port, .. } => HeaderBytes::of(&PortHeader {
                local_port: U16::new(local_port),
                reserved: U16::new(0),
            }),
            Request::UdpSend { remote, .. } => HeaderBytes::of(&address_header(remote)),
            Request::TcpConnect {
                remote,
                local_port,
                flags,
                ..
            } => HeaderBytes::of(&TcpConnectHeader {
                remote_addr: remote.ip().octets(),
                remote_port: U16::new(remote.port()),
                local_port: U16::new(local_port),
                flags: U32::new(flags),
            }),
            Request::TcpListen {
                local_port,
                backlog,
                flags,
                ..
            } => HeaderBytes::of(&TcpListenHeader {
                local_port: U16::new(local_port),
                backlog: U16::new(backlog),
                flags: U32::new(flags),
            }),
            Request::Close { abort, .. } => HeaderBytes::of(&CloseHeader {
                flags: U32::new(if abort { CLOSE_ABORT } else { 0 }),
            }),
            Request::Query { .. } => HeaderBytes::of(&QueryHeader {
                what: U32::new(QUERY_CONNECTIONS),
                reserved: U32::new(0),
            }),
        }
    }

    /// Bytes of the whole message (header and payload).
    pub fn buffer_len(&self) -> usize {
        Message::buffer_len(self)
    }

    /// Where the message goes in its descriptor.
    pub fn head(&self) -> Head {
        Message::head(self)
    }

    /// Writes the message into the front of `out` and returns its [`Head`]. The result parses
    /// back to `self`, or this fails with [`EmitError::Invalid`].
    pub fn emit(&self, out: &mut [u8]) -> Result<Head, EmitError> {
        emit_message(self, out)
    }
}

impl<'a> Message for Request<'a> {
    type Parsed<'b> = Request<'b>;

    fn flags(&self) -> u32 {
        self.kind() as u32
    }

    fn header_len(&self) -> usize {
        self.kind().header_len()
    }

    fn meta(&self) -> u32 {
        Request::meta(self)
    }

    fn payload(&self) -> &[u8] {
        Request::payload(self)
    }

    fn header(&self) -> HeaderBytes {
        Request::header(self)
    }

    fn parse<'b>(flags: u32, meta: u32, bytes: &'b [u8]) -> Result<Request<'b>, ErrorCode> {
        Request::parse(flags, meta, bytes)
    }
}

fn address_header(remote: SocketAddrV4) -> AddressHeader {
    AddressHeader {
        remote_addr: remote.ip().octets(),
        remote_port: U16::new(remote.port()),
        reserved: U16::new(0),
    }
}

/// A connection's endpoints and initial credit ([`Event::TcpConnected`], [`Event::TcpAccepted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Established {
    /// The peer.
    pub remote: SocketAddrV4,
    /// The local port.
    pub local_port: u16,
    /// The initial send credit in bytes.
    pub send_credit: u32,
}

/// An event from OS B to OS A (written by OS B, validated and read by OS A).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A received IPv4 packet for UDP port [`ROCE_UDP_PORT`] addressed to OS B, as it came off
    /// the wire (without the Ethernet header and padding).
    RoceRx {
        /// The IPv4 packet.
        packet: &'a [u8],
    },
    /// A datagram arrived on a UDP socket.
    UdpRecv {
        /// The socket.
        handle: u32,
        /// The sender.
        remote: SocketAddrV4,
        /// The datagram.
        payload: &'a [u8],
    },
    /// A UDP socket or a TCP listener is open on `local_port`.
    Bound {
        /// The socket.
        handle: u32,
        /// Its port.
        local_port: u16,
    },
    /// A `TcpConnect` succeeded.
    TcpConnected {
        /// The connection.
        handle: u32,
        /// Endpoints and initial credit.
        info: Established,
    },
    /// A listener accepted a connection.
    TcpAccepted {
        /// The listener.
        listener: u32,
        /// The new connection's handle ([`is_accepted_handle`]).
        handle: u32,
        /// Endpoints and initial credit.
        info: Established,
    },
    /// Stream bytes arrived on a connection.
    TcpData {
        /// The connection.
        handle: u32,
        /// The bytes (at least one).
        data: &'a [u8],
    },
    /// The peer closed its side: no more [`Event::TcpData`] on this connection. The handle
    /// stays open (OS A may still send, and must still [`Request::Close`] it).
    TcpEof {
        /// The connection.
        handle: u32,
    },
    /// The socket is gone and its handle free.
    Closed {
        /// The socket.
        handle: u32,
        /// Why.
        reason: CloseReason,
    },
    /// More send credit for a connection.
    SendSpace {
        /// The connection.
        handle: u32,
        /// Bytes added (at least one).
        credit: u32,
    },
    /// A request was refused; OS B went on with the next one.
    Error {
        /// The request's `flags` word.
        request_kind: u32,
        /// The request's `meta` word.
        request_meta: u32,
        /// Why.
        code: ErrorCode,
        /// See [`ErrorHeader::detail`].
        detail: u32,
    },
    /// A part of the connection table.
    ConnectionTable {
        /// The query's cookie.
        cookie: u32,
        /// Entries in the whole table.
        total: u32,
        /// Index of this part's first entry.
        first: u32,
        /// Whether this is the last part.
        last: bool,
        /// This part's entries.
        entries: Entries<'a>,
    },
}

impl<'a> Event<'a> {
    /// Parses and validates an event: `flags` and `meta` from its descriptor, `bytes` the
    /// descriptor's span. Never panics.
    pub fn parse(flags: u32, meta: u32, bytes: &'a [u8]) -> Result<Event<'a>, ErrorCode> {
        let kind = EventKind::from_u32(flags).ok_or(ErrorCode::UnknownKind)?;
        let established = |bytes: &[u8]| -> Result<(u32, Established), ErrorCode> {
            let header: EstablishedHeader = exact(bytes)?;
            Ok((
                header.listener.get(),
                Established {
                    remote: check_remote(header.remote_addr, header.remote_port.get())?,
                    local_port: nonzero_port(header.local_port.get())?,
                    send_credit: header.send_credit.get(),
                },
            ))
        };
        Ok(match kind {
            EventKind::RoceRx => {
                if meta != 0 {
                    return Err(ErrorCode::BadField);
                }
                if !(MIN_IPV4_PACKET..=MAX_IPV4_PACKET).contains(&bytes.len()) {
                    return Err(ErrorCode::BadLength);
                }
                Event::RoceRx { packet: bytes }
            }
            EventKind::UdpRecv => {
                let (header, payload) = split::<AddressHeader>(bytes)?;
                zero16(header.reserved)?;
                if payload.len() > MAX_UDP_PAYLOAD {
                    return Err(ErrorCode::TooLarge);
                }
                let remote = SocketAddrV4::new(
                    Ipv4Addr::from(header.remote_addr),
                    nonzero_port(header.remote_port.get())?,
                );
                Event::UdpRecv {
                    handle: check_new_handle(meta)?,
                    remote,
                    payload,
                }
            }
            EventKind::Bound => {
                let header: PortHeader = exact(bytes)?;
                zero16(header.reserved)?;
                Event::Bound {
                    handle: check_new_handle(meta)?,
                    local_port: nonzero_port(header.local_port.get())?,
                }
            }
            EventKind::TcpConnected => {
                let (listener, info) = established(bytes)?;
                if listener != 0 {
                    return Err(ErrorCode::BadField);
                }
                Event::TcpConnected {
                    handle: check_new_handle(meta)?,
                    info,
                }
            }
            EventKind::TcpAccepted => {
                let (listener, info) = established(bytes)?;
                if !is_accepted_handle(meta) {
                    return Err(ErrorCode::BadHandle);
                }
                Event::TcpAccepted {
                    listener: check_new_handle(listener)?,
                    handle: meta,
                    info,
                }
            }
            EventKind::TcpData => {
                if bytes.is_empty() {
                    return Err(ErrorCode::BadLength);
                }
                Event::TcpData {
                    handle: check_handle(meta)?,
                    data: bytes,
                }
            }
            EventKind::TcpEof => {
                if !bytes.is_empty() {
                    return Err(ErrorCode::BadLength);
                }
                Event::TcpEof {
                    handle: check_handle(meta)?,
                }
            }
            EventKind::Closed => {
                let header: ClosedHeader = exact(bytes)?;
                zero16(header.reserved)?;
                Event::Closed {
                    handle: check_handle(meta)?,
                    reason: CloseReason::from_u16(header.reason.get()),
                }
            }
            EventKind::SendSpace => {
                let header: SendSpaceHeader = exact(bytes)?;
                let credit = header.credit.get();
                if credit == 0 {
                    return Err(ErrorCode::BadField);
                }
                Event::SendSpace {
                    handle: check_handle(meta)?,
                    credit,
                }
            }
            EventKind::Error => {
                let header: ErrorHeader = exact(bytes)?;
                zero16(header.reserved)?;
                Event::Error {
                    request_kind: header.request_kind.get(),
                    request_meta: meta,
                    code: ErrorCode::from_u16(header.code.get()),
                    detail: header.detail.get(),
                }
            }
            EventKind::ConnectionTable => {
                let (header, payload) = split::<TableHeader>(bytes)?;
                let flags = header.flags.get();
                if flags & !TABLE_LAST != 0 {
                    return Err(ErrorCode::BadField);
                }
                let entries = Entries::new(payload)?;
                let (total, first) = (header.total.get(), header.first.get());
                let end = u64::from(first) + entries.len() as u64;
                let last = flags & TABLE_LAST != 0;
                if usize::from(header.count.get()) != entries.len()
                    || end > u64::from(total)
                    || (last && end != u64::from(total))
                {
                    return Err(ErrorCode::BadField);
                }
                Event::ConnectionTable {
                    cookie: meta,
                    total,
                    first,
                    last,
                    entries,
                }
            }
        })
    }

    /// The kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::RoceRx { .. } => EventKind::RoceRx,
            Event::UdpRecv { .. } => EventKind::UdpRecv,
            Event::Bound { .. } => EventKind::Bound,
            Event::TcpConnected { .. } => EventKind::TcpConnected,
            Event::TcpAccepted { .. } => EventKind::TcpAccepted,
            Event::TcpData { .. } => EventKind::TcpData,
            Event::TcpEof { .. } => EventKind::TcpEof,
            Event::Closed { .. } => EventKind::Closed,
            Event::SendSpace { .. } => EventKind::SendSpace,
            Event::Error { .. } => EventKind::Error,
            Event::ConnectionTable { .. } => EventKind::ConnectionTable,
        }
    }

    /// The descriptor's `meta`.
    pub fn meta(&self) -> u32 {
        match *self {
            Event::RoceRx { .. } => 0,
            Event::UdpRecv { handle, .. }
            | Event::Bound { handle, .. }
            | Event::TcpConnected { handle, .. }
            | Event::TcpAccepted { handle, .. }
            | Event::TcpData { handle, .. }
            | Event::TcpEof { handle }
            | Event::Closed { handle, .. }
            | Event::SendSpace { handle, .. } => handle,
            Event::Error { request_meta, .. } => request_meta,
            Event::ConnectionTable { cookie, .. } => cookie,
        }
    }

    /// The handle this event is about, if any (the new connection's for `TcpAccepted`).
    pub fn handle(&self) -> Option<u32> {
        match self {
            Event::RoceRx { .. } | Event::Error { .. } | Event::ConnectionTable { .. } => None,
            _ => Some(self.meta()),
        }
    }

    /// The payload that follows the fixed header.
    pub fn payload(&self) -> &'a [u8] {
        match *self {
            Event::RoceRx { packet } => packet,
            Event::UdpRecv { payload, .. } => payload,
            Event::TcpData { data, .. } => data,
            Event::ConnectionTable { entries, .. } => entries.as_bytes(),
            _ => &[],
        }
    }

    /// The fixed header's bytes.
    pub fn header(&self) -> HeaderBytes {
        let established = |listener: u32, info: &Established| EstablishedHeader {
            listener: U32::new(listener),
            remote_addr: info.remote.ip().octets(),
            remote_port: U16::new(info.remote.port()),
            local_port: U16::new(info.local_port),
            send_credit: U32::new(info.send_credit),
        };
        match *self {
            Event::RoceRx { .. } | Event::TcpData { .. } | Event::TcpEof { .. } => {
                HeaderBytes::empty()
            }
            Event::UdpRecv { remote, .. } => HeaderBytes::of(&address_header(remote)),
            Event::Bound { local_port, .. } => HeaderBytes::of(&PortHeader {
                local_port: U16::new(local_port),
                reserved: U16::new(0),
            }),
            Event::TcpConnected { ref info, .. } => HeaderBytes::of(&established(0, info)),
            Event::TcpAccepted {
                listener, ref info, ..
            } => HeaderBytes::of(&established(listener, info)),
            Event::Closed { reason, .. } => HeaderBytes::of(&ClosedHeader {
                reason: U16::new(reason.to_u16()),
                reserved: U16::new(0),
            }),
            Event::SendSpace { credit, .. } => HeaderBytes::of(&SendSpaceHeader {
                credit: U32::new(credit),
            }),
            Event::Error {
                request_kind,
                code,
                detail,
                ..
            } => HeaderBytes::of(&ErrorHeader {
                request_kind: U32::new(request_kind),
                code: U16::new(code.to_u16()),
                reserved: U16::new(0),
                detail: U32::new(detail),
            }),
            Event::ConnectionTable {
                total,
                first,
                last,
                entries,
                ..
            } => HeaderBytes::of(&TableHeader {
                total: U32::new(total),
                first: U32::new(first),
                count: U16::new(entries.len() as u16),
                flags: U16::new(if last { TABLE_LAST } else { 0 }),
            }),
        }
    }

    /// Bytes of the whole message (header and payload).
    pub fn buffer_len(&self) -> usize {
        Message::buffer_len(self)
    }

    /// Where the message goes in its descriptor.
    pub fn head(&self) -> Head {
        Message::head(self)
    }

    /// Writes the message into the front of `out` and returns its [`Head`]. The result parses
    /// back to `self`, or this fails with [`EmitError::Invalid`].
    pub fn emit(&self, out: &mut [u8]) -> Result<Head, EmitError> {
        emit_message(self, out)
    }
}

impl<'a> Message for Event<'a> {
    type Parsed<'b> = Event<'b>;

    fn flags(&self) -> u32 {
        self.kind() as u32
    }

    fn header_len(&self) -> usize {
        self.kind().header_len()
    }

    fn meta(&self) -> u32 {
        Event::meta(self)
    }

    fn payload(&self) -> &[u8] {
        Event::payload(self)
    }

    fn header(&self) -> HeaderBytes {
        Event::header(self)
    }

    fn parse<'b>(flags: u32, meta: u32, bytes: &'b [u8]) -> Result<Event<'b>, ErrorCode> {
        Event::parse(flags, meta, bytes)
    }
}

fn nonzero_port(port: u16) -> Result<u16, ErrorCode> {
    if port == 0 {
        Err(ErrorCode::BadAddress)
    } else {
        Ok(port)
    }
}

const _: () = {
    assert!(size_of::<PortHeader>() == 4);
    assert!(size_of::<AddressHeader>() == 8);
    assert!(size_of::<TcpConnectHeader>() == 12);
    assert!(size_of::<TcpListenHeader>() == 8);
    assert!(size_of::<CloseHeader>() == 4);
    assert!(size_of::<QueryHeader>() == 8);
    assert!(size_of::<EstablishedHeader>() == 16);
    assert!(size_of::<ClosedHeader>() == 4);
    assert!(size_of::<SendSpaceHeader>() == 4);
    assert!(size_of::<ErrorHeader>() == 12);
    assert!(size_of::<TableHeader>() == 12);
    assert!(size_of::<ConnectionEntry>() == 40);
    assert!(size_of::<EstablishedHeader>() <= MAX_HEADER_LEN);
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
    }

    fn emit_request(request: &Request<'_>) -> (Head, Vec<u8>) {
        let mut out = vec![0u8; request.buffer_len()];
        let head = request.emit(&mut out).unwrap();
        (head, out)
    }

    fn emit_event(event: &Event<'_>) -> (Head, Vec<u8>) {
        let mut out = vec![0u8; event.buffer_len()];
        let head = event.emit(&mut out).unwrap();
        (head, out)
    }

    #[test]
    fn udp_send_golden_bytes() {
        let request = Request::UdpSend {
            handle: 7,
            remote: addr(10, 0, 0, 2, 0x1234),
            payload: b"hi",
        };
        let (head, bytes) = emit_request(&request);
        assert_eq!(
            head,
            Head {
                flags: 0x03,
                meta: 7,
                len: 10
            }
        );
        assert_eq!(bytes, [10, 0, 0, 2, 0x34, 0x12, 0, 0, b'h', b'i']);
        assert_eq!(Request::parse(3, 7, &bytes), Ok(request));
    }

    #[test]
    fn tcp_connect_golden_bytes() {
        let bytes = [192, 168, 1, 9, 0x53, 0x48, 0x00, 0xc0, 1, 0, 0, 0];
        let request = Request::parse(0x04, 5, &bytes).unwrap();
        assert_eq!(
            request,
            Request::TcpConnect {
                handle: 5,
                remote: addr(192, 168, 1, 9, 18515),
                local_port: 0xc000,
                flags: OPEN_REPEATABLE,
            }
        );
        assert_eq!(emit_request(&request).1, bytes);
    }

    #[test]
    fn established_and_error_golden_bytes() {
        let event = Event::TcpAccepted {
            listener: 3,
            handle: ACCEPTED_HANDLE_BIT | 1,
            info: Established {
                remote: addr(10, 0, 0, 1, 40000),
                local_port: 18515,
                send_credit: 65536,
            },
        };
        let (head, bytes) = emit_event(&event);
        assert_eq!(head.flags, 0x85);
        assert_eq!(head.meta, 0x8000_0001);
        assert_eq!(
            bytes,
            [3, 0, 0, 0, 10, 0, 0, 1, 0x40, 0x9c, 0x53, 0x48, 0, 0, 1, 0]
        );
        let error = Event::Error {
            request_kind: 0x99,
            request_meta: 4,
            code: ErrorCode::UnknownKind,
            detail: 0,
        };
        let (head, bytes) = emit_event(&error);
        assert_eq!((head.flags, head.meta, head.len), (0x8a, 4, 12));
        assert_eq!(bytes, [0x99, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn connection_table_golden_bytes() {
        let info = ConnectionInfo {
            handle: 2,
            protocol: Protocol::Tcp,
            state: ConnectionState::Established,
            local: addr(10, 0, 0, 1, 18515),
            remote: Some(addr(10, 0, 0, 2, 50000)),
            bytes_in: 0x0102,
            bytes_out: 3,
            repeatable: true,
            closing: false,
        };
        let entry = info.to_entry();
        let expected: [u8; 40] = [
            2, 0, 0, 0, 3, 5, 1, 0, 10, 0, 0, 1, 0x53, 0x48, 0x50, 0xc3, 10, 0, 0, 2, 0, 0, 0, 0,
            2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(entry.as_bytes(), &expected);
        let event = Event::ConnectionTable {
            cookie: 9,
            total: 1,
            first: 0,
            last: true,
            entries: Entries::new(&expected).unwrap(),
        };
        let (head, bytes) = emit_event(&event);
        assert_eq!(head.len, 52);
        assert_eq!(&bytes[..12], &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0]);
        let Event::ConnectionTable { entries, .. } = Event::parse(0x8b, 9, &bytes).unwrap() else {
            panic!("not a table");
        };
        let parsed: Vec<_> = entries.iter().collect();
        assert_eq!(parsed, [Ok(info)]);
    }

    #[test]
    fn bad_requests_are_refused_with_the_right_code() {
        let port5 = [5, 0, 0, 0];
        let roce = ROCE_UDP_PORT.to_le_bytes();
        let roce = [roce[0], roce[1], 0, 0];
        let cases: [(u32, u32, &[u8], ErrorCode); 14] = [
            (0, 1, &[], ErrorCode::UnknownKind),
            (0x81, 0, &[0; 20], ErrorCode::UnknownKind),
            (0x0100_0002, 1, &port5, ErrorCode::UnknownKind),
            (0x02, 1, &[0; 3], ErrorCode::BadLength),
            (0x02, 1, &[0; 5], ErrorCode::BadLength),
            (0x02, 0, &port5, ErrorCode::BadHandle),
            (0x02, ACCEPTED_HANDLE_BIT | 1, &port5, ErrorCode::BadHandle),
            (0x02, 1, &[5, 0, 1, 0], ErrorCode::BadField),
            (0x02, 1, &roce, ErrorCode::BadAddress),
            (0x01, 0, &[0x45; 19], ErrorCode::BadLength),
            (0x01, 3, &[0x45; 20], ErrorCode::BadField),
            (0x06, 1, &[], ErrorCode::BadLength),
            (0x07, 1, &[2, 0, 0, 0], ErrorCode::BadField),
            (0x08, 0, &[2, 0, 0, 0, 0, 0, 0, 0], ErrorCode::BadField),
        ];
        for (flags, meta, bytes, code) in cases {
            assert_eq!(
                Request::parse(flags, meta, bytes),
                Err(code),
                "{flags:#x} {meta:#x} {bytes:?}"
            );
        }
        // Destination 0.0.0.0, port 0, broadcast.
        for header in [[0, 0, 0, 0, 1, 0, 0, 0], [1, 2, 3, 4, 0, 0, 0, 0], [255; 8]] {
            let mut bytes = header.to_vec();
            bytes[6..8].fill(0);
            assert_eq!(Request::parse(0x03, 1, &bytes), Err(ErrorCode::BadAddress));
        }
    }

    #[test]
    fn bad_events_are_refused() {
        let closed = [1, 0, 0, 0];
        assert!(Event::parse(0x88, 1, &closed).is_ok());
        assert_eq!(Event::parse(0x88, 0, &closed), Err(ErrorCode::BadHandle));
        assert_eq!(Event::parse(0x87, 1, &[0]), Err(ErrorCode::BadLength));
        assert_eq!(Event::parse(0x89, 1, &[0; 4]), Err(ErrorCode::BadField));
        // A table that claims more entries than it carries, or ends early.
        let mut table = vec![1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0];
        table.extend_from_slice(ConnectionEntry::default().as_bytes());
        assert_eq!(Event::parse(0x8b, 0, &table), Err(ErrorCode::BadField));
        table[8] = 1;
        assert!(Event::parse(0x8b, 0, &table).is_ok());
        table[0] = 2;
        assert_eq!(Event::parse(0x8b, 0, &table), Err(ErrorCode::BadField));
        // Unknown error codes and close reasons survive.
        let error = Event::parse(0x8a, 0, &[1, 0, 0, 0, 0xee, 0xee, 0, 0, 0, 0, 0, 0]).unwrap();
        assert!(matches!(
            error,
            Event::Error {
                code: ErrorCode::Unknown(0xeeee),
                ..
            }
        ));
        assert_eq!(emit_event(&error).1[4..6], [0xee, 0xee]);
    }

    #[test]
    fn emit_refuses_invalid_messages_and_short_buffers() {
        let request = Request::UdpBind {
            handle: 0,
            local_port: 1,
        };
        let mut out = [0u8; 16];
        assert_eq!(
            request.emit(&mut out),
            Err(EmitError::Invalid(ErrorCode::BadHandle))
        );
        let request = Request::TcpSend {
            handle: 1,
            data: &[1; 20],
        };
        assert_eq!(
            request.emit(&mut out),
            Err(EmitError::BufferTooSmall {
                needed: 20,
                actual: 16
            })
        );
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddrV4> {
        (1u8..224, any::<[u8; 3]>(), 1u16..).prop_map(|(first, rest, port)| {
            SocketAddrV4::new(Ipv4Addr::new(first, rest[0], rest[1], rest[2]), port)
        })
    }

    fn client_handle() -> impl Strategy<Value = u32> {
        1u32..ACCEPTED_HANDLE_BIT
    }

    fn any_handle() -> impl Strategy<Value = u32> {
        prop_oneof![
            client_handle(),
            (1u32..ACCEPTED_HANDLE_BIT).prop_map(|h| h | ACCEPTED_HANDLE_BIT)
        ]
    }

    #[derive(Clone, Debug)]
    enum OwnedRequest {
        RoceTx(Vec<u8>),
        UdpBind(u32, u16),
        UdpSend(u32, SocketAddrV4, Vec<u8>),
        TcpConnect(u32, SocketAddrV4, u16, u32),
        TcpListen(u32, u16, u16, u32),
        TcpSend(u32, Vec<u8>),
        Close(u32, bool),
        Query(u32),
    }

    impl OwnedRequest {
        fn as_request(&self) -> Request<'_> {
            match self {
                OwnedRequest::RoceTx(packet) => Request::RoceTx { packet },
                OwnedRequest::UdpBind(handle, local_port) => Request::UdpBind {
                    handle: *handle,
                    local_port: *local_port,
                },
                OwnedRequest::UdpSend(handle, remote, payload) => Request::UdpSend {
                    handle: *handle,
                    remote: *remote,
                    payload,
                },
                OwnedRequest::TcpConnect(handle, remote, local_port, flags) => {
                    Request::TcpConnect {
                        handle: *handle,
                        remote: *remote,
                        local_port: *local_port,
                        flags: *flags,
                    }
                }
                OwnedRequest::TcpListen(handle, local_port, backlog, flags) => Request::TcpListen {
                    handle: *handle,
                    local_port: *local_port,
                    backlog: *backlog,
                    flags: *flags,
                },
                OwnedRequest::TcpSend(handle, data) => Request::TcpSend {
                    handle: *handle,
                    data,
                },
                OwnedRequest::Close(handle, abort) => Request::Close {
                    handle: *handle,
                    abort: *abort,
                },
                OwnedRequest::Query(cookie) => Request::Query { cookie: *cookie },
            }
        }
    }

    fn arb_request() -> impl Strategy<Value = OwnedRequest> {
        let bytes = |min: usize, max: usize| proptest::collection::vec(any::<u8>(), min..max);
        prop_oneof![
            bytes(20, 1600).prop_map(OwnedRequest::RoceTx),
            (
                client_handle(),
                any::<u16>().prop_filter("roce", |p| *p != ROCE_UDP_PORT)
            )
                .prop_map(|(h, p)| OwnedRequest::UdpBind(h, p)),
            (any_handle(), arb_addr(), bytes(0, 1500))
                .prop_map(|(h, a, p)| OwnedRequest::UdpSend(h, a, p)),
            (client_handle(), arb_addr(), any::<u16>(), 0..=OPEN_FLAGS)
                .prop_map(|(h, a, l, f)| OwnedRequest::TcpConnect(h, a, l, f)),
            (client_handle(), 1u16.., 1..=MAX_BACKLOG, 0..=OPEN_FLAGS)
                .prop_map(|(h, p, b, f)| OwnedRequest::TcpListen(h, p, b, f)),
            (any_handle(), bytes(1, 2048)).prop_map(|(h, d)| OwnedRequest::TcpSend(h, d)),
            (any_handle(), any::<bool>()).prop_map(|(h, a)| OwnedRequest::Close(h, a)),
            any::<u32>().prop_map(OwnedRequest::Query),
        ]
    }

    proptest! {
        #[test]
        #[cfg_attr(miri, ignore)] // proptest needs the file system; Miri isolates it
        fn arbitrary_bytes_never_panic(flags in prop_oneof![0u32..0x100, any::<u32>()],
                                       meta in any::<u32>(),
                                       bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(request) = Request::parse(flags, meta, &bytes) {
                // Whatever parses, emits back to the same bytes.
                let mut out = vec![0u8; request.buffer_len()];
                let head = request.emit(&mut out).unwrap();
                prop_assert_eq!(head.flags, flags);
                prop_assert_eq!(head.meta, meta);
                prop_assert_eq!(&out[..], &bytes[..]);
            }
            if let Ok(event) = Event::parse(flags, meta, &bytes) {
                let mut out = vec![0u8; event.buffer_len()];
                let head = event.emit(&mut out).unwrap();
                prop_assert_eq!(head.flags, flags);
                prop_assert_eq!(&out[..], &bytes[..]);
                if let Event::ConnectionTable { entries, .. } = event {
                    for entry in entries.iter() {
                        let _ = entry;
                    }
                }
            }
        }

        #[test]
        #[cfg_attr(miri, ignore)] // proptest needs the file system; Miri isolates it
        fn requests_round_trip(owned in arb_request()) {
            let request = owned.as_request();
            let mut out = vec![0u8; request.buffer_len()];
            let head = request.emit(&mut out).unwrap();
            prop_assert_eq!(head.len as usize, out.len());
            prop_assert_eq!(Request::parse(head.flags, head.meta, &out), Ok(request));
            // Any shorter message of a kind with a header is refused, never misread.
            if request.kind().header_len() > 0 {
                let cut = request.kind().header_len() - 1;
                prop_assert!(Request::parse(head.flags, head.meta, &out[..cut]).is_err());
            }
        }

        #[test]
        #[cfg_attr(miri, ignore)] // proptest needs the file system; Miri isolates it
        fn events_round_trip(handle in client_handle(),
                             accepted in (1u32..ACCEPTED_HANDLE_BIT).prop_map(|h| h | ACCEPTED_HANDLE_BIT),
                             remote in arb_addr(),
                             local_port in 1u16..,
                             credit in 1u32..,
                             code in any::<u16>(),
                             data in proptest::collection::vec(any::<u8>(), 20..1500)) {
            let info = Established { remote, local_port, send_credit: credit };
            let events = [
                Event::RoceRx { packet: &data },
                Event::UdpRecv { handle, remote, payload: &data },
                Event::Bound { handle, local_port },
                Event::TcpConnected { handle, info },
                Event::TcpAccepted { listener: handle, handle: accepted, info },
                Event::TcpData { handle: accepted, data: &data },
                Event::TcpEof { handle },
                Event::Closed { handle, reason: CloseReason::from_u16(code) },
                Event::SendSpace { handle, credit },
                Event::Error { request_kind: credit, request_meta: handle, code: ErrorCode::from_u16(code), detail: 1 },
            ];
            for event in events {
                let mut out = vec![0u8; event.buffer_len()];
                let head = event.emit(&mut out).unwrap();
                prop_assert_eq!(Event::parse(head.flags, head.meta, &out), Ok(event));
            }
        }
    }
}
