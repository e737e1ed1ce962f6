//! Wire formats of RoCEv2: the InfiniBand transport headers, the whole IB packet, and the
//! IPv4/UDP encapsulation around it.
//!
//! A RoCEv2 packet on an IPv4 network is
//!
//! ```text
//! +------+-----+-----+----------------------+---------+-----+------+
//! | IPv4 | UDP | BTH | extension headers    | payload | pad | ICRC |
//! |  20  |  8  | 12  | (implied by opcode)  |         | 0-3 |  4   |
//! +------+-----+-----+----------------------+---------+-----+------+
//!              \__________ IB packet (the UDP payload) ____________/
//! ```
//!
//! with UDP destination port [`ROCEV2_UDP_PORT`] (4791). The opcode in the BTH decides which
//! extension headers follow it ([`opcode`]); the BTH pad count says how many pad bytes follow
//! the payload; the ICRC ([`crate::icrc`]) covers the invariant parts of everything from the
//! IP header on.
//!
//! One module per header, each in the same shape (after smoltcp's `wire`):
//!
//! * `Header`: the header as a `#[repr(C)]` [zerocopy] struct of network-endian integers, for
//!   code that wants to split a buffer with `ref_from_prefix` and read whole headers.
//! * `Packet<T: AsRef<[u8]>>`: a view over a byte buffer with field getters (on `AsRef<[u8]>`)
//!   and setters (on `AsMut<[u8]>`), `new_unchecked`, `new_checked` and `check_len`. The byte
//!   offsets live in a private `mod field` and are checked at compile time against `Header`.
//! * `Repr`: the header's meaning as plain Rust values, with `parse`, `emit` and `buffer_len`.
//!
//! | module | header | length |
//! |---|---|---|
//! | [`bth`] | Base Transport Header | 12 |
//! | [`deth`] | Datagram ETH (UD only) | 8 |
//! | [`reth`] | RDMA ETH | 16 |
//! | [`aeth`] | ACK ETH | 4 |
//! | [`atomic_eth`] | Atomic ETH | 28 |
//! | [`atomic_ack_eth`] | Atomic Acknowledge ETH | 8 |
//! | [`immdt`] | Immediate Data | 4 |
//! | [`ieth`] | Invalidate ETH | 4 |
//! | [`packet`] | a whole IB packet: BTH, extension headers, payload, pad, ICRC | |
//! | [`ipv4`], [`udp`] | the minimal encapsulation headers RoCEv2 needs | 20, 8 |
//! | [`rocev2`] | a whole IPv4/UDP/IB packet | |
//!
//! # Panic contract
//!
//! Once `check_len()` has returned `Ok` for a view (`new_checked` calls it), **no getter, setter
//! or sub-view of that view panics**, whatever the bytes in the buffer: every value a field
//! can hold is representable (unknown opcodes become [`Opcode::Unknown`], unknown NAK codes
//! [`aeth::NakCode::Unknown`], and so on). A view made with `new_unchecked` over a buffer that is
//! too short may panic on access; that is a bug in the caller, never a reaction to input.
//!
//! `Repr::parse` calls `check_len` itself and reports every problem as an [`Error`]. The header
//! `Repr::emit` methods write into a view whose buffer is at least `Repr::buffer_len()` bytes
//! long and panic otherwise (a sizing bug in the caller). Emitting a whole packet
//! ([`RoceRepr::emit`], [`Rocev2Repr::emit`]) returns an [`Error`] instead, because there the
//! required length depends on the values being emitted.
//!
//! Multi-bit fields narrower than their Rust type (24-bit QPNs and PSNs, the 2-bit pad count,
//! 5-bit AETH values, ...) are masked to their width when written.

