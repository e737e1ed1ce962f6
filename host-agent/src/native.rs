//! Native mode: the guests' engines as host threads.
//!
//! A native endpoint is what one VM is, without the VM: OS A's application (a `duovm-apps`
//! function over a [`netsvc::Client`]) on one thread, OS B's network service
//! ([`netsvc::NetService`]) on another, joined by the very same shm-ring rings and pools in a
//! shared memory region, with OS B's NIC a port of the built-in switch (or a TAP). IPIs become
//! eventfd writes and `hlt` becomes `poll(2)`. Nothing else differs, so figures measured here
//! are the speed of the engines themselves on this CPU.
//!
//! # Waiting: poll, then sleep
//!
//! As the guests do (`shm_ring::stream`), a thread with nothing to do keeps polling for a
//! while ([`NativeMember::idle_spin`]) before it raises its wake-up flag and sleeps. It yields
//! the CPU between polls, so on a host with fewer CPUs than engine threads the others run
//! meanwhile. A thread that sleeps at once makes its peer pay a wake-up (a system call, and an
//! inter-processor interrupt when the CPU it slept on has halted) for every burst, and a
//! flow paced by acknowledgements or credits (RDMA's 128-packet window, TCP, paced UDP)
//! waits for those wake-ups on every round trip; polling keeps them off the path.
//!
//! # Where the threads run
//!
//! Four spinning engine threads on a host with two CPUs stay, once started, about where the
//! scheduler put them as they started, and that placement decides a round trip: whether a
//! hand-off between two threads waits for a context switch on one CPU or crosses to the
//! other (docs/PERFORMANCE.md). [`Placement`] pins each endpoint's OS A and OS B threads, so
//! that a measurement can be repeated with the placement it had.
//!
//! # One thread per endpoint
//!
//! With [`NativeMember::one_thread`] ([`Placement::Shared`]) an endpoint's OS A and OS B take
//! turns on one thread, as two guests' vCPUs would on one host CPU, but without a context
//! switch at each turn: OS B polls wherever OS A waits for it, in [`Os::wait`], which
//! applications call after every burst they send and whenever they have nothing to do. Its
//! waiting is the same: poll for the idle spin, then sleep on the NIC until a frame, OS B's
//! next timer, OS A's deadline or a stop request. The rings and pools between them are the
//! same; only their cache lines no longer cross between CPUs.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use apps::{NetClient, Os, Outcome};
use netsvc::{Client, NetConfig, NetService, NicFull, PollOutcome};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use shm_ring::OwnedRegion;
use shm_ring::bootinfo::SharedLayout;
use shm_ring::layout::{DEFAULT_SHARED_SIZE, Role};
use shm_ring::pool::{PoolOwner, owner_storage_words};
use shm_ring::shared::{self, Endpoint, SharedConfig};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::net_backend::NetBackend;

/// How long an idle engine thread polls before it sleeps, unless told otherwise: long enough to
/// bridge the gaps of a busy flow on a host with fewer CPUs than engine threads (see
/// docs/PERFORMANCE.md), short enough that an idle endpoint soon sleeps.
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_millis(1);

/// Where a native endpoint's OS A and OS B threads run (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// `shared` where this process has fewer CPUs than two endpoints have engine threads
    /// (four), `scheduler` where each thread can have a CPU of its own.
    #[default]
    Auto,
    /// Wherever the scheduler puts them as they start.
    Scheduler,
    /// Each endpoint's two threads on a CPU of its own (endpoint `i` on CPU `i`): a hand-off
    /// between OS A and OS B stays on one CPU, the network hop crosses.
    Endpoint,
    /// Every OS A on one CPU, every OS B on another: each endpoint's ring hand-offs cross,
    /// the network hop does not.
    Split,
    /// Each endpoint's OS A and OS B on different CPUs, the two OS As too: every hand-off of a
    /// round trip crosses between CPUs.
    Cross,
    /// Each endpoint's OS A and OS B on one thread, on a CPU of its own (endpoint `i` on CPU
    /// `i`): OS A runs OS B's poll wherever it would wait for OS B, so a hand-off between them
    /// costs no context switch, and only the network hop crosses between CPUs.
    Shared,
}

