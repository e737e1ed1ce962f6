//! Split virtqueues (virtio 1.x section 2.7), device side.
//!
//! Everything in a queue's rings and descriptor tables is written by the driver and is untrusted.
//! The invariants this module keeps, whatever the guest writes:
//!
//! - every guest-physical range it reads or writes was checked to lie inside one region of guest
//!   memory first, with overflow-checked arithmetic;
//! - every loop over guest data is bounded: a chain visits at most the queue size descriptors
//!   (plus, for an indirect table, at most the queue's maximum size), so a descriptor loop ends
//!   with [`QueueError::ChainTooLong`] instead of hanging the host;
//! - indices read from guest memory (ring heads, `next` fields, the available index) are
//!   range-checked before use;
//! - a bad value yields a [`QueueError`], never a panic; the transport then puts the device in
//!   the "needs reset" state.
//!
//! Memory ordering: the available index is loaded with `Acquire` before the ring entries and
//! descriptors it publishes are read; a used element is written before the used index is stored
//! with `Release`; a full fence separates publishing the used index (or the `avail_event` field)
//! from reading the driver's notification-suppression fields, so that neither side can miss the
//! other's update.
//!
//! Field ownership (who writes what), for a queue of size `N`:
//!
//! | area | field | written by |
//! |---|---|---|
//! | descriptor table | `N` x {addr u64, len u32, flags u16, next u16} | driver |
//! | available ring | flags u16, idx u16, ring\[N\] u16, used_event u16 | driver |
//! | used ring | flags u16, idx u16, ring\[N\] {id u32, len u32}, avail_event u16 | device |

use std::fmt;
use std::sync::atomic::{AtomicU16, Ordering, fence};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::memory::{GuestAddress, GuestMemory};

/// Size of one descriptor.
pub const DESCRIPTOR_SIZE: u64 = 16;
/// Size of one used ring element.
pub const USED_ELEMENT_SIZE: u64 = 8;
/// The descriptor continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// The buffer is device-writable (otherwise device-readable).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// The buffer holds an indirect descriptor table.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver does not want used-buffer interrupts.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want available-buffer notifications.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// A descriptor as it lies in guest memory.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawDescriptor {
    /// Guest-physical address of the buffer.
    pub address: U64,
    /// Length of the buffer.
    pub len: U32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: U16,
    /// Next descriptor of the chain, if `flags` has `VIRTQ_DESC_F_NEXT`.
    pub next: U16,
}

/// A used ring element as it lies in guest memory.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct UsedElement {
    /// Head index of the chain returned.
    pub id: U32,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: U32,
}

/// The three areas of a split virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingPart {
    /// The descriptor table.
    DescriptorTable,
    /// The available ring (driver area).
    AvailableRing,
    /// The used ring (device area).
    UsedRing,
}

impl fmt::Display for RingPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingPart::DescriptorTable => "descriptor table",
            RingPart::AvailableRing => "available ring",
            RingPart::UsedRing => "used ring",
        })
    }
}

/// A driver-controlled value the device cannot accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is not enabled.
    #[error("the queue is not ready")]
    NotReady,
    /// The queue size is zero, not a power of two, or above the maximum.
    #[error("queue size {size} is not a power of two between 1 and {max}")]
    BadSize {
        /// The size the driver wrote.
        size: u32,
        /// The device's maximum.
        max: u16,
    },
    /// A ring area is misaligned or not inside guest memory.
    #[error("the {part} at {address} ({len:#x} bytes) is misaligned or outside guest memory")]
    BadRing {
        /// Which area.
        part: RingPart,
        /// Its guest-physical address.
        address: GuestAddress,
        /// Its size.
        len: u64,
    },
    /// The available index is further ahead of the device than the queue has entries.
    #[error(
        "available index {avail} is more than the queue size {size} ahead of the device's {next}"
    )]
    AvailIndexJump {
        /// The driver's available index.
        avail: u16,
        /// The next entry the device would take.
        next: u16,
        /// The queue size.
        size: u16,
    },
    /// An available ring entry names a descriptor outside the table.
    #[error("available ring entry names descriptor {index}, outside a table of {size}")]
    HeadOutOfRange {
        /// The descriptor index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor's `next` is outside its table.
    #[error("descriptor {index} chains to {next}, outside a table of {size}")]
    NextOutOfRange {
        /// The descriptor.
        index: u16,
        /// Its `next` field.
        next: u16,
        /// Entries in its table.
        size: u32,
    },
    /// A chain visits more descriptors than its table holds: it loops.
    #[error("the chain from descriptor {head} is longer than {limit} descriptors (a loop?)")]
    ChainTooLong {
        /// The chain's head.
        head: u16,
        /// The limit.
        limit: u32,
    },
    /// A buffer is not inside guest memory.
    #[error("descriptor {index} names {address}+{len:#x}, outside guest memory")]
    BufferOutOfMemory {
        /// The descriptor (in its table).
        index: u16,
        /// The buffer address.
        address: GuestAddress,
        /// The buffer length.
        len: u32,
    },
    /// A descriptor has the indirect flag but the feature was not negotiated.
    #[error("descriptor {index} is indirect but VIRTIO_RING_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated {
        /// The descriptor.
        index: u16,
    },
    /// An indirect descriptor breaks a rule of the specification.
    #[error("indirect descriptor {index} is invalid: {reason}")]
    BadIndirect {
        /// The descriptor.
        index: u16,
        /// The rule.
        reason: &'static str,
    },
    /// A device-readable buffer follows a device-writable one.
    #[error("descriptor {index} is device-readable but follows a device-writable one")]
    ReadableAfterWritable {
        /// The descriptor.
        index: u16,
    },
    /// The device tried to return a head outside the queue (a device bug, not a guest one).
    #[error("used head {head} is outside a queue of {size}")]
    UsedHeadOutOfRange {
        /// The head.
        head: u16,
        /// The queue size.
        size: u16,
    },
}

