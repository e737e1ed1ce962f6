//! Network applications: TCP/UDP echo server, TCP client, UDP echo client.

use alloc::vec::Vec;
use core::net::SocketAddrV4;

use netsvc::netmsg::Event;

use crate::{NetClient, Os, Outcome, log};

/// A TCP and UDP echo server on `port`; ends once `connections` TCP connections have closed
/// and `datagrams` UDP datagrams were echoed (both 0: never).
pub fn tcp_echo(
    os: &mut impl Os,
    client: &mut NetClient,
    port: u16,
    connections: u64,
    datagrams: u64,
) -> Outcome {
    let listener = match client.tcp_listen(port, 4, 0) {
        Ok(handle) => handle,
        Err(error) => {
            log!(os, "net: listen on {port}: {error:?}");
            return Outcome::Failed;
        }
    };
    let udp = match client.udp_bind(port) {
        Ok(handle) => handle,
        Err(error) => {
            log!(os, "net: bind UDP {port}: {error:?}");
            return Outcome::Failed;
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
                    log!(os, "net: tcp echo listening on port {local_port}");
                }
                Event::TcpAccepted { handle, info, .. } => {
                    log!(
                        os,
                        "net: tcp echo: connection {handle:#x} from {}",
                        info.remote
                    );
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
                    log!(
                        os,
                        "net: tcp echo: connection {handle:#x} closed ({reason:?}), {bytes} bytes echoed so far"
                    );
                }
                Event::Error {
                    request_kind, code, ..
                } => {
                    log!(os, "net: request {request_kind:#x} refused: {code:?}");
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
        if os.should_stop() {
            log!(
                os,
                "net: tcp echo stopped: served {served} connections, {bytes} bytes; {echoed} UDP datagrams echoed"
            );
            return Outcome::Success;
        }
        let finite = connections != 0 || datagrams != 0;
        if finite && served >= connections && echoed >= datagrams {
            log!(
                os,
                "net: tcp echo served {served} connections, {bytes} bytes; {echoed} UDP datagrams echoed"
            );
            // Let OS B send the last echoes before this OS ends.
            let until = os.now_ns() + 200_000_000;
            while os.now_ns() < until {
                while client.poll().is_some() {}
                os.wait(client, until);
            }
            return Outcome::Success;
        }
        let deadline = os.now_ns() + 10_000_000;
        os.wait(client, deadline);
    }
}

/// Connects to `server`, sends `total` bytes, checks that the same bytes come back, closes.
pub fn tcp_client(
    os: &mut impl Os,
    client: &mut NetClient,
    server: SocketAddrV4,
    total: usize,
) -> Outcome {
    let data: Vec<u8> = (0..total).map(|i| ((i * 7 + 3) % 251) as u8).collect();
    let started = os.now_ns();
    let deadline = started + 120_000_000_000;
    let mut connection = None;
    let (mut sent, mut received) = (0usize, Vec::with_capacity(total));
    let mut attempts = 0;
    while received.len() < total && os.now_ns() < deadline {
        if connection.is_none() {
            attempts += 1;
            match client.tcp_connect(server, 0, 0) {
                Ok(handle) => connection = Some((handle, false)),
                Err(error) => log!(os, "net: connect: {error:?}"),
            }
        }
        while let Some(event) = client.poll() {
            match event {
                Event::TcpConnected { handle, .. }
                    if connection.is_some_and(|(h, _)| h == handle) =>
                {
                    connection = Some((handle, true));
                }
                Event::TcpData { data: chunk, .. } => received.extend_from_slice(chunk),
                Event::Closed { handle, reason }
                    if connection.is_some_and(|(h, _)| h == handle) =>
                {
                    log!(os, "net: connection closed early ({reason:?}); retrying");
                    connection = None;
                    sent = 0;
                    received.clear();
                }
                _ => {}
            }
        }
        if let Some((handle, true)) = connection
            && sent < total
            && let Ok(count) = client.tcp_send(handle, &data[sent..])
        {
            sent += count;
        }
        let deadline = os.now_ns() + 10_000_000;
        os.wait(client, deadline);
    }
    if let Some((handle, _)) = connection {
        let _ = client.tcp_close(handle);
        let until = os.now_ns() + 500_000_000;
        while os.now_ns() < until {
            while client.poll().is_some() {}
            os.wait(client, until);
        }
    }
    let intact = received == data;
    let millis = (os.now_ns() - started) / 1_000_000;
    log!(
        os,
        "net: tcp client: {} of {total} bytes came back {} in {millis} ms ({attempts} connection attempts)",
        received.len(),
        if intact {
            "intact and in order"
        } else {
            "WRONG"
        }
    );
    if intact {
        Outcome::Success
    } else {
        Outcome::Failed
    }
}

/// Sends `count` datagrams of `size` bytes to `server` and checks each echo.
pub fn udp_echo(
    os: &mut impl Os,
    client: &mut NetClient,
    server: SocketAddrV4,
    count: u64,
    size: usize,
) -> Outcome {
    let socket = match client.udp_bind(40_000) {
        Ok(handle) => handle,
        Err(error) => {
            log!(os, "net: bind: {error:?}");
            return Outcome::Failed;
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
                log!(os, "net: send: {error:?}");
            }
            let deadline = os.now_ns() + 1_000_000_000;
            while !answered && os.now_ns() < deadline {
                while let Some(event) = client.poll() {
                    if let Event::UdpRecv {
                        handle,
                        remote,
                        payload: echo,
                    } = event
                        && handle == socket
                        && remote == server
                        && echo == payload.as_slice()
                    {
                        answered = true;
                    }
                }
                if !answered {
                    os.wait(client, deadline);
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
    log!(
        os,
        "net: udp echo: {verified} of {count} datagrams of {size} bytes came back intact ({retries} retries)"
    );
    if verified == count {
        Outcome::Success
    } else {
        Outcome::Failed
    }
}
