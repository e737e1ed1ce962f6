//! The verbs calls: every misuse is an immediate error that changes nothing, and the
//! objects behave as libibverbs describes.

mod transport_support;

use roce::verbs::*;
use std::net::Ipv4Addr;
use transport_support::*;

fn device() -> Device {
    Device::new(DeviceConfig::new(Ipv4Addr::new(192, 168, 1, 7)))
}

struct Objects {
    pd: PdHandle,
    cq: CqHandle,
    qp: QpHandle,
    mr: MrInfo,
}

fn objects(device: &mut Device, cap: QpCap, cq_depth: u32) -> Objects {
    let pd = device.alloc_pd().unwrap();
    let mr = device.reg_mr(pd, 4096, AccessFlags::ALL).unwrap();
    let cq = device.create_cq(cq_depth).unwrap();
    let qp = device.create_qp(pd, &QpInitAttr::new(cq, cq, cap)).unwrap();
    Objects {
        pd,
        cq,
        qp,
        mr: device.mr(mr).unwrap().info(),
    }
}

fn to_rts(device: &mut Device, qp: QpHandle) {
    let init = QpAttr {
        qp_state: QpState::Init,
        port_num: 1,
        ..QpAttr::default()
    };
    device
        .modify_qp(qp, &init, QpAttrMask::INIT_REQUIRED)
        .unwrap();
    let rtr = QpAttr {
        qp_state: QpState::Rtr,
        dest_qp_num: 0x99,
        max_dest_rd_atomic: 1,
        ah_attr: AhAttr::global(Gid::from_ipv4(Ipv4Addr::new(192, 168, 1, 8))),
        ..QpAttr::default()
    };
    device
        .modify_qp(qp, &rtr, QpAttrMask::RTR_REQUIRED)
        .unwrap();
    let rts = QpAttr {
        qp_state: QpState::Rts,
        max_rd_atomic: 1,
        timeout: 14,
        ..QpAttr::default()
    };
    device
        .modify_qp(qp, &rts, QpAttrMask::RTS_REQUIRED)
        .unwrap();
}

#[test]
fn device_attributes() {
    let device = device();
    assert_eq!(
        device.query_gid(1, 0).unwrap().to_string(),
        "::ffff:192.168.1.7"
    );
    assert_eq!(device.gid().to_ipv4(), Some(Ipv4Addr::new(192, 168, 1, 7)));
    assert_eq!(device.query_gid(1, 1), Err(VerbsError::InvalidArgument));
    assert_eq!(device.query_gid(2, 0), Err(VerbsError::InvalidArgument));
    let port = device.query_port(1).unwrap();
    assert_eq!(port.active_mtu, Mtu::Mtu1024);
    assert_eq!(port.max_mtu, Mtu::Mtu4096);
    assert_eq!(port.lid, 0);
    assert_eq!(device.query_port(0), Err(VerbsError::InvalidArgument));
    assert_eq!(device.query_device().max_sge, 8);
    assert_eq!(Mtu::Mtu256.bytes(), 256);
    assert_eq!(Mtu::Mtu4096.bytes(), 4096);
    assert_eq!(Mtu::from_bytes(2048), Some(Mtu::Mtu2048));
    assert_eq!(Mtu::from_bytes(1500), None);
    assert_eq!(Mtu::for_link_mtu(9000), Some(Mtu::Mtu4096));
    assert_eq!(Mtu::for_link_mtu(1500), Some(Mtu::Mtu1024));
    assert_eq!(Mtu::for_link_mtu(300), None);
    // libibverbs values.
    assert_eq!(WcStatus::WrFlushErr as u32, 5);
    assert_eq!(WcStatus::RetryExcErr as u32, 12);
    assert_eq!(WcStatus::RnrRetryExcErr as u32, 13);
    assert_eq!(WcOpcode::Recv as u32, 128);
    assert_eq!(WcOpcode::RecvRdmaWithImm as u32, 129);
    assert_eq!(QpState::Err as u8, 6);
    assert_eq!(Mtu::Mtu1024 as u8, 3);
    assert_eq!(WrOpcode::AtomicFetchAndAdd as u32, 6);
    assert_eq!(
        Gid::from_ipv4(Ipv4Addr::new(10, 0, 0, 1)).interface_id(),
        0xffff_0a00_0001
    );
}

