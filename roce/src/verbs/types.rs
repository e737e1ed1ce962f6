//! The plain data types of the verbs API: handles, flags, enums with libibverbs' numeric
//! values, work requests, work completions, attributes, errors.

use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};
use core::ops::{BitAnd, BitOr, BitOrAssign};

/// Declares a set of flags as a `u32` newtype with libibverbs' bit values.
macro_rules! flags {
    ($(#[$attr:meta])* $name:ident { $( $(#[$flag_attr:meta])* $flag:ident = $value:expr, )+ }) => {
        $(#[$attr])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub u32);

        impl $name {
            $( $(#[$flag_attr])* pub const $flag: $name = $name($value); )+

            /// No flag set.
            pub const EMPTY: $name = $name(0);

            /// Whether every flag of `other` is set in `self`.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }

            /// Whether no flag is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// `self` with the flags of `other` added (usable in constants).
            #[must_use]
            pub const fn union(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
        }

        impl BitOr for $name {
            type Output = $name;
            fn bitor(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
        }

        impl BitOrAssign for $name {
            fn bitor_assign(&mut self, other: $name) {
                self.0 |= other.0;
            }
        }

        impl BitAnd for $name {
            type Output = $name;
            fn bitand(self, other: $name) -> $name {
                $name(self.0 & other.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.0)
            }
        }
    };
}

flags! {
    /// Memory region and QP access flags (`enum ibv_access_flags`).
    AccessFlags {
        /// `IBV_ACCESS_LOCAL_WRITE`: the device may write the region (receives, READ
        /// responses, atomic results).
        LOCAL_WRITE = 1,
        /// `IBV_ACCESS_REMOTE_WRITE`: a peer may RDMA WRITE it.
        REMOTE_WRITE = 2,
        /// `IBV_ACCESS_REMOTE_READ`: a peer may RDMA READ it.
        REMOTE_READ = 4,
        /// `IBV_ACCESS_REMOTE_ATOMIC`: a peer may run atomics on it.
        REMOTE_ATOMIC = 8,
    }
}

impl AccessFlags {
    /// The three remote access flags.
    pub const REMOTE: AccessFlags = AccessFlags(2 | 4 | 8);
    /// Every flag this device knows.
    pub const ALL: AccessFlags = AccessFlags(1 | 2 | 4 | 8);
}

flags! {
    /// Send work request flags (`enum ibv_send_flags`).
    SendFlags {
        /// `IBV_SEND_FENCE`: wait until every earlier work request has completed.
        FENCE = 1,
        /// `IBV_SEND_SIGNALED`: produce a work completion on success too.
        SIGNALED = 2,
        /// `IBV_SEND_SOLICITED`: set the solicited event bit of the last packet.
        SOLICITED = 4,
        /// `IBV_SEND_INLINE`: copy the data when posting (then the buffer may change at once).
        INLINE = 8,
    }
}

flags! {
    /// Work completion flags (`enum ibv_wc_flags`).
    WcFlags {
        /// `IBV_WC_GRH`: a GRH (here: the IPv4 header) came with the message.
        GRH = 1,
        /// `IBV_WC_WITH_IMM`: [`WorkCompletion::imm_data`] is valid.
        WITH_IMM = 2,
    }
}

flags! {
    /// Which [`QpAttr`] fields a [`crate::verbs::Device::modify_qp`] call sets
    /// (`enum ibv_qp_attr_mask`).
    QpAttrMask {
        /// `IBV_QP_STATE`.
        STATE = 1 << 0,
        /// `IBV_QP_CUR_STATE`.
        CUR_STATE = 1 << 1,
        /// `IBV_QP_EN_SQD_ASYNC_NOTIFY`.
        EN_SQD_ASYNC_NOTIFY = 1 << 2,
        /// `IBV_QP_ACCESS_FLAGS`.
        ACCESS_FLAGS = 1 << 3,
        /// `IBV_QP_PKEY_INDEX`.
        PKEY_INDEX = 1 << 4,
        /// `IBV_QP_PORT`.
        PORT = 1 << 5,
        /// `IBV_QP_QKEY` (UD only; rejected here).
        QKEY = 1 << 6,
        /// `IBV_QP_AV`.
        AV = 1 << 7,
        /// `IBV_QP_PATH_MTU`.
        PATH_MTU = 1 << 8,
        /// `IBV_QP_TIMEOUT`.
        TIMEOUT = 1 << 9,
        /// `IBV_QP_RETRY_CNT`.
        RETRY_CNT = 1 << 10,
        /// `IBV_QP_RNR_RETRY`.
        RNR_RETRY = 1 << 11,
        /// `IBV_QP_RQ_PSN`.
        RQ_PSN = 1 << 12,
        /// `IBV_QP_MAX_QP_RD_ATOMIC`.
        MAX_QP_RD_ATOMIC = 1 << 13,
        /// `IBV_QP_ALT_PATH` (not supported; rejected).
        ALT_PATH = 1 << 14,
        /// `IBV_QP_MIN_RNR_TIMER`.
        MIN_RNR_TIMER = 1 << 15,
        /// `IBV_QP_SQ_PSN`.
        SQ_PSN = 1 << 16,
        /// `IBV_QP_MAX_DEST_RD_ATOMIC`.
        MAX_DEST_RD_ATOMIC = 1 << 17,
        /// `IBV_QP_PATH_MIG_STATE` (accepted and ignored: no alternate path).
        PATH_MIG_STATE = 1 << 18,
        /// `IBV_QP_CAP`.
        CAP = 1 << 19,
        /// `IBV_QP_DEST_QPN`.
        DEST_QPN = 1 << 20,
    }
}

impl QpAttrMask {
    /// What RESET -> INIT requires for an RC QP (what `ibv_rc_pingpong` passes).
    pub const INIT_REQUIRED: QpAttrMask = QpAttrMask(1 | (1 << 3) | (1 << 4) | (1 << 5));
    /// What INIT -> RTR requires for an RC QP.
    pub const RTR_REQUIRED: QpAttrMask =
        QpAttrMask(1 | (1 << 7) | (1 << 8) | (1 << 12) | (1 << 15) | (1 << 17) | (1 << 20));
    /// What RTR -> RTS requires for an RC QP.
    pub const RTS_REQUIRED: QpAttrMask =
        QpAttrMask(1 | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 13) | (1 << 16));
}

/// A protection domain (`struct ibv_pd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PdHandle(pub(crate) u32);

/// A completion queue (`struct ibv_cq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CqHandle(pub(crate) u32);

/// A queue pair, named by its QP number (`struct ibv_qp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QpHandle(pub(crate) u32);

impl QpHandle {
    /// The QP number (24 bits), what the peer puts in its BTH destination QP field.
    pub const fn qp_num(self) -> u32 {
        self.0
    }
}

/// A memory region, named by its lkey (`struct ibv_mr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MrHandle(pub(crate) u32);

impl MrHandle {
    /// The lkey of the region.
    pub const fn lkey(self) -> u32 {
        self.0
    }
}

/// A 128-bit global identifier (`union ibv_gid`), bytes in network order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The IPv4-mapped IPv6 address `::ffff:a.b.c.d`: the RoCEv2 GID of an IPv4 address.
    pub const fn from_ipv4(address: Ipv4Addr) -> Self {
        let [a, b, c, d] = address.octets();
        Gid([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d])
    }

    /// The IPv4 address of an IPv4-mapped GID, `None` for any other GID.
    pub const fn to_ipv4(self) -> Option<Ipv4Addr> {
        let g = self.0;
        let mut index = 0;
        while index < 10 {
            if g[index] != 0 {
                return None;
            }
            index += 1;
        }
        if g[10] != 0xff || g[11] != 0xff {
            return None;
        }
        Some(Ipv4Addr::new(g[12], g[13], g[14], g[15]))
    }

    /// The interface identifier (the low 64 bits); `ibv_rc_pingpong` takes a zero one for "no
    /// GID given".
    pub const fn interface_id(self) -> u64 {
        let g = self.0;
        u64::from_be_bytes([g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]])
    }
}

impl From<Ipv6Addr> for Gid {
    fn from(address: Ipv6Addr) -> Self {
        Gid(address.octets())
    }
}

impl From<Gid> for Ipv6Addr {
    fn from(gid: Gid) -> Self {
        Ipv6Addr::from(gid.0)
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({})", Ipv6Addr::from(self.0))
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Ipv6Addr::from(self.0), f)
    }
}

/// A path MTU (`enum ibv_mtu`): the largest payload of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum Mtu {
    /// `IBV_MTU_256`.
    Mtu256 = 1,
    /// `IBV_MTU_512`.
    Mtu512 = 2,
    /// `IBV_MTU_1024`: the default, what a 1500-byte Ethernet link carries.
    #[default]
    Mtu1024 = 3,
    /// `IBV_MTU_2048`.
    Mtu2048 = 4,
    /// `IBV_MTU_4096`.
    Mtu4096 = 5,
}

impl Mtu {
    /// The payload bytes per packet.
    pub const fn bytes(self) -> u32 {
        128 << (self as u32)
    }

    /// The MTU of `bytes` payload bytes per packet (256, 512, 1024, 2048 or 4096).
    pub const fn from_bytes(bytes: u32) -> Option<Mtu> {
        match bytes {
            256 => Some(Mtu::Mtu256),
            512 => Some(Mtu::Mtu512),
            1024 => Some(Mtu::Mtu1024),
            2048 => Some(Mtu::Mtu2048),
            4096 => Some(Mtu::Mtu4096),
            _ => None,
        }
    }

    /// The largest MTU whose packets fit an IP link MTU of `link_mtu` bytes (what rxe does
    /// with its netdev's MTU): 1024 for a 1500-byte Ethernet link.
    pub const fn for_link_mtu(link_mtu: u32) -> Option<Mtu> {
        // IPv4 + UDP + BTH + the longest extension headers + ICRC.
        const OVERHEAD: u32 = 20 + 8 + 12 + 28 + 4;
        let mut mtu = Mtu::Mtu4096;
        loop {
            if mtu.bytes() + OVERHEAD <= link_mtu {
                return Some(mtu);
            }
            mtu = match mtu {
                Mtu::Mtu4096 => Mtu::Mtu2048,
                Mtu::Mtu2048 => Mtu::Mtu1024,
                Mtu::Mtu1024 => Mtu::Mtu512,
                Mtu::Mtu512 => Mtu::Mtu256,
                Mtu::Mtu256 => return None,
            };
        }
    }
}

/// A queue pair state (`enum ibv_qp_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum QpState {
    /// `IBV_QPS_RESET`: just created or reset; nothing is processed.
    #[default]
    Reset = 0,
    /// `IBV_QPS_INIT`: receives may be posted; no packet is processed.
    Init = 1,
    /// `IBV_QPS_RTR`: ready to receive: requests from the peer are served.
    Rtr = 2,
    /// `IBV_QPS_RTS`: ready to send.
    Rts = 3,
    /// `IBV_QPS_SQD`: send queue drain: requests already started finish, no new one starts.
    Sqd = 4,
    /// `IBV_QPS_SQE`: send queue error (UD/UC only; an RC QP goes to [`QpState::Err`]).
    Sqe = 5,
    /// `IBV_QPS_ERR`: every work request completes with [`WcStatus::WrFlushErr`].
    Err = 6,
}

