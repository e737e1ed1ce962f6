//! OS B's network service: the engine that owns duovm's network and serves OS A through the
//! shared rings.
//!
//! OS A (the RDMA OS) never touches a NIC. It sends OS B requests on the A -> B ring and gets
//! events back on the B -> A ring, in the message format of [`shm_ring::netmsg`]. OS B runs
//! this engine:
//!
//! - [`NetService`]: a [smoltcp] interface (static IPv4 address, prefix, gateway, MAC) over a
//!   [`Nic`], with UDP and TCP sockets for OS A; smoltcp answers ARP and ICMP echo by itself.
//! - The **RoCE fast path**: RoCEv2 packets (IPv4/UDP to port 4791) bypass smoltcp in both
//!   directions, because their ICRC covers the IP and UDP headers and OS B must not rewrite
//!   them. Received ones go to OS A whole, without the Ethernet header; OS A's go out with an
//!   Ethernet header from the fast path's own ARP cache (see [`arp`]).
//! - The **ring service** ([`NetService::poll`]): drains OS A's requests, validating every
//!   descriptor and message (a bad one gets an [`Event::Error`](netmsg::Event::Error) and the
//!   service goes on), posts events in pool B buffers, and tells the platform when to call
//!   again.
//! - The **connection table** ([`NetService::connections`], and
//!   [`Request::Query`](netmsg::Request::Query) from OS A): every socket with its 4-tuple,
//!   state, byte counts and whether a snapshot may drop it and let the application re-open it.
//! - [`Client`]: OS A's side, usable from OS A's kernel and from native-mode host threads.
//!
//! Layers, top-down: [`service`] (the step), [`table`] (the sockets), [`arp`] and [`frame`]
//! (the fast path), [`nic`] (the device boundary and smoltcp's `Device`). The crate is `no_std`
//! with `alloc` and has no `unsafe` code; the `std` feature adds `memwire`, an in-memory
//! Ethernet wire for tests and benchmarks.
//!
//! # Example
//!
//! One OS A and one OS B in one process, over a real shared-memory region, with a NIC that is
//! not plugged in: OS A opens a UDP socket and OS B confirms it.
//!
//! ```
//! use core::net::Ipv4Addr;
//! use netsvc::netmsg::Event;
//! use netsvc::{Client, NetConfig, NetService, Nic, NicFull};
//! use shm_ring::bootinfo::SharedLayout;
//! use shm_ring::layout::Role;
//! use shm_ring::pool::{owner_storage_words, PoolOwner};
//! use shm_ring::shared::{self, Endpoint, SharedConfig};
//! use shm_ring::OwnedRegion;
//!
//! struct Unplugged;
//! impl Nic for Unplugged {
//!     fn transmit(&mut self, _frame: &[u8]) -> Result<(), NicFull> { Ok(()) }
//!     fn receive(&mut self, _buf: &mut [u8]) -> Option<usize> { None }
//!     fn mac(&self) -> [u8; 6] { [2, 0, 0, 0, 0, 1] }
//! }
//!
//! // 1. The shared segment, as the host lays it out.
//! let config = SharedConfig { ring_capacity: 64, buffer_size: 2048, buffers_per_pool: 64 };
//! let layout = SharedLayout::compute(1 << 20, config).expect("fits");
//! let region = OwnedRegion::new(1 << 20);
//! let (base, len) = (region.as_ptr(), region.len());
//! // SAFETY: the region is valid for `len` bytes and nothing uses it yet.
//! unsafe { shared::init(base, len, &layout) }.expect("init");
//! // SAFETY: the region outlives both endpoints, and there is one endpoint per role.
//! let a = unsafe { Endpoint::attach(base, len, &layout, Role::A) }.expect("A");
//! // SAFETY: as above.
//! let mut b = unsafe { Endpoint::attach(base, len, &layout, Role::B) }.expect("B");
//!
//! // 2. OS B: the service, and the owner of pool B (the caller keeps both).
//! let mut pool_b = PoolOwner::new(b.own_pool.clone(), vec![0u64; owner_storage_words(64)])?;
//! let net = NetConfig::new([0; 6], Ipv4Addr::new(10, 0, 0, 1), 24); // MAC from the NIC
//! let mut service = NetService::new(Unplugged, net, 0)?;
//!
//! // 3. OS A: the client, owner of pool A.
//! let mut client = Client::new(a, vec![0u64; owner_storage_words(64)])?;
//! let udp = client.udp_bind(5000)?;
//!
//! // 4. OS B serves the request; OS A sees the answer.
//! let outcome = service.poll(1_000, &mut b, &mut pool_b);
//! assert!(outcome.progress);
//! assert_eq!(client.poll(), Some(Event::Bound { handle: udp, local_port: 5000 }));
//! let table: Vec<_> = service.connections().collect();
//! assert_eq!(table[0].local.port(), 5000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod arp;
pub mod client;
pub mod config;
pub mod frame;
#[cfg(any(test, feature = "std"))]
pub mod memwire;
pub mod nic;
pub mod service;
pub mod table;

pub use client::{Client, ClientError, ClientStats, SocketKind};
pub use config::{ConfigError, NetConfig};
pub use nic::{Nic, NicFull, TxStats};
pub use service::{NetService, NetStats, PollOutcome, WindDown};
/// The message format of the rings (re-exported from `shm-ring`).
pub use shm_ring::netmsg;
pub use shm_ring::netmsg::ConnectionInfo;
