//! The service's configuration: addresses from the boot info, sizes and limits.

use core::fmt;
use core::net::Ipv4Addr;

/// IPv4 and UDP header bytes: a UDP payload is at most this much below the MTU.
pub(crate) const UDP_OVERHEAD: usize = 28;

/// The IP MTU of the links duovm makes (the built-in switch, its TAPs) and [`NetConfig::new`]'s
/// default: standard Ethernet.
pub const LINK_MTU: usize = 1500;

/// Everything [`crate::NetService::new`] needs to know. [`NetConfig::new`] fills in defaults
/// that suit a 1500-byte Ethernet link and a few dozen sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The NIC's MAC address (unicast).
    pub mac: [u8; 6],
    /// OS B's IPv4 address.
    pub address: Ipv4Addr,
    /// Prefix length of `address` (1..=32).
    pub prefix_len: u8,
    /// The default gateway, on-link; `None` for a link without one.
    pub gateway: Option<Ipv4Addr>,
    /// The IP MTU of the link (576..=9000); frames are this plus the 14-byte Ethernet header.
    pub mtu: usize,
    /// Seed of smoltcp's generator (TCP initial sequence numbers, IP identification). Give each
    /// boot a different one.
    pub random_seed: u64,
    /// Most smoltcp sockets at once, listening sockets of a backlog included.
    pub max_sockets: usize,
    /// Receive buffer of each TCP connection in bytes (the window it advertises).
    pub tcp_rx_buffer: usize,
    /// Send buffer of each TCP connection in bytes (the send credit OS A gets).
    pub tcp_tx_buffer: usize,
    /// Whether TCP connections use Nagle's algorithm.
    pub tcp_nagle: bool,
    /// A TCP connection whose peer has been silent this long is reset, and a connect that gets
    /// no answer this long fails (`None`: retransmit for ever). smoltcp counts any silence,
    /// idle or not, so a timeout needs `tcp_keep_alive_ms` below it.
    pub tcp_timeout_ms: Option<u64>,
    /// Interval of TCP keep-alive probes on an idle connection (`None`: no probes).
    pub tcp_keep_alive_ms: Option<u64>,
    /// Payload bytes in each UDP socket's receive and send buffers. The default holds
    /// `udp_packets` datagrams of the largest size a 1500-byte link carries, so that a burst
    /// of that many, taken off the wire in one poll, is never dropped for want of bytes (with
    /// 64 KiB, a paced stream of 1472-byte datagrams lost a fifth of them).
    pub udp_buffer: usize,
    /// Datagrams each UDP socket's receive and send buffers hold.
    pub udp_packets: usize,
    /// Requests, received frames and events handled per [`crate::NetService::poll`] step.
    pub batch: usize,
    /// Frames held while the NIC is full (beyond that smoltcp waits and RoCE packets drop).
    pub tx_backlog: usize,
    /// Entries in the RoCE fast path's ARP cache.
    pub arp_entries: usize,
    /// Lifetime of a learned ARP entry in nanoseconds.
    pub arp_lifetime_ns: u64,
    /// Destinations being resolved at once.
    pub arp_pending_destinations: usize,
    /// RoCE packets queued per destination while its MAC is resolved.
    pub arp_queue_per_destination: usize,
    /// Interval between ARP requests for one destination, in nanoseconds.
    pub arp_retry_ns: u64,
    /// ARP requests sent for one destination before its queued packets are dropped.
    pub arp_attempts: u32,
}

impl NetConfig {
    /// A configuration with defaults for everything but the addresses.
    pub fn new(mac: [u8; 6], address: Ipv4Addr, prefix_len: u8) -> NetConfig {
        let mtu = LINK_MTU;
        let udp_packets = 64;
        NetConfig {
            mac,
            address,
            prefix_len,
            gateway: None,
            mtu,
            random_seed: 0x5eed_f00d_d00d,
            max_sockets: 64,
            tcp_rx_buffer: 64 * 1024,
            tcp_tx_buffer: 64 * 1024,
            tcp_nagle: false,
            tcp_timeout_ms: Some(60_000),
            tcp_keep_alive_ms: Some(15_000),
            udp_buffer: udp_packets * (mtu - UDP_OVERHEAD),
            udp_packets,
            batch: 64,
            tx_backlog: 256,
            arp_entries: 64,
            arp_lifetime_ns: 60_000_000_000,
            arp_pending_destinations: 16,
            arp_queue_per_destination: 4,
            arp_retry_ns: 250_000_000,
            arp_attempts: 4,
        }
    }

    /// The configuration the host wrote in OS B's boot info, with defaults for the rest.
    pub fn from_boot(boot: &shm_ring::bootinfo::NetConfig) -> NetConfig {
        let gateway = Ipv4Addr::from(boot.gateway);
        NetConfig {
            gateway: (!gateway.is_unspecified()).then_some(gateway),
            ..NetConfig::new(boot.mac, Ipv4Addr::from(boot.ipv4), boot.prefix_len)
        }
    }

    /// Frame size: the MTU plus the Ethernet header.
    pub fn frame_len(&self) -> usize {
        self.mtu + crate::frame::ETHERNET_HEADER_LEN
    }