/// Status of a work completion (`enum ibv_wc_status`, same values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum WcStatus {
    /// `IBV_WC_SUCCESS`.
    #[default]
    Success = 0,
    /// `IBV_WC_LOC_LEN_ERR`: a received message did not fit the receive buffers.
    LocLenErr = 1,
    /// `IBV_WC_LOC_QP_OP_ERR`: an internal QP consistency error.
    LocQpOpErr = 2,
    /// `IBV_WC_LOC_EEC_OP_ERR` (RD only).
    LocEecOpErr = 3,
    /// `IBV_WC_LOC_PROT_ERR`: a local buffer was no longer accessible (region deregistered).
    LocProtErr = 4,
    /// `IBV_WC_WR_FLUSH_ERR`: the QP went to the error state before this request finished.
    WrFlushErr = 5,
    /// `IBV_WC_MW_BIND_ERR`.
    MwBindErr = 6,
    /// `IBV_WC_BAD_RESP_ERR`: an unexpected response from the peer.
    BadRespErr = 7,
    /// `IBV_WC_LOC_ACCESS_ERR`.
    LocAccessErr = 8,
    /// `IBV_WC_REM_INV_REQ_ERR`: the peer NAKed the request as invalid.
    RemInvReqErr = 9,
    /// `IBV_WC_REM_ACCESS_ERR`: the peer NAKed the request's rkey, address or access.
    RemAccessErr = 10,
    /// `IBV_WC_REM_OP_ERR`: the peer could not carry the request out.
    RemOpErr = 11,
    /// `IBV_WC_RETRY_EXC_ERR`: transport retries (timeouts, sequence errors) exhausted.
    RetryExcErr = 12,
    /// `IBV_WC_RNR_RETRY_EXC_ERR`: receiver-not-ready retries exhausted.
    RnrRetryExcErr = 13,
    /// `IBV_WC_LOC_RDD_VIOL_ERR`.
    LocRddViolErr = 14,
    /// `IBV_WC_REM_INV_RD_REQ_ERR`.
    RemInvRdReqErr = 15,
    /// `IBV_WC_REM_ABORT_ERR`.
    RemAbortErr = 16,
    /// `IBV_WC_INV_EECN_ERR`.
    InvEecnErr = 17,
    /// `IBV_WC_INV_EEC_STATE_ERR`.
    InvEecStateErr = 18,
    /// `IBV_WC_FATAL_ERR`.
    FatalErr = 19,
    /// `IBV_WC_RESP_TIMEOUT_ERR`.
    RespTimeoutErr = 20,
    /// `IBV_WC_GENERAL_ERR`.
    GeneralErr = 21,
}

