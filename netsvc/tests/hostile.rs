//! A hostile or buggy OS A: garbage messages, bad lengths, bad handles, descriptors outside the
//! pool. Each gets an `Error` event with the right code, and the service goes on serving.

mod common;

use core::net::{Ipv4Addr, SocketAddrV4};

use common::{Ev, IP_LEFT, IP_RIGHT, Net, Node, SHARED, roce_packet};
use netsvc::memwire::{WireConfig, WirePort};
use netsvc::netmsg::{
    ACCEPTED_HANDLE_BIT, AddressHeader, ErrorCode, PortHeader, ROCE_UDP_PORT, RequestKind,
    TcpListenHeader,
};
use shm_ring::desc::Desc;
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32};

/// Puts `bytes` in a pool A buffer and pushes a descriptor with `flags` and `meta`.
fn push_message(node: &mut Node<WirePort>, flags: u32, meta: u32, bytes: &[u8]) -> Desc {
    let client = &mut node.client;
    client.reclaim();
    let pool = client.pool_mut();
    let buffer = pool.alloc().expect("a free buffer");
    pool.write(&buffer, 0, bytes).unwrap();
    let desc = pool.submit(buffer, 0, bytes.len() as u32).unwrap();
    let desc = Desc {
        flags,
        meta,
        ..desc
    };
    client.endpoint_mut().tx.push(desc).unwrap();
    desc
}

fn push_desc(node: &mut Node<WirePort>, desc: Desc) {
    node.client.endpoint_mut().tx.push(desc).unwrap();
}

fn port(port: u16) -> Vec<u8> {
    PortHeader {
        local_port: U16::new(port),
        reserved: U16::new(0),
    }
    .as_bytes()
    .to_vec()
}

fn address(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    AddressHeader {
        remote_addr: ip.octets(),
        remote_port: U16::new(port),
        reserved: U16::new(0),
    }
    .as_bytes()
    .to_vec()
}

/// Polls until the left client has `count` events; returns them.
fn left_events(net: &mut Net, count: usize) -> Vec<Ev> {
    let mut events = Vec::new();
    net.run_until(2_000_000_000, |net| {
        events.extend(net.left.events());
        (events.len() >= count).then_some(())
    });
    events
}

