//! Helpers shared by duovm's end-to-end tests: KVM detection, guest images built once per test
//! process, and VM configurations.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use host_agent::images;
use host_agent::vm::{EndRequest, RunReport, Vm, VmConfig};
use shm_ring::bootinfo::{NetConfig, Workload, WorkloadKind};
use shm_ring::layout::MemoryMap;
use shm_ring::shared::SharedConfig;

/// Whether this machine can run the KVM tests. When it cannot, says so loudly.
pub fn kvm_available(test: &str) -> bool {
    let available = host_agent::vm::kvm_usable();
    if !available {
        eprintln!();
        eprintln!("!!!! SKIPPED {test}: /dev/kvm is not available on this machine. !!!!");
        eprintln!("!!!! This test needs KVM; it proves nothing here.               !!!!");
        eprintln!();
    }
    available
}

/// The guest kernels, built once per test process into a private directory.
pub fn guest_images() -> [Vec<u8>; 2] {
    static IMAGES: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("duovm-test-images-{}", std::process::id()));
            let paths = images::build(&dir, false).expect("build the guest images");
            let bytes = images::read(&paths).expect("read the guest images");
            let _ = std::fs::remove_dir_all(&dir);
            bytes
        })
        .clone()
}

/// A workload of `kind` with arguments.
pub fn workload(kind: WorkloadKind, args: &[u64]) -> Workload {
    let mut workload = Workload {
        kind: kind as u32,
        ..Workload::default()
    };
    workload.args[..args.len()].copy_from_slice(args);
    workload
}

/// A VM configuration with default memory and rings and the given workloads.
pub fn config(workloads: [Workload; 2]) -> VmConfig {
    VmConfig {
        memory: MemoryMap::default(),
        images: guest_images(),
        workloads,
        shared: SharedConfig::default(),
        net: NetConfig::default(),
        echo_serial: true,
        measure_exits: false,
        end: EndRequest::default(),
    }
}

/// Builds and runs a VM.
pub fn run(config: &VmConfig, timeout: Duration) -> RunReport {
    let vm = Vm::build(config).expect("build the VM");
    vm.run(timeout).expect("run the VM")
}

/// The repository root.
pub fn source_root() -> PathBuf {
    images::source_root()
}

/// A network namespace made for one test, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    /// Its name.
    pub name: String,
}

impl NetNs {
    /// Creates a namespace named `duovm-<tag>-<pid>` with loopback up.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("duovm-{tag}-{}", std::process::id());
        // One left by an earlier run of this process id, if any.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run_command("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n <ns> args...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_command("ip", &all);
    }

    /// Moves interface `interface` (in the root namespace) here, addresses it and brings it up.
    pub fn adopt(&self, interface: &str, address: &str) {
        run_command("ip", &["link", "set", interface, "netns", &self.name]);
        self.ip(&["addr", "add", address, "dev", interface]);
        self.ip(&["link", "set", interface, "up"]);
    }

    /// Runs `body` on a thread that has entered the namespace: sockets and TAP devices it (and
    /// the threads it starts) makes live there.
    pub fn run_inside<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace = std::fs::File::open(&path).expect("open the namespace");
                    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("enter the namespace");
                    body()
                })
                .join()
                .expect("the thread in the namespace panicked")
        })
    }

    /// The names of the namespace's interfaces, each with its bridge if it has one
    /// (`tap0 master br0`).
    pub fn interfaces(&self) -> Vec<String> {
        let output = self.exec("ip", &["-o", "link", "show"]);
        assert!(output.status.success(), "ip link: {output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                // "7: name@peer: <FLAGS> mtu 1500 ... master br0 state UP ..."
                let mut fields = line.split_whitespace();
                let name = fields.nth(1)?.trim_end_matches(':');
                let name = name.split('@').next()?.to_owned();
                let master = line
                    .split_whitespace()
                    .skip_while(|field| *field != "master")
                    .nth(1);
                Some(match master {
                    Some(bridge) => format!("{name} master {bridge}"),
                    None => name,
                })
            })
            .collect()
    }

    /// The namespace's interfaces that `ours` selects (as [`NetNs::interfaces`] names them),
    /// sorted, once none is left or after five seconds.
    ///
    /// A TAP disappears when the last reference to its file is closed. A thread of the test
    /// process that starts a command holds a copy of every descriptor from its `fork` until
    /// the child's `exec`, so a TAP can outlive the `close` by that long while other tests run.
    pub fn left_behind(&self, ours: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut names: Vec<String> = self
                .interfaces()
                .into_iter()
                .filter(|name| ours(name))
                .collect();
            names.sort();
            if names.is_empty() || std::time::Instant::now() >= deadline {
                return names;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        std::process::Command::new("ip")
            .args(&all)
            .output()
            .expect("run ip netns exec")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run_command(program: &str, args: &[&str]) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .expect("run command");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether TAP devices and network namespaces work here; says so loudly when not.
pub fn tap_available(test: &str) -> bool {
    let tun = std::path::Path::new("/dev/net/tun").exists();
    let ip = std::process::Command::new("ip").arg("-V").output().is_ok();
    if !tun || !ip {
        eprintln!("!!!! SKIPPED {test}: /dev/net/tun or iproute2 is missing on this machine !!!!");
    }
    tun && ip
}
