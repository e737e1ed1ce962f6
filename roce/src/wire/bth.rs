//! Base Transport Header (BTH, 12 bytes), the first header of every IB packet.
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//! +---------------+-+-+---+-------+-------------------------------+
//! |    OpCode     |S|M|Pad| TVer  |            P_Key              |
//! +-+-+-----------+-+-+---+-------+-------------------------------+
//! |F|B|   Resv6   |            Destination QP                     |
//! +-+-------------+-----------------------------------------------+
//! |A|   Resv7     |        Packet Sequence Number                 |
//! +-+-------------+-----------------------------------------------+
//! ```
//!
//! S: solicited event, M: migration request, Pad: pad count (bytes after the payload), TVer:
//! transport header version (0), F/B: forward/backward explicit congestion notification, A:
//! acknowledge request. Byte 4 (F, B, Resv6) is replaced by `0xff` when the ICRC is computed.

use super::opcode::Opcode;
use super::{Error, U24_MASK};
use zerocopy::network_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the BTH in bytes.
pub const HEADER_LEN: usize = 12;

/// The transport header version this crate speaks (and rxe requires).
pub const TRANSPORT_VERSION: u8 = 0;

/// The default partition key.
pub const DEFAULT_PKEY: u16 = 0xffff;

/// The BTH as it sits in memory.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Opcode.
    pub opcode: u8,
    /// Solicited event (bit 7), migration request (bit 6), pad count (bits 5-4), transport
    /// version (bits 3-0).
    pub flags: u8,
    /// Partition key.
    pub pkey: U16,
    /// FECN (bit 31), BECN (bit 30), reserved (bits 29-24), destination QP (bits 23-0).
    pub fecn_becn_dest_qpn: U32,
    /// Acknowledge request (bit 31), reserved (bits 30-24), PSN (bits 23-0).
    pub ack_req_psn: U32,
}

mod field {
    use crate::wire::Field;

    pub const OPCODE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PKEY: Field = 2..4;
    pub const DEST_QPN: Field = 4..8;
    pub const PSN: Field = 8..12;

    pub const SOLICITED_EVENT: u8 = 0x80;
    pub const MIGRATION_REQUEST: u8 = 0x40;
    pub const PAD_COUNT: u8 = 0x30;
    pub const PAD_COUNT_SHIFT: u32 = 4;
    pub const TRANSPORT_VERSION: u8 = 0x0f;
    pub const FECN: u32 = 0x8000_0000;
    pub const BECN: u32 = 0x4000_0000;
    pub const RESERVED6: u32 = 0x3f00_0000;
    pub const ACK_REQUEST: u32 = 0x8000_0000;
    pub const RESERVED7: u32 = 0x7f00_0000;
}

const _: () = {
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(core::mem::offset_of!(Header, opcode) == field::OPCODE);
    assert!(core::mem::offset_of!(Header, flags) == field::FLAGS);
    assert!(core::mem::offset_of!(Header, pkey) == field::PKEY.start);
    assert!(core::mem::offset_of!(Header, fecn_becn_dest_qpn) == field::DEST_QPN.start);
    assert!(core::mem::offset_of!(Header, ack_req_psn) == field::PSN.start);
    assert!(field::PSN.end == HEADER_LEN);
};

/// Byte offset, inside the BTH, of the byte (F, B, Resv6) that the ICRC replaces with `0xff`.
pub const ICRC_MASKED_BYTE: usize = field::DEST_QPN.start;

