//! ACK Extended Transport Header (AETH, 4 bytes): the responder's verdict.
//!
//! ```text
//! +---------------+-----------------------------------------------+
//! |   Syndrome    |         Message Sequence Number (24 bits)     |
//! +---------------+-----------------------------------------------+
//! ```
//!
//! The syndrome (IBTA vol. 1, 9.7.5.1) is `0 tt vvvvv`: bit 7 is reserved (0), bits 6-5 the
//! type, bits 4-0 a value whose meaning depends on the type:
//!
//! | type | meaning | value |
//! |---|---|---|
//! | `00` | ACK | credit count ([`CREDIT_COUNT_INVALID`] = end-to-end credits not used) |
//! | `01` | RNR NAK | the RNR timer ([`rnr_timer_micros`]) |
//! | `10` | reserved | |
//! | `11` | NAK | [`NakCode`] |
//!
//! Carried by Acknowledge, ATOMIC Acknowledge and RDMA READ Response First/Last/Only.

use super::{Error, U24_MASK, read_u24, write_u24};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the AETH in bytes.
pub const HEADER_LEN: usize = 4;

/// The ACK credit count saying that end-to-end credits are not in use (rxe always sends it).
pub const CREDIT_COUNT_INVALID: u8 = 0x1f;

const TYPE_MASK: u8 = 0xe0;
const VALUE_MASK: u8 = 0x1f;
const TYPE_ACK: u8 = 0x00;
const TYPE_RNR_NAK: u8 = 0x20;
const TYPE_NAK: u8 = 0x60;

/// The NAK code of a NAK syndrome (its low five bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NakCode {
    /// PSN sequence error (0): the responder expected another PSN; the requester goes back to
    /// the PSN in the BTH.
    PsnSequenceError,
    /// Invalid request (1).
    InvalidRequest,
    /// Remote access error (2): R_Key, address or permission check failed.
    RemoteAccessError,
    /// Remote operational error (3).
    RemoteOperationalError,
    /// Invalid RD request (4).
    InvalidRdRequest,
    /// A reserved code (5 to 31), kept as is.
    Unknown(u8),
}

impl From<u8> for NakCode {
    /// The NAK code in the low five bits of `value`.
    fn from(value: u8) -> Self {
        match value & VALUE_MASK {
            0 => NakCode::PsnSequenceError,
            1 => NakCode::InvalidRequest,
            2 => NakCode::RemoteAccessError,
            3 => NakCode::RemoteOperationalError,
            4 => NakCode::InvalidRdRequest,
            other => NakCode::Unknown(other),
        }
    }
}

impl From<NakCode> for u8 {
    fn from(code: NakCode) -> u8 {
        match code {
            NakCode::PsnSequenceError => 0,
            NakCode::InvalidRequest => 1,
            NakCode::RemoteAccessError => 2,
            NakCode::RemoteOperationalError => 3,
            NakCode::InvalidRdRequest => 4,
            NakCode::Unknown(other) => other & VALUE_MASK,
        }
    }
}

/// The AETH syndrome byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Syndrome {
    /// Positive acknowledgement with a credit count (5 bits).
    Ack {
        /// Credit count; [`CREDIT_COUNT_INVALID`] when end-to-end credits are not used.
        credit_count: u8,
    },
    /// Receiver not ready: retry after the encoded time.
    RnrNak {
        /// RNR timer code (5 bits), see [`rnr_timer_micros`].
        timer: u8,
    },
    /// Negative acknowledgement.
    Nak(NakCode),
    /// A syndrome with the reserved type `10` or the reserved bit 7 set; the raw byte.
    Reserved(u8),
}

impl From<u8> for Syndrome {
    fn from(value: u8) -> Self {
        match value & TYPE_MASK {
            TYPE_ACK => Syndrome::Ack {
                credit_count: value & VALUE_MASK,
            },
            TYPE_RNR_NAK => Syndrome::RnrNak {
                timer: value & VALUE_MASK,
            },
            TYPE_NAK => Syndrome::Nak(NakCode::from(value)),
            _ => Syndrome::Reserved(value),
        }
    }
}

impl From<Syndrome> for u8 {
    /// The syndrome byte; five-bit values are masked to five bits.
    fn from(syndrome: Syndrome) -> u8 {
        match syndrome {
            Syndrome::Ack { credit_count } => TYPE_ACK | (credit_count & VALUE_MASK),
            Syndrome::RnrNak { timer } => TYPE_RNR_NAK | (timer & VALUE_MASK),
            Syndrome::Nak(code) => TYPE_NAK | u8::from(code),
            Syndrome::Reserved(raw) => raw,
        }
    }
}

impl Syndrome {
    /// Whether this is a positive acknowledgement.
    pub const fn is_ack(self) -> bool {
        matches!(self, Syndrome::Ack { .. })
    }
}

