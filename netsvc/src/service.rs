//! The network service engine: smoltcp, the RoCE fast path and the ring service in one
//! [`NetService::poll`] step.
//!
//! # One step
//!
//! [`NetService::poll`] does a bounded amount of work, in this order:
//!
//! 1. reclaims pool B buffers that OS A returned, and moves frames waiting for the NIC;
//! 2. posts control events that were waiting for pool B buffers or ring room;
//! 3. serves up to [`NetConfig::batch`] requests from OS A, returning each pool A buffer once
//!    its message is copied out (a request that cannot be served yet, such as a `RoceTx` while
//!    the NIC backlog is full, stays in the ring for the next step);
//! 4. reads up to [`NetConfig::batch`] frames from the NIC: RoCE packets for us go to OS A as
//!    [`Event::RoceRx`] without entering smoltcp, everything else is snooped for ARP and handed
//!    to smoltcp (which answers ARP and ICMP echo by itself);
//! 5. services every socket: connection progress, received data, send credit, closes;
//! 6. lets smoltcp transmit, and runs the RoCE ARP timers.
//!
//! # Event order
//!
//! Events about one handle reach OS A in the order they happened. Control events (`Bound`,
//! `TcpConnected`, `Closed`, `Error`, ...) that find no pool B buffer or ring slot wait in a
//! queue inside the service; while anything waits there no data event (`TcpData`, `UdpRecv`)
//! is made, so data never overtakes the control events before it. `RoceRx` belongs to no
//! handle and is never held back: without a buffer the packet is dropped and counted, as a NIC
//! drops when its receive ring is full (the RoCE transport retransmits).
//!
//! # The poll loop contract
//!
//! The platform calls `poll` whenever something may have happened (a ring interrupt from OS A,
//! a NIC interrupt, the timer) and acts on the [`PollOutcome`]:
//!
//! ```text
//! loop {
//!     let outcome = service.poll(now_ns(), &mut endpoint, &mut pool);
//!     if outcome.signal_peer { send OS A its "ring has work" IPI }
//!     if outcome.busy { continue }                     // batch limit hit: more to do now
//!     arm the timer for outcome.deadline_ns (if any)
//!     let mut idle = endpoint.rx.prepare_to_sleep();   // OS A's next request wakes us
//!     if outcome.starved {                             // so does its next buffer return
//!         idle &= endpoint.tx_return.prepare_to_sleep();
//!     }
//!     if idle { sleep until an interrupt (ring, NIC) or the timer }
//!     endpoint.rx.woke_up();
//!     endpoint.tx_return.woke_up();
//! }
//! ```

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::mem;
use core::net::{Ipv4Addr, SocketAddrV4};

use shm_ring::desc::Desc;
use shm_ring::netmsg::{
    self, CloseReason, ConnectionEntry, ConnectionInfo, Entries, ErrorCode, Established, Event,
    EventKind, Head, Request, RequestKind, TableHeader,
};
use shm_ring::pool::{PoolOwner, PoolView, ReclaimError};
use shm_ring::ring::{Consumer, Producer};
use shm_ring::shared::Endpoint;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::arp::{ArpCache, ArpLimits, Enqueued};
use crate::config::{ConfigError, NetConfig, UDP_OVERHEAD};
use crate::frame::{self, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, Ingress};
use crate::nic::{Frame, Nic, Phy, TxQueue, TxStats};
use crate::table::{Slot, SlotKind, TcpPhase, TcpSlot, endpoint_v4};

/// Control events held while pool B or the ring is full, beyond which requests wait in the
/// ring (each request adds at most a few).
const PENDING_SOFT_LIMIT: usize = 256;
/// The largest request the service copies out of pool A.
const MAX_REQUEST: usize = 64 * 1024;
/// First ephemeral port (IANA's dynamic range).
const EPHEMERAL_FIRST: u16 = 49152;
/// How long a closed TCP socket may wait for its RST to go out before it is removed anyway.
const RST_GRACE_NS: u64 = 1_000_000_000;

/// How long the connections OS A left open may take to deliver what they hold and have their
/// FIN acknowledged once OS A has ended ([`NetService::wind_down`]); what is still open then
/// is reset. smoltcp resends after at least a second, doubling each time: this leaves room
/// for three resends of a lost segment to a peer that is there.
pub const LINGER_NS: u64 = 10_000_000_000;

/// What [`NetService::wind_down`] did with the connections OS A left open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindDown {
    /// TCP connections closed with a FIN, after the bytes OS A had sent.
    pub closed: u32,
    /// TCP connections reset because they held bytes OS A had not read.
    pub reset: u32,
    /// TCP connections (closed by the wind-down or by OS A before) still not finished after
    /// [`LINGER_NS`], and reset then.
    pub timed_out: u32,
    /// UDP sockets and TCP listeners removed.
    pub removed: u32,
}

/// What one [`NetService::poll`] step asks of the platform.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Call `poll` again no later than this (absolute, on the `now_ns` clock); `None` when only
    /// new input (a request, a frame) can create work.
    pub deadline_ns: Option<u64>,
    /// A batch limit was hit: there is more to do right away.
    pub busy: bool,
    /// The step pushed to a ring whose consumer (OS A) asked to be woken: send it a signal.
    pub signal_peer: bool,
    /// The step did something (served a request, moved a frame or an event).
    pub progress: bool,
    /// Events wait for pool B buffers or B -> A ring slots that OS A has not returned yet.
    /// Before sleeping, the platform should also arm `endpoint.tx_return.prepare_to_sleep()`,
    /// so that OS A's next buffer return wakes it.
    pub starved: bool,
}

/// The service's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Requests OS A sent (good or bad).
    pub requests: u64,
    /// Requests refused with an [`Event::Error`].
    pub requests_refused: u64,
    /// Events posted to OS A.
    pub events: u64,
    /// Control events that had to wait for pool B or the ring.
    pub events_delayed: u64,
    /// Frames read from the NIC.
    pub frames_received: u64,
    /// Of those, frames handed to smoltcp.
    pub frames_to_stack: u64,
    /// Polls that ran the stack (smoltcp's sockets and the socket slots); the others only
    /// carried RoCE packets and ring traffic.
    pub stack_passes: u64,
    /// RoCE packets handed to OS A.
    pub roce_rx: u64,
    /// RoCE packets dropped: no pool B buffer or ring slot, or too large for a buffer.
    pub roce_rx_dropped: u64,
    /// Frames for UDP port 4791 with a bad IPv4 checksum or bad lengths, dropped.
    pub roce_rx_malformed: u64,
    /// RoCE packets from OS A sent (or queued for the NIC).
    pub roce_tx: u64,
    /// RoCE packets from OS A refused (bad header, no route).
    pub roce_tx_refused: u64,
    /// RoCE packets dropped waiting for ARP (queue full, or no answer).
    pub roce_tx_arp_dropped: u64,
    /// ARP requests the fast path sent.
    pub arp_requests: u64,
    /// ARP entries learned or refreshed by snooping.
    pub arp_learned: u64,
    /// Connections refused because the table was full.
    pub accept_overflows: u64,
    /// Datagrams received that did not fit a pool B buffer, dropped.
    pub udp_rx_dropped: u64,
    /// Datagrams from OS A dropped because the socket's send buffer stayed full.
    pub udp_tx_dropped: u64,
    /// Bad buffer returns from OS A (double or bogus returns).
    pub bad_returns: u64,
    /// Ring protocol faults seen (OS A broke a ring; that ring is dead until re-attached).
    pub ring_faults: u64,
    /// RoCE packets waiting for ARP resolution now (a gauge).
    pub roce_tx_waiting_arp: u64,
    /// The NIC transmit path.
    pub tx: TxStats,
}

