//! RoCEv2 for duovm: wire formats, the invariant CRC, the verbs API and the RC transport.
//!
//! OS A's virtual RDMA NIC turns verbs into RoCEv2 packets: InfiniBand transport packets in
//! UDP datagrams to port 4791, byte for byte as Linux SoftRoCE (`rdma_rxe`) sends them, so
//! that an rxe host takes duovm for another rxe peer.
//!
//! * [`wire`]: zero-copy views and `Repr`s of every header (BTH, RETH, AETH, AtomicETH,
//!   AtomicAckETH, ImmDt, IETH, DETH), of a whole IB packet, and of its IPv4/UDP
//!   encapsulation; the opcode table that says which headers an opcode implies.
//! * [`icrc`]: the ICRC, the CRC-32 trailer that covers the invariant fields of the IP, UDP
//!   and IB headers and the payload, computed incrementally so that it can be folded into the
//!   payload copy.
//! * [`verbs`]: the ibverbs-shaped API (protection domains, memory regions, completion
//!   queues, RC queue pairs, `post_send`/`post_recv`/`poll_cq`) of a [`verbs::Device`].
//! * [`transport`]: the RC transport engine inside the device (requester, responder,
//!   completer, rdma_rxe's behaviour) and how a platform drives it: whole IPv4 packets in
//!   ([`verbs::Device::receive`]) and out ([`verbs::Device::poll_transmit`]), time passed in,
//!   timers out ([`verbs::Device::next_deadline`]).
//! * [`oob`]: the `ibv_rc_pingpong` connection exchange, to connect to a Linux rxe peer.
//! * [`perftest`]: perftest's connection exchange, so that `ib_write_bw`, `ib_send_bw`,
//!   `ib_read_lat`, `ib_write_lat` and `ib_atomic_lat` can serve duovm's tests.
//!
//! The crate is `no_std` (with `alloc`), has no `unsafe` code, and never panics on packet
//! bytes (see the panic contract in [`wire`]). The engine never reads a clock and starts no
//! thread: it runs the same in OS A's kernel and in a host test.
//!
//! # Example
//!
//! Build an RDMA WRITE Only with immediate data, send it through the bytes, parse it back:
//!
//! ```
//! use core::net::Ipv4Addr;
//! use roce::wire::{BthRepr, ImmDtRepr, Opcode, RethRepr, RoceRepr, Rocev2Packet, Rocev2Repr};
//!
//! let bth = BthRepr {
//!     opcode: Opcode::RcRdmaWriteOnlyWithImmediate,
//!     solicited_event: false,
//!     migration_request: false,
//!     pad_count: 0, // set by with_payload_len
//!     transport_version: 0,
//!     pkey: 0xffff,
//!     fecn: false,
//!     becn: false,
//!     dest_qpn: 0x11,
//!     ack_request: true,
//!     psn: 100,
//! };
//! let payload = b"hello, rxe";
//! let repr = Rocev2Repr {
//!     src_addr: Ipv4Addr::new(10, 0, 0, 1),
//!     dst_addr: Ipv4Addr::new(10, 0, 0, 2),
//!     traffic_class: 0,
//!     ttl: 64,
//!     identification: 1,
//!     src_port: 0xc000,
//!     ib: RoceRepr {
//!         reth: Some(RethRepr { virtual_address: 0x1000, rkey: 0x42, dma_length: 10 }),
//!         immdt: Some(ImmDtRepr { immediate: 7 }),
//!         ..RoceRepr::new(bth).with_payload_len(payload.len())
//!     },
//! };
//! let mut buffer = [0u8; 128];
//! let packet_bytes = &mut buffer[..repr.buffer_len()];
//! repr.emit(packet_bytes, payload)?; // headers, payload, pad, ICRC
//!
//! let packet = Rocev2Packet::new_checked(&*packet_bytes)?;
//! assert_eq!(Rocev2Repr::parse(&packet)?, repr); // checks checksums and the ICRC too
//! assert_eq!(packet.ib().payload(), payload);
//! assert_eq!(packet.ib().bth().psn(), 100);
//! # Ok::<(), roce::wire::Error>(())
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod icrc;
pub mod oob;
pub mod perftest;
pub mod transport;
pub mod verbs;
pub mod wire;