#[test]
fn object_lifetimes() {
    let mut device = device();
    let objects = objects(&mut device, QpCap::default(), 16);
    assert_eq!(device.dealloc_pd(objects.pd), Err(VerbsError::Busy));
    assert_eq!(device.destroy_cq(objects.cq), Err(VerbsError::Busy));
    device.destroy_qp(objects.qp).unwrap();
    assert_eq!(
        device.destroy_qp(objects.qp),
        Err(VerbsError::InvalidHandle)
    );
    assert_eq!(device.qp_state(objects.qp), Err(VerbsError::InvalidHandle));
    device.destroy_cq(objects.cq).unwrap();
    assert_eq!(
        device.poll_cq(objects.cq, &mut [WorkCompletion::default()]),
        Err(VerbsError::InvalidHandle)
    );
    assert_eq!(device.dealloc_pd(objects.pd), Err(VerbsError::Busy));
    device.dereg_mr(objects.mr.handle()).unwrap();
    assert_eq!(
        device.dereg_mr(objects.mr.handle()),
        Err(VerbsError::InvalidHandle)
    );
    device.dealloc_pd(objects.pd).unwrap();
    assert_eq!(
        device.dealloc_pd(objects.pd),
        Err(VerbsError::InvalidHandle)
    );
    // A new object in the same slot gets another handle.
    let pd = device.alloc_pd().unwrap();
    assert_ne!(pd, objects.pd);
    let cq = device.create_cq(4).unwrap();
    assert_ne!(cq, objects.cq);
    assert_eq!(device.create_cq(0), Err(VerbsError::InvalidArgument));
    let too_big = QpCap {
        max_send_sge: 9,
        ..QpCap::default()
    };
    assert_eq!(
        device.create_qp(pd, &QpInitAttr::new(cq, cq, too_big)),
        Err(VerbsError::NoResources)
    );
    assert_eq!(
        device.create_qp(objects.pd, &QpInitAttr::new(cq, cq, QpCap::default())),
        Err(VerbsError::InvalidHandle)
    );
}

#[test]
fn memory_regions() {
    let mut device = device();
    let pd = device.alloc_pd().unwrap();
    assert_eq!(
        device.reg_mr(pd, 64, AccessFlags::REMOTE_WRITE),
        Err(VerbsError::InvalidArgument),
        "remote write needs local write"
    );
    let mr = device
        .reg_mr_at(
            pd,
            0x10_0000,
            64,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ,
        )
        .unwrap();
    assert_eq!(
        device.reg_mr_at(pd, 0x10_0020, 64, AccessFlags::LOCAL_WRITE),
        Err(VerbsError::AddressInUse)
    );
    let region = device.mr_mut(mr).unwrap();
    assert_eq!((region.addr(), region.len()), (0x10_0000, 64));
    assert_eq!(region.rkey(), region.lkey());
    region.write(60, b"abcd").unwrap();
    assert_eq!(region.write(61, b"abcd"), Err(VerbsError::SgeOutOfRange));
    let mut out = [0u8; 4];
    region.read(60, &mut out).unwrap();
    assert_eq!(&out, b"abcd");
    assert_eq!(region.read(62, &mut out), Err(VerbsError::SgeOutOfRange));
    assert_eq!(&region.as_slice()[60..], b"abcd");
    let local_only = device.reg_mr(pd, 64, AccessFlags::LOCAL_WRITE).unwrap();
    assert_eq!(device.mr(local_only).unwrap().rkey(), 0);
    let info = device.mr(mr).unwrap().info();
    assert_eq!(info.sge(8, 16).addr, 0x10_0008);
    assert_eq!(device.mr_count(), 2);
}

