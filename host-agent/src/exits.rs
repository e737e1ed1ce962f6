//! VM exits: narrowed to a small enum, classified onto the fast path or the supervisor.
//!
//! Each vCPU thread classifies every exit with [`classify`] and handles the fast ones itself,
//! touching only its own context (its serial log, its counters, its own exit status): no lock,
//! no channel, no thread switch. Exits that need state shared with other threads (device
//! models, unknown MMIO/PIO that must be logged and answered, faults, shutdown) become a
//! [`SupervisorRequest`] that the vCPU hands to the supervisor thread and waits on.

use serde::Serialize;
use shm_ring::layout::{DEBUG_EXIT_PORT, HYPERCALL_PORT, Role};

/// Line status register offset of a 16550 UART.
const UART_LINE_STATUS: u16 = 5;
/// "Transmitter empty" bits: the guest may always write.
const UART_TRANSMITTER_EMPTY: u8 = 0x60;
/// The UART ports span 8 registers.
const UART_SPAN: u16 = 8;

/// An exit, narrowed from `kvm_ioctls::VcpuExit` (data buffers are handled by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `in` from a port.
    IoIn {
        /// The port.
        port: u16,
        /// Access size in bytes.
        size: u8,
    },
    /// `out` to a port.
    IoOut {
        /// The port.
        port: u16,
        /// The value written (little-endian, zero-extended).
        value: u32,
        /// Access size in bytes.
        size: u8,
    },
    /// Read of an address no memory or in-kernel device backs.
    MmioRead {
        /// Guest-physical address.
        address: u64,
        /// Access size in bytes.
        size: u8,
    },
    /// Write to an address no memory or in-kernel device backs.
    MmioWrite {
        /// Guest-physical address.
        address: u64,
        /// The value written (little-endian, zero-extended).
        value: u64,
        /// Access size in bytes.
        size: u8,
    },
    /// The CPU halted (only without an in-kernel LAPIC).
    Halt,
    /// A triple fault or other shutdown.
    Shutdown,
    /// KVM could not enter the guest.
    FailEntry(u64),
    /// KVM hit an internal error (e.g. an instruction it cannot emulate).
    InternalError,
    /// A system event (reset, crash) requested by the guest.
    SystemEvent(u32),
    /// `KVM_RUN` returned because the host kicked the vCPU.
    Interrupted,
    /// Anything else.
    Other(&'static str),
}

impl Exit {
    /// The counter slot of this exit.
    pub fn reason(&self) -> ExitReason {
        match self {
            Exit::IoIn { .. } => ExitReason::IoIn,
            Exit::IoOut { .. } => ExitReason::IoOut,
            Exit::MmioRead { .. } => ExitReason::MmioRead,
            Exit::MmioWrite { .. } => ExitReason::MmioWrite,
            Exit::Halt => ExitReason::Halt,
            Exit::Shutdown => ExitReason::Shutdown,
            Exit::FailEntry(_) => ExitReason::FailEntry,
            Exit::InternalError => ExitReason::InternalError,
            Exit::SystemEvent(_) => ExitReason::SystemEvent,
            Exit::Interrupted => ExitReason::Interrupted,
            Exit::Other(_) => ExitReason::Other,
        }
    }
}

/// Exit reasons, for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitReason {
    /// Port read.
    IoIn,
    /// Port write.
    IoOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// HLT.
    Halt,
    /// Shutdown.
    Shutdown,
    /// Failed entry.
    FailEntry,
    /// Internal error.
    InternalError,
    /// System event.
    SystemEvent,
    /// Host kick.
    Interrupted,
    /// Other.
    Other,
}

impl ExitReason {
    /// Number of reasons.
    pub const COUNT: usize = 11;
    /// Names, by slot.
    pub const NAMES: [&'static str; Self::COUNT] = [
        "io_in",
        "io_out",
        "mmio_read",
        "mmio_write",
        "hlt",
        "shutdown",
        "fail_entry",
        "internal_error",
        "system_event",
        "interrupted",
        "other",
    ];
}

/// What the vCPU thread does with an exit it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastAction {
    /// A byte for the serial log.
    SerialByte(u8),
    /// A read of a serial register: answer this value.
    SerialRead(u8),
    /// The OS ended itself with this status.
    DebugExit(u32),
    /// A hypercall notification.
    Hypercall(u32),
    /// The host kicked the vCPU; check for a stop request.
    Kicked,
    /// A write to a serial register other than the data register: ignore.
    Ignore,
}

