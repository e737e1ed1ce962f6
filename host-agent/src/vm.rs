//! Building the paired-guest VM and running it to the end under the supervisor.
//!
//! [`Vm::build`] turns a [`VmConfig`] into a VM ready to run: guest memory (low memory, segment
//! A, segment B, shared segment) in one memfd, the in-kernel irqchip, both kernels loaded, per-OS
//! page tables and boot info, and two vCPUs in long mode. [`Vm::run`] starts one thread per vCPU
//! and makes the calling thread the supervisor: it answers the exits the vCPU threads hand over,
//! stops the pair when one OS fails, enforces the timeout, and carries out requests to end
//! ([`EndRequest`], Ctrl-C): it asks OS A through its control mailbox to end its workload in
//! order, lets OS B close the connections OS A left, and stops the VM only if they do not end
//! in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded, unbounded};
use kvm_bindings::{KVM_IRQ_ROUTING_MSI, KvmIrqRouting, kvm_irq_routing_entry, kvm_msi};
use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, kvm_fpu, kvm_mp_state,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use std::sync::Mutex;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::bus::Bus;
use crate::devices::net_backend::NetBackend;
use crate::devices::pcap::PcapWriter;
use crate::devices::virtio::mmio::register::QUEUE_NOTIFY;
use crate::devices::virtio::net::{Net, NetConfig as NicConfig, NetCounters, VirtioNet};
use crate::devices::worker::NetDeviceHandle;
use serde::Serialize;
use shm_ring::bootinfo::{
    BOOT_INFO_MAGIC, BOOT_INFO_VERSION, BootInfo, NetConfig, SharedLayout, Workload,
};
use shm_ring::control::{CONTROL_BLOCK_SIZE, ControlView, Reply, Request};
use shm_ring::layout::{
    CONTROL_VECTOR, ExitStatus, LAPIC_BASE, LOW_MEMORY_SIZE, MemoryMap, NET_VECTOR, PAGE_SIZE,
    PAGE_TABLES_SIZE, Region, Role, SUPERVISOR_PROBE_PORT, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
    VIRTIO_NET_GSI,
};
use shm_ring::shared::{SharedConfig, SharedError};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::arch::cpu::{boot_gdt_bytes, boot_regs, long_mode_sregs, set_apic_id};
use crate::arch::paging::{Access, PageTableBuilder, PagingError};
use crate::exits::{Exit, ExitSummary, SupervisorRequest};
use crate::loader::{LoadError, load_elf};
use crate::memory::{GuestAddress, GuestMemory, MemoryError};
use crate::serial::{LinePrinter, SerialLog, StderrSink};
use crate::vcpu::{ContextSwitches, OsEnd, SupervisorMessage, VcpuContext, VcpuOutcome};

/// Size of each OS's boot stack, at the top of its segment.
pub const BOOT_STACK_SIZE: u64 = 256 * 1024;
/// Where KVM's TSS for real-mode emulation goes (Intel needs it with an in-kernel irqchip).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Whether this process may use KVM: `/dev/kvm` opens for reading and writing.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user use it?)")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// KVM lacks a capability duovm needs.
    #[error("KVM lacks the {0} capability")]
    MissingCapability(&'static str),
    /// A KVM call failed.
    #[error("KVM {what} failed")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// Its error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory failed.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// The rings and pools do not fit the shared segment, or could not be set up.
    #[error("shared segment: {0}")]
    Shared(SharedError),
    /// A kernel image could not be loaded.
    #[error("cannot load the OS {os} image")]
    Load {
        /// Which OS.
        os: &'static str,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// A kernel image does not fit below its boot stack.
    #[error(
        "the OS {os} image ends at {end:#x}, inside its boot stack at {stack:#x}: give the segment more memory"
    )]
    ImageTooLarge {
        /// Which OS.
        os: &'static str,
        /// End of the image.
        end: u64,
        /// Start of the stack.
        stack: u64,
    },
    /// Page tables could not be built.
    #[error("page tables of OS {os}")]
    Paging {
        /// Which OS.
        os: &'static str,
        /// Why.
        #[source]
        source: PagingError,
    },
    /// The NIC could not be set up.
    #[error("virtio-net device: {0}")]
    Nic(String),
    /// A thread could not be started or signalled.
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
}

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Everything needed to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Segment sizes.
    pub memory: MemoryMap,
    /// The kernels, OS A first.
    pub images: [Vec<u8>; 2],
    /// What each OS runs, OS A first.
    pub workloads: [Workload; 2],
    /// Geometry of the rings and pools in the shared segment.
    pub shared: SharedConfig,
    /// OS B's network configuration.
    pub net: NetConfig,
    /// Print guest serial output as it arrives.
    pub echo_serial: bool,
    /// Measure context switches and host time around every exit (slow; for the exit
    /// benchmark).
    pub measure_exits: bool,
    /// Asks the VMs built from this configuration (and its clones) to end in order.
    pub end: EndRequest,
}