impl Placement {
    /// What this placement comes to where the process may run on `cpus` CPUs: `Auto` becomes
    /// `Shared` or `Scheduler`, the others stay.
    pub const fn resolved(self, cpus: usize) -> Placement {
        match self {
            Placement::Auto if cpus > 0 && cpus < AUTO_PIN_BELOW => Placement::Shared,
            Placement::Auto => Placement::Scheduler,
            other => other,
        }
    }

    /// Its name on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Placement::Auto => "auto",
            Placement::Scheduler => "scheduler",
            Placement::Endpoint => "endpoint",
            Placement::Split => "split",
            Placement::Cross => "cross",
            Placement::Shared => "shared",
        }
    }

    /// Whether each endpoint's OS A and OS B share one thread ([`NativeMember::one_thread`])
    /// where the process may run on `cpus` CPUs.
    pub const fn one_thread(self, cpus: usize) -> bool {
        matches!(self.resolved(cpus), Placement::Shared)
    }

    /// The CPUs for endpoint `index`'s OS A and OS B threads, taken from `allowed` (the CPUs
    /// this process may run on, [`allowed_cpus`]) in turn; `None` where the scheduler decides.
    pub fn cpus(self, index: usize, allowed: &[usize]) -> (Option<usize>, Option<usize>) {
        let cpu = |slot: usize| allowed.get(slot % allowed.len().max(1)).copied();
        match self.resolved(allowed.len()) {
            Placement::Auto | Placement::Scheduler => (None, None),
            Placement::Endpoint | Placement::Shared => (cpu(index), cpu(index)),
            Placement::Split => (cpu(0), cpu(1)),
            Placement::Cross => (cpu(index), cpu(index + 1)),
        }
    }
}

/// [`Placement::Auto`] shares a thread per endpoint where the process has fewer CPUs than
/// this: the engine threads of two endpoints.
const AUTO_PIN_BELOW: usize = 4;

/// The CPUs this process may run on, lowest first (empty if they cannot be read).
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect()
}

/// Keeps the calling thread on `cpu`, if given; says so on standard error if it cannot.
fn pin_current_thread(cpu: Option<usize>, what: &str) {
    let Some(cpu) = cpu else {
        return;
    };
    let mut set = nix::sched::CpuSet::new();
    let result = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(error) = result {
        eprintln!("{what}: cannot keep the thread on CPU {cpu}: {error}");
    }
}

/// The CPU the calling thread runs on, if the kernel says.
fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    usize::try_from(unsafe { libc::sched_getcpu() }).ok()
}

/// How native endpoints run: how long an idle thread polls, and where the threads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeTuning {
    /// See [`NativeMember::idle_spin`].
    pub idle_spin: Duration,
    /// See [`Placement`].
    pub placement: Placement,
}

impl Default for NativeTuning {
    /// What the commands do unless told otherwise: [`DEFAULT_IDLE_SPIN`], [`Placement::Auto`].
    fn default() -> NativeTuning {
        NativeTuning {
            idle_spin: DEFAULT_IDLE_SPIN,
            placement: Placement::Auto,
        }
    }
}

impl From<Duration> for NativeTuning {
    /// Polling for `idle_spin`, wherever the scheduler puts the threads.
    fn from(idle_spin: Duration) -> NativeTuning {
        NativeTuning {
            idle_spin,
            placement: Placement::Scheduler,
        }
    }
}

/// Errors setting up a native endpoint.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// The shared region could not be laid out or attached.
    #[error("shared region: {0}")]
    Shared(String),
    /// The network service rejected its configuration.
    #[error("network configuration: {0}")]
    Net(String),
    /// An eventfd or thread could not be made.
    #[error("cannot start the endpoint: {0}")]
    Io(#[from] std::io::Error),
    /// The endpoints could not be joined (a TAP or bridge could not be set up).
    #[error("cannot join the endpoints: {0}")]
    Link(String),
}

/// A [`NetBackend`] as OS B's NIC.
struct BackendNic {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
}