/// Operation of a work completion (`enum ibv_wc_opcode`, same values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum WcOpcode {
    /// `IBV_WC_SEND`.
    #[default]
    Send = 0,
    /// `IBV_WC_RDMA_WRITE`.
    RdmaWrite = 1,
    /// `IBV_WC_RDMA_READ`.
    RdmaRead = 2,
    /// `IBV_WC_COMP_SWAP`.
    CompSwap = 3,
    /// `IBV_WC_FETCH_ADD`.
    FetchAdd = 4,
    /// `IBV_WC_RECV`: a SEND arrived in a receive buffer.
    Recv = 128,
    /// `IBV_WC_RECV_RDMA_WITH_IMM`: an RDMA WRITE with immediate consumed a receive.
    RecvRdmaWithImm = 129,
}

/// Operation of a send work request (`enum ibv_wr_opcode` values, for reference); the
/// operation's parameters travel in [`WrOperation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum WrOpcode {
    /// `IBV_WR_RDMA_WRITE`.
    RdmaWrite = 0,
    /// `IBV_WR_RDMA_WRITE_WITH_IMM`.
    RdmaWriteWithImm = 1,
    /// `IBV_WR_SEND`.
    Send = 2,
    /// `IBV_WR_SEND_WITH_IMM`.
    SendWithImm = 3,
    /// `IBV_WR_RDMA_READ`.
    RdmaRead = 4,
    /// `IBV_WR_ATOMIC_CMP_AND_SWP`.
    AtomicCmpAndSwp = 5,
    /// `IBV_WR_ATOMIC_FETCH_AND_ADD`.
    AtomicFetchAndAdd = 6,
}

