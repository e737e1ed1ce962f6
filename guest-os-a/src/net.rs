//! OS A's network workloads, through OS B's network service (`netsvc::Client` on the rings).

extern crate alloc;

use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};

use guest_rt::exit::Status;
use guest_rt::peer::Peer;
use guest_rt::{Platform, println};
use netsvc::Client;
use netsvc::netmsg::Event;
use shm_ring::control::report;
use shm_ring::pool::owner_storage_words;

/// OS A's client of the network service.
pub type NetClient = Client<Vec<u64>>;

/// Attaches the rings and makes the client.
pub fn client(platform: &Platform) -> Option<NetClient> {
    let endpoint = match guest_rt::ring::attach(platform) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            println!("net: cannot attach the rings: {error}");
            return None;
        }
    };
    let words = owner_storage_words(endpoint.own_pool.buffer_count());
    match Client::new(endpoint, alloc::vec![0u64; words]) {
        Ok(client) => Some(client),
        Err(error) => {
            println!("net: cannot own pool A: {error}");
            None
        }
    }
}

/// Wakes OS B if the client asked to, then sleeps until OS B signals or `deadline_ns` passes.
pub fn wait(client: &mut NetClient, peer: &Peer, deadline_ns: u64) {
    if client.take_signal() {
        peer.signal();
    }
    let token = Peer::ipis_received();
    if client.endpoint_mut().rx.prepare_to_sleep() {
        let now = guest_rt::time::now_ns();
        guest_rt::wait_until(
            deadline_ns.saturating_sub(now).clamp(1_000, 10_000_000),
            || Peer::ipis_received() != token || guest_rt::time::now_ns() >= deadline_ns,
        );
    }
    client.endpoint_mut().rx.woke_up();
}

/// A TCP and UDP echo server on `port`; ends once `connections` TCP connections have closed
/// and `datagrams` UDP datagrams were echoed (both 0: never).
pub fn tcp_echo(
    platform: &Platform,
    peer: &Peer,
    port: u16,
    connections: u64,
    datagrams: u64,
) -> Status {
    let Some(mut client) = client(platform) else {
        return Status::Failed;
    };
    peer.wait_ready();
    let listener = match client.tcp_listen(port, 4, 0) {
        Ok(handle) => handle,
        Err(error) => {
            println!("net: listen on {port}: {error:?}");
            return Status::Failed;
        }
    };
    let udp = match client.udp_bind(port) {
        Ok(handle) => handle,
        Err(error) => {
            println!("net: bind UDP {port}: {error:?}");
            return Status::Failed;
        }
    };
    let mut outgoing: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut closing: Vec<u32> = Vec::new();
    let mut echoes: Vec<(SocketAddrV4, Vec<u8>)> = Vec::new();
    let (mut served, mut bytes, mut echoed) = (0u64, 0u64, 0u64);
    loop {
        while let Some(event) = client.poll() {
            match event {
                Event::Bound { handle, local_port } if handle == listener => {
                    println!("net: tcp echo listening on port {local_port}");
                }
                Event::TcpAccepted { handle, info, .. } => {
                    println!("net: tcp echo: connection {handle:#x} from {}", info.remote);
                }
                Event::TcpData { handle, data } => {
                    bytes += data.len() as u64;
                    match outgoing.iter_mut().find(|(h, _)| *h == handle) {
                        Some((_, queue)) => queue.extend_from_slice(data),
                        None => outgoing.push((handle, data.to_vec())),
                    }
                }
                Event::TcpEof { handle } => closing.push(handle),
                Event::UdpRecv {
                    handle,
                    remote,
                    payload,
                } if handle == udp => {
                    echoes.push((remote, payload.to_vec()));
                }
                Event::Closed { handle, reason } if handle != listener => {
                    served += 1;
                    outgoing.retain(|(h, _)| *h != handle);
                    closing.retain(|h| *h != handle);
                    println!(
                        "net: tcp echo: connection {handle:#x} closed ({reason:?}), {bytes} bytes echoed so far"
                    );
                }
                Event::Error {
                    request_kind, code, ..
                } => {
                    println!("net: request {request_kind:#x} refused: {code:?}");
                }
                _ => {}
            }
        }
        for (remote, payload) in echoes.drain(..) {
            if client.udp_send(udp, remote, &payload).is_ok() {
                echoed += 1;
            }
        }
        for (handle, queue) in outgoing.iter_mut() {
            if let Ok(sent) = client.tcp_send(*handle, queue) {
                queue.drain(..sent);
            }
        }
        outgoing.retain(|(_, queue)| !queue.is_empty());
        closing.retain(|handle| {
            let flushed = !outgoing.iter().any(|(h, _)| h == handle);
            if flushed {
                let _ = client.tcp_close(*handle);
            }
            !flushed
        });
        let finite = connections != 0 || datagrams != 0;
        if finite && served >= connections && echoed >= datagrams {
            peer.own.set_report(report::BYTES, bytes);
            peer.own.publish_report();
            println!(
                "net: tcp echo served {served} connections, {bytes} bytes; {echoed} UDP datagrams echoed"
            );
            // Let OS B send the last echoes before this OS ends.
            let until = guest_rt::time::now_ns() + 200_000_000;
            while guest_rt::time::now_ns() < until {
                while client.poll().is_some() {}
                wait(&mut client, peer, until);
            }
            return Status::Success;
        }
        wait(&mut client, peer, guest_rt::time::now_ns() + 10_000_000);
    }
}

