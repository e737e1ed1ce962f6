//! Two OS B network services on an in-memory wire, each serving its OS A client over a real
//! shared-memory ring region: ARP, ping, UDP, TCP (with and without loss), the RoCE fast path
//! and the connection table.

mod common;

use core::net::{Ipv4Addr, SocketAddrV4};

use common::{
    Ev, IP_LEFT, IP_RIGHT, MAC_LEFT, MAC_RIGHT, Net, Node, arp, ethernet, ipv4, pattern, receive,
    roce_packet, roce_trailer_ok,
};
use netsvc::frame::internet_checksum;
use netsvc::memwire::{self, WireConfig};
use netsvc::netmsg::{
    CloseReason, ConnectionState, ErrorCode, OPEN_REPEATABLE, Protocol, RequestKind,
};
use netsvc::service::LINGER_NS;
use netsvc::{ClientError, Nic, WindDown};

const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

#[test]
fn arp_and_ping_are_answered() {
    let (nic, mut host) = memwire::pair(MAC_LEFT, HOST_MAC, WireConfig::default());
    let mut node = Node::new(nic, IP_LEFT, |_| {});

    // Who has 10.0.0.1? Tell 10.0.0.99.
    let request = arp(1, (HOST_MAC, HOST_IP), ([0; 6], IP_LEFT));
    host.transmit(&ethernet([0xff; 6], HOST_MAC, 0x0806, &request))
        .unwrap();
    node.poll(1_000);
    let reply = receive(&mut host).expect("an ARP reply");
    assert_eq!(
        reply[..42],
        ethernet(
            HOST_MAC,
            MAC_LEFT,
            0x0806,
            &arp(2, (MAC_LEFT, IP_LEFT), (HOST_MAC, HOST_IP))
        )[..]
    );

    // An ICMP echo request, built here byte by byte.
    let payload: Vec<u8> = (0..56u8).collect();
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0x00, 0x07];
    icmp.extend_from_slice(&payload);
    let checksum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let request = ipv4(HOST_IP, IP_LEFT, 1, &icmp);
    host.transmit(&ethernet(MAC_LEFT, HOST_MAC, 0x0800, &request))
        .unwrap();
    node.poll(2_000);
    let frame = receive(&mut host).expect("an echo reply");
    assert_eq!(&frame[..6], &HOST_MAC);
    assert_eq!(&frame[6..12], &MAC_LEFT);
    assert_eq!(&frame[12..14], &[0x08, 0x00]);
    let reply = &frame[14..];
    assert_eq!(internet_checksum(&reply[..20]), 0, "IPv4 header checksum");
    assert_eq!(reply[9], 1, "ICMP");
    assert_eq!(&reply[12..16], &IP_LEFT.octets());
    assert_eq!(&reply[16..20], &HOST_IP.octets());
    let total = u16::from_be_bytes([reply[2], reply[3]]) as usize;
    let icmp_reply = &reply[20..total];
    assert_eq!(icmp_reply[0], 0, "echo reply");
    assert_eq!(
        &icmp_reply[4..8],
        &[0x12, 0x34, 0x00, 0x07],
        "identifier and sequence"
    );
    assert_eq!(&icmp_reply[8..], &payload[..]);
    assert_eq!(internet_checksum(icmp_reply), 0, "ICMP checksum");
    assert!(receive(&mut host).is_none());
    let stats = node.service.stats();
    assert_eq!(stats.frames_to_stack, 2);
    assert_eq!(stats.roce_rx, 0);
}

#[test]
fn roce_packets_pass_bit_exact_in_both_directions() {
    let mut net = Net::new(WireConfig::default());
    // Six packets before the left side knows the right's MAC: four wait for ARP, two drop.
    let burst: Vec<Vec<u8>> = (0..6)
        .map(|psn| {
            roce_packet(
                IP_LEFT,
                IP_RIGHT,
                psn,
                &pattern(psn as u8, 0, 64 + 100 * psn as usize),
            )
        })
        .collect();
    for packet in &burst {
        net.left.client.roce_send(packet).unwrap();
    }
    let mut got = Vec::new();
    net.run_until(1_000_000_000, |net| {
        got.extend(net.right.events().into_iter().map(|event| match event {
            Ev::RoceRx(packet) => packet,
            other => panic!("unexpected {other:?}"),
        }));
        (got.len() == 4).then_some(())
    });
    assert_eq!(got, burst[..4]);
    let left = net.left.service.stats();
    assert_eq!(left.arp_requests, 1);
    assert_eq!(left.roce_tx_arp_dropped, 2);
    assert_eq!(left.roce_tx, 4);

    // Now both sides know each other: many packets, both ways, each checked whole.
    let to_right: Vec<Vec<u8>> = (10..200)
        .map(|psn| {
            roce_packet(
                IP_LEFT,
                IP_RIGHT,
                psn,
                &pattern(psn as u8, 7, (psn as usize * 7) % 1024),
            )
        })
        .collect();
    let to_left: Vec<Vec<u8>> = (10..200)
        .map(|psn| roce_packet(IP_RIGHT, IP_LEFT, psn, &pattern(psn as u8, 9, 1024)))
        .collect();
    let (mut sent_right, mut sent_left) = (0, 0);
    let (mut got_right, mut got_left) = (Vec::new(), Vec::new());
    net.run_until(1_000_000_000, |net| {
        while sent_right < to_right.len()
            && net.left.client.roce_send(&to_right[sent_right]).is_ok()
        {
            sent_right += 1;
        }
        while sent_left < to_left.len() && net.right.client.roce_send(&to_left[sent_left]).is_ok() {
            sent_left += 1;
        }
        for (node, got) in [
            (&mut net.right, &mut got_right),
            (&mut net.left, &mut got_left),
        ] {
            for event in node.events() {
                let Ev::RoceRx(packet) = event else {
                    panic!("unexpected {event:?}");
                };
                got.push(packet);
            }
        }
        (got_right.len() == to_right.len() && got_left.len() == to_left.len()).then_some(())
    });
    assert_eq!(got_right, to_right);
    assert_eq!(got_left, to_left);
    for packet in got_right.iter().chain(&got_left) {
        assert!(roce_trailer_ok(packet), "trailer intact");
    }
    // The right side learned the left's MAC from its ARP request: it never asked.
    assert_eq!(net.right.service.stats().arp_requests, 0);
    // smoltcp saw only ARP: the ARP request on the right, the reply on the left.
    assert_eq!(net.right.service.stats().frames_to_stack, 1);
    assert_eq!(net.left.service.stats().frames_to_stack, 1);
}