/// What a send work request does, with the parameters of its operation (the `opcode`,
/// `imm_data` and `wr` union of `struct ibv_send_wr`).
///
/// Atomics operate on an 8-byte aligned remote word taken as a little-endian `u64` (what rxe
/// does on x86-64 and arm64 hosts) and write the word's original value, little-endian, into
/// the request's single 8-byte SGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WrOperation {
    /// `IBV_WR_SEND`: the data goes into the peer's next receive buffer.
    Send,
    /// `IBV_WR_SEND_WITH_IMM`: a SEND that also delivers 32 bits of immediate data.
    SendWithImm {
        /// The immediate data (sent in network order; shown in host order here).
        imm_data: u32,
    },
    /// `IBV_WR_RDMA_WRITE`: write the data at `remote_addr` in the peer's region `rkey`.
    RdmaWrite {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// `IBV_WR_RDMA_WRITE_WITH_IMM`: an RDMA WRITE that also consumes a peer's receive and
    /// delivers immediate data.
    RdmaWriteWithImm {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// The immediate data.
        imm_data: u32,
    },
    /// `IBV_WR_RDMA_READ`: read from `remote_addr` into the local SGEs.
    RdmaRead {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// `IBV_WR_ATOMIC_CMP_AND_SWP`: if the remote word equals `compare_add`, replace it with
    /// `swap`.
    AtomicCmpAndSwp {
        /// Remote virtual address (8-byte aligned).
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// The value to compare with.
        compare_add: u64,
        /// The value to store on equality.
        swap: u64,
    },
    /// `IBV_WR_ATOMIC_FETCH_AND_ADD`: add `compare_add` to the remote word.
    AtomicFetchAndAdd {
        /// Remote virtual address (8-byte aligned).
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// The value to add.
        compare_add: u64,
    },
}

impl WrOperation {
    /// The libibverbs opcode of the operation.
    pub const fn opcode(&self) -> WrOpcode {
        match self {
            WrOperation::Send => WrOpcode::Send,
            WrOperation::SendWithImm { .. } => WrOpcode::SendWithImm,
            WrOperation::RdmaWrite { .. } => WrOpcode::RdmaWrite,
            WrOperation::RdmaWriteWithImm { .. } => WrOpcode::RdmaWriteWithImm,
            WrOperation::RdmaRead { .. } => WrOpcode::RdmaRead,
            WrOperation::AtomicCmpAndSwp { .. } => WrOpcode::AtomicCmpAndSwp,
            WrOperation::AtomicFetchAndAdd { .. } => WrOpcode::AtomicFetchAndAdd,
        }
    }

    /// The opcode its send completion carries.
    pub const fn wc_opcode(&self) -> WcOpcode {
        match self {
            WrOperation::Send | WrOperation::SendWithImm { .. } => WcOpcode::Send,
            WrOperation::RdmaWrite { .. } | WrOperation::RdmaWriteWithImm { .. } => {
                WcOpcode::RdmaWrite
            }
            WrOperation::RdmaRead { .. } => WcOpcode::RdmaRead,
            WrOperation::AtomicCmpAndSwp { .. } => WcOpcode::CompSwap,
            WrOperation::AtomicFetchAndAdd { .. } => WcOpcode::FetchAdd,
        }
    }
}

/// A scatter/gather element (`struct ibv_sge`): `length` bytes at virtual address `addr` of
/// the memory region `lkey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sge {
    /// Virtual address, inside the region's range.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// The region's lkey.
    pub lkey: u32,
}

