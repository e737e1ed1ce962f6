//! The RoCEv2 invariant CRC (ICRC): the 4-byte trailer of every IB packet.
//!
//! # What it is
//!
//! The ICRC is CRC-32 with the Ethernet/zlib parameters (polynomial `0x04C11DB7` processed
//! bit-reflected, i.e. `0xEDB88320` LSB-first; initial value `0xFFFFFFFF`; final XOR
//! `0xFFFFFFFF`) over this byte string (IBTA vol. 1 annex A17, RoCEv2):
//!
//! 1. 8 bytes of `0xFF`, standing in for the InfiniBand LRH that RoCE does not carry;
//! 2. the IP header, with the fields a router may change replaced by ones:
//!    * IPv4 (20 bytes, no options): traffic class (DSCP+ECN, byte 1) = `0xFF`,
//!      TTL (byte 8) = `0xFF`, header checksum (bytes 10-11) = `0xFFFF`;
//!    * IPv6 (40 bytes): traffic class and flow label = all ones (byte 0 becomes `0x6F`,
//!      bytes 1-3 `0xFF`), hop limit (byte 7) = `0xFF`;
//! 3. the UDP header, with its checksum (bytes 6-7) = `0xFFFF`;
//! 4. the BTH, with its byte 4 (FECN, BECN and the 6 reserved bits before the destination
//!    QP) = `0xFF`;
//! 5. everything after the BTH up to the ICRC: extension headers, payload, pad bytes.
//!
//! Everything else is covered as sent: IP version/IHL, total length, identification, flags and
//! fragment offset, protocol, addresses; UDP ports and length; every other BTH bit (opcode, SE,
//! M, pad count, TVer, P_Key, destination QP, AckReq, Resv7, PSN). Not covered: the Ethernet
//! header and FCS, anything after the IP total length (Ethernet padding), the ICRC itself.
//!
//! On the wire the 32-bit result is sent **least significant byte first** (like the Ethernet
//! FCS): the bytes are `icrc.to_le_bytes()`.
//!
//! # Sources checked
//!
//! * Linux `drivers/infiniband/sw/rxe/rxe_icrc.c`: `rxe_icrc_hdr` starts `crc32_le` (no pre- or
//!   post-inversion) from `0xdebb20e3`, which its comment calls "the result of computing a CRC
//!   with a seed of 0xffffffff and 8 bytes of 0xff representing a masked LRH" ([`LRH_SEED`]
//!   equals it: see the tests); copies IP+UDP header and BTH to a scratch buffer and sets
//!   `ip4h->ttl = 0xff`, `ip4h->check = CSUM_MANGLED_0` (`0xffff`), `ip4h->tos = 0xff` (IPv6:
//!   `flow_lbl` = `0xff` x3, `priority = 0xf`, `hop_limit = 0xff`), `udph->check =
//!   CSUM_MANGLED_0`, and `bth->qpn |= cpu_to_be32(~BTH_QPN_MASK)` (byte 4 of the BTH = `0xff`);
//!   then runs over the rest of the headers and the payload plus pad. `rxe_icrc_generate`
//!   stores `~crc` as a host-order `u32` at the end of the packet, i.e. little-endian on the
//!   x86 and arm64 hosts rxe runs on, and `rxe_icrc_check` compares the same way.
//! * scapy `scapy/contrib/roce.py`, `BTH.compute_icrc`: zlib `crc32` over `b'\xff' * 8` +
//!   the IP/UDP/BTH/payload with `tos`, `ttl`, `chksum`, UDP `chksum`, `fecn`, `becn`, `resv6`
//!   forced to ones, and `pack_icrc` = `struct.pack("!I", icrc)[::-1]` (little-endian).
//!   `tests/vectors/scapy_vectors.txt` holds packets built by scapy, and the tests check this
//!   module against every one.
//!
//! # Computing it while copying
//!
//! [`Icrc`] is incremental: start it from the headers with [`Icrc::begin_ipv4`], feed the
//! extension headers, the payload and the pad with [`Icrc::update`] (or copy the payload into
//! the packet and fold it into the CRC in one pass with [`Icrc::update_copy`]), then
//! [`Icrc::finish`]. The IP and UDP headers must be final, apart from the masked fields, when
//! [`Icrc::begin_ipv4`] reads them: whoever builds the packet decides total length,
//! identification, flags, addresses and ports, and anyone forwarding it may change only TOS,
//! TTL and the checksums.
//!
//! # Speed
//!
//! Table-driven CRC, slicing by 16 (16 tables of 256 words, 16 KiB, built at compile time),
//! plain integer code: no SIMD or carry-less multiply, since the guests are built without SSE.