/// Asks running VMs to end in order, from another thread, as Ctrl-C does for every VM of the
/// process: OS A is asked through its control mailbox to end its workload (an application
/// stops with what it has and reports it), OS B then closes the connections OS A left open and
/// ends, and a VM whose OSes do not end in time is stopped. Clones share the request.
#[derive(Clone, Debug, Default)]
pub struct EndRequest(Arc<AtomicBool>);

impl EndRequest {
    /// Asks the VMs to end.
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the VMs were asked to end (by [`request`](Self::request) or Ctrl-C).
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire) || crate::interrupt::requested()
    }
}

/// Stops a running VM from another thread.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the VM to stop; its supervisor stops both vCPUs within about 20 ms.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A NIC attached to a VM that has not started yet.
struct PendingNic {
    device: Arc<Mutex<VirtioNet>>,
    backend: Box<dyn NetBackend>,
}

impl std::fmt::Debug for PendingNic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingNic")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// A built VM, ready to run.
#[derive(Debug)]
pub struct Vm {
    _kvm: Kvm,
    stop: Arc<AtomicBool>,
    /// The configuration's end request, shared with every VM built from it.
    end: EndRequest,
    /// This VM's own ([`Vm::end_handle`]).
    own_end: EndRequest,
    vm: VmFd,
    bus: Bus,
    nic: Option<PendingNic>,
    memory: Arc<GuestMemory>,
    vcpus: Vec<VcpuFd>,
    map: MemoryMap,
    shared_layout: SharedLayout,
    tsc_khz: u64,
    echo_serial: bool,
    measure_exits: bool,
    /// The boot information promises the RoCEv2 ICRC offload ([`NetConfig::offloads`]),
    /// which the NIC must then provide.
    roce_icrc_offload: bool,
}

/// One OS's part of a run report.
#[derive(Clone, Debug, Serialize)]
pub struct OsReport {
    /// `a` or `b`.
    pub os: &'static str,
    /// How it ended.
    pub end: OsEnd,
    /// One-line explanation of `end`.
    pub summary: String,
    /// Whether it ended with status 0.
    pub success: bool,
    /// Exit counters.
    pub exits: ExitSummary,
    /// Context switches of its vCPU thread.
    pub context_switches: ContextSwitches,
    /// Context switches measured around fast-path exits (only when measured).
    pub fast_path_context_switches: ContextSwitches,
    /// Context switches measured while waiting for the supervisor (only when measured).
    pub supervisor_path_context_switches: ContextSwitches,
    /// Hypercalls made.
    pub hypercalls: u64,
    /// Serial bytes written.
    pub serial_bytes: u64,
    /// The serial log.
    pub serial_lines: Vec<String>,
    /// The OS's report slots from its control block, at the end.
    pub report: Vec<u64>,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// OS A, then OS B.
    pub oses: Vec<OsReport>,
    /// Whether the run hit the timeout.
    pub timed_out: bool,
    /// Whether the VM was asked to end ([`EndRequest`], Ctrl-C) before both OSes ended.
    pub end_requested: bool,
    /// Wall-clock time of the run.
    pub seconds: f64,
    /// Accesses the supervisor answered for no device.
    pub unhandled_accesses: u64,
    /// The TSC frequency of the guests, in kHz.
    pub tsc_khz: u64,
    /// OS B's NIC counters, if it had one.
    pub nic: Option<NetCounters>,
}

impl RunReport {
    /// Whether both OSes ended with success.
    pub fn success(&self) -> bool {
        !self.timed_out && self.oses.iter().all(|os| os.success)
    }

    /// The report of one OS.
    pub fn os(&self, role: Role) -> &OsReport {
        &self.oses[role.vcpu_index() as usize]
    }
}

/// Why the supervisor stopped the vCPUs, for the reports of OSes it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum StopCause {
    /// An OS failed, or the host asked for a stop.
    #[default]
    Requested,
    /// The run's timeout passed.
    TimedOut,
    /// Asked to end, OS A did not answer within [`END_ANSWER_TIMEOUT`].
    EndUnanswered,
    /// Asked to end, OS A answered that it cannot.
    EndRefused,
    /// Asked to end, the OSes did not end within [`END_GRACE`] (and the wind-down's grace).
    EndTooSlow,
}