/// What the supervisor is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupervisorRequest {
    /// Emulate a port or MMIO access that no fast-path device owns; reads wait for the value.
    Access(Exit),
    /// The OS cannot continue: shutdown, failed entry, internal error, system event.
    Fatal(Exit),
}

/// Where an exit is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// On the vCPU thread.
    Fast(FastAction),
    /// By the supervisor thread.
    Supervisor(SupervisorRequest),
}

/// Decides where `exit` of the OS `role` is handled.
pub fn classify(role: Role, exit: &Exit) -> Route {
    let serial = role.serial_port();
    let in_uart = |port: u16| port >= serial && port < serial + UART_SPAN;
    match *exit {
        Exit::IoOut { port, value, .. } if port == serial => {
            Route::Fast(FastAction::SerialByte(value as u8))
        }
        Exit::IoOut { port, .. } if in_uart(port) => Route::Fast(FastAction::Ignore),
        Exit::IoIn { port, .. } if port == serial + UART_LINE_STATUS => {
            Route::Fast(FastAction::SerialRead(UART_TRANSMITTER_EMPTY))
        }
        Exit::IoIn { port, .. } if in_uart(port) => Route::Fast(FastAction::SerialRead(0)),
        Exit::IoOut {
            port,
            value,
            size: 4,
        } if port == DEBUG_EXIT_PORT => Route::Fast(FastAction::DebugExit(value)),
        Exit::IoOut {
            port,
            value,
            size: 4,
        } if port == HYPERCALL_PORT => Route::Fast(FastAction::Hypercall(value)),
        Exit::Interrupted => Route::Fast(FastAction::Kicked),
        Exit::IoIn { .. } | Exit::IoOut { .. } | Exit::MmioRead { .. } | Exit::MmioWrite { .. } => {
            Route::Supervisor(SupervisorRequest::Access(*exit))
        }
        Exit::Halt
        | Exit::Shutdown
        | Exit::FailEntry(_)
        | Exit::InternalError
        | Exit::SystemEvent(_)
        | Exit::Other(_) => Route::Supervisor(SupervisorRequest::Fatal(*exit)),
    }
}

/// Exit counters of one vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitCounters {
    /// Exits per [`ExitReason`] slot.
    pub by_reason: [u64; ExitReason::COUNT],
    /// Exits handled on the vCPU thread.
    pub fast: u64,
    /// Exits handed to the supervisor.
    pub supervisor: u64,
    /// Total nanoseconds vCPUs waited for the supervisor.
    pub supervisor_wait_ns: u64,
    /// Total nanoseconds spent handling fast-path exits (measured only on request).
    pub fast_handling_ns: u64,
}

impl ExitCounters {
    /// Counts one exit.
    #[inline]
    pub fn count(&mut self, exit: &Exit, route: &Route) {
        self.by_reason[exit.reason() as usize] += 1;
        match route {
            Route::Fast(_) => self.fast += 1,
            Route::Supervisor(_) => self.supervisor += 1,
        }
    }

    /// Adds another set of counters.
    pub fn add(&mut self, other: &ExitCounters) {
        for (mine, theirs) in self.by_reason.iter_mut().zip(other.by_reason) {
            *mine += theirs;
        }
        self.fast += other.fast;
        self.supervisor += other.supervisor;
        self.supervisor_wait_ns += other.supervisor_wait_ns;
        self.fast_handling_ns += other.fast_handling_ns;
    }

    /// The counters as a serialisable summary (non-zero reasons only).
    pub fn summary(&self) -> ExitSummary {
        ExitSummary {
            total: self.fast + self.supervisor,
            fast_path: self.fast,
            supervisor_path: self.supervisor,
            supervisor_wait_us_mean: if self.supervisor == 0 {
                0.0
            } else {
                self.supervisor_wait_ns as f64 / self.supervisor as f64 / 1000.0
            },
            fast_handling_us_mean: if self.fast == 0 {
                0.0
            } else {
                self.fast_handling_ns as f64 / self.fast as f64 / 1000.0
            },
            by_reason: ExitReason::NAMES
                .iter()
                .zip(self.by_reason)
                .filter(|(_, count)| *count > 0)
                .map(|(name, count)| ((*name).to_owned(), count))
                .collect(),
        }
    }
}