use crate::wire::{Error, bth, ipv4, udp};

/// The reflected CRC-32 polynomial.
const POLYNOMIAL: u32 = 0xedb8_8320;

/// Bytes processed per step of the sliced loop.
const SLICE: usize = 16;

/// Table `k` maps a byte to its CRC contribution when followed by `k` zero bytes.
static TABLES: [[u32; 256]; SLICE] = make_tables();

const fn make_tables() -> [[u32; 256]; SLICE] {
    let mut tables = [[0u32; 256]; SLICE];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLYNOMIAL
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut table = 1;
    while table < SLICE {
        let mut byte = 0;
        while byte < 256 {
            let previous = tables[table - 1][byte];
            tables[table][byte] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            byte += 1;
        }
        table += 1;
    }
    tables
}

/// Advances the raw (uninverted) CRC register over `data`, like Linux's `crc32_le`.
///
/// With the `std` feature (host builds), runs of 64 bytes or more go to `crc32fast`, which
/// folds with PCLMULQDQ where the CPU has it; the guests, built without SIMD, use the tables.
fn update_raw(crc: u32, data: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    if data.len() >= 64 {
        let mut hasher = crc32fast::Hasher::new_with_initial(!crc);
        hasher.update(data);
        return !hasher.finalize();
    }
    update_tables(crc, data)
}

/// [`update_raw`] through the tables: 16 bytes per step.
fn update_tables(mut crc: u32, data: &[u8]) -> u32 {
    let (blocks, tail) = data.as_chunks::<SLICE>();
    for block in blocks {
        let low = crc ^ u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        let t = &TABLES;
        crc = t[15][(low & 0xff) as usize]
            ^ t[14][((low >> 8) & 0xff) as usize]
            ^ t[13][((low >> 16) & 0xff) as usize]
            ^ t[12][(low >> 24) as usize]
            ^ t[11][usize::from(block[4])]
            ^ t[10][usize::from(block[5])]
            ^ t[9][usize::from(block[6])]
            ^ t[8][usize::from(block[7])]
            ^ t[7][usize::from(block[8])]
            ^ t[6][usize::from(block[9])]
            ^ t[5][usize::from(block[10])]
            ^ t[4][usize::from(block[11])]
            ^ t[3][usize::from(block[12])]
            ^ t[2][usize::from(block[13])]
            ^ t[1][usize::from(block[14])]
            ^ t[0][usize::from(block[15])];
    }
    update_bytewise(crc, tail)
}

/// One byte at a time; also usable in `const` context.
const fn update_bytewise(mut crc: u32, data: &[u8]) -> u32 {
    let mut index = 0;
    while index < data.len() {
        crc = (crc >> 8) ^ TABLES[0][((crc ^ data[index] as u32) & 0xff) as usize];
        index += 1;
    }
    crc
}

/// The CRC register after the initial `0xFFFFFFFF` and the 8 bytes of `0xFF` that stand in for
/// the LRH: `0xDEBB20E3`, the seed rxe starts from.
pub const LRH_SEED: u32 = update_bytewise(0xffff_ffff, &[0xff; 8]);

/// Bytes of the masked headers over IPv4 (IP, UDP, BTH).
#[cfg(feature = "std")]
const IPV4_HEADERS: usize = ipv4::HEADER_LEN + udp::HEADER_LEN + bth::HEADER_LEN;

/// The block the masked headers are fed in (see [`Icrc::begin_ipv4`]): room for them over
/// IPv6, and the size `update_raw` folds fastest.
const HEADER_BLOCK: usize = 64;

const _: () = assert!(IPV6_HEADER_LEN + udp::HEADER_LEN + bth::HEADER_LEN <= HEADER_BLOCK);

/// What `LRH_SEED` contributes to the register over the masked headers of an IPv4 packet.
#[cfg(feature = "std")]
const SEED_OVER_IPV4_HEADERS: u32 = update_bytewise(LRH_SEED, &[0; IPV4_HEADERS]);

