//! Frame-level checks of the RoCE fast path: which received frames go to OS A untouched, which
//! RoCE packets from OS A may go out, and the few frames the service builds itself.
//!
//! Everything here reads bytes from the network or from OS A: every length is checked before
//! it is used and nothing panics, whatever the bytes.

use core::net::Ipv4Addr;

use shm_ring::netmsg::{ErrorCode, ROCE_UDP_PORT};
use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress};

/// Bytes of an Ethernet II header (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// The broadcast MAC address.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// Bytes of an ARP packet for Ethernet and IPv4.
pub const ARP_PACKET_LEN: usize = 28;

const IPV4_PROTOCOL_UDP: u8 = 17;
const UDP_HEADER_LEN: usize = 8;

/// What a received frame is, as far as the fast path cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ingress<'a> {
    /// A RoCEv2 packet for us: the IPv4 packet, without Ethernet header and padding. Goes to
    /// OS A; smoltcp never sees it.
    Roce {
        /// The IPv4 packet.
        packet: &'a [u8],
        /// The sender's MAC and IPv4 address, to learn.
        source: (Ipv4Addr, [u8; 6]),
    },
    /// UDP to port 4791 for us, but malformed (bad checksum or lengths): dropped.
    RoceMalformed,
    /// An ARP packet (smoltcp sees it too).
    Arp(ArpInfo),
    /// Another IPv4 packet sent to our MAC (smoltcp's): its source may be learned.
    Ipv4 {
        /// The sender's MAC and IPv4 address.
        source: (Ipv4Addr, [u8; 6]),
    },
    /// Anything else: smoltcp decides.
    Other,
}

/// The fields of an Ethernet/IPv4 ARP packet the cache needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ArpInfo {
    /// Whether this is a reply (else a request).
    pub reply: bool,
    /// Sender MAC.
    pub sender_mac: [u8; 6],
    /// Sender IPv4 address.
    pub sender_ip: Ipv4Addr,
    /// Target IPv4 address.
    pub target_ip: Ipv4Addr,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

fn ipv4_at(bytes: &[u8], at: usize) -> Option<Ipv4Addr> {
    let quad: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(quad))
}

fn mac_at(bytes: &[u8], at: usize) -> Option<[u8; 6]> {
    bytes.get(at..at + 6)?.try_into().ok()
}

/// The Internet checksum of `bytes` (RFC 1071), folded and complemented.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether a MAC address is unicast (and not zero).
pub fn is_unicast_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

/// The parts of an IPv4 header the fast path checks.
struct Ipv4Header {
    header_len: usize,
    total_len: usize,
    fragmented: bool,
    protocol: u8,
    source: Ipv4Addr,
    destination: Ipv4Addr,
}

/// Reads an IPv4 header from `packet` (which may carry padding after `total_len`).
fn ipv4_header(packet: &[u8]) -> Option<Ipv4Header> {
    let first = *packet.first()?;
    let header_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header_len < 20 || packet.len() < header_len {
        return None;
    }
    let total_len = usize::from(be16(packet, 2)?);
    if total_len < header_len || total_len > packet.len() {
        return None;
    }
    let fragment = be16(packet, 6)?;
    Some(Ipv4Header {
        header_len,
        total_len,
        // More fragments, or a non-zero offset.
        fragmented: fragment & 0x3fff != 0,
        protocol: packet[9],
        source: ipv4_at(packet, 12)?,
        destination: ipv4_at(packet, 16)?,
    })
}

/// Classifies a received frame for a host with `mac` and `address`.
pub(crate) fn classify(frame: &[u8], mac: [u8; 6], address: Ipv4Addr) -> Ingress<'_> {
    let (Some(destination), Some(source_mac), Some(ethertype)) =
        (mac_at(frame, 0), mac_at(frame, 6), be16(frame, 12))
    else {
        return Ingress::Other;
    };
    let payload = frame.get(ETHERNET_HEADER_LEN..).unwrap_or_default();
    match ethertype {
        ETHERTYPE_ARP => parse_arp(payload).map_or(Ingress::Other, Ingress::Arp),
        ETHERTYPE_IPV4 if destination == mac => {
            let Some(header) = ipv4_header(payload) else {
                return Ingress::Other;
            };
            let source = (header.source, source_mac);
            if header.destination != address
                || header.protocol != IPV4_PROTOCOL_UDP
                || header.fragmented
            {
                return Ingress::Ipv4 { source };
            }
            let packet = &payload[..header.total_len];
            let udp = &packet[header.header_len..];
            if be16(udp, 2) != Some(ROCE_UDP_PORT) {
                return Ingress::Ipv4 { source };
            }
            let udp_len = be16(udp, 4).map_or(0, usize::from);
            if internet_checksum(&packet[..header.header_len]) != 0
                || udp_len < UDP_HEADER_LEN
                || udp_len != udp.len()
            {
                return Ingress::RoceMalformed;
            }
            Ingress::Roce { packet, source }
        }
        _ => Ingress::Other,
    }
}

