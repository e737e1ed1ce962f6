//! virtio-net end to end: a test thread plays the guest driver over guest memory and the MMIO
//! bus; frames travel through the built-in switch to a peer or to a second VM's NIC.

mod devices_support;

use std::time::Duration;

use devices_support::{
    BASIC_FEATURES, Driver, LARGE_AREA, MAX_QUEUE, Part, RX, TX, frame, sequence, wait_until,
};
use host_agent::devices::net_backend::NetBackend;
use host_agent::devices::pcap::PcapWriter;
use host_agent::devices::switch::{FaultConfig, Switch, SwitchConfig, SwitchPort};
use host_agent::devices::virtio::mmio::register;
use host_agent::devices::virtio::net::{MAX_FRAME_LEN, NetConfig};
use host_agent::devices::virtio::queue::{RawDescriptor, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT};
use host_agent::devices::virtio::{interrupt, status};
use host_agent::devices::worker::NetDeviceHandle;
use host_agent::memory::GuestAddress;
use zerocopy::little_endian::{U16, U32, U64};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const MAC_PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
const TIMEOUT: Duration = Duration::from_secs(10);
const INDIRECT_DESC: u64 = 1 << 28;
const EVENT_IDX: u64 = 1 << 29;

fn config(mac: [u8; 6]) -> NetConfig {
    NetConfig {
        mac,
        ..NetConfig::default()
    }
}

/// A running driver of a NIC with MAC A, its switch port, and a peer port.
fn driver_and_peer() -> (Driver, SwitchPort, SwitchPort, Switch) {
    let mut driver = Driver::new(config(MAC_A));
    driver.init(64, BASIC_FEATURES);
    let switch = Switch::new(SwitchConfig::default());
    let port = switch.port(Some(MAC_A)).unwrap();
    let peer = switch.port(Some(MAC_PEER)).unwrap();
    (driver, port, peer, switch)
}

#[test]
fn negotiates_and_exposes_mac_and_link_status() {
    let mut driver = Driver::new(config(MAC_B));
    let features = driver.init(256, BASIC_FEATURES | INDIRECT_DESC | EVENT_IDX);
    // EVENT_IDX is not offered by default; INDIRECT_DESC is.
    assert_eq!(features, BASIC_FEATURES | INDIRECT_DESC);
    assert_eq!(driver.read_config(0, 6), MAC_B);
    assert_eq!(driver.read_config(6, 2), [1, 0], "link up");
    // Byte-wise and 8-byte reads see the same bytes.
    assert_eq!(driver.read_config(5, 1), [MAC_B[5]]);
    assert_eq!(driver.read_config(0, 8)[..6], MAC_B);
    assert_eq!(driver.read_config(10, 4), [0; 4], "past the config space");

    let generation = driver.read(register::CONFIG_GENERATION);
    let interrupts = driver.interrupts.count();
    driver.nic().set_link_up(false);
    assert_eq!(driver.read_config(6, 2), [0, 0]);
    assert_ne!(driver.read(register::CONFIG_GENERATION), generation);
    assert_eq!(driver.interrupts.count(), interrupts + 1);
    assert_eq!(
        driver.read(register::INTERRUPT_STATUS) & interrupt::CONFIG_CHANGE,
        interrupt::CONFIG_CHANGE
    );
}

#[test]
fn transmitted_frames_reach_the_peer_without_the_header() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer();
    let sent: Vec<Vec<u8>> = (0..10)
        .map(|n| frame(MAC_PEER, MAC_A, n, 100 + n as usize))
        .collect();
    for frame in &sent {
        driver.send(frame);
    }
    assert_eq!(driver.nic().process_tx(&mut port), 10);
    let received: Vec<Vec<u8>> = (0..10)
        .map(|_| peer.receive_timeout(TIMEOUT).unwrap())
        .collect();
    assert_eq!(received, sent);
    let used = driver.take_used(TX);
    assert_eq!(used.len(), 10);
    assert!(used.iter().all(|(_, len)| *len == 0));
    let counters = driver.nic().counters();
    assert_eq!(counters.tx_packets, 10);
    assert_eq!(
        counters.tx_bytes,
        sent.iter().map(|frame| frame.len() as u64).sum::<u64>()
    );
    assert_eq!(driver.interrupts.count(), 1, "one interrupt per batch");
}