/// What `LRH_SEED` contributes over those of an IPv6 packet.
#[cfg(feature = "std")]
const SEED_OVER_IPV6_HEADERS: u32 = update_bytewise(
    LRH_SEED,
    &[0; IPV6_HEADER_LEN + udp::HEADER_LEN + bth::HEADER_LEN],
);

/// Plain CRC-32 (Ethernet/zlib) of `data`, without any RoCE pseudo-header.
pub fn crc32(data: &[u8]) -> u32 {
    !update_raw(0xffff_ffff, data)
}

/// The length of the ICRC trailer.
pub const ICRC_LEN: usize = crate::wire::packet::ICRC_LEN;

/// Length of an IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// An ICRC being computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icrc {
    /// The raw CRC register (not inverted).
    register: u32,
    /// The NIC computes this ICRC ([`Icrc::offloaded`]): nothing is fed to the register.
    offloaded: bool,
}

impl Icrc {
    /// Starts the ICRC of an IPv4 packet from its IPv4 header (20 bytes, no options), UDP
    /// header and BTH, masking the fields listed in the module docs.
    pub fn begin_ipv4(
        ip_header: &[u8; ipv4::HEADER_LEN],
        udp_header: &[u8; udp::HEADER_LEN],
        bth: &[u8; bth::HEADER_LEN],
    ) -> Self {
        let mut masked_ip = *ip_header;
        for offset in ipv4::ICRC_MASKED_BYTES {
            masked_ip[offset] = 0xff;
        }
        Self::begin_masked(&masked_ip, udp_header, bth)
    }

    /// Starts the ICRC of an IPv6 packet from its IPv6 header (40 bytes, UDP as next header),
    /// UDP header and BTH, masking the fields listed in the module docs.
    pub fn begin_ipv6(
        ip_header: &[u8; IPV6_HEADER_LEN],
        udp_header: &[u8; udp::HEADER_LEN],
        bth: &[u8; bth::HEADER_LEN],
    ) -> Self {
        let mut masked_ip = *ip_header;
        masked_ip[0] |= 0x0f;
        masked_ip[1..4].fill(0xff);
        masked_ip[7] = 0xff;
        Self::begin_masked(&masked_ip, udp_header, bth)
    }

    /// Starts the ICRC from header slices: an IPv4 header of 20 bytes or an IPv6 header of 40,
    /// the 8-byte UDP header and the 12-byte BTH. [`Error::Unsupported`] for an IPv4 header
    /// with options, [`Error::Malformed`] for any other length.
    pub fn begin(ip_header: &[u8], udp_header: &[u8], bth: &[u8]) -> Result<Self, Error> {
        let udp_header = udp_header.try_into().map_err(|_| Error::Malformed)?;
        let bth = bth.try_into().map_err(|_| Error::Malformed)?;
        match (ip_header.first().map(|byte| byte >> 4), ip_header.len()) {
            (Some(4), ipv4::HEADER_LEN) => {
                let ip_header = ip_header.try_into().map_err(|_| Error::Malformed)?;
                Ok(Self::begin_ipv4(ip_header, udp_header, bth))
            }
            (Some(4), length) if length > ipv4::HEADER_LEN => Err(Error::Unsupported),
            (Some(6), IPV6_HEADER_LEN) => {
                let ip_header = ip_header.try_into().map_err(|_| Error::Malformed)?;
                Ok(Self::begin_ipv6(ip_header, udp_header, bth))
            }
            _ => Err(Error::Malformed),
        }
    }

    /// An ICRC left to the NIC (a device that computes the ICRC of every RoCEv2 packet it
    /// sends, as RoCE hardware does): [`Icrc::update_copy`] only copies, [`Icrc::update`] does
    /// nothing, and [`Icrc::finish`] gives 0, the placeholder the NIC overwrites.
    pub const fn offloaded() -> Self {
        Icrc {
            register: 0,
            offloaded: true,
        }
    }

    /// Whether this ICRC is left to the NIC ([`Icrc::offloaded`]).
    pub const fn is_offloaded(&self) -> bool {
        self.offloaded
    }