fn describe(role: Role, end: &OsEnd, cause: StopCause) -> String {
    let os = role.tag();
    match end {
        OsEnd::Exited { status: 0, .. } => format!("OS {os} finished successfully"),
        OsEnd::Exited {
            status,
            fault: Some(fault),
        } if *status == ExitStatus::Fault as u32 => format!(
            "OS {os} faulted: exception {} at rip {:#x} (address {:#x}, error code {:#x})",
            fault.vector, fault.rip, fault.address, fault.error_code
        ),
        OsEnd::Exited { status, .. } => format!(
            "OS {os} ended with status {status} ({})",
            ExitStatus::from_u32(*status).map_or("unknown status", ExitStatus::describe)
        ),
        OsEnd::TripleFault { rip } => {
            format!("OS {os} triple-faulted (shutdown exit) at rip {rip:#x}")
        }
        OsEnd::Fatal { reason, rip } => {
            format!("OS {os} could not go on: {reason} at rip {rip:#x}")
        }
        OsEnd::Stopped { rip } => match cause {
            StopCause::Requested => format!("OS {os} was stopped by the host at rip {rip:#x}"),
            StopCause::TimedOut => {
                format!("OS {os} did not finish before the timeout; stopped at rip {rip:#x}")
            }
            StopCause::EndUnanswered => format!(
                "asked to end, OS A did not answer within {} s; OS {os} was stopped at rip \
                 {rip:#x}",
                END_ANSWER_TIMEOUT.as_secs()
            ),
            StopCause::EndRefused => format!(
                "asked to end, OS A answered that its workload cannot; OS {os} was stopped at \
                 rip {rip:#x}"
            ),
            StopCause::EndTooSlow => format!(
                "asked to end, OS {os} did not end within {} s; stopped at rip {rip:#x}",
                (END_GRACE + WIND_DOWN_GRACE).as_secs()
            ),
        },
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

impl Vm {
    /// Builds the VM described by `config`.
    pub fn build(config: &VmConfig) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        for (cap, name) in [
            (Cap::Irqchip, "in-kernel irqchip"),
            (Cap::UserMemory, "user memory"),
            (Cap::ImmediateExit, "immediate exit"),
            (Cap::GetTscKhz, "TSC frequency"),
            (Cap::ExtCpuid, "CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let vm = kvm.create_vm().map_err(kvm_error("create VM"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_error("set TSS address"))?;
        vm.create_irq_chip().map_err(kvm_error("create irqchip"))?;

        let map = config.memory;
        let memory = GuestMemory::new(&[
            Region::new(0, LOW_MEMORY_SIZE),
            map.segment_a,
            map.segment_b,
            map.shared,
        ])?;
        for (slot, region) in memory.regions().iter().enumerate() {
            let kvm_region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.guest.base,
                memory_size: region.guest.size,
                userspace_addr: memory.host_address(region),
            };
            // SAFETY: the host range is a live mapping owned by `memory`, which the returned
            // `Vm` keeps alive at least as long as the VM fd.
            unsafe { vm.set_user_memory_region(kvm_region) }
                .map_err(kvm_error("set memory region"))?;
        }

        let shared_layout =
            SharedLayout::compute(map.shared.size, config.shared).map_err(VmError::Shared)?;
        let shared_base = memory.host_pointer(GuestAddress(map.shared.base), map.shared.size)?;
        // SAFETY: the pointer covers the whole shared segment inside `memory`, and no vCPU runs
        // yet, so nothing else touches it.
        unsafe { shm_ring::shared::init(shared_base, map.shared.size as usize, &shared_layout) }
            .map_err(VmError::Shared)?;

        let mut tsc_khz = 0;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_error("get CPUID"))?;
        let mut vcpus = Vec::new();
        for role in Role::ALL {
            let vcpu = vm
                .create_vcpu(u64::from(role.vcpu_index()))
                .map_err(kvm_error("create vCPU"))?;
            let mut cpuid = supported.clone();
            set_apic_id(&mut cpuid, role.vcpu_index());
            vcpu.set_cpuid2(&cpuid).map_err(kvm_error("set CPUID"))?;
            tsc_khz = u64::from(vcpu.get_tsc_khz().map_err(kvm_error("get TSC frequency"))?);
            let (entry, stack_top, boot_info) =
                prepare_os(&memory, config, &shared_layout, role, tsc_khz)?;
            let sregs = vcpu.get_sregs().map_err(kvm_error("get sregs"))?;
            let cr3 = role.page_tables_address();
            vcpu.set_sregs(&long_mode_sregs(sregs, cr3, role.gdt_address()))
                .map_err(kvm_error("set sregs"))?;
            vcpu.set_regs(&boot_regs(entry, stack_top, boot_info))
                .map_err(kvm_error("set regs"))?;
            let fpu = kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            };
            vcpu.set_fpu(&fpu).map_err(kvm_error("set FPU"))?;
            // With the in-kernel irqchip only vCPU 0 starts runnable; start the other directly.
            vcpu.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(kvm_error("set MP state"))?;
            vcpus.push(vcpu);
        }
        Ok(Vm {
            _kvm: kvm,
            stop: Arc::new(AtomicBool::new(false)),
            end: config.end.clone(),
            own_end: EndRequest::default(),
            vm,
            bus: Bus::new(),
            nic: None,
            memory: Arc::new(memory),
            vcpus,
            map,
            shared_layout,
            tsc_khz,
            echo_serial: config.echo_serial,
            measure_exits: config.measure_exits,
            roce_icrc_offload: config.net.roce_icrc_offload(),
        })
    }

    /// Gives OS B a virtio-net device at [`VIRTIO_MMIO_BASE`] with the MAC of the VM's network
    /// configuration, whose frames go to `backend` (and, if given, to a packet capture).
    ///
    /// Queue notifications reach the device through ioeventfds and its interrupt reaches OS B's
    /// vCPU as an MSI through an irqfd: neither leaves the kernel as an exit. Register accesses
    /// exit to the supervisor, which owns the device's bus.
    pub fn attach_nic(
        &mut self,
        mac: [u8; 6],
        backend: Box<dyn NetBackend>,
        capture: Option<PcapWriter>,
    ) -> Result<(), VmError> {
        let nic_error =
            |what: &str, error: &dyn std::fmt::Display| VmError::Nic(format!("{what}: {error}"));
        let irq = EventFd::new(EFD_NONBLOCK).map_err(|e| nic_error("interrupt eventfd", &e))?;
        let mut routing = KvmIrqRouting::new(1).map_err(|e| nic_error("routing table", &e))?;
        let mut entry = kvm_irq_routing_entry {
            gsi: VIRTIO_NET_GSI,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        // An MSI to OS B's local APIC, fixed delivery, edge.
        entry.u.msi.address_lo = (LAPIC_BASE as u32) | (Role::B.vcpu_index() << 12);
        entry.u.msi.data = u32::from(NET_VECTOR);
        routing.as_mut_slice()[0] = entry;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(kvm_error("set GSI routing"))?;
        self.vm
            .register_irqfd(&irq, VIRTIO_NET_GSI)
            .map_err(kvm_error("register irqfd"))?;
        let mut net = Net::new(NicConfig {
            mac,
            roce_icrc: self.roce_icrc_offload,
            ..NicConfig::default()
        });
        net.set_capture(capture);
        let nic = VirtioNet::new(net, self.memory.clone(), Arc::new(irq))
            .map_err(|e| nic_error("create device", &e))?;
        for (queue, event) in nic.queue_events().iter().enumerate() {
            let address = IoEventAddress::Mmio(VIRTIO_MMIO_BASE + QUEUE_NOTIFY);
            self.vm
                .register_ioevent(event, &address, queue as u32)
                .map_err(kvm_error("register ioeventfd"))?;
        }
        let nic = Arc::new(Mutex::new(nic));
        self.bus
            .insert(VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, nic.clone())
            .map_err(|e| nic_error("bus", &e))?;
        self.nic = Some(PendingNic {
            device: nic,
            backend,
        });
        Ok(())
    }

    /// A handle that stops the running VM from another thread (both OSes end as stopped).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// A handle that asks this VM alone to end in order, from another thread (see
    /// [`EndRequest`]; the configuration's request asks every VM built from it).
    pub fn end_handle(&self) -> EndRequest {
        self.own_end.clone()
    }

    /// The TSC frequency the guests were given, in kHz.
    pub fn tsc_khz(&self) -> u64 {
        self.tsc_khz
    }

    /// Guest memory.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// The control block of an OS.
    pub fn control(&self, role: Role) -> Result<ControlView, MemoryError> {
        let region = match role {
            Role::A => self.shared_layout.control_a,
            Role::B => self.shared_layout.control_b,
        };
        let pointer = self.memory.host_pointer(
            GuestAddress(self.map.shared.base + region.base),
            CONTROL_BLOCK_SIZE,
        )?;
        // SAFETY: the block lies inside guest memory (checked above), which `self.memory` keeps
        // mapped; control blocks are accessed only through atomics.
        Ok(unsafe { ControlView::new(pointer) })
    }

    /// Runs both OSes until both end, one fails, or `timeout` passes.
    pub fn run(mut self, timeout: Duration) -> Result<RunReport, VmError> {
        // SAFETY: the handler is async-signal-safe (it does nothing); its only purpose is to make
        // KVM_RUN return EINTR on the kicked thread.
        register_signal_handler(kick_signal(), kick_handler).map_err(|error| {
            VmError::Thread("signal", std::io::Error::from_raw_os_error(error.errno()))
        })?;
        let started = Instant::now();
        let (supervisor_sender, supervisor_receiver) = unbounded::<SupervisorMessage>();
        let (done_sender, done_receiver) = unbounded::<VcpuOutcome>();
        let printer = if self.echo_serial {
            Some(LinePrinter::start().map_err(|error| VmError::Thread("serial printer", error))?)
        } else {
            None
        };
        let mut threads: Vec<(Arc<AtomicBool>, JoinHandle<()>)> = Vec::new();
        for (role, vcpu) in Role::ALL.into_iter().zip(self.vcpus.drain(..)) {
            let stop = Arc::new(AtomicBool::new(false));
            let context = VcpuContext {
                role,
                vcpu,
                stop: stop.clone(),
                supervisor: supervisor_sender.clone(),
                serial: SerialLog::new(
                    role.tag(),
                    StderrSink {
                        keep: true,
                        lines: Vec::new(),
                        echo: printer.as_ref().map(LinePrinter::sender),
                    },
                ),
                measure_exits: self.measure_exits,
            };
            let done = done_sender.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu-{}", role.tag()))
                .spawn(move || {
                    let outcome = context.run(bounded(1));
                    let _ = done.send(outcome);
                })
                .map_err(|error| VmError::Thread("vCPU", error))?;
            threads.push((stop, handle));
        }
        drop(supervisor_sender);
        drop(done_sender);

        let (nic, worker) = match self.nic.take() {
            Some(PendingNic {
                device: nic,
                backend,
            }) => {
                let worker = NetDeviceHandle::spawn(nic.clone(), backend)
                    .map_err(|error| VmError::Nic(format!("worker: {error}")))?;
                (Some(nic), Some(worker))
            }
            None => (None, None),
        };
        let mut supervisor = Supervisor {
            bus: std::mem::take(&mut self.bus),
            stop_requested: self.stop.clone(),
            ends: [self.end.clone(), self.own_end.clone()],
            control_a: self.control(Role::A)?,
            end_asked: false,
            probes: 0,
            cause: None,
            unhandled: 0,
            logged: 0,
        };
        let vm = &self.vm;
        let outcomes = supervisor.serve(
            &threads,
            &supervisor_receiver,
            &done_receiver,
            started + timeout,
            &|| signal_control(vm, Role::A),
        );
        for (_, handle) in threads {
            let _ = handle.join();
        }
        if let Some(printer) = printer {
            printer.finish();
        }
        if let Some(worker) = worker
            && let Err(error) = worker.stop()
        {
            eprintln!("host-agent: virtio-net worker: {error}");
        }
        let nic = nic.map(|nic| crate::devices::bus::lock_device(&nic).counters());
        let cause = supervisor.cause.unwrap_or_default();
        let timed_out = supervisor.cause == Some(StopCause::TimedOut);
        let mut oses = Vec::new();
        for outcome in outcomes {
            let report = self
                .control(outcome.role)
                .map(|view| view.reports().to_vec())
                .unwrap_or_default();
            oses.push(OsReport {
                os: outcome.role.tag(),
                summary: describe(outcome.role, &outcome.end, cause),
                success: matches!(outcome.end, OsEnd::Exited { status: 0, .. }),
                end: outcome.end,
                exits: outcome.counters.summary(),
                context_switches: outcome.context_switches,
                fast_path_context_switches: outcome.fast_path_context_switches,
                supervisor_path_context_switches: outcome.supervisor_path_context_switches,
                hypercalls: outcome.hypercalls,
                serial_bytes: outcome.serial_bytes,
                serial_lines: outcome.serial_lines,
                report,
            });
        }
        Ok(RunReport {
            oses,
            timed_out,
            end_requested: supervisor.end_asked,
            seconds: started.elapsed().as_secs_f64(),
            unhandled_accesses: supervisor.unhandled,
            tsc_khz: self.tsc_khz,
            nic,
        })
    }
}

/// Writes one OS's GDT, page tables, image and boot info; returns (entry, stack top, boot info).
fn prepare_os(
    memory: &GuestMemory,
    config: &VmConfig,
    shared_layout: &SharedLayout,
    role: Role,
    tsc_khz: u64,
) -> Result<(u64, u64, u64), VmError> {
    let os = role.tag();
    let map = config.memory;
    let segment = map.segment(role);
    let stack = Region::new(
        segment.base + segment.size - BOOT_STACK_SIZE,
        BOOT_STACK_SIZE,
    );
    let image = load_elf(memory, &config.images[role.vcpu_index() as usize], segment)
        .map_err(|source| VmError::Load { os, source })?;
    if image.end > stack.base {
        return Err(VmError::ImageTooLarge {
            os,
            end: image.end,
            stack: stack.base,
        });
    }
    memory.write(GuestAddress(role.gdt_address()), &boot_gdt_bytes())?;

    let paging = |source| VmError::Paging { os, source };
    let mut tables =
        PageTableBuilder::new(role.page_tables_address(), PAGE_TABLES_SIZE).map_err(paging)?;
    tables
        .identity_map(role.gdt_address(), PAGE_SIZE, Access::READ_ONLY)
        .map_err(paging)?;
    tables
        .identity_map(role.boot_info_address(), PAGE_SIZE, Access::READ_ONLY)
        .map_err(paging)?;
    tables
        .identity_map(segment.base, segment.size, Access::CODE_AND_DATA)
        .map_err(paging)?;
    tables
        .identity_map(map.shared.base, map.shared.size, Access::DATA)
        .map_err(paging)?;
    tables
        .identity_map(LAPIC_BASE, PAGE_SIZE, Access::DEVICE)
        .map_err(paging)?;
    if role == Role::B {
        tables
            .identity_map(VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, Access::DEVICE)
            .map_err(paging)?;
    }
    for (address, page) in tables.pages() {
        memory.write(GuestAddress(address), &page)?;
    }

    let info = BootInfo {
        magic: BOOT_INFO_MAGIC,
        version: BOOT_INFO_VERSION,
        size: size_of::<BootInfo>() as u32,
        role: role as u32,
        apic_id: role.vcpu_index(),
        peer_apic_id: role.peer().vcpu_index(),
        serial_port: u32::from(role.serial_port()),
        tsc_khz,
        segment,
        stack,
        shared: map.shared,
        shared_layout: *shared_layout,
        net: config.net,
        workload: config.workloads[role.vcpu_index() as usize],
    };
    memory.write_obj(GuestAddress(role.boot_info_address()), &info)?;
    Ok((
        image.entry,
        stack.base + stack.size,
        role.boot_info_address(),
    ))
}

/// The supervisor: answers handed-over exits, ends the run.
#[derive(Debug)]
struct Supervisor {
    bus: Bus,
    stop_requested: Arc<AtomicBool>,
    /// Whoever may ask the VM to end: its configuration's request and its own.
    ends: [EndRequest; 2],
    /// OS A's control block, for the end request.
    control_a: ControlView,
    /// Whether the VM was asked to end before both OSes had.
    end_asked: bool,
    probes: u64,
    /// Why the vCPUs are being stopped, once they are.
    cause: Option<StopCause>,
    unhandled: u64,
    logged: u64,
}

/// Sends OS `role` the control-mailbox interrupt (an MSI to its local APIC). Failing is not
/// fatal: the OS looks at its mailbox whenever its workload checks for a stop.
fn signal_control(vm: &VmFd, role: Role) {
    let msi = kvm_msi {
        address_lo: (LAPIC_BASE as u32) | (role.vcpu_index() << 12),
        data: u32::from(CONTROL_VECTOR),
        ..Default::default()
    };
    if let Err(error) = vm.signal_msi(msi) {
        eprintln!("host-agent: cannot signal OS {}: {error}", role.tag());
    }
}

/// How long OS A has to answer the request to end before the VM is stopped: its workload looks
/// at the mailbox whenever it checks for a stop (in guests whose instructions are emulated,
/// every few milliseconds).
const END_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long OS A has to end once it accepted the request to end; OS B then has
/// [`WIND_DOWN_GRACE`] to close OS A's connections.
const END_GRACE: Duration = Duration::from_secs(10);

/// Where an end request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// OS A was asked (request `sequence`, at `since`).
    Asked { sequence: u32, since: Instant },
    /// OS A accepted at `since`.
    Accepted { since: Instant },
    /// OS A has ended; OS B winds down (the wind-down's own grace applies).
    WindingDown,
}