/// A send work request (`struct ibv_send_wr`, one request: chain them by calling
/// [`crate::verbs::Device::post_send`] once each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWr<'a> {
    /// Returned in the work completion.
    pub wr_id: u64,
    /// What to do.
    pub operation: WrOperation,
    /// The local buffers: the data to send or write, where READ data or an atomic's
    /// original value goes.
    pub sg_list: &'a [Sge],
    /// Flags.
    pub send_flags: SendFlags,
    /// Inline data to send instead of `sg_list` (any bytes, not necessarily in a region;
    /// copied when posting). Setting it implies [`SendFlags::INLINE`].
    pub inline_data: Option<&'a [u8]>,
}

impl<'a> SendWr<'a> {
    /// A request without flags.
    pub const fn new(wr_id: u64, operation: WrOperation, sg_list: &'a [Sge]) -> Self {
        SendWr {
            wr_id,
            operation,
            sg_list,
            send_flags: SendFlags::EMPTY,
            inline_data: None,
        }
    }

    /// The same request with [`SendFlags::SIGNALED`] set.
    #[must_use]
    pub const fn signaled(mut self) -> Self {
        self.send_flags = self.send_flags.union(SendFlags::SIGNALED);
        self
    }

    /// The same request with `flags` added.
    #[must_use]
    pub const fn with_flags(mut self, flags: SendFlags) -> Self {
        self.send_flags = self.send_flags.union(flags);
        self
    }

