//! Property tests: whatever a guest writes to the registers or into its rings, the device never
//! panics, never touches memory outside the guest's, and keeps its invariants.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use host_agent::devices::bus::BusDevice;
use host_agent::devices::net_backend::NetBackend;
use host_agent::devices::switch::{SplitMix64, Switch, SwitchConfig, SwitchPort};
use host_agent::devices::virtio::mmio::register;
use host_agent::devices::virtio::net::{MAX_FRAME_LEN, Net, NetConfig, VirtioNet};
use host_agent::devices::virtio::queue::{Queue, QueueFeatures};
use host_agent::devices::virtio::{InterruptLine, status};
use host_agent::memory::{GuestAddress, GuestMemory};
use proptest::prelude::*;
use shm_ring::layout::Region;

const BASE: u64 = 0x10_0000;
const SIZE: u64 = 0x4_0000;
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PEER: [u8; 6] = [2, 0, 0, 0, 0, 2];

#[derive(Default)]
struct Interrupts(AtomicU64);

impl InterruptLine for Interrupts {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Guest memory whose first 64 KiB are random bytes from `seed`.
fn random_memory(seed: u64) -> Arc<GuestMemory> {
    let memory = GuestMemory::new(&[Region::new(BASE, SIZE)]).unwrap();
    let mut random = SplitMix64::new(seed);
    let bytes: Vec<u8> = (0..0x1_0000 / 8)
        .flat_map(|_| random.next_u64().to_le_bytes())
        .collect();
    memory.write(GuestAddress(BASE), &bytes).unwrap();
    Arc::new(memory)
}

struct Rig {
    nic: VirtioNet,
    port: SwitchPort,
    peer: SwitchPort,
    _switch: Switch,
}

fn rig(seed: u64, config: NetConfig) -> Rig {
    let nic = VirtioNet::new(
        Net::new(config),
        random_memory(seed),
        Arc::new(Interrupts::default()),
    )
    .unwrap();
    let switch = Switch::new(SwitchConfig::default());
    let port = switch.port(Some(MAC)).unwrap();
    let peer = switch.port(Some(PEER)).unwrap();
    Rig {
        nic,
        port,
        peer,
        _switch: switch,
    }
}

impl Rig {
    fn write(&mut self, offset: u64, value: u32) {
        self.nic.write(offset, &value.to_le_bytes());
    }

    fn process(&mut self, frame_len: usize) {
        let mut frame = vec![0u8; frame_len];
        frame[..6].copy_from_slice(&MAC);
        self.peer.send(&frame).unwrap();
        self.nic.process_tx(&mut self.port);
        self.nic.process_rx(&mut self.port);
    }

    /// The device's status invariants.
    fn check(&self) {
        let status = self.nic.status();
        if status & status::DRIVER_OK != 0 {
            assert_ne!(
                status & status::FEATURES_OK,
                0,
                "DRIVER_OK without FEATURES_OK"
            );
        }
        if status & status::FEATURES_OK != 0 {
            assert_ne!(status & status::DRIVER, 0, "FEATURES_OK without DRIVER");
            let features = self.nic.context().driver_features();
            assert_eq!(features & !self.offered(), 0, "unoffered features accepted");
        }
        for index in 0..2 {
            let queue = self.nic.context().queue(index).unwrap();
            if queue.is_ready() {
                assert!(queue.size().is_power_of_two() && queue.size() <= 256);
            }
        }
    }

