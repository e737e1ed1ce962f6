//! Ending the VM and notifying the host.

use core::arch::asm;

use shm_ring::layout::{DEBUG_EXIT_PORT, HYPERCALL_PORT, Hypercall};

/// The status an OS ends with (shared with the host).
pub use shm_ring::layout::ExitStatus as Status;

/// Ends this OS with `status`.
pub fn exit(status: Status) -> ! {
    crate::cpu::outl(DEBUG_EXIT_PORT, status as u32);
    crate::cpu::halt_forever()
}

/// Ends this OS with [`Status::Fault`], passing the fault's facts in registers.
pub fn exit_fault(vector: u64, error_code: u64, cr2: u64, rip: u64) -> ! {
    // SAFETY: a port write the host emulates; the extra registers are only read by the host.
    unsafe {
        asm!(
            "out dx, eax",
            in("dx") DEBUG_EXIT_PORT,
            in("eax") Status::Fault as u32,
            in("rsi") vector,
            in("r9") error_code,
            in("rcx") cr2,
            in("r8") rip,
            options(nomem, nostack),
        )
    }
    crate::cpu::halt_forever()
}

/// Notifies the host through the hypercall port.
pub fn hypercall(call: Hypercall) {
    crate::cpu::outl(HYPERCALL_PORT, call as u32);
}