#[test]
fn roce_to_an_unknown_host_is_dropped_after_the_arp_attempts() {
    let mut net = Net::new(WireConfig::default());
    let nobody = Ipv4Addr::new(10, 0, 0, 77);
    net.left
        .client
        .roce_send(&roce_packet(IP_LEFT, nobody, 1, b"lost"))
        .unwrap();
    net.run_until(5_000_000_000, |net| {
        (net.left.service.stats().roce_tx_arp_dropped == 1).then_some(())
    });
    let stats = net.left.service.stats();
    assert_eq!(
        stats.arp_requests,
        u64::from(net.left.service.config().arp_attempts)
    );
    assert_eq!(stats.roce_tx_waiting_arp, 0);
    // Off-link without a gateway: refused at once.
    net.left
        .client
        .roce_send(&roce_packet(
            IP_LEFT,
            Ipv4Addr::new(192, 168, 1, 1),
            2,
            b"far",
        ))
        .unwrap();
    let (error, _) = net.wait_for(false, |event| matches!(event, Ev::Error { .. }));
    assert!(matches!(
        error,
        Ev::Error {
            code: ErrorCode::NoRoute,
            ..
        }
    ));
}

#[test]
fn roce_off_link_goes_to_the_gateway_unchanged() {
    let (nic, mut host) = memwire::pair(MAC_LEFT, HOST_MAC, WireConfig::default());
    let mut node = Node::new(nic, IP_LEFT, |config| config.gateway = Some(HOST_IP));
    let far = Ipv4Addr::new(192, 168, 7, 7);
    let packet = roce_packet(IP_LEFT, far, 5, &[0xab; 300]);
    node.client.roce_send(&packet).unwrap();
    node.poll(1_000);
    let request = receive(&mut host).expect("an ARP request for the gateway");
    assert_eq!(&request[..6], &[0xff; 6]);
    assert_eq!(&request[38..42], &HOST_IP.octets());
    let reply = arp(2, (HOST_MAC, HOST_IP), (MAC_LEFT, IP_LEFT));
    host.transmit(&ethernet(MAC_LEFT, HOST_MAC, 0x0806, &reply))
        .unwrap();
    node.poll(2_000);
    let frame = receive(&mut host).expect("the RoCE packet");
    assert_eq!(frame[..14], ethernet(HOST_MAC, MAC_LEFT, 0x0800, &[])[..]);
    assert_eq!(&frame[14..], &packet[..]);
}