#[test]
fn post_errors_change_nothing() {
    let mut device = device();
    let cap = QpCap {
        max_send_wr: 2,
        max_recv_wr: 2,
        max_send_sge: 2,
        max_recv_sge: 1,
        max_inline_data: 16,
    };
    let objects = objects(&mut device, cap, 3);
    let sge = objects.mr.sge(0, 100);
    let send = |wr_id| SendWr::new(wr_id, WrOperation::Send, std::slice::from_ref(&sge));
    // Wrong state.
    assert_eq!(
        device.post_send(objects.qp, &send(1)),
        Err(VerbsError::InvalidState)
    );
    let recv = RecvWr {
        wr_id: 1,
        sg_list: std::slice::from_ref(&sge),
    };
    assert_eq!(
        device.post_recv(objects.qp, &recv),
        Err(VerbsError::InvalidState)
    );
    to_rts(&mut device, objects.qp);

    // Keys, ranges, access.
    let bad_key = Sge {
        lkey: sge.lkey ^ 1,
        ..sge
    };
    let wr = SendWr::new(1, WrOperation::Send, std::slice::from_ref(&bad_key));
    assert_eq!(
        device.post_send(objects.qp, &wr),
        Err(VerbsError::InvalidLkey)
    );
    let outside = objects.mr.sge(4000, 100);
    let wr = SendWr::new(1, WrOperation::Send, std::slice::from_ref(&outside));
    assert_eq!(
        device.post_send(objects.qp, &wr),
        Err(VerbsError::SgeOutOfRange)
    );
    let other_pd = device.alloc_pd().unwrap();
    let foreign = device.reg_mr(other_pd, 4096, AccessFlags::ALL).unwrap();
    let foreign = device.mr(foreign).unwrap().info().sge(0, 10);
    let wr = SendWr::new(1, WrOperation::Send, std::slice::from_ref(&foreign));
    assert_eq!(
        device.post_send(objects.qp, &wr),
        Err(VerbsError::InvalidLkey)
    );
    let read_only = device
        .reg_mr(objects.pd, 4096, AccessFlags::REMOTE_READ)
        .unwrap();
    let read_only = device.mr(read_only).unwrap().info().sge(0, 10);
    let read = WrOperation::RdmaRead {
        remote_addr: 0,
        rkey: 1,
    };
    let wr = SendWr::new(1, read, std::slice::from_ref(&read_only));
    assert_eq!(
        device.post_send(objects.qp, &wr),
        Err(VerbsError::AccessDenied),
        "READ into a region without local write"
    );
    let three = [sge, sge, sge];
    let wr = SendWr::new(1, WrOperation::Send, &three);
    assert_eq!(
        device.post_send(objects.qp, &wr),
        Err(VerbsError::TooManySges)
    );
    let wr = send(1).with_inline_data(&[0; 17]);
    assert_eq!(
        device.post_send(objects.qp, &wr),
        Err(VerbsError::InlineTooLong)
    );
    let atomic = WrOperation::AtomicFetchAndAdd {
        remote_addr: 0,
        rkey: 1,
        compare_add: 1,
    };
    let wr = SendWr::new(1, atomic, std::slice::from_ref(&sge));
    assert_eq!(
        device.post_send(objects.qp, &wr),
        Err(VerbsError::InvalidAtomic)
    );
    let recv_two = RecvWr {
        wr_id: 1,
        sg_list: &[sge, sge],
    };
    assert_eq!(
        device.post_recv(objects.qp, &recv_two),
        Err(VerbsError::TooManySges)
    );
    assert_eq!(device.cq(objects.cq).unwrap().available(), 3);

    // Queue and CQ capacity: 2 sends fill the send queue, the CQ (3) takes one receive more.
    device.post_send(objects.qp, &send(1)).unwrap();
    device.post_send(objects.qp, &send(2)).unwrap();
    assert_eq!(
        device.post_send(objects.qp, &send(3)),
        Err(VerbsError::QueueFull)
    );
    device.post_recv(objects.qp, &recv).unwrap();
    assert_eq!(device.post_recv(objects.qp, &recv), Err(VerbsError::CqFull));
    assert_eq!(device.cq(objects.cq).unwrap().available(), 0);

    // To ERR: everything is flushed, in order, and the CQ entries come back when polled.
    let error = QpAttr {
        qp_state: QpState::Err,
        ..QpAttr::default()
    };
    device
        .modify_qp(objects.qp, &error, QpAttrMask::STATE)
        .unwrap();
    let completions = poll_all(&mut device, objects.cq);
    assert_eq!(
        completions
            .iter()
            .map(|wc| (wc.wr_id, wc.status, wc.opcode))
            .collect::<Vec<_>>(),
        [
            (1, WcStatus::WrFlushErr, WcOpcode::Send),
            (2, WcStatus::WrFlushErr, WcOpcode::Send),
            (1, WcStatus::WrFlushErr, WcOpcode::Recv),
        ]
    );
    assert_eq!(device.cq(objects.cq).unwrap().available(), 3);
    device.post_send(objects.qp, &send(4)).unwrap();
    device.post_recv(objects.qp, &recv).unwrap();
    let completions = poll_all(&mut device, objects.cq);
    assert_eq!(completions.len(), 2);
    assert!(
        completions
            .iter()
            .all(|wc| wc.status == WcStatus::WrFlushErr)
    );
}

