//! Build script shared by the guest kernels: writes the linker script that places the kernel at
//! its segment's base, taken from `shm_ring::layout` so that no address is written twice.

use std::env;
use std::fs;
use std::path::PathBuf;

use shm_ring::layout::Role;

fn main() {
    let package = env::var("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME");
    let role = match package.as_str() {
        "guest-os-a" => Role::A,
        "guest-os-b" => Role::B,
        other => panic!("kernel-build.rs does not know package {other}"),
    };
    let base = role.segment_base();
    let script = format!(
        "ENTRY(_start)
SECTIONS {{
    . = {base:#x};
    .text : ALIGN(4096) {{ *(.text._start) *(.text .text.*) }}
    .rodata : ALIGN(4096) {{ *(.rodata .rodata.*) }}
    .data : ALIGN(4096) {{ *(.data .data.*) }}
    .bss : ALIGN(4096) {{ *(.bss .bss.*) *(COMMON) }}
    . = ALIGN(4096);
    __kernel_end = .;
    /DISCARD/ : {{ *(.eh_frame .eh_frame_hdr .comment .note .note.*) }}
}}
"
    );
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernel.ld");
    fs::write(&out, script).expect("write linker script");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", out.display());
    }
    println!("cargo:rerun-if-changed=../images/kernel-build.rs");
}