impl netsvc::Nic for BackendNic {
    fn transmit(&mut self, frame: &[u8]) -> Result<(), NicFull> {
        self.backend.send(frame).map_err(|_| NicFull)
    }

    fn receive(&mut self, buffer: &mut [u8]) -> Option<usize> {
        self.backend.receive(buffer).ok().flatten()
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// The eventfd as a borrowed descriptor.
fn borrow(event: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `event`, which outlives the returned borrow.
    unsafe { BorrowedFd::borrow_raw(event.as_raw_fd()) }
}

/// Sleeps on `fds` until one is readable or `deadline` passes; drains the eventfds it owns.
fn sleep_on(fds: &[BorrowedFd<'_>], deadline: Instant) {
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_millis(50));
    let mut poll_fds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let millis = timeout.as_millis().clamp(1, 50) as u16;
    let _ = poll(&mut poll_fds, PollTimeout::from(millis));
}

/// OS A as a host thread: the clock is `Instant`, OS B is woken through its eventfd.
#[derive(Debug)]
pub struct NativeOs {
    started: Instant,
    wake_b: Arc<EventFd>,
    wake_a: Arc<EventFd>,
    tag: String,
    /// The lines the application logged.
    pub lines: Vec<String>,
    /// Echo log lines to standard error.
    pub echo: bool,
    stop_app: Arc<AtomicBool>,
    idle_spin_ns: u64,
    /// OS B, where it shares this thread ([`NativeMember::one_thread`]).
    os_b: Option<OsB>,
}

/// Idle polls of a thread that runs OS A and OS B between two yields of its CPU, for the
/// case where another engine thread shares the CPU after all (a process allowed one CPU).
const SHARED_POLLS_PER_YIELD: u32 = 32;

impl NativeOs {
    /// [`Os::wait`] where OS B shares the thread: OS B polls until OS A has an event, the
    /// deadline passes or the application is asked to stop; with nothing to do for the idle
    /// spin, the thread sleeps on the NIC (see the module docs).
    fn run_os_b(&mut self, client: &mut NetClient, deadline_ns: u64) {
        // OS B is about to look at OS A's requests itself: no signal (nor the fence that asking
        // whether one is wanted takes; nothing on this thread's rings ever sleeps).
        let Some(b) = self.os_b.as_mut() else {
            return;
        };
        // OS A has events already (OS B's poll in the last kick brought them): nothing to wait
        // for.
        if deadline_ns > b.now_ns() && client.endpoint_mut().rx.available() != Ok(0) {
            return;
        }
        let mut idle_since = None;
        let mut idle_polls = 0u32;
        loop {
            let (outcome, now) = b.poll();
            if now >= deadline_ns
                || client.endpoint_mut().rx.available() != Ok(0)
                || self.stop_app.load(Ordering::Acquire)
            {
                return;
            }
            if outcome.busy || outcome.progress {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert(now);
            if now - since < self.idle_spin_ns {
                idle_polls = idle_polls.wrapping_add(1);
                if idle_polls.is_multiple_of(SHARED_POLLS_PER_YIELD) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            idle_since = None;
            // Only the NIC, a timer or a stop request can bring work now: OS A is this thread.
            if b.service.nic_mut().backend.prepare_to_wait() {
                let deadline = b
                    .instant(outcome.deadline_ns)
                    .min(self.started + Duration::from_nanos(deadline_ns));
                sleep_on(
                    &[borrow(&self.wake_a), b.service.nic().backend.ready_fd()],
                    deadline,
                );
                let _ = self.wake_a.read();
            }
        }
    }
}

impl Os for NativeOs {
    fn now_ns(&mut self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn wait(&mut self, client: &mut NetClient, deadline_ns: u64) {
        if self.os_b.is_some() {
            self.run_os_b(client, deadline_ns);
            return;
        }
        if client.take_signal() {
            let _ = self.wake_b.write(1);
        }
        if deadline_ns <= self.now_ns() {
            return;
        }
        // Poll (see the module docs) until an event comes, the deadline, or the budget ends; a
        // faulty ring ends the poll at once (the client reports it).
        let spin_until = deadline_ns.min(self.now_ns().saturating_add(self.idle_spin_ns));
        while self.now_ns() < spin_until {
            if client.endpoint_mut().rx.available() != Ok(0) {
                return;
            }
            std::thread::yield_now();
        }
        if client.endpoint_mut().rx.prepare_to_sleep() {
            let deadline = self.started + Duration::from_nanos(deadline_ns);
            sleep_on(&[borrow(&self.wake_a)], deadline);
            let _ = self.wake_a.read();
        }
        client.endpoint_mut().rx.woke_up();
    }

    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        let line = line.to_string();
        if self.echo {
            eprintln!("[{}] {line}", self.tag);
        }
        self.lines.push(line);
    }

    fn should_stop(&mut self) -> bool {
        self.stop_app.load(Ordering::Acquire) || crate::interrupt::requested()
    }
}

/// A running native endpoint.
#[derive(Debug)]
pub struct NativeHandle {
    thread: std::thread::JoinHandle<NativeReport>,
    stop: Arc<AtomicBool>,
    wake_a: Arc<EventFd>,
}

impl NativeHandle {
    /// Asks the application to end (a server stops serving).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake_a.write(1);
    }

    /// Waits for the application to end and returns the endpoint's report.
    pub fn join(self) -> std::thread::Result<NativeReport> {
        self.thread.join()
    }
}

/// OS B's side of an endpoint: the network service and what it polls.
struct OsB {
    service: NetService<BackendNic>,
    endpoint: Endpoint,
    pool: PoolOwner<Vec<u64>>,
    started: Instant,
}

impl std::fmt::Debug for OsB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OsB")
            .field("stats", &self.service.stats())
            .finish_non_exhaustive()
    }
}

impl OsB {
    fn new(
        service: NetService<BackendNic>,
        endpoint: Endpoint,
        started: Instant,
    ) -> Result<OsB, NativeError> {
        let words = owner_storage_words(endpoint.own_pool.buffer_count());
        let pool = PoolOwner::new(endpoint.own_pool.clone(), vec![0u64; words])
            .map_err(|error| NativeError::Shared(error.to_string()))?;
        Ok(OsB {
            service,
            endpoint,
            pool,
            started,
        })
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// One step of the service; returns what it did and the time it ran at.
    fn poll(&mut self) -> (PollOutcome, u64) {
        let now = self.now_ns();
        (
            self.service.poll(now, &mut self.endpoint, &mut self.pool),
            now,
        )
    }

    /// The instant of `deadline_ns` on this endpoint's clock (`None`: 10 ms from now).
    fn instant(&self, deadline_ns: Option<u64>) -> Instant {
        deadline_ns.map_or(Instant::now() + Duration::from_millis(10), |ns| {
            self.started + Duration::from_nanos(ns)
        })
    }

    /// OS A has ended: its connections close as a process's do when it exits.
    fn wind_down(mut self) -> netsvc::NetStats {
        let started = self.started;
        let clock = || started.elapsed().as_nanos() as u64;
        self.service
            .wind_down(&mut self.endpoint, &mut self.pool, clock, |deadline_ns| {
                let left = deadline_ns.saturating_sub(clock());
                std::thread::sleep(Duration::from_nanos(left.min(WIND_DOWN_POLL_NS)));
            });
        self.service.stats()
    }
}

/// OS B as a host thread: serves until `stop` is set.
fn serve(
    mut b: OsB,
    wake_a: Arc<EventFd>,
    wake_b: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    idle_spin_ns: u64,
) -> netsvc::NetStats {
    // When this thread last found nothing to do, while it polls (see the module docs).
    let mut idle_since = None;
    while !stop.load(Ordering::Acquire) {
        let (outcome, now) = b.poll();
        if outcome.signal_peer {
            let _ = wake_a.write(1);
        }
        if outcome.busy {
            idle_since = None;
            continue;
        }
        if outcome.progress {
            idle_since = None;
        }
        let since = *idle_since.get_or_insert(now);
        if now - since < idle_spin_ns {
            std::thread::yield_now();
            continue;
        }
        idle_since = None;
        let mut idle = b.endpoint.rx.prepare_to_sleep();
        if outcome.starved {
            idle &= b.endpoint.tx_return.prepare_to_sleep();
        }
        idle &= b.service.nic_mut().backend.prepare_to_wait();
        if idle {
            let deadline = b.instant(outcome.deadline_ns);
            sleep_on(
                &[borrow(&wake_b), b.service.nic().backend.ready_fd()],
                deadline,
            );
            let _ = wake_b.read();
        }
        b.endpoint.rx.woke_up();
        b.endpoint.tx_return.woke_up();
    }
    b.wind_down()
}

/// How often OS B looks at the network while the connections OS A left close.
const WIND_DOWN_POLL_NS: u64 = 100_000;

/// OS A's application in native mode.
pub type NativeApp = Box<dyn FnOnce(&mut NativeOs, &mut NetClient) -> Outcome + Send>;

/// One native endpoint: its network identity and OS A's application.
pub struct NativeMember {
    /// A tag for logs.
    pub tag: String,
    /// OS B's MAC.
    pub mac: [u8; 6],
    /// OS B's address.
    pub ipv4: Ipv4Addr,
    /// OS B's prefix length.
    pub prefix_len: u8,
    /// OS B's NIC.
    pub backend: Box<dyn NetBackend>,
    /// OS A's application.
    pub app: NativeApp,
    /// Echo the application's log lines.
    pub echo: bool,
    /// How long OS A's and OS B's threads poll before they sleep (see the module docs).
    pub idle_spin: Duration,
    /// The CPUs OS A's and OS B's threads are kept on (`None`: wherever the scheduler puts
    /// them), as [`Placement::cpus`] gives them.
    pub cpus: (Option<usize>, Option<usize>),
    /// OS A and OS B share one thread, kept on the first of `cpus` (see the module docs), as
    /// [`Placement::one_thread`] says.
    pub one_thread: bool,
}

impl std::fmt::Debug for NativeMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeMember")
            .field("tag", &self.tag)
            .field("ipv4", &self.ipv4)
            .finish_non_exhaustive()
    }
}