impl Ending {
    /// The state at `now`, given `reply_to` (OS A's raw reply to a request, once it answered
    /// it: untrusted), or why the VM must be stopped. A reply the host does not know counts
    /// as a refusal.
    fn next(
        self,
        now: Instant,
        reply_to: impl FnOnce(u32) -> Option<u32>,
    ) -> Result<Ending, StopCause> {
        match self {
            Ending::Asked { sequence, since } => match reply_to(sequence).map(Reply::from_u32) {
                Some(Some(Reply::Accepted)) => Ok(Ending::Accepted { since: now }),
                Some(_) => Err(StopCause::EndRefused),
                None if now >= since + END_ANSWER_TIMEOUT => Err(StopCause::EndUnanswered),
                None => Ok(self),
            },
            Ending::Accepted { since } if now >= since + END_GRACE => Err(StopCause::EndTooSlow),
            other => Ok(other),
        }
    }
}

/// How long OS B may take to close OS A's connections after OS A's application failed before
/// the host stops it: the service's linger time and more, for guests whose instructions are
/// emulated.
const WIND_DOWN_GRACE: Duration = Duration::from_secs(20);

/// Unknown accesses logged before the rest are only counted.
const UNHANDLED_LOG_LIMIT: u64 = 16;

impl Supervisor {
    fn stop_all(threads: &[(Arc<AtomicBool>, JoinHandle<()>)], finished: &[bool; 2]) {
        for (index, (stop, handle)) in threads.iter().enumerate() {
            if !finished[index] {
                stop.store(true, Ordering::Release);
                let _ = handle.kill(kick_signal());
            }
        }
    }