    fn begin_masked(
        masked_ip: &[u8],
        udp_header: &[u8; udp::HEADER_LEN],
        bth: &[u8; bth::HEADER_LEN],
    ) -> Self {
        let mut masked_udp = *udp_header;
        for offset in udp::ICRC_MASKED_BYTES {
            masked_udp[offset] = 0xff;
        }
        let masked_bth = bth::icrc_masked(bth);
        // The headers as one run, at the end of a 64-byte block of zeros.
        let mut block = [0u8; HEADER_BLOCK];
        let len = masked_ip.len() + udp::HEADER_LEN + bth::HEADER_LEN;
        let (_, headers) = block.split_at_mut(HEADER_BLOCK - len);
        let (ip, rest) = headers.split_at_mut(masked_ip.len());
        ip.copy_from_slice(masked_ip);
        rest[..udp::HEADER_LEN].copy_from_slice(&masked_udp);
        rest[udp::HEADER_LEN..].copy_from_slice(&masked_bth);
        // Host builds feed the whole block, from a register of 0, to `update_raw`'s fastest
        // path (64 bytes and more): zeros fed to a register of 0 leave it 0, and the register
        // is linear in its start value, so adding (XOR) what `LRH_SEED` alone contributes over
        // the headers' length gives the register after the headers from `LRH_SEED`. The
        // guests' tables take the headers alone.
        #[cfg(feature = "std")]
        let register = update_raw(0, &block)
            ^ match len {
                IPV4_HEADERS => SEED_OVER_IPV4_HEADERS,
                _ => SEED_OVER_IPV6_HEADERS,
            };
        #[cfg(not(feature = "std"))]
        let register = update_raw(LRH_SEED, &block[HEADER_BLOCK - len..]);
        Icrc {
            register,
            offloaded: false,
        }
    }

    /// Feeds the next bytes after the BTH (extension headers, payload, pad).
    pub fn update(&mut self, data: &[u8]) {
        if !self.offloaded {
            self.register = update_raw(self.register, data);
        }
    }

    /// Copies `source` into `destination` and feeds it to the CRC, a cache-sized block at a
    /// time, so that the payload is read from memory once.
    ///
    /// # Panics
    /// If the two slices differ in length (like `copy_from_slice`).
    pub fn update_copy(&mut self, destination: &mut [u8], source: &[u8]) {
        assert_eq!(
            destination.len(),
            source.len(),
            "update_copy: destination and source differ in length"
        );
        if self.offloaded {
            destination.copy_from_slice(source);
            return;
        }
        const BLOCK: usize = 4096;
        for (to, from) in destination.chunks_mut(BLOCK).zip(source.chunks(BLOCK)) {
            to.copy_from_slice(from);
            self.register = update_raw(self.register, to);
        }
    }

    /// The ICRC value; send it as `finish().to_le_bytes()`. 0 for an ICRC left to the NIC.
    pub const fn finish(self) -> u32 {
        if self.offloaded { 0 } else { !self.register }
    }
}

/// Where the UDP datagram of an IP packet lies: `(udp_start, udp_end)`.
fn locate_udp(packet: &[u8]) -> Result<(usize, usize), Error> {
    let first = *packet.first().ok_or(Error::Truncated)?;
    let (udp_start, ip_end) = match first >> 4 {
        4 => {
            let ip = ipv4::Packet::new_checked(packet)?;
            if ip.header_len() != ipv4::HEADER_LEN {
                return Err(Error::Unsupported);
            }
            if ip.protocol() != ipv4::PROTOCOL_UDP {
                return Err(Error::Unsupported);
            }
            (ipv4::HEADER_LEN, usize::from(ip.total_len()))
        }
        6 => {
            if packet.len() < IPV6_HEADER_LEN {
                return Err(Error::Truncated);
            }
            if packet[6] != ipv4::PROTOCOL_UDP {
                return Err(Error::Unsupported);
            }
            let payload_len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let ip_end = IPV6_HEADER_LEN + payload_len;
            if packet.len() < ip_end {
                return Err(Error::Truncated);
            }
            (IPV6_HEADER_LEN, ip_end)
        }
        _ => return Err(Error::Malformed),
    };
    let udp = udp::Packet::new_checked(&packet[udp_start..ip_end])?;
    let udp_end = udp_start + usize::from(udp.len());
    if udp_end - udp_start < udp::HEADER_LEN + crate::wire::packet::MIN_LEN {
        return Err(Error::Truncated);
    }
    Ok((udp_start, udp_end))
}

