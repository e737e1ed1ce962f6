//! The device object: verbs objects, the transport engine's state, and the verbs calls.
//! The engine's entry points (`receive`, `poll_transmit`, ...) are in [`crate::transport`].

use super::mr::{MemoryRegion, MrTable};
use super::types::*;
use super::{CompletionQueue, CqTable};
use crate::transport::Counters;
use crate::transport::Env;
use crate::transport::qp::{MAX_SGE, QueuePair, RecvWqe, SendWqe, SgeList};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

/// The QP number of the first QP (rxe's first QP number too: 0 and 1 are the special QPs).
pub const FIRST_QPN: u32 = 0x11;

/// The largest message: 2 GiB (IBTA).
pub const MAX_MESSAGE: u64 = 1 << 31;

/// The most packets (PSNs) one send work request may take: 2^22, a quarter of the PSN space.
pub const MAX_MESSAGE_PACKETS: u64 = 1 << 22;

/// How to build a [`Device`]: its address, its port MTU, its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The IPv4 address of the device: packets are sent from it and only packets to it are
    /// taken. The device's GID is `::ffff:` followed by it.
    pub ipv4_addr: Ipv4Addr,
    /// The port's active MTU, the largest path MTU a QP may use (default 1024, what a
    /// 1500-byte Ethernet link carries; see [`Mtu::for_link_mtu`]).
    pub active_mtu: Mtu,
    /// Entropy for the key bytes of memory regions (for example a timestamp counter read at
    /// boot); keys are predictable if it is.
    pub seed: u64,
    /// Queue pairs.
    pub max_qp: u32,
    /// Work requests per queue.
    pub max_qp_wr: u32,
    /// Completion queues.
    pub max_cq: u32,
    /// Entries per completion queue.
    pub max_cqe: u32,
    /// Memory regions.
    pub max_mr: u32,
    /// Bytes per memory region.
    pub max_mr_size: u64,
    /// Protection domains.
    pub max_pd: u32,
    /// Responder resources per QP (largest `max_dest_rd_atomic`).
    pub max_qp_rd_atom: u32,
    /// Outstanding READ/atomic requests per QP (largest `max_rd_atomic`).
    pub max_qp_init_rd_atom: u32,
    /// Inline bytes per send work request.
    pub max_inline_data: u32,
    /// The NIC under the device computes the ICRC of every RoCEv2 packet it sends and drops
    /// every received one whose ICRC is wrong, as RoCE hardware does (duovm's virtio-net
    /// device in a VM, see docs/ARCHITECTURE.md): the device then writes zeros where the ICRC
    /// goes and does not check it on receipt. Off by default: the device computes and checks
    /// every ICRC itself.
    pub icrc_offload: bool,
}

impl DeviceConfig {
    /// A device at `ipv4_addr`, MTU 1024, rxe-like limits (with fewer objects).
    pub const fn new(ipv4_addr: Ipv4Addr) -> Self {
        DeviceConfig {
            ipv4_addr,
            active_mtu: Mtu::Mtu1024,
            seed: 0x0123_4567_89ab_cdef,
            max_qp: 1024,
            max_qp_wr: 16384,
            max_cq: 1024,
            max_cqe: 1 << 20,
            max_mr: 4096,
            max_mr_size: 1 << 32,
            max_pd: 1024,
            max_qp_rd_atom: 128,
            max_qp_init_rd_atom: 128,
            max_inline_data: 256,
            icrc_offload: false,
        }
    }

    /// The same configuration with the ICRC left to the NIC, or not
    /// ([`DeviceConfig::icrc_offload`]).
    #[must_use]
    pub const fn with_icrc_offload(mut self, offload: bool) -> Self {
        self.icrc_offload = offload;
        self
    }

    /// The same configuration with another active MTU.
    #[must_use]
    pub const fn with_mtu(mut self, mtu: Mtu) -> Self {
        self.active_mtu = mtu;
        self
    }

