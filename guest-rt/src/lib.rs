//! The bare-metal x86_64 runtime both duovm guest kernels stand on.
//!
//! The host agent starts each OS directly in 64-bit long mode: paging on (the host's page tables
//! map only this OS's segment, the shared segment and its devices), a flat boot GDT, interrupts
//! off, `RSP` at the top of the boot stack and `RDI` pointing at the OS's [`BootInfo`]. This
//! crate takes it from there:
//!
//! - [`entry!`] defines `_start`, which aligns the stack and calls [`boot`];
//! - [`boot`] validates the boot info, brings up the serial log, loads the runtime's own GDT and
//!   TSS (with IST stacks for double faults, NMIs and machine checks), the IDT and the local
//!   APIC, calibrates the APIC timer against the TSC, and calls the kernel's main function;
//! - [`serial`], [`lapic`], [`time`], [`interrupts`] and [`exit`] are the services a kernel uses.
//!
//! Every exception is fatal: the handler logs vector, error code, `RIP` and `CR2` and ends the
//! VM through the debug-exit port with [`exit::Status::Fault`], passing the same facts in
//! registers so the host can report them even if the log is lost. A panic logs its message and
//! ends with [`exit::Status::Panic`].
//!
//! Everything here is `unsafe` at the bottom (port I/O, MSRs, MMIO, descriptor tables); each
//! operation lives in one small function with its `// SAFETY:` argument, and the kernels above
//! it are safe code.
#![no_std]

pub mod control;
pub mod cpu;
pub mod exit;
mod gdt;
pub mod heap;
pub mod interrupts;
pub mod lapic;
pub mod peer;
pub mod ring;
pub mod serial;
pub mod time;

pub use shm_ring::bootinfo::BootInfo;
use shm_ring::layout::Role;

/// Facts about the running OS, handed to the kernel's main function.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    /// This OS's role.
    pub role: Role,
    /// A copy of the boot info block.
    pub boot_info: BootInfo,
}

/// Defines the kernel entry point `_start`, which calls [`boot`] with the kernel's
/// `fn main(&Platform) -> !`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        fn guest_rt_kernel_main(platform: &$crate::Platform) -> ! {
            let main: fn(&$crate::Platform) -> ! = $main;
            main(platform)
        }
    };
}

unsafe extern "Rust" {
    fn guest_rt_kernel_main(platform: &Platform) -> !;
}

core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    and rsp, -16",
    "    xor ebp, ebp",
    "    call {boot}",
    "    ud2",
    boot = sym boot_trampoline,
);

extern "C" fn boot_trampoline(boot_info: *const BootInfo) -> ! {
    boot(boot_info)
}

/// Brings the platform up and runs the kernel's main function; never returns.
///
/// Called from `_start` with the pointer the host put in `RDI`.
pub fn boot(boot_info: *const BootInfo) -> ! {
    // The host maps the boot info page read-only; copy it out once, volatile because the host
    // owns that memory.
    let info = cpu::read_boot_info(boot_info);
    let role = match info.validate() {
        Ok(role) => role,
        Err(error) => {
            // No serial port is known yet: try OS A's, then end.
            serial::init(shm_ring::layout::SERIAL_PORT_A);
            crate::println!("boot info rejected: {error}");
            exit::exit(exit::Status::BadBoot);
        }
    };
    serial::init(info.serial_port as u16);
    heap::init(info.stack.base);
    gdt::init();
    interrupts::init();
    lapic::init();
    time::init(info.tsc_khz);
    control::init(&info, role);
    let platform = Platform {
        role,
        boot_info: info,
    };
    // SAFETY: `guest_rt_kernel_main` is defined by the kernel through `entry!` with exactly this
    // signature.
    unsafe { guest_rt_kernel_main(&platform) }
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cpu::disable_interrupts();
    crate::println!("panic: {info}");
    exit::exit(exit::Status::Panic)
}

/// The control block of an OS in the shared segment.
pub fn control_block(info: &BootInfo, role: Role) -> shm_ring::control::ControlView {
    let address = control_address(info, role);
    // SAFETY: `BootInfo::validate` checked that the control region lies inside the shared
    // segment, which the host maps for both OSes for the VM's lifetime; the host aligns it.
    unsafe { shm_ring::control::ControlView::new(address as *mut u8) }
}

/// The guest address of an OS's control block.
fn control_address(info: &BootInfo, role: Role) -> u64 {
    let region = match role {
        Role::A => info.shared_layout.control_a,
        Role::B => info.shared_layout.control_b,
    };
    info.shared_address(region.base)
}

/// Waits, with interrupts enabled, until `done` returns true; halts between checks.
///
/// The check runs with interrupts off, and `sti; hlt` re-enables them atomically, so an
/// interrupt that makes `done` true cannot slip in between the check and the halt. A backstop
/// timer of `recheck_ns` bounds each halt, so a condition that changes without an interrupt
/// is still seen.
pub fn wait_until(recheck_ns: u64, mut done: impl FnMut() -> bool) {
    loop {
        cpu::disable_interrupts();
        if done() {
            lapic::stop_timer();
            cpu::enable_interrupts();
            return;
        }
        time::arm_timer(recheck_ns);
        cpu::enable_interrupts_and_halt();
    }
}
