//! OS B's network service between a hostile network and a hostile OS A: frames from the wire,
//! messages and raw descriptors on OS A's ring, bogus buffer returns, honest requests and time,
//! in any order, and OS A ending. Nothing may panic, every frame the service reads is counted
//! exactly once, and the wind-down after OS A ends finishes within the linger time.
//!
//! The input is a sequence of operations, each a byte (modulo 11) followed by its arguments:
//! 0 a frame (2-byte length, bytes); 1 a message from OS A in a pool A buffer (kind, 4-byte
//! meta, 1-byte length, bytes); 2 a raw descriptor on OS A's ring (offset, length, flags, meta:
//! 4 bytes each); 3 a raw descriptor returned on OS A's return ring; 4 time passes (1-byte
//! count of 100 µs) and the service polls; 5 OS A reads its events; 6 an honest request (UDP
//! bind, UDP send, TCP listen, TCP connect, TCP send, close); 7 the service polls; 8 a RoCE
//! frame for the service with good checksums (1-byte length of payload from the input, then a
//! position and a mask to flip one byte of it); 9 OS A ends (`close_all`; the input goes on);
//! 10 every connection is reset (`abort_all`). At the end the service winds down.
//!
//! ```text
//! cd netsvc/fuzz && cargo +nightly fuzz run service
//! ```
#![no_main]

use core::net::{Ipv4Addr, SocketAddrV4};

use libfuzzer_sys::fuzz_target;
use netsvc::frame::internet_checksum;
use netsvc::memwire::{self, WireConfig, WirePort};
use netsvc::netmsg::ROCE_UDP_PORT;
use netsvc::{Client, NetConfig, NetService, Nic};
use shm_ring::OwnedRegion;
use shm_ring::bootinfo::SharedLayout;
use shm_ring::desc::Desc;
use shm_ring::layout::Role;
use shm_ring::pool::{PoolOwner, owner_storage_words};
use shm_ring::shared::{self, Endpoint, SharedConfig};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
const SHARED: SharedConfig = SharedConfig {
    ring_capacity: 64,
    buffer_size: 2048,
    buffers_per_pool: 64,
};
const REGION_SIZE: usize = 1 << 20;

/// The input, read front to back; reads past the end give zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn desc(&mut self) -> Desc {
        Desc {
            offset: self.u32(),
            len: self.u32(),
            flags: self.u32(),
            meta: self.u32(),
        }
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

/// A RoCE frame from the peer to the service, with good IPv4 checksum and lengths.
fn roce_frame(payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + 12 + payload.len() + 4;
    let mut frame = Vec::with_capacity(14 + total);
    frame.extend_from_slice(&MAC);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    frame.extend_from_slice(&(total as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    frame.extend_from_slice(&PEER.octets());
    frame.extend_from_slice(&ADDRESS.octets());
    let checksum = internet_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&0xc000u16.to_be_bytes());
    frame.extend_from_slice(&ROCE_UDP_PORT.to_be_bytes());
    frame.extend_from_slice(&((total - 20) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0x80, 0, 0, 1]);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&[0; 4]);
    frame
}