    fn offered(&self) -> u64 {
        use host_agent::devices::virtio::VirtioDevice;
        self.nic.device().device_features()
    }
}

/// One MMIO access: offset, size, value, write or read.
fn access() -> impl Strategy<Value = (u64, usize, u64, bool)> {
    let offset = prop_oneof![
        3 => (0u64..0x40).prop_map(|word| word * 4),
        1 => 0u64..0x1000,
    ];
    let size =
        prop_oneof![4 => Just(4usize), 1 => Just(1usize), 1 => Just(2usize), 1 => Just(8usize)];
    let value = prop_oneof![
        2 => 0u64..16,
        1 => (0u64..0x40_000).prop_map(|offset| BASE + offset),
        1 => any::<u64>(),
    ];
    (offset, size, value, any::<bool>())
}

/// A queue configuration: size and the three ring addresses, each good or bad.
fn queue_config() -> impl Strategy<Value = (u32, u64, u64, u64)> {
    let size = prop_oneof![
        4 => prop::sample::select(vec![1u32, 2, 4, 8, 16, 64, 256]),
        1 => prop::sample::select(vec![0u32, 3, 255, 257, 512, u32::MAX]),
    ];
    let address = |alignment: u64| {
        prop_oneof![
            6 => (0u64..0x1000).prop_map(move |slot| BASE + slot * alignment),
            1 => (0u64..0x10_0000).prop_map(move |offset| BASE + offset),
            1 => any::<u64>(),
        ]
    };
    (size, address(16), address(2), address(4))
}

/// A correct initialisation with the given queue configurations.
fn init(rig: &mut Rig, features: u64, queues: &[(u32, u64, u64, u64)]) {
    rig.write(register::STATUS, 0);
    rig.write(register::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    rig.write(register::DRIVER_FEATURES_SEL, 0);
    rig.write(register::DRIVER_FEATURES, features as u32);
    rig.write(register::DRIVER_FEATURES_SEL, 1);
    rig.write(register::DRIVER_FEATURES, (features >> 32) as u32);
    let features_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    rig.write(register::STATUS, features_ok);
    for (index, (size, desc, avail, used)) in queues.iter().enumerate() {
        rig.write(register::QUEUE_SEL, index as u32);
        rig.write(register::QUEUE_NUM, *size);
        for (low, address) in [
            (register::QUEUE_DESC_LOW, desc),
            (register::QUEUE_DRIVER_LOW, avail),
            (register::QUEUE_DEVICE_LOW, used),
        ] {
            rig.write(low, *address as u32);
            rig.write(low + 4, (*address >> 32) as u32);
        }
        rig.write(register::QUEUE_READY, 1);
    }
    rig.write(register::STATUS, features_ok | status::DRIVER_OK);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random register accesses, with queue processing in between, never panic.
    #[test]
    fn random_register_accesses_never_panic(
        seed in any::<u64>(),
        accesses in prop::collection::vec(access(), 0..300),
    ) {
        let mut rig = rig(seed, NetConfig { event_idx: seed & 1 == 0, ..NetConfig::default() });
        for (index, (offset, size, value, write)) in accesses.into_iter().enumerate() {
            let bytes = value.to_le_bytes();
            if write {
                rig.nic.write(offset, &bytes[..size]);
            } else {
                let mut data = vec![0u8; size];
                rig.nic.read(offset, &mut data);
            }
            if index % 16 == 15 {
                rig.process(64);
            }
            rig.check();
        }
    }

    /// Random ring contents and queue configurations behind a correct initialisation never
    /// panic: the device either works or needs a reset.
    #[test]
    fn random_guest_memory_never_panics(
        seed in any::<u64>(),
        queues in prop::collection::vec(queue_config(), 2),
        features in prop::sample::select(vec![
            (1u64 << 32) | (1 << 5),
            (1u64 << 32) | (1 << 5) | (1 << 28),
            (1u64 << 32) | (1 << 5) | (1 << 28) | (1 << 29),
        ]),
        frame_len in prop_oneof![Just(14usize), 14usize..2000, Just(MAX_FRAME_LEN)],
        notifies in 1usize..4,
    ) {
        let config = NetConfig { event_idx: true, ..NetConfig::default() };
        let mut rig = rig(seed, config);
        init(&mut rig, features, &queues);
        for _ in 0..notifies {
            rig.process(frame_len);
            rig.check();
        }
        let status = rig.nic.status();
        prop_assert!(
            status & status::DEVICE_NEEDS_RESET != 0 || rig.nic.context().is_active(),
            "status {status:#x}"
        );
        // A reset always brings the device back to a clean state.
        rig.write(register::STATUS, 0);
        prop_assert_eq!(rig.nic.status(), 0);
    }

    /// The queue alone: random descriptor tables yield only validated chains or errors.
    #[test]
    fn random_descriptor_tables_yield_valid_chains(
        seed in any::<u64>(),
        size in prop::sample::select(vec![1u32, 2, 8, 32, 256]),
        indirect in any::<bool>(),
        event_idx in any::<bool>(),
    ) {
        let memory = random_memory(seed);
        let mut queue = Queue::new(256);
        queue.set_size(size);
        queue.set_desc_table(GuestAddress(BASE));
        queue.set_avail_ring(GuestAddress(BASE + 0x1000));
        queue.set_used_ring(GuestAddress(BASE + 0x2000));
        queue.enable(&memory, QueueFeatures { event_idx, indirect_desc: indirect }).unwrap();
        // Make every descriptor's address land inside memory half of the time.
        let mut random = SplitMix64::new(seed ^ 0xabcd);
        for index in 0..u64::from(size) {
            if random.chance(0.5) {
                let address = BASE + random.next_u64() % SIZE;
                memory.write(GuestAddress(BASE + index * 16), &address.to_le_bytes()).unwrap();
                let len = (random.next_u64() % 0x2000) as u32;
                memory.write(GuestAddress(BASE + index * 16 + 8), &len.to_le_bytes()).unwrap();
            }
        }
        for _ in 0..=size {
            match queue.pop_available(&memory) {
                Ok(Some(chain)) => {
                    let limit = if indirect { 256 } else { size as usize };
                    prop_assert!(chain.descriptors().len() <= limit);
                    let mut seen_writable = false;
                    for descriptor in chain.descriptors() {
                        prop_assert!(descriptor.address.0 >= BASE);
                        prop_assert!(descriptor.address.0 + u64::from(descriptor.len) <= BASE + SIZE);
                        prop_assert!(descriptor.writable || !seen_writable, "readable after writable");
                        seen_writable |= descriptor.writable;
                    }
                    queue.add_used(&memory, chain.head_index(), 0).unwrap();
                    let _ = queue.needs_notification(&memory);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}