/// Computes the ICRC of a whole IPv4 (no options) or IPv6 packet carrying UDP and an IB
/// packet, over the bytes up to the last four of the UDP datagram. Bytes after the IP total
/// length are ignored. Does not check ports or IP checksums.
pub fn compute(packet: &[u8]) -> Result<u32, Error> {
    let (udp_start, udp_end) = locate_udp(packet)?;
    let bth_start = udp_start + udp::HEADER_LEN;
    let after_bth = bth_start + bth::HEADER_LEN;
    let mut icrc = Icrc::begin(
        &packet[..udp_start],
        &packet[udp_start..bth_start],
        &packet[bth_start..after_bth],
    )?;
    icrc.update(&packet[after_bth..udp_end - ICRC_LEN]);
    Ok(icrc.finish())
}

/// Checks the ICRC at the end of the UDP datagram of `packet`; [`Error::BadIcrc`] if it is
/// wrong.
pub fn verify(packet: &[u8]) -> Result<(), Error> {
    let (_, udp_end) = locate_udp(packet)?;
    let expected = compute(packet)?;
    let sent = &packet[udp_end - ICRC_LEN..udp_end];
    if sent == expected.to_le_bytes() {
        Ok(())
    } else {
        Err(Error::BadIcrc)
    }
}

/// Computes the ICRC of `packet` and writes it into the last four bytes of its UDP
/// datagram; returns it.
pub fn fill(packet: &mut [u8]) -> Result<u32, Error> {
    let (_, udp_end) = locate_udp(packet)?;
    let icrc = compute(packet)?;
    packet[udp_end - ICRC_LEN..udp_end].copy_from_slice(&icrc.to_le_bytes());
    Ok(icrc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time reference CRC-32.
    fn reference_crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for byte in data {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLYNOMIAL
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn sliced_matches_reference_at_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for length in 0..data.len() {
            for start in 0..3.min(data.len() - length) {
                let slice = &data[start..start + length];
                assert_eq!(crc32(slice), reference_crc32(slice), "length {length}");
            }
        }
    }

    #[test]
    fn lrh_seed_is_rxe_seed() {
        assert_eq!(LRH_SEED, 0xdebb_20e3);
    }

    #[test]
    fn update_copy_matches_update() {
        let source: Vec<u8> = (0..5000u32).map(|i| (i ^ (i >> 3)) as u8).collect();
        let mut destination = vec![0u8; source.len()];
        let mut copying = Icrc {
            register: LRH_SEED,
            offloaded: false,
        };
        copying.update_copy(&mut destination, &source);
        let mut plain = Icrc {
            register: LRH_SEED,
            offloaded: false,
        };
        plain.update(&source);
        assert_eq!(destination, source);
        assert_eq!(copying, plain);
    }

    #[test]
    fn begin_checks_header_lengths() {
        let ip = [0x45u8; 20];
        let udp = [0u8; 8];
        let bth = [0u8; 12];
        assert_eq!(
            Icrc::begin(&ip, &udp, &bth),
            Ok(Icrc::begin_ipv4(&ip, &udp, &bth))
        );
        assert_eq!(
            Icrc::begin(&[0x46; 24], &udp, &bth),
            Err(Error::Unsupported)
        );
        assert_eq!(Icrc::begin(&ip[..19], &udp, &bth), Err(Error::Malformed));
        assert_eq!(Icrc::begin(&ip, &udp[..7], &bth), Err(Error::Malformed));
        assert_eq!(Icrc::begin(&ip, &udp, &bth[..11]), Err(Error::Malformed));
        let ip6 = [0x60u8; 40];
        assert_eq!(
            Icrc::begin(&ip6, &udp, &bth),
            Ok(Icrc::begin_ipv6(&ip6, &udp, &bth))
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..777u32).map(|i| i as u8).collect();
        let mut icrc = Icrc {
            register: 0xffff_ffff,
            offloaded: false,
        };
        for piece in data.chunks(13) {
            icrc.update(piece);
        }
        assert_eq!(icrc.finish(), crc32(&data));
    }

    #[test]
    fn an_offloaded_icrc_copies_and_leaves_a_zero_placeholder() {
        let source: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut destination = vec![0u8; source.len()];
        let mut icrc = Icrc::offloaded();
        icrc.update(&source[..100]);
        icrc.update_copy(&mut destination, &source);
        assert_eq!(destination, source);
        assert!(icrc.is_offloaded());
        assert_eq!(icrc.finish(), 0);
        assert!(!Icrc::begin_ipv4(&[0x45; 20], &[0; 8], &[0; 12]).is_offloaded());
    }
}