#[test]
fn received_frames_land_in_buffers_with_a_header() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer();
    driver.post_rx(8, 1526);
    let sent: Vec<Vec<u8>> = (0..5).map(|n| frame(MAC_A, MAC_PEER, n, 60)).collect();
    for frame in &sent {
        peer.send(frame).unwrap();
    }
    assert_eq!(driver.nic().process_rx(&mut port), 5);
    assert_eq!(driver.receive(), sent);
    let counters = driver.nic().counters();
    assert_eq!((counters.rx_packets, counters.rx_bytes), (5, 5 * 78));
    assert_eq!(driver.interrupts.count(), 1);
    assert_eq!(
        driver.read(register::INTERRUPT_STATUS),
        interrupt::USED_BUFFER
    );
    driver.write(register::INTERRUPT_ACK, interrupt::USED_BUFFER);
    assert_eq!(driver.read(register::INTERRUPT_STATUS), 0);
}

#[test]
fn a_full_mtu_frame_fits_a_1526_byte_buffer() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer();
    driver.post_rx(1, 1526);
    let big = frame(MAC_A, MAC_PEER, 1, 1500 - 4);
    assert_eq!(big.len(), 1514);
    peer.send(&big).unwrap();
    driver.nic().process_rx(&mut port);
    assert_eq!(driver.take_used(RX), [(0, 1526)]);
}

#[test]
fn frames_without_buffers_are_dropped_and_counted() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer();
    peer.send(&frame(MAC_A, MAC_PEER, 1, 10)).unwrap();
    driver.nic().process_rx(&mut port);
    // A buffer too small for the next frame stays available for a smaller one.
    driver.post_rx(1, 100);
    peer.send(&frame(MAC_A, MAC_PEER, 2, 200)).unwrap();
    peer.send(&frame(MAC_A, MAC_PEER, 3, 20)).unwrap();
    driver.nic().process_rx(&mut port);
    let received = driver.receive();
    assert_eq!(received.len(), 1);
    assert_eq!(sequence(&received[0]), 3);
    let counters = driver.nic().counters();
    assert_eq!(counters.rx_dropped_no_buffer, 1);
    assert_eq!(counters.rx_dropped_buffer_too_small, 1);
    assert_eq!(counters.rx_packets, 1);
}

#[test]
fn the_device_asks_for_receive_notifications_only_once_its_buffers_ran_out() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer();
    // A frame finding no buffer is dropped, so a notification that buffers were added wakes
    // nothing: while buffers are left, the device asks for none (each is a VM exit).
    assert_eq!(driver.used_flags(RX), 0);
    driver.post_rx(2, 2048);
    peer.send(&frame(MAC_A, MAC_PEER, 1, 10)).unwrap();
    driver.nic().process_rx(&mut port);
    assert_eq!(
        driver.used_flags(RX),
        1,
        "a buffer is left: no notifications"
    );
    peer.send(&frame(MAC_A, MAC_PEER, 2, 10)).unwrap();
    peer.send(&frame(MAC_A, MAC_PEER, 3, 10)).unwrap();
    driver.nic().process_rx(&mut port);
    assert_eq!(driver.used_flags(RX), 0, "out of buffers: notify again");
    assert_eq!(driver.nic().counters().rx_dropped_no_buffer, 1);
    assert_eq!(driver.receive().len(), 2);
    // The transmit queue's notifications are what wakes the worker: never suppressed.
    driver.send(&frame(MAC_PEER, MAC_A, 4, 10));
    driver.nic().process_tx(&mut port);
    assert_eq!(driver.used_flags(TX), 0);
    assert_eq!(peer.receive_timeout(TIMEOUT).map(|f| sequence(&f)), Some(4));
}