#[test]
fn modify_qp_checks_transitions_and_attributes() {
    let mut device = device();
    let objects = objects(&mut device, QpCap::default(), 16);
    let qp = objects.qp;
    let rtr = QpAttr {
        qp_state: QpState::Rtr,
        dest_qp_num: 0x99,
        ah_attr: AhAttr::global(Gid::from_ipv4(Ipv4Addr::new(192, 168, 1, 8))),
        ..QpAttr::default()
    };
    assert_eq!(
        device.modify_qp(qp, &rtr, QpAttrMask::RTR_REQUIRED),
        Err(VerbsError::InvalidTransition),
        "RESET -> RTR"
    );
    let init = QpAttr {
        qp_state: QpState::Init,
        port_num: 1,
        ..QpAttr::default()
    };
    assert_eq!(
        device.modify_qp(qp, &init, QpAttrMask::STATE | QpAttrMask::PORT),
        Err(VerbsError::InvalidAttrMask),
        "missing required attributes"
    );
    assert_eq!(
        device.modify_qp(qp, &init, QpAttrMask::INIT_REQUIRED | QpAttrMask::SQ_PSN),
        Err(VerbsError::InvalidAttrMask),
        "attribute not allowed"
    );
    let bad_port = QpAttr {
        port_num: 2,
        ..init
    };
    assert_eq!(
        device.modify_qp(qp, &bad_port, QpAttrMask::INIT_REQUIRED),
        Err(VerbsError::InvalidAttribute)
    );
    assert_eq!(device.qp_state(qp), Ok(QpState::Reset), "nothing changed");
    device
        .modify_qp(qp, &init, QpAttrMask::INIT_REQUIRED)
        .unwrap();
    for bad in [
        QpAttr {
            path_mtu: Mtu::Mtu2048,
            ..rtr
        },
        QpAttr {
            dest_qp_num: 0x100_0000,
            ..rtr
        },
        QpAttr {
            rq_psn: 0x100_0000,
            ..rtr
        },
        QpAttr {
            min_rnr_timer: 32,
            ..rtr
        },
        QpAttr {
            max_dest_rd_atomic: 200,
            ..rtr
        },
        QpAttr {
            ah_attr: AhAttr::global(Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])),
            ..rtr
        },
        QpAttr {
            ah_attr: AhAttr {
                is_global: false,
                ..rtr.ah_attr
            },
            ..rtr
        },
    ] {
        assert_eq!(
            device.modify_qp(qp, &bad, QpAttrMask::RTR_REQUIRED),
            Err(VerbsError::InvalidAttribute),
            "{bad:?}"
        );
    }
    device
        .modify_qp(qp, &rtr, QpAttrMask::RTR_REQUIRED)
        .unwrap();
    let rts = QpAttr {
        qp_state: QpState::Rts,
        sq_psn: 0x42,
        timeout: 14,
        retry_cnt: 7,
        rnr_retry: 7,
        max_rd_atomic: 1,
        ..QpAttr::default()
    };
    for bad in [
        QpAttr {
            retry_cnt: 8,
            ..rts
        },
        QpAttr {
            rnr_retry: 8,
            ..rts
        },
        QpAttr { timeout: 32, ..rts },
        QpAttr {
            cur_qp_state: QpState::Init,
            ..rts
        },
    ] {
        assert_eq!(
            device.modify_qp(qp, &bad, QpAttrMask::RTS_REQUIRED | QpAttrMask::CUR_STATE),
            Err(VerbsError::InvalidAttribute),
            "{bad:?}"
        );
    }
    device
        .modify_qp(qp, &rts, QpAttrMask::RTS_REQUIRED)
        .unwrap();
    let attr = device.query_qp(qp).unwrap();
    assert_eq!(attr.qp_state, QpState::Rts);
    assert_eq!(
        (attr.sq_psn, attr.dest_qp_num, attr.timeout),
        (0x42, 0x99, 14)
    );
    // RTS -> RTS may change the access flags, not the path.
    let access = QpAttr {
        qp_access_flags: AccessFlags::REMOTE_READ,
        ..QpAttr::default()
    };
    device
        .modify_qp(qp, &access, QpAttrMask::ACCESS_FLAGS)
        .unwrap();
    assert_eq!(
        device.query_qp(qp).unwrap().qp_access_flags,
        AccessFlags::REMOTE_READ
    );
    assert_eq!(
        device.modify_qp(qp, &rtr, QpAttrMask::PATH_MTU),
        Err(VerbsError::InvalidAttrMask)
    );
    // Back to RESET and up again.
    let reset = QpAttr::default();
    device.modify_qp(qp, &reset, QpAttrMask::STATE).unwrap();
    assert_eq!(device.qp_state(qp), Ok(QpState::Reset));
    to_rts(&mut device, qp);
}

