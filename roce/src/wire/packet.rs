//! A whole IB packet as RoCEv2 carries it in a UDP datagram: BTH, the extension headers its
//! opcode implies, payload, pad bytes, ICRC.
//!
//! ```text
//! +-----+---------------------+---------------+-----------+------+
//! | BTH | extension headers   | payload       | pad (0-3) | ICRC |
//! | 12  | opcode.ext_headers()| (if opcode    | BTH pad   |  4   |
//! |     |                     |  has payload) | count     |      |
//! +-----+---------------------+---------------+-----------+------+
//! ```
//!
//! The length of the payload is not in any IB header: it is what is left between the headers
//! and the pad, so a view must cover exactly the UDP payload. [`Packet::check_len`] accepts a
//! buffer when it holds the BTH, every extension header the opcode implies, the pad bytes and
//! the ICRC, and when an opcode without payload (ACK, READ request, atomics) has no payload and
//! no pad. An [`Opcode::Unknown`] packet is taken as BTH + payload + pad + ICRC. Like rxe, it
//! does not insist that payload + pad be a multiple of four.
//!
//! The ICRC is not checked here: it covers the IP and UDP headers too ([`crate::icrc`]).

use super::opcode::{ExtHeader, ExtHeaders, Opcode};
use super::{Error, aeth, atomic_ack_eth, atomic_eth, bth, deth, ieth, immdt, reth};

/// Length of the ICRC in bytes.
pub const ICRC_LEN: usize = 4;

/// The shortest IB packet: a BTH and an ICRC.
pub const MIN_LEN: usize = bth::HEADER_LEN + ICRC_LEN;

/// Where the parts of a packet lie; computed so that every range is in bounds even for a
/// buffer that does not pass `check_len` (or whose BTH was changed after it did).
#[derive(Debug, Clone, Copy)]
struct Layout {
    headers: ExtHeaders,
    header_len: usize,
    payload_end: usize,
    icrc_start: usize,
}

impl Layout {
    /// Where `header` lies, if the opcode implies it and the buffer holds it.
    fn ext_range(&self, header: ExtHeader) -> Option<core::ops::Range<usize>> {
        let start = bth::HEADER_LEN + self.headers.offset(header)?;
        let end = start + header.header_len();
        (end <= self.header_len).then_some(start..end)
    }
}