    /// The same configuration with another seed.
    #[must_use]
    pub const fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// A virtual RDMA device: the verbs objects and the RC transport engine.
///
/// See [`crate::verbs`] for the verbs calls and [`crate::transport`] for how a platform
/// drives the engine.
#[derive(Debug)]
pub struct Device {
    pub(crate) config: DeviceConfig,
    /// Protection domains: generation per slot, live or not.
    pds: Vec<(u16, bool)>,
    pub(crate) mrs: MrTable,
    pub(crate) cqs: CqTable,
    /// Slot `i` holds QP number `FIRST_QPN + i`.
    pub(crate) qps: Vec<Option<QueuePair>>,
    pub(crate) qp_count: usize,
    /// QP slots that may have packets to send, in round-robin order.
    pub(crate) schedule: VecDeque<usize>,
    pub(crate) counters: Counters,
    /// IPv4 identification of the next packet.
    pub(crate) identification: u16,
    /// No QP timer fires before this time (a lower bound, recomputed when reached).
    pub(crate) timer_floor: Option<u64>,
    rng: u64,
}

impl Device {
    /// Opens a device (`ibv_open_device`).
    pub fn new(config: DeviceConfig) -> Self {
        Device {
            config,
            pds: Vec::new(),
            mrs: MrTable::new(config.max_mr as usize),
            cqs: CqTable::new(config.max_cq as usize),
            qps: Vec::new(),
            qp_count: 0,
            schedule: VecDeque::new(),
            counters: Counters::default(),
            identification: (config.seed >> 16) as u16,
            timer_floor: None,
            rng: config.seed,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// Device limits (`ibv_query_device`).
    pub fn query_device(&self) -> DeviceAttr {
        let c = &self.config;
        DeviceAttr {
            max_mr_size: c.max_mr_size,
            max_qp: c.max_qp,
            max_qp_wr: c.max_qp_wr,
            max_sge: MAX_SGE as u32,
            max_cq: c.max_cq,
            max_cqe: c.max_cqe,
            max_mr: c.max_mr,
            max_pd: c.max_pd,
            max_qp_rd_atom: c.max_qp_rd_atom,
            max_qp_init_rd_atom: c.max_qp_init_rd_atom,
            max_inline_data: c.max_inline_data,
            max_msg_size: MAX_MESSAGE as u32,
        }
    }

    /// Port attributes (`ibv_query_port`); the only port is 1.
    pub fn query_port(&self, port_num: u8) -> Result<PortAttr, VerbsError> {
        if port_num != 1 {
            return Err(VerbsError::InvalidArgument);
        }
        Ok(PortAttr {
            state: PortState::Active,
            max_mtu: Mtu::Mtu4096,
            active_mtu: self.config.active_mtu,
            gid_tbl_len: 1,
            pkey_tbl_len: 1,
            lid: 0,
            link_layer: LinkLayer::Ethernet,
        })
    }

    /// A GID of a port (`ibv_query_gid`): port 1, index 0 is `::ffff:<ipv4_addr>`.
    pub fn query_gid(&self, port_num: u8, index: u32) -> Result<Gid, VerbsError> {
        if port_num != 1 || index != 0 {
            return Err(VerbsError::InvalidArgument);
        }
        Ok(Gid::from_ipv4(self.config.ipv4_addr))
    }

    /// The device's GID (`query_gid(1, 0)`).
    pub fn gid(&self) -> Gid {
        Gid::from_ipv4(self.config.ipv4_addr)
    }

    /// A fresh random byte for a key (splitmix64 over the seed).
    fn random_byte(&mut self) -> u8 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u8
    }

    /// Allocates a protection domain (`ibv_alloc_pd`).
    pub fn alloc_pd(&mut self) -> Result<PdHandle, VerbsError> {
        let live = self.pds.iter().filter(|(_, live)| *live).count();
        if live >= self.config.max_pd as usize {
            return Err(VerbsError::NoResources);
        }
        let index = match self.pds.iter().position(|(_, live)| !live) {
            Some(index) => index,
            None if self.pds.len() <= usize::from(u16::MAX) => {
                self.pds.push((0, false));
                self.pds.len() - 1
            }
            None => return Err(VerbsError::NoResources),
        };
        let slot = &mut self.pds[index];
        slot.0 = slot.0.wrapping_add(1);
        slot.1 = true;
        Ok(PdHandle((u32::from(slot.0) << 16) | index as u32))
    }

    fn pd_is_live(&self, pd: PdHandle) -> bool {
        self.pds
            .get((pd.0 & 0xffff) as usize)
            .is_some_and(|(generation, live)| *live && u32::from(*generation) == pd.0 >> 16)
    }

    /// Frees a protection domain (`ibv_dealloc_pd`); [`VerbsError::Busy`] while regions or
    /// QPs use it.
    pub fn dealloc_pd(&mut self, pd: PdHandle) -> Result<(), VerbsError> {
        if !self.pd_is_live(pd) {
            return Err(VerbsError::InvalidHandle);
        }
        if self.mrs.uses_pd(pd) || self.qps.iter().flatten().any(|qp| qp.pd == pd) {
            return Err(VerbsError::Busy);
        }
        self.pds[(pd.0 & 0xffff) as usize].1 = false;
        Ok(())
    }

    /// Registers a memory region of `length` zeroed bytes at an address the device picks
    /// (`ibv_reg_mr`).
    pub fn reg_mr(
        &mut self,
        pd: PdHandle,
        length: u64,
        access: AccessFlags,
    ) -> Result<MrHandle, VerbsError> {
        self.register(pd, None, length, access)
    }

    /// Registers a memory region of `length` zeroed bytes at virtual address `addr`, which
    /// must not overlap another region.
    pub fn reg_mr_at(
        &mut self,
        pd: PdHandle,
        addr: u64,
        length: u64,
        access: AccessFlags,
    ) -> Result<MrHandle, VerbsError> {
        self.register(pd, Some(addr), length, access)
    }

    fn register(
        &mut self,
        pd: PdHandle,
        addr: Option<u64>,
        length: u64,
        access: AccessFlags,
    ) -> Result<MrHandle, VerbsError> {
        if !self.pd_is_live(pd) {
            return Err(VerbsError::InvalidHandle);
        }
        if !AccessFlags::ALL.contains(access) {
            return Err(VerbsError::InvalidArgument);
        }
        // IBTA: remote write or atomic access needs local write access.
        let needs_local_write = AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_ATOMIC;
        if (access & needs_local_write).0 != 0 && !access.contains(AccessFlags::LOCAL_WRITE) {
            return Err(VerbsError::InvalidArgument);
        }
        if length > self.config.max_mr_size {
            return Err(VerbsError::NoResources);
        }
        let key_byte = self.random_byte();
        self.mrs.register(pd, addr, length, access, key_byte)
    }

    /// Deregisters a memory region (`ibv_dereg_mr`). Requests still using it fail with a
    /// protection error (locally) or a remote access error (at the peer).
    pub fn dereg_mr(&mut self, mr: MrHandle) -> Result<(), VerbsError> {
        self.mrs.deregister(mr)
    }

    /// A memory region, to read its bytes and numbers.
    pub fn mr(&self, mr: MrHandle) -> Result<&MemoryRegion, VerbsError> {
        self.mrs.get(mr.0).ok_or(VerbsError::InvalidHandle)
    }

    /// A memory region, to write its bytes.
    pub fn mr_mut(&mut self, mr: MrHandle) -> Result<&mut MemoryRegion, VerbsError> {
        self.mrs.get_mut(mr.0).ok_or(VerbsError::InvalidHandle)
    }

    /// Live memory regions.
    pub fn mr_count(&self) -> usize {
        self.mrs.live()
    }

    /// Creates a completion queue of `depth` entries (`ibv_create_cq`).
    pub fn create_cq(&mut self, depth: u32) -> Result<CqHandle, VerbsError> {
        if depth == 0 {
            return Err(VerbsError::InvalidArgument);
        }
        if depth > self.config.max_cqe {
            return Err(VerbsError::NoResources);
        }
        self.cqs.create(depth as usize)
    }

    /// Destroys a completion queue (`ibv_destroy_cq`); [`VerbsError::Busy`] while QPs use it.
    pub fn destroy_cq(&mut self, cq: CqHandle) -> Result<(), VerbsError> {
        self.cqs.destroy(cq)
    }

    /// A completion queue, to look at its fill level.
    pub fn cq(&self, cq: CqHandle) -> Result<&CompletionQueue, VerbsError> {
        self.cqs.get(cq).ok_or(VerbsError::InvalidHandle)
    }

    /// Moves up to `completions.len()` work completions, oldest first, into `completions`;
    /// returns how many (`ibv_poll_cq`).
    pub fn poll_cq(
        &mut self,
        cq: CqHandle,
        completions: &mut [WorkCompletion],
    ) -> Result<usize, VerbsError> {
        self.cqs.poll(cq, completions)
    }

    /// Creates an RC queue pair in the RESET state (`ibv_create_qp`).
    pub fn create_qp(&mut self, pd: PdHandle, init: &QpInitAttr) -> Result<QpHandle, VerbsError> {
        if !self.pd_is_live(pd) {
            return Err(VerbsError::InvalidHandle);
        }
        if self.cqs.get(init.send_cq).is_none() || self.cqs.get(init.recv_cq).is_none() {
            return Err(VerbsError::InvalidHandle);
        }
        let cap = init.cap;
        if cap.max_send_wr > self.config.max_qp_wr
            || cap.max_recv_wr > self.config.max_qp_wr
            || cap.max_send_sge as usize > MAX_SGE
            || cap.max_recv_sge as usize > MAX_SGE
            || cap.max_inline_data > self.config.max_inline_data
        {
            return Err(VerbsError::NoResources);
        }
        if self.qp_count >= self.config.max_qp as usize {
            return Err(VerbsError::NoResources);
        }
        let slot = match self.qps.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.qps.push(None);
                self.qps.len() - 1
            }
        };
        let qpn = FIRST_QPN + slot as u32;
        self.qps[slot] = Some(QueuePair::new(
            qpn,
            pd,
            init.send_cq,
            init.recv_cq,
            cap,
            init.sq_sig_all,
        ));
        self.qp_count += 1;
        self.cqs.set_user(init.send_cq, true);
        self.cqs.set_user(init.recv_cq, true);
        Ok(QpHandle(qpn))
    }