    /// Stops both vCPUs (those still running) for `cause`.
    fn stop(
        &mut self,
        cause: StopCause,
        threads: &[(Arc<AtomicBool>, JoinHandle<()>)],
        finished: &[bool; 2],
    ) {
        self.cause = Some(cause);
        Self::stop_all(threads, finished);
    }

    fn stopping(&self) -> bool {
        self.cause.is_some()
    }

    fn answer(&mut self, role: Role, request: SupervisorRequest) -> u64 {
        match request {
            SupervisorRequest::Access(exit) => {
                let mut data = [0u8; 8];
                let handled = match exit {
                    Exit::MmioRead { address, size } => self
                        .bus
                        .read(address, &mut data[..usize::from(size.min(8))]),
                    Exit::MmioWrite {
                        address,
                        value,
                        size,
                    } => self
                        .bus
                        .write(address, &value.to_le_bytes()[..usize::from(size.min(8))]),
                    _ => false,
                };
                if handled {
                    return u64::from_le_bytes(data);
                }
                if let Exit::IoIn {
                    port: SUPERVISOR_PROBE_PORT,
                    ..
                } = exit
                {
                    self.probes += 1;
                    return self.probes;
                }
                self.unhandled += 1;
                if self.logged < UNHANDLED_LOG_LIMIT {
                    self.logged += 1;
                    let what = match exit {
                        Exit::IoIn { port, size } => {
                            format!("read of {size} bytes from port {port:#x}")
                        }
                        Exit::IoOut { port, value, size } => {
                            format!("write of {value:#x} ({size} bytes) to port {port:#x}")
                        }
                        Exit::MmioRead { address, size } => {
                            format!("read of {size} bytes at {address:#x}")
                        }
                        Exit::MmioWrite {
                            address,
                            value,
                            size,
                        } => {
                            format!("write of {value:#x} ({size} bytes) at {address:#x}")
                        }
                        other => format!("{other:?}"),
                    };
                    let more = if self.logged == UNHANDLED_LOG_LIMIT {
                        " (further ones are counted, not logged)"
                    } else {
                        ""
                    };
                    eprintln!(
                        "host-agent: OS {} made an unhandled {what}; reads return zero{more}",
                        role.tag()
                    );
                }
                0
            }
            SupervisorRequest::Fatal(_) => 0,
        }
    }