#[test]
fn udp_echo_between_the_two_clients() {
    let mut net = Net::new(WireConfig::default());
    let server = net.right.client.udp_bind(7).unwrap();
    let client = net.left.client.udp_bind(0).unwrap();
    let (bound, _) = net.wait_for(true, |event| matches!(event, Ev::Bound { .. }));
    assert_eq!(
        bound,
        Ev::Bound {
            handle: server,
            port: 7
        }
    );
    let (bound, _) = net.wait_for(false, |event| matches!(event, Ev::Bound { .. }));
    let Ev::Bound {
        port: client_port, ..
    } = bound
    else {
        unreachable!()
    };
    assert!(client_port >= 49152);

    // The first datagram resolves the server's MAC; a burst meanwhile would overflow the
    // socket's send buffer (and get `NoBufferSpace`), as UDP allows.
    let server_address = SocketAddrV4::new(IP_RIGHT, 7);
    net.left
        .client
        .udp_send(client, server_address, b"hello")
        .unwrap();
    let (hello, _) = net.wait_for(true, |event| matches!(event, Ev::UdpRecv { .. }));
    assert!(matches!(hello, Ev::UdpRecv { payload, .. } if payload == b"hello"));

    let sizes: Vec<usize> = (0..200)
        .map(|i| [0, 1, 18, 512, 1000, 1472][i % 6])
        .collect();
    let datagrams: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| pattern(i as u8, i, *size))
        .collect();
    let (mut sent, mut echoed) = (0, Vec::new());
    net.run_until(2_000_000_000, |net| {
        while sent < datagrams.len()
            && net
                .left
                .client
                .udp_send(client, server_address, &datagrams[sent])
                .is_ok()
        {
            sent += 1;
        }
        for event in net.right.events() {
            let Ev::UdpRecv {
                handle,
                remote,
                payload,
            } = event
            else {
                panic!("unexpected {event:?}");
            };
            assert_eq!(handle, server);
            assert_eq!(remote, SocketAddrV4::new(IP_LEFT, client_port));
            net.right.client.udp_send(server, remote, &payload).unwrap();
        }
        for event in net.left.events() {
            let Ev::UdpRecv {
                handle,
                remote,
                payload,
            } = event
            else {
                panic!("unexpected {event:?}");
            };
            assert_eq!((handle, remote), (client, server_address));
            echoed.push(payload);
        }
        (echoed.len() == datagrams.len()).then_some(())
    });
    assert_eq!(echoed, datagrams);
    let bytes: u64 = sizes.iter().map(|size| *size as u64).sum();
    let hello = 5;
    let table: Vec<_> = net.right.service.connections().collect();
    assert_eq!(table.len(), 1);
    assert_eq!(table[0].protocol, Protocol::Udp);
    assert_eq!(
        (table[0].bytes_in, table[0].bytes_out),
        (bytes + hello, bytes)
    );
    // Closing frees the handle.
    net.left.client.close(client).unwrap();
    let (closed, _) = net.wait_for(false, |event| matches!(event, Ev::Closed(..)));
    assert_eq!(closed, Ev::Closed(client, CloseReason::Closed));
    assert_eq!(net.left.service.connections().count(), 0);
}

