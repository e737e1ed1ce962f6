//! Fuzzes the split virtqueue parser: the input becomes guest memory (descriptor table,
//! available ring, indirect tables, buffers), and the queue must validate everything it takes
//! from there without panicking.

#![no_main]

use host_agent::devices::virtio::queue::{Queue, QueueFeatures};
use host_agent::memory::{GuestAddress, GuestMemory};
use libfuzzer_sys::fuzz_target;
use shm_ring::layout::Region;

const BASE: u64 = 0x1_0000;
const SIZE: u64 = 0x2_0000;

fuzz_target!(|data: &[u8]| {
    let Some((&[size_shift, flags, desc_page, avail_page, used_page], image)) =
        data.split_first_chunk::<5>()
    else {
        return;
    };
    let memory = GuestMemory::new(&[Region::new(BASE, SIZE)]).expect("guest memory");
    let image = &image[..image.len().min(SIZE as usize)];
    memory.write(GuestAddress(BASE), image).expect("image fits");

    let size = 1u32 << (size_shift % 10);
    let page = |selector: u8| BASE + u64::from(selector % 40) * 0x1000 + u64::from(selector / 40);
    let mut queue = Queue::new(256);
    queue.set_size(if flags & 0x80 != 0 {
        u32::from(size_shift)
    } else {
        size
    });
    queue.set_desc_table(GuestAddress(page(desc_page)));
    queue.set_avail_ring(GuestAddress(page(avail_page)));
    queue.set_used_ring(GuestAddress(page(used_page)));
    let features = QueueFeatures {
        event_idx: flags & 1 != 0,
        indirect_desc: flags & 2 != 0,
    };
    if queue.enable(&memory, features).is_err() {
        return;
    }
    let mut scratch = [0u8; 256];
    for _ in 0..=queue.size() {
        match queue.pop_available(&memory) {
            Ok(Some(chain)) => {
                let readable = chain.readable_len().min(scratch.len() as u64) as usize;
                chain
                    .read_readable(&memory, 0, &mut scratch[..readable])
                    .expect("a validated chain is readable");
                let writable = chain.writable_len().min(scratch.len() as u64) as usize;
                chain
                    .write_writable(&memory, 0, &scratch[..writable])
                    .expect("a validated chain is writable");
                if flags & 4 != 0 {
                    queue.undo_pop();
                    let _ = queue.pop_available(&memory);
                }
                queue
                    .add_used(&memory, chain.head_index(), writable as u32)
                    .expect("a popped head can be returned");
                let _ = queue.needs_notification(&memory);
            }
            Ok(None) | Err(_) => break,
        }
    }
});