    /// Serves until both vCPU threads have ended.
    fn serve(
        &mut self,
        threads: &[(Arc<AtomicBool>, JoinHandle<()>)],
        requests: &Receiver<SupervisorMessage>,
        done: &Receiver<VcpuOutcome>,
        deadline: Instant,
        signal_a: &dyn Fn(),
    ) -> Vec<VcpuOutcome> {
        let mut outcomes: Vec<Option<VcpuOutcome>> = vec![None, None];
        let mut finished = [false; 2];
        // When OS B, left to close OS A's connections after OS A failed, is stopped anyway.
        let mut wind_down_until: Option<Instant> = None;
        let mut ending: Option<Ending> = None;
        let a = Role::A.vcpu_index() as usize;
        while outcomes.iter().any(Option::is_none) {
            let now = Instant::now();
            if !self.stopping() && wind_down_until.is_some_and(|until| now >= until) {
                self.stop(
                    if ending.is_some() {
                        StopCause::EndTooSlow
                    } else {
                        StopCause::Requested
                    },
                    threads,
                    &finished,
                );
            }
            if !self.stopping() && self.stop_requested.load(Ordering::Acquire) {
                self.stop(StopCause::Requested, threads, &finished);
            }
            if !self.stopping() && now >= deadline {
                // Checked on every message too, so a flood of exits cannot hold off the end.
                self.stop(StopCause::TimedOut, threads, &finished);
            }
            if !self.stopping() && ending.is_none() && self.ends.iter().any(EndRequest::requested) {
                self.end_asked = true;
                ending = Some(if finished[a] {
                    // OS B is already closing what OS A left.
                    wind_down_until.get_or_insert(now + WIND_DOWN_GRACE);
                    Ending::WindingDown
                } else {
                    let sequence = self.control_a.post_request(Request::End);
                    signal_a();
                    Ending::Asked {
                        sequence,
                        since: now,
                    }
                });
            }
            if !self.stopping()
                && let Some(current) = ending
            {
                let control = self.control_a;
                match current.next(now, |sequence| control.reply_to(sequence)) {
                    Ok(next) => ending = Some(next),
                    Err(cause) => self.stop(cause, threads, &finished),
                }
            }
            // Wake at least every 20 ms: to re-kick while stopping, to see a stop request and
            // OS A's answer.
            let wait = deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(20));
            crossbeam_channel::select! {
                recv(requests) -> message => {
                    if let Ok(message) = message {
                        let answer = self.answer(message.role, message.request);
                        let _ = message.reply.send(answer);
                    }
                }
                recv(done) -> outcome => {
                    let Ok(outcome) = outcome else { break };
                    let index = outcome.role.vcpu_index() as usize;
                    finished[index] = true;
                    let failed = !matches!(outcome.end, OsEnd::Exited { status: 0, .. });
                    // OS A's application failed and OS A ended in order: OS B sees that, closes
                    // the connections OS A left (its peers learn of it at once) and ends by
                    // itself. Any other failure stops the VM now.
                    let orderly = outcome.role == Role::A
                        && matches!(
                            outcome.end,
                            OsEnd::Exited { status, .. } if status == ExitStatus::Failed as u32
                        );
                    let role = outcome.role;
                    outcomes[index] = Some(outcome);
                    if self.stopping() {
                        continue;
                    }
                    if role == Role::A && ending.is_some() && (orderly || !failed) {
                        // Asked to end, OS A did; OS B closes what it left and ends by itself.
                        ending = Some(Ending::WindingDown);
                        wind_down_until = Some(Instant::now() + WIND_DOWN_GRACE);
                    } else if failed {
                        if orderly {
                            wind_down_until = Some(Instant::now() + WIND_DOWN_GRACE);
                        } else {
                            self.stop(StopCause::Requested, threads, &finished);
                        }
                    }
                }
                default(wait) => {
                    if self.stopping() {
                        // Kick again: a kick that landed outside KVM_RUN is not lost for long.
                        Self::stop_all(threads, &finished);
                    }
                }
            }
        }
        outcomes.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQUENCE: u32 = 7;