#[test]
fn malformed_transmit_chains_are_returned_unsent() {
    let (mut driver, mut port, peer, _switch) = driver_and_peer();
    let chains = [
        vec![Part::Readable(vec![0; 12])],
        vec![Part::Readable(vec![0; 12]), Part::Readable(vec![0; 13])],
        vec![Part::Readable(vec![0; 12]), Part::Writable(64)],
        vec![Part::Readable(vec![0; 12 + MAX_FRAME_LEN + 1])],
    ];
    for chain in &chains {
        driver.push_chain(TX, chain).unwrap();
    }
    driver.notify(TX);
    assert_eq!(driver.nic().process_tx(&mut port), 4);
    assert_eq!(driver.take_used(TX).len(), 4);
    let counters = driver.nic().counters();
    assert_eq!((counters.tx_malformed, counters.tx_packets), (4, 0));
    assert_eq!(peer.pending(), 0);
    // A malformed packet is the driver's problem, not a broken queue.
    assert_eq!(driver.status() & status::DEVICE_NEEDS_RESET, 0);

    // The largest frame is accepted.
    driver.send(&frame(MAC_PEER, MAC_A, 1, MAX_FRAME_LEN - 18));
    // `send` puts a frame larger than a slot in the large area.
    assert_eq!(driver.nic().process_tx(&mut port), 1);
    assert_eq!(driver.nic().counters().tx_packets, 1);
}

#[test]
fn receive_chains_with_readable_buffers_are_returned_empty() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer();
    driver.push_chain(RX, &[Part::Readable(vec![0; 64]), Part::Writable(2048)]);
    peer.send(&frame(MAC_A, MAC_PEER, 1, 10)).unwrap();
    driver.nic().process_rx(&mut port);
    assert_eq!(driver.take_used(RX), [(0, 0)]);
    assert_eq!(driver.nic().counters().rx_bad_chains, 1);
    assert_eq!(
        driver.interrupts.count(),
        1,
        "the driver hears of the returned chain"
    );
}

#[test]
fn hostile_queue_contents_need_a_reset_and_the_device_recovers() {
    let hostile: [&dyn Fn(&mut Driver); 4] = [
        // A buffer outside guest memory.
        &|driver| {
            driver.push_chain(TX, &[Part::Raw(0x1000, 64, 0)]).unwrap();
        },
        // A buffer whose end overflows.
        &|driver| {
            driver
                .push_chain(TX, &[Part::Raw(u64::MAX - 8, 64, 0)])
                .unwrap();
        },
        // A descriptor loop.
        &|driver| {
            let head = driver
                .push_chain(TX, &[Part::Readable(vec![0; 64])])
                .unwrap();
            let raw = RawDescriptor {
                address: U64::new(0x4010_0000),
                len: U32::new(64),
                flags: U16::new(VIRTQ_DESC_F_NEXT),
                next: U16::new(head),
            };
            let address = driver.desc_table(TX) + u64::from(head) * 16;
            driver
                .memory
                .write_obj(GuestAddress(address), &raw)
                .unwrap();
        },
        // The available index jumps ahead.
        &|driver| driver.set_avail_idx(TX, 1000),
    ];
    for (case, make_hostile) in hostile.iter().enumerate() {
        let (mut driver, mut port, mut peer, _switch) = driver_and_peer();
        make_hostile(&mut driver);
        driver.notify(TX);
        let interrupts = driver.interrupts.count();
        driver.nic().process_tx(&mut port);
        assert_ne!(
            driver.status() & status::DEVICE_NEEDS_RESET,
            0,
            "case {case}"
        );
        assert_eq!(driver.interrupts.count(), interrupts + 1, "case {case}");
        assert_eq!(
            driver.read(register::INTERRUPT_STATUS) & interrupt::CONFIG_CHANGE,
            interrupt::CONFIG_CHANGE
        );
        // Nothing moves until the driver resets the device.
        driver.post_rx(1, 2048);
        peer.send(&frame(MAC_A, MAC_PEER, 1, 10)).unwrap();
        driver.nic().process_rx(&mut port);
        assert!(driver.receive().is_empty());

        // A reset and a fresh initialisation bring it back.
        driver.init(64, BASIC_FEATURES);
        driver.post_rx(1, 2048);
        peer.send(&frame(MAC_A, MAC_PEER, 2, 10)).unwrap();
        driver.nic().process_rx(&mut port);
        assert_eq!(driver.receive().len(), 1, "case {case}");
    }
}