    /// The slot of a QP handle.
    pub(crate) fn slot(&self, qp: QpHandle) -> Result<usize, VerbsError> {
        let slot =
            qp.0.checked_sub(FIRST_QPN)
                .ok_or(VerbsError::InvalidHandle)? as usize;
        match self.qps.get(slot) {
            Some(Some(_)) => Ok(slot),
            _ => Err(VerbsError::InvalidHandle),
        }
    }

    /// Destroys a queue pair (`ibv_destroy_qp`): its work requests are dropped without
    /// completions.
    pub fn destroy_qp(&mut self, qp: QpHandle) -> Result<(), VerbsError> {
        let slot = self.slot(qp)?;
        let Some(mut queue_pair) = self.qps[slot].take() else {
            return Err(VerbsError::InvalidHandle);
        };
        let mut env = Env {
            mrs: &mut self.mrs,
            cqs: &mut self.cqs,
            counters: &mut self.counters,
            now: 0,
        };
        queue_pair.drop_work_requests(&mut env);
        self.cqs.set_user(queue_pair.send_cq, false);
        self.cqs.set_user(queue_pair.recv_cq, false);
        self.schedule.retain(|&scheduled| scheduled != slot);
        self.qp_count -= 1;
        Ok(())
    }

    /// Changes the state and attributes of a QP (`ibv_modify_qp`); `mask` names the
    /// attributes to set (see [`QpAttrMask::INIT_REQUIRED`], [`QpAttrMask::RTR_REQUIRED`],
    /// [`QpAttrMask::RTS_REQUIRED`] for what the usual transitions need).
    pub fn modify_qp(
        &mut self,
        qp: QpHandle,
        attr: &QpAttr,
        mask: QpAttrMask,
    ) -> Result<(), VerbsError> {
        let slot = self.slot(qp)?;
        self.modify_qp_slot(slot, attr, mask)
    }

