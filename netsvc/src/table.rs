//! The connection table: every socket OS B carries for OS A, with what the protocol, snapshots
//! and the host agent need to know about it.
//!
//! Invariants:
//! - every live handle appears in at most one slot, and every slot's smoltcp sockets belong to
//!   it alone (the service creates and removes them together);
//! - a TCP connection whose [`Event::Closed`](shm_ring::netmsg::Event::Closed) was posted has
//!   handle 0 (it is released); it stays in the table (and its socket in smoltcp) until
//!   smoltcp is done with it (TIME-WAIT over, or the RST sent), so a snapshot sees it;
//! - for a TCP connection, `granted - received` (the credit OS A still holds) never exceeds the
//!   free space of the socket's send buffer.

use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};

use shm_ring::netmsg::{ConnectionInfo, ConnectionState, OPEN_REPEATABLE, Protocol};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

/// One socket of the table.
#[derive(Debug)]
pub(crate) struct Slot {
    /// OS A's handle; 0 once released.
    pub handle: u32,
    /// What it is.
    pub kind: SlotKind,
    /// Payload bytes delivered to OS A.
    pub bytes_in: u64,
    /// Payload bytes OS A sent.
    pub bytes_out: u64,
}

#[derive(Debug)]
pub(crate) enum SlotKind {
    Udp {
        socket: SocketHandle,
        port: u16,
    },
    Listener {
        port: u16,
        /// Sockets in LISTEN (or SYN-RECEIVED) on `port`: the backlog.
        sockets: Vec<SocketHandle>,
        /// Open flags, inherited by accepted connections.
        flags: u32,
    },
    Tcp(TcpSlot),
}

/// Where a TCP connection is in its life as OS A sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TcpPhase {
    /// `TcpConnect` sent the SYN; no event yet.
    Connecting,
    /// `TcpConnected` or `TcpAccepted` was posted.
    Open,
    /// `Closed` was posted: the handle is free; smoltcp finishes the connection.
    Released,
}

#[derive(Debug)]
pub(crate) struct TcpSlot {
    pub socket: SocketHandle,
    pub phase: TcpPhase,
    /// Open flags ([`OPEN_REPEATABLE`]).
    pub flags: u32,
    /// Send credit granted to OS A so far, in bytes.
    pub granted: u64,
    /// Bytes OS A sent (credit spent).
    pub received: u64,
    /// `TcpEof` was posted.
    pub eof_sent: bool,
    /// OS A closed (or aborted) the connection.
    pub closed_by_a: bool,
    /// OS A aborted the connection.
    pub aborted: bool,
    /// When the socket was first seen CLOSED after release (for reaping).
    pub closed_since_ns: Option<u64>,
}

impl TcpSlot {
    pub(crate) fn new(socket: SocketHandle, phase: TcpPhase, flags: u32) -> TcpSlot {
        TcpSlot {
            socket,
            phase,
            flags,
            granted: 0,
            received: 0,
            eof_sent: false,
            closed_by_a: false,
            aborted: false,
            closed_since_ns: None,
        }
    }
}

impl Slot {
    /// smoltcp sockets this slot holds.
    pub(crate) fn socket_count(&self) -> usize {
        match &self.kind {
            SlotKind::Udp { .. } | SlotKind::Tcp(_) => 1,
            SlotKind::Listener { sockets, .. } => sockets.len(),
        }
    }

    /// The local TCP port this slot occupies, if it is TCP.
    pub(crate) fn tcp_port(&self, sockets: &SocketSet<'_>) -> Option<u16> {
        match &self.kind {
            SlotKind::Listener { port, .. } => Some(*port),
            SlotKind::Tcp(conn) => sockets
                .get::<tcp::Socket<'_>>(conn.socket)
                .local_endpoint()
                .map(|endpoint| endpoint.port),
            SlotKind::Udp { .. } => None,
        }
    }

    /// The table entry for this slot.
    pub(crate) fn info(&self, sockets: &SocketSet<'_>, address: Ipv4Addr) -> ConnectionInfo {
        let base = |protocol, state, port| ConnectionInfo {
            handle: self.handle,
            protocol,
            state,
            local: SocketAddrV4::new(address, port),
            remote: None,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            repeatable: true,
            closing: false,
        };
        match &self.kind {
            SlotKind::Udp { port, .. } => base(Protocol::Udp, ConnectionState::Bound, *port),
            SlotKind::Listener { port, .. } => {
                base(Protocol::TcpListener, ConnectionState::Listen, *port)
            }
            SlotKind::Tcp(conn) => {
                let socket = sockets.get::<tcp::Socket<'_>>(conn.socket);
                let local = socket
                    .local_endpoint()
                    .and_then(|endpoint| endpoint_v4(endpoint.addr, endpoint.port))
                    .unwrap_or(SocketAddrV4::new(address, 0));
                let remote = socket
                    .remote_endpoint()
                    .and_then(|endpoint| endpoint_v4(endpoint.addr, endpoint.port));
                let quiet = socket.send_queue() == 0 && socket.recv_queue() == 0;
                ConnectionInfo {
                    local,
                    remote,
                    state: tcp_state(socket.state()),
                    repeatable: conn.flags & OPEN_REPEATABLE != 0 && quiet,
                    closing: conn.closed_by_a,
                    ..base(Protocol::Tcp, ConnectionState::Closed, 0)
                }
            }
        }
    }
}

/// The IPv4 address of `address`, if it is one.
pub(crate) fn ipv4_of(address: IpAddress) -> Option<Ipv4Addr> {
    // With only `proto-ipv4` the pattern is irrefutable; another crate may enable IPv6.
    #[allow(irrefutable_let_patterns, unreachable_patterns)]
    match address {
        IpAddress::Ipv4(ip) => Some(ip),
        _ => None,
    }
}

pub(crate) fn endpoint_v4(address: IpAddress, port: u16) -> Option<SocketAddrV4> {
    ipv4_of(address).map(|ip| SocketAddrV4::new(ip, port))
}

/// smoltcp's TCP state as a table state.
pub(crate) fn tcp_state(state: tcp::State) -> ConnectionState {
    match state {
        tcp::State::Closed => ConnectionState::Closed,
        tcp::State::Listen => ConnectionState::Listen,
        tcp::State::SynSent => ConnectionState::SynSent,
        tcp::State::SynReceived => ConnectionState::SynReceived,
        tcp::State::Established => ConnectionState::Established,
        tcp::State::FinWait1 => ConnectionState::FinWait1,
        tcp::State::FinWait2 => ConnectionState::FinWait2,
        tcp::State::CloseWait => ConnectionState::CloseWait,
        tcp::State::Closing => ConnectionState::Closing,
        tcp::State::LastAck => ConnectionState::LastAck,
        tcp::State::TimeWait => ConnectionState::TimeWait,
    }
}