/// Inline data is copied when posting: changing the buffer afterwards changes nothing; a
/// QP reset drops queued requests without completions and can be connected again.
#[test]
fn inline_data_and_reconnect_after_reset() {
    let (mut net, [a, b]) = connect(&Setup::default(), Faults::NONE, 1);
    for wr_id in 0..2 {
        let sge = b.info.sge(wr_id * 64, 64);
        net.devices[1]
            .post_recv(
                b.qp,
                &RecvWr {
                    wr_id,
                    sg_list: &[sge],
                },
            )
            .unwrap();
    }
    net.devices[0]
        .mr_mut(a.mr)
        .unwrap()
        .write(0, b"first")
        .unwrap();
    let sge = [a.info.sge(0, 5)];
    let wr = SendWr::new(1, WrOperation::Send, &sge)
        .with_flags(SendFlags::INLINE)
        .signaled();
    net.devices[0].post_send(a.qp, &wr).unwrap();
    net.devices[0]
        .mr_mut(a.mr)
        .unwrap()
        .write(0, b"XXXXX")
        .unwrap();
    let literal = SendWr::new(2, WrOperation::SendWithImm { imm_data: 3 }, &[])
        .with_inline_data(b"second")
        .signaled();
    net.devices[0].post_send(a.qp, &literal).unwrap();
    let mut received = Vec::new();
    let mut sent = Vec::new();
    net.run_until(1_000_000_000, |net| {
        received.extend(poll_all(&mut net.devices[1], b.cq));
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        received.len() == 2 && sent.len() == 2
    });
    let bytes = net.devices[1].mr(b.mr).unwrap().as_slice();
    assert_eq!(&bytes[..5], b"first");
    assert_eq!(&bytes[64..70], b"second");
    assert_eq!(received[1].imm(), Some(3));
    assert_eq!(received[1].byte_len, 6);

    // Reset both QPs with work queued, and connect them again with new PSNs.
    let sge = [a.info.sge(0, 5)];
    net.cut = [true, true];
    net.devices[0]
        .post_send(a.qp, &SendWr::new(9, WrOperation::Send, &sge).signaled())
        .unwrap();
    net.flush();
    net.cut = [false, false];
    let reset = QpAttr::default();
    for (device, end) in net.devices.iter_mut().zip([a, b]) {
        device.modify_qp(end.qp, &reset, QpAttrMask::STATE).unwrap();
        assert!(
            poll_all(device, end.cq).is_empty(),
            "no completion for dropped work"
        );
        assert_eq!(device.cq(end.cq).unwrap().available(), 1024);
        assert_eq!(device.next_deadline(), None);
    }
    let psns = [0x77_7777, 0x12];
    for side in 0..2 {
        let peer = 1 - side;
        let [end, peer_end] = [[a, b][side], [a, b][peer]];
        let device = &mut net.devices[side];
        let init = QpAttr {
            qp_state: QpState::Init,
            port_num: 1,
            qp_access_flags: AccessFlags::REMOTE,
            ..QpAttr::default()
        };
        device
            .modify_qp(end.qp, &init, QpAttrMask::INIT_REQUIRED)
            .unwrap();
        let rtr = QpAttr {
            qp_state: QpState::Rtr,
            dest_qp_num: peer_end.qp.qp_num(),
            rq_psn: psns[peer],
            max_dest_rd_atomic: 1,
            ah_attr: AhAttr::global(Gid::from_ipv4(ADDRESSES[peer])),
            ..QpAttr::default()
        };
        device
            .modify_qp(end.qp, &rtr, QpAttrMask::RTR_REQUIRED)
            .unwrap();
        let rts = QpAttr {
            qp_state: QpState::Rts,
            sq_psn: psns[side],
            timeout: 10,
            retry_cnt: 7,
            rnr_retry: 7,
            max_rd_atomic: 1,
            ..QpAttr::default()
        };
        device
            .modify_qp(end.qp, &rts, QpAttrMask::RTS_REQUIRED)
            .unwrap();
    }
    let recv_sge = [b.info.sge(0, 64)];
    net.devices[1]
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 5,
                sg_list: &recv_sge,
            },
        )
        .unwrap();
    net.devices[0]
        .post_send(a.qp, &SendWr::new(10, WrOperation::Send, &sge).signaled())
        .unwrap();
    let mut sent = Vec::new();
    net.run_until(1_000_000_000, |net| {
        sent.extend(poll_all(&mut net.devices[0], a.cq));
        !sent.is_empty()
    });
    assert_eq!((sent[0].wr_id, sent[0].status), (10, WcStatus::Success));
}

