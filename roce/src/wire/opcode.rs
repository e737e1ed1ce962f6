//! The BTH opcode byte and what each opcode implies about the rest of the packet.
//!
//! The top three bits of the opcode name the transport service (RC `000`, UC `001`, RD `010`,
//! UD `011`, CNP `100`, XRC `101`, manufacturer specific `111`), the low five bits the operation
//! (IBTA vol. 1, table 38). Per opcode, [`OpcodeInfo`] says which extension headers follow the
//! BTH and in which order, whether a payload may follow them, and where the packet sits in a
//! message (first / middle / last / only), as the opcode table of Linux `rdma_rxe` does.
//!
//! Known: every RC opcode up to SEND_ONLY_WITH_INVALIDATE, the UC SEND and RDMA WRITE opcodes,
//! the two UD SEND opcodes and the RoCEv2 congestion notification packet (CNP). Everything else
//! (RD, XRC, FLUSH, ATOMIC_WRITE, reserved codes) parses as [`Opcode::Unknown`] with the raw
//! byte kept, so that it survives a parse/emit round trip.

/// Declares the opcode enum with an `Unknown(u8)` fallback and both conversions.
macro_rules! opcodes {
    ($( $(#[$attr:meta])* $name:ident = $value:literal, )+) => {
        /// A BTH opcode.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Opcode {
            $( $(#[$attr])* $name, )+
            /// An opcode this crate does not interpret; the raw byte.
            Unknown(u8),
        }

        impl Opcode {
            /// The opcode of a BTH opcode byte, as a `const fn` ([`From<u8>`] reads a table
            /// built with it).
            pub const fn from_byte(value: u8) -> Opcode {
                match value {
                    $( $value => Opcode::$name, )+
                    other => Opcode::Unknown(other),
                }
            }
        }

        impl From<u8> for Opcode {
            #[inline]
            fn from(value: u8) -> Self {
                BY_BYTE[usize::from(value)]
            }
        }

        impl Opcode {
            /// The BTH opcode byte, as a `const fn`.
            pub const fn to_byte(self) -> u8 {
                match self {
                    $( Opcode::$name => $value, )+
                    Opcode::Unknown(other) => other,
                }
            }
        }

        impl From<Opcode> for u8 {
            fn from(opcode: Opcode) -> u8 {
                opcode.to_byte()
            }
        }
    };
}

opcodes! {
    /// RC SEND First (0x00).
    RcSendFirst = 0x00,
    /// RC SEND Middle (0x01).
    RcSendMiddle = 0x01,
    /// RC SEND Last (0x02).
    RcSendLast = 0x02,
    /// RC SEND Last with Immediate (0x03).
    RcSendLastWithImmediate = 0x03,
    /// RC SEND Only (0x04).
    RcSendOnly = 0x04,
    /// RC SEND Only with Immediate (0x05).
    RcSendOnlyWithImmediate = 0x05,
    /// RC RDMA WRITE First (0x06).
    RcRdmaWriteFirst = 0x06,
    /// RC RDMA WRITE Middle (0x07).
    RcRdmaWriteMiddle = 0x07,
    /// RC RDMA WRITE Last (0x08).
    RcRdmaWriteLast = 0x08,
    /// RC RDMA WRITE Last with Immediate (0x09).
    RcRdmaWriteLastWithImmediate = 0x09,
    /// RC RDMA WRITE Only (0x0a).
    RcRdmaWriteOnly = 0x0a,
    /// RC RDMA WRITE Only with Immediate (0x0b).
    RcRdmaWriteOnlyWithImmediate = 0x0b,
    /// RC RDMA READ Request (0x0c).
    RcRdmaReadRequest = 0x0c,
    /// RC RDMA READ Response First (0x0d).
    RcRdmaReadResponseFirst = 0x0d,
    /// RC RDMA READ Response Middle (0x0e).
    RcRdmaReadResponseMiddle = 0x0e,
    /// RC RDMA READ Response Last (0x0f).
    RcRdmaReadResponseLast = 0x0f,
    /// RC RDMA READ Response Only (0x10).
    RcRdmaReadResponseOnly = 0x10,
    /// RC Acknowledge (0x11).
    RcAcknowledge = 0x11,
    /// RC ATOMIC Acknowledge (0x12).
    RcAtomicAcknowledge = 0x12,
    /// RC CmpSwap (0x13).
    RcCompareSwap = 0x13,
    /// RC FetchAdd (0x14).
    RcFetchAdd = 0x14,
    /// RC SEND Last with Invalidate (0x16).
    RcSendLastWithInvalidate = 0x16,
    /// RC SEND Only with Invalidate (0x17).
    RcSendOnlyWithInvalidate = 0x17,
    /// UC SEND First (0x20).
    UcSendFirst = 0x20,
    /// UC SEND Middle (0x21).
    UcSendMiddle = 0x21,
    /// UC SEND Last (0x22).
    UcSendLast = 0x22,
    /// UC SEND Last with Immediate (0x23).
    UcSendLastWithImmediate = 0x23,
    /// UC SEND Only (0x24).
    UcSendOnly = 0x24,
    /// UC SEND Only with Immediate (0x25).
    UcSendOnlyWithImmediate = 0x25,
    /// UC RDMA WRITE First (0x26).
    UcRdmaWriteFirst = 0x26,
    /// UC RDMA WRITE Middle (0x27).
    UcRdmaWriteMiddle = 0x27,
    /// UC RDMA WRITE Last (0x28).
    UcRdmaWriteLast = 0x28,
    /// UC RDMA WRITE Last with Immediate (0x29).
    UcRdmaWriteLastWithImmediate = 0x29,
    /// UC RDMA WRITE Only (0x2a).
    UcRdmaWriteOnly = 0x2a,
    /// UC RDMA WRITE Only with Immediate (0x2b).
    UcRdmaWriteOnlyWithImmediate = 0x2b,
    /// UD SEND Only (0x64).
    UdSendOnly = 0x64,
    /// UD SEND Only with Immediate (0x65).
    UdSendOnlyWithImmediate = 0x65,
    /// RoCEv2 Congestion Notification Packet (0x81): BTH, 16 reserved bytes, ICRC.
    Cnp = 0x81,
}

/// The transport service named by the top three bits of an opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Reliable Connection (`000`).
    ReliableConnection,
    /// Unreliable Connection (`001`).
    UnreliableConnection,
    /// Reliable Datagram (`010`).
    ReliableDatagram,
    /// Unreliable Datagram (`011`).
    UnreliableDatagram,
    /// Congestion notification (`100`).
    CongestionNotification,
    /// Extended Reliable Connection (`101`).
    ExtendedReliableConnection,
    /// Reserved (`110`).
    Reserved,
    /// Manufacturer specific (`111`).
    ManufacturerSpecific,
}

impl Transport {
    /// The transport named by the top three bits of `opcode`.
    pub const fn of(opcode: u8) -> Self {
        match opcode >> 5 {
            0 => Transport::ReliableConnection,
            1 => Transport::UnreliableConnection,
            2 => Transport::ReliableDatagram,
            3 => Transport::UnreliableDatagram,
            4 => Transport::CongestionNotification,
            5 => Transport::ExtendedReliableConnection,
            6 => Transport::Reserved,
            _ => Transport::ManufacturerSpecific,
        }
    }
}

/// What an opcode does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// SEND, with or without immediate data or invalidate.
    Send,
    /// RDMA WRITE, with or without immediate data.
    RdmaWrite,
    /// RDMA READ request.
    RdmaReadRequest,
    /// RDMA READ response.
    RdmaReadResponse,
    /// Acknowledge (ACK or NAK, told apart by the AETH syndrome).
    Acknowledge,
    /// Acknowledge of an atomic operation, carrying the original remote data.
    AtomicAcknowledge,
    /// Atomic compare and swap.
    CompareSwap,
    /// Atomic fetch and add.
    FetchAdd,
    /// RoCEv2 congestion notification.
    CongestionNotification,
}

/// Where a packet sits in a multi-packet message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// The first packet of a message of two or more packets.
    First,
    /// Neither the first nor the last packet.
    Middle,
    /// The last packet of a message of two or more packets.
    Last,
    /// A message of one packet.
    Only,
}

