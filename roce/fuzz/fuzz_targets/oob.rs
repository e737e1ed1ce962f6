//! Arbitrary bytes as the connection messages a peer sends over TCP (`ibv_rc_pingpong`'s and
//! perftest's): nothing may panic, and whatever parses must format back to a message that
//! parses to the same value.
//!
//! ```text
//! cd roce/fuzz && cargo +nightly fuzz run oob
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;
use roce::oob::Destination;
use roce::perftest::{self, BwReport, Keys};

fuzz_target!(|data: &[u8]| {
    if let Ok(destination) = Destination::from_message(data) {
        assert_eq!(
            Destination::from_message(&destination.to_message()),
            Ok(destination)
        );
    }
    if let Ok(keys) = Keys::from_message(data) {
        let again = Keys::from_message(&keys.to_message()).expect("formatted keys parse");
        assert_eq!(again.qpn, keys.qpn);
        assert_eq!(again.vaddr, keys.vaddr);
        assert_eq!(again.gid, keys.gid);
    }
    let _ = perftest::version_hundredths(data);
    if let Some(mtu) = perftest::parse_mtu(data) {
        assert_eq!(perftest::parse_mtu(&perftest::mtu_message(mtu)), Some(mtu));
    }
    if let Some(fields) = data.get(..40) {
        let mut messages = [[0u8; 8]; 5];
        for (message, chunk) in messages.iter_mut().zip(fields.chunks_exact(8)) {
            message.copy_from_slice(chunk);
        }
        let report = BwReport::from_messages(&messages);
        assert_eq!(report.to_messages(), messages);
    }
});