/// Packets that are not for this device, or not valid, are counted and dropped.
#[test]
fn drops_are_counted() {
    let (mut net, [a, _]) = connect(&Setup::default(), Faults::NONE, 1);
    net.record = Some(Vec::new());
    let sge = [a.info.sge(0, 8)];
    net.devices[0]
        .post_send(a.qp, &SendWr::new(1, WrOperation::Send, &sge))
        .unwrap();
    net.cut = [true, true];
    net.flush();
    let (_, packet) = net.record.take().unwrap().remove(0);
    let device = &mut net.devices[1];
    let now = 2_000_000;
    let mut bad_icrc = packet.clone();
    *bad_icrc.last_mut().unwrap() ^= 1;
    device.receive(&bad_icrc, now);
    let mut bad_checksum = packet.clone();
    bad_checksum[10] ^= 1;
    device.receive(&bad_checksum, now);
    device.receive(&packet[..30], now);
    let mut elsewhere = packet.clone();
    elsewhere[19] = 99;
    roce::wire::Rocev2Packet::new_checked(&mut elsewhere[..])
        .map(|mut view| {
            view.ipv4_mut().fill_checksum();
            view.fill_icrc().unwrap();
        })
        .unwrap();
    device.receive(&elsewhere, now);
    let mut unknown_qp = packet.clone();
    unknown_qp[28 + 7] = 0x55;
    roce::wire::Rocev2Packet::new_checked(&mut unknown_qp[..])
        .map(|mut view| {
            view.fill_icrc().unwrap();
        })
        .unwrap();
    device.receive(&unknown_qp, now);
    let counters = device.counters();
    assert_eq!(counters.icrc_errors, 1);
    assert_eq!(counters.drops.bad_checksum, 1);
    assert_eq!(counters.drops.malformed, 1);
    assert_eq!(counters.drops.wrong_destination, 1);
    assert_eq!(counters.drops.unknown_qp, 1);
    assert_eq!(counters.packets_received, 5);
    assert!(!device.wants_transmit(), "nothing is answered");
}
