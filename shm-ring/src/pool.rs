//! Packet buffer pools in shared memory.
