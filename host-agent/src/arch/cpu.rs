//! A vCPU's state at boot: long mode with paging on, the boot GDT, and CPUID with its APIC ID.
//!
//! The host puts each vCPU straight into 64-bit mode (as Firecracker and uhyve do): there is
//! no real-mode firmware. `RIP` is the kernel's ELF entry, `RSP` the top of its boot stack and
//! `RDI` the guest-physical address of its boot info block.

use kvm_bindings::{CpuId, kvm_regs, kvm_segment, kvm_sregs};

/// The boot GDT: null, 64-bit code, data, and a TSS (a valid TR is required to enter a VM).
pub const BOOT_GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_PGE: u64 = 1 << 7;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// The `kvm_segment` for a GDT entry at `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let raw_limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let granularity = ((entry >> 55) & 1) as u8;
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// The GDT as bytes, for guest memory.
pub fn boot_gdt_bytes() -> Vec<u8> {
    BOOT_GDT
        .iter()
        .flat_map(|entry| entry.to_le_bytes())
        .collect()
}

/// Special registers for 64-bit mode with paging rooted at `cr3` and the GDT at `gdt_address`.
pub fn long_mode_sregs(mut sregs: kvm_sregs, cr3: u64, gdt_address: u64) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[1], CODE_SELECTOR);
    let data = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
    let tss = segment_from_gdt(BOOT_GDT[3], TSS_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = gdt_address;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE | CR4_PGE;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
    sregs
}

/// General registers at entry.
pub fn boot_regs(entry: u64, stack_top: u64, boot_info: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack_top,
        rbp: 0,
        rdi: boot_info,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Gives the vCPU with `apic_id` its own APIC ID in CPUID leaves 1 and 0xB.
pub fn set_apic_id(cpuid: &mut CpuId, apic_id: u32) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x00ff_ffff) | (apic_id << 24);
            }
            0xB => {
                entry.edx = apic_id;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_boot_gdt() {
        let code = segment_from_gdt(BOOT_GDT[1], CODE_SELECTOR);
        assert_eq!(
            (code.l, code.db, code.present, code.type_, code.s),
            (1, 0, 1, 0xb, 1)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
        assert_eq!((data.l, data.db, data.type_, data.unusable), (0, 1, 3, 0));
        let tss = segment_from_gdt(BOOT_GDT[3], TSS_SELECTOR);
        assert_eq!(
            (tss.type_, tss.s, tss.limit, tss.present),
            (0xb, 0, 0x67, 1)
        );
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn long_mode_bits() {
        let sregs = long_mode_sregs(kvm_sregs::default(), 0x12000, 0x10000);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.cr3, 0x12000);
    }
}