    /// The same request sending `data` inline.
    #[must_use]
    pub const fn with_inline_data(mut self, data: &'a [u8]) -> Self {
        self.inline_data = Some(data);
        self.send_flags = self.send_flags.union(SendFlags::INLINE);
        self
    }
}

/// A receive work request (`struct ibv_recv_wr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWr<'a> {
    /// Returned in the work completion.
    pub wr_id: u64,
    /// Where an incoming SEND's data goes, in order.
    pub sg_list: &'a [Sge],
}

/// A work completion (`struct ibv_wc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkCompletion {
    /// The work request's `wr_id`.
    pub wr_id: u64,
    /// How it ended.
    pub status: WcStatus,
    /// What it was. Valid for every status here (libibverbs leaves it undefined on error).
    pub opcode: WcOpcode,
    /// Always 0.
    pub vendor_err: u32,
    /// Bytes transferred: the message length for SEND, WRITE, READ, 8 for atomics; for a
    /// receive, the bytes placed (the RDMA WRITE length for `RecvRdmaWithImm`).
    pub byte_len: u32,
    /// Immediate data in host order, valid when `wc_flags` has [`WcFlags::WITH_IMM`].
    pub imm_data: u32,
    /// The local QP number.
    pub qp_num: u32,
    /// The remote QP number (receive completions; RC: the connected peer).
    pub src_qp: u32,
    /// Flags.
    pub wc_flags: WcFlags,
    /// Always 0.
    pub pkey_index: u16,
    /// Always 0 (RoCE has no LIDs).
    pub slid: u16,
    /// Always 0.
    pub sl: u8,
    /// Always 0.
    pub dlid_path_bits: u8,
}

impl WorkCompletion {
    /// The immediate data, if the completion carries some.
    pub const fn imm(&self) -> Option<u32> {
        if self.wc_flags.contains(WcFlags::WITH_IMM) {
            Some(self.imm_data)
        } else {
            None
        }
    }
}

/// The global route of an address vector (`struct ibv_global_route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GlobalRoute {
    /// The peer's GID: must be IPv4-mapped (`::ffff:a.b.c.d`).
    pub dgid: Gid,
    /// Flow label (kept, not used: the UDP source port is derived from the QP number).
    pub flow_label: u32,
    /// Index of the local GID: 0, the only one.
    pub sgid_index: u8,
    /// Hop limit, sent as the IPv4 TTL; 0 means the default, 64.
    pub hop_limit: u8,
    /// Traffic class, sent as the IPv4 TOS byte (DSCP and ECN).
    pub traffic_class: u8,
}

/// An address vector (`struct ibv_ah_attr`). RoCEv2 needs the global route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AhAttr {
    /// The global route.
    pub grh: GlobalRoute,
    /// Ignored (RoCE has no LIDs).
    pub dlid: u16,
    /// Ignored.
    pub sl: u8,
    /// Ignored.
    pub src_path_bits: u8,
    /// Ignored.
    pub static_rate: u8,
    /// Must be true.
    pub is_global: bool,
    /// Port: must be 1.
    pub port_num: u8,
}

impl AhAttr {
    /// An address vector to `dgid` through port 1, GID index 0, default hop limit (64) and
    /// traffic class 0.
    pub const fn global(dgid: Gid) -> Self {
        AhAttr {
            grh: GlobalRoute {
                dgid,
                flow_label: 0,
                sgid_index: 0,
                hop_limit: 64,
                traffic_class: 0,
            },
            dlid: 0,
            sl: 0,
            src_path_bits: 0,
            static_rate: 0,
            is_global: true,
            port_num: 1,
        }
    }
}