#[test]
fn the_driver_can_suppress_interrupts() {
    let (mut driver, mut port, mut peer, _switch) = driver_and_peer();
    driver.post_rx(4, 2048);
    driver.set_avail_flags(RX, 1);
    peer.send(&frame(MAC_A, MAC_PEER, 1, 10)).unwrap();
    driver.nic().process_rx(&mut port);
    assert_eq!(driver.interrupts.count(), 0);
    driver.set_avail_flags(RX, 0);
    peer.send(&frame(MAC_A, MAC_PEER, 2, 10)).unwrap();
    driver.nic().process_rx(&mut port);
    assert_eq!(driver.interrupts.count(), 1);
    assert_eq!(driver.receive().len(), 2);
}

#[test]
fn indirect_descriptor_tables_carry_packets() {
    let (mut driver, mut port, mut peer, _switch) = {
        let mut driver = Driver::new(config(MAC_A));
        let features = driver.init(64, BASIC_FEATURES | INDIRECT_DESC);
        assert_eq!(features & INDIRECT_DESC, INDIRECT_DESC);
        let switch = Switch::new(SwitchConfig::default());
        let port = switch.port(Some(MAC_A)).unwrap();
        let peer = switch.port(Some(MAC_PEER)).unwrap();
        (driver, port, peer, switch)
    };
    let payload = frame(MAC_PEER, MAC_A, 7, 50);
    let header_address = LARGE_AREA + 0x1000;
    let frame_address = LARGE_AREA + 0x2000;
    driver
        .memory
        .write(GuestAddress(header_address), &[0; 12])
        .unwrap();
    driver
        .memory
        .write(GuestAddress(frame_address), &payload)
        .unwrap();
    let table = [
        RawDescriptor {
            address: U64::new(header_address),
            len: U32::new(12),
            flags: U16::new(VIRTQ_DESC_F_NEXT),
            next: U16::new(1),
        },
        RawDescriptor {
            address: U64::new(frame_address),
            len: U32::new(payload.len() as u32),
            flags: U16::new(0),
            next: U16::new(0),
        },
    ];
    driver
        .memory
        .write_obj(GuestAddress(LARGE_AREA), &table)
        .unwrap();
    driver
        .push_chain(TX, &[Part::Raw(LARGE_AREA, 32, VIRTQ_DESC_F_INDIRECT)])
        .unwrap();
    driver.notify(TX);
    driver.nic().process_tx(&mut port);
    assert_eq!(peer.receive_timeout(TIMEOUT), Some(payload));
}