    fn asked(since: Instant) -> Ending {
        Ending::Asked {
            sequence: SEQUENCE,
            since,
        }
    }

    /// OS A's reply to request [`SEQUENCE`] only.
    fn replies(reply: u32) -> impl Fn(u32) -> Option<u32> {
        move |sequence| (sequence == SEQUENCE).then_some(reply)
    }

    #[test]
    fn an_accepted_end_request_waits_for_os_a_then_gives_up() {
        let start = Instant::now();
        let now = start + Duration::from_millis(30);
        let accepted = asked(start).next(now, replies(Reply::Accepted as u32));
        assert_eq!(accepted, Ok(Ending::Accepted { since: now }));
        let accepted = accepted.unwrap();
        // Once accepted, the mailbox is not read again.
        let unread = |_| panic!("read the mailbox after the answer");
        assert_eq!(
            accepted.next(now + END_GRACE - Duration::from_millis(1), unread),
            Ok(accepted)
        );
        assert_eq!(
            accepted.next(now + END_GRACE, unread),
            Err(StopCause::EndTooSlow)
        );
        // OS A ended in time: OS B's wind-down has its own grace, kept by the supervisor.
        assert_eq!(
            Ending::WindingDown.next(now + END_GRACE * 10, unread),
            Ok(Ending::WindingDown)
        );
    }