/// An access to a chain's buffers past their end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("access of {len} bytes at offset {offset} does not fit the chain's {available} bytes")]
pub struct ChainAccessError {
    /// Offset into the readable or writable part.
    pub offset: u64,
    /// Bytes asked for.
    pub len: u64,
    /// Bytes in that part.
    pub available: u64,
}

/// The features that change how a queue is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFeatures {
    /// `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC` was negotiated.
    pub indirect_desc: bool,
}

/// One validated buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address; `[address, address + len)` lies inside guest memory.
    pub address: GuestAddress,
    /// Length in bytes (never zero: empty buffers are left out of the chain).
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A validated descriptor chain taken from the available ring: device-readable buffers first,
/// then device-writable ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    head: u16,
    descriptors: Vec<Descriptor>,
    readable_count: usize,
    readable_len: u64,
    writable_len: u64,
}

impl DescriptorChain {
    /// The head index, to hand back with [`Queue::add_used`].
    pub fn head_index(&self) -> u16 {
        self.head
    }

    /// All buffers, readable ones first.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// The device-readable buffers.
    pub fn readable(&self) -> &[Descriptor] {
        &self.descriptors[..self.readable_count]
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> &[Descriptor] {
        &self.descriptors[self.readable_count..]
    }

    /// Total bytes of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total bytes of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Reads `buffer.len()` bytes from the readable part, starting `offset` bytes into it.
    pub fn read_readable(
        &self,
        memory: &GuestMemory,
        offset: u64,
        buffer: &mut [u8],
    ) -> Result<(), ChainAccessError> {
        let mut done = 0usize;
        for_each_piece(
            self.readable(),
            self.readable_len,
            offset,
            buffer.len(),
            |address, range| {
                let piece = &mut buffer[done..done + range];
                done += range;
                memory.read(address, piece).is_ok()
            },
        )
    }

    /// Writes `data` into the writable part, starting `offset` bytes into it.
    pub fn write_writable(
        &self,
        memory: &GuestMemory,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ChainAccessError> {
        let mut done = 0usize;
        for_each_piece(
            self.writable(),
            self.writable_len,
            offset,
            data.len(),
            |address, range| {
                let piece = &data[done..done + range];
                done += range;
                memory.write(address, piece).is_ok()
            },
        )
    }
}

/// Calls `access(address, len)` for each piece of `[offset, offset + len)` across `buffers`.
/// Every buffer was checked against guest memory when the chain was read, so `access` failing
/// means memory changed under the chain; it is reported as a short chain.
fn for_each_piece(
    buffers: &[Descriptor],
    total: u64,
    offset: u64,
    len: usize,
    mut access: impl FnMut(GuestAddress, usize) -> bool,
) -> Result<(), ChainAccessError> {
    let error = ChainAccessError {
        offset,
        len: len as u64,
        available: total,
    };
    if offset.checked_add(len as u64).is_none_or(|end| end > total) {
        return Err(error);
    }
    let mut skip = offset;
    let mut remaining = len;
    for buffer in buffers {
        if remaining == 0 {
            break;
        }
        let buffer_len = u64::from(buffer.len);
        if skip >= buffer_len {
            skip -= buffer_len;
            continue;
        }
        let piece = (buffer_len - skip).min(remaining as u64) as usize;
        if !access(GuestAddress(buffer.address.0 + skip), piece) {
            return Err(error);
        }
        remaining -= piece;
        skip = 0;
    }
    if remaining == 0 { Ok(()) } else { Err(error) }
}

/// The 16-bit atomic at `address` in guest memory, if it is inside memory and aligned.
///
/// Guest memory is shared with running vCPUs; the ring indices and flags are the only fields the
/// two sides access concurrently by design, and they are accessed only through this.
pub fn atomic_u16(memory: &GuestMemory, address: GuestAddress) -> Option<&AtomicU16> {
    let pointer = memory.host_pointer(address, 2).ok()?;
    if !(pointer as usize).is_multiple_of(std::mem::align_of::<AtomicU16>()) {
        return None;
    }
    // SAFETY: the two bytes lie inside the guest memory mapping (checked by `host_pointer`),
    // which stays mapped as long as `memory` is borrowed; the pointer is aligned (checked above).
    // The host never holds a non-atomic reference into guest memory, so viewing these bytes as
    // an `AtomicU16` creates no aliasing `&u16`/`&mut u16`.
    Some(unsafe { AtomicU16::from_ptr(pointer.cast()) })
}

/// A split virtqueue's device-side state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    max_size: u16,
    /// As written by the driver; validated when the queue is enabled.
    size: u32,
    ready: bool,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    features: QueueFeatures,
    next_avail: u16,
    next_used: u16,
    /// Used index when the driver was last considered for an interrupt (event index mode).
    signalled_used: u16,
    /// The used ring's flags as this device last wrote them (0 until it writes them).
    used_flags: u16,
}

impl Queue {
    /// A queue of at most `max_size` entries, disabled, with the size preset to the maximum.
    pub fn new(max_size: u16) -> Queue {
        Queue {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc_table: GuestAddress(0),
            avail_ring: GuestAddress(0),
            used_ring: GuestAddress(0),
            features: QueueFeatures::default(),
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
            used_flags: 0,
        }
    }

