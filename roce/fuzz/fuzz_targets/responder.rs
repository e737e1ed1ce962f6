//! Arbitrary packets fed to a device whose QP is in RTS with work outstanding: nothing may
//! panic, and memory no valid request may write stays as it was.
//!
//! The input is a sequence of packets, each preceded by a 2-byte length and a mode byte.
//! Mode bit 0 set: the packet is "shaped" before delivery (addresses, destination QP and
//! the checksums/ICRC fixed) so that mutations reach the transport's checks; mode bit 1:
//! let 1 ms pass afterwards (timers fire). The first byte's top bit also decides whether the
//! device leaves the ICRC to the NIC (`DeviceConfig::icrc_offload`: received ICRCs unchecked,
//! zeros sent).
//!
//! ```text
//! cd roce/fuzz && cargo +nightly fuzz run responder
//! ```
#![no_main]

use core::net::Ipv4Addr;
use libfuzzer_sys::fuzz_target;
use roce::verbs::*;
use roce::wire::Rocev2Packet;

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER_QPN: u32 = 0x11;
const GUARD: u8 = 0xa5;

struct Target {
    device: Device,
    qp: QpHandle,
    guarded: [MrHandle; 2],
}

fn target(icrc_offload: bool) -> Target {
    let config = DeviceConfig::new(LOCAL)
        .with_seed(1)
        .with_icrc_offload(icrc_offload);
    let mut device = Device::new(config);
    let pd = device.alloc_pd().unwrap();
    let cq = device.create_cq(256).unwrap();
    // The first region gets rkey 0x1xx at a known address, so that the fuzzer can find it.
    let open = device
        .reg_mr_at(pd, 0x1000, 64 * 1024, AccessFlags::ALL)
        .unwrap();
    let private = device.reg_mr(pd, 4096, AccessFlags::LOCAL_WRITE).unwrap();
    let readable = device.reg_mr(pd, 4096, AccessFlags::REMOTE_READ).unwrap();
    for mr in [private, readable] {
        device.mr_mut(mr).unwrap().as_mut_slice().fill(GUARD);
    }
    let qp = device
        .create_qp(pd, &QpInitAttr::new(cq, cq, QpCap::default()))
        .unwrap();
    let init = QpAttr {
        qp_state: QpState::Init,
        port_num: 1,
        qp_access_flags: AccessFlags::REMOTE,
        ..QpAttr::default()
    };
    device
        .modify_qp(qp, &init, QpAttrMask::INIT_REQUIRED)
        .unwrap();
    let rtr = QpAttr {
        qp_state: QpState::Rtr,
        path_mtu: Mtu::Mtu1024,
        dest_qp_num: PEER_QPN,
        rq_psn: 0,
        max_dest_rd_atomic: 4,
        min_rnr_timer: 1,
        ah_attr: AhAttr::global(Gid::from_ipv4(PEER)),
        ..QpAttr::default()
    };
    device
        .modify_qp(qp, &rtr, QpAttrMask::RTR_REQUIRED)
        .unwrap();
    let rts = QpAttr {
        qp_state: QpState::Rts,
        sq_psn: 0,
        timeout: 1,
        retry_cnt: 7,
        rnr_retry: 7,
        max_rd_atomic: 4,
        ..QpAttr::default()
    };
    device
        .modify_qp(qp, &rts, QpAttrMask::RTS_REQUIRED)
        .unwrap();
    let info = device.mr(open).unwrap().info();
    for wr_id in 0..4 {
        let sge = info.sge(32 * 1024 + wr_id * 4096, 4096);
        device
            .post_recv(
                qp,
                &RecvWr {
                    wr_id,
                    sg_list: &[sge],
                },
            )
            .unwrap();
    }
    // Work of its own outstanding, so that responses can match something.
    let operations = [
        WrOperation::Send,
        WrOperation::RdmaRead {
            remote_addr: 0x1000,
            rkey: 0x100,
        },
        WrOperation::AtomicFetchAndAdd {
            remote_addr: 0x2000,
            rkey: 0x100,
            compare_add: 1,
        },
    ];
    for (wr_id, operation) in operations.into_iter().enumerate() {
        let sge = [info.sge(16 * 1024, if wr_id == 2 { 8 } else { 3000 })];
        device
            .post_send(qp, &SendWr::new(wr_id as u64, operation, &sge).signaled())
            .unwrap();
    }
    Target {
        device,
        qp,
        guarded: [private, readable],
    }
}

fn shape(bytes: &mut [u8]) {
    let Ok(mut packet) = Rocev2Packet::new_checked(&mut bytes[..]) else {
        return;
    };
    packet.ipv4_mut().set_src_addr(PEER);
    packet.ipv4_mut().set_dst_addr(LOCAL);
    packet.ipv4_mut().fill_checksum();
    packet.udp_mut().set_checksum(0);
    packet.ib_mut().bth_mut().set_dest_qpn(0x11);
    let _ = packet.fill_icrc();
}

fuzz_target!(|data: &[u8]| {
    // The ICRC left to the NIC or not, by the top bit of the first byte.
    let mut target = target(data.first().is_some_and(|byte| byte & 0x80 != 0));
    let mut buffer = vec![0u8; target.device.max_packet_len()];
    let mut now = 1_000_000u64;
    let mut rest = data;
    while rest.len() >= 3 {
        let length = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 2048;
        let mode = rest[2];
        rest = &rest[3..];
        let take = length.min(rest.len());
        let mut packet = rest[..take].to_vec();
        rest = &rest[take..];
        if mode & 1 != 0 {
            shape(&mut packet);
        }
        target.device.receive(&packet, now);
        while target.device.poll_transmit(now, &mut buffer).is_some() {}
        if mode & 2 != 0 {
            now += 1_000_000;
            target.device.handle_timeouts(now);
        }
    }
    for mr in target.guarded {
        assert!(
            target
                .device
                .mr(mr)
                .unwrap()
                .as_slice()
                .iter()
                .all(|&byte| byte == GUARD),
            "guarded memory changed"
        );
    }
    let state = target.device.qp_state(target.qp).unwrap();
    assert!(matches!(state, QpState::Rts | QpState::Err));
});