/// Moves `left_bytes` from left to right and `right_bytes` back over one TCP connection,
/// then closes it from the left; checks every byte and the table on the way.
fn tcp_exchange(loss_ppm: u32, left_bytes: usize, right_bytes: usize) -> Net {
    let mut net = Net::new(WireConfig {
        loss_ppm,
        seed: 0x5eed,
        queue_limit: 4096,
    });
    let listener = net
        .right
        .client
        .tcp_listen(18515, 2, OPEN_REPEATABLE)
        .unwrap();
    let (bound, _) = net.wait_for(true, |event| matches!(event, Ev::Bound { .. }));
    assert_eq!(
        bound,
        Ev::Bound {
            handle: listener,
            port: 18515
        }
    );
    let conn = net
        .left
        .client
        .tcp_connect(SocketAddrV4::new(IP_RIGHT, 18515), 0, 0)
        .unwrap();
    let (connected, _) = net.wait_for(false, |event| matches!(event, Ev::Connected { .. }));
    let Ev::Connected { handle, info } = connected else {
        unreachable!()
    };
    assert_eq!(handle, conn);
    assert_eq!(info.remote, SocketAddrV4::new(IP_RIGHT, 18515));
    assert_eq!(info.send_credit, 64 * 1024);
    let (accepted, _) = net.wait_for(true, |event| matches!(event, Ev::Accepted { .. }));
    let Ev::Accepted {
        listener: from,
        handle: peer,
        info: peer_info,
    } = accepted
    else {
        unreachable!()
    };
    assert_eq!(from, listener);
    assert!(netsvc::netmsg::is_accepted_handle(peer));
    assert_eq!(
        peer_info.remote,
        SocketAddrV4::new(IP_LEFT, info.local_port)
    );

    let outbound = pattern(0x11, 0, left_bytes);
    let inbound = pattern(0x22, 0, right_bytes);
    let (mut sent_left, mut sent_right) = (0, 0);
    let (mut got_right, mut got_left) = (Vec::new(), Vec::new());
    let mut checked_table = false;
    net.run_until(900_000_000_000, |net| {
        for (client, handle, data, sent) in [
            (&mut net.left.client, conn, &outbound, &mut sent_left),
            (&mut net.right.client, peer, &inbound, &mut sent_right),
        ] {
            while *sent < data.len() {
                match client.tcp_send(handle, &data[*sent..]) {
                    Ok(count) => *sent += count,
                    Err(
                        ClientError::WouldBlock | ClientError::NoBuffer | ClientError::RingFull,
                    ) => {
                        break;
                    }
                    Err(error) => panic!("tcp_send: {error}"),
                }
            }
        }
        for (node, handle, got) in [
            (&mut net.right, peer, &mut got_right),
            (&mut net.left, conn, &mut got_left),
        ] {
            for event in node.events() {
                match event {
                    Ev::Data { handle: from, data } => {
                        assert_eq!(from, handle);
                        got.extend_from_slice(&data);
                    }
                    Ev::SendSpace(from, _) => assert_eq!(from, handle),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        if !checked_table && got_right.len() > left_bytes / 2 {
            checked_table = true;
            let table: Vec<_> = net.left.service.connections().collect();
            assert_eq!(table.len(), 1);
            let entry = table[0];
            assert_eq!(entry.handle, conn);
            assert_eq!(entry.protocol, Protocol::Tcp);
            assert_eq!(entry.state, ConnectionState::Established);
            assert_eq!(entry.local, SocketAddrV4::new(IP_LEFT, info.local_port));
            assert_eq!(entry.remote, Some(SocketAddrV4::new(IP_RIGHT, 18515)));
            assert!(entry.bytes_out >= got_right.len() as u64);
            assert!(!entry.repeatable, "opened without OPEN_REPEATABLE");
            let right: Vec<_> = net.right.service.connections().collect();
            assert_eq!(right.len(), 2, "listener and connection");
            assert_eq!(right[0].protocol, Protocol::TcpListener);
            assert_eq!(right[1].handle, peer);
        }
        (got_right.len() >= left_bytes && got_left.len() >= right_bytes).then_some(())
    });
    assert!(got_right == outbound, "left -> right stream intact");
    assert!(got_left == inbound, "right -> left stream intact");

    // Orderly close: left closes, right sees EOF and closes, both get Closed.
    net.left.client.tcp_close(conn).unwrap();
    let (eof, before) = net.wait_for(true, |event| matches!(event, Ev::Eof(_)));
    assert_eq!(eof, Ev::Eof(peer));
    assert!(
        before
            .iter()
            .all(|event| matches!(event, Ev::SendSpace(..)))
    );
    assert_eq!(net.right.client.tcp_send(peer, b"late"), Ok(4));
    net.right.client.close(peer).unwrap();
    let (closed, _) = net.wait_for(true, |event| matches!(event, Ev::Closed(..)));
    assert_eq!(closed, Ev::Closed(peer, CloseReason::Closed));
    let (closed, _) = net.wait_for(false, |event| matches!(event, Ev::Closed(..)));
    assert_eq!(closed, Ev::Closed(conn, CloseReason::Closed));
    net
}

#[test]
fn tcp_moves_hundreds_of_kib_in_order_and_closes() {
    let net = tcp_exchange(0, 384 * 1024, 160 * 1024);
    // The left closed first: its socket lingers in TIME-WAIT without a handle.
    let left: Vec<_> = net.left.service.connections().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].handle, 0);
    assert_eq!(left[0].state, ConnectionState::TimeWait);
    // The right has only its listener left.
    let right: Vec<_> = net.right.service.connections().collect();
    assert_eq!(right.len(), 1);
    assert_eq!(right[0].protocol, Protocol::TcpListener);
    assert!(right[0].repeatable);
}

#[test]
fn tcp_survives_five_percent_loss() {
    let net = tcp_exchange(50_000, 256 * 1024, 64 * 1024);
    let lost = net.left.service.nic().stats().lost + net.right.service.nic().stats().lost;
    assert!(lost > 20, "the wire lost {lost} frames");
}

#[test]
fn connect_to_a_closed_port_fails() {
    let mut net = Net::new(WireConfig::default());
    let conn = net
        .left
        .client
        .tcp_connect(SocketAddrV4::new(IP_RIGHT, 9), 0, 0)
        .unwrap();
    let (closed, _) = net.wait_for(false, |event| matches!(event, Ev::Closed(..)));
    assert_eq!(closed, Ev::Closed(conn, CloseReason::ConnectFailed));
    // The handle is free again, and so is the table (once the socket is reaped).
    net.run_until(5_000_000_000, |net| {
        (net.left.service.connections().count() == 0).then_some(())
    });
}

#[test]
fn send_credit_bounds_what_os_a_may_send() {
    let mut net = Net::new(WireConfig::default());
    let listener = net.right.client.tcp_listen(5001, 1, 0).unwrap();
    net.wait_for(true, |event| {
        *event
            == Ev::Bound {
                handle: listener,
                port: 5001,
            }
    });
    let conn = net
        .left
        .client
        .tcp_connect(SocketAddrV4::new(IP_RIGHT, 5001), 40000, OPEN_REPEATABLE)
        .unwrap();
    net.wait_for(false, |event| matches!(event, Ev::Connected { .. }));
    let (accepted, _) = net.wait_for(true, |event| matches!(event, Ev::Accepted { .. }));
    let Ev::Accepted {
        handle: peer, info, ..
    } = accepted
    else {
        unreachable!()
    };
    assert_eq!(info.remote, SocketAddrV4::new(IP_LEFT, 40000));
    // Idle and opened as repeatable: a snapshot may drop it.
    let entry = net.left.service.connections().next().unwrap();
    assert!(entry.repeatable);

    // The right reads nothing for a while: the left can put exactly its credit in flight.
    let credit = net.left.client.send_credit(conn).unwrap();
    assert_eq!(credit, 64 * 1024);
    let data = pattern(3, 0, 256 * 1024);
    let mut sent = 0;
    while let Ok(count) = net.left.client.tcp_send(conn, &data[sent..]) {
        sent += count;
    }
    assert_eq!(sent as u64, credit);
    assert_eq!(
        net.left.client.tcp_send(conn, b"x"),
        Err(ClientError::WouldBlock)
    );
    // Bytes are queued: not repeatable now.
    net.step();
    let entry = net.left.service.connections().next().unwrap();
    assert!(!entry.repeatable);
    assert_eq!(entry.bytes_out, credit);
    // As the right drains, the left gets more credit and finishes.
    let mut got = Vec::new();
    net.run_until(60_000_000_000, |net| {
        for event in net.left.events() {
            assert!(matches!(event, Ev::SendSpace(handle, _) if handle == conn));
        }
        while sent < data.len() {
            match net.left.client.tcp_send(conn, &data[sent..]) {
                Ok(count) => sent += count,
                Err(_) => break,
            }
        }
        for event in net.right.events() {
            if let Ev::Data { data, .. } = event {
                got.extend_from_slice(&data);
            }
        }
        (got.len() == data.len()).then_some(())
    });
    assert!(got == data);
    assert_eq!(net.right.client.send_credit(peer), Some(64 * 1024));
}

#[test]
fn the_connection_table_answers_queries_in_parts() {
    let mut net = Net::with(WireConfig::default(), |config| config.max_sockets = 128);
    let mut handles = Vec::new();
    for port in 0..60u16 {
        handles.push(net.left.client.udp_bind(10_000 + port).unwrap());
    }
    let listener = net
        .left
        .client
        .tcp_listen(18515, 3, OPEN_REPEATABLE)
        .unwrap();
    let mut bound = 0;
    net.run_until(1_000_000_000, |net| {
        bound += net.left.events().len();
        (bound == 61).then_some(())
    });
    net.left.client.query_connections(0xc0ffee).unwrap();
    let mut parts = Vec::new();
    net.run_until(1_000_000_000, |net| {
        for event in net.left.events() {
            let Ev::Table {
                cookie,
                total,
                first,
                last,
                entries,
            } = event
            else {
                panic!("unexpected {event:?}");
            };
            assert_eq!((cookie, total), (0xc0ffee, 61));
            parts.push((first, last, entries));
        }
        parts.last().is_some_and(|part| part.1).then_some(())
    });
    assert_eq!(parts.len(), 2, "2048-byte buffers hold 50 entries each");
    assert_eq!((parts[0].0, parts[0].1), (0, false));
    assert_eq!((parts[1].0, parts[1].1), (50, true));
    let from_query: Vec<_> = parts.into_iter().flat_map(|part| part.2).collect();
    let local: Vec<_> = net.left.service.connections().collect();
    assert_eq!(from_query, local);
    assert_eq!(local[0].local, SocketAddrV4::new(IP_LEFT, 10_000));
    assert_eq!(local[0].handle, handles[0]);
    assert!(
        local[..60]
            .iter()
            .all(|entry| entry.protocol == Protocol::Udp && entry.repeatable)
    );
    assert_eq!(local[60].handle, listener);
    assert_eq!(local[60].state, ConnectionState::Listen);
    // The listener's backlog counts against the socket limit: 60 + 3 of 128.
    assert_eq!(net.left.client.tcp_listen(18515, 1, 0).map(|_| ()), Ok(()));
    let (error, _) = net.wait_for(false, |event| matches!(event, Ev::Error { .. }));
    assert!(matches!(
        error,
        Ev::Error { kind, code: ErrorCode::PortInUse, .. } if kind == RequestKind::TcpListen as u32
    ));
}

#[test]
fn events_wait_for_pool_b_and_roce_drops_are_counted() {
    let mut net = Net::new(WireConfig::default());
    // Warm the ARP caches.
    net.left
        .client
        .roce_send(&roce_packet(IP_LEFT, IP_RIGHT, 0, b"hello"))
        .unwrap();
    net.wait_for(true, |event| matches!(event, Ev::RoceRx(_)));
    // The right's client stops reading: its ring (256) fills, the rest is dropped.
    let packet = roce_packet(IP_LEFT, IP_RIGHT, 1, &[5; 1000]);
    let mut sent = 0;
    net.run_until(1_000_000_000, |net| {
        while sent < 600 && net.left.client.roce_send(&packet).is_ok() {
            sent += 1;
        }
        let stats = net.right.service.stats();
        (stats.roce_rx + stats.roce_rx_dropped == 601).then_some(())
    });
    let stats = net.right.service.stats();
    assert_eq!(stats.roce_rx, 1 + 256);
    assert_eq!(stats.roce_rx_dropped, 600 - 256);
    // A UDP socket opened now: its Bound waits for room, then arrives.
    let udp = net.right.client.udp_bind(9).unwrap();
    for _ in 0..10 {
        net.step();
    }
    assert!(net.right.service.stats().events_delayed >= 1);
    let events = net.right.events();
    assert_eq!(
        events
            .iter()
            .filter(|event| matches!(event, Ev::RoceRx(_)))
            .count(),
        256
    );
    let (bound, _) = net.wait_for(true, |event| matches!(event, Ev::Bound { .. }));
    assert_eq!(
        bound,
        Ev::Bound {
            handle: udp,
            port: 9
        }
    );
}

#[test]
fn a_burst_of_full_sized_datagrams_arrives_whole() {
    // A UDP socket's buffers hold `udp_packets` datagrams of the largest size the link
    // carries: a burst that large, sent at once and taken off the wire in one poll, loses
    // nothing on either side (smoltcp drops what its buffers have no room for).
    let mut net = Net::new(WireConfig::default());
    let server = net.right.client.udp_bind(7).unwrap();
    net.wait_for(true, |event| matches!(event, Ev::Bound { .. }));
    let client = net.left.client.udp_bind(0).unwrap();
    net.wait_for(false, |event| matches!(event, Ev::Bound { .. }));
    let server_address = SocketAddrV4::new(IP_RIGHT, 7);
    // The first datagram resolves the server's MAC, so that the burst leaves at once.
    net.left
        .client
        .udp_send(client, server_address, b"hello")
        .unwrap();
    net.wait_for(true, |event| matches!(event, Ev::UdpRecv { .. }));
    let burst = net.right.service.config().udp_packets;
    // The link's MTU less the IPv4 and UDP headers.
    let largest = net.right.service.config().mtu - 28;
    let datagrams: Vec<Vec<u8>> = (0..burst).map(|i| pattern(i as u8, i, largest)).collect();
    for datagram in &datagrams {
        net.left
            .client
            .udp_send(client, server_address, datagram)
            .unwrap();
    }
    let mut received = Vec::new();
    net.run_until(1_000_000_000, |net| {
        for event in net.right.events() {
            let Ev::UdpRecv {
                handle, payload, ..
            } = event
            else {
                panic!("unexpected {event:?}");
            };
            assert_eq!(handle, server);
            received.push(payload);
        }
        (received.len() == burst).then_some(())
    });
    assert_eq!(received, datagrams);
    assert_eq!(
        net.left.events(),
        Vec::new(),
        "no error on the sending side"
    );
    assert_eq!(net.left.service.stats().udp_tx_dropped, 0);
    assert_eq!(net.right.service.stats().udp_rx_dropped, 0);
}

#[test]
fn mac_zero_in_the_config_takes_the_nics() {
    let (nic, _host) = memwire::pair(MAC_RIGHT, HOST_MAC, WireConfig::default());
    let node = Node::new(nic, IP_RIGHT, |config| config.mac = [0; 6]);
    assert_eq!(node.service.config().mac, MAC_RIGHT);
}

#[test]
fn udp_to_a_silent_host_does_not_hold_up_other_requests() {
    let mut net = Net::with(WireConfig::default(), |config| config.udp_packets = 8);
    let udp = net.left.client.udp_bind(0).unwrap();
    net.wait_for(false, |event| matches!(event, Ev::Bound { .. }));
    // Nobody answers ARP for 10.0.0.77: smoltcp holds the datagrams, the buffer fills.
    let silent = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 9);
    for _ in 0..20 {
        net.left.client.udp_send(udp, silent, &[1; 100]).unwrap();
    }
    let packet = roce_packet(IP_LEFT, IP_RIGHT, 1, b"behind the datagrams");
    net.left.client.roce_send(&packet).unwrap();
    let (got, _) = net.wait_for(true, |event| matches!(event, Ev::RoceRx(_)));
    assert_eq!(got, Ev::RoceRx(packet));
    let errors: Vec<Ev> = net.left.events();
    assert_eq!(errors.len(), 12, "{errors:?}");
    assert!(errors.iter().all(|event| matches!(
        event,
        Ev::Error { code: ErrorCode::NoBufferSpace, meta, .. } if *meta == udp
    )));
    assert_eq!(net.left.service.stats().udp_tx_dropped, 12);
}

