//! OS A's side of the network service: calls become requests on the A -> B ring, events from
//! OS B become a stream of [`Event`]s.
//!
//! The client owns OS A's [`Endpoint`] and the [`PoolOwner`] of pool A. It keeps a small table
//! of the handles it opened or was given, with each TCP connection's send credit, and checks
//! every event from OS B against it: an event that fails validation (a descriptor outside pool
//! B, a malformed message, a handle the client does not know, a credit overflow) is counted in
//! [`ClientStats::bad_events`] and skipped, never trusted.
//!
//! Wake-ups: calls push to the rings without asking each time whether OS B sleeps (that asks
//! for a full fence, which would wait for every store of the request to land). The platform
//! calls [`Client::take_signal`] after a burst of calls and before it sleeps: it asks once for
//! everything pushed since the last time, and returns `true` if OS B should be signalled.
//! Before the platform sleeps waiting for events it uses the `rx` ring's handshake through
//! [`Client::endpoint_mut`].

use alloc::collections::{BTreeMap, btree_map};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::SocketAddrV4;

use shm_ring::netmsg::{self, ErrorCode, Event, Request, RequestKind};
use shm_ring::pool::{PoolError, PoolOwner, PoolSetupError, ReclaimError};
use shm_ring::ring::PeerError;
use shm_ring::shared::Endpoint;

/// The largest event the client copies out of pool B.
const MAX_EVENT: usize = 64 * 1024;

/// What kind of socket a handle names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// A UDP socket.
    Udp,
    /// A TCP listener.
    TcpListener,
    /// A TCP connection.
    Tcp,
}

#[derive(Clone, Copy, Debug)]
struct SocketState {
    kind: SocketKind,
    /// `Bound`, `TcpConnected` or `TcpAccepted` arrived.
    open: bool,
    /// Send credit in bytes (TCP connections).
    credit: u64,
    /// `close` was called.
    closing: bool,
}

/// Why a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// Every pool A buffer is in flight: OS B has not returned them yet.
    NoBuffer,
    /// The A -> B ring is full.
    RingFull,
    /// No send credit on the connection (wait for [`Event::SendSpace`]).
    WouldBlock,
    /// The handle names no socket of the right kind.
    BadHandle,
    /// The connection is not open for sending (not yet connected, or closing).
    NotConnected,
    /// The message does not fit a pool A buffer.
    TooLarge,
    /// Every client handle is in use.
    HandlesExhausted,
    /// OS B broke the ring protocol.
    Ring(PeerError),
    /// A pool operation failed.
    Pool(PoolError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoBuffer => f.write_str("no free pool buffer"),
            ClientError::RingFull => f.write_str("request ring full"),
            ClientError::WouldBlock => f.write_str("no send credit"),
            ClientError::BadHandle => f.write_str("unknown handle"),
            ClientError::NotConnected => f.write_str("connection not open for sending"),
            ClientError::TooLarge => f.write_str("message larger than a pool buffer"),
            ClientError::HandlesExhausted => f.write_str("no free handle"),
            ClientError::Ring(error) => write!(f, "ring fault: {error}"),
            ClientError::Pool(error) => write!(f, "pool error: {error}"),
        }
    }
}

impl core::error::Error for ClientError {}

/// The client's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent.
    pub requests: u64,
    /// Events delivered by [`Client::poll`].
    pub events: u64,
    /// Events rejected by validation and skipped.
    pub bad_events: u64,
    /// The last rejected event's error.
    pub last_bad_event: Option<ErrorCode>,
    /// [`Event::Error`]s received.
    pub errors: u64,
    /// Bad buffer returns from OS B.
    pub bad_returns: u64,
    /// Ring protocol faults seen.
    pub ring_faults: u64,
}