/// Why an event could not be posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PostError {
    /// No pool B buffer or ring slot now.
    NoRoom,
    /// The event does not fit a pool B buffer.
    TooLarge,
}

/// Posting events on the B -> A ring in pool B buffers.
struct Outbox<'a, S> {
    ring: &'a mut Producer<Desc>,
    pool: &'a mut PoolOwner<S>,
    buffer_size: usize,
    posted: u64,
    faults: u64,
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> Outbox<'_, S> {
    /// Whether `count` more events fit now.
    fn has_room(&mut self, count: u32) -> bool {
        if self.pool.free_count() < count {
            return false;
        }
        match self.ring.room_for(count) {
            Ok(free) => free >= count,
            Err(_) => {
                self.faults += 1;
                false
            }
        }
    }

    fn push(&mut self, head: Head, desc: Desc) {
        if self.ring.push(head.stamp(desc)).is_ok() {
            self.posted += 1;
        } else {
            // Only a ring fault gets here (room was checked); the buffer stays in flight.
            self.faults += 1;
        }
    }

    /// Posts `event`: header and payload copied into a fresh pool B buffer.
    fn post(&mut self, event: &Event<'_>) -> Result<(), PostError> {
        let len = event.buffer_len();
        if len > self.buffer_size {
            return Err(PostError::TooLarge);
        }
        if !self.has_room(1) {
            return Err(PostError::NoRoom);
        }
        let Some(buffer) = self.pool.alloc() else {
            return Err(PostError::NoRoom);
        };
        let header = event.header();
        let header = header.as_slice();
        let written = self.pool.write(&buffer, 0, header).and_then(|()| {
            self.pool
                .write(&buffer, header.len() as u32, event.payload())
        });
        if written.is_err() {
            self.pool.free(buffer);
            return Err(PostError::TooLarge);
        }
        match self.pool.submit(buffer, 0, len as u32) {
            Ok(desc) => {
                self.push(event.head(), desc);
                Ok(())
            }
            Err(_) => Err(PostError::TooLarge),
        }
    }

    /// Posts a `TcpData` event with bytes taken straight from `socket`'s receive buffer;
    /// returns the bytes moved (0 if none could be).
    fn post_tcp_data(&mut self, handle: u32, socket: &mut tcp::Socket<'_>) -> usize {
        if !self.has_room(1) {
            return 0;
        }
        let Some(buffer) = self.pool.alloc() else {
            return 0;
        };
        let pool = &mut *self.pool;
        let max = self.buffer_size;
        let moved = socket.recv(|data| {
            let count = data.len().min(max);
            match pool.write(&buffer, 0, &data[..count]) {
                Ok(()) => (count, count),
                Err(_) => (0, 0),
            }
        });
        let moved = moved.unwrap_or(0);
        if moved == 0 {
            self.pool.free(buffer);
            return 0;
        }
        match self.pool.submit(buffer, 0, moved as u32) {
            Ok(desc) => {
                let head = Head {
                    flags: EventKind::TcpData as u32,
                    meta: handle,
                    len: moved as u32,
                };
                self.push(head, desc);
                moved
            }
            Err(_) => 0,
        }
    }
}

/// What became of one request.
enum Served {
    /// Done with (served or refused): its buffer goes back.
    Done,
    /// Cannot be served now: leave it, and those after it, in the ring.
    Later,
}

/// OS B's network service: a smoltcp interface over a [`Nic`], the RoCE fast path, and the
/// ring service that carries OS A's requests and events.
pub struct NetService<D: Nic> {
    nic: D,
    config: NetConfig,
    iface: Interface,
    sockets: SocketSet<'static>,
    tx: TxQueue,
    arp: ArpCache,
    slots: Vec<Slot>,
    pending: VecDeque<Event<'static>>,
    /// One received frame.
    frame: Vec<u8>,
    /// One request copied out of pool A.
    scratch: Vec<u8>,
    next_port: u16,
    next_accepted: u32,
    now_ns: u64,
    /// The stack (smoltcp's sockets and the service's socket slots) has work this poll: a
    /// frame went to it, a request touched a socket, or a call outside `poll` did.
    stack_due: bool,
    /// When smoltcp next wants to be polled (its `poll_at`, in ns), as of the last stack pass.
    stack_deadline_ns: Option<u64>,
    stats: NetStats,
}