    #[test]
    fn an_unanswered_end_request_stops_the_vm_after_the_answer_timeout() {
        let start = Instant::now();
        let silent = |_| None;
        let waiting = start + END_ANSWER_TIMEOUT - Duration::from_millis(1);
        assert_eq!(asked(start).next(waiting, silent), Ok(asked(start)));
        assert_eq!(
            asked(start).next(start + END_ANSWER_TIMEOUT, silent),
            Err(StopCause::EndUnanswered)
        );
        // An answer to an older request does not answer this one.
        let stale = |sequence| (sequence == SEQUENCE - 1).then_some(Reply::Accepted as u32);
        assert_eq!(asked(start).next(waiting, stale), Ok(asked(start)));
    }

    proptest::proptest! {
        /// Whatever OS A leaves in its mailbox's reply words, the host moves on only on the
        /// accepted answer to its own request, and otherwise stops the VM or keeps waiting
        /// within the answer timeout.
        #[test]
        fn any_mailbox_reply_is_handled(
            other_sequence in proptest::prelude::any::<u32>(),
            same in proptest::prelude::any::<bool>(),
            reply in proptest::prop_oneof![0u32..4, proptest::prelude::any::<u32>()],
            sequence in proptest::prelude::any::<u32>(),
            elapsed_ms in 0u64..20_000,
        ) {
            let reply_sequence = if same { sequence } else { other_sequence };
            let start = Instant::now();
            let now = start + Duration::from_millis(elapsed_ms);
            let ending = Ending::Asked { sequence, since: start };
            let next = ending.next(now, |asked| (asked == reply_sequence).then_some(reply));
            let answered = reply_sequence == sequence;
            let expected = if answered && reply == Reply::Accepted as u32 {
                Ok(Ending::Accepted { since: now })
            } else if answered {
                Err(StopCause::EndRefused)
            } else if now >= start + END_ANSWER_TIMEOUT {
                Err(StopCause::EndUnanswered)
            } else {
                Ok(ending)
            };
            proptest::prop_assert_eq!(next, expected);
        }
    }

    #[test]
    fn a_refusal_or_a_reply_the_host_does_not_know_stops_the_vm_at_once() {
        let start = Instant::now();
        for reply in [Reply::Unsupported as u32, 0, 3, u32::MAX] {
            assert_eq!(
                asked(start).next(start, replies(reply)),
                Err(StopCause::EndRefused),
                "reply {reply}"
            );
        }
    }
}
