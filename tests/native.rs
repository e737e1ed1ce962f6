//! Native mode: the same OS A applications and OS B network service as in the VMs, as host
//! threads joined by real shm-ring rings, on the built-in switch.

use std::net::{Ipv4Addr, SocketAddrV4};

use apps::Outcome;
use host_agent::devices::switch::{FaultConfig, Switch, SwitchConfig};
use host_agent::native::{NativeMember, spawn};

fn member(switch: &Switch, index: u8, app: host_agent::native::NativeApp) -> NativeMember {
    let mac = [0x02, 0xd1, 0, 0, index, 0x0b];
    NativeMember {
        tag: format!("n{index}"),
        mac,
        ipv4: Ipv4Addr::new(10, 78, 0, index),
        prefix_len: 24,
        backend: Box::new(switch.port(Some(mac)).unwrap()),
        app,
        echo: true,
    }
}

#[test]
fn native_endpoints_exchange_tcp_and_udp_over_a_lossy_switch() {
    let faults = FaultConfig {
        loss: 0.03,
        duplication: 0.01,
        reordering: 0.01,
        seed: 11,
    };
    let switch = Switch::new(SwitchConfig {
        faults,
        ..SwitchConfig::default()
    });
    let server = SocketAddrV4::new(Ipv4Addr::new(10, 78, 0, 1), 7);
    let echo = spawn(member(
        &switch,
        1,
        Box::new(|os, client| apps::net::tcp_echo(os, client, 7, 0, 0)),
    ))
    .unwrap();
    let tcp = spawn(member(
        &switch,
        2,
        Box::new(move |os, client| apps::net::tcp_client(os, client, server, 256 * 1024)),
    ))
    .unwrap();
    let udp = spawn(member(
        &switch,
        3,
        Box::new(move |os, client| apps::net::udp_echo(os, client, server, 50, 1000)),
    ))
    .unwrap();
    let tcp = tcp.join().unwrap();
    assert_eq!(tcp.outcome, Outcome::Success, "{:?}", tcp.lines);
    assert!(tcp.lines.iter().any(|l| {
        l.starts_with("net: tcp client: 262144 of 262144 bytes came back intact and in order")
    }));
    let udp = udp.join().unwrap();
    assert_eq!(udp.outcome, Outcome::Success, "{:?}", udp.lines);
    echo.stop();
    let echo = echo.join().unwrap();
    assert_eq!(echo.outcome, Outcome::Success, "{:?}", echo.lines);
    let counters = switch.counters();
    assert!(counters.lost > 0, "{counters:?}");
}