/// Defines `Packet<T>`, a checked view over a buffer, in a wire module that defines the view's
/// `check_len` itself: `new_unchecked`, `new_checked` (which calls `check_len`) and
/// `into_inner`. The argument is the view's doc line.
macro_rules! checked_view {
    ($doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Packet<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> Packet<T> {
            /// A view over `buffer` without checking it.
            pub const fn new_unchecked(buffer: T) -> Self {
                Packet { buffer }
            }

            /// A view over `buffer`, checked with [`Packet::check_len`].
            pub fn new_checked(buffer: T) -> Result<Self, $crate::wire::Error> {
                let packet = Self::new_unchecked(buffer);
                packet.check_len()?;
                Ok(packet)
            }

            /// The underlying buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

/// Defines `Packet<T>`, the checked view of a fixed-size header at the start of a buffer, in a
/// header module that has `Header` (its zerocopy struct) and `HEADER_LEN`: the methods of
/// `checked_view!`, and `check_len`, `header` and `header_mut`. The module adds the field
/// accessors. Arguments: the view's doc line, and the header's name for `check_len`'s.
macro_rules! fixed_header_view {
    ($doc:literal, $name:literal) => {
        checked_view!($doc);

        impl<T: AsRef<[u8]>> Packet<T> {
            #[doc = concat!("Checks that the buffer holds a whole ", $name, "; after that no accessor panics.")]
            pub fn check_len(&self) -> Result<(), $crate::wire::Error> {
                if self.buffer.as_ref().len() < HEADER_LEN {
                    Err($crate::wire::Error::Truncated)
                } else {
                    Ok(())
                }
            }

            /// The header as a zerocopy struct.
            pub fn header(&self) -> &Header {
                $crate::wire::header_ref(self.buffer.as_ref())
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
            /// The header as a mutable zerocopy struct.
            pub fn header_mut(&mut self) -> &mut Header {
                $crate::wire::header_mut(self.buffer.as_mut())
            }
        }
    };
}

pub mod aeth;
pub mod atomic_ack_eth;
pub mod atomic_eth;
pub mod bth;
pub mod deth;
pub mod ieth;
pub mod immdt;
pub mod ipv4;
pub mod opcode;
pub mod packet;
pub mod reth;
pub mod rocev2;
pub mod udp;

pub use self::aeth::{
    Header as AethHeader, NakCode, Packet as AethPacket, Repr as AethRepr, Syndrome,
};
pub use self::atomic_ack_eth::{
    Header as AtomicAckEthHeader, Packet as AtomicAckEthPacket, Repr as AtomicAckEthRepr,
};
pub use self::atomic_eth::{
    Header as AtomicEthHeader, Packet as AtomicEthPacket, Repr as AtomicEthRepr,
};
pub use self::bth::{Header as BthHeader, Packet as BthPacket, Repr as BthRepr};
pub use self::deth::{Header as DethHeader, Packet as DethPacket, Repr as DethRepr};
pub use self::ieth::{Header as IethHeader, Packet as IethPacket, Repr as IethRepr};
pub use self::immdt::{Header as ImmDtHeader, Packet as ImmDtPacket, Repr as ImmDtRepr};
pub use self::ipv4::{Header as Ipv4Header, Packet as Ipv4Packet, Repr as Ipv4Repr};
pub use self::opcode::{ExtHeader, ExtHeaders, Opcode, OpcodeInfo, Operation, Position, Transport};
pub use self::packet::{Packet as RocePacket, Repr as RoceRepr};
pub use self::reth::{Header as RethHeader, Packet as RethPacket, Repr as RethRepr};
pub use self::rocev2::{Packet as Rocev2Packet, ROCEV2_UDP_PORT, Repr as Rocev2Repr};
pub use self::udp::{Header as UdpHeader, Packet as UdpPacket, Repr as UdpRepr};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A range of byte offsets of one field inside a header.
pub(crate) type Field = core::ops::Range<usize>;

/// Why a buffer could not be parsed or a packet could not be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than a header, or than a length field says.
    #[error("buffer too short")]
    Truncated,
    /// A field holds a value the format forbids, or lengths disagree with each other.
    #[error("malformed packet")]
    Malformed,
    /// The IPv4 header checksum or a non-zero UDP checksum is wrong.
    #[error("bad checksum")]
    BadChecksum,
    /// The ICRC does not match the packet.
    #[error("bad ICRC")]
    BadIcrc,
    /// A well-formed packet this crate does not handle: IPv4 options or fragments, a protocol
    /// other than UDP, a UDP port other than 4791.
    #[error("unsupported packet")]
    Unsupported,
}

/// A typed reference to the header at the start of `bytes`.
///
/// # Panics
/// If `bytes` is shorter than `H`: views call this only after `check_len` has succeeded (see
/// the panic contract above).
pub(crate) fn header_ref<H: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> &H {
    match H::ref_from_prefix(bytes) {
        Ok((header, _rest)) => header,
        Err(_) => panic!("header view over a short buffer: call check_len() first"),
    }
}

/// A typed mutable reference to the header at the start of `bytes`.
///
/// # Panics
/// If `bytes` is shorter than `H` (see [`header_ref`]).
pub(crate) fn header_mut<H: FromBytes + IntoBytes + KnownLayout>(bytes: &mut [u8]) -> &mut H {
    match H::mut_from_prefix(bytes) {
        Ok((header, _rest)) => header,
        Err(_) => panic!("header view over a short buffer: call check_len() first"),
    }
}

/// Reads a 24-bit big-endian value.
pub(crate) const fn read_u24(bytes: [u8; 3]) -> u32 {
    u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]])
}

/// The low 24 bits of `value` as 3 big-endian bytes.
pub(crate) const fn write_u24(value: u32) -> [u8; 3] {
    let [_, a, b, c] = value.to_be_bytes();
    [a, b, c]
}

/// Mask of a 24-bit field (QPN, PSN, MSN).
pub const U24_MASK: u32 = 0x00ff_ffff;
