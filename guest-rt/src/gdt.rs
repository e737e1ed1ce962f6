//! The runtime's own GDT and TSS, with interrupt stacks for faults that may find a bad stack.
//!
//! The host's boot GDT is mapped read-only, and `ltr` must write the TSS descriptor's busy bit,
//! so the runtime loads a GDT of its own from its writable data.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::mem::size_of;

/// Kernel code segment selector.
pub(crate) const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// IST slot (1-based) used for double faults.
pub(crate) const IST_DOUBLE_FAULT: u8 = 1;
/// IST slot used for NMIs and machine checks.
pub(crate) const IST_NMI: u8 = 2;
/// IST slot used for page faults, so a stack overflow still gets reported.
pub(crate) const IST_PAGE_FAULT: u8 = 3;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stacks([[u8; IST_STACK_SIZE]; 3]);

#[repr(C, packed(4))]
struct TaskStateSegment {
    reserved_0: u32,
    privilege_stacks: [u64; 3],
    reserved_1: u64,
    interrupt_stacks: [u64; 7],
    reserved_2: u64,
    reserved_3: u16,
    io_map_base: u16,
}

#[repr(C, align(16))]
struct Tables {
    gdt: [u64; 5],
    tss: TaskStateSegment,
    stacks: Stacks,
}

struct TablesCell(UnsafeCell<Tables>);

// SAFETY: written only by `init`, once, on the boot path before interrupts are enabled; after
// that only the CPU reads it.
unsafe impl Sync for TablesCell {}

static TABLES: TablesCell = TablesCell(UnsafeCell::new(Tables {
    gdt: [0; 5],
    tss: TaskStateSegment {
        reserved_0: 0,
        privilege_stacks: [0; 3],
        reserved_1: 0,
        interrupt_stacks: [0; 7],
        reserved_2: 0,
        reserved_3: 0,
        io_map_base: size_of::<TaskStateSegment>() as u16,
    },
    stacks: Stacks([[0; IST_STACK_SIZE]; 3]),
}));

#[repr(C, packed(2))]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

/// Builds and loads the GDT and TSS and reloads every segment register.
pub(crate) fn init() {
    let tables = TABLES.0.get();
    // SAFETY: `init` runs once on the boot path with interrupts off, so nothing else accesses
    // `TABLES` while this exclusive reference lives.
    let tables = unsafe { &mut *tables };
    for (slot, stack) in tables.stacks.0.iter().enumerate() {
        let top = stack.as_ptr() as u64 + IST_STACK_SIZE as u64;
        tables.tss.interrupt_stacks[slot] = top;
    }
    let tss_base = &raw const tables.tss as u64;
    let tss_limit = (size_of::<TaskStateSegment>() - 1) as u64;
    tables.gdt = [
        0,
        0x00af_9b00_0000_ffff, // 64-bit code, present, DPL 0, accessed
        0x00cf_9300_0000_ffff, // data, present, writable, accessed
        // 64-bit available TSS (type 9), present.
        (tss_limit & 0xffff)
            | ((tss_base & 0x00ff_ffff) << 16)
            | (0x89 << 40)
            | (((tss_limit >> 16) & 0xf) << 48)
            | (((tss_base >> 24) & 0xff) << 56),
        tss_base >> 32,
    ];
    let pointer = DescriptorTablePointer {
        limit: (size_of::<[u64; 5]>() - 1) as u16,
        base: tables.gdt.as_ptr() as u64,
    };
    // SAFETY: the table is a valid GDT in static memory; the far return reloads CS with the
    // 64-bit code descriptor of that table, then the data selectors and the TSS are loaded.
    unsafe {
        asm!(
            "lgdt [{pointer}]",
            "push {code}",
            "lea {scratch}, [rip + 2f]",
            "push {scratch}",
            "retfq",
            "2:",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "mov fs, {data:x}",
            "mov gs, {data:x}",
            "ltr {tss:x}",
            pointer = in(reg) &pointer,
            code = const CODE_SELECTOR as u64,
            data = in(reg) DATA_SELECTOR as u64,
            tss = in(reg) TSS_SELECTOR as u64,
            scratch = out(reg) _,
        )
    }
}
