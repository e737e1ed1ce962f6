//! Fuzzes the virtio-net device through its MMIO registers: the input is a script of register
//! accesses and queue processing, over guest memory that also holds the input.

#![no_main]

use std::sync::Arc;

use host_agent::devices::bus::BusDevice;
use host_agent::devices::net_backend::NetBackend;
use host_agent::devices::switch::{Switch, SwitchConfig};
use host_agent::devices::virtio::InterruptLine;
use host_agent::devices::virtio::net::{Net, NetConfig, VirtioNet};
use host_agent::memory::{GuestAddress, GuestMemory};
use libfuzzer_sys::fuzz_target;
use shm_ring::layout::Region;

const BASE: u64 = 0x1_0000;
const SIZE: u64 = 0x2_0000;

struct NoInterrupt;

impl InterruptLine for NoInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let memory = GuestMemory::new(&[Region::new(BASE, SIZE)]).expect("guest memory");
    memory
        .write(GuestAddress(BASE), &data[..data.len().min(SIZE as usize)])
        .expect("image fits");
    let config = NetConfig {
        event_idx: data.first().is_some_and(|byte| byte & 1 != 0),
        roce_icrc: data.first().is_some_and(|byte| byte & 2 != 0),
        ..NetConfig::default()
    };
    let mut nic =
        VirtioNet::new(Net::new(config), Arc::new(memory), Arc::new(NoInterrupt)).expect("nic");
    let switch = Switch::new(SwitchConfig::default());
    let mut port = switch.port(Some(config.mac)).expect("port");
    let mut peer = switch.port(None).expect("peer");

    // Each step: [kind, offset, value (4 bytes)]; values that look like addresses are rebased
    // into guest memory so that ring set-ups are often valid.
    for step in data.chunks_exact(6) {
        let offset = u64::from(step[1]) * 4;
        let raw = u32::from_le_bytes([step[2], step[3], step[4], step[5]]);
        let value = if step[0] & 0x10 != 0 {
            (BASE + u64::from(raw) % SIZE) as u32
        } else {
            raw
        };
        match step[0] % 8 {
            0..=3 => nic.write(offset, &value.to_le_bytes()),
            4 => {
                let mut bytes = [0u8; 4];
                nic.read(offset, &mut bytes);
            }
            5 => {
                let size = 1 + usize::from(step[2] % 8);
                let mut bytes = vec![0u8; size];
                nic.read(
                    u64::from(step[1]) + 0x100 * u64::from(step[3] & 1),
                    &mut bytes,
                );
            }
            6 => {
                nic.process_tx(&mut port);
            }
            _ => {
                let mut frame = vec![0u8; 14 + usize::from(step[2]) * 8];
                frame[..6].copy_from_slice(&config.mac);
                if step[3] & 1 != 0 && frame.len() >= 38 {
                    // Shaped like RoCEv2 (IPv4, UDP to 4791), for the ICRC offload.
                    frame[12..14].copy_from_slice(&[0x08, 0x00]);
                    frame[14] = 0x45;
                    frame[23] = 17;
                    frame[36..38].copy_from_slice(&4791u16.to_be_bytes());
                    frame[16..18].copy_from_slice(&u16::from(step[4]).to_be_bytes());
                }
                let _ = peer.send(&frame);
                nic.process_rx(&mut port);
            }
        }
    }
});
