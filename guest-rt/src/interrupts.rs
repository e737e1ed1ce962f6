//! The IDT, the interrupt entry stubs and interrupt dispatch.
//!
//! All 256 vectors get a 16-byte entry stub (generated in assembly at fixed 16-byte strides),
//! which pushes a dummy error code where the CPU pushes none, pushes the vector number and jumps
//! to a common stub that saves the caller-saved registers and calls `dispatch`. Vectors 0-31
//! are CPU exceptions and end the OS with a fault report. Other vectors count the interrupt, run
//! the handler the kernel registered with [`set_handler`], and acknowledge the local APIC.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::gdt;

/// Registers the stubs save, then what the stub and the CPU pushed.
#[derive(Debug)]
#[repr(C)]
pub struct InterruptFrame {
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    /// The vector number.
    pub vector: u64,
    /// The CPU's error code, or zero.
    pub error_code: u64,
    /// Where the interrupted code was.
    pub rip: u64,
    /// Its code segment.
    pub cs: u64,
    /// Its flags.
    pub rflags: u64,
    /// Its stack pointer.
    pub rsp: u64,
    /// Its stack segment.
    pub ss: u64,
}

global_asm!(
    ".section .text.guest_rt_isr, \"ax\"",
    ".balign 16",
    ".global guest_rt_isr_stubs",
    "guest_rt_isr_stubs:",
    ".set vector, 0",
    ".rept 256",
    ".balign 16",
    ".if (vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)",
    ".else",
    "    push 0",
    ".endif",
    "    push vector",
    "    jmp guest_rt_isr_common",
    ".set vector, vector + 1",
    ".endr",
    "guest_rt_isr_common:",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    mov rdi, rsp",
    "    cld",
    "    call {dispatch}",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    "    add rsp, 16",
    "    iretq",
    dispatch = sym dispatch,
);

unsafe extern "C" {
    static guest_rt_isr_stubs: [u8; 256 * 16];
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 error",
    "alignment check",
    "machine check",
    "SIMD error",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// A handler the kernel registers for a vector; runs with interrupts off.
pub type Handler = fn(vector: u8);

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static COUNTS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// Registers `handler` for `vector` (32..=255).
pub fn set_handler(vector: u8, handler: Handler) {
    HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
}

/// How many times `vector` was delivered.
pub fn count(vector: u8) -> u64 {
    COUNTS[usize::from(vector)].load(Ordering::Relaxed)
}

extern "C" fn dispatch(frame: &mut InterruptFrame) {
    let vector = frame.vector as usize & 0xff;
    if vector < 32 {
        fault(frame, vector);
    }
    COUNTS[vector].fetch_add(1, Ordering::Relaxed);
    let handler = HANDLERS[vector].load(Ordering::Acquire);
    if handler != 0 {
        // SAFETY: only `set_handler` stores non-zero values, and it stores `Handler`s.
        let handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
        handler(vector as u8);
    }
    if vector != usize::from(shm_ring::layout::SPURIOUS_VECTOR) {
        crate::lapic::end_of_interrupt();
    }
}

fn fault(frame: &InterruptFrame, vector: usize) -> ! {
    let cr2 = if vector == 14 { crate::cpu::cr2() } else { 0 };
    crate::println!(
        "exception {} ({}) at rip={:#x} error={:#x} cr2={:#x} rsp={:#x}",
        vector,
        EXCEPTION_NAMES[vector],
        frame.rip,
        frame.error_code,
        cr2,
        frame.rsp
    );
    crate::exit::exit_fault(vector as u64, frame.error_code, cr2, frame.rip)
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_middle: u16,
    offset_high: u32,
    reserved: u32,
}

struct IdtCell(UnsafeCell<[Gate; 256]>);

// SAFETY: written only by `init` on the boot path before interrupts are enabled.
unsafe impl Sync for IdtCell {}

static IDT: IdtCell = IdtCell(UnsafeCell::new(
    [Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_middle: 0,
        offset_high: 0,
        reserved: 0,
    }; 256],
));

#[repr(C, packed(2))]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

/// Fills and loads the IDT.
pub(crate) fn init() {
    let stubs = (&raw const guest_rt_isr_stubs) as u64;
    // SAFETY: `init` runs once with interrupts off; nothing else touches the IDT meanwhile.
    let idt = unsafe { &mut *IDT.0.get() };
    for (vector, gate) in idt.iter_mut().enumerate() {
        let handler = stubs + 16 * vector as u64;
        let ist = match vector {
            8 => gdt::IST_DOUBLE_FAULT,
            2 | 18 => gdt::IST_NMI,
            14 => gdt::IST_PAGE_FAULT,
            _ => 0,
        };
        *gate = Gate {
            offset_low: handler as u16,
            selector: gdt::CODE_SELECTOR,
            ist,
            attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_middle: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        };
    }
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: idt.as_ptr() as u64,
    };
    // SAFETY: the IDT is a valid, static table of gates pointing at the stubs above.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }
}