#[test]
fn abort_resets_the_peer() {
    let mut net = Net::new(WireConfig::default());
    let listener = net.right.client.tcp_listen(7777, 1, 0).unwrap();
    net.wait_for(true, |event| {
        *event
            == Ev::Bound {
                handle: listener,
                port: 7777,
            }
    });
    let conn = net
        .left
        .client
        .tcp_connect(SocketAddrV4::new(IP_RIGHT, 7777), 0, 0)
        .unwrap();
    net.wait_for(false, |event| matches!(event, Ev::Connected { .. }));
    let (accepted, _) = net.wait_for(true, |event| matches!(event, Ev::Accepted { .. }));
    let Ev::Accepted { handle: peer, .. } = accepted else {
        unreachable!()
    };
    net.left.client.tcp_send(conn, b"bye").unwrap();
    expect_data(&mut net, true, peer, b"bye");
    net.left.client.abort(conn).unwrap();
    let (closed, _) = net.wait_for(false, |event| matches!(event, Ev::Closed(..)));
    assert_eq!(closed, Ev::Closed(conn, CloseReason::Aborted));
    let (closed, _) = net.wait_for(true, |event| matches!(event, Ev::Closed(..)));
    assert_eq!(closed, Ev::Closed(peer, CloseReason::Reset));
    // Both tables are back to the listener alone once the RST went out.
    net.run_until(5_000_000_000, |net| {
        (net.left.service.connections().count() == 0
            && net.right.service.connections().count() == 1)
            .then_some(())
    });
    // A connect on the freed handle space works again, and the listener still accepts.
    let again = net
        .left
        .client
        .tcp_connect(SocketAddrV4::new(IP_RIGHT, 7777), 0, 0)
        .unwrap();
    let (connected, _) = net.wait_for(false, |event| matches!(event, Ev::Connected { .. }));
    assert!(matches!(connected, Ev::Connected { handle, .. } if handle == again));
}

