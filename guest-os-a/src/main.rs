//! OS A: the application OS of a duovm VM.
//!
//! OS A runs the client application and (with the RDMA engine) the virtual RDMA NIC. It never
//! touches a network device: everything it sends goes to OS B through the shared rings.
//! This kernel is a thin shell: `guest-rt` brings the CPU up, and the workload named in the
//! boot info runs.
#![no_std]
#![no_main]

mod net;
mod netbench;
mod rdma;
mod workloads;

use guest_rt::{Platform, println};

guest_rt::entry!(main);

fn main(platform: &Platform) -> ! {
    println!(
        "hello from OS A: apic {} tsc {} kHz, segment {:#x}+{} MiB, shared {:#x}+{} MiB",
        guest_rt::lapic::id(),
        guest_rt::time::tsc_khz(),
        platform.boot_info.segment.base,
        platform.boot_info.segment.size >> 20,
        platform.boot_info.shared.base,
        platform.boot_info.shared.size >> 20,
    );
    workloads::run(platform)
}