impl Position {
    /// Whether the packet starts a message (first or only).
    pub const fn starts_message(self) -> bool {
        matches!(self, Position::First | Position::Only)
    }

    /// Whether the packet ends a message (last or only).
    pub const fn ends_message(self) -> bool {
        matches!(self, Position::Last | Position::Only)
    }
}

/// One extension transport header that may follow the BTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtHeader {
    /// Datagram ETH (Q_Key, source QP), UD only. 8 bytes.
    Deth,
    /// RDMA ETH (virtual address, R_Key, DMA length). 16 bytes.
    Reth,
    /// ACK ETH (syndrome, MSN). 4 bytes.
    Aeth,
    /// Atomic ETH (virtual address, R_Key, swap/add data, compare data). 28 bytes.
    AtomicEth,
    /// Atomic Acknowledge ETH (original remote data). 8 bytes.
    AtomicAckEth,
    /// Immediate data. 4 bytes.
    ImmDt,
    /// Invalidate ETH (R_Key to invalidate). 4 bytes.
    Ieth,
}

impl ExtHeader {
    /// All extension headers, in the order they follow the BTH on the wire.
    pub const WIRE_ORDER: [ExtHeader; 7] = [
        ExtHeader::Deth,
        ExtHeader::Reth,
        ExtHeader::Aeth,
        ExtHeader::AtomicEth,
        ExtHeader::AtomicAckEth,
        ExtHeader::ImmDt,
        ExtHeader::Ieth,
    ];