    /// The attributes of a QP (`ibv_query_qp`, every attribute).
    pub fn query_qp(&self, qp: QpHandle) -> Result<QpAttr, VerbsError> {
        let slot = self.slot(qp)?;
        let queue_pair = self.qps[slot].as_ref().ok_or(VerbsError::InvalidHandle)?;
        let mut attr = queue_pair.attr;
        attr.qp_state = queue_pair.state;
        attr.cur_qp_state = queue_pair.state;
        attr.cap = queue_pair.cap;
        attr.sq_draining = u8::from(queue_pair.state == QpState::Sqd && queue_pair.outstanding());
        Ok(attr)
    }

    /// The state of a QP.
    pub fn qp_state(&self, qp: QpHandle) -> Result<QpState, VerbsError> {
        Ok(self.query_qp(qp)?.qp_state)
    }

    /// Posts a send work request (`ibv_post_send`). Allowed in RTS, in SQD (it starts after
    /// the return to RTS) and in ERR (it completes at once with `WR_FLUSH_ERR`). A message
    /// may have up to 2 GiB and [`MAX_MESSAGE_PACKETS`] packets of the path MTU.
    pub fn post_send(&mut self, qp: QpHandle, wr: &SendWr<'_>) -> Result<(), VerbsError> {
        let slot = self.slot(qp)?;
        let Device {
            qps,
            mrs,
            cqs,
            config,
            ..
        } = self;
        let Some(queue_pair) = qps[slot].as_mut() else {
            return Err(VerbsError::InvalidHandle);
        };
        if !matches!(queue_pair.state, QpState::Rts | QpState::Sqd | QpState::Err) {
            return Err(VerbsError::InvalidState);
        }
        if queue_pair.sq.len() >= queue_pair.cap.max_send_wr as usize {
            return Err(VerbsError::QueueFull);
        }
        let is_atomic = matches!(
            wr.operation,
            WrOperation::AtomicCmpAndSwp { .. } | WrOperation::AtomicFetchAndAdd { .. }
        );
        let writes_local = is_atomic || matches!(wr.operation, WrOperation::RdmaRead { .. });
        if writes_local && queue_pair.attr.max_rd_atomic == 0 && queue_pair.state != QpState::Err {
            // It could never be sent: the QP allows no READ or atomic in flight.
            return Err(VerbsError::InvalidArgument);
        }
        let inline = wr.send_flags.contains(SendFlags::INLINE) || wr.inline_data.is_some();
        let mut length: u64 = 0;
        let mut inline_bytes = None;
        if inline {
            if writes_local {
                return Err(VerbsError::InvalidArgument);
            }
            let data = match wr.inline_data {
                Some(data) => alloc::vec::Vec::from(data),
                None => {
                    let total: u64 = wr.sg_list.iter().map(|sge| u64::from(sge.length)).sum();
                    if total > u64::from(queue_pair.cap.max_inline_data) {
                        return Err(VerbsError::InlineTooLong);
                    }
                    let mut data = alloc::vec![0u8; total as usize];
                    let mut offset = 0;
                    for sge in wr.sg_list {
                        mrs.check_sge(sge, queue_pair.pd, false)?;
                        let mr = mrs.get(sge.lkey).ok_or(VerbsError::InvalidLkey)?;
                        let range = mr
                            .range(sge.addr, u64::from(sge.length))
                            .ok_or(VerbsError::SgeOutOfRange)?;
                        data[offset..offset + range.len()].copy_from_slice(&mr.as_slice()[range]);
                        offset += sge.length as usize;
                    }
                    data
                }
            };
            if data.len() as u64 > u64::from(queue_pair.cap.max_inline_data)
                || data.len() as u64 > u64::from(config.max_inline_data)
            {
                return Err(VerbsError::InlineTooLong);
            }
            length = data.len() as u64;
            inline_bytes = Some(data.into_boxed_slice());
        } else {
            if wr.sg_list.len() > queue_pair.cap.max_send_sge as usize {
                return Err(VerbsError::TooManySges);
            }
            for sge in wr.sg_list {
                mrs.check_sge(sge, queue_pair.pd, writes_local)?;
                length += u64::from(sge.length);
            }
        }
        // A message may take at most MAX_MESSAGE_PACKETS PSNs, so that PSN comparisons (over
        // half the 24-bit space) stay unambiguous: 2 GiB at MTU 1024, 1 GiB at MTU 256.
        if length > MAX_MESSAGE || length.div_ceil(u64::from(queue_pair.mtu)) > MAX_MESSAGE_PACKETS
        {
            return Err(VerbsError::MessageTooLong);
        }
        if is_atomic {
            let remote_addr = match wr.operation {
                WrOperation::AtomicCmpAndSwp { remote_addr, .. }
                | WrOperation::AtomicFetchAndAdd { remote_addr, .. } => remote_addr,
                _ => 0,
            };
            if wr.sg_list.len() != 1 || length != 8 || remote_addr % 8 != 0 {
                return Err(VerbsError::InvalidAtomic);
            }
        }
        cqs.get_mut(queue_pair.send_cq)
            .ok_or(VerbsError::InvalidHandle)?
            .reserve(1)?;
        let signaled = wr.send_flags.contains(SendFlags::SIGNALED) || queue_pair.sq_sig_all;
        let wqe = SendWqe {
            wr_id: wr.wr_id,
            operation: wr.operation,
            signaled,
            solicited: wr.send_flags.contains(SendFlags::SOLICITED),
            fence: wr.send_flags.contains(SendFlags::FENCE),
            sges: if inline {
                SgeList::EMPTY
            } else {
                SgeList::new(wr.sg_list)
            },
            inline: inline_bytes,
            length: length as u32,
            started: false,
            first_psn: 0,
            last_psn: 0,
            has_rd_atomic: false,
        };
        queue_pair.sq.push_back(wqe);
        if queue_pair.state == QpState::Err {
            let mut env = Env {
                mrs,
                cqs,
                counters: &mut self.counters,
                now: 0,
            };
            queue_pair.complete_send_head(&mut env, WcStatus::WrFlushErr);
        } else if queue_pair.state == QpState::Rts {
            self.schedule(slot);
        }
        Ok(())
    }

