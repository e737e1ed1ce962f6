//! RoCEv2 for duovm: wire formats, the invariant CRC and (later) the verbs and RC transport.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