#[test]
fn event_index_mode_moves_traffic() {
    let mut driver = Driver::new(NetConfig {
        mac: MAC_A,
        event_idx: true,
        ..NetConfig::default()
    });
    assert_eq!(
        driver.init(64, BASIC_FEATURES | EVENT_IDX) & EVENT_IDX,
        EVENT_IDX
    );
    let switch = Switch::new(SwitchConfig::default());
    let mut peer = switch.port(Some(MAC_PEER)).unwrap();
    let worker =
        NetDeviceHandle::spawn(driver.nic.clone(), switch.port(Some(MAC_A)).unwrap()).unwrap();
    driver.post_rx(32, 2048);
    for n in 0..20 {
        driver.send(&frame(MAC_PEER, MAC_A, n, 40));
        peer.send(&frame(MAC_A, MAC_PEER, n, 40)).unwrap();
    }
    for n in 0..20 {
        let received = peer.receive_timeout(TIMEOUT).expect("frame from the NIC");
        assert_eq!(sequence(&received), n);
    }
    let frames = driver.receive_count(20, TIMEOUT);
    assert_eq!(
        frames
            .iter()
            .map(|frame| sequence(frame))
            .collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    worker.stop().unwrap();
}

/// Two VMs, each with its NIC and worker thread, joined by a switch.
struct TwoVms {
    a: Driver,
    b: Driver,
    switch: Switch,
    workers: Vec<NetDeviceHandle>,
}

fn two_vms(faults: FaultConfig) -> TwoVms {
    let switch = Switch::new(SwitchConfig {
        faults,
        ..SwitchConfig::default()
    });
    let mut a = Driver::new(config(MAC_A));
    let mut b = Driver::new(config(MAC_B));
    a.init(MAX_QUEUE, BASIC_FEATURES);
    b.init(MAX_QUEUE, BASIC_FEATURES);
    let workers = vec![
        NetDeviceHandle::spawn(a.nic.clone(), switch.port(Some(MAC_A)).unwrap()).unwrap(),
        NetDeviceHandle::spawn(b.nic.clone(), switch.port(Some(MAC_B)).unwrap()).unwrap(),
    ];
    TwoVms {
        a,
        b,
        switch,
        workers,
    }
}

#[test]
fn two_vms_exchange_frames_both_ways() {
    let mut vms = two_vms(FaultConfig::default());
    vms.a.post_rx(128, 2048);
    vms.b.post_rx(128, 2048);
    let count = 300u32;
    // Like a transport with a window: never more than `window` frames unreceived per direction,
    // so the receivers' 128 buffers cannot run out whatever the scheduling.
    let window = 64;
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    let frame_a = |n: u32| frame(MAC_B, MAC_A, n, (n as usize * 7) % 1400);
    let frame_b = |n: u32| frame(MAC_A, MAC_B, n, (n as usize * 13) % 1400);
    for n in 0..count {
        let open = wait_until(TIMEOUT, || {
            at_a.extend(vms.a.receive());
            at_b.extend(vms.b.receive());
            at_a.len() + window > n as usize && at_b.len() + window > n as usize
        });
        assert!(open, "frames stopped flowing at {n}");
        vms.a.send(&frame_a(n));
        vms.b.send(&frame_b(n));
    }
    let done = wait_until(TIMEOUT, || {
        at_a.extend(vms.a.receive());
        at_b.extend(vms.b.receive());
        at_a.len() == count as usize && at_b.len() == count as usize
    });
    assert!(
        done,
        "{} and {} of {count} frames arrived",
        at_a.len(),
        at_b.len()
    );
    assert_eq!(at_b, (0..count).map(frame_a).collect::<Vec<_>>());
    assert_eq!(at_a, (0..count).map(frame_b).collect::<Vec<_>>());
    for driver in [&vms.a, &vms.b] {
        let counters = driver.nic().counters();
        assert_eq!(counters.tx_packets, u64::from(count));
        assert_eq!(counters.rx_packets, u64::from(count));
        assert_eq!(counters.rx_dropped_no_buffer, 0);
        assert!(driver.interrupts.count() > 0);
    }
    let switch = vms.switch.counters();
    assert_eq!(switch.frames_in, 2 * u64::from(count));
    assert_eq!(switch.delivered, 2 * u64::from(count));
    for worker in vms.workers {
        worker.stop().unwrap();
    }
}

#[test]
fn frames_arrive_intact_and_in_order() {
    let mut vms = two_vms(FaultConfig::default());
    vms.b.post_rx(200, 2048);
    let sent: Vec<Vec<u8>> = (0..150).map(|n| frame(MAC_B, MAC_A, n, 1400)).collect();
    for frame in &sent {
        vms.a.send(frame);
    }
    let received = vms.b.receive_count(sent.len(), TIMEOUT);
    assert_eq!(received, sent);
}

#[test]
fn injected_faults_show_in_the_counters() {
    let faults = FaultConfig {
        loss: 0.1,
        duplication: 0.1,
        reordering: 0.1,
        seed: 0x5eed,
    };
    let mut vms = two_vms(faults);
    vms.b.post_rx(250, 2048);
    let count = 200u32;
    for n in 0..count {
        vms.a.send(&frame(MAC_B, MAC_A, n, 64));
    }
    assert!(wait_until(TIMEOUT, || vms.a.nic().counters().tx_packets
        == u64::from(count)));
    vms.switch.flush_held();
    let switch = vms.switch.counters();
    let expected = u64::from(count) - switch.lost + switch.duplicated;
    let received = vms.b.receive_count(expected as usize, TIMEOUT);
    assert_eq!(received.len() as u64, expected);
    assert!(switch.lost > 0 && switch.duplicated > 0 && switch.reordered > 0);
    assert_eq!(switch.frames_in, u64::from(count));

    let sequences: Vec<u32> = received.iter().map(|frame| sequence(frame)).collect();
    let mut unique = sequences.clone();
    unique.sort_unstable();
    let duplicates = unique.windows(2).filter(|pair| pair[0] == pair[1]).count() as u64;
    unique.dedup();
    assert_eq!(duplicates, switch.duplicated, "duplicates duplicate");
    assert_eq!(
        unique.len() as u64,
        u64::from(count) - switch.lost,
        "loss drops"
    );
    let inversions = sequences
        .windows(2)
        .filter(|pair| pair[1] < pair[0])
        .count() as u64;
    assert!(
        inversions == switch.reordered || inversions + 1 == switch.reordered,
        "reorder reorders: {inversions} inversions, {} reordered",
        switch.reordered
    );
    assert_eq!(vms.b.nic().counters().rx_packets, expected);
}

#[test]
fn a_capture_is_readable_by_tshark() {
    let directory = std::env::temp_dir().join(format!("duovm-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("nic-a.pcap");
    let mut vms = two_vms(FaultConfig::default());
    let previous = vms
        .a
        .nic()
        .device_mut()
        .set_capture(Some(PcapWriter::create(&path).unwrap()));
    assert!(previous.is_none());
    vms.a.post_rx(16, 2048);
    vms.b.post_rx(16, 2048);
    for n in 0..5 {
        vms.a.send(&frame(MAC_B, MAC_A, n, 100));
    }
    assert_eq!(vms.b.receive_count(5, TIMEOUT).len(), 5);
    for n in 0..3 {
        vms.b.send(&frame(MAC_A, MAC_B, n, 100));
    }
    assert_eq!(vms.a.receive_count(3, TIMEOUT).len(), 3);
    let capture = vms.a.nic().device_mut().set_capture(None);
    let capture = capture.expect("the capture is installed");
    assert_eq!(capture.captured(), 8);
    capture.finish().unwrap();

    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 24 + 8 * (16 + 118));
    match std::process::Command::new("tshark")
        .arg("-r")
        .arg(&path)
        .args([
            "-T",
            "fields",
            "-e",
            "eth.src",
            "-e",
            "eth.dst",
            "-e",
            "frame.len",
        ])
        .output()
    {
        Ok(output) => {
            assert!(output.status.success(), "tshark failed: {output:?}");
            let text = String::from_utf8_lossy(&output.stdout);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 8, "{text}");
            assert_eq!(lines[0], "02:00:00:00:00:0a\t02:00:00:00:00:0b\t118");
            assert_eq!(lines[7], "02:00:00:00:00:0b\t02:00:00:00:00:0a\t118");
        }
        Err(error) => eprintln!(
            "SKIPPED the tshark check: tshark cannot run ({error}); install it with \
             `apt-get install -y tshark`"
        ),
    }
    let _ = std::fs::remove_dir_all(&directory);
}
