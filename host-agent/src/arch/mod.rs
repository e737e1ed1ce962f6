//! x86_64 set-up of each OS: page tables, the boot GDT and the vCPU's initial state.

pub mod cpu;
pub mod paging;