impl<D: Nic + fmt::Debug> fmt::Debug for NetService<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetService")
            .field("nic", &self.nic)
            .field("config", &self.config)
            .field("slots", &self.slots)
            .field("pending", &self.pending.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<D: Nic> NetService<D> {
    /// Brings up the interface on `nic` with `config` (all-zero `config.mac` takes the NIC's).
    pub fn new(
        mut nic: D,
        mut config: NetConfig,
        now_ns: u64,
    ) -> Result<NetService<D>, ConfigError> {
        if config.mac == [0; 6] {
            config.mac = nic.mac();
        }
        config.validate()?;
        let frame_len = config.frame_len();
        let mut tx = TxQueue::new(config.tx_backlog, frame_len);
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        iface_config.random_seed = config.random_seed;
        let now = instant(now_ns);
        let mut phy = Phy {
            nic: &mut nic,
            tx: &mut tx,
            rx: None,
            frame_len,
        };
        let mut iface = Interface::new(iface_config, &mut phy, now);
        let (address, prefix_len) = (config.address, config.prefix_len);
        iface.update_ip_addrs(|addresses| {
            // Room for one address is guaranteed by smoltcp's minimum address count.
            let _ = addresses.push(IpCidr::new(IpAddress::Ipv4(address), prefix_len));
        });
        if let Some(gateway) = config.gateway {
            // A fresh route table has room for the default route.
            let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        }
        let arp = ArpCache::new(ArpLimits {
            entries: config.arp_entries,
            lifetime_ns: config.arp_lifetime_ns,
            pending_destinations: config.arp_pending_destinations,
            queue_per_destination: config.arp_queue_per_destination,
            retry_ns: config.arp_retry_ns,
            attempts: config.arp_attempts,
        });
        Ok(NetService {
            nic,
            iface,
            sockets: SocketSet::new(Vec::new()),
            tx,
            arp,
            slots: Vec::new(),
            pending: VecDeque::new(),
            frame: vec![0u8; frame_len + 4],
            scratch: Vec::new(),
            next_port: EPHEMERAL_FIRST,
            next_accepted: 1,
            now_ns,
            stack_due: true,
            stack_deadline_ns: None,
            stats: NetStats::default(),
            config,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The NIC.
    pub fn nic(&self) -> &D {
        &self.nic
    }

    /// The NIC, mutably (for its interrupt handling, say).
    pub fn nic_mut(&mut self) -> &mut D {
        &mut self.nic
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        NetStats {
            tx: self.tx.stats,
            roce_tx_waiting_arp: self.arp.queued_frames() as u64,
            ..self.stats
        }
    }

    /// Every socket the service carries, in the order they were opened.
    pub fn connections(&self) -> impl Iterator<Item = ConnectionInfo> + '_ {
        self.slots
            .iter()
            .map(|slot| slot.info(&self.sockets, self.config.address))
    }

    /// OS A has ended: closes every socket it left open, as an operating system closes the
    /// sockets of a process that exits, so that peers learn of it at once instead of when
    /// their own timeouts run out. A TCP connection finishes with a FIN after the bytes OS A
    /// sent, or is reset if it holds bytes OS A did not read (as Linux does); UDP sockets and
    /// listeners go at once. Events still waiting for OS A are dropped: nobody will read them.
    ///
    /// Go on polling until [`NetService::closing`] is false, then [`NetService::abort_all`]
    /// (which [`NetService::wind_down`] does).
    pub fn close_all(&mut self) -> WindDown {
        self.stack_due = true;
        self.pending.clear();
        let mut done = WindDown::default();
        let mut index = 0;
        while index < self.slots.len() {
            let SlotKind::Tcp(conn) = &mut self.slots[index].kind else {
                let slot = self.slots.remove(index);
                self.free_sockets(slot);
                done.removed += 1;
                continue;
            };
            index += 1;
            if conn.closed_by_a {
                continue;
            }
            conn.closed_by_a = true;
            let socket = self.sockets.get_mut::<tcp::Socket<'_>>(conn.socket);
            if socket.recv_queue() > 0 {
                conn.aborted = true;
                socket.abort();
                done.reset += 1;
            } else {
                socket.close();
                done.closed += 1;
            }
        }
        done
    }

    /// Whether a TCP connection still has something on the way that matters: bytes not yet
    /// acknowledged, or a FIN to a peer that has not closed its side (one that has needs no
    /// telling, and may be gone).
    pub fn closing(&self) -> bool {
        self.slots.iter().any(|slot| match &slot.kind {
            SlotKind::Tcp(conn) => {
                let socket = self.sockets.get::<tcp::Socket<'_>>(conn.socket);
                match socket.state() {
                    tcp::State::Closed
                    | tcp::State::Listen
                    | tcp::State::TimeWait
                    | tcp::State::FinWait2 => false,
                    tcp::State::LastAck | tcp::State::Closing => socket.send_queue() > 0,
                    _ => true,
                }
            }
            _ => false,
        })
    }

    /// Resets every TCP connection that has not finished; returns how many.
    pub fn abort_all(&mut self) -> u32 {
        self.stack_due = true;
        let mut reset = 0;
        for slot in &mut self.slots {
            let SlotKind::Tcp(conn) = &mut slot.kind else {
                continue;
            };
            let socket = self.sockets.get_mut::<tcp::Socket<'_>>(conn.socket);
            if !matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                conn.closed_by_a = true;
                conn.aborted = true;
                socket.abort();
                reset += 1;
            }
        }
        reset
    }

    /// Runs the service after OS A has ended ([`NetService::close_all`]) until the connections
    /// it left have delivered their bytes and FIN, or [`LINGER_NS`] passed; then resets what
    /// is still open and sends the resets. `now` is `poll`'s clock; `wait(deadline)` may sleep
    /// until that time or until the NIC has a frame.
    pub fn wind_down<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        endpoint: &mut Endpoint,
        pool: &mut PoolOwner<S>,
        mut now: impl FnMut() -> u64,
        mut wait: impl FnMut(u64),
    ) -> WindDown {
        let mut done = self.close_all();
        let give_up = now().saturating_add(LINGER_NS);
        loop {
            let at = now();
            let outcome = self.poll(at, endpoint, pool);
            if !self.closing() {
                return done;
            }
            if at >= give_up {
                done.timed_out = self.abort_all();
                self.poll(now(), endpoint, pool);
                return done;
            }
            if !outcome.busy {
                wait(outcome.deadline_ns.unwrap_or(give_up).min(give_up));
            }
        }
    }

    /// One step of the service (see the module docs): serves OS A's requests on
    /// `endpoint.rx`, posts events on `endpoint.tx` in buffers of `pool` (pool B, which the
    /// caller owns), moves frames, runs smoltcp. `now_ns` is a monotonic clock in nanoseconds.
    pub fn poll<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        now_ns: u64,
        endpoint: &mut Endpoint,
        pool: &mut PoolOwner<S>,
    ) -> PollOutcome {
        self.now_ns = self.now_ns.max(now_ns);
        let now = instant(self.now_ns);
        let before = self.stats.requests + self.stats.frames_received + self.tx.stats.frames;
        let Endpoint {
            tx,
            tx_return,
            rx,
            rx_return,
            peer_pool,
            ..
        } = endpoint;
        self.reclaim(pool, tx_return);
        self.tx.flush(&mut self.nic);
        let buffer_size = pool.view().buffer_size() as usize;
        let mut out = Outbox {
            ring: &mut *tx,
            pool: &mut *pool,
            buffer_size,
            posted: 0,
            faults: 0,
        };
        self.flush_pending(&mut out);
        let (busy_requests, returned) = self.serve_requests(rx, rx_return, peer_pool, &mut out);
        let busy_frames = self.receive_frames(now, &mut out);
        // The stack runs when something may have given it work; a poll that only carried
        // RoCE packets (the fast path) leaves it alone. Events or socket data waiting for
        // ring room or pool buffers, and frames waiting for the NIC, keep it running.
        let stack = mem::take(&mut self.stack_due)
            || self
                .stack_deadline_ns
                .is_some_and(|deadline| deadline <= self.now_ns)
            || !self.pending.is_empty()
            || self.tx.backlog_len() > 0
            || out.pool.free_count() == 0;
        if stack {
            self.stats.stack_passes += 1;
            self.service_sockets(&mut out);
            self.egress(now);
            self.stack_deadline_ns = self.iface.poll_at(now, &self.sockets).map(|at| {
                u64::try_from(at.total_micros())
                    .unwrap_or(0)
                    .saturating_mul(1000)
            });
            if !self.stack_quiet() {
                self.stack_due = true;
            }
        }
        self.run_arp_timers();
        self.flush_pending(&mut out);
        let posted = out.posted;
        self.stats.events += posted;
        self.stats.ring_faults += out.faults;
        // Wake OS A if it sleeps waiting for events, for returned buffers, or for room on a
        // ring this step made room on.
        let mut signal_peer = posted > 0 && tx.needs_wakeup();
        if returned > 0 && (rx_return.needs_wakeup() || rx.needs_wakeup()) {
            signal_peer = true;
        }
        let after = self.stats.requests + self.stats.frames_received + self.tx.stats.frames;
        PollOutcome {
            deadline_ns: self.deadline(),
            busy: busy_requests || busy_frames,
            signal_peer,
            progress: after != before || posted > 0,
            starved: !self.pending.is_empty() || pool.free_count() == 0,
        }
    }

    fn reclaim<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        pool: &mut PoolOwner<S>,
        tx_return: &mut Consumer<Desc>,
    ) {
        // A bad return stops a reclaim pass after consuming it; go on past a few of them.
        for _ in 0..8 {
            match pool.reclaim_from(tx_return, u32::MAX) {
                Ok(_) => return,
                Err(ReclaimError::Pool(_)) => self.stats.bad_returns += 1,
                Err(ReclaimError::Peer(_)) => {
                    self.stats.ring_faults += 1;
                    return;
                }
            }
        }
    }

    /// Whether the stack has nothing to do until a frame, a request or smoltcp's poll time
    /// gives it some: every UDP socket and every open connection has delivered what it
    /// received, every listener waits for connections, and no connection is being set up
    /// or closed (those run on every poll until they are done, as everything did before).
    fn stack_quiet(&self) -> bool {
        self.slots.iter().all(|slot| match &slot.kind {
            SlotKind::Udp { socket, .. } => {
                !self.sockets.get::<udp::Socket<'_>>(*socket).can_recv()
            }
            SlotKind::Listener { sockets, .. } => sockets.iter().all(|socket| {
                matches!(
                    self.sockets.get::<tcp::Socket<'_>>(*socket).state(),
                    tcp::State::Listen | tcp::State::SynReceived
                )
            }),
            SlotKind::Tcp(conn) => {
                let socket = self.sockets.get::<tcp::Socket<'_>>(conn.socket);
                conn.phase == TcpPhase::Open
                    && !conn.closed_by_a
                    && !socket.can_recv()
                    && (conn.eof_sent || socket.may_recv())
            }
        })
    }

    fn deadline(&self) -> Option<u64> {
        // smoltcp's poll time as of the last stack pass; nothing since has changed it (what
        // could, a frame or a request for the stack, makes the next poll a stack pass).
        let smoltcp = self
            .stack_deadline_ns
            .map(|deadline| deadline.max(self.now_ns));
        let arp = self.arp.next_deadline();
        // Frames wait for the NIC: look again soon (or on the NIC's interrupt).
        let backlog = (self.tx.backlog_len() > 0).then(|| self.now_ns.saturating_add(20_000));
        [smoltcp, arp, backlog].into_iter().flatten().min()
    }

    /// Posts a control event now if nothing waits before it and there is room, else queues it.
    fn post<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        event: Event<'static>,
        out: &mut Outbox<'_, S>,
    ) {
        if self.pending.is_empty() {
            match out.post(&event) {
                Ok(()) => return,
                // Control events are a few bytes; a pool with smaller buffers is unusable.
                Err(PostError::TooLarge) => return,
                Err(PostError::NoRoom) => {}
            }
        }
        self.stats.events_delayed += 1;
        self.pending.push_back(event);
    }

    fn flush_pending<S: AsRef<[u64]> + AsMut<[u64]>>(&mut self, out: &mut Outbox<'_, S>) {
        while let Some(event) = self.pending.front() {
            match out.post(event) {
                Ok(()) | Err(PostError::TooLarge) => {
                    self.pending.pop_front();
                }
                Err(PostError::NoRoom) => break,
            }
        }
    }

    fn refuse<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        desc: &Desc,
        code: ErrorCode,
        detail: u32,
        out: &mut Outbox<'_, S>,
    ) {
        self.stats.requests_refused += 1;
        let error = Event::Error {
            request_kind: desc.flags,
            request_meta: desc.meta,
            code,
            detail,
        };
        self.post(error, out);
    }

    /// Serves up to a batch of requests; returns (batch limit hit, buffers returned).
    fn serve_requests<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        rx: &mut Consumer<Desc>,
        rx_return: &mut Producer<Desc>,
        peer_pool: &PoolView,
        out: &mut Outbox<'_, S>,
    ) -> (bool, u32) {
        let room = match rx_return.room_for(self.config.batch as u32) {
            Ok(room) => room,
            Err(_) => {
                self.stats.ring_faults += 1;
                return (false, 0);
            }
        };
        let limit = room.min(self.config.batch as u32);
        if limit == 0 {
            return (false, 0);
        }
        let batch = match rx.peek(limit) {
            Ok(batch) => batch,
            Err(_) => {
                self.stats.ring_faults += 1;
                return (false, 0);
            }
        };
        if self.scratch.is_empty() {
            let size = (peer_pool.buffer_size() as usize).min(MAX_REQUEST);
            self.scratch = vec![0u8; size];
        }
        let mut scratch = mem::take(&mut self.scratch);
        let (mut done, mut returned) = (0, 0);
        for desc in batch.iter() {
            if self.pending.len() >= PENDING_SOFT_LIMIT {
                break;
            }
            if let Served::Later = self.serve_request(&desc, peer_pool, &mut scratch, out) {
                break;
            }
            done += 1;
            // A descriptor outside the pool names no buffer of it: nothing to return.
            if let Ok(back) = peer_pool.return_desc(&desc)
                && rx_return.push(back).is_ok()
            {
                returned += 1;
            }
        }
        let hit_limit = done == limit;
        batch.release_first(done);
        self.scratch = scratch;
        (hit_limit, returned)
    }

    fn serve_request<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        desc: &Desc,
        peer_pool: &PoolView,
        scratch: &mut [u8],
        out: &mut Outbox<'_, S>,
    ) -> Served {
        if desc.flags == RequestKind::RoceTx as u32 {
            // Full NIC backlog: leave the packet in the ring (back-pressure, not loss).
            if !self.tx.has_room() {
                return Served::Later;
            }
            self.stats.requests += 1;
            self.roce_tx(desc, peer_pool, out);
            return Served::Done;
        }
        // Every other request may touch the stack.
        self.stack_due = true;
        if desc.flags == RequestKind::Query as u32 && !self.pending.is_empty() {
            return Served::Later;
        }
        let len = match peer_pool.check(desc) {
            Ok(span) => span.len as usize,
            Err(_) => {
                self.stats.requests += 1;
                self.refuse(desc, ErrorCode::BadDescriptor, desc.len, out);
                return Served::Done;
            }
        };
        let Some(bytes) = scratch.get_mut(..len) else {
            self.stats.requests += 1;
            self.refuse(desc, ErrorCode::TooLarge, desc.len, out);
            return Served::Done;
        };
        if peer_pool.read_at(desc, 0, bytes).is_err() {
            self.stats.requests += 1;
            self.refuse(desc, ErrorCode::BadDescriptor, desc.len, out);
            return Served::Done;
        }
        let request = match Request::parse(desc.flags, desc.meta, bytes) {
            Ok(request) => request,
            Err(code) => {
                self.stats.requests += 1;
                let detail = if code == ErrorCode::BadLength {
                    desc.len
                } else {
                    0
                };
                self.refuse(desc, code, detail, out);
                return Served::Done;
            }
        };
        let result = match request {
            Request::Query { cookie } => match self.answer_query(cookie, out) {
                Some(result) => result,
                None => return Served::Later,
            },
            Request::UdpSend {
                handle,
                remote,
                payload,
            } => self.udp_send(handle, remote, payload),
            Request::UdpBind { handle, local_port } => self.udp_bind(handle, local_port, out),
            Request::TcpConnect {
                handle,
                remote,
                local_port,
                flags,
            } => self.tcp_connect(handle, remote, local_port, flags),
            Request::TcpListen {
                handle,
                local_port,
                backlog,
                flags,
            } => self.tcp_listen(handle, local_port, backlog, flags, out),
            Request::TcpSend { handle, data } => self.tcp_send(handle, data),
            Request::Close { handle, abort } => self.close(handle, abort, out),
            // Handled above; kept for completeness of the match.
            Request::RoceTx { .. } => Ok(()),
        };
        self.stats.requests += 1;
        if let Err((code, detail)) = result {
            self.refuse(desc, code, detail, out);
        }
        Served::Done
    }

    fn roce_tx<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        desc: &Desc,
        peer_pool: &PoolView,
        out: &mut Outbox<'_, S>,
    ) {
        let len = desc.len as usize;
        if peer_pool.check(desc).is_err() {
            self.stats.roce_tx_refused += 1;
            self.refuse(desc, ErrorCode::BadDescriptor, desc.len, out);
            return;
        }
        if len > self.config.mtu {
            self.stats.roce_tx_refused += 1;
            self.refuse(desc, ErrorCode::TooLarge, desc.len, out);
            return;
        }
        let mut bytes = self.tx.buffer();
        let end = ETHERNET_HEADER_LEN + len;
        let checked = match bytes.get_mut(ETHERNET_HEADER_LEN..end) {
            Some(packet) => match peer_pool.read_at(desc, 0, packet) {
                Ok(()) => Request::parse(desc.flags, desc.meta, packet).and_then(|_| {
                    frame::check_roce_tx(packet, self.config.address, self.config.mtu)
                }),
                Err(_) => Err(ErrorCode::BadDescriptor),
            },
            None => Err(ErrorCode::TooLarge),
        };
        let route = checked.and_then(|destination| self.next_hop(destination));
        let next_hop = match route {
            Ok(next_hop) => next_hop,
            Err(code) => {
                self.tx.recycle(bytes);
                self.stats.roce_tx_refused += 1;
                self.refuse(desc, code, 0, out);
                return;
            }
        };
        let mut frame = Frame { bytes, len: end };
        match self.arp.lookup(next_hop, self.now_ns) {
            Some(mac) => {
                frame::write_ethernet_header(
                    &mut frame.bytes,
                    mac,
                    self.config.mac,
                    ETHERTYPE_IPV4,
                );
                if self.tx.send(&mut self.nic, frame) {
                    self.stats.roce_tx += 1;
                }
            }
            None => match self.arp.enqueue(next_hop, frame, self.now_ns) {
                Enqueued::Queued { request } => {
                    if request {
                        self.send_arp_request(next_hop);
                    }
                }
                Enqueued::Full(frame) => {
                    self.tx.recycle(frame.bytes);
                    self.stats.roce_tx_arp_dropped += 1;
                }
            },
        }
    }

    /// The on-link address to send a packet for `destination` to.
    fn next_hop(&self, destination: Ipv4Addr) -> Result<Ipv4Addr, ErrorCode> {
        if self.config.on_link(destination) {
            return Ok(destination);
        }
        self.config.gateway.ok_or(ErrorCode::NoRoute)
    }

    fn send_arp_request(&mut self, target: Ipv4Addr) {
        let mut bytes = self.tx.buffer();
        let len =
            frame::write_arp_request(&mut bytes, self.config.mac, self.config.address, target);
        if len == 0 {
            self.tx.recycle(bytes);
            return;
        }
        self.stats.arp_requests += 1;
        self.tx.send(&mut self.nic, Frame { bytes, len });
    }

    /// Records `ip` at `mac` if it is a neighbour worth knowing, and sends what waited for it.
    fn learn(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        if ip == self.config.address
            || ip.is_unspecified()
            || ip.is_broadcast()
            || !self.config.on_link(ip)
            || !frame::is_unicast_mac(mac)
        {
            return;
        }
        self.stats.arp_learned += 1;
        let Some(frames) = self.arp.learn(ip, mac, self.now_ns) else {
            return;
        };
        for mut frame in frames {
            frame::write_ethernet_header(&mut frame.bytes, mac, self.config.mac, ETHERTYPE_IPV4);
            if self.tx.send(&mut self.nic, frame) {
                self.stats.roce_tx += 1;
            }
        }
    }

    fn run_arp_timers(&mut self) {
        let mut due: Vec<Ipv4Addr> = Vec::new();
        let mut dropped = Vec::new();
        self.arp
            .maintain(self.now_ns, |ip| due.push(ip), |frame| dropped.push(frame));
        self.stats.roce_tx_arp_dropped += dropped.len() as u64;
        for frame in dropped {
            self.tx.recycle(frame.bytes);
        }
        for ip in due {
            self.send_arp_request(ip);
        }
    }

    /// Reads up to a batch of frames; returns whether the batch limit was hit.
    fn receive_frames<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        now: Instant,
        out: &mut Outbox<'_, S>,
    ) -> bool {
        let mut frame = mem::take(&mut self.frame);
        let mut count = 0;
        while count < self.config.batch {
            let Some(len) = self.nic.receive(&mut frame) else {
                break;
            };
            count += 1;
            self.stats.frames_received += 1;
            let bytes = &frame[..len.min(frame.len())];
            match frame::classify(bytes, self.config.mac, self.config.address) {
                Ingress::Roce { packet, source } => {
                    self.learn(source.0, source.1);
                    match out.post(&Event::RoceRx { packet }) {
                        Ok(()) => self.stats.roce_rx += 1,
                        Err(_) => self.stats.roce_rx_dropped += 1,
                    }
                    continue;
                }
                Ingress::RoceMalformed => {
                    self.stats.roce_rx_malformed += 1;
                    continue;
                }
                Ingress::Arp(arp) => {
                    let concerns_us =
                        arp.target_ip == self.config.address || self.arp.is_tracked(arp.sender_ip);
                    if concerns_us {
                        self.learn(arp.sender_ip, arp.sender_mac);
                    }
                }
                Ingress::Ipv4 { source } => self.learn(source.0, source.1),
                Ingress::Other => {}
            }
            self.stats.frames_to_stack += 1;
            self.stack_due = true;
            let mut phy = Phy {
                nic: &mut self.nic,
                tx: &mut self.tx,
                rx: Some(bytes),
                frame_len: self.config.frame_len(),
            };
            self.iface
                .poll_ingress_single(now, &mut phy, &mut self.sockets);
        }
        self.frame = frame;
        count == self.config.batch
    }

    fn egress(&mut self, now: Instant) {
        // Each pass sends at most one packet per socket.
        for _ in 0..self.config.batch {
            let mut phy = Phy {
                nic: &mut self.nic,
                tx: &mut self.tx,
                rx: None,
                frame_len: self.config.frame_len(),
            };
            if self.iface.poll_egress(now, &mut phy, &mut self.sockets) == PollResult::None {
                break;
            }
            // What a socket sent may have changed its state (a reset sent closes it, a FIN
            // moves it on), which the slots see on the next stack pass.
            self.stack_due = true;
        }
    }

    // ---- requests ----

    fn socket_count(&self) -> usize {
        self.slots.iter().map(Slot::socket_count).sum()
    }

    fn slot_index(&self, handle: u32) -> Option<usize> {
        self.slots.iter().position(|slot| slot.handle == handle)
    }

    fn check_new(&self, handle: u32, sockets: usize) -> Result<(), (ErrorCode, u32)> {
        if self.slot_index(handle).is_some() {
            return Err((ErrorCode::HandleInUse, 0));
        }
        if self.socket_count() + sockets > self.config.max_sockets {
            return Err((ErrorCode::TooManySockets, 0));
        }
        Ok(())
    }

    fn udp_port_in_use(&self, port: u16) -> bool {
        self.slots
            .iter()
            .any(|slot| matches!(slot.kind, SlotKind::Udp { port: used, .. } if used == port))
    }

    fn tcp_port_in_use(&self, port: u16) -> bool {
        self.slots
            .iter()
            .any(|slot| slot.tcp_port(&self.sockets) == Some(port))
    }

    /// A free ephemeral port for UDP (`udp`) or TCP.
    fn ephemeral_port(&mut self, udp: bool) -> Option<u16> {
        let span = u32::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            let taken = if udp {
                self.udp_port_in_use(port)
            } else {
                self.tcp_port_in_use(port)
            };
            if !taken && port != netmsg::ROCE_UDP_PORT {
                return Some(port);
            }
        }
        None
    }

    fn check_remote(&self, remote: SocketAddrV4) -> Result<(), (ErrorCode, u32)> {
        if *remote.ip() == self.config.address || remote.ip().is_loopback() {
            return Err((ErrorCode::BadAddress, 0));
        }
        self.next_hop(*remote.ip())
            .map(|_| ())
            .map_err(|code| (code, 0))
    }

    fn udp_bind<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        handle: u32,
        local_port: u16,
        out: &mut Outbox<'_, S>,
    ) -> Result<(), (ErrorCode, u32)> {
        self.check_new(handle, 1)?;
        let port = match local_port {
            0 => self.ephemeral_port(true).ok_or((ErrorCode::PortInUse, 0))?,
            port if self.udp_port_in_use(port) => return Err((ErrorCode::PortInUse, 0)),
            port => port,
        };
        let packets = self.config.udp_packets;
        let bytes = self.config.udp_buffer;
        let buffer =
            || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; packets], vec![0u8; bytes]);
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket.bind(port).map_err(|_| (ErrorCode::BadAddress, 0))?;
        let socket = self.sockets.add(socket);
        self.slots.push(Slot {
            handle,
            kind: SlotKind::Udp { socket, port },
            bytes_in: 0,
            bytes_out: 0,
        });
        self.post(
            Event::Bound {
                handle,
                local_port: port,
            },
            out,
        );
        Ok(())
    }

    /// A full send buffer is not waited for: one destination that never answers ARP must not
    /// hold up OS A's other requests. It gets one transmit pass, then the datagram is dropped
    /// with [`ErrorCode::NoBufferSpace`].
    fn udp_send(
        &mut self,
        handle: u32,
        remote: SocketAddrV4,
        payload: &[u8],
    ) -> Result<(), (ErrorCode, u32)> {
        let index = self.slot_index(handle);
        let Some(SlotKind::Udp { socket, .. }) = index.map(|index| &self.slots[index].kind) else {
            return Err((ErrorCode::BadHandle, 0));
        };
        let socket = *socket;
        if payload.len() > self.config.mtu - UDP_OVERHEAD || payload.len() > self.config.udp_buffer
        {
            return Err((ErrorCode::TooLarge, payload.len() as u32));
        }
        self.check_remote(remote)?;
        let endpoint = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        for attempt in 0..2 {
            match self
                .sockets
                .get_mut::<udp::Socket<'_>>(socket)
                .send_slice(payload, endpoint)
            {
                Ok(()) => {
                    if let Some(index) = index {
                        self.slots[index].bytes_out += payload.len() as u64;
                    }
                    return Ok(());
                }
                Err(udp::SendError::BufferFull) if attempt == 0 => {
                    // Drain the socket into the NIC, then try once more.
                    self.egress(instant(self.now_ns));
                }
                Err(udp::SendError::BufferFull) => break,
                Err(udp::SendError::Unaddressable) => return Err((ErrorCode::BadAddress, 0)),
            }
        }
        self.stats.udp_tx_dropped += 1;
        Err((ErrorCode::NoBufferSpace, 0))
    }

    fn new_tcp_socket(&self) -> tcp::Socket<'static> {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; self.config.tcp_rx_buffer]),
            tcp::SocketBuffer::new(vec![0u8; self.config.tcp_tx_buffer]),
        );
        socket.set_nagle_enabled(self.config.tcp_nagle);
        socket.set_timeout(self.config.tcp_timeout_ms.map(Duration::from_millis));
        socket.set_keep_alive(self.config.tcp_keep_alive_ms.map(Duration::from_millis));
        socket
    }

    fn tcp_connect(
        &mut self,
        handle: u32,
        remote: SocketAddrV4,
        local_port: u16,
        flags: u32,
    ) -> Result<(), (ErrorCode, u32)> {
        self.check_new(handle, 1)?;
        self.check_remote(remote)?;
        let port = match local_port {
            0 => self
                .ephemeral_port(false)
                .ok_or((ErrorCode::PortInUse, 0))?,
            port if self.tcp_port_in_use(port) => return Err((ErrorCode::PortInUse, 0)),
            port => port,
        };
        let mut socket = self.new_tcp_socket();
        let endpoint = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        socket
            .connect(self.iface.context(), endpoint, port)
            .map_err(|_| (ErrorCode::BadAddress, 0))?;
        let socket = self.sockets.add(socket);
        self.slots.push(Slot {
            handle,
            kind: SlotKind::Tcp(TcpSlot::new(socket, TcpPhase::Connecting, flags)),
            bytes_in: 0,
            bytes_out: 0,
        });
        Ok(())
    }

    fn listening_socket(&mut self, port: u16) -> Option<SocketHandle> {
        let mut socket = self.new_tcp_socket();
        socket.listen(port).ok()?;
        Some(self.sockets.add(socket))
    }

    fn tcp_listen<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        handle: u32,
        port: u16,
        backlog: u16,
        flags: u32,
        out: &mut Outbox<'_, S>,
    ) -> Result<(), (ErrorCode, u32)> {
        self.check_new(handle, usize::from(backlog))?;
        if self.tcp_port_in_use(port) {
            return Err((ErrorCode::PortInUse, 0));
        }
        let mut sockets = Vec::with_capacity(usize::from(backlog));
        for _ in 0..backlog {
            match self.listening_socket(port) {
                Some(socket) => sockets.push(socket),
                None => {
                    for socket in sockets {
                        self.sockets.remove(socket);
                    }
                    return Err((ErrorCode::BadAddress, 0));
                }
            }
        }
        self.slots.push(Slot {
            handle,
            kind: SlotKind::Listener {
                port,
                sockets,
                flags,
            },
            bytes_in: 0,
            bytes_out: 0,
        });
        self.post(
            Event::Bound {
                handle,
                local_port: port,
            },
            out,
        );
        Ok(())
    }

    fn tcp_send(&mut self, handle: u32, data: &[u8]) -> Result<(), (ErrorCode, u32)> {
        let Some(index) = self.slot_index(handle) else {
            return Err((ErrorCode::BadHandle, 0));
        };
        let slot = &mut self.slots[index];
        let SlotKind::Tcp(conn) = &mut slot.kind else {
            return Err((ErrorCode::BadHandle, 0));
        };
        let socket = self.sockets.get_mut::<tcp::Socket<'_>>(conn.socket);
        if conn.phase != TcpPhase::Open || conn.closed_by_a || !socket.may_send() {
            return Err((ErrorCode::NotConnected, 0));
        }
        let left = conn.granted - conn.received;
        if data.len() as u64 > left {
            return Err((
                ErrorCode::CreditExceeded,
                left.min(u64::from(u32::MAX)) as u32,
            ));
        }
        // The credit invariant guarantees room for all of it.
        let sent = socket.send_slice(data).unwrap_or(0);
        debug_assert_eq!(
            sent,
            data.len(),
            "send credit exceeded the free send buffer"
        );
        conn.received += data.len() as u64;
        slot.bytes_out += sent as u64;
        Ok(())
    }

    fn close<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        handle: u32,
        abort: bool,
        out: &mut Outbox<'_, S>,
    ) -> Result<(), (ErrorCode, u32)> {
        let Some(index) = self.slot_index(handle) else {
            return Err((ErrorCode::BadHandle, 0));
        };
        match &mut self.slots[index].kind {
            SlotKind::Tcp(conn) => {
                if conn.closed_by_a {
                    return Err((ErrorCode::BadHandle, 0));
                }
                conn.closed_by_a = true;
                conn.aborted = abort;
                let socket = self.sockets.get_mut::<tcp::Socket<'_>>(conn.socket);
                if abort {
                    socket.abort();
                } else {
                    socket.close();
                }
                // The `Closed` event comes when smoltcp is done (see `service_tcp`).
            }
            SlotKind::Udp { .. } | SlotKind::Listener { .. } => {
                let slot = self.slots.remove(index);
                self.free_sockets(slot);
                let reason = if abort {
                    CloseReason::Aborted
                } else {
                    CloseReason::Closed
                };
                self.post(Event::Closed { handle, reason }, out);
            }
        }
        Ok(())
    }

    fn free_sockets(&mut self, slot: Slot) {
        match slot.kind {
            SlotKind::Udp { socket, .. } => {
                self.sockets.remove(socket);
            }
            SlotKind::Listener { sockets, .. } => {
                for socket in sockets {
                    self.sockets.remove(socket);
                }
            }
            SlotKind::Tcp(conn) => {
                self.sockets.remove(conn.socket);
            }
        }
    }

    /// `None`: no room for the answer now.
    fn answer_query<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        cookie: u32,
        out: &mut Outbox<'_, S>,
    ) -> Option<Result<(), (ErrorCode, u32)>> {
        let entry_size = size_of::<ConnectionEntry>();
        let per_part = out.buffer_size.saturating_sub(size_of::<TableHeader>()) / entry_size;
        let per_part = per_part.min(usize::from(u16::MAX));
        let total = self.slots.len();
        if per_part == 0 {
            return Some(Err((ErrorCode::TooLarge, 0)));
        }
        let parts = total.div_ceil(per_part).max(1);
        let capacity = out.ring.capacity().min(out.pool.view().buffer_count()) as usize;
        if parts > capacity {
            return Some(Err((ErrorCode::TooLarge, parts as u32)));
        }
        if !out.has_room(parts as u32) {
            return None;
        }
        let mut bytes = Vec::with_capacity(per_part.min(total) * entry_size);
        for part in 0..parts {
            let first = part * per_part;
            let end = (first + per_part).min(total);
            bytes.clear();
            for slot in &self.slots[first..end] {
                let entry = slot.info(&self.sockets, self.config.address).to_entry();
                bytes.extend_from_slice(zerocopy::IntoBytes::as_bytes(&entry));
            }
            let Ok(entries) = Entries::new(&bytes) else {
                break;
            };
            let event = Event::ConnectionTable {
                cookie,
                total: total as u32,
                first: first as u32,
                last: part + 1 == parts,
                entries,
            };
            if out.post(&event).is_err() {
                break;
            }
        }
        Some(Ok(()))
    }

    // ---- sockets ----

    fn service_sockets<S: AsRef<[u64]> + AsMut<[u64]>>(&mut self, out: &mut Outbox<'_, S>) {
        let mut slots = mem::take(&mut self.slots);
        let mut accepted = Vec::new();
        let mut index = 0;
        while index < slots.len() {
            let keep = match slots[index].kind {
                SlotKind::Udp { .. } => {
                    self.service_udp(&mut slots[index], out);
                    true
                }
                SlotKind::Listener { .. } => {
                    let sockets: usize = slots.iter().map(Slot::socket_count).sum();
                    self.service_listener(&mut slots[index], sockets, &mut accepted, out);
                    true
                }
                SlotKind::Tcp(_) => self.service_tcp(&mut slots[index], out),
            };
            if keep {
                index += 1;
            } else {
                let slot = slots.remove(index);
                self.free_sockets(slot);
            }
        }
        slots.append(&mut accepted);
        // Requests served while the table was out could not have added slots.
        slots.append(&mut self.slots);
        self.slots = slots;
    }

    fn service_udp<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        slot: &mut Slot,
        out: &mut Outbox<'_, S>,
    ) {
        let SlotKind::Udp { socket, .. } = slot.kind else {
            return;
        };
        if !self.pending.is_empty() {
            return;
        }
        let socket = self.sockets.get_mut::<udp::Socket<'_>>(socket);
        for _ in 0..self.config.batch {
            if !socket.can_recv() || !out.has_room(1) {
                break;
            }
            let Ok((payload, meta)) = socket.recv() else {
                break;
            };
            let Some(remote) = endpoint_v4(meta.endpoint.addr, meta.endpoint.port) else {
                continue;
            };
            let event = Event::UdpRecv {
                handle: slot.handle,
                remote,
                payload,
            };
            match out.post(&event) {
                Ok(()) => slot.bytes_in += payload.len() as u64,
                Err(_) => self.stats.udp_rx_dropped += 1,
            }
        }
    }

    fn service_listener<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        slot: &mut Slot,
        socket_count: usize,
        accepted: &mut Vec<Slot>,
        out: &mut Outbox<'_, S>,
    ) {
        let listener = slot.handle;
        let SlotKind::Listener {
            port,
            sockets,
            flags,
        } = &mut slot.kind
        else {
            return;
        };
        let mut socket_count = socket_count + accepted.len();
        for listening in sockets.iter_mut() {
            let handle = *listening;
            let socket = self.sockets.get_mut::<tcp::Socket<'_>>(handle);
            match socket.state() {
                tcp::State::Listen | tcp::State::SynReceived => continue,
                tcp::State::Closed => {
                    // Reset while half-open, or refused below: listen again once the RST is out.
                    if socket.remote_endpoint().is_none() {
                        let _ = socket.listen(*port);
                    }
                    continue;
                }
                _ => {}
            }
            if socket_count >= self.config.max_sockets {
                socket.abort();
                self.stats.accept_overflows += 1;
                continue;
            }
            let Some(info) = established(socket) else {
                socket.abort();
                continue;
            };
            let Some(replacement) = self.listening_socket(*port) else {
                continue;
            };
            *listening = replacement;
            socket_count += 1;
            let new_handle = self.accepted_handle(accepted);
            let mut conn = TcpSlot::new(handle, TcpPhase::Open, *flags);
            conn.granted = u64::from(info.send_credit);
            accepted.push(Slot {
                handle: new_handle,
                kind: SlotKind::Tcp(conn),
                bytes_in: 0,
                bytes_out: 0,
            });
            self.post(
                Event::TcpAccepted {
                    listener,
                    handle: new_handle,
                    info,
                },
                out,
            );
        }
    }

    /// A handle for an accepted connection that no slot uses.
    fn accepted_handle(&mut self, accepted: &[Slot]) -> u32 {
        loop {
            let candidate =
                netmsg::ACCEPTED_HANDLE_BIT | (self.next_accepted & !netmsg::ACCEPTED_HANDLE_BIT);
            self.next_accepted = self.next_accepted.wrapping_add(1);
            let taken = accepted.iter().any(|slot| slot.handle == candidate)
                || self.slots.iter().any(|slot| slot.handle == candidate);
            if netmsg::is_accepted_handle(candidate) && !taken {
                return candidate;
            }
        }
    }

    /// Returns whether to keep the slot.
    fn service_tcp<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        slot: &mut Slot,
        out: &mut Outbox<'_, S>,
    ) -> bool {
        let handle = slot.handle;
        let SlotKind::Tcp(conn) = &mut slot.kind else {
            return true;
        };
        let socket = self.sockets.get_mut::<tcp::Socket<'_>>(conn.socket);
        let state = socket.state();
        match conn.phase {
            TcpPhase::Released => {
                if state != tcp::State::Closed {
                    return true;
                }
                let since = *conn.closed_since_ns.get_or_insert(self.now_ns);
                // Keep it until its RST (if any) went out.
                return socket.remote_endpoint().is_some()
                    && self.now_ns.saturating_sub(since) < RST_GRACE_NS;
            }
            TcpPhase::Connecting => match state {
                tcp::State::SynSent | tcp::State::SynReceived => return true,
                tcp::State::Closed | tcp::State::TimeWait => {
                    let reason = if conn.aborted {
                        CloseReason::Aborted
                    } else if conn.closed_by_a {
                        CloseReason::Closed
                    } else {
                        CloseReason::ConnectFailed
                    };
                    conn.phase = TcpPhase::Released;
                    slot.handle = 0;
                    self.post(Event::Closed { handle, reason }, out);
                    return true;
                }
                _ => {
                    let Some(info) = established(socket) else {
                        return true;
                    };
                    conn.granted = u64::from(info.send_credit);
                    conn.phase = TcpPhase::Open;
                    self.post(Event::TcpConnected { handle, info }, out);
                }
            },
            TcpPhase::Open => {}
        }
        let socket = self.sockets.get_mut::<tcp::Socket<'_>>(conn.socket);
        // Received bytes: to OS A, or nowhere once OS A closed.
        if conn.closed_by_a {
            while socket.can_recv() {
                if socket.recv(|data| (data.len(), ())).is_err() {
                    break;
                }
            }
        } else if self.pending.is_empty() {
            for _ in 0..self.config.batch {
                if !socket.can_recv() {
                    break;
                }
                let moved = out.post_tcp_data(handle, socket);
                if moved == 0 {
                    break;
                }
                slot.bytes_in += moved as u64;
            }
        }
        let drained = socket.recv_queue() == 0;
        let may_send = socket.may_send();
        let capacity = socket.send_capacity() as u64;
        let queued = socket.send_queue() as u64;
        let peer_finished = matches!(
            state,
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        );
        if !conn.eof_sent && !conn.closed_by_a && drained && peer_finished {
            conn.eof_sent = true;
            self.post(Event::TcpEof { handle }, out);
        }
        // More send credit as the peer acknowledges data.
        if !conn.closed_by_a && may_send {
            let outstanding = conn.granted - conn.received;
            let grant = (capacity - queued)
                .saturating_sub(outstanding)
                .min(u64::from(u32::MAX));
            if grant > 0 && grant >= (capacity / 8).max(1) {
                conn.granted += grant;
                self.post(
                    Event::SendSpace {
                        handle,
                        credit: grant as u32,
                    },
                    out,
                );
            }
        }
        // The end.
        let finished = match state {
            tcp::State::Closed => drained || conn.closed_by_a,
            tcp::State::TimeWait => conn.closed_by_a,
            _ => false,
        };
        if finished {
            let reason = if conn.aborted {
                CloseReason::Aborted
            } else if conn.closed_by_a {
                CloseReason::Closed
            } else {
                CloseReason::Reset
            };
            conn.phase = TcpPhase::Released;
            slot.handle = 0;
            self.post(Event::Closed { handle, reason }, out);
        }
        true
    }
}

/// A connected socket's endpoints and free send space.
fn established(socket: &tcp::Socket<'_>) -> Option<Established> {
    let remote = socket.remote_endpoint()?;
    let local = socket.local_endpoint()?;
    Some(Established {
        remote: endpoint_v4(remote.addr, remote.port)?,
        local_port: local.port,
        send_credit: (socket.send_capacity() - socket.send_queue()).min(u32::MAX as usize) as u32,
    })
}

fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000).min(i64::MAX as u64) as i64)
}
