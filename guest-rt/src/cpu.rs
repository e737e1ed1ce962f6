//! Single x86_64 instructions: port I/O, MSRs, control registers, TSC, interrupt flag.

use core::arch::asm;

use crate::BootInfo;

/// Writes a byte to an I/O port.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects in this VM: every port is emulated by the host
    // agent or ignored.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit value to an I/O port.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 32-bit value from an I/O port.
#[inline]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDTSC only reads the counter.
    unsafe {
        asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    }
    (u64::from(high) << 32) | u64::from(low)
}

/// Reads `CR2`, the faulting address of the last page fault.
#[inline]
pub fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects; we run at CPL 0.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Enables interrupts.
#[inline]
pub fn enable_interrupts() {
    // SAFETY: the IDT is loaded before any caller can reach this (see `boot`).
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Disables interrupts.
#[inline]
pub fn disable_interrupts() {
    // SAFETY: clearing IF has no memory effects.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Atomically enables interrupts and halts until the next one arrives.
///
/// `sti` takes effect after the following instruction, so an interrupt that became pending
/// while interrupts were off wakes this `hlt` instead of being lost.
#[inline]
pub fn enable_interrupts_and_halt() {
    // SAFETY: as for `enable_interrupts`; `hlt` just waits.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) }
}

/// Halts with interrupts off forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` stops this vCPU; nothing else happens.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// The feature flags in `CPUID.1:ECX`.
pub fn cpuid_1_ecx() -> u32 {
    core::arch::x86_64::__cpuid(1).ecx
}

/// Copies the boot info block out of the page the host wrote.
pub(crate) fn read_boot_info(pointer: *const BootInfo) -> BootInfo {
    // SAFETY: the host put a pointer to a mapped, readable BootInfo-sized block in RDI (the boot
    // contract of this runtime). `BootInfo` is `FromBytes`, so any bytes there form a valid
    // value, which `BootInfo::validate` then checks.
    unsafe { core::ptr::read_volatile(pointer) }
}

/// Loads an empty IDT and raises an exception: the CPU cannot deliver it, nor the double
/// fault that follows, and shuts down (a triple fault). Used by tests of the host's fault
/// reporting.
pub fn triple_fault() -> ! {
    let empty = [0u16; 5];
    // SAFETY: deliberately destroys this OS: after `lidt` with a zero limit every exception
    // escalates to a triple fault, which the host reports.
    unsafe { asm!("lidt [{}]", "ud2", in(reg) empty.as_ptr(), options(nostack)) }
    halt_forever()
}