/// Exit counters for reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ExitSummary {
    /// All exits to user space.
    pub total: u64,
    /// Handled on the vCPU thread.
    pub fast_path: u64,
    /// Handed to the supervisor.
    pub supervisor_path: u64,
    /// Mean time a vCPU waited for the supervisor, in microseconds.
    pub supervisor_wait_us_mean: f64,
    /// Mean host time to handle a fast-path exit, in microseconds (0 unless measured).
    pub fast_handling_us_mean: f64,
    /// Exits by reason.
    pub by_reason: std::collections::BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_ring::layout::{SERIAL_PORT_A, SERIAL_PORT_B, VIRTIO_MMIO_BASE};

    #[test]
    fn serial_bytes_of_each_os_stay_on_its_vcpu() {
        let exit = Exit::IoOut {
            port: SERIAL_PORT_A,
            value: b'x' as u32,
            size: 1,
        };
        assert_eq!(
            classify(Role::A, &exit),
            Route::Fast(FastAction::SerialByte(b'x'))
        );
        let exit = Exit::IoOut {
            port: SERIAL_PORT_B,
            value: b'y' as u32,
            size: 1,
        };
        assert_eq!(
            classify(Role::B, &exit),
            Route::Fast(FastAction::SerialByte(b'y'))
        );
        // OS A writing OS B's port is not OS A's serial log.
        assert!(matches!(
            classify(Role::A, &exit),
            Route::Supervisor(SupervisorRequest::Access(_))
        ));
        let status = Exit::IoIn {
            port: SERIAL_PORT_A + 5,
            size: 1,
        };
        assert_eq!(
            classify(Role::A, &status),
            Route::Fast(FastAction::SerialRead(0x60))
        );
    }

    #[test]
    fn debug_exit_and_hypercalls_are_fast() {
        let exit = Exit::IoOut {
            port: DEBUG_EXIT_PORT,
            value: 3,
            size: 4,
        };
        assert_eq!(
            classify(Role::B, &exit),
            Route::Fast(FastAction::DebugExit(3))
        );
        let exit = Exit::IoOut {
            port: HYPERCALL_PORT,
            value: 2,
            size: 4,
        };
        assert_eq!(
            classify(Role::A, &exit),
            Route::Fast(FastAction::Hypercall(2))
        );
        // A byte-sized write to the debug-exit port is not a valid exit request.
        let exit = Exit::IoOut {
            port: DEBUG_EXIT_PORT,
            value: 0,
            size: 1,
        };
        assert!(matches!(classify(Role::A, &exit), Route::Supervisor(_)));
        assert_eq!(
            classify(Role::A, &Exit::Interrupted),
            Route::Fast(FastAction::Kicked)
        );
    }

    #[test]
    fn unknown_accesses_and_faults_go_to_the_supervisor() {
        let read = Exit::MmioRead {
            address: VIRTIO_MMIO_BASE,
            size: 4,
        };
        assert_eq!(
            classify(Role::B, &read),
            Route::Supervisor(SupervisorRequest::Access(read))
        );
        let port = Exit::IoIn {
            port: 0x60,
            size: 1,
        };
        assert_eq!(
            classify(Role::A, &port),
            Route::Supervisor(SupervisorRequest::Access(port))
        );
        for fatal in [
            Exit::Shutdown,
            Exit::FailEntry(7),
            Exit::InternalError,
            Exit::SystemEvent(1),
        ] {
            assert_eq!(
                classify(Role::A, &fatal),
                Route::Supervisor(SupervisorRequest::Fatal(fatal))
            );
        }
    }

    #[test]
    fn counters_add_up() {
        let mut counters = ExitCounters::default();
        let exit = Exit::IoOut {
            port: SERIAL_PORT_A,
            value: 0,
            size: 1,
        };
        counters.count(&exit, &classify(Role::A, &exit));
        counters.count(&Exit::Shutdown, &classify(Role::A, &Exit::Shutdown));
        let summary = counters.summary();
        assert_eq!(
            (summary.total, summary.fast_path, summary.supervisor_path),
            (2, 1, 1)
        );
        assert_eq!(summary.by_reason["io_out"], 1);
        assert_eq!(summary.by_reason["shutdown"], 1);
    }
}