fixed_header_view!(
    "A view of a BTH at the start of a buffer; the bytes after it are [`Packet::payload`].",
    "BTH"
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The opcode.
    pub fn opcode(&self) -> Opcode {
        Opcode::from(self.header().opcode)
    }

    /// The solicited event bit.
    pub fn solicited_event(&self) -> bool {
        self.header().flags & field::SOLICITED_EVENT != 0
    }

    /// The migration request bit.
    pub fn migration_request(&self) -> bool {
        self.header().flags & field::MIGRATION_REQUEST != 0
    }

    /// The pad count: bytes of padding between the payload and the ICRC (0 to 3).
    pub fn pad_count(&self) -> u8 {
        (self.header().flags & field::PAD_COUNT) >> field::PAD_COUNT_SHIFT
    }

    /// The transport header version.
    pub fn transport_version(&self) -> u8 {
        self.header().flags & field::TRANSPORT_VERSION
    }

    /// The partition key.
    pub fn pkey(&self) -> u16 {
        self.header().pkey.get()
    }

    /// The forward explicit congestion notification bit.
    pub fn fecn(&self) -> bool {
        self.header().fecn_becn_dest_qpn.get() & field::FECN != 0
    }

    /// The backward explicit congestion notification bit.
    pub fn becn(&self) -> bool {
        self.header().fecn_becn_dest_qpn.get() & field::BECN != 0
    }

    /// The 6 reserved bits after FECN and BECN.
    pub fn reserved6(&self) -> u8 {
        ((self.header().fecn_becn_dest_qpn.get() & field::RESERVED6) >> 24) as u8
    }

    /// The destination queue pair number (24 bits).
    pub fn dest_qpn(&self) -> u32 {
        self.header().fecn_becn_dest_qpn.get() & U24_MASK
    }

    /// The acknowledge request bit.
    pub fn ack_request(&self) -> bool {
        self.header().ack_req_psn.get() & field::ACK_REQUEST != 0
    }

    /// The 7 reserved bits after the acknowledge request bit.
    pub fn reserved7(&self) -> u8 {
        ((self.header().ack_req_psn.get() & field::RESERVED7) >> 24) as u8
    }

    /// The packet sequence number (24 bits).
    pub fn psn(&self) -> u32 {
        self.header().ack_req_psn.get() & U24_MASK
    }

    /// The bytes after the BTH.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_flag(&mut self, mask: u8, value: bool) {
        let header = self.header_mut();
        header.flags = if value {
            header.flags | mask
        } else {
            header.flags & !mask
        };
    }

    fn set_qpn_word(&mut self, mask: u32, value: u32) {
        let word = &mut self.header_mut().fecn_becn_dest_qpn;
        word.set((word.get() & !mask) | (value & mask));
    }

    fn set_psn_word(&mut self, mask: u32, value: u32) {
        let word = &mut self.header_mut().ack_req_psn;
        word.set((word.get() & !mask) | (value & mask));
    }

    /// Sets the opcode.
    pub fn set_opcode(&mut self, opcode: Opcode) {
        self.header_mut().opcode = opcode.into();
    }

    /// Sets the solicited event bit.
    pub fn set_solicited_event(&mut self, value: bool) {
        self.set_flag(field::SOLICITED_EVENT, value);
    }

    /// Sets the migration request bit.
    pub fn set_migration_request(&mut self, value: bool) {
        self.set_flag(field::MIGRATION_REQUEST, value);
    }

    /// Sets the pad count (masked to 2 bits).
    pub fn set_pad_count(&mut self, value: u8) {
        let header = self.header_mut();
        header.flags = (header.flags & !field::PAD_COUNT)
            | ((value << field::PAD_COUNT_SHIFT) & field::PAD_COUNT);
    }

    /// Sets the transport header version (masked to 4 bits).
    pub fn set_transport_version(&mut self, value: u8) {
        let header = self.header_mut();
        header.flags =
            (header.flags & !field::TRANSPORT_VERSION) | (value & field::TRANSPORT_VERSION);
    }

    /// Sets the partition key.
    pub fn set_pkey(&mut self, value: u16) {
        self.header_mut().pkey.set(value);
    }

    /// Sets the FECN bit.
    pub fn set_fecn(&mut self, value: bool) {
        self.set_qpn_word(field::FECN, if value { field::FECN } else { 0 });
    }

    /// Sets the BECN bit.
    pub fn set_becn(&mut self, value: bool) {
        self.set_qpn_word(field::BECN, if value { field::BECN } else { 0 });
    }

    /// Sets the 6 reserved bits after FECN and BECN (masked to 6 bits).
    pub fn set_reserved6(&mut self, value: u8) {
        self.set_qpn_word(field::RESERVED6, u32::from(value) << 24);
    }

    /// Sets the destination QPN (masked to 24 bits).
    pub fn set_dest_qpn(&mut self, value: u32) {
        self.set_qpn_word(U24_MASK, value);
    }

    /// Sets the acknowledge request bit.
    pub fn set_ack_request(&mut self, value: bool) {
        self.set_psn_word(
            field::ACK_REQUEST,
            if value { field::ACK_REQUEST } else { 0 },
        );
    }

    /// Sets the 7 reserved bits after the acknowledge request bit (masked to 7 bits).
    pub fn set_reserved7(&mut self, value: u8) {
        self.set_psn_word(field::RESERVED7, u32::from(value) << 24);
    }

    /// Sets the PSN (masked to 24 bits).
    pub fn set_psn(&mut self, value: u32) {
        self.set_psn_word(U24_MASK, value);
    }

    /// The bytes after the BTH, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The meaning of a BTH. Reserved bits are ignored by `parse` and written as zero by `emit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Opcode.
    pub opcode: Opcode,
    /// Solicited event.
    pub solicited_event: bool,
    /// Migration request.
    pub migration_request: bool,
    /// Pad count (0 to 3).
    pub pad_count: u8,
    /// Transport header version ([`TRANSPORT_VERSION`]; rxe drops packets with another).
    pub transport_version: u8,
    /// Partition key.
    pub pkey: u16,
    /// Forward explicit congestion notification.
    pub fecn: bool,
    /// Backward explicit congestion notification.
    pub becn: bool,
    /// Destination QPN (24 bits).
    pub dest_qpn: u32,
    /// Acknowledge request.
    pub ack_request: bool,
    /// Packet sequence number (24 bits).
    pub psn: u32,
}

