//! Monotonic time from the TSC and one-shot timers from the APIC timer.
//!
//! The host passes the TSC frequency (`KVM_GET_TSC_KHZ`) in the boot info; the APIC timer's
//! rate is measured against the TSC once at boot.

use core::sync::atomic::{AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(1_000_000);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static APIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(1_000_000);
/// Nanoseconds per TSC tick, 48 fractional bits ([`scale`]).
static NS_PER_TSC_TICK: AtomicU64 = AtomicU64::new(1 << 48);
/// APIC timer ticks per nanosecond, 48 fractional bits.
static APIC_TICKS_PER_NS: AtomicU64 = AtomicU64::new(1 << 48);
/// TSC ticks per nanosecond, 48 fractional bits.
static TSC_TICKS_PER_NS: AtomicU64 = AtomicU64::new(1 << 48);

/// `per` units of one kind per `whole` units of another, as a factor with 32 fractional
/// bits for [`scale`]. Computed once, at boot: the clock's hot paths then multiply instead of
/// dividing (a 128-bit division is a library call of a hundred or more instructions, each
/// emulated where KVM emulates guest instructions).
const fn ratio(per: u64, whole: u64) -> u64 {
    let factor = ((per as u128) << 48) / (if whole == 0 { 1 } else { whole } as u128);
    if factor > u64::MAX as u128 {
        u64::MAX
    } else {
        factor as u64
    }
}

/// `value` times a [`ratio`] factor, saturating.
const fn scale(value: u64, factor: u64) -> u64 {
    let scaled = (value as u128 * factor as u128) >> 48;
    if scaled > u64::MAX as u128 {
        u64::MAX
    } else {
        scaled as u64
    }
}

// One second of a 2.596 GHz TSC (both ways), and 10 ms of a 1 GHz APIC timer, within a tick of
// exact;
// a day of the TSC within 10 ns.
const _: () = {
    let ns = scale(2_596_120_000, ratio(1_000_000, 2_596_120));
    assert!(ns.abs_diff(1_000_000_000) <= 1);
    let ticks = scale(10_000_000, ratio(1_000_000, 1_000_000));
    assert!(ticks == 10_000_000);
    let day = scale(2_596_120_000 * 86_400, ratio(1_000_000, 2_596_120));
    assert!(day.abs_diff(86_400_000_000_000) <= 10);
    assert!(scale(u64::MAX, ratio(1_000_000, 1)) == u64::MAX);
    let tsc = scale(1_000_000_000, ratio(2_596_120, 1_000_000));
    assert!(tsc.abs_diff(2_596_120_000) <= 1);
};

/// Records the TSC rate and calibrates the APIC timer over a short TSC interval.
pub(crate) fn init(tsc_khz: u64) {
    let tsc_khz = tsc_khz.max(1);
    TSC_KHZ.store(tsc_khz, Ordering::Relaxed);
    NS_PER_TSC_TICK.store(ratio(1_000_000, tsc_khz), Ordering::Relaxed);
    TSC_TICKS_PER_NS.store(ratio(tsc_khz, 1_000_000), Ordering::Relaxed);
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
    APIC_TICKS_PER_NS.store(ratio(per_ms.max(1), 1_000_000), Ordering::Relaxed);
}

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    let ticks = crate::cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    scale(ticks, NS_PER_TSC_TICK.load(Ordering::Relaxed))
}

/// TSC ticks in `nanoseconds` (saturating).
pub fn tsc_ticks_from_ns(nanoseconds: u64) -> u64 {
    scale(nanoseconds, TSC_TICKS_PER_NS.load(Ordering::Relaxed))
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
    let ticks = scale(nanoseconds, APIC_TICKS_PER_NS.load(Ordering::Relaxed));
    crate::lapic::start_one_shot(ticks.clamp(1, u64::from(u32::MAX)) as u32);
}