/// Queue sizes of a QP (`struct ibv_qp_cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QpCap {
    /// Outstanding send work requests.
    pub max_send_wr: u32,
    /// Outstanding receive work requests.
    pub max_recv_wr: u32,
    /// SGEs per send work request.
    pub max_send_sge: u32,
    /// SGEs per receive work request.
    pub max_recv_sge: u32,
    /// Bytes of inline data per send work request.
    pub max_inline_data: u32,
}

impl Default for QpCap {
    /// 128 sends and receives of up to 4 SGEs, 64 bytes inline.
    fn default() -> Self {
        QpCap {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 64,
        }
    }
}

/// How to create a QP (`struct ibv_qp_init_attr`; the type is always RC, no SRQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpInitAttr {
    /// Where send completions go.
    pub send_cq: CqHandle,
    /// Where receive completions go (may be the same CQ).
    pub recv_cq: CqHandle,
    /// Queue sizes.
    pub cap: QpCap,
    /// Every send work request produces a completion, signaled or not.
    pub sq_sig_all: bool,
}

impl QpInitAttr {
    /// Attributes with these CQs and sizes, `sq_sig_all` off.
    pub const fn new(send_cq: CqHandle, recv_cq: CqHandle, cap: QpCap) -> Self {
        QpInitAttr {
            send_cq,
            recv_cq,
            cap,
            sq_sig_all: false,
        }
    }
}

/// QP attributes (`struct ibv_qp_attr`): what [`crate::verbs::Device::modify_qp`] sets
/// (the fields its mask names) and [`crate::verbs::Device::query_qp`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QpAttr {
    /// The state to move to.
    pub qp_state: QpState,
    /// The state the caller believes the QP is in (checked when [`QpAttrMask::CUR_STATE`]).
    pub cur_qp_state: QpState,
    /// Path MTU; at most the port's active MTU.
    pub path_mtu: Mtu,
    /// First PSN expected from the peer (24 bits).
    pub rq_psn: u32,
    /// First PSN this QP sends (24 bits).
    pub sq_psn: u32,
    /// The peer's QP number (24 bits).
    pub dest_qp_num: u32,
    /// What the peer may do to this side: [`AccessFlags::REMOTE_WRITE`], `REMOTE_READ`,
    /// `REMOTE_ATOMIC`.
    pub qp_access_flags: AccessFlags,
    /// Queue sizes (reported by `query_qp`; cannot be changed).
    pub cap: QpCap,
    /// The path to the peer.
    pub ah_attr: AhAttr,
    /// P_Key index: 0, the only P_Key (0xFFFF).
    pub pkey_index: u16,
    /// Accepted, no events are generated.
    pub en_sqd_async_notify: u8,
    /// Reported by `query_qp`: in SQD, whether requests are still in flight.
    pub sq_draining: u8,
    /// READ and atomic requests this QP may have outstanding as requester.
    pub max_rd_atomic: u8,
    /// READ and atomic requests the peer may have outstanding here (responder resources).
    pub max_dest_rd_atomic: u8,
    /// The RNR NAK timer code (5 bits) sent when no receive is posted.
    pub min_rnr_timer: u8,
    /// Port: must be 1.
    pub port_num: u8,
    /// Local ACK timeout: `4.096 us << timeout`, 0 = never (5 bits).
    pub timeout: u8,
    /// Transport retries after a timeout or a sequence error NAK (0 to 7; 7 = without limit,
    /// as rdma_rxe has it: see [`UNLIMITED_RETRIES`](crate::transport::UNLIMITED_RETRIES)).
    pub retry_cnt: u8,
    /// Retries after an RNR NAK (0 to 7; 7 = without limit).
    pub rnr_retry: u8,
}

/// State of a port (`enum ibv_port_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PortState {
    /// `IBV_PORT_ACTIVE`.
    Active = 4,
}

