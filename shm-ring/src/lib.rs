//! Everything duovm keeps in guest memory that more than one party reads.
//!
//! duovm runs two bare-metal OSes in one KVM virtual machine. OS A (the RDMA OS) and OS B (the
//! network OS) share one segment of guest memory; the host agent builds the VM and inspects it.
//! This crate is the single source of truth for what lives there, so that the host, OS A and
//! OS B agree by construction:
//!
//! - [`layout`]: the guest-physical memory map, I/O ports and interrupt vectors.
//! - [`bootinfo`]: the versioned boot information block the host hands each OS.
//! - [`ring`]: a lock-free single-producer/single-consumer descriptor ring that lives in a
//!   caller-provided region of shared memory.
//! - [`pool`]: packet buffer pools with lock-free buffer return.
//! - [`desc`]: the descriptors the rings carry.
//! - [`netmsg`]: the network service protocol between OS A and OS B that runs over the rings.
//!
//! Everything read out of shared memory is untrusted: the peer may be buggy or hostile, so every
//! index and descriptor is validated before use and a bad value is an error, never undefined
//! behaviour, a panic or an access outside the region.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bootinfo;
pub mod control;
pub mod desc;
pub mod layout;
pub mod netmsg;
#[cfg(any(test, feature = "std"))]
mod owned;
pub mod pool;
pub mod ring;
pub mod shared;
pub mod stream;
mod sync;

#[cfg(any(test, feature = "std"))]
pub use owned::{OWNED_REGION_ALIGN, OwnedRegion};