/// What a native endpoint did.
#[derive(Debug)]
pub struct NativeReport {
    /// Its tag.
    pub tag: String,
    /// The application's outcome.
    pub outcome: Outcome,
    /// The application's log lines.
    pub lines: Vec<String>,
    /// OS B's counters.
    pub net: netsvc::NetStats,
    /// The CPUs OS A's and OS B's threads ran on last, as each ended.
    pub cpus: (Option<usize>, Option<usize>),
}

/// Starts one endpoint; the returned handle yields its report when its application ends.
pub fn spawn(member: NativeMember) -> Result<NativeHandle, NativeError> {
    let config = SharedConfig::default();
    let size = DEFAULT_SHARED_SIZE as usize;
    let layout = SharedLayout::compute(size as u64, config)
        .map_err(|error| NativeError::Shared(error.to_string()))?;
    let region = Arc::new(OwnedRegion::new(size));
    // SAFETY: the region is valid for `size` bytes and nothing uses it yet.
    unsafe { shared::init(region.as_ptr(), region.len(), &layout) }
        .map_err(|error| NativeError::Shared(error.to_string()))?;
    // SAFETY: the region outlives both endpoints (each thread holds an `Arc` to it) and there
    // is one endpoint per role.
    let a = unsafe { Endpoint::attach(region.as_ptr(), region.len(), &layout, Role::A) }
        .map_err(|error| NativeError::Shared(error.to_string()))?;
    // SAFETY: as above.
    let b = unsafe { Endpoint::attach(region.as_ptr(), region.len(), &layout, Role::B) }
        .map_err(|error| NativeError::Shared(error.to_string()))?;
    let words = owner_storage_words(a.own_pool.buffer_count());
    let mut client = Client::new(a, vec![0u64; words])
        .map_err(|error| NativeError::Shared(error.to_string()))?;
    let started = Instant::now();
    let nic = BackendNic {
        backend: member.backend,
        mac: member.mac,
    };
    let net = NetConfig::new(member.mac, member.ipv4, member.prefix_len);
    let service =
        NetService::new(nic, net, 0).map_err(|error| NativeError::Net(error.to_string()))?;
    let wake_a = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let wake_b = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let stop = Arc::new(AtomicBool::new(false));
    let idle_spin_ns = u64::try_from(member.idle_spin.as_nanos()).unwrap_or(u64::MAX);
    let (cpu_a, cpu_b) = member.cpus;
    let os_b = OsB::new(service, b, started)?;
    let (os_b, os_b_thread) = if member.one_thread {
        (Some(os_b), None)
    } else {
        let (wake_a, wake_b, stop, region) =
            (wake_a.clone(), wake_b.clone(), stop.clone(), region.clone());
        let name = format!("{}-os-b", member.tag);
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                pin_current_thread(cpu_b, &name);
                let stats = serve(os_b, wake_a, wake_b, stop, idle_spin_ns);
                drop(region);
                (stats, current_cpu())
            })?;
        (None, Some(thread))
    };
    let tag = member.tag.clone();
    let app = member.app;
    let echo = member.echo;
    let stop_app = Arc::new(AtomicBool::new(false));
    let (stop_handle, wake_handle) = (stop_app.clone(), wake_a.clone());
    let thread = std::thread::Builder::new()
        .name(format!("{tag}-os-a"))
        .spawn(move || {
            pin_current_thread(cpu_a, &format!("{tag}-os-a"));
            let mut os = NativeOs {
                started,
                wake_b: wake_b.clone(),
                wake_a,
                tag: tag.clone(),
                lines: Vec::new(),
                echo,
                stop_app,
                idle_spin_ns,
                os_b,
            };
            let outcome = app(&mut os, &mut client);
            let os_a_cpu = current_cpu();
            let (net, os_b_cpu) = match (os.os_b.take(), os_b_thread) {
                (Some(os_b), _) => (os_b.wind_down(), current_cpu()),
                (None, Some(thread)) => {
                    stop.store(true, Ordering::Release);
                    let _ = wake_b.write(1);
                    thread.join().unwrap_or_default()
                }
                (None, None) => Default::default(),
            };
            drop(client);
            drop(region);
            NativeReport {
                tag,
                outcome,
                lines: os.lines,
                net,
                cpus: (os_a_cpu, os_b_cpu),
            }
        })?;
    Ok(NativeHandle {
        thread,
        stop: stop_handle,
        wake_a: wake_handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_placement_gives_each_thread_its_cpu() {
        let two = [3, 5];
        let both = |placement: Placement| [placement.cpus(0, &two), placement.cpus(1, &two)];
        let none = (None, None);
        assert_eq!(both(Placement::Scheduler), [none, none]);
        assert_eq!(
            both(Placement::Endpoint),
            [(Some(3), Some(3)), (Some(5), Some(5))]
        );
        assert_eq!(
            both(Placement::Split),
            [(Some(3), Some(5)), (Some(3), Some(5))]
        );
        assert_eq!(
            both(Placement::Cross),
            [(Some(3), Some(5)), (Some(5), Some(3))]
        );
        // One CPU: everything on it; none known: the scheduler decides.
        assert_eq!(Placement::Cross.cpus(1, &[7]), (Some(7), Some(7)));
        assert_eq!(Placement::Cross.cpus(1, &[]), none);
        // Shared: one thread per endpoint, on a CPU of its own.
        assert_eq!(both(Placement::Shared), both(Placement::Endpoint));
        assert!(Placement::Shared.one_thread(8) && !Placement::Endpoint.one_thread(2));
        // Auto: one thread per endpoint while CPUs are fewer than four threads.
        assert_eq!(both(Placement::Auto), both(Placement::Shared));
        assert!(Placement::Auto.one_thread(2) && !Placement::Auto.one_thread(4));
        assert_eq!(Placement::Auto.cpus(1, &[0, 1, 2, 3]), none);
        assert_eq!(Placement::Auto.cpus(1, &[]), none);
        assert_eq!(Placement::Auto.resolved(2).name(), "shared");
        assert_eq!(Placement::Auto.resolved(8).name(), "scheduler");
        assert_eq!(Placement::Cross.resolved(8).name(), "cross");
    }
}