/// Connects left to a listener on the right; returns (left handle, right handle).
/// With a quiet TCP connection open beside it (an RDMA test's exchange connection), RoCE
/// traffic does not run the stack on each poll; the connection still works afterwards.
#[test]
fn roce_traffic_leaves_a_quiet_stack_alone() {
    let mut net = Net::new(WireConfig::default());
    let (conn, peer) = connected_pair(&mut net, 18515);
    // Let the handshake's last segments and their echoes settle.
    for _ in 0..100 {
        net.step();
    }
    let passes = |net: &Net| [&net.left, &net.right].map(|node| node.service.stats().stack_passes);
    let (before, steps_before) = (passes(&net), net.steps);
    let to_right: Vec<Vec<u8>> = (0..300)
        .map(|psn| roce_packet(IP_LEFT, IP_RIGHT, psn, &pattern(psn as u8, 3, 512)))
        .collect();
    let mut sent = 0;
    let mut got = Vec::new();
    net.run_until(1_000_000_000, |net| {
        // A packet or two per poll, as a request-response flow sends them.
        for _ in 0..2 {
            if sent < to_right.len() && net.left.client.roce_send(&to_right[sent]).is_ok() {
                sent += 1;
            }
        }
        for event in net.right.events() {
            let Ev::RoceRx(packet) = event else {
                panic!("unexpected {event:?}");
            };
            got.push(packet);
        }
        (got.len() == to_right.len()).then_some(())
    });
    assert_eq!(got, to_right);
    let after = passes(&net);
    let steps = net.steps - steps_before;
    for side in 0..2 {
        let stack = after[side] - before[side];
        assert!(
            stack * 10 < steps,
            "side {side}: the stack ran on {stack} of {steps} polls"
        );
    }
    // The connection is as it was: bytes cross both ways.
    net.left.client.tcp_send(conn, b"after").unwrap();
    expect_data(&mut net, true, peer, b"after");
    net.right.client.tcp_send(peer, b"back").unwrap();
    expect_data(&mut net, false, conn, b"back");
}