    /// The network mask.
    pub fn netmask(&self) -> u32 {
        match self.prefix_len {
            0 => 0,
            len => u32::MAX << (32 - u32::from(len.min(32))),
        }
    }

    /// Whether `ip` is on our link.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = self.netmask();
        u32::from(ip) & mask == u32::from(self.address) & mask
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mac = self.mac;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(ConfigError::Mac(mac));
        }
        let address = self.address;
        if address.is_unspecified()
            || address.is_broadcast()
            || address.is_multicast()
            || address.is_loopback()
        {
            return Err(ConfigError::Address(address));
        }
        if !(1..=32).contains(&self.prefix_len) {
            return Err(ConfigError::PrefixLen(self.prefix_len));
        }
        if let Some(gateway) = self.gateway
            && (!self.on_link(gateway) || gateway == address)
        {
            return Err(ConfigError::Gateway(gateway));
        }
        let ranges: [(&'static str, usize, usize, usize); 10] = [
            ("mtu", self.mtu, 576, 9000),
            ("max_sockets", self.max_sockets, 1, 4096),
            ("tcp_rx_buffer", self.tcp_rx_buffer, 1024, 1 << 30),
            ("tcp_tx_buffer", self.tcp_tx_buffer, 1024, 1 << 30),
            ("udp_buffer", self.udp_buffer, self.mtu, 1 << 30),
            ("udp_packets", self.udp_packets, 1, 1 << 16),
            ("batch", self.batch, 1, 4096),
            ("tx_backlog", self.tx_backlog, 1, 1 << 16),
            ("arp_entries", self.arp_entries, 1, 4096),
            (
                "arp_pending_destinations",
                self.arp_pending_destinations,
                1,
                4096,
            ),
        ];
        for (field, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::OutOfRange { field, value });
            }
        }
        if !(1..=64).contains(&self.arp_queue_per_destination) {
            return Err(ConfigError::OutOfRange {
                field: "arp_queue_per_destination",
                value: self.arp_queue_per_destination,
            });
        }
        if let Some(timeout) = self.tcp_timeout_ms {
            let keep_alive = self.tcp_keep_alive_ms.unwrap_or(u64::MAX);
            if keep_alive == 0 || keep_alive >= timeout {
                return Err(ConfigError::OutOfRange {
                    field: "tcp_keep_alive_ms",
                    value: keep_alive.min(usize::MAX as u64) as usize,
                });
            }
        }
        if self.arp_attempts == 0 {
            return Err(ConfigError::OutOfRange {
                field: "arp_attempts",
                value: 0,
            });
        }
        Ok(())
    }
}

/// A configuration value is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The MAC address is multicast or zero.
    Mac([u8; 6]),
    /// The address is not a unicast address.
    Address(Ipv4Addr),
    /// The prefix length is not 1..=32.
    PrefixLen(u8),
    /// The gateway is not on-link (or is our own address).
    Gateway(Ipv4Addr),
    /// A size or count is out of range.
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: usize,
    },
    /// The pool that carries OS B's events has buffers too small for a frame's IPv4 packet.
    PoolBuffersTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes per buffer.
        actual: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Mac(mac) => write!(f, "MAC address {mac:02x?} is not unicast"),
            ConfigError::Address(address) => write!(f, "address {address} is not unicast"),
            ConfigError::PrefixLen(len) => write!(f, "prefix length {len} is not 1..=32"),
            ConfigError::Gateway(gateway) => write!(f, "gateway {gateway} is not on-link"),
            ConfigError::OutOfRange { field, value } => {
                write!(f, "{field} = {value} is out of range")
            }
            ConfigError::PoolBuffersTooSmall { needed, actual } => write!(
                f,
                "pool buffers of {actual} bytes cannot hold a {needed}-byte packet"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        let config = NetConfig::new([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 1), 24);
        assert_eq!(config.validate(), Ok(()));
        assert!(config.on_link(Ipv4Addr::new(10, 0, 0, 200)));
        assert!(!config.on_link(Ipv4Addr::new(10, 0, 1, 1)));
        let bad = [
            NetConfig {
                mac: [1, 0, 0, 0, 0, 1],
                ..config.clone()
            },
            NetConfig {
                address: Ipv4Addr::BROADCAST,
                ..config.clone()
            },
            NetConfig {
                prefix_len: 0,
                ..config.clone()
            },
            NetConfig {
                gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
                ..config.clone()
            },
            NetConfig {
                mtu: 100,
                ..config.clone()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn boot_config_maps_the_gateway() {
        let boot = shm_ring::bootinfo::NetConfig {
            mac: [2, 0, 0, 0, 0, 2],
            prefix_len: 24,
            has_nic: 1,
            ipv4: [10, 0, 0, 2],
            gateway: [0; 4],
            ..Default::default()
        };
        assert_eq!(NetConfig::from_boot(&boot).gateway, None);
        let boot = shm_ring::bootinfo::NetConfig {
            gateway: [10, 0, 0, 254],
            ..boot
        };
        let config = NetConfig::from_boot(&boot);
        assert_eq!(config.gateway, Some(Ipv4Addr::new(10, 0, 0, 254)));
        assert_eq!(config.validate(), Ok(()));
    }
}
