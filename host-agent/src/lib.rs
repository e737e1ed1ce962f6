//! duovm's host agent: the VMM that builds the paired-guest VM, handles its exits and runs it.
//!
//! The layers, bottom up:
//! - [`memory`]: guest memory in one memfd, accessed only through bounds-checked copies;
//! - [`arch`]: page tables and the long-mode vCPU state of each OS;
//! - [`loader`]: checked ELF loading;
//! - [`exits`]: the exit classifier (fast path or supervisor) and exit counters;
//! - [`serial`]: per-OS, line-buffered, rate-limited serial logs;
//! - [`vcpu`]: the vCPU thread loop;
//! - [`vm`]: building a VM from a [`vm::VmConfig`] and running it under the supervisor;
//! - [`devices`]: the device models (virtio-net over virtio-mmio) and network back-ends;
//! - [`cluster`]: several VMs on the built-in switch;
//! - [`endpoint`]: one RDMA endpoint (VM or native) on a network the caller gives, against any
//!   peer (duovm, `ibv_rc_pingpong`, perftest);
//! - [`native`]: the guests' engines as host threads;
//! - [`ringbench`], [`exitbench`], [`rdmabench`], [`netbench`], [`benchsuite`]: the
//!   benchmarks;
//! - [`images`]: finding and building the guest kernels.

pub mod arch;
pub mod benchsuite;
pub mod cluster;
pub mod devices;
pub mod endpoint;
pub mod exitbench;
pub mod exits;
pub mod images;
pub mod interrupt;
pub mod loader;
pub mod memory;
pub mod native;
pub mod netbench;
pub mod rdmabench;
pub mod ringbench;
pub mod serial;
pub mod vcpu;
pub mod vm;