/// Waits for the next data event on the right side (`right`) or the left, and checks that it
/// carries `data` for `handle`.
fn expect_data(net: &mut Net, right: bool, handle: u32, data: &[u8]) {
    let (event, _) = net.wait_for(right, |event| matches!(event, Ev::Data { .. }));
    assert_eq!(
        event,
        Ev::Data {
            handle,
            data: data.to_vec()
        }
    );
}

fn connected_pair(net: &mut Net, port: u16) -> (u32, u32) {
    let listener = net.right.client.tcp_listen(port, 1, 0).unwrap();
    net.wait_for(
        true,
        |event| matches!(event, Ev::Bound { handle, .. } if *handle == listener),
    );
    let conn = net
        .left
        .client
        .tcp_connect(SocketAddrV4::new(IP_RIGHT, port), 0, 0)
        .unwrap();
    net.wait_for(false, |event| matches!(event, Ev::Connected { .. }));
    let (accepted, _) = net.wait_for(true, |event| matches!(event, Ev::Accepted { .. }));
    let Ev::Accepted { handle: peer, .. } = accepted else {
        unreachable!()
    };
    (conn, peer)
}

/// A [`WindDown`]: connections closed, reset, timed out; sockets removed.
fn counts(closed: u32, reset: u32, timed_out: u32, removed: u32) -> WindDown {
    WindDown {
        closed,
        reset,
        timed_out,
        removed,
    }
}

/// The left's OS A has ended: its OS B winds down while the right is silent (not polled),
/// on a clock that jumps to each deadline; returns what it did and how long it took, and
/// leaves `net.now_ns` at its end.
fn wind_down_alone(net: &mut Net) -> (WindDown, u64) {
    let start = net.now_ns;
    let clock = core::cell::Cell::new(start);
    let left = &mut net.left;
    let done = left.service.wind_down(
        &mut left.endpoint,
        &mut left.pool,
        || clock.get(),
        |deadline| clock.set(deadline.max(clock.get() + 1_000)),
    );
    net.now_ns = clock.get();
    (done, clock.get() - start)
}