/// Connects to `server`, sends `total` bytes, checks that the same bytes come back, closes.
pub fn tcp_client(platform: &Platform, peer: &Peer, server: SocketAddrV4, total: usize) -> Status {
    let Some(mut client) = client(platform) else {
        return Status::Failed;
    };
    peer.wait_ready();
    let data: Vec<u8> = (0..total).map(|i| ((i * 7 + 3) % 251) as u8).collect();
    let started = guest_rt::time::now_ns();
    let deadline = started + 120_000_000_000;
    let mut connection = None;
    let (mut sent, mut received) = (0usize, Vec::with_capacity(total));
    let mut attempts = 0;
    while received.len() < total && guest_rt::time::now_ns() < deadline {
        if connection.is_none() {
            attempts += 1;
            match client.tcp_connect(server, 0, 0) {
                Ok(handle) => connection = Some((handle, false)),
                Err(error) => println!("net: connect: {error:?}"),
            }
        }
        while let Some(event) = client.poll() {
            match event {
                Event::TcpConnected { handle, .. } => {
                    if let Some((h, established)) = connection.as_mut() {
                        if *h == handle {
                            *established = true;
                        }
                    }
                }
                Event::TcpData { data: chunk, .. } => received.extend_from_slice(chunk),
                Event::Closed { handle, reason } => {
                    if connection.is_some_and(|(h, _)| h == handle) {
                        println!("net: connection closed early ({reason:?}); retrying");
                        connection = None;
                        sent = 0;
                        received.clear();
                    }
                }
                _ => {}
            }
        }
        if let Some((handle, true)) = connection {
            if sent < total {
                if let Ok(count) = client.tcp_send(handle, &data[sent..]) {
                    sent += count;
                }
            }
        }
        wait(&mut client, peer, guest_rt::time::now_ns() + 10_000_000);
    }
    if let Some((handle, _)) = connection {
        let _ = client.tcp_close(handle);
        let until = guest_rt::time::now_ns() + 500_000_000;
        while guest_rt::time::now_ns() < until {
            while client.poll().is_some() {}
            wait(&mut client, peer, until);
        }
    }
    let intact = received == data;
    let millis = (guest_rt::time::now_ns() - started) / 1_000_000;
    println!(
        "net: tcp client: {} of {total} bytes came back {} in {millis} ms ({attempts} connection attempts)",
        received.len(),
        if intact {
            "intact and in order"
        } else {
            "WRONG"
        }
    );
    peer.own.set_report(report::VERIFIED, u64::from(intact));
    peer.own.publish_report();
    if intact {
        Status::Success
    } else {
        Status::Failed
    }
}

/// Sends `count` datagrams of `size` bytes to `server` and checks each echo.
pub fn udp_echo(
    platform: &Platform,
    peer: &Peer,
    server: SocketAddrV4,
    count: u64,
    size: usize,
) -> Status {
    let Some(mut client) = client(platform) else {
        return Status::Failed;
    };
    peer.wait_ready();
    let socket = match client.udp_bind(40_000) {
        Ok(handle) => handle,
        Err(error) => {
            println!("net: bind: {error:?}");
            return Status::Failed;
        }
    };
    let size = size.clamp(8, 1472);
    let mut payload = alloc::vec![0u8; size];
    let (mut verified, mut retries) = (0u64, 0u64);
    for sequence in 0..count {
        for (index, byte) in payload.iter_mut().enumerate() {
            *byte = (sequence as usize).wrapping_mul(7).wrapping_add(index) as u8;
        }
        payload[..8].copy_from_slice(&sequence.to_le_bytes());
        let mut answered = false;
        // Up to 5 tries, 1 s apart: the first datagram may wait for ARP.
        for _ in 0..5 {
            if let Err(error) = client.udp_send(socket, server, &payload) {
                println!("net: send: {error:?}");
            }
            let deadline = guest_rt::time::now_ns() + 1_000_000_000;
            while !answered && guest_rt::time::now_ns() < deadline {
                while let Some(event) = client.poll() {
                    if let Event::UdpRecv {
                        handle,
                        remote,
                        payload: echo,
                    } = event
                    {
                        if handle == socket && remote == server && echo == payload.as_slice() {
                            answered = true;
                        }
                    }
                }
                if !answered {
                    wait(&mut client, peer, deadline);
                }
            }
            if answered {
                break;
            }
            retries += 1;
        }
        if answered {
            verified += 1;
        }
    }
    peer.own.set_report(report::VERIFIED, verified);
    peer.own.publish_report();
    println!(
        "net: udp echo: {verified} of {count} datagrams of {size} bytes came back intact ({retries} retries)"
    );
    if verified == count {
        Status::Success
    } else {
        Status::Failed
    }
}

/// The IPv4 address in a workload argument (big-endian `u32`).
pub fn address(argument: u64, port: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(argument as u32), port as u16)
}
