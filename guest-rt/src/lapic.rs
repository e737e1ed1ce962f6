//! The local APIC (xAPIC, memory-mapped at [`LAPIC_BASE`]): IPIs, the timer, end of interrupt.
//!
//! The host maps the APIC page uncached. With KVM's in-kernel irqchip, IPIs between the two
//! vCPUs never leave the kernel.

use shm_ring::layout::{LAPIC_BASE, SPURIOUS_VECTOR, TIMER_VECTOR};

const ID: usize = 0x20;
const TASK_PRIORITY: usize = 0x80;
const EOI: usize = 0xB0;
const SPURIOUS: usize = 0xF0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
const LVT_TIMER: usize = 0x320;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3E0;

const LVT_MASKED: u32 = 1 << 16;

fn read(register: usize) -> u32 {
    let address = (LAPIC_BASE as usize + register) as *const u32;
    // SAFETY: the host maps the APIC page at LAPIC_BASE for every OS; `register` is one of the
    // aligned register offsets above.
    unsafe { core::ptr::read_volatile(address) }
}

fn write(register: usize, value: u32) {
    let address = (LAPIC_BASE as usize + register) as *mut u32;
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile(address, value) }
}

/// Software-enables the APIC, accepts all priorities and masks the timer.
pub(crate) fn init() {
    write(TASK_PRIORITY, 0);
    write(SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(TIMER_DIVIDE, 0b1011); // divide by 1
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Signals end of interrupt.
pub fn end_of_interrupt() {
    write(EOI, 0);
}

/// Sends a fixed IPI with `vector` to the CPU with APIC ID `destination`.
pub fn send_ipi(destination: u32, vector: u8) {
    write(ICR_HIGH, destination << 24);
    // Fixed delivery, physical destination, level assert.
    write(ICR_LOW, u32::from(vector) | (1 << 14));
}

/// Starts the timer counting down from `ticks`; it interrupts once at zero.
pub fn start_one_shot(ticks: u32) {
    write(LVT_TIMER, u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, ticks.max(1));
}

/// Stops the timer.
pub fn stop_timer() {
    write(TIMER_INITIAL, 0);
    write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
}

/// Starts a free-running count for calibration and returns a reader of the remaining count.
pub(crate) fn start_calibration() {
    write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, u32::MAX);
}

/// The timer's current count.
pub(crate) fn current_count() -> u32 {
    read(TIMER_CURRENT)
}