#[test]
fn os_a_ending_closes_its_connections_after_their_bytes() {
    let mut net = Net::new(WireConfig::default());
    let (conn, peer) = connected_pair(&mut net, 7100);
    let udp = net.left.client.udp_bind(7101).unwrap();
    let listener = net.left.client.tcp_listen(7102, 1, 0).unwrap();
    net.wait_for(
        false,
        |event| matches!(event, Ev::Bound { handle, .. } if *handle == listener),
    );
    assert!(udp != listener);
    // OS A sends its last bytes and ends without closing anything.
    let last = pattern(0x33, 0, 48 * 1024);
    assert_eq!(net.left.client.tcp_send(conn, &last), Ok(last.len()));
    net.left.poll(net.now_ns);
    assert!(net.left.service.closing(), "the connection is open");

    // OS B winds down, on a clock of its own; the right keeps running meanwhile.
    let start = net.now_ns;
    let clock = core::cell::Cell::new(start);
    let Net { left, right, .. } = &mut net;
    let (mut got, mut eof) = (Vec::new(), false);
    let done = left.service.wind_down(
        &mut left.endpoint,
        &mut left.pool,
        || clock.get(),
        |deadline| {
            let now = clock.get();
            right.poll(now);
            for event in right.events() {
                match event {
                    Ev::Data { handle, data } if handle == peer => got.extend_from_slice(&data),
                    Ev::Eof(handle) if handle == peer => eof = true,
                    Ev::SendSpace(..) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            clock.set(deadline.min(now + 20_000).max(now + 1_000));
        },
    );
    assert_eq!(done, counts(1, 0, 0, 2));
    assert!(
        clock.get() - start < LINGER_NS,
        "no waiting for the linger time"
    );
    assert!(!net.left.service.closing());
    // Every byte arrived before the end of the stream.
    net.run_until(1_000_000_000, |net| {
        for event in net.right.events() {
            match event {
                Ev::Data { handle, data } if handle == peer => got.extend_from_slice(&data),
                Ev::Eof(handle) if handle == peer => eof = true,
                Ev::SendSpace(..) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        eof.then_some(())
    });
    assert!(
        got == last,
        "{} of {} bytes arrived intact",
        got.len(),
        last.len()
    );
    // The UDP socket and the listener are gone: the port refuses connections.
    let refused = net
        .right
        .client
        .tcp_connect(SocketAddrV4::new(IP_LEFT, 7102), 0, 0)
        .unwrap();
    let (closed, _) = net.wait_for(true, |event| matches!(event, Ev::Closed(..)));
    assert_eq!(closed, Ev::Closed(refused, CloseReason::ConnectFailed));
}

#[test]
fn os_a_ending_with_bytes_it_did_not_read_resets_the_peer() {
    let mut net = Net::new(WireConfig::default());
    let (_conn, peer) = connected_pair(&mut net, 7200);
    // The right sends until the left's OS A, which reads nothing, holds the stream up: its
    // pool B and then its socket's receive buffer fill.
    let data = pattern(0x44, 0, 64 * 1024);
    let mut idle_steps = 0;
    while idle_steps < 200 {
        match net.right.client.tcp_send(peer, &data) {
            Ok(_) => idle_steps = 0,
            Err(ClientError::WouldBlock | ClientError::NoBuffer | ClientError::RingFull) => {
                idle_steps += 1;
            }
            Err(error) => panic!("tcp_send: {error}"),
        }
        net.step();
        for event in net.right.events() {
            assert!(matches!(event, Ev::SendSpace(..)), "unexpected {event:?}");
        }
    }
    let done = net.left.service.close_all();
    assert_eq!(done, counts(0, 1, 0, 0));
    let (closed, _) = net.wait_for(true, |event| matches!(event, Ev::Closed(..)));
    assert_eq!(closed, Ev::Closed(peer, CloseReason::Reset));
}

#[test]
fn os_a_ending_with_a_silent_peer_resets_after_the_linger_time() {
    let mut net = Net::new(WireConfig::default());
    let (conn, peer) = connected_pair(&mut net, 7300);
    assert_eq!(net.left.client.tcp_send(conn, b"unanswered"), Ok(10));
    // The right stops answering; the left's OS A ends.
    let (done, waited) = wind_down_alone(&mut net);
    assert_eq!(done, counts(1, 0, 1, 0));
    assert!(
        (LINGER_NS..LINGER_NS + 100_000_000).contains(&waited),
        "gave up after {waited} ns"
    );
    assert!(!net.left.service.closing());
    // The reset is on the wire: when the right runs again (the left no longer does), its
    // connection is reset.
    let mut events = Vec::new();
    for step in 0..100 {
        net.right.poll(net.now_ns + step * 1_000_000);
        events.extend(net.right.events());
    }
    assert_eq!(events, [Ev::Closed(peer, CloseReason::Reset)]);
}

#[test]
fn os_a_ending_after_its_peer_closed_does_not_wait_for_the_peer() {
    let mut net = Net::new(WireConfig::default());
    let (conn, peer) = connected_pair(&mut net, 7400);
    // The peer closes its side, and the left's OS A sees the end of the stream.
    net.right.client.tcp_close(peer).unwrap();
    net.wait_for(false, |event| *event == Ev::Eof(conn));
    // Then the peer goes away (it is polled no more) and the left's OS A ends: its FIN tells
    // a peer that closed already nothing, so the wind-down does not wait for its ACK.
    let (done, waited) = wind_down_alone(&mut net);
    assert_eq!(done, counts(1, 0, 0, 0));
    assert!(waited < 1_000_000, "waited {waited} ns");
}
