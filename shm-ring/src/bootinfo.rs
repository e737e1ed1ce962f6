//! The boot information block the host hands each OS.
//!
//! The host writes one [`BootInfo`] per OS into that OS's system area (see
//! [`crate::layout::Role::boot_info_address`]) and starts the vCPU in long mode with `RDI`
//! pointing at it. The block is mapped read-only for the guest. A guest checks
//! [`BootInfo::validate`] before trusting anything in it; a mismatch ends the guest with a clear
//! message on its serial port.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::layout::{Region, Role};

/// `BootInfo::magic`: "duovmBI1" as little-endian bytes.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"duovmBI1");
/// Version of the [`BootInfo`] layout; bumped on any incompatible change.
pub const BOOT_INFO_VERSION: u32 = 2;

/// Where each shared structure lives, as offsets from the shared segment's base.
///
/// Written by the host at VM build time, never changed afterwards.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SharedLayout {
    /// Control mailbox of OS A (host request, OS reply).
    pub control_a: Region,
    /// Control mailbox of OS B.
    pub control_b: Region,
    /// Descriptor ring A -> B (OS A produces, OS B consumes).
    pub a_to_b: Region,
    /// Buffer return ring for `a_to_b` (OS B produces, OS A consumes).
    pub a_to_b_return: Region,
    /// Descriptor ring B -> A (OS B produces, OS A consumes).
    pub b_to_a: Region,
    /// Buffer return ring for `b_to_a` (OS A produces, OS B consumes).
    pub b_to_a_return: Region,
    /// Buffer pool owned by OS A, for `a_to_b`.
    pub pool_a: Region,
    /// Buffer pool owned by OS B, for `b_to_a`.
    pub pool_b: Region,
    /// Size of one pool buffer in bytes.
    pub buffer_size: u32,
    /// Capacity of every descriptor ring (a power of two).
    pub ring_capacity: u32,
}

/// [`NetConfig::offloads`] bit: the virtio-net device computes the ICRC of every RoCEv2 packet
/// it sends (IPv4, UDP destination port 4791; the four bytes before the end of the UDP datagram
/// are overwritten) and drops every received RoCEv2 packet whose ICRC is wrong, counting it. OS
/// A's RDMA device then leaves the ICRC to it, as a RoCE device leaves it to its hardware.
pub const OFFLOAD_ROCE_ICRC: u32 = 1;

/// Network configuration for OS B (and OS A's address and offloads).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetConfig {
    /// MAC address of the virtio-net device.
    pub mac: [u8; 6],
    /// IPv4 prefix length of `ipv4`.
    pub prefix_len: u8,
    /// Non-zero if a virtio-net device is present at [`crate::layout::VIRTIO_MMIO_BASE`].
    pub has_nic: u8,
    /// IPv4 address.
    pub ipv4: [u8; 4],
    /// IPv4 default gateway (all zeros for none).
    pub gateway: [u8; 4],
    /// What the virtio-net device does for the OSes: [`OFFLOAD_ROCE_ICRC`] (other bits are
    /// reserved, zero).
    pub offloads: u32,
    /// Zero.
    pub reserved: u32,
}

impl NetConfig {
    /// Whether the device computes and checks RoCEv2 ICRCs ([`OFFLOAD_ROCE_ICRC`]).
    pub const fn roce_icrc_offload(&self) -> bool {
        self.offloads & OFFLOAD_ROCE_ICRC != 0
    }
}

/// What an OS runs after boot. The meaning of `args` depends on `kind`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Workload {
    /// A [`WorkloadKind`] value.
    pub kind: u32,
    /// Kind-specific flags.
    pub flags: u32,
    /// Kind-specific arguments.
    pub args: [u64; 6],
}