#[test]
fn bad_requests_get_errors_and_the_service_goes_on() {
    let mut net = Net::new(WireConfig::default());
    let pool_bytes = SHARED.buffer_size * SHARED.buffers_per_pool;
    let udp = RequestKind::UdpBind as u32;
    let send = RequestKind::UdpSend as u32;
    let roce = RequestKind::RoceTx as u32;
    let mut expected: Vec<(u32, u32, ErrorCode)> = Vec::new();
    let mut message = |net: &mut Net, flags: u32, meta: u32, bytes: &[u8], code: ErrorCode| {
        push_message(&mut net.left, flags, meta, bytes);
        expected.push((flags, meta, code));
    };
    message(&mut net, 0x99, 1, b"garbage", ErrorCode::UnknownKind);
    message(&mut net, 0x81, 0, &[0x45; 40], ErrorCode::UnknownKind);
    message(&mut net, udp, 1, &[0; 3], ErrorCode::BadLength);
    message(&mut net, udp, 1, &[0; 6], ErrorCode::BadLength);
    message(&mut net, udp, 0, &port(5), ErrorCode::BadHandle);
    message(
        &mut net,
        udp,
        ACCEPTED_HANDLE_BIT | 3,
        &port(5),
        ErrorCode::BadHandle,
    );
    message(&mut net, udp, 1, &[5, 0, 1, 0], ErrorCode::BadField);
    message(
        &mut net,
        udp,
        1,
        &port(ROCE_UDP_PORT),
        ErrorCode::BadAddress,
    );
    let mut payload = address(IP_RIGHT, 7);
    payload.extend_from_slice(b"data");
    message(&mut net, send, 77, &payload, ErrorCode::BadHandle);
    message(
        &mut net,
        RequestKind::TcpSend as u32,
        77,
        b"data",
        ErrorCode::BadHandle,
    );
    message(
        &mut net,
        RequestKind::Close as u32,
        77,
        &[0; 4],
        ErrorCode::BadHandle,
    );
    message(
        &mut net,
        RequestKind::Close as u32,
        2,
        &[2, 0, 0, 0],
        ErrorCode::BadField,
    );
    message(
        &mut net,
        RequestKind::Query as u32,
        0,
        &[2, 0, 0, 0, 0, 0, 0, 0],
        ErrorCode::BadField,
    );
    let listen = TcpListenHeader {
        local_port: U16::new(80),
        backlog: U16::new(0),
        flags: U32::new(0),
    };
    message(
        &mut net,
        RequestKind::TcpListen as u32,
        9,
        listen.as_bytes(),
        ErrorCode::BadField,
    );
    // RoCE packets: from someone else's address, too short, a broken header checksum,
    // a non-zero meta.
    let foreign = roce_packet(Ipv4Addr::new(10, 0, 0, 5), IP_RIGHT, 1, b"spoof");
    message(&mut net, roce, 0, &foreign, ErrorCode::BadPacket);
    message(&mut net, roce, 0, &[0x45; 10], ErrorCode::BadLength);
    let mut broken = roce_packet(IP_LEFT, IP_RIGHT, 1, b"broken");
    broken[10] ^= 0xff;
    message(&mut net, roce, 0, &broken, ErrorCode::BadPacket);
    message(
        &mut net,
        roce,
        5,
        &roce_packet(IP_LEFT, IP_RIGHT, 1, b"x"),
        ErrorCode::BadField,
    );
    // Descriptors outside pool A, or across two of its buffers.
    for (offset, len) in [(pool_bytes + 64, 8), (u32::MAX - 3, 8), (2000, 100)] {
        push_desc(
            &mut net.left,
            Desc {
                offset,
                len,
                flags: udp,
                meta: 4,
            },
        );
        expected.push((udp, 4, ErrorCode::BadDescriptor));
    }

    let events = left_events(&mut net, expected.len());
    let errors: Vec<(u32, u32, ErrorCode)> = events
        .iter()
        .map(|event| match event {
            Ev::Error {
                kind, meta, code, ..
            } => (*kind, *meta, *code),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(errors, expected);
    let stats = net.left.service.stats();
    assert_eq!(stats.requests_refused, expected.len() as u64);
    // Every real buffer came back; the bogus descriptors named none.
    net.left.client.reclaim();
    assert_eq!(net.left.client.pool_mut().in_flight_count(), 0);

    // The service still serves a well-behaved client.
    let handle = net.left.client.udp_bind(6000).unwrap();
    let events = left_events(&mut net, 1);
    assert_eq!(events, [Ev::Bound { handle, port: 6000 }]);
}

#[test]
fn state_errors_name_the_rule_broken() {
    let mut net = Net::new(WireConfig::default());
    let udp = net.left.client.udp_bind(7000).unwrap();
    assert_eq!(
        left_events(&mut net, 1),
        [Ev::Bound {
            handle: udp,
            port: 7000
        }]
    );
    let bind = RequestKind::UdpBind as u32;
    let send = RequestKind::UdpSend as u32;
    // The same handle again, another handle on the same port.
    push_message(&mut net.left, bind, udp, &port(7001));
    push_message(&mut net.left, bind, 1000, &port(7000));
    // Too large for the link, to ourselves, off-link without a gateway.
    let mut large = address(IP_RIGHT, 7);
    large.extend_from_slice(&[0; 1473]);
    push_message(&mut net.left, send, udp, &large);
    push_message(&mut net.left, send, udp, &address(IP_LEFT, 7));
    push_message(
        &mut net.left,
        send,
        udp,
        &address(Ipv4Addr::new(192, 168, 1, 1), 7),
    );
    // TcpSend on a UDP socket.
    push_message(&mut net.left, RequestKind::TcpSend as u32, udp, b"x");
    let codes: Vec<ErrorCode> = left_events(&mut net, 6)
        .into_iter()
        .map(|event| match event {
            Ev::Error { code, .. } => code,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            ErrorCode::HandleInUse,
            ErrorCode::PortInUse,
            ErrorCode::TooLarge,
            ErrorCode::BadAddress,
            ErrorCode::NoRoute,
            ErrorCode::BadHandle,
        ]
    );

    // Overdrawing a connection's credit.
    let listener = net.right.client.tcp_listen(5000, 1, 0).unwrap();
    net.wait_for(true, |event| {
        *event
            == Ev::Bound {
                handle: listener,
                port: 5000,
            }
    });
    let conn = net
        .left
        .client
        .tcp_connect(SocketAddrV4::new(IP_RIGHT, 5000), 0, 0)
        .unwrap();
    net.wait_for(false, |event| matches!(event, Ev::Connected { .. }));
    let credit = net.left.client.send_credit(conn).unwrap() as usize;
    let chunk = vec![1u8; 2048];
    for _ in 0..credit / 2048 {
        push_message(&mut net.left, RequestKind::TcpSend as u32, conn, &chunk);
    }
    push_message(
        &mut net.left,
        RequestKind::TcpSend as u32,
        conn,
        b"one too many",
    );
    let (error, before) = net.wait_for(false, |event| matches!(event, Ev::Error { .. }));
    assert!(
        before
            .iter()
            .all(|event| matches!(event, Ev::SendSpace(..)))
    );
    assert_eq!(
        error,
        Ev::Error {
            kind: RequestKind::TcpSend as u32,
            meta: conn,
            code: ErrorCode::CreditExceeded,
            detail: 0,
        }
    );
}

/// A seeded generator for the fuzz-style test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_descriptors_never_stop_the_service() {
    let mut net = Net::with(WireConfig::default(), |config| config.max_sockets = 16);
    let mut random = XorShift(0x0123_4567_89ab_cdef);
    let pool_bytes = SHARED.buffer_size * SHARED.buffers_per_pool;
    let mut pushed = 0u64;
    for round in 0..40 {
        for _ in 0..100 {
            let word = random.next();
            let flags = match word % 4 {
                0 => (word >> 8) as u32,
                _ => 1 + (word >> 8) as u32 % 9,
            };
            let meta = match (word >> 40) % 3 {
                0 => (word >> 16) as u32,
                1 => 1 + (word >> 20) as u32 % 8,
                _ => ACCEPTED_HANDLE_BIT | ((word >> 24) as u32 % 4),
            };
            if word.is_multiple_of(7) {
                let offset = (random.next() as u32) % (pool_bytes * 2);
                let len = (random.next() as u32) % 4096;
                push_desc(
                    &mut net.left,
                    Desc {
                        offset,
                        len,
                        flags,
                        meta,
                    },
                );
            } else {
                let len = (random.next() % 64) as usize;
                let bytes: Vec<u8> = (0..len).map(|_| random.next() as u8).collect();
                push_message(&mut net.left, flags, meta, &bytes);
            }
            pushed += 1;
        }
        // Let the service chew; drop whatever it answers.
        for _ in 0..20 {
            net.step();
            net.left.events();
            net.right.events();
        }
        assert!(net.left.service.stats().requests <= pushed, "round {round}");
    }
    net.run_until(30_000_000_000, |net| {
        net.left.events();
        net.right.events();
        (net.left.service.stats().requests == pushed).then_some(())
    });
    // Still healthy: a UDP round trip works.
    let server = net.right.client.udp_bind(7).unwrap();
    net.wait_for(true, |event| {
        *event
            == Ev::Bound {
                handle: server,
                port: 7,
            }
    });
    let mine = net.left.client.udp_bind(0).unwrap();
    net.wait_for(
        false,
        |event| matches!(event, Ev::Bound { handle, .. } if *handle == mine),
    );
    net.left
        .client
        .udp_send(mine, SocketAddrV4::new(IP_RIGHT, 7), b"still here")
        .unwrap();
    let (got, _) = net.wait_for(true, |event| matches!(event, Ev::UdpRecv { .. }));
    assert!(matches!(got, Ev::UdpRecv { payload, .. } if payload == b"still here"));
}

/// Puts `bytes` in a pool B buffer and pushes an event descriptor, as a hostile OS B would.
fn push_event(node: &mut Node<WirePort>, flags: u32, meta: u32, bytes: &[u8]) {
    node.pool
        .reclaim_from(&mut node.endpoint.tx_return, 1024)
        .unwrap();
    let buffer = node.pool.alloc().expect("a free buffer");
    node.pool.write(&buffer, 0, bytes).unwrap();
    let desc = node.pool.submit(buffer, 0, bytes.len() as u32).unwrap();
    node.endpoint
        .tx
        .push(Desc {
            flags,
            meta,
            ..desc
        })
        .unwrap();
}

#[test]
fn the_client_rejects_bad_events() {
    use netsvc::netmsg::{EventKind, SendSpaceHeader};
    let (nic, _host) = netsvc::memwire::pair(
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 9],
        WireConfig::default(),
    );
    let mut node = Node::new(nic, IP_LEFT, |_| {});
    let udp = node.client.udp_bind(5).unwrap();
    let tcp = node
        .client
        .tcp_connect(SocketAddrV4::new(IP_RIGHT, 80), 0, 0)
        .unwrap();
    let closed = (EventKind::Closed as u32, [1, 0, 0, 0]);
    let credit = |credit: u32| {
        SendSpaceHeader {
            credit: U32::new(credit),
        }
        .as_bytes()
        .to_vec()
    };
    let established = |listener: u32| {
        let mut bytes = listener.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[10, 0, 0, 2, 80, 0, 0x10, 0xc0, 0, 0, 1, 0]);
        bytes
    };
    let accepted = ACCEPTED_HANDLE_BIT | 1;
    let events: Vec<(u32, u32, Vec<u8>)> = vec![
        (0x01, 0, vec![0x45; 20]),                       // a request kind
        (closed.0, 999, closed.1.to_vec()),              // unknown handle
        (EventKind::TcpData as u32, udp, b"x".to_vec()), // data on a UDP socket
        (EventKind::UdpRecv as u32, udp, vec![0; 4]),    // short header
        (EventKind::Bound as u32, tcp, port(80)),        // Bound for a connection
        (EventKind::SendSpace as u32, udp, credit(10)),  // credit on UDP
        (EventKind::TcpAccepted as u32, accepted, established(udp)), // not a listener
        (EventKind::TcpConnected as u32, tcp, established(0)), // fine...
        (EventKind::TcpConnected as u32, tcp, established(0)), // ...but not twice
        (EventKind::SendSpace as u32, tcp, credit(u32::MAX)), // credit overflow
    ];
    for (flags, meta, bytes) in &events {
        push_event(&mut node, *flags, *meta, bytes);
    }
    // And a descriptor outside pool B.
    node.endpoint
        .tx
        .push(Desc {
            offset: u32::MAX - 8,
            len: 4,
            flags: closed.0,
            meta: udp,
        })
        .unwrap();
    let mut delivered = Vec::new();
    while let Some(event) = node.client.poll() {
        delivered.push(common::Ev::from(event));
    }
    assert_eq!(
        delivered.len(),
        1,
        "only the first TcpConnected: {delivered:?}"
    );
    assert!(matches!(delivered[0], Ev::Connected { handle, .. } if handle == tcp));
    let stats = node.client.stats();
    // Nine bad events in the list (one is good), plus the descriptor outside the pool.
    assert_eq!(stats.bad_events, 10);
    // Every real pool B buffer came back.
    node.pool
        .reclaim_from(&mut node.endpoint.tx_return, 1024)
        .unwrap();
    assert_eq!(node.pool.in_flight_count(), 0);
    // The real service's answer to the UDP bind is still understood.
    node.poll(1_000);
    let events: Vec<Ev> = node.events();
    assert!(
        events.contains(&Ev::Bound {
            handle: udp,
            port: 5
        }),
        "{events:?}"
    );
}