fn parse_arp(payload: &[u8]) -> Option<ArpInfo> {
    let packet = ArpPacket::new_checked(payload).ok()?;
    match ArpRepr::parse(&packet).ok()? {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } => {
            let reply = match operation {
                ArpOperation::Reply => true,
                ArpOperation::Request => false,
                _ => return None,
            };
            Some(ArpInfo {
                reply,
                sender_mac: source_hardware_addr.0,
                sender_ip: source_protocol_addr,
                target_ip: target_protocol_addr,
            })
        }
        _ => None,
    }
}

/// Checks a RoCE packet OS A wants sent (see [`shm_ring::netmsg::Request::RoceTx`]): a whole,
/// unfragmented IPv4/UDP packet to port 4791 from `address`, no longer than `mtu`, with a good
/// header checksum and consistent lengths. Returns the destination.
pub fn check_roce_tx(packet: &[u8], address: Ipv4Addr, mtu: usize) -> Result<Ipv4Addr, ErrorCode> {
    if packet.len() > mtu {
        return Err(ErrorCode::TooLarge);
    }
    let header = ipv4_header(packet).ok_or(ErrorCode::BadPacket)?;
    let udp = packet
        .get(header.header_len..)
        .filter(|udp| udp.len() >= UDP_HEADER_LEN)
        .ok_or(ErrorCode::BadPacket)?;
    let well_formed = header.total_len == packet.len()
        && !header.fragmented
        && header.protocol == IPV4_PROTOCOL_UDP
        && header.source == address
        && be16(udp, 2) == Some(ROCE_UDP_PORT)
        && be16(udp, 4).map(usize::from) == Some(udp.len())
        && internet_checksum(&packet[..header.header_len]) == 0;
    if !well_formed {
        return Err(ErrorCode::BadPacket);
    }
    let destination = header.destination;
    if destination.is_unspecified()
        || destination.is_broadcast()
        || destination.is_multicast()
        || destination.is_loopback()
        || destination == address
    {
        return Err(ErrorCode::BadAddress);
    }
    Ok(destination)
}

/// Writes an Ethernet header into the first [`ETHERNET_HEADER_LEN`] bytes of `frame` (which
/// must be at least that long).
pub fn write_ethernet_header(
    frame: &mut [u8],
    destination: [u8; 6],
    source: [u8; 6],
    ethertype: u16,
) {
    if let Some(header) = frame.get_mut(..ETHERNET_HEADER_LEN) {
        header[..6].copy_from_slice(&destination);
        header[6..12].copy_from_slice(&source);
        header[12..].copy_from_slice(&ethertype.to_be_bytes());
    }
}