/// The workloads the guest kernels know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u32)]
pub enum WorkloadKind {
    /// Boot, say hello, exchange one IPI each way with the peer, then idle until told to stop.
    Hello = 0,
    /// Ring benchmark: OS A produces `args[0]` descriptors of `args[1]` payload bytes in batches
    /// of `args[2]`; OS B consumes and verifies them. A side that finds nothing to do polls for
    /// `args[4]` nanoseconds before it sleeps (0: sleeps at once).
    RingBench = 1,
    /// Test: OS A posts one descriptor that points outside the pool, after `args[3]` good ones;
    /// OS B must reject it. The other arguments are those of [`WorkloadKind::RingBench`].
    HostileDescriptor = 2,
    /// Test: OS A reads OS B's segment, which is not mapped for it, and must fault.
    TouchPeerSegment = 3,
    /// Test: OS A triple-faults.
    TripleFault = 4,
    /// Test: OS A spins forever with interrupts off.
    Spin = 5,
    /// Test of OS B's NIC: send one broadcast frame (`args[0]` = its EtherType), wait for one
    /// frame back, report both.
    NicProbe = 6,
    /// Exit benchmark: OS A makes `args[0]` fast-path exits (hypercall pings), then `args[0]`
    /// supervisor-path exits (reads of the supervisor probe port).
    ExitBench = 7,
    /// OS B: run the network service (smoltcp over the NIC, serving OS A) until OS A ends.
    NetService = 8,
    /// OS A: a TCP and UDP echo server on port `args[0]`; finishes once `args[1]` TCP
    /// connections have closed and `args[2]` UDP datagrams were echoed (both 0: never).
    TcpEcho = 9,
    /// OS A: send `args[2]` UDP datagrams of `args[3]` bytes to `args[0]` (IPv4, as a
    /// big-endian `u32`) port `args[1]`, and check that each comes back unchanged.
    UdpEcho = 10,
    /// OS A: connect to `args[0]` (IPv4, big-endian `u32`) port `args[1]`, send `args[2]`
    /// bytes and check that they come back in order.
    TcpClient = 11,
    /// OS A: an RDMA test of `duovm-apps`: `args[0]` the test (1 write_bw, 2 write_lat,
    /// 3 read_lat, 4 send_bw, 5 atomic_lat, 6 rc_pingpong), `args[1]` the message size,
    /// `args[2]` the iterations, `args[3]` the server's IPv4 address as a big-endian `u32`
    /// (0: be the server), `args[4]` the TCP port of the connection exchange, `args[5]` the
    /// path MTU in bytes (low 32 bits) and the QP's local ACK timeout exponent (high 32 bits);
    /// `flags` the connection exchange. See `apps::rdma::TestParams::to_args`.
    RdmaTest = 12,
    /// Test of the host's virtio-net device: OS B gives it a transmit queue whose descriptor
    /// table lies outside guest memory and checks that the device refuses it ("needs reset")
    /// and comes back after a reset.
    NicHostile = 13,
    /// OS A: a network benchmark of `duovm-apps` (`netbench`): `args[0]` the transport
    /// (1 UDP, 2 TCP); `args[1]` the goodput message size (low 32 bits) and the round-trip
    /// message size (high 32 bits); `args[2]` the goodput messages (0: none); `args[3]` the
    /// round trips (0: none); `args[4]` the server's IPv4 address as a big-endian `u32` (low 32
    /// bits; 0: be the server, for as many sessions as the client runs) and the port (bits 32
    /// to 47; 0: the default); `args[5]` the goodput time limit in milliseconds (0: none).
    NetBench = 14,
}

impl WorkloadKind {
    /// The workload for a raw boot info value.
    pub const fn from_u32(value: u32) -> Option<WorkloadKind> {
        Some(match value {
            0 => WorkloadKind::Hello,
            1 => WorkloadKind::RingBench,
            2 => WorkloadKind::HostileDescriptor,
            3 => WorkloadKind::TouchPeerSegment,
            4 => WorkloadKind::TripleFault,
            5 => WorkloadKind::Spin,
            6 => WorkloadKind::NicProbe,
            7 => WorkloadKind::ExitBench,
            8 => WorkloadKind::NetService,
            9 => WorkloadKind::TcpEcho,
            10 => WorkloadKind::UdpEcho,
            11 => WorkloadKind::TcpClient,
            12 => WorkloadKind::RdmaTest,
            13 => WorkloadKind::NicHostile,
            14 => WorkloadKind::NetBench,
            _ => return None,
        })
    }
}

/// The boot information block. Written by the host, read-only for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// [`BOOT_INFO_VERSION`].
    pub version: u32,
    /// Size of this structure as the host built it.
    pub size: u32,
    /// [`Role`] of the OS this block is for.
    pub role: u32,
    /// APIC ID of this OS's vCPU.
    pub apic_id: u32,
    /// APIC ID of the peer OS's vCPU (the IPI target).
    pub peer_apic_id: u32,
    /// Serial port for this OS's log.
    pub serial_port: u32,
    /// TSC frequency in kHz, from `KVM_GET_TSC_KHZ`.
    pub tsc_khz: u64,
    /// This OS's private segment.
    pub segment: Region,
    /// The initial stack (top is `base + size`), inside `segment`.
    pub stack: Region,
    /// The shared segment.
    pub shared: Region,
    /// Where things live inside the shared segment.
    pub shared_layout: SharedLayout,
    /// Network configuration (OS B).
    pub net: NetConfig,
    /// What to run.
    pub workload: Workload,
}

