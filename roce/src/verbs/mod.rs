//! The verbs API: an ibverbs-shaped interface to duovm's virtual RDMA NIC.
//!
//! Names and numeric values follow libibverbs (`<infiniband/verbs.h>`), so that an
//! application written against `ibv_*` reads the same here:
//!
//! | libibverbs | here |
//! |---|---|
//! | `ibv_open_device`, `ibv_query_device`, `ibv_query_port`, `ibv_query_gid` | [`Device::new`], [`Device::query_device`], [`Device::query_port`], [`Device::query_gid`] |
//! | `ibv_alloc_pd` / `ibv_dealloc_pd` | [`Device::alloc_pd`] / [`Device::dealloc_pd`] |
//! | `ibv_reg_mr` / `ibv_dereg_mr` | [`Device::reg_mr`], [`Device::reg_mr_at`] / [`Device::dereg_mr`] |
//! | `ibv_create_cq` / `ibv_poll_cq` / `ibv_destroy_cq` | [`Device::create_cq`] / [`Device::poll_cq`] / [`Device::destroy_cq`] |
//! | `ibv_create_qp` / `ibv_modify_qp` / `ibv_query_qp` / `ibv_destroy_qp` | [`Device::create_qp`] / [`Device::modify_qp`] / [`Device::query_qp`] / [`Device::destroy_qp`] |
//! | `ibv_post_send` / `ibv_post_recv` | [`Device::post_send`] / [`Device::post_recv`] |
//! | `struct ibv_wc`, `enum ibv_wc_status`, `enum ibv_wc_opcode` | [`WorkCompletion`], [`WcStatus`], [`WcOpcode`] |
//!
//! Differences that come from running inside a kernel without user-space pointers:
//!
//! * **Memory regions own their memory.** [`Device::reg_mr`] allocates `length` zeroed bytes
//!   and gives them a virtual address range (chosen by the device, or by the application
//!   with [`Device::reg_mr_at`]); scatter/gather entries name bytes by that address and the
//!   lkey, as in ibverbs. The application reads and writes the bytes through
//!   [`Device::mr`] / [`Device::mr_mut`] ([`MemoryRegion::as_slice`],
//!   [`MemoryRegion::write`], ...). As in ibverbs, the bytes of a posted work request must
//!   not change until it completes: a retransmission reads them again.
//! * **Errors are `Result`s.** Every misuse (a QP in the wrong state, an unknown key, an SGE
//!   outside its region, too many SGEs, a full queue) is reported when the call is made, never
//!   by a hang. A CQ never overflows: posting a work request reserves room for its completion
//!   and fails with [`VerbsError::CqFull`] when the CQ has none left.
//! * **One object, no threads.** [`Device`] holds the verbs objects *and* the transport
//!   engine; the platform drives the engine through the same object
//!   ([`Device::receive`], [`Device::poll_transmit`], [`Device::next_deadline`]), see
//!   [`crate::transport`].
//! * RC queue pairs only; one port (number 1) whose only GID (index 0) is the IPv4-mapped
//!   IPv6 address `::ffff:a.b.c.d` of the device, as rdma_rxe uses for RoCEv2.
//!
//! # Example
//!
//! Two devices, one RC connection, one SEND; the two devices' packets are carried by hand.
//!
//! ```
//! use core::net::Ipv4Addr;
//! use roce::verbs::*;
//!
//! let mut a = Device::new(DeviceConfig::new(Ipv4Addr::new(10, 0, 0, 1)));
//! let mut b = Device::new(DeviceConfig::new(Ipv4Addr::new(10, 0, 0, 2)));
//! let mut ends = Vec::new();
//! for device in [&mut a, &mut b] {
//!     let pd = device.alloc_pd()?;
//!     let mr = device.reg_mr(pd, 4096, AccessFlags::LOCAL_WRITE)?;
//!     let cq = device.create_cq(16)?;
//!     let qp = device.create_qp(pd, &QpInitAttr::new(cq, cq, QpCap::default()))?;
//!     let init = QpAttr { qp_state: QpState::Init, port_num: 1, ..QpAttr::default() };
//!     device.modify_qp(qp, &init, QpAttrMask::STATE | QpAttrMask::PKEY_INDEX
//!         | QpAttrMask::PORT | QpAttrMask::ACCESS_FLAGS)?;
//!     ends.push((pd, mr, cq, qp, device.query_gid(1, 0)?));
//! }
//! // Connect: each side needs the other's QPN, first PSN and GID (see `roce::oob`).
//! for (index, device) in [&mut a, &mut b].into_iter().enumerate() {
//!     let (_, _, _, qp, _) = ends[index];
//!     let (_, _, _, remote_qp, remote_gid) = ends[1 - index];
//!     let rtr = QpAttr {
//!         qp_state: QpState::Rtr,
//!         path_mtu: Mtu::Mtu1024,
//!         dest_qp_num: remote_qp.qp_num(),
//!         rq_psn: 1000 * (1 - index as u32),
//!         max_dest_rd_atomic: 1,
//!         min_rnr_timer: 12,
//!         ah_attr: AhAttr::global(remote_gid),
//!         ..QpAttr::default()
//!     };
//!     device.modify_qp(qp, &rtr, QpAttrMask::RTR_REQUIRED)?;
//!     let rts = QpAttr {
//!         qp_state: QpState::Rts,
//!         sq_psn: 1000 * index as u32,
//!         timeout: 14,
//!         retry_cnt: 7,
//!         rnr_retry: 7,
//!         max_rd_atomic: 1,
//!         ..QpAttr::default()
//!     };
//!     device.modify_qp(qp, &rts, QpAttrMask::RTS_REQUIRED)?;
//! }
//! let (_, b_mr, b_cq, b_qp, _) = ends[1];
//! let b_info = b.mr(b_mr)?.info();
//! b.post_recv(b_qp, &RecvWr { wr_id: 7, sg_list: &[b_info.sge(0, 4096)] })?;
//!
//! let (_, a_mr, a_cq, a_qp, _) = ends[0];
//! a.mr_mut(a_mr)?.write(0, b"ping")?;
//! let sge = a.mr(a_mr)?.info().sge(0, 4);
//! a.post_send(a_qp, &SendWr::new(1, WrOperation::Send, &[sge]).signaled())?;
//!
//! // The platform's job: carry whole IPv4 packets between the engines.
//! let mut packet = [0u8; 2048];
//! let now = 0;
//! for _ in 0..4 {
//!     while let Some(length) = a.poll_transmit(now, &mut packet) {
//!         b.receive(&packet[..length], now);
//!     }
//!     while let Some(length) = b.poll_transmit(now, &mut packet) {
//!         a.receive(&packet[..length], now);
//!     }
//! }
//! let mut completions = [WorkCompletion::default(); 4];
//! assert_eq!(b.poll_cq(b_cq, &mut completions)?, 1);
//! assert_eq!((completions[0].wr_id, completions[0].status), (7, WcStatus::Success));
//! assert_eq!(completions[0].byte_len, 4);
//! assert_eq!(&b.mr(b_mr)?.as_slice()[..4], b"ping");
//! assert_eq!(a.poll_cq(a_cq, &mut completions)?, 1);
//! assert_eq!((completions[0].opcode, completions[0].status), (WcOpcode::Send, WcStatus::Success));
//! # Ok::<(), roce::verbs::VerbsError>(())
//! ```

mod cq;
mod device;
mod modify;
mod mr;
mod types;

pub use self::cq::CompletionQueue;
pub use self::device::{Device, DeviceConfig, FIRST_QPN, MAX_MESSAGE, MAX_MESSAGE_PACKETS};
pub use self::mr::{MemoryRegion, MrInfo};
pub use self::types::*;

pub(crate) use self::cq::CqTable;
pub(crate) use self::mr::{MrFault, MrTable};