    /// The largest size the device accepts.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The size the driver chose (valid once the queue is ready).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Whether the driver enabled the queue.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The descriptor table's address.
    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }

    /// The available ring's address.
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }

    /// The used ring's address.
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// The next available ring entry the device will take.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The used index the device has published.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Sets the size (validated by [`Queue::enable`]).
    pub fn set_size(&mut self, size: u32) {
        self.size = size;
    }

    /// Sets the descriptor table's address.
    pub fn set_desc_table(&mut self, address: GuestAddress) {
        self.desc_table = address;
    }

    /// Sets the available ring's address.
    pub fn set_avail_ring(&mut self, address: GuestAddress) {
        self.avail_ring = address;
    }

    /// Sets the used ring's address.
    pub fn set_used_ring(&mut self, address: GuestAddress) {
        self.used_ring = address;
    }

    /// Validates the size and the three areas against `memory` and enables the queue, starting
    /// both indices at zero.
    pub fn enable(
        &mut self,
        memory: &GuestMemory,
        features: QueueFeatures,
    ) -> Result<(), QueueError> {
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > u32::from(self.max_size) {
            return Err(QueueError::BadSize {
                size,
                max: self.max_size,
            });
        }
        let size = u64::from(size);
        let areas = [
            (
                RingPart::DescriptorTable,
                self.desc_table,
                16,
                DESCRIPTOR_SIZE * size,
            ),
            (RingPart::AvailableRing, self.avail_ring, 2, 6 + 2 * size),
            (
                RingPart::UsedRing,
                self.used_ring,
                4,
                6 + USED_ELEMENT_SIZE * size,
            ),
        ];
        for (part, address, alignment, len) in areas {
            if !address.0.is_multiple_of(alignment) || memory.host_pointer(address, len).is_err() {
                return Err(QueueError::BadRing { part, address, len });
            }
        }
        self.features = features;
        self.next_avail = 0;
        self.next_used = 0;
        self.signalled_used = 0;
        self.used_flags = 0;
        self.ready = true;
        Ok(())
    }

    /// Stops using the queue (its configuration is kept).
    pub fn disable(&mut self) {
        self.ready = false;
    }

    /// Returns the queue to its state after [`Queue::new`].
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    fn size_u16(&self) -> u16 {
        // `enable` checked that the size is a power of two no larger than a `u16` maximum.
        self.size as u16
    }

    fn avail_field(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.avail_ring.0 + offset)
    }

    fn used_field(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.used_ring.0 + offset)
    }

    fn load(
        &self,
        memory: &GuestMemory,
        part: RingPart,
        address: GuestAddress,
        ordering: Ordering,
    ) -> Result<u16, QueueError> {
        atomic_u16(memory, address)
            .map(|field| field.load(ordering))
            .ok_or(QueueError::BadRing {
                part,
                address,
                len: 2,
            })
    }

    fn store(
        &self,
        memory: &GuestMemory,
        address: GuestAddress,
        value: u16,
        ordering: Ordering,
    ) -> Result<(), QueueError> {
        atomic_u16(memory, address)
            .map(|field| field.store(value, ordering))
            .ok_or(QueueError::BadRing {
                part: RingPart::UsedRing,
                address,
                len: 2,
            })
    }

    /// Loads the driver's available index (Acquire) and checks it against the device's position.
    fn pending(&self, memory: &GuestMemory) -> Result<u16, QueueError> {
        let avail = self.load(
            memory,
            RingPart::AvailableRing,
            self.avail_field(2),
            Ordering::Acquire,
        )?;
        let pending = avail.wrapping_sub(self.next_avail);
        if pending > self.size_u16() {
            return Err(QueueError::AvailIndexJump {
                avail,
                next: self.next_avail,
                size: self.size_u16(),
            });
        }
        Ok(pending)
    }

    /// Takes the next available chain, validated, or `None` if the driver has offered nothing
    /// new. With the event index negotiated, an empty queue also asks the driver to notify at
    /// the next entry (and looks again, so that an entry added meanwhile is not missed).
    pub fn pop_available(
        &mut self,
        memory: &GuestMemory,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let mut pending = self.pending(memory)?;
        if pending == 0 && self.features.event_idx {
            let avail_event = self.used_field(4 + USED_ELEMENT_SIZE * u64::from(self.size));
            self.store(memory, avail_event, self.next_avail, Ordering::Relaxed)?;
            fence(Ordering::SeqCst);
            pending = self.pending(memory)?;
        }
        if pending == 0 {
            return Ok(None);
        }
        let slot = self.next_avail & (self.size_u16() - 1);
        // Ordered after the Acquire load of the index in `pending`.
        let head = self.load(
            memory,
            RingPart::AvailableRing,
            self.avail_field(4 + 2 * u64::from(slot)),
            Ordering::Relaxed,
        )?;
        let chain = self.read_chain(memory, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    /// Gives back the chain last taken by [`Queue::pop_available`], unused: the next call
    /// returns it again.
    pub fn undo_pop(&mut self) {
        self.next_avail = self.next_avail.wrapping_sub(1);
    }

    /// Reads and validates the chain starting at descriptor `head`.
    fn read_chain(&self, memory: &GuestMemory, head: u16) -> Result<DescriptorChain, QueueError> {
        let size = self.size_u16();
        if head >= size {
            return Err(QueueError::HeadOutOfRange { index: head, size });
        }
        let mut chain = DescriptorChain {
            head,
            descriptors: Vec::new(),
            readable_count: 0,
            readable_len: 0,
            writable_len: 0,
        };
        let mut table = self.desc_table;
        let mut entries = u32::from(size);
        let mut in_indirect = false;
        let mut index = head;
        let mut visited = 0u32;
        loop {
            if visited >= entries {
                return Err(QueueError::ChainTooLong {
                    head,
                    limit: entries,
                });
            }
            visited += 1;
            let address = GuestAddress(table.0 + u64::from(index) * DESCRIPTOR_SIZE);
            let raw: RawDescriptor = memory.read_obj(address).map_err(|_| QueueError::BadRing {
                part: RingPart::DescriptorTable,
                address,
                len: DESCRIPTOR_SIZE,
            })?;
            let flags = raw.flags.get();
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                (table, entries) =
                    self.enter_indirect(memory, &raw, index, in_indirect, visited)?;
                in_indirect = true;
                index = 0;
                visited = 0;
                continue;
            }
            chain.push(memory, &raw, index)?;
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            let next = raw.next.get();
            if u32::from(next) >= entries {
                return Err(QueueError::NextOutOfRange {
                    index,
                    next,
                    size: entries,
                });
            }
            index = next;
        }
    }

    /// Checks an indirect descriptor; returns its table and entry count.
    fn enter_indirect(
        &self,
        memory: &GuestMemory,
        raw: &RawDescriptor,
        index: u16,
        in_indirect: bool,
        visited: u32,
    ) -> Result<(GuestAddress, u32), QueueError> {
        let bad = |reason| Err(QueueError::BadIndirect { index, reason });
        if !self.features.indirect_desc {
            return Err(QueueError::IndirectNotNegotiated { index });
        }
        if in_indirect {
            return bad("an indirect table may not point to another");
        }
        if visited != 1 || raw.flags.get() & VIRTQ_DESC_F_NEXT != 0 {
            return bad("an indirect descriptor must be alone in its chain");
        }
        let len = raw.len.get();
        if len == 0 || !u64::from(len).is_multiple_of(DESCRIPTOR_SIZE) {
            return bad("its length is not a non-zero multiple of 16");
        }
        let entries = len / DESCRIPTOR_SIZE as u32;
        if entries > u32::from(self.max_size) {
            return bad("its table is longer than the queue's maximum size");
        }
        let table = GuestAddress(raw.address.get());
        if memory.host_pointer(table, u64::from(len)).is_err() {
            return Err(QueueError::BufferOutOfMemory {
                index,
                address: table,
                len,
            });
        }
        Ok((table, entries))
    }

    /// Hands chain `head` back to the driver with `len` bytes written, publishing the used index
    /// with Release ordering.
    pub fn add_used(
        &mut self,
        memory: &GuestMemory,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let size = self.size_u16();
        if head >= size {
            return Err(QueueError::UsedHeadOutOfRange { head, size });
        }
        let slot = u64::from(self.next_used & (size - 1));
        let element = UsedElement {
            id: U32::new(u32::from(head)),
            len: U32::new(len),
        };
        let address = self.used_field(4 + slot * USED_ELEMENT_SIZE);
        memory
            .write_obj(address, &element)
            .map_err(|_| QueueError::BadRing {
                part: RingPart::UsedRing,
                address,
                len: USED_ELEMENT_SIZE,
            })?;
        self.next_used = self.next_used.wrapping_add(1);
        self.store(
            memory,
            self.used_field(2),
            self.next_used,
            Ordering::Release,
        )
    }

    /// Asks the driver to notify this queue when it makes buffers available (`enabled`), or
    /// not to (`VIRTQ_USED_F_NO_NOTIFY` in the used ring's flags). The driver may notify
    /// anyway: the flag only saves it the exits. With the event index negotiated this does
    /// nothing: there [`Queue::pop_available`] asks for the next notification through
    /// `avail_event` whenever it finds the queue empty.
    ///
    /// A device that sleeps until notified must enable notifications, then (after a full
    /// fence) look at the queue once more before it sleeps, or it may miss a buffer added
    /// meanwhile.
    pub fn set_notification(
        &mut self,
        memory: &GuestMemory,
        enabled: bool,
    ) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let flags = if enabled { 0 } else { VIRTQ_USED_F_NO_NOTIFY };
        if self.features.event_idx || flags == self.used_flags {
            return Ok(());
        }
        self.store(memory, self.used_field(0), flags, Ordering::Relaxed)?;
        self.used_flags = flags;
        Ok(())
    }

    /// Whether the driver wants an interrupt for the used entries published since the last call
    /// (the available ring's `NO_INTERRUPT` flag, or `used_event` with the event index).
    pub fn needs_notification(&mut self, memory: &GuestMemory) -> Result<bool, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        // The used index store must be visible before the driver's suppression field is read.
        fence(Ordering::SeqCst);
        if self.features.event_idx {
            let used_event = self.load(
                memory,
                RingPart::AvailableRing,
                self.avail_field(4 + 2 * u64::from(self.size)),
                Ordering::Acquire,
            )?;
            let new = self.next_used;
            let old = std::mem::replace(&mut self.signalled_used, new);
            // virtio 1.x 2.7.10: notify if `used_event` lies in (old, new].
            Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags = self.load(
                memory,
                RingPart::AvailableRing,
                self.avail_field(0),
                Ordering::Acquire,
            )?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

impl DescriptorChain {
    /// Validates one buffer descriptor and appends it.
    fn push(
        &mut self,
        memory: &GuestMemory,
        raw: &RawDescriptor,
        index: u16,
    ) -> Result<(), QueueError> {
        let writable = raw.flags.get() & VIRTQ_DESC_F_WRITE != 0;
        let address = GuestAddress(raw.address.get());
        let len = raw.len.get();
        if !writable && self.writable_len > 0 {
            return Err(QueueError::ReadableAfterWritable { index });
        }
        if len == 0 {
            // An empty buffer carries nothing; leave it out rather than check its address.
            return Ok(());
        }
        if memory.host_pointer(address, u64::from(len)).is_err() {
            return Err(QueueError::BufferOutOfMemory {
                index,
                address,
                len,
            });
        }
        self.descriptors.push(Descriptor {
            address,
            len,
            writable,
        });
        if writable {
            self.writable_len += u64::from(len);
        } else {
            self.readable_count += 1;
            self.readable_len += u64::from(len);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_ring::layout::Region;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const DATA: u64 = 0x4000;
    const SIZE: u16 = 8;

    fn memory() -> GuestMemory {
        GuestMemory::new(&[Region::new(0, 0x10000)]).unwrap()
    }

    fn queue(memory: &GuestMemory, features: QueueFeatures) -> Queue {
        let mut queue = Queue::new(16);
        queue.set_size(u32::from(SIZE));
        queue.set_desc_table(GuestAddress(DESC));
        queue.set_avail_ring(GuestAddress(AVAIL));
        queue.set_used_ring(GuestAddress(USED));
        // A driver sets a queue up with zeroed rings.
        memory.zero(GuestAddress(AVAIL), 0x1000).unwrap();
        memory.zero(GuestAddress(USED), 0x1000).unwrap();
        queue.enable(memory, features).unwrap();
        queue
    }

    fn write_descriptor(
        memory: &GuestMemory,
        table: u64,
        index: u16,
        address: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let raw = RawDescriptor {
            address: U64::new(address),
            len: U32::new(len),
            flags: U16::new(flags),
            next: U16::new(next),
        };
        memory
            .write_obj(GuestAddress(table + u64::from(index) * 16), &raw)
            .unwrap();
    }

    /// Offers `heads` in the available ring, as a driver would.
    fn offer(memory: &GuestMemory, heads: &[u16]) {
        let avail = atomic_u16(memory, GuestAddress(AVAIL + 2)).unwrap();
        let mut index = avail.load(Ordering::Relaxed);
        for head in heads {
            let slot = u64::from(index % SIZE);
            memory
                .write_obj(GuestAddress(AVAIL + 4 + 2 * slot), &head.to_le_bytes())
                .unwrap();
            index = index.wrapping_add(1);
        }
        avail.store(index, Ordering::Release);
    }

    fn pop_error(queue: &mut Queue, memory: &GuestMemory) -> QueueError {
        queue.pop_available(memory).unwrap_err()
    }

    #[test]
    fn reads_a_chain_and_returns_it() {
        let memory = memory();
        let mut queue = queue(&memory, QueueFeatures::default());
        assert_eq!(queue.pop_available(&memory).unwrap(), None);
        write_descriptor(&memory, DESC, 3, DATA, 10, VIRTQ_DESC_F_NEXT, 5);
        write_descriptor(&memory, DESC, 5, DATA + 0x100, 0, VIRTQ_DESC_F_NEXT, 1);
        write_descriptor(&memory, DESC, 1, DATA + 0x200, 20, VIRTQ_DESC_F_WRITE, 0);
        memory.write(GuestAddress(DATA), b"0123456789").unwrap();
        offer(&memory, &[3]);

        let chain = queue.pop_available(&memory).unwrap().unwrap();
        assert_eq!(chain.head_index(), 3);
        assert_eq!(chain.readable().len(), 1);
        assert_eq!(chain.writable().len(), 1);
        assert_eq!((chain.readable_len(), chain.writable_len()), (10, 20));
        let mut bytes = [0u8; 4];
        chain.read_readable(&memory, 6, &mut bytes).unwrap();
        assert_eq!(&bytes, b"6789");
        assert!(chain.read_readable(&memory, 7, &mut bytes).is_err());
        chain.write_writable(&memory, 16, b"abcd").unwrap();
        assert!(chain.write_writable(&memory, 17, b"abcd").is_err());
        memory.read(GuestAddress(DATA + 0x210), &mut bytes).unwrap();
        assert_eq!(&bytes, b"abcd");

        queue.add_used(&memory, 3, 20).unwrap();
        let used_idx = atomic_u16(&memory, GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx.load(Ordering::Acquire), 1);
        let element: UsedElement = memory.read_obj(GuestAddress(USED + 4)).unwrap();
        assert_eq!((element.id.get(), element.len.get()), (3, 20));
        assert_eq!(queue.pop_available(&memory).unwrap(), None);
    }

    #[test]
    fn undo_pop_offers_the_chain_again() {
        let memory = memory();
        let mut queue = queue(&memory, QueueFeatures::default());
        write_descriptor(&memory, DESC, 0, DATA, 10, 0, 0);
        offer(&memory, &[0]);
        let first = queue.pop_available(&memory).unwrap().unwrap();
        queue.undo_pop();
        assert_eq!(queue.pop_available(&memory).unwrap(), Some(first));
    }

    #[test]
    fn rejects_bad_queue_configurations() {
        let memory = memory();
        let configure = |size: u32, desc: u64, avail: u64, used: u64| {
            let mut queue = Queue::new(16);
            queue.set_size(size);
            queue.set_desc_table(GuestAddress(desc));
            queue.set_avail_ring(GuestAddress(avail));
            queue.set_used_ring(GuestAddress(used));
            let result = queue.enable(&memory, QueueFeatures::default());
            assert!(!queue.is_ready() || result.is_ok());
            result
        };
        for size in [0, 3, 12, 32, u32::MAX] {
            assert!(matches!(
                configure(size, DESC, AVAIL, USED),
                Err(QueueError::BadSize { .. })
            ));
        }
        let bad_ring = |result: Result<(), QueueError>, expected: RingPart| match result {
            Err(QueueError::BadRing { part, .. }) => assert_eq!(part, expected),
            other => panic!("expected a bad {expected}, got {other:?}"),
        };
        bad_ring(
            configure(8, 0x10000, AVAIL, USED),
            RingPart::DescriptorTable,
        );
        bad_ring(
            configure(8, DESC + 8, AVAIL, USED),
            RingPart::DescriptorTable,
        );
        bad_ring(
            configure(8, u64::MAX - 15, AVAIL, USED),
            RingPart::DescriptorTable,
        );
        bad_ring(configure(8, DESC, 0xfff0, USED), RingPart::AvailableRing);
        bad_ring(configure(8, DESC, AVAIL + 1, USED), RingPart::AvailableRing);
        bad_ring(configure(8, DESC, AVAIL, 0xffe0), RingPart::UsedRing);
        bad_ring(configure(8, DESC, AVAIL, USED + 2), RingPart::UsedRing);
        bad_ring(configure(16, DESC, AVAIL, 1 << 40), RingPart::UsedRing);
        configure(16, DESC, AVAIL, USED).unwrap();
        configure(1, DESC, AVAIL, USED).unwrap();
    }

    #[test]
    fn rejects_descriptors_outside_memory_and_overflows() {
        let memory = memory();
        for (address, len) in [
            (0x10000, 1),
            (0xffff, 2),
            (u64::MAX, 1),
            (u64::MAX - 3, u32::MAX),
            (0, u32::MAX),
        ] {
            let mut queue = queue(&memory, QueueFeatures::default());
            write_descriptor(&memory, DESC, 0, address, len, 0, 0);
            offer(&memory, &[0]);
            assert!(
                matches!(
                    pop_error(&mut queue, &memory),
                    QueueError::BufferOutOfMemory { index: 0, .. }
                ),
                "{address:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn rejects_next_out_of_range_and_bad_heads() {
        let memory = memory();
        let mut queue = queue(&memory, QueueFeatures::default());
        write_descriptor(&memory, DESC, 0, DATA, 4, VIRTQ_DESC_F_NEXT, SIZE);
        offer(&memory, &[0]);
        assert_eq!(
            pop_error(&mut queue, &memory),
            QueueError::NextOutOfRange {
                index: 0,
                next: SIZE,
                size: u32::from(SIZE)
            }
        );

        let mut queue = self::queue(&memory, QueueFeatures::default());
        offer(&memory, &[SIZE]);
        assert!(matches!(
            pop_error(&mut queue, &memory),
            QueueError::HeadOutOfRange { index: SIZE, .. }
        ));
    }

    #[test]
    fn a_descriptor_loop_ends_with_an_error() {
        let memory = memory();
        let mut queue = queue(&memory, QueueFeatures::default());
        write_descriptor(&memory, DESC, 0, DATA, 4, VIRTQ_DESC_F_NEXT, 1);
        write_descriptor(&memory, DESC, 1, DATA, 4, VIRTQ_DESC_F_NEXT, 0);
        offer(&memory, &[0]);
        assert!(matches!(
            pop_error(&mut queue, &memory),
            QueueError::ChainTooLong { head: 0, .. }
        ));
        // A self-loop.
        let mut queue = self::queue(&memory, QueueFeatures::default());
        write_descriptor(&memory, DESC, 2, DATA, 4, VIRTQ_DESC_F_NEXT, 2);
        offer(&memory, &[2]);
        assert!(matches!(
            pop_error(&mut queue, &memory),
            QueueError::ChainTooLong { .. }
        ));
    }

    #[test]
    fn rejects_an_available_index_jump() {
        let memory = memory();
        let mut queue = queue(&memory, QueueFeatures::default());
        atomic_u16(&memory, GuestAddress(AVAIL + 2))
            .unwrap()
            .store(SIZE + 1, Ordering::Release);
        assert!(matches!(
            pop_error(&mut queue, &memory),
            QueueError::AvailIndexJump {
                avail: 9,
                next: 0,
                size: SIZE
            }
        ));
        // Exactly a full ring is fine.
        let mut queue = self::queue(&memory, QueueFeatures::default());
        for index in 0..SIZE {
            write_descriptor(&memory, DESC, index, DATA, 4, 0, 0);
        }
        atomic_u16(&memory, GuestAddress(AVAIL + 2))
            .unwrap()
            .store(SIZE, Ordering::Release);
        for _ in 0..SIZE {
            assert!(queue.pop_available(&memory).unwrap().is_some());
        }
        assert_eq!(queue.pop_available(&memory).unwrap(), None);
    }

    #[test]
    fn rejects_readable_after_writable() {
        let memory = memory();
        let mut queue = queue(&memory, QueueFeatures::default());
        write_descriptor(
            &memory,
            DESC,
            0,
            DATA,
            4,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            1,
        );
        write_descriptor(&memory, DESC, 1, DATA, 4, 0, 0);
        offer(&memory, &[0]);
        assert_eq!(
            pop_error(&mut queue, &memory),
            QueueError::ReadableAfterWritable { index: 1 }
        );
    }

    #[test]
    fn indirect_tables_are_checked_like_direct_ones() {
        let memory = memory();
        let table = 0x5000;
        let indirect = QueueFeatures {
            indirect_desc: true,
            ..QueueFeatures::default()
        };

        // Not negotiated.
        let mut queue = queue(&memory, QueueFeatures::default());
        write_descriptor(&memory, DESC, 0, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
        offer(&memory, &[0]);
        assert!(matches!(
            pop_error(&mut queue, &memory),
            QueueError::IndirectNotNegotiated { .. }
        ));

        // A good table: one readable, one writable buffer.
        let mut queue = self::queue(&memory, indirect);
        write_descriptor(&memory, table, 0, DATA, 12, VIRTQ_DESC_F_NEXT, 1);
        write_descriptor(&memory, table, 1, DATA + 0x100, 100, VIRTQ_DESC_F_WRITE, 0);
        offer(&memory, &[0]);
        let chain = queue.pop_available(&memory).unwrap().unwrap();
        assert_eq!((chain.readable_len(), chain.writable_len()), (12, 100));

        let cases: [(u64, u32, u16, &str); 5] = [
            (table, 24, VIRTQ_DESC_F_INDIRECT, "length"),
            (table, 0, VIRTQ_DESC_F_INDIRECT, "length"),
            (
                table,
                32,
                VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT,
                "alone",
            ),
            (table, 16 * 17, VIRTQ_DESC_F_INDIRECT, "longer"),
            (0xfff0, 32, VIRTQ_DESC_F_INDIRECT, "outside"),
        ];
        for (address, len, flags, what) in cases {
            let mut queue = self::queue(&memory, indirect);
            write_descriptor(&memory, DESC, 0, address, len, flags, 1);
            offer(&memory, &[0]);
            let error = pop_error(&mut queue, &memory);
            assert!(
                matches!(
                    error,
                    QueueError::BadIndirect { .. } | QueueError::BufferOutOfMemory { .. }
                ),
                "{what}: {error}"
            );
        }

        // Nested tables, loops and bad `next` inside a table.
        let mut queue = self::queue(&memory, indirect);
        write_descriptor(&memory, DESC, 0, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
        write_descriptor(&memory, table, 0, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
        offer(&memory, &[0]);
        assert!(matches!(
            pop_error(&mut queue, &memory),
            QueueError::BadIndirect { .. }
        ));
        let mut queue = self::queue(&memory, indirect);
        write_descriptor(&memory, table, 0, DATA, 4, VIRTQ_DESC_F_NEXT, 1);
        write_descriptor(&memory, table, 1, DATA, 4, VIRTQ_DESC_F_NEXT, 0);
        offer(&memory, &[0]);
        assert!(matches!(
            pop_error(&mut queue, &memory),
            QueueError::ChainTooLong { .. }
        ));
        let mut queue = self::queue(&memory, indirect);
        write_descriptor(&memory, table, 0, DATA, 4, VIRTQ_DESC_F_NEXT, 2);
        offer(&memory, &[0]);
        assert!(matches!(
            pop_error(&mut queue, &memory),
            QueueError::NextOutOfRange {
                next: 2,
                size: 2,
                ..
            }
        ));
    }

    #[test]
    fn notification_suppression_follows_the_flags() {
        let memory = memory();
        let mut queue = queue(&memory, QueueFeatures::default());
        write_descriptor(&memory, DESC, 0, DATA, 4, 0, 0);
        offer(&memory, &[0]);
        let chain = queue.pop_available(&memory).unwrap().unwrap();
        queue.add_used(&memory, chain.head_index(), 0).unwrap();
        assert!(queue.needs_notification(&memory).unwrap());
        atomic_u16(&memory, GuestAddress(AVAIL))
            .unwrap()
            .store(VIRTQ_AVAIL_F_NO_INTERRUPT, Ordering::Release);
        assert!(!queue.needs_notification(&memory).unwrap());
    }

    #[test]
    fn event_index_suppresses_and_requests_notifications() {
        let memory = memory();
        let features = QueueFeatures {
            event_idx: true,
            ..QueueFeatures::default()
        };
        let mut queue = queue(&memory, features);
        let used_event =
            atomic_u16(&memory, GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE))).unwrap();
        let avail_event =
            atomic_u16(&memory, GuestAddress(USED + 4 + 8 * u64::from(SIZE))).unwrap();
        for index in 0..SIZE {
            write_descriptor(&memory, DESC, index, DATA, 4, 0, 0);
        }
        // An empty queue asks to be notified at the next entry.
        avail_event.store(0xffff, Ordering::Relaxed);
        assert_eq!(queue.pop_available(&memory).unwrap(), None);
        assert_eq!(avail_event.load(Ordering::Relaxed), 0);

        // The driver wants an interrupt once entry 1 is used (used_event = 1).
        used_event.store(1, Ordering::Release);
        offer(&memory, &[0, 1, 2]);
        let mut interrupts = Vec::new();
        for _ in 0..3 {
            let chain = queue.pop_available(&memory).unwrap().unwrap();
            queue.add_used(&memory, chain.head_index(), 0).unwrap();
            interrupts.push(queue.needs_notification(&memory).unwrap());
        }
        assert_eq!(interrupts, [false, true, false]);
        assert_eq!(queue.pop_available(&memory).unwrap(), None);
        assert_eq!(avail_event.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn not_ready_queues_refuse_work() {
        let memory = memory();
        let mut queue = Queue::new(16);
        assert_eq!(pop_error(&mut queue, &memory), QueueError::NotReady);
        assert_eq!(queue.add_used(&memory, 0, 0), Err(QueueError::NotReady));
        let mut queue = self::queue(&memory, QueueFeatures::default());
        assert_eq!(
            queue.add_used(&memory, SIZE, 0),
            Err(QueueError::UsedHeadOutOfRange {
                head: SIZE,
                size: SIZE
            })
        );
        queue.reset();
        assert!(!queue.is_ready());
        assert_eq!(queue.size(), 16);
    }
}
