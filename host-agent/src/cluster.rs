//! Several VMs in one agent process, their NICs joined by the built-in switch (or each on a
//! back-end of its own, such as a TAP).
//!
//! Each VM runs on its own set of threads (two vCPUs, its NIC worker, and a supervisor), so a
//! group of VMs is just a group of [`Vm::run`] calls on separate threads sharing one
//! [`Switch`].

use std::time::Duration;

use crate::devices::net_backend::NetBackend;
use crate::devices::pcap::PcapWriter;
use crate::devices::switch::Switch;
use crate::vm::{RunReport, Vm, VmConfig, VmError};

/// One member of a group: its configuration, its NIC's back-end and an optional capture of
/// its NIC.
pub struct Member {
    /// The VM (its `net.mac` is its NIC's MAC).
    pub config: VmConfig,
    /// The NIC's back-end; `None`: a port of the group's switch.
    pub nic: Option<Box<dyn NetBackend>>,
    /// Where to capture its NIC's frames.
    pub capture: Option<PcapWriter>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("config", &self.config)
            .field("own_nic", &self.nic.is_some())
            .field("capture", &self.capture)
            .finish()
    }
}

/// Builds every VM, attaches each NIC to `switch` (or to its own back-end), runs them all and
/// returns their reports in order. A VM that cannot be built fails the group before any runs.
pub fn run_group(
    members: Vec<Member>,
    switch: &Switch,
    timeout: Duration,
) -> Result<Vec<RunReport>, VmError> {
    run_group_until(members, switch, timeout, &[])
}

/// Like [`run_group`], but once every member listed in `leaders` has ended, the others are
/// asked to end in order ([`Vm::end_handle`]): a server that would serve forever, once its
/// clients are done, ends as a process does on SIGTERM (a workload that cannot is stopped).
pub fn run_group_until(
    members: Vec<Member>,
    switch: &Switch,
    timeout: Duration,
    leaders: &[usize],
) -> Result<Vec<RunReport>, VmError> {
    let mut vms = Vec::new();
    for member in members {
        let mut config = member.config;
        config.net.has_nic = 1;
        let mut vm = Vm::build(&config)?;
        let backend = match member.nic {
            Some(backend) => backend,
            None => Box::new(
                switch
                    .port(Some(config.net.mac))
                    .map_err(|error| VmError::Nic(format!("switch port: {error}")))?,
            ),
        };
        vm.attach_nic(config.net.mac, backend, member.capture)?;
        vms.push(vm);
    }
    let ends: Vec<_> = vms.iter().map(Vm::end_handle).collect();
    let (done_sender, done) = crossbeam_channel::unbounded();
    let handles: Vec<_> = vms
        .into_iter()
        .enumerate()
        .map(|(index, vm)| {
            let done = done_sender.clone();
            std::thread::Builder::new()
                .name(format!("vm-{index}"))
                .spawn(move || {
                    let result = vm.run(timeout);
                    let _ = done.send(index);
                    result
                })
                .map_err(|error| VmError::Thread("VM", error))
        })
        .collect::<Result<_, _>>()?;
    drop(done_sender);
    if !leaders.is_empty() {
        let mut waiting: Vec<usize> = leaders.to_vec();
        while !waiting.is_empty() {
            let Ok(index) = done.recv() else { break };
            waiting.retain(|leader| *leader != index);
        }
        for end in &ends {
            end.request();
        }
    }
    let mut reports = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(result) => reports.push(result?),
            Err(_) => return Err(VmError::Nic("a VM thread panicked".to_owned())),
        }
    }
    Ok(reports)
}