fuzz_target!(|data: &[u8]| {
    let layout = SharedLayout::compute(REGION_SIZE as u64, SHARED).unwrap();
    let region = OwnedRegion::new(REGION_SIZE);
    let (base, len) = (region.as_ptr(), region.len());
    // SAFETY: the region is valid for its length and nothing uses it yet.
    unsafe { shared::init(base, len, &layout) }.unwrap();
    // SAFETY: the region outlives both endpoints (dropped at the end of this function, after
    // them); one endpoint per role.
    let a = unsafe { Endpoint::attach(base, len, &layout, Role::A) }.unwrap();
    // SAFETY: as above.
    let mut b = unsafe { Endpoint::attach(base, len, &layout, Role::B) }.unwrap();
    let words = owner_storage_words(SHARED.buffers_per_pool);
    let mut pool = PoolOwner::new(b.own_pool.clone(), vec![0; words]).unwrap();
    let mut client = Client::new(a, vec![0; words]).unwrap();
    let (nic, mut wire) = memwire::pair(MAC, PEER_MAC, WireConfig::default());
    let mut service = NetService::new(nic, NetConfig::new(MAC, ADDRESS, 24), 0).unwrap();

    let mut input = Input(data);
    let mut now_ns = 1_000_000u64;
    let mut handles: Vec<u32> = Vec::new();
    let mut frames_sent = 0u64;
    let mut scratch = [0u8; 2048];
    let mut send = |wire: &mut WirePort, frame: &[u8]| {
        if wire.transmit(frame).is_ok() {
            frames_sent += 1;
        }
    };
    while !input.is_empty() {
        match input.u8() % 11 {
            0 => {
                let len = usize::from(input.u16() % 1600);
                let frame = input.bytes(len).to_vec();
                send(&mut wire, &frame);
            }
            1 => {
                let (flags, meta) = (u32::from(input.u8()), input.u32());
                let len = usize::from(input.u8() % 128);
                let bytes = input.bytes(len).to_vec();
                client.reclaim();
                let pool = client.pool_mut();
                if let Some(buffer) = pool.alloc() {
                    pool.write(&buffer, 0, &bytes).unwrap();
                    let desc = pool.submit(buffer, 0, bytes.len() as u32).unwrap();
                    let _ = client.endpoint_mut().tx.push(Desc {
                        flags,
                        meta,
                        ..desc
                    });
                }
            }
            2 => {
                let _ = client.endpoint_mut().tx.push(input.desc());
            }
            3 => {
                let _ = client.endpoint_mut().rx_return.push(input.desc());
            }
            4 => {
                now_ns += u64::from(input.u8()) * 100_000;
                service.poll(now_ns, &mut b, &mut pool);
            }
            5 => while client.poll().is_some() {},
            6 => {
                let handle = handles
                    .get(usize::from(input.u8()) % handles.len().max(1))
                    .copied()
                    .unwrap_or(1);
                let port = input.u16() % 16;
                let remote = SocketAddrV4::new(PEER, port);
                let opened = match input.u8() % 6 {
                    0 => client.udp_bind(port).ok(),
                    1 => client.tcp_listen(port, 2, 0).ok(),
                    2 => client.tcp_connect(remote, 0, 0).ok(),
                    3 => {
                        let len = usize::from(input.u8());
                        let _ = client.udp_send(handle, remote, input.bytes(len));
                        None
                    }
                    4 => {
                        let len = usize::from(input.u16() % 4096);
                        let _ = client.tcp_send(handle, input.bytes(len));
                        None
                    }
                    _ => {
                        let _ = client.close(handle);
                        None
                    }
                };
                handles.extend(opened);
            }
            7 => {
                service.poll(now_ns, &mut b, &mut pool);
                while wire.receive(&mut scratch).is_some() {}
            }
            9 => {
                service.close_all();
            }
            10 => {
                service.abort_all();
            }
            _ => {
                let len = usize::from(input.u8());
                let mut frame = roce_frame(input.bytes(len));
                let at = usize::from(input.u16()) % (frame.len() + 1);
                let mask = input.u8();
                if let Some(byte) = frame.get_mut(at) {
                    *byte ^= mask;
                }
                send(&mut wire, &frame);
            }
        }
    }
    for _ in 0..4 {
        now_ns += 1_000_000;
        service.poll(now_ns, &mut b, &mut pool);
        while client.poll().is_some() {}
        while wire.receive(&mut scratch).is_some() {}
    }
    // OS A ends: the wind-down ends, within the linger time, with nothing left closing.
    let clock = core::cell::Cell::new(now_ns);
    service.wind_down(
        &mut b,
        &mut pool,
        || clock.get(),
        |deadline| clock.set(deadline.max(clock.get() + 1_000)),
    );
    assert!(!service.closing());
    assert!(clock.get() - now_ns <= netsvc::service::LINGER_NS + 1_000_000);
    let stats = service.stats();
    assert!(stats.frames_received <= frames_sent);
    assert_eq!(
        stats.frames_received,
        stats.frames_to_stack + stats.roce_rx + stats.roce_rx_dropped + stats.roce_rx_malformed,
        "every frame counted once"
    );
    drop((client, pool, b, service));
    drop(region);
});