/// The minimum RNR NAK delay, in microseconds, that an RNR timer code asks for (IBTA vol. 1,
/// table 45; the same table as Linux's `IB_RNR_TIMER_*`). Only the low five bits are used.
pub const fn rnr_timer_micros(timer: u8) -> u32 {
    const MICROS: [u32; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560,
        3_840, 5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880,
        163_840, 245_760, 327_680, 491_520,
    ];
    MICROS[(timer & VALUE_MASK) as usize]
}

/// The AETH as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Syndrome.
    pub syndrome: u8,
    /// Message sequence number (24 bits, big-endian).
    pub msn: [u8; 3],
}

mod field {
    use crate::wire::Field;

    pub const SYNDROME: usize = 0;
    pub const MSN: Field = 1..4;
}

const _: () = {
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(core::mem::offset_of!(Header, syndrome) == field::SYNDROME);
    assert!(core::mem::offset_of!(Header, msn) == field::MSN.start);
    assert!(field::MSN.end == HEADER_LEN);
};

fixed_header_view!("A view of an AETH at the start of a buffer.", "AETH");

impl<T: AsRef<[u8]>> Packet<T> {
    /// The syndrome.
    pub fn syndrome(&self) -> Syndrome {
        Syndrome::from(self.header().syndrome)
    }

    /// The message sequence number (24 bits).
    pub fn msn(&self) -> u32 {
        read_u24(self.header().msn)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the syndrome.
    pub fn set_syndrome(&mut self, value: Syndrome) {
        self.header_mut().syndrome = value.into();
    }

    /// Sets the message sequence number (masked to 24 bits).
    pub fn set_msn(&mut self, value: u32) {
        self.header_mut().msn = write_u24(value);
    }
}

/// The meaning of an AETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Syndrome.
    pub syndrome: Syndrome,
    /// Message sequence number (24 bits).
    pub msn: u32,
}

impl Repr {
    /// Parses an AETH.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Repr {
            syndrome: packet.syndrome(),
            msn: packet.msn(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the AETH.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        *packet.header_mut() = Header {
            syndrome: self.syndrome.into(),
            msn: write_u24(self.msn & U24_MASK),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ACK, credits not used, MSN 0x000102.
    static ACK_BYTES: [u8; 4] = [0x1f, 0x00, 0x01, 0x02];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&ACK_BYTES[..]).unwrap();
        assert_eq!(
            packet.syndrome(),
            Syndrome::Ack {
                credit_count: CREDIT_COUNT_INVALID
            }
        );
        assert_eq!(packet.msn(), 0x102);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0u8; 4];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_syndrome(Syndrome::Ack {
            credit_count: CREDIT_COUNT_INVALID,
        });
        packet.set_msn(0x0100_0102);
        assert_eq!(bytes, ACK_BYTES);
    }

    #[test]
    fn test_repr() {
        let repr = Repr::parse(&Packet::new_unchecked(&ACK_BYTES[..])).unwrap();
        let mut bytes = [0u8; 4];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, ACK_BYTES);
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&ACK_BYTES[..3])),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn syndromes_match_rxe_constants() {
        // rxe_hdr.h: AETH_RNR_NAK 0x20, AETH_NAK_PSN_SEQ_ERROR 0x60, AETH_NAK_INVALID_REQ
        // 0x61, AETH_NAK_REM_ACC_ERR 0x62, AETH_NAK_REM_OP_ERR 0x63, AETH_NAK_INV_RD_REQ 0x64.
        assert_eq!(Syndrome::from(0x2e), Syndrome::RnrNak { timer: 14 });
        assert_eq!(
            Syndrome::from(0x60),
            Syndrome::Nak(NakCode::PsnSequenceError)
        );
        assert_eq!(Syndrome::from(0x61), Syndrome::Nak(NakCode::InvalidRequest));
        assert_eq!(
            Syndrome::from(0x62),
            Syndrome::Nak(NakCode::RemoteAccessError)
        );
        assert_eq!(
            Syndrome::from(0x63),
            Syndrome::Nak(NakCode::RemoteOperationalError)
        );
        assert_eq!(
            Syndrome::from(0x64),
            Syndrome::Nak(NakCode::InvalidRdRequest)
        );
        assert_eq!(Syndrome::from(0x65), Syndrome::Nak(NakCode::Unknown(5)));
        assert_eq!(Syndrome::from(0x40), Syndrome::Reserved(0x40));
        assert_eq!(Syndrome::from(0x9f), Syndrome::Reserved(0x9f));
        assert!(Syndrome::from(0x00).is_ack());
        for raw in 0..=255u8 {
            assert_eq!(u8::from(Syndrome::from(raw)), raw);
        }
    }

    #[test]
    fn rnr_timer_table() {
        assert_eq!(rnr_timer_micros(0), 655_360);
        assert_eq!(rnr_timer_micros(1), 10);
        assert_eq!(rnr_timer_micros(14), 1_280);
        assert_eq!(rnr_timer_micros(31), 491_520);
        assert_eq!(rnr_timer_micros(0xff), 491_520);
    }
}