    /// Length of the header in bytes.
    pub const fn header_len(self) -> usize {
        match self {
            ExtHeader::Deth => super::deth::HEADER_LEN,
            ExtHeader::Reth => super::reth::HEADER_LEN,
            ExtHeader::Aeth => super::aeth::HEADER_LEN,
            ExtHeader::AtomicEth => super::atomic_eth::HEADER_LEN,
            ExtHeader::AtomicAckEth => super::atomic_ack_eth::HEADER_LEN,
            ExtHeader::ImmDt => super::immdt::HEADER_LEN,
            ExtHeader::Ieth => super::ieth::HEADER_LEN,
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of extension headers; iteration and offsets follow the wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ExtHeaders(u8);

impl ExtHeaders {
    /// No extension headers.
    pub const EMPTY: ExtHeaders = ExtHeaders(0);

    /// The set holding `headers`.
    pub const fn of(headers: &[ExtHeader]) -> Self {
        let mut bits = 0;
        let mut index = 0;
        while index < headers.len() {
            bits |= headers[index].bit();
            index += 1;
        }
        ExtHeaders(bits)
    }

    /// The set with `header` added.
    #[must_use]
    pub const fn with(self, header: ExtHeader) -> Self {
        ExtHeaders(self.0 | header.bit())
    }

    /// Whether `header` is in the set.
    pub const fn contains(self, header: ExtHeader) -> bool {
        self.0 & header.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Total length in bytes of the headers in the set.
    #[inline]
    pub const fn header_len(self) -> usize {
        SET_LEN[self.0 as usize] as usize
    }

    /// [`ExtHeaders::header_len`] computed (what the table holds).
    const fn compute_header_len(self) -> usize {
        let mut length = 0;
        let mut index = 0;
        while index < ExtHeader::WIRE_ORDER.len() {
            let header = ExtHeader::WIRE_ORDER[index];
            if self.contains(header) {
                length += header.header_len();
            }
            index += 1;
        }
        length
    }

    /// Offset of `header` from the end of the BTH, or `None` if it is not in the set.
    #[inline]
    pub const fn offset(self, header: ExtHeader) -> Option<usize> {
        if !self.contains(header) {
            return None;
        }
        Some(SET_OFFSET[self.0 as usize][header as usize] as usize)
    }

    /// The extension headers an opcode byte implies (a table lookup).
    #[inline]
    pub const fn of_opcode_byte(byte: u8) -> ExtHeaders {
        BYTE_HEADERS[byte as usize]
    }

    /// [`ExtHeaders::offset`] computed (what the table holds), for a header in the set.
    const fn compute_offset(self, header: ExtHeader) -> usize {
        let mut offset = 0;
        let mut index = 0;
        while index < ExtHeader::WIRE_ORDER.len() {
            let other = ExtHeader::WIRE_ORDER[index];
            if (other as u8) < (header as u8) && self.contains(other) {
                offset += other.header_len();
            }
            index += 1;
        }
        offset
    }

    /// The headers in the set, in wire order.
    pub fn iter(self) -> impl Iterator<Item = ExtHeader> {
        ExtHeader::WIRE_ORDER
            .into_iter()
            .filter(move |header| self.contains(*header))
    }
}

/// Sets of extension headers there can be: one bit per [`ExtHeader`].
const SETS: usize = 1 << ExtHeader::WIRE_ORDER.len();

/// [`ExtHeaders::header_len`] of every set.
const SET_LEN: [u8; SETS] = {
    let mut table = [0u8; SETS];
    let mut set = 0;
    while set < SETS {
        table[set] = ExtHeaders(set as u8).compute_header_len() as u8;
        set += 1;
    }
    table
};

/// [`ExtHeaders::offset`] of every header in every set (0 where the header is not in it).
const SET_OFFSET: [[u8; ExtHeader::WIRE_ORDER.len()]; SETS] = {
    let mut table = [[0u8; ExtHeader::WIRE_ORDER.len()]; SETS];
    let mut set = 0;
    while set < SETS {
        let mut index = 0;
        while index < ExtHeader::WIRE_ORDER.len() {
            let header = ExtHeader::WIRE_ORDER[index];
            table[set][header as usize] = ExtHeaders(set as u8).compute_offset(header) as u8;
            index += 1;
        }
        set += 1;
    }
    table
};

/// The opcode of every byte: per packet, decoding is a load.
const BY_BYTE: [Opcode; 256] = {
    let mut table = [Opcode::Unknown(0); 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = Opcode::from_byte(byte as u8);
        byte += 1;
    }
    table
};

/// The extension headers every opcode byte implies.
const BYTE_HEADERS: [ExtHeaders; 256] = {
    let mut table = [ExtHeaders::EMPTY; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match Opcode::from_byte(byte as u8).info() {
            Some(info) => info.headers,
            None => ExtHeaders::EMPTY,
        };
        byte += 1;
    }
    table
};

/// What an opcode implies about its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpcodeInfo {
    /// The operation.
    pub operation: Operation,
    /// Where the packet sits in its message.
    pub position: Position,
    /// The extension headers that follow the BTH.
    pub headers: ExtHeaders,
    /// Whether a payload may follow the headers. Packets of opcodes without one end with the
    /// ICRC right after the headers (and have no pad).
    pub payload: bool,
}

impl OpcodeInfo {
    const fn new(
        operation: Operation,
        position: Position,
        headers: &[ExtHeader],
        payload: bool,
    ) -> Self {
        OpcodeInfo {
            operation,
            position,
            headers: ExtHeaders::of(headers),
            payload,
        }
    }

    /// Whether a requester sends it (SEND, WRITE, READ request, atomics).
    pub const fn is_request(&self) -> bool {
        matches!(
            self.operation,
            Operation::Send
                | Operation::RdmaWrite
                | Operation::RdmaReadRequest
                | Operation::CompareSwap
                | Operation::FetchAdd
        )
    }

    /// Whether a responder sends it (READ responses, ACK/NAK, atomic ACK).
    pub const fn is_response(&self) -> bool {
        matches!(
            self.operation,
            Operation::RdmaReadResponse | Operation::Acknowledge | Operation::AtomicAcknowledge
        )
    }

    /// Whether the packet carries immediate data.
    pub const fn has_immediate(&self) -> bool {
        self.headers.contains(ExtHeader::ImmDt)
    }

    /// Whether the packet carries an R_Key to invalidate.
    pub const fn has_invalidate(&self) -> bool {
        self.headers.contains(ExtHeader::Ieth)
    }

    /// Whether the responder takes a receive WQE for this packet: the first packet of a SEND,
    /// the last packet of an RDMA WRITE with immediate (rxe's `RXE_RWR_MASK`).
    pub const fn consumes_receive_wqe(&self) -> bool {
        match self.operation {
            Operation::Send => self.position.starts_message(),
            Operation::RdmaWrite => self.has_immediate() && self.position.ends_message(),
            _ => false,
        }
    }

    /// Whether the responder completes a receive WQE on this packet: the last packet of a
    /// SEND or of an RDMA WRITE with immediate (rxe's `RXE_COMP_MASK`).
    pub const fn completes_receive_wqe(&self) -> bool {
        match self.operation {
            Operation::Send => self.position.ends_message(),
            Operation::RdmaWrite => self.has_immediate() && self.position.ends_message(),
            _ => false,
        }
    }
}

impl Opcode {
    /// What the opcode implies, or `None` for [`Opcode::Unknown`].
    pub const fn info(self) -> Option<OpcodeInfo> {
        use ExtHeader::{AtomicAckEth, AtomicEth, Deth, Ieth, ImmDt, Reth};
        use Operation::*;
        use Position::*;
        const AETH: ExtHeader = ExtHeader::Aeth;
        let info = match self {
            Opcode::RcSendFirst | Opcode::UcSendFirst => OpcodeInfo::new(Send, First, &[], true),
            Opcode::RcSendMiddle | Opcode::UcSendMiddle => OpcodeInfo::new(Send, Middle, &[], true),
            Opcode::RcSendLast | Opcode::UcSendLast => OpcodeInfo::new(Send, Last, &[], true),
            Opcode::RcSendLastWithImmediate | Opcode::UcSendLastWithImmediate => {
                OpcodeInfo::new(Send, Last, &[ImmDt], true)
            }
            Opcode::RcSendOnly | Opcode::UcSendOnly => OpcodeInfo::new(Send, Only, &[], true),
            Opcode::RcSendOnlyWithImmediate | Opcode::UcSendOnlyWithImmediate => {
                OpcodeInfo::new(Send, Only, &[ImmDt], true)
            }
            Opcode::RcRdmaWriteFirst | Opcode::UcRdmaWriteFirst => {
                OpcodeInfo::new(RdmaWrite, First, &[Reth], true)
            }
            Opcode::RcRdmaWriteMiddle | Opcode::UcRdmaWriteMiddle => {
                OpcodeInfo::new(RdmaWrite, Middle, &[], true)
            }
            Opcode::RcRdmaWriteLast | Opcode::UcRdmaWriteLast => {
                OpcodeInfo::new(RdmaWrite, Last, &[], true)
            }
            Opcode::RcRdmaWriteLastWithImmediate | Opcode::UcRdmaWriteLastWithImmediate => {
                OpcodeInfo::new(RdmaWrite, Last, &[ImmDt], true)
            }
            Opcode::RcRdmaWriteOnly | Opcode::UcRdmaWriteOnly => {
                OpcodeInfo::new(RdmaWrite, Only, &[Reth], true)
            }
            Opcode::RcRdmaWriteOnlyWithImmediate | Opcode::UcRdmaWriteOnlyWithImmediate => {
                OpcodeInfo::new(RdmaWrite, Only, &[Reth, ImmDt], true)
            }
            Opcode::RcRdmaReadRequest => OpcodeInfo::new(RdmaReadRequest, Only, &[Reth], false),
            Opcode::RcRdmaReadResponseFirst => {
                OpcodeInfo::new(RdmaReadResponse, First, &[AETH], true)
            }
            Opcode::RcRdmaReadResponseMiddle => {
                OpcodeInfo::new(RdmaReadResponse, Middle, &[], true)
            }
            Opcode::RcRdmaReadResponseLast => {
                OpcodeInfo::new(RdmaReadResponse, Last, &[AETH], true)
            }
            Opcode::RcRdmaReadResponseOnly => {
                OpcodeInfo::new(RdmaReadResponse, Only, &[AETH], true)
            }
            Opcode::RcAcknowledge => OpcodeInfo::new(Acknowledge, Only, &[AETH], false),
            Opcode::RcAtomicAcknowledge => {
                OpcodeInfo::new(AtomicAcknowledge, Only, &[AETH, AtomicAckEth], false)
            }
            Opcode::RcCompareSwap => OpcodeInfo::new(CompareSwap, Only, &[AtomicEth], false),
            Opcode::RcFetchAdd => OpcodeInfo::new(FetchAdd, Only, &[AtomicEth], false),
            Opcode::RcSendLastWithInvalidate => OpcodeInfo::new(Send, Last, &[Ieth], true),
            Opcode::RcSendOnlyWithInvalidate => OpcodeInfo::new(Send, Only, &[Ieth], true),
            Opcode::UdSendOnly => OpcodeInfo::new(Send, Only, &[Deth], true),
            Opcode::UdSendOnlyWithImmediate => OpcodeInfo::new(Send, Only, &[Deth, ImmDt], true),
            Opcode::Cnp => OpcodeInfo::new(CongestionNotification, Only, &[], true),
            Opcode::Unknown(_) => return None,
        };
        Some(info)
    }

    /// The extension headers that follow the BTH (none for an unknown opcode).
    #[inline]
    pub const fn ext_headers(self) -> ExtHeaders {
        ExtHeaders::of_opcode_byte(self.to_byte())
    }

    /// Whether a payload may follow the headers (always for an unknown opcode, whose bytes
    /// after the BTH are all treated as payload).
    pub const fn has_payload(self) -> bool {
        match self.info() {
            Some(info) => info.payload,
            None => true,
        }
    }

    /// The transport service of the opcode.
    pub fn transport(self) -> Transport {
        Transport::of(u8::from(self))
    }

    /// Whether the opcode is known to this crate.
    pub const fn is_known(self) -> bool {
        !matches!(self, Opcode::Unknown(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_hold_what_the_functions_compute() {
        for byte in 0..=255u8 {
            let opcode = Opcode::from_byte(byte);
            assert_eq!(Opcode::from(byte), opcode);
            assert_eq!(u8::from(opcode), byte);
            let expected = opcode.info().map_or(ExtHeaders::EMPTY, |info| info.headers);
            assert_eq!(opcode.ext_headers(), expected, "{opcode:?}");
        }
        for set in 0..SETS {
            let headers = ExtHeaders(set as u8);
            assert_eq!(headers.header_len(), headers.compute_header_len());
            for header in ExtHeader::WIRE_ORDER {
                let expected = headers
                    .contains(header)
                    .then(|| headers.compute_offset(header));
                assert_eq!(headers.offset(header), expected, "{headers:?} {header:?}");
            }
        }
    }

    #[test]
    fn every_byte_round_trips() {
        for raw in 0..=255u8 {
            assert_eq!(u8::from(Opcode::from(raw)), raw);
        }
    }

    #[test]
    fn known_opcodes() {
        let known: usize = (0..=255u8)
            .filter(|raw| Opcode::from(*raw).is_known())
            .count();
        // 23 RC + 12 UC + 2 UD + CNP
        assert_eq!(known, 38);
        assert_eq!(Opcode::from(0x15), Opcode::Unknown(0x15));
        assert_eq!(Opcode::from(0x1c), Opcode::Unknown(0x1c));
        assert_eq!(Opcode::from(0x2c), Opcode::Unknown(0x2c));
        assert_eq!(Opcode::from(0x44), Opcode::Unknown(0x44));
    }

    #[test]
    fn uc_mirrors_rc() {
        for raw in 0x00..=0x0bu8 {
            let rc = Opcode::from(raw).info().unwrap();
            let uc = Opcode::from(raw | 0x20).info().unwrap();
            assert_eq!(rc, uc);
            assert_eq!(
                Opcode::from(raw | 0x20).transport(),
                Transport::UnreliableConnection
            );
        }
    }

    #[test]
    fn header_offsets_follow_wire_order() {
        let write_imm = Opcode::RcRdmaWriteOnlyWithImmediate.ext_headers();
        assert_eq!(write_imm.offset(ExtHeader::Reth), Some(0));
        assert_eq!(write_imm.offset(ExtHeader::ImmDt), Some(16));
        assert_eq!(write_imm.offset(ExtHeader::Aeth), None);
        assert_eq!(write_imm.header_len(), 20);

        let atomic_ack = Opcode::RcAtomicAcknowledge.ext_headers();
        assert_eq!(atomic_ack.offset(ExtHeader::Aeth), Some(0));
        assert_eq!(atomic_ack.offset(ExtHeader::AtomicAckEth), Some(4));
        assert_eq!(atomic_ack.header_len(), 12);

        let ud_imm = Opcode::UdSendOnlyWithImmediate.ext_headers();
        assert_eq!(ud_imm.offset(ExtHeader::Deth), Some(0));
        assert_eq!(ud_imm.offset(ExtHeader::ImmDt), Some(8));
        assert_eq!(
            ud_imm.iter().collect::<Vec<_>>(),
            [ExtHeader::Deth, ExtHeader::ImmDt]
        );

        assert_eq!(Opcode::RcCompareSwap.ext_headers().header_len(), 28);
        assert_eq!(Opcode::Unknown(0x15).ext_headers(), ExtHeaders::EMPTY);
    }

    #[test]
    fn receive_wqe_rules_match_rxe() {
        let rwr: Vec<u8> = (0..=0x17u8)
            .filter(|raw| {
                Opcode::from(*raw)
                    .info()
                    .is_some_and(|info| info.consumes_receive_wqe())
            })
            .collect();
        assert_eq!(rwr, [0x00, 0x04, 0x05, 0x09, 0x0b, 0x17]);
        let comp: Vec<u8> = (0..=0x17u8)
            .filter(|raw| {
                Opcode::from(*raw)
                    .info()
                    .is_some_and(|info| info.completes_receive_wqe())
            })
            .collect();
        assert_eq!(comp, [0x02, 0x03, 0x04, 0x05, 0x09, 0x0b, 0x16, 0x17]);
    }
}