/// Writes a broadcast ARP request "who has `target`, tell `address`" into `frame`; returns its
/// length (0 if `frame` is too short).
pub fn write_arp_request(
    frame: &mut [u8],
    mac: [u8; 6],
    address: Ipv4Addr,
    target: Ipv4Addr,
) -> usize {
    let len = ETHERNET_HEADER_LEN + ARP_PACKET_LEN;
    let Some(frame) = frame.get_mut(..len) else {
        return 0;
    };
    write_ethernet_header(frame, BROADCAST_MAC, mac, ETHERTYPE_ARP);
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: address,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    repr.emit(&mut ArpPacket::new_unchecked(
        &mut frame[ETHERNET_HEADER_LEN..],
    ));
    len
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    pub(crate) const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    pub(crate) const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    pub(crate) const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A RoCE-like IPv4/UDP packet from `source` to `destination` with `payload`.
    pub(crate) fn roce_packet(source: Ipv4Addr, destination: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut packet = vec![0u8; total];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        packet[6] = 0x40; // don't fragment
        packet[8] = 64;
        packet[9] = 17;
        packet[12..16].copy_from_slice(&source.octets());
        packet[16..20].copy_from_slice(&destination.octets());
        let checksum = internet_checksum(&packet[..20]);
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
        packet[20..22].copy_from_slice(&0xc000u16.to_be_bytes());
        packet[22..24].copy_from_slice(&ROCE_UDP_PORT.to_be_bytes());
        packet[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        packet[28..].copy_from_slice(payload);
        packet
    }

    fn framed(destination: [u8; 6], source: [u8; 6], packet: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN];
        write_ethernet_header(&mut frame, destination, source, ETHERTYPE_IPV4);
        frame.extend_from_slice(packet);
        frame
    }

    #[test]
    fn checksum_of_a_known_header() {
        // The example of RFC 1071's section 3 style: a header that checks to zero.
        let packet = roce_packet(IP_A, IP_B, b"x");
        assert_eq!(internet_checksum(&packet[..20]), 0);
        assert_eq!(internet_checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn roce_frames_for_us_are_recognised_and_trimmed() {
        let packet = roce_packet(IP_A, IP_B, b"hello");
        let mut frame = framed(MAC_B, MAC_A, &packet);
        frame.resize(60, 0); // Ethernet padding
        assert_eq!(
            classify(&frame, MAC_B, IP_B),
            Ingress::Roce {
                packet: &packet,
                source: (IP_A, MAC_A)
            }
        );
        // Another MAC, another IP, another port, a fragment: not ours to take.
        assert_eq!(classify(&frame, MAC_A, IP_B), Ingress::Other);
        assert!(matches!(
            classify(&frame, MAC_B, IP_A),
            Ingress::Ipv4 { .. }
        ));
        let mut other_port = packet.clone();
        other_port[23] ^= 1;
        assert!(matches!(
            classify(&framed(MAC_B, MAC_A, &other_port), MAC_B, IP_B),
            Ingress::Ipv4 { .. }
        ));
        let mut fragment = packet.clone();
        fragment[6] = 0x20;
        assert!(matches!(
            classify(&framed(MAC_B, MAC_A, &fragment), MAC_B, IP_B),
            Ingress::Ipv4 { .. }
        ));
        let mut bad_checksum = packet.clone();
        bad_checksum[8] = 1;
        assert_eq!(
            classify(&framed(MAC_B, MAC_A, &bad_checksum), MAC_B, IP_B),
            Ingress::RoceMalformed
        );
    }

    #[test]
    fn truncated_frames_never_panic() {
        let packet = roce_packet(IP_A, IP_B, b"hello");
        let frame = framed(MAC_B, MAC_A, &packet);
        for len in 0..frame.len() {
            let _ = classify(&frame[..len], MAC_B, IP_B);
            let _ = check_roce_tx(&packet[..len.min(packet.len())], IP_A, 1500);
        }
    }

    #[test]
    fn roce_tx_checks() {
        let packet = roce_packet(IP_A, IP_B, &[7; 100]);
        assert_eq!(check_roce_tx(&packet, IP_A, 1500), Ok(IP_B));
        assert_eq!(
            check_roce_tx(&packet, IP_B, 1500),
            Err(ErrorCode::BadPacket)
        );
        assert_eq!(check_roce_tx(&packet, IP_A, 100), Err(ErrorCode::TooLarge));
        let mut longer = packet.clone();
        longer.push(0);
        assert_eq!(
            check_roce_tx(&longer, IP_A, 1500),
            Err(ErrorCode::BadPacket)
        );
        let mut tcp = packet.clone();
        tcp[9] = 6;
        assert_eq!(check_roce_tx(&tcp, IP_A, 1500), Err(ErrorCode::BadPacket));
        let to_self = roce_packet(IP_A, IP_A, b"");
        assert_eq!(
            check_roce_tx(&to_self, IP_A, 1500),
            Err(ErrorCode::BadAddress)
        );
        let broadcast = roce_packet(IP_A, Ipv4Addr::BROADCAST, b"");
        assert_eq!(
            check_roce_tx(&broadcast, IP_A, 1500),
            Err(ErrorCode::BadAddress)
        );
    }

    #[test]
    fn arp_request_round_trip() {
        let mut frame = [0u8; 64];
        let len = write_arp_request(&mut frame, MAC_A, IP_A, IP_B);
        assert_eq!(len, 42);
        assert_eq!(&frame[..6], &BROADCAST_MAC);
        assert_eq!(
            classify(&frame[..len], MAC_B, IP_B),
            Ingress::Arp(ArpInfo {
                reply: false,
                sender_mac: MAC_A,
                sender_ip: IP_A,
                target_ip: IP_B
            })
        );
        assert_eq!(write_arp_request(&mut frame[..41], MAC_A, IP_A, IP_B), 0);
    }
}