/// OS A's network client.
#[derive(Debug)]
pub struct Client<S> {
    endpoint: Endpoint,
    pool: PoolOwner<S>,
    sockets: BTreeMap<u32, SocketState>,
    next_handle: u32,
    scratch: Vec<u8>,
    /// Requests were pushed since OS B's wake-up flag was last looked at.
    unsignalled_requests: bool,
    /// Pool B buffers were returned since OS B's wake-up flag was last looked at.
    unsignalled_returns: bool,
    stats: ClientStats,
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> Client<S> {
    /// A client over OS A's `endpoint`, owning pool A with `storage` for its free set (at least
    /// [`shm_ring::pool::owner_storage_words`] of the pool's buffer count).
    pub fn new(endpoint: Endpoint, storage: S) -> Result<Client<S>, PoolSetupError> {
        let pool = PoolOwner::new(endpoint.own_pool.clone(), storage)?;
        let scratch = vec![0u8; (endpoint.peer_pool.buffer_size() as usize).min(MAX_EVENT)];
        Ok(Client {
            endpoint,
            pool,
            sockets: BTreeMap::new(),
            next_handle: 1,
            scratch,
            unsignalled_requests: false,
            unsignalled_returns: false,
            stats: ClientStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The endpoint (for the sleep handshake on `rx`).
    pub fn endpoint_mut(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    /// Pool A's owner.
    pub fn pool_mut(&mut self) -> &mut PoolOwner<S> {
        &mut self.pool
    }

    /// Size of a pool A buffer: the largest request, header included.
    pub fn buffer_size(&self) -> usize {
        self.pool.view().buffer_size() as usize
    }

    /// Whether OS B should be signalled: it asked to be woken and there are requests or
    /// returned buffers it has not been signalled for. Call after a burst of calls and before
    /// sleeping; each `true` asks for one signal.
    pub fn take_signal(&mut self) -> bool {
        let mut signal = false;
        if core::mem::take(&mut self.unsignalled_requests) {
            signal |= self.endpoint.tx.needs_wakeup();
        }
        if core::mem::take(&mut self.unsignalled_returns) {
            // OS B sleeps for want of buffers waiting on their return ring.
            signal |= self.endpoint.rx_return.needs_wakeup();
        }
        signal
    }

    /// The kind of socket `handle` names, if the client knows it.
    pub fn socket_kind(&self, handle: u32) -> Option<SocketKind> {
        self.sockets.get(&handle).map(|socket| socket.kind)
    }

    /// Send credit left on a TCP connection.
    pub fn send_credit(&self, handle: u32) -> Option<u64> {
        self.sockets
            .get(&handle)
            .filter(|socket| socket.kind == SocketKind::Tcp)
            .map(|socket| socket.credit)
    }

    /// Takes back the pool A buffers OS B returned.
    pub fn reclaim(&mut self) {
        for _ in 0..8 {
            match self
                .pool
                .reclaim_from(&mut self.endpoint.tx_return, u32::MAX)
            {
                Ok(_) => return,
                Err(ReclaimError::Pool(_)) => self.stats.bad_returns += 1,
                Err(ReclaimError::Peer(_)) => {
                    self.stats.ring_faults += 1;
                    return;
                }
            }
        }
    }

    fn new_handle(&mut self, kind: SocketKind) -> Result<u32, ClientError> {
        for _ in 0..1024 {
            let handle = self.next_handle;
            self.next_handle = if handle >= netmsg::ACCEPTED_HANDLE_BIT - 1 {
                1
            } else {
                handle + 1
            };
            if let btree_map::Entry::Vacant(entry) = self.sockets.entry(handle) {
                entry.insert(SocketState {
                    kind,
                    open: false,
                    credit: 0,
                    closing: false,
                });
                return Ok(handle);
            }
        }
        Err(ClientError::HandlesExhausted)
    }

    /// Puts `request` on the ring in a fresh pool A buffer.
    fn send(&mut self, request: &Request<'_>) -> Result<(), ClientError> {
        let len = request.buffer_len();
        if len > self.buffer_size() {
            return Err(ClientError::TooLarge);
        }
        // OS B stops taking requests while the return ring is full, so reclaim long before
        // that: whenever half a ring's worth of buffers is out (and when none is free).
        let half_ring = self.endpoint.tx_return.capacity() / 2;
        if self.pool.in_flight_count() >= half_ring || self.pool.free_count() == 0 {
            self.reclaim();
        }
        let room = self.endpoint.tx.room().map_err(ClientError::Ring)?;
        if room == 0 {
            return Err(ClientError::RingFull);
        }
        let buffer = self.pool.alloc().ok_or(ClientError::NoBuffer)?;
        let header = request.header();
        let header = header.as_slice();
        let written = self.pool.write(&buffer, 0, header).and_then(|()| {
            self.pool
                .write(&buffer, header.len() as u32, request.payload())
        });
        if let Err(error) = written {
            self.pool.free(buffer);
            return Err(ClientError::Pool(error));
        }
        let desc = self
            .pool
            .submit(buffer, 0, len as u32)
            .map_err(ClientError::Pool)?;
        self.endpoint
            .tx
            .push(request.head().stamp(desc))
            .map_err(|_| ClientError::RingFull)?;
        self.stats.requests += 1;
        self.unsignalled_requests = true;
        Ok(())
    }

    /// Sends `request` for a socket just entered in the table; forgets it if that fails.
    fn open(&mut self, handle: u32, request: &Request<'_>) -> Result<u32, ClientError> {
        match self.send(request) {
            Ok(()) => Ok(handle),
            Err(error) => {
                self.sockets.remove(&handle);
                Err(error)
            }
        }
    }

    /// Opens a UDP socket on `port` (0: OS B picks one). [`Event::Bound`] follows.
    pub fn udp_bind(&mut self, port: u16) -> Result<u32, ClientError> {
        let handle = self.new_handle(SocketKind::Udp)?;
        self.open(
            handle,
            &Request::UdpBind {
                handle,
                local_port: port,
            },
        )
    }

    /// Sends a datagram.
    pub fn udp_send(
        &mut self,
        handle: u32,
        remote: SocketAddrV4,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        match self.sockets.get(&handle) {
            Some(socket) if socket.kind == SocketKind::Udp && !socket.closing => {}
            _ => return Err(ClientError::BadHandle),
        }
        self.send(&Request::UdpSend {
            handle,
            remote,
            payload,
        })
    }

    /// Opens a TCP connection (`local_port` 0: OS B picks; `flags`:
    /// [`netmsg::OPEN_REPEATABLE`] or 0). [`Event::TcpConnected`] or [`Event::Closed`] follows.
    pub fn tcp_connect(
        &mut self,
        remote: SocketAddrV4,
        local_port: u16,
        flags: u32,
    ) -> Result<u32, ClientError> {
        let handle = self.new_handle(SocketKind::Tcp)?;
        self.open(
            handle,
            &Request::TcpConnect {
                handle,
                remote,
                local_port,
                flags,
            },
        )
    }

    /// Listens on `port` with `backlog` half-open connections. [`Event::Bound`] follows, then
    /// an [`Event::TcpAccepted`] per connection.
    pub fn tcp_listen(&mut self, port: u16, backlog: u16, flags: u32) -> Result<u32, ClientError> {
        let handle = self.new_handle(SocketKind::TcpListener)?;
        self.open(
            handle,
            &Request::TcpListen {
                handle,
                local_port: port,
                backlog,
                flags,
            },
        )
    }

    /// Sends as much of `data` as the connection's credit, the free pool A buffers and the ring
    /// allow, in buffer-sized pieces; returns the bytes taken (at least one), or
    /// [`ClientError::WouldBlock`] if none could be.
    pub fn tcp_send(&mut self, handle: u32, data: &[u8]) -> Result<usize, ClientError> {
        let socket = match self.sockets.get(&handle) {
            Some(socket) if socket.kind == SocketKind::Tcp => *socket,
            _ => return Err(ClientError::BadHandle),
        };
        if !socket.open || socket.closing {
            return Err(ClientError::NotConnected);
        }
        let piece_max = self.buffer_size();
        let mut sent = 0;
        let mut credit = socket.credit;
        while sent < data.len() && credit > 0 {
            let piece = (data.len() - sent).min(piece_max).min(credit as usize);
            let request = Request::TcpSend {
                handle,
                data: &data[sent..sent + piece],
            };
            match self.send(&request) {
                Ok(()) => {
                    sent += piece;
                    credit -= piece as u64;
                }
                Err(ClientError::NoBuffer | ClientError::RingFull) if sent > 0 => break,
                Err(error) => {
                    self.set_credit(handle, credit);
                    return Err(error);
                }
            }
        }
        self.set_credit(handle, credit);
        if sent == 0 {
            return Err(ClientError::WouldBlock);
        }
        Ok(sent)
    }

    fn set_credit(&mut self, handle: u32, credit: u64) {
        if let Some(socket) = self.sockets.get_mut(&handle) {
            socket.credit = credit;
        }
    }

    fn close_with(&mut self, handle: u32, abort: bool) -> Result<(), ClientError> {
        match self.sockets.get(&handle) {
            Some(socket) if !socket.closing => {}
            _ => return Err(ClientError::BadHandle),
        }
        self.send(&Request::Close { handle, abort })?;
        if let Some(socket) = self.sockets.get_mut(&handle) {
            socket.closing = true;
        }
        Ok(())
    }

    /// Closes a socket (a TCP connection in order, after its queued bytes).
    /// [`Event::Closed`] follows; the handle is free after it.
    pub fn close(&mut self, handle: u32) -> Result<(), ClientError> {
        self.close_with(handle, false)
    }

    /// [`Client::close`] for a TCP connection or listener only (any other handle is refused).
    pub fn tcp_close(&mut self, handle: u32) -> Result<(), ClientError> {
        match self.socket_kind(handle) {
            Some(SocketKind::Tcp | SocketKind::TcpListener) => self.close(handle),
            _ => Err(ClientError::BadHandle),
        }
    }

    /// Resets a TCP connection (or closes another socket). [`Event::Closed`] follows.
    pub fn abort(&mut self, handle: u32) -> Result<(), ClientError> {
        self.close_with(handle, true)
    }

    /// Sends a whole IPv4 RoCEv2 packet as it is.
    pub fn roce_send(&mut self, packet: &[u8]) -> Result<(), ClientError> {
        self.send(&Request::RoceTx { packet })
    }

    /// Asks for OS B's connection table; [`Event::ConnectionTable`] parts with `cookie` follow.
    pub fn query_connections(&mut self, cookie: u32) -> Result<(), ClientError> {
        self.send(&Request::Query { cookie })
    }

    /// The next valid event from OS B, if any. Its bytes live in the client until the next call.
    pub fn poll(&mut self) -> Option<Event<'_>> {
        // Sends take buffers back when they run short; a client that mostly receives takes
        // them back here, before a quarter of the return ring is waiting.
        if self.pool.in_flight_count() >= self.endpoint.tx_return.capacity() / 4 {
            self.reclaim();
        }
        let (flags, meta, len) = loop {
            match self.endpoint.rx_return.room() {
                Ok(0) => return None,
                Ok(_) => {}
                Err(_) => {
                    self.stats.ring_faults += 1;
                    return None;
                }
            }
            let desc = match self.endpoint.rx.pop() {
                Ok(Some(desc)) => desc,
                Ok(None) => return None,
                Err(_) => {
                    self.stats.ring_faults += 1;
                    return None;
                }
            };
            let copied = self.endpoint.peer_pool.read(&desc, &mut self.scratch);
            if let Ok(back) = self.endpoint.peer_pool.return_desc(&desc)
                && self.endpoint.rx_return.push(back).is_ok()
            {
                self.unsignalled_returns = true;
            }
            let checked = copied
                .map_err(|_| ErrorCode::BadDescriptor)
                .and_then(|len| {
                    let event = Event::parse(desc.flags, desc.meta, &self.scratch[..len])?;
                    apply(&mut self.sockets, &event)?;
                    if let Event::Error { .. } = event {
                        self.stats.errors += 1;
                    }
                    Ok(len)
                });
            match checked {
                Ok(len) => break (desc.flags, desc.meta, len),
                Err(code) => {
                    self.stats.bad_events += 1;
                    self.stats.last_bad_event = Some(code);
                }
            }
        };
        self.stats.events += 1;
        Event::parse(flags, meta, &self.scratch[..len]).ok()
    }
}

/// Checks `event` against the client's table and applies it.
fn apply(sockets: &mut BTreeMap<u32, SocketState>, event: &Event<'_>) -> Result<(), ErrorCode> {
    let kind_of = |sockets: &BTreeMap<u32, SocketState>, handle: u32| {
        sockets.get(&handle).map(|socket| socket.kind)
    };
    match *event {
        Event::RoceRx { .. } | Event::ConnectionTable { .. } => {}
        Event::UdpRecv { handle, .. } => {
            if kind_of(sockets, handle) != Some(SocketKind::Udp) {
                return Err(ErrorCode::BadHandle);
            }
        }
        Event::Bound { handle, .. } => match sockets.get_mut(&handle) {
            Some(socket) if socket.kind != SocketKind::Tcp && !socket.open => socket.open = true,
            _ => return Err(ErrorCode::BadHandle),
        },
        Event::TcpConnected { handle, info } => match sockets.get_mut(&handle) {
            Some(socket) if socket.kind == SocketKind::Tcp && !socket.open => {
                socket.open = true;
                socket.credit = u64::from(info.send_credit);
            }
            _ => return Err(ErrorCode::BadHandle),
        },
        Event::TcpAccepted {
            listener,
            handle,
            info,
        } => {
            if kind_of(sockets, listener) != Some(SocketKind::TcpListener)
                || sockets.contains_key(&handle)
            {
                return Err(ErrorCode::BadHandle);
            }
            sockets.insert(
                handle,
                SocketState {
                    kind: SocketKind::Tcp,
                    open: true,
                    credit: u64::from(info.send_credit),
                    closing: false,
                },
            );
        }
        Event::TcpData { handle, .. } | Event::TcpEof { handle } => {
            if kind_of(sockets, handle) != Some(SocketKind::Tcp) {
                return Err(ErrorCode::BadHandle);
            }
        }
        Event::Closed { handle, .. } => {
            if sockets.remove(&handle).is_none() {
                return Err(ErrorCode::BadHandle);
            }
        }
        Event::SendSpace { handle, credit } => match sockets.get_mut(&handle) {
            Some(socket) if socket.kind == SocketKind::Tcp => {
                socket.credit = socket
                    .credit
                    .checked_add(u64::from(credit))
                    .filter(|total| *total <= u64::from(u32::MAX))
                    .ok_or(ErrorCode::BadField)?;
            }
            _ => return Err(ErrorCode::BadHandle),
        },
        Event::Error {
            request_kind,
            request_meta,
            ..
        } => {
            // A refused open created nothing: the handle is free again.
            let opens = [
                RequestKind::UdpBind,
                RequestKind::TcpConnect,
                RequestKind::TcpListen,
            ];
            let refused_open =
                RequestKind::from_u32(request_kind).is_some_and(|kind| opens.contains(&kind));
            if refused_open
                && sockets
                    .get(&request_meta)
                    .is_some_and(|socket| !socket.open)
            {
                sockets.remove(&request_meta);
            }
        }
    }
    Ok(())
}
