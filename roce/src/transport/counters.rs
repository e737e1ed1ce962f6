//! Engine counters: plain numbers the platform may export as metrics.
//!
//! Nothing on the packet path logs; every unusual event is counted here instead (rxe keeps
//! similar `hw_counters`, and where one has an rxe twin its name is given).

/// Why received packets were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounters {
    /// Too short, or lengths or headers inconsistent.
    pub malformed: u64,
    /// Wrong IPv4 header checksum or non-zero UDP checksum.
    pub bad_checksum: u64,
    /// Not IPv4/UDP to port 4791 without options or fragments.
    pub unsupported: u64,
    /// Addressed to another IPv4 address.
    pub wrong_destination: u64,
    /// BTH transport version not 0, P_Key not matching 0xFFFF, or a non-RC opcode.
    pub bad_header: u64,
    /// No QP with the destination QP number.
    pub unknown_qp: u64,
    /// Source address other than the QP's peer.
    pub wrong_source: u64,
    /// The QP is not in a state that takes this packet (requests before RTR, responses
    /// before RTS, anything in ERR).
    pub bad_state: u64,
    /// A request that arrived while the QP's response queue was full (the requester
    /// retries).
    pub responder_busy: u64,
    /// A response that matches no outstanding request or comes out of order (rxe drops
    /// these silently too).
    pub unexpected_response: u64,
    /// A request with a PSN after the expected one (answered by one sequence NAK).
    pub out_of_sequence: u64,
    /// A duplicate request that could not be replayed (no matching READ/atomic resource).
    pub stale_duplicate: u64,
}

impl DropCounters {
    /// Every dropped packet.
    pub fn total(&self) -> u64 {
        self.malformed
            + self.bad_checksum
            + self.unsupported
            + self.wrong_destination
            + self.bad_header
            + self.unknown_qp
            + self.wrong_source
            + self.bad_state
            + self.responder_busy
            + self.unexpected_response
            + self.out_of_sequence
            + self.stale_duplicate
    }
}

/// Requests a responder carried out, by operation: whole messages, each counted once when it
/// is executed (a duplicate that is acknowledged again or replayed is counted in
/// [`Counters::duplicate_requests`] instead; a refused one in the NAKs sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecutedCounters {
    /// SENDs (with or without immediate data) placed in a receive buffer.
    pub sends: u64,
    /// RDMA WRITEs (with or without immediate data) placed in memory.
    pub writes: u64,
    /// RDMA READ requests answered from memory.
    pub reads: u64,
    /// Atomic operations carried out (compare and swap, fetch and add).
    pub atomics: u64,
}

/// Counters of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Packets handed to the platform.
    pub packets_sent: u64,
    /// Bytes of the packets handed to the platform (whole IPv4 packets).
    pub bytes_sent: u64,
    /// Packets given to [`crate::verbs::Device::receive`].
    pub packets_received: u64,
    /// Bytes of those packets.
    pub bytes_received: u64,
    /// Request packets sent again by a go-back-N (a PSN at or below the highest sent).
    pub retransmitted_packets: u64,
    /// Go-back-Ns started (rxe `completer_retry_err`), renewed ones included.
    pub retries: u64,
    /// Retransmission timer expiries with requests outstanding.
    pub timeouts: u64,
    /// Duplicate requests received (rxe `duplicate_request`).
    pub duplicate_requests: u64,
    /// PSN sequence error NAKs sent (rxe `out_of_seq_request`).
    pub seq_naks_sent: u64,
    /// PSN sequence error NAKs received (rxe `rcvd_seq_err`).
    pub seq_naks_received: u64,
    /// RNR NAKs sent (rxe `send_rnr_nak`).
    pub rnr_naks_sent: u64,
    /// RNR NAKs received (rxe `rcvd_rnr_err`).
    pub rnr_naks_received: u64,
    /// Other NAKs (invalid request, remote access, remote operational error) sent.
    pub error_naks_sent: u64,
    /// Other NAKs received.
    pub error_naks_received: u64,
    /// Requests that ended with `RETRY_EXC_ERR` (rxe `retry_exceeded_err`).
    pub retry_exceeded: u64,
    /// Requests that ended with `RNR_RETRY_EXC_ERR` (rxe `retry_rnr_exceeded_err`).
    pub rnr_retry_exceeded: u64,
    /// Request PSNs this device's responders took in sequence: new work, duplicates not
    /// included (a READ request counts the PSNs of its response).
    pub accepted_psns: u64,
    /// Request PSNs of this device's requesters that the peer acknowledged (by ACK, NAK,
    /// READ response or atomic acknowledge), each once.
    pub acknowledged_psns: u64,
    /// Packets with a wrong ICRC, dropped (rxe drops them silently too).
    pub icrc_errors: u64,
    /// Other dropped packets, by reason.
    pub drops: DropCounters,
    /// Requests this device's responders carried out.
    pub executed: ExecutedCounters,
}