    /// Posts a receive work request (`ibv_post_recv`). Allowed from INIT on; in ERR it
    /// completes at once with `WR_FLUSH_ERR`.
    pub fn post_recv(&mut self, qp: QpHandle, wr: &RecvWr<'_>) -> Result<(), VerbsError> {
        let slot = self.slot(qp)?;
        let Device {
            qps,
            mrs,
            cqs,
            counters,
            ..
        } = self;
        let Some(queue_pair) = qps[slot].as_mut() else {
            return Err(VerbsError::InvalidHandle);
        };
        if matches!(queue_pair.state, QpState::Reset | QpState::Sqe) {
            return Err(VerbsError::InvalidState);
        }
        if queue_pair.rq.len() >= queue_pair.cap.max_recv_wr as usize {
            return Err(VerbsError::QueueFull);
        }
        if wr.sg_list.len() > queue_pair.cap.max_recv_sge as usize {
            return Err(VerbsError::TooManySges);
        }
        let mut length: u64 = 0;
        for sge in wr.sg_list {
            mrs.check_sge(sge, queue_pair.pd, true)?;
            length += u64::from(sge.length);
        }
        if length > MAX_MESSAGE {
            return Err(VerbsError::MessageTooLong);
        }
        cqs.get_mut(queue_pair.recv_cq)
            .ok_or(VerbsError::InvalidHandle)?
            .reserve(1)?;
        queue_pair.rq.push_back(RecvWqe {
            wr_id: wr.wr_id,
            sges: SgeList::new(wr.sg_list),
            length: length as u32,
        });
        if queue_pair.state == QpState::Err {
            let mut env = Env {
                mrs,
                cqs,
                counters,
                now: 0,
            };
            queue_pair.complete_recv_head(&mut env, WcStatus::WrFlushErr, WcOpcode::Recv, 0, None);
        }
        Ok(())
    }

    /// Puts a QP slot in the transmit schedule.
    pub(crate) fn schedule(&mut self, slot: usize) {
        if let Some(Some(queue_pair)) = self.qps.get_mut(slot)
            && !queue_pair.scheduled
        {
            queue_pair.scheduled = true;
            self.schedule.push_back(slot);
        }
    }
}