/// Why a boot info block was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// The magic number is wrong: this is not a boot info block.
    BadMagic(u64),
    /// The layout version is one this build does not speak.
    BadVersion(u32),
    /// The role is neither A nor B.
    BadRole(u32),
    /// A region named in the block is empty, overflows, or lies outside where it must be.
    BadRegion(&'static str),
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootInfoError::BadMagic(magic) => write!(f, "boot info magic {magic:#x} is wrong"),
            BootInfoError::BadVersion(version) => {
                write!(f, "boot info version {version} is not {BOOT_INFO_VERSION}")
            }
            BootInfoError::BadRole(role) => write!(f, "boot info role {role} is not 0 or 1"),
            BootInfoError::BadRegion(what) => write!(f, "boot info region {what} is invalid"),
        }
    }
}

impl BootInfo {
    /// Checks the header and that every region is where it must be; returns the role.
    pub fn validate(&self) -> Result<Role, BootInfoError> {
        if self.magic != BOOT_INFO_MAGIC {
            return Err(BootInfoError::BadMagic(self.magic));
        }
        if self.version != BOOT_INFO_VERSION || self.size as usize != size_of::<BootInfo>() {
            return Err(BootInfoError::BadVersion(self.version));
        }
        let role = Role::from_u32(self.role).ok_or(BootInfoError::BadRole(self.role))?;
        if self.segment.size == 0 || self.segment.end().is_none() {
            return Err(BootInfoError::BadRegion("segment"));
        }
        if !self
            .segment
            .contains_range(self.stack.base, self.stack.size)
            || self.stack.size == 0
        {
            return Err(BootInfoError::BadRegion("stack"));
        }
        if self.shared.size == 0 || self.shared.end().is_none() {
            return Err(BootInfoError::BadRegion("shared"));
        }
        let layout = &self.shared_layout;
        let inside_shared = Region::new(0, self.shared.size);
        let named = [
            ("control_a", layout.control_a),
            ("control_b", layout.control_b),
            ("a_to_b", layout.a_to_b),
            ("a_to_b_return", layout.a_to_b_return),
            ("b_to_a", layout.b_to_a),
            ("b_to_a_return", layout.b_to_a_return),
            ("pool_a", layout.pool_a),
            ("pool_b", layout.pool_b),
        ];
        for (name, region) in named {
            if region.size != 0 && !inside_shared.contains_range(region.base, region.size) {
                return Err(BootInfoError::BadRegion(name));
            }
        }
        Ok(role)
    }

    /// The guest-physical address of an offset into the shared segment.
    pub const fn shared_address(&self, offset: u64) -> u64 {
        self.shared.base + offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootInfo {
        BootInfo {
            magic: BOOT_INFO_MAGIC,
            version: BOOT_INFO_VERSION,
            size: size_of::<BootInfo>() as u32,
            role: Role::B as u32,
            apic_id: 1,
            peer_apic_id: 0,
            serial_port: 0x2F8,
            tsc_khz: 2_000_000,
            segment: Region::new(0x4000_0000, 32 << 20),
            stack: Region::new(0x4000_0000 + (31 << 20), 1 << 20),
            shared: Region::new(0x8000_0000, 16 << 20),
            shared_layout: SharedLayout {
                pool_a: Region::new(1 << 20, 4 << 20),
                ..SharedLayout::default()
            },
            net: NetConfig::default(),
            workload: Workload::default(),
        }
    }

    #[test]
    fn accepts_a_good_block() {
        assert_eq!(sample().validate(), Ok(Role::B));
    }

    #[test]
    fn rejects_bad_blocks() {
        let mut info = sample();
        info.magic = 0;
        assert_eq!(info.validate(), Err(BootInfoError::BadMagic(0)));
        let mut info = sample();
        info.role = 7;
        assert_eq!(info.validate(), Err(BootInfoError::BadRole(7)));
        let mut info = sample();
        info.stack = Region::new(0, 4096);
        assert_eq!(info.validate(), Err(BootInfoError::BadRegion("stack")));
        let mut info = sample();
        info.shared_layout.pool_a = Region::new(15 << 20, 2 << 20);
        assert_eq!(info.validate(), Err(BootInfoError::BadRegion("pool_a")));
        let mut info = sample();
        info.shared_layout.pool_b = Region::new(u64::MAX, 2);
        assert_eq!(info.validate(), Err(BootInfoError::BadRegion("pool_b")));
    }

    #[test]
    fn round_trips_through_bytes() {
        let info = sample();
        let bytes = info.as_bytes();
        assert_eq!(BootInfo::read_from_bytes(bytes).unwrap(), info);
    }
}