impl Repr {
    /// Parses a BTH.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Repr {
            opcode: packet.opcode(),
            solicited_event: packet.solicited_event(),
            migration_request: packet.migration_request(),
            pad_count: packet.pad_count(),
            transport_version: packet.transport_version(),
            pkey: packet.pkey(),
            fecn: packet.fecn(),
            becn: packet.becn(),
            dest_qpn: packet.dest_qpn(),
            ack_request: packet.ack_request(),
            psn: packet.psn(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the BTH (reserved bits zero).
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let mut flags = ((self.pad_count << field::PAD_COUNT_SHIFT) & field::PAD_COUNT)
            | (self.transport_version & field::TRANSPORT_VERSION);
        if self.solicited_event {
            flags |= field::SOLICITED_EVENT;
        }
        if self.migration_request {
            flags |= field::MIGRATION_REQUEST;
        }
        let mut qpn_word = self.dest_qpn & U24_MASK;
        if self.fecn {
            qpn_word |= field::FECN;
        }
        if self.becn {
            qpn_word |= field::BECN;
        }
        let mut psn_word = self.psn & U24_MASK;
        if self.ack_request {
            psn_word |= field::ACK_REQUEST;
        }
        *packet.header_mut() = Header {
            opcode: self.opcode.into(),
            flags,
            pkey: U16::new(self.pkey),
            fecn_becn_dest_qpn: U32::new(qpn_word),
            ack_req_psn: U32::new(psn_word),
        };
    }
}

/// Reads the BTH fields the ICRC covers, with byte 4 replaced by `0xff`.
pub(crate) fn icrc_masked(bth: &[u8; HEADER_LEN]) -> [u8; HEADER_LEN] {
    let mut masked = *bth;
    masked[ICRC_MASKED_BYTE] = 0xff;
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    // RC SEND Only, SE, pad 2, TVer 0, P_Key 0xffff, FECN, resv6 0x15, QPN 0x123456,
    // AckReq, resv7 0x2a, PSN 0xabcdef.
    static PACKET_BYTES: [u8; 14] = [
        0x04, 0xa0, 0xff, 0xff, 0x95, 0x12, 0x34, 0x56, 0xaa, 0xab, 0xcd, 0xef, 0xde, 0xad,
    ];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.opcode(), Opcode::RcSendOnly);
        assert!(packet.solicited_event());
        assert!(!packet.migration_request());
        assert_eq!(packet.pad_count(), 2);
        assert_eq!(packet.transport_version(), 0);
        assert_eq!(packet.pkey(), 0xffff);
        assert!(packet.fecn());
        assert!(!packet.becn());
        assert_eq!(packet.reserved6(), 0x15);
        assert_eq!(packet.dest_qpn(), 0x12_3456);
        assert!(packet.ack_request());
        assert_eq!(packet.reserved7(), 0x2a);
        assert_eq!(packet.psn(), 0xab_cdef);
        assert_eq!(packet.payload(), &[0xde, 0xad]);
        assert_eq!(packet.header().pkey.get(), 0xffff);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xa5u8; 14];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_opcode(Opcode::RcSendOnly);
        packet.set_solicited_event(true);
        packet.set_migration_request(false);
        packet.set_pad_count(2);
        packet.set_transport_version(0);
        packet.set_pkey(0xffff);
        packet.set_fecn(true);
        packet.set_becn(false);
        packet.set_reserved6(0x15);
        packet.set_dest_qpn(0x12_3456);
        packet.set_ack_request(true);
        packet.set_reserved7(0x2a);
        packet.set_psn(0xab_cdef);
        packet.payload_mut().copy_from_slice(&[0xde, 0xad]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn test_repr() {
        let repr = Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..])).unwrap();
        assert_eq!(
            repr,
            Repr {
                opcode: Opcode::RcSendOnly,
                solicited_event: true,
                migration_request: false,
                pad_count: 2,
                transport_version: 0,
                pkey: 0xffff,
                fecn: true,
                becn: false,
                dest_qpn: 0x12_3456,
                ack_request: true,
                psn: 0xab_cdef,
            }
        );
        let mut bytes = [0xffu8; HEADER_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        // Reserved bits come out as zero.
        assert_eq!(
            bytes,
            [
                0x04, 0xa0, 0xff, 0xff, 0x80, 0x12, 0x34, 0x56, 0x80, 0xab, 0xcd, 0xef
            ]
        );
    }

    #[test]
    fn test_truncated() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..11]),
            Err(Error::Truncated)
        );
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..5])),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn setters_mask_wide_values() {
        let mut bytes = [0u8; HEADER_LEN];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_dest_qpn(0xff12_3456);
        packet.set_psn(0xff65_4321);
        packet.set_pad_count(0xff);
        packet.set_transport_version(0xf3);
        assert_eq!(packet.dest_qpn(), 0x12_3456);
        assert!(!packet.fecn());
        assert_eq!(packet.psn(), 0x65_4321);
        assert!(!packet.ack_request());
        assert_eq!(packet.pad_count(), 3);
        assert_eq!(packet.transport_version(), 3);
        assert!(!packet.solicited_event());
    }

    #[test]
    fn icrc_mask_is_byte_four() {
        let masked = icrc_masked(PACKET_BYTES[..HEADER_LEN].try_into().unwrap());
        assert_eq!(masked[4], 0xff);
        assert_eq!(masked[..4], PACKET_BYTES[..4]);
        assert_eq!(masked[5..], PACKET_BYTES[5..HEADER_LEN]);
    }
}