checked_view!("A view of an IB packet; the buffer must be exactly the packet (the UDP payload).");

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the headers the opcode implies, the pad and the ICRC are all there.
    ///
    /// Fails with [`Error::Truncated`] when the buffer is too short for the headers and ICRC,
    /// with [`Error::Malformed`] when the pad count reaches into the headers or an opcode
    /// without payload carries bytes after its headers.
    pub fn check_len(&self) -> Result<(), Error> {
        let buffer = self.buffer.as_ref();
        if buffer.len() < MIN_LEN {
            return Err(Error::Truncated);
        }
        let bth = bth::Packet::new_unchecked(buffer);
        let opcode = bth.opcode();
        let header_len = bth::HEADER_LEN + opcode.ext_headers().header_len();
        if buffer.len() < header_len + ICRC_LEN {
            return Err(Error::Truncated);
        }
        let pad = usize::from(bth.pad_count());
        if opcode.has_payload() {
            if buffer.len() < header_len + pad + ICRC_LEN {
                return Err(Error::Malformed);
            }
        } else if pad != 0 || buffer.len() != header_len + ICRC_LEN {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    fn layout(&self) -> Layout {
        let buffer = self.buffer.as_ref();
        let headers = ExtHeaders::of_opcode_byte(buffer.first().copied().unwrap_or(0));
        let pad = usize::from(buffer.get(1).map_or(0, |flags| (flags >> 4) & 0x3));
        let icrc_start = buffer.len().saturating_sub(ICRC_LEN);
        let header_len = (bth::HEADER_LEN + headers.header_len()).min(icrc_start);
        let payload_end = icrc_start.saturating_sub(pad).max(header_len);
        Layout {
            headers,
            header_len,
            payload_end,
            icrc_start,
        }
    }

    fn ext_range(&self, header: ExtHeader) -> Option<core::ops::Range<usize>> {
        self.layout().ext_range(header)
    }

    /// The BTH.
    pub fn bth(&self) -> bth::Packet<&[u8]> {
        let buffer = self.buffer.as_ref();
        bth::Packet::new_unchecked(&buffer[..bth::HEADER_LEN.min(buffer.len())])
    }

    /// The opcode (shorthand for `self.bth().opcode()`).
    pub fn opcode(&self) -> Opcode {
        Opcode::from(self.buffer.as_ref().first().copied().unwrap_or(0))
    }

    /// Length of the BTH and the extension headers.
    pub fn header_len(&self) -> usize {
        self.layout().header_len
    }

    /// The BTH and the extension headers.
    pub fn headers(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.layout().header_len]
    }

    /// The DETH, if the opcode implies one.
    pub fn deth(&self) -> Option<deth::Packet<&[u8]>> {
        let range = self.ext_range(ExtHeader::Deth)?;
        Some(deth::Packet::new_unchecked(&self.buffer.as_ref()[range]))
    }

    /// The RETH, if the opcode implies one.
    pub fn reth(&self) -> Option<reth::Packet<&[u8]>> {
        let range = self.ext_range(ExtHeader::Reth)?;
        Some(reth::Packet::new_unchecked(&self.buffer.as_ref()[range]))
    }

    /// The AETH, if the opcode implies one.
    pub fn aeth(&self) -> Option<aeth::Packet<&[u8]>> {
        let range = self.ext_range(ExtHeader::Aeth)?;
        Some(aeth::Packet::new_unchecked(&self.buffer.as_ref()[range]))
    }

    /// The AtomicETH, if the opcode implies one.
    pub fn atomic_eth(&self) -> Option<atomic_eth::Packet<&[u8]>> {
        let range = self.ext_range(ExtHeader::AtomicEth)?;
        Some(atomic_eth::Packet::new_unchecked(
            &self.buffer.as_ref()[range],
        ))
    }

    /// The AtomicAckETH, if the opcode implies one.
    pub fn atomic_ack_eth(&self) -> Option<atomic_ack_eth::Packet<&[u8]>> {
        let range = self.ext_range(ExtHeader::AtomicAckEth)?;
        Some(atomic_ack_eth::Packet::new_unchecked(
            &self.buffer.as_ref()[range],
        ))
    }

    /// The immediate data header, if the opcode implies one.
    pub fn immdt(&self) -> Option<immdt::Packet<&[u8]>> {
        let range = self.ext_range(ExtHeader::ImmDt)?;
        Some(immdt::Packet::new_unchecked(&self.buffer.as_ref()[range]))
    }

    /// The IETH, if the opcode implies one.
    pub fn ieth(&self) -> Option<ieth::Packet<&[u8]>> {
        let range = self.ext_range(ExtHeader::Ieth)?;
        Some(ieth::Packet::new_unchecked(&self.buffer.as_ref()[range]))
    }

    /// The payload: the bytes between the headers and the pad.
    pub fn payload(&self) -> &[u8] {
        let layout = self.layout();
        &self.buffer.as_ref()[layout.header_len..layout.payload_end]
    }

    /// The pad bytes (their number is the BTH pad count).
    pub fn pad(&self) -> &[u8] {
        let layout = self.layout();
        &self.buffer.as_ref()[layout.payload_end..layout.icrc_start]
    }

    /// Everything the ICRC covers after the BTH: extension headers, payload and pad.
    pub fn after_bth(&self) -> &[u8] {
        let layout = self.layout();
        let start = bth::HEADER_LEN.min(layout.icrc_start);
        &self.buffer.as_ref()[start..layout.icrc_start]
    }

    /// The ICRC as sent: the four last bytes, least significant byte first (see
    /// [`crate::icrc`]). Zero for a buffer shorter than four bytes.
    pub fn icrc(&self) -> u32 {
        let buffer = self.buffer.as_ref();
        let start = buffer.len().saturating_sub(ICRC_LEN);
        match <[u8; ICRC_LEN]>::try_from(&buffer[start..]) {
            Ok(bytes) => u32::from_le_bytes(bytes),
            Err(_) => 0,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// The BTH, mutably. Changing the opcode or the pad count changes where the other parts
    /// lie: run [`Packet::check_len`] again before trusting them.
    pub fn bth_mut(&mut self) -> bth::Packet<&mut [u8]> {
        let buffer = self.buffer.as_mut();
        let end = bth::HEADER_LEN.min(buffer.len());
        bth::Packet::new_unchecked(&mut buffer[..end])
    }

    /// The DETH, mutably, if the opcode implies one.
    pub fn deth_mut(&mut self) -> Option<deth::Packet<&mut [u8]>> {
        let range = self.ext_range(ExtHeader::Deth)?;
        Some(deth::Packet::new_unchecked(
            &mut self.buffer.as_mut()[range],
        ))
    }

    /// The RETH, mutably, if the opcode implies one.
    pub fn reth_mut(&mut self) -> Option<reth::Packet<&mut [u8]>> {
        let range = self.ext_range(ExtHeader::Reth)?;
        Some(reth::Packet::new_unchecked(
            &mut self.buffer.as_mut()[range],
        ))
    }

    /// The AETH, mutably, if the opcode implies one.
    pub fn aeth_mut(&mut self) -> Option<aeth::Packet<&mut [u8]>> {
        let range = self.ext_range(ExtHeader::Aeth)?;
        Some(aeth::Packet::new_unchecked(
            &mut self.buffer.as_mut()[range],
        ))
    }

    /// The AtomicETH, mutably, if the opcode implies one.
    pub fn atomic_eth_mut(&mut self) -> Option<atomic_eth::Packet<&mut [u8]>> {
        let range = self.ext_range(ExtHeader::AtomicEth)?;
        Some(atomic_eth::Packet::new_unchecked(
            &mut self.buffer.as_mut()[range],
        ))
    }

    /// The AtomicAckETH, mutably, if the opcode implies one.
    pub fn atomic_ack_eth_mut(&mut self) -> Option<atomic_ack_eth::Packet<&mut [u8]>> {
        let range = self.ext_range(ExtHeader::AtomicAckEth)?;
        Some(atomic_ack_eth::Packet::new_unchecked(
            &mut self.buffer.as_mut()[range],
        ))
    }

    /// The immediate data header, mutably, if the opcode implies one.
    pub fn immdt_mut(&mut self) -> Option<immdt::Packet<&mut [u8]>> {
        let range = self.ext_range(ExtHeader::ImmDt)?;
        Some(immdt::Packet::new_unchecked(
            &mut self.buffer.as_mut()[range],
        ))
    }

    /// The IETH, mutably, if the opcode implies one.
    pub fn ieth_mut(&mut self) -> Option<ieth::Packet<&mut [u8]>> {
        let range = self.ext_range(ExtHeader::Ieth)?;
        Some(ieth::Packet::new_unchecked(
            &mut self.buffer.as_mut()[range],
        ))
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let layout = self.layout();
        &mut self.buffer.as_mut()[layout.header_len..layout.payload_end]
    }

    /// The pad bytes, mutably.
    pub fn pad_mut(&mut self) -> &mut [u8] {
        let layout = self.layout();
        &mut self.buffer.as_mut()[layout.payload_end..layout.icrc_start]
    }

    /// Writes the ICRC (least significant byte first). Does nothing to a buffer shorter than
    /// four bytes.
    pub fn set_icrc(&mut self, icrc: u32) {
        let buffer = self.buffer.as_mut();
        if let Some(start) = buffer.len().checked_sub(ICRC_LEN) {
            buffer[start..].copy_from_slice(&icrc.to_le_bytes());
        }
    }
}

/// The meaning of an IB packet: its headers and the length of its payload.
///
/// Exactly the extension headers that [`Opcode::ext_headers`] names are `Some`. The pad count
/// is the BTH's: [`Repr::with_payload_len`] sets it to what IBTA requires (payload + pad a
/// multiple of four).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The BTH.
    pub bth: bth::Repr,
    /// DETH (UD only).
    pub deth: Option<deth::Repr>,
    /// RETH.
    pub reth: Option<reth::Repr>,
    /// AETH.
    pub aeth: Option<aeth::Repr>,
    /// AtomicETH.
    pub atomic_eth: Option<atomic_eth::Repr>,
    /// AtomicAckETH.
    pub atomic_ack_eth: Option<atomic_ack_eth::Repr>,
    /// Immediate data.
    pub immdt: Option<immdt::Repr>,
    /// IETH.
    pub ieth: Option<ieth::Repr>,
    /// Length of the payload in bytes (not counting pad and ICRC).
    pub payload_len: usize,
}

impl Repr {
    /// A packet with this BTH, no extension headers and no payload; fill in the rest.
    pub const fn new(bth: bth::Repr) -> Self {
        Repr {
            bth,
            deth: None,
            reth: None,
            aeth: None,
            atomic_eth: None,
            atomic_ack_eth: None,
            immdt: None,
            ieth: None,
            payload_len: 0,
        }
    }

    /// The pad count that makes `payload_len` plus pad a multiple of four.
    pub const fn pad_for(payload_len: usize) -> u8 {
        ((4 - payload_len % 4) % 4) as u8
    }

    /// Sets the payload length and the BTH pad count that goes with it.
    #[must_use]
    pub const fn with_payload_len(mut self, payload_len: usize) -> Self {
        self.set_payload_len(payload_len);
        self
    }

    /// Sets the payload length and the BTH pad count that goes with it, in place.
    pub const fn set_payload_len(&mut self, payload_len: usize) {
        self.payload_len = payload_len;
        self.bth.pad_count = Self::pad_for(payload_len);
    }

    /// Parses an IB packet (without checking its ICRC).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Self::parse_checked(packet)
    }

    /// Parses a packet whose structure [`Packet::check_len`] has passed, as [`Repr::parse`]
    /// does without checking it again. On a view that did not pass it, the header accessors
    /// may panic.
    pub(crate) fn parse_checked<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        // One layout for every part: each accessor of `Packet` would compute it again.
        let layout = packet.layout();
        let buffer = packet.buffer.as_ref();
        let ext = |header| layout.ext_range(header).map(|range| &buffer[range]);
        Ok(Repr {
            bth: bth::Repr::parse(&packet.bth())?,
            deth: ext(ExtHeader::Deth)
                .map(|bytes| deth::Repr::parse(&deth::Packet::new_unchecked(bytes)))
                .transpose()?,
            reth: ext(ExtHeader::Reth)
                .map(|bytes| reth::Repr::parse(&reth::Packet::new_unchecked(bytes)))
                .transpose()?,
            aeth: ext(ExtHeader::Aeth)
                .map(|bytes| aeth::Repr::parse(&aeth::Packet::new_unchecked(bytes)))
                .transpose()?,
            atomic_eth: ext(ExtHeader::AtomicEth)
                .map(|bytes| atomic_eth::Repr::parse(&atomic_eth::Packet::new_unchecked(bytes)))
                .transpose()?,
            atomic_ack_eth: ext(ExtHeader::AtomicAckEth)
                .map(|bytes| {
                    atomic_ack_eth::Repr::parse(&atomic_ack_eth::Packet::new_unchecked(bytes))
                })
                .transpose()?,
            immdt: ext(ExtHeader::ImmDt)
                .map(|bytes| immdt::Repr::parse(&immdt::Packet::new_unchecked(bytes)))
                .transpose()?,
            ieth: ext(ExtHeader::Ieth)
                .map(|bytes| ieth::Repr::parse(&ieth::Packet::new_unchecked(bytes)))
                .transpose()?,
            payload_len: layout.payload_end - layout.header_len,
        })
    }

    /// The extension headers that are `Some`.
    pub fn present_headers(&self) -> ExtHeaders {
        [
            (self.deth.is_some(), ExtHeader::Deth),
            (self.reth.is_some(), ExtHeader::Reth),
            (self.aeth.is_some(), ExtHeader::Aeth),
            (self.atomic_eth.is_some(), ExtHeader::AtomicEth),
            (self.atomic_ack_eth.is_some(), ExtHeader::AtomicAckEth),
            (self.immdt.is_some(), ExtHeader::ImmDt),
            (self.ieth.is_some(), ExtHeader::Ieth),
        ]
        .into_iter()
        .filter(|(is_some, _)| *is_some)
        .fold(ExtHeaders::EMPTY, |set, (_, header)| set.with(header))
    }

    /// Checks that the headers match the opcode, that an opcode without payload has no
    /// payload and no pad, and that the pad count fits its two bits.
    pub fn check(&self) -> Result<(), Error> {
        let opcode = self.bth.opcode;
        if self.present_headers() != opcode.ext_headers() || self.bth.pad_count > 3 {
            return Err(Error::Malformed);
        }
        if !opcode.has_payload() && (self.payload_len != 0 || self.bth.pad_count != 0) {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    /// Length of the BTH and the extension headers.
    pub const fn header_len(&self) -> usize {
        bth::HEADER_LEN + self.bth.opcode.ext_headers().header_len()
    }

    /// Length of the whole packet: headers, payload, pad, ICRC.
    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len + (self.bth.pad_count & 0x3) as usize + ICRC_LEN
    }

    /// Writes the headers and zero pad bytes. The payload and the ICRC are left as they are:
    /// the caller copies the payload in (see [`crate::icrc::Icrc::update_copy`]) and fills
    /// the ICRC.
    ///
    /// Fails with [`Error::Malformed`] if [`Repr::check`] does, with [`Error::Truncated`] if
    /// the buffer is shorter than [`Repr::buffer_len`] and with [`Error::Malformed`] if it is
    /// longer (the payload length is taken from the buffer length).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<(), Error> {
        self.check()?;
        let length = packet.buffer.as_ref().len();
        if length < self.buffer_len() {
            return Err(Error::Truncated);
        }
        if length > self.buffer_len() {
            return Err(Error::Malformed);
        }
        self.bth.emit(&mut packet.bth_mut());
        // One layout for every part, as in `parse_checked`.
        let layout = packet.layout();
        let buffer = packet.buffer.as_mut();
        if let (Some(repr), Some(range)) = (self.deth, layout.ext_range(ExtHeader::Deth)) {
            repr.emit(&mut deth::Packet::new_unchecked(&mut buffer[range]));
        }
        if let (Some(repr), Some(range)) = (self.reth, layout.ext_range(ExtHeader::Reth)) {
            repr.emit(&mut reth::Packet::new_unchecked(&mut buffer[range]));
        }
        if let (Some(repr), Some(range)) = (self.aeth, layout.ext_range(ExtHeader::Aeth)) {
            repr.emit(&mut aeth::Packet::new_unchecked(&mut buffer[range]));
        }
        if let (Some(repr), Some(range)) = (self.atomic_eth, layout.ext_range(ExtHeader::AtomicEth))
        {
            repr.emit(&mut atomic_eth::Packet::new_unchecked(&mut buffer[range]));
        }
        if let (Some(repr), Some(range)) = (
            self.atomic_ack_eth,
            layout.ext_range(ExtHeader::AtomicAckEth),
        ) {
            repr.emit(&mut atomic_ack_eth::Packet::new_unchecked(
                &mut buffer[range],
            ));
        }
        if let (Some(repr), Some(range)) = (self.immdt, layout.ext_range(ExtHeader::ImmDt)) {
            repr.emit(&mut immdt::Packet::new_unchecked(&mut buffer[range]));
        }
        if let (Some(repr), Some(range)) = (self.ieth, layout.ext_range(ExtHeader::Ieth)) {
            repr.emit(&mut ieth::Packet::new_unchecked(&mut buffer[range]));
        }
        buffer[layout.payload_end..layout.icrc_start].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::aeth::Syndrome;

    fn ack_bytes() -> [u8; 20] {
        [
            0x11, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x05, // BTH
            0x1f, 0x00, 0x00, 0x03, // AETH
            0x01, 0x02, 0x03, 0x04, // ICRC
        ]
    }

    #[test]
    fn ack_parses() {
        let bytes = ack_bytes();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.opcode(), Opcode::RcAcknowledge);
        assert_eq!(packet.header_len(), 16);
        assert_eq!(packet.aeth().unwrap().msn(), 3);
        assert!(packet.aeth().unwrap().syndrome().is_ack());
        assert!(packet.reth().is_none());
        assert!(packet.payload().is_empty());
        assert_eq!(packet.icrc(), 0x0403_0201);
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr.aeth.unwrap().syndrome,
            Syndrome::Ack { credit_count: 0x1f }
        );
        let mut out = [0u8; 20];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(out[..16], bytes[..16]);
    }

    #[test]
    fn ack_with_payload_is_malformed() {
        let mut bytes = [0u8; 24];
        bytes[..16].copy_from_slice(&ack_bytes()[..16]);
        assert_eq!(Packet::new_checked(&bytes[..]), Err(Error::Malformed));
        let mut padded = ack_bytes();
        padded[1] = 0x10;
        assert_eq!(Packet::new_checked(&padded[..]), Err(Error::Malformed));
    }

    #[test]
    fn missing_headers_are_truncated() {
        let bytes = ack_bytes();
        assert_eq!(Packet::new_checked(&bytes[..19]), Err(Error::Truncated));
        assert_eq!(Packet::new_checked(&bytes[..15]), Err(Error::Truncated));
    }

    #[test]
    fn pad_longer_than_payload_is_malformed() {
        // SEND Only with pad 3 but a single byte after the BTH before the ICRC.
        let mut bytes = [0u8; 17];
        bytes[0] = 0x04;
        bytes[1] = 0x30;
        assert_eq!(Packet::new_checked(&bytes[..]), Err(Error::Malformed));
        // The accessors still stay in bounds.
        let packet = Packet::new_unchecked(&bytes[..]);
        assert!(packet.payload().is_empty());
        assert_eq!(packet.pad().len(), 1);
    }

    #[test]
    fn unknown_opcode_is_bth_and_payload() {
        let mut bytes = [0u8; 22];
        bytes[0] = 0x15;
        bytes[1] = 0x20;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.opcode(), Opcode::Unknown(0x15));
        assert_eq!(packet.payload().len(), 4);
        assert_eq!(packet.pad().len(), 2);
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr.payload_len, 4);
        assert_eq!(repr.buffer_len(), 22);
    }

    #[test]
    fn emit_checks_headers_against_opcode() {
        let bth = bth::Repr {
            opcode: Opcode::RcRdmaWriteOnly,
            solicited_event: false,
            migration_request: false,
            pad_count: 0,
            transport_version: 0,
            pkey: 0xffff,
            fecn: false,
            becn: false,
            dest_qpn: 0x11,
            ack_request: true,
            psn: 0,
        };
        let repr = Repr::new(bth).with_payload_len(5);
        assert_eq!(repr.bth.pad_count, 3);
        let mut buffer = [0u8; 41];
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut buffer[..40])),
            Err(Error::Malformed)
        );
        let repr = Repr {
            reth: Some(reth::Repr {
                virtual_address: 0x1000,
                rkey: 0x42,
                dma_length: 5,
            }),
            ..repr
        };
        assert_eq!(repr.buffer_len(), 12 + 16 + 5 + 3 + 4);
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut buffer[..39])),
            Err(Error::Truncated)
        );
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut buffer[..])),
            Err(Error::Malformed)
        );
        let mut buffer = [0xeeu8; 40];
        repr.emit(&mut Packet::new_unchecked(&mut buffer[..]))
            .unwrap();
        let packet = Packet::new_checked(&buffer[..]).unwrap();
        assert_eq!(packet.payload(), &[0xee; 5]);
        assert_eq!(packet.pad(), &[0; 3]);
        assert_eq!(Repr::parse(&packet).unwrap(), repr);
    }
}