/// Link layer of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LinkLayer {
    /// `IBV_LINK_LAYER_ETHERNET`: RoCE.
    Ethernet = 2,
}

/// Port attributes (`struct ibv_port_attr`, the fields that mean something here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortAttr {
    /// Always active.
    pub state: PortState,
    /// The largest MTU the port supports (4096).
    pub max_mtu: Mtu,
    /// The MTU of the port's link; the largest path MTU a QP may use.
    pub active_mtu: Mtu,
    /// Entries in the GID table (1).
    pub gid_tbl_len: u32,
    /// Entries in the P_Key table (1).
    pub pkey_tbl_len: u16,
    /// 0: RoCE has no LIDs.
    pub lid: u16,
    /// Ethernet.
    pub link_layer: LinkLayer,
}

/// Device limits (`struct ibv_device_attr`, the fields that mean something here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceAttr {
    /// Largest region in bytes.
    pub max_mr_size: u64,
    /// Queue pairs.
    pub max_qp: u32,
    /// Work requests per queue.
    pub max_qp_wr: u32,
    /// SGEs per work request.
    pub max_sge: u32,
    /// Completion queues.
    pub max_cq: u32,
    /// Entries per completion queue.
    pub max_cqe: u32,
    /// Memory regions.
    pub max_mr: u32,
    /// Protection domains.
    pub max_pd: u32,
    /// Responder resources per QP (`max_dest_rd_atomic`).
    pub max_qp_rd_atom: u32,
    /// Outstanding READ/atomic requests per QP (`max_rd_atomic`).
    pub max_qp_init_rd_atom: u32,
    /// Inline bytes per send work request.
    pub max_inline_data: u32,
    /// Bytes per message (2 GiB, as IBTA).
    pub max_msg_size: u32,
}

/// Why a verbs call failed. Nothing has changed when a call returns one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum VerbsError {
    /// The handle names no live object of this device.
    #[error("invalid handle")]
    InvalidHandle,
    /// The object is still used (a PD with regions or QPs, a CQ with QPs).
    #[error("object in use")]
    Busy,
    /// A device limit is reached (objects, queue sizes, region size).
    #[error("out of resources")]
    NoResources,
    /// An argument is out of range (a zero-depth CQ, a port other than 1, ...).
    #[error("invalid argument")]
    InvalidArgument,
    /// The QP is in a state that does not allow this call.
    #[error("operation not allowed in the QP's state")]
    InvalidState,
    /// `modify_qp` to a state not reachable from the current one.
    #[error("invalid QP state transition")]
    InvalidTransition,
    /// The attribute mask lacks a required attribute or has one the transition forbids.
    #[error("attribute mask invalid for this transition")]
    InvalidAttrMask,
    /// An attribute value is out of range (MTU above the port's, retry count above 7, a
    /// non-IPv4 GID, ...).
    #[error("invalid attribute value")]
    InvalidAttribute,
    /// An lkey names no region, or a region of another protection domain.
    #[error("invalid lkey")]
    InvalidLkey,
    /// An SGE reaches outside its region.
    #[error("SGE outside its memory region")]
    SgeOutOfRange,
    /// A region lacks the access an SGE needs (local write for receive, READ and atomic
    /// buffers).
    #[error("memory region lacks the needed access")]
    AccessDenied,
    /// More SGEs than the QP allows.
    #[error("too many SGEs")]
    TooManySges,
    /// More inline bytes than the QP allows.
    #[error("inline data too long")]
    InlineTooLong,
    /// The message is longer than 2 GiB.
    #[error("message too long")]
    MessageTooLong,
    /// An atomic without exactly one 8-byte SGE, or with an unaligned remote address.
    #[error("invalid atomic request")]
    InvalidAtomic,
    /// The work queue holds as many requests as its capacity.
    #[error("work queue full")]
    QueueFull,
    /// The completion queue could not take the completion of one more request.
    #[error("completion queue full")]
    CqFull,
    /// The region's virtual address range is taken by another region or wraps around.
    #[error("address range unavailable")]
    AddressInUse,
}
