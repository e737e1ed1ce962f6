//! OS B: the network OS of a duovm VM.
//!
//! OS B owns the network: it drains the rings OS A fills and (with the network engine) carries
//! the packets over its virtio-net device. This kernel is a thin shell: `guest-rt` brings the
//! CPU up, and the workload named in the boot info runs.
#![no_std]
#![no_main]

mod net;
mod nic;
mod workloads;

use guest_rt::{Platform, println};

guest_rt::entry!(main);

fn main(platform: &Platform) -> ! {
    println!(
        "hello from OS B: apic {} tsc {} kHz, segment {:#x}+{} MiB, shared {:#x}+{} MiB",
        guest_rt::lapic::id(),
        guest_rt::time::tsc_khz(),
        platform.boot_info.segment.base,
        platform.boot_info.segment.size >> 20,
        platform.boot_info.shared.base,
        platform.boot_info.shared.size >> 20,
    );
    workloads::run(platform)
}
