//! Monotonic time from the TSC and one-shot timers from the APIC timer.
//!
//! The host passes the TSC frequency (`KVM_GET_TSC_KHZ`) in the boot info; the APIC timer's
//! rate is measured against the TSC once at boot.

use core::sync::atomic::{AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(1_000_000);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static APIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(1_000_000);

/// Records the TSC rate and calibrates the APIC timer over a short TSC interval.
pub(crate) fn init(tsc_khz: u64) {
    let tsc_khz = tsc_khz.max(1);
    TSC_KHZ.store(tsc_khz, Ordering::Relaxed);
    let start = crate::cpu::rdtsc();
    BOOT_TSC.store(start, Ordering::Relaxed);
    // Calibrate over 1 ms of TSC time.
    crate::lapic::start_calibration();
    let before = crate::lapic::current_count();
    let tsc_start = crate::cpu::rdtsc();
    while crate::cpu::rdtsc().wrapping_sub(tsc_start) < tsc_khz {
        core::hint::spin_loop();
    }
    let after = crate::lapic::current_count();
    let elapsed_tsc = crate::cpu::rdtsc().wrapping_sub(tsc_start).max(1);
    crate::lapic::stop_timer();
    let ticks = u64::from(before.wrapping_sub(after));
    let per_ms = (u128::from(ticks) * u128::from(tsc_khz) / u128::from(elapsed_tsc)) as u64;
    APIC_TICKS_PER_MS.store(per_ms.max(1), Ordering::Relaxed);
}

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    let ticks = crate::cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000 / u128::from(TSC_KHZ.load(Ordering::Relaxed))) as u64
}

/// The TSC frequency in kHz.
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// APIC timer ticks per millisecond, as measured at boot.
pub fn apic_ticks_per_ms() -> u64 {
    APIC_TICKS_PER_MS.load(Ordering::Relaxed)
}

/// Arms the APIC timer to interrupt once after `nanoseconds`.
pub fn arm_timer(nanoseconds: u64) {
    let ticks = u128::from(nanoseconds) * u128::from(apic_ticks_per_ms()) / 1_000_000;
    crate::lapic::start_one_shot(ticks.clamp(1, u128::from(u32::MAX)) as u32);
}
