//! The shared segment as a whole: where each ring, pool and control block goes, how the host
//! initialises them, and how each OS attaches to its side.
//!
//! ```text
//! offset 0           control block of OS A     (CONTROL_BLOCK_SIZE)
//!                    control block of OS B
//!                    ring A -> B               (OS A produces descriptors of pool A)
//!                    ring A -> B return        (OS B returns pool A's buffers)
//!                    ring B -> A               (OS B produces descriptors of pool B)
//!                    ring B -> A return        (OS A returns pool B's buffers)
//!                    pool A                    (owned by OS A)
//!                    pool B                    (owned by OS B)
//! ```
//!
//! Every piece starts on a page boundary. The host computes the layout once
//! ([`SharedLayout::compute`]), writes it into both boot info blocks, and initialises the
//! pieces ([`init`]); each OS then attaches to its side ([`Endpoint::attach`]), which validates
//! every header again: the layout in the boot info is trusted only as far as those checks go.

use core::fmt;

use crate::bootinfo::SharedLayout;
use crate::control::CONTROL_BLOCK_SIZE;
use crate::desc::Desc;
use crate::layout::{PAGE_SIZE, Region, Role};
use crate::pool::{self, PoolSetupError, PoolView};
use crate::ring::{self, AttachError, Consumer, Producer};

/// The geometry of the rings and pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedConfig {
    /// Capacity of each descriptor ring (a power of two).
    pub ring_capacity: u32,
    /// Size of each pool buffer (a power of two).
    pub buffer_size: u32,
    /// Buffers in each pool.
    pub buffers_per_pool: u32,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig {
            ring_capacity: 1024,
            buffer_size: 2048,
            buffers_per_pool: 2048,
        }
    }
}

/// Why a shared layout or its initialisation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedError {
    /// The pieces do not fit the shared segment.
    TooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A ring could not be set up or attached.
    Ring(&'static str, AttachError),
    /// A pool could not be set up or attached.
    Pool(&'static str, PoolSetupError),
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedError::TooSmall { needed, available } => write!(
                f,
                "rings and pools need {} KiB of shared memory, the segment has {} KiB",
                needed >> 10,
                available >> 10
            ),
            SharedError::Ring(name, error) => write!(f, "ring {name}: {error}"),
            SharedError::Pool(name, error) => write!(f, "pool {name}: {error}"),
        }
    }
}

const fn page_align(value: u64) -> u64 {
    value.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl SharedLayout {
    /// Lays out control blocks, rings and pools in a shared segment of `shared_size` bytes.
    pub fn compute(shared_size: u64, config: SharedConfig) -> Result<SharedLayout, SharedError> {
        let ring_size = page_align(ring::region_size::<Desc>(config.ring_capacity) as u64);
        let pool_size =
            page_align(pool::pool_region_size(config.buffer_size, config.buffers_per_pool) as u64);
        let mut next = 0u64;
        let mut take = |size: u64| {
            let region = Region::new(next, size);
            next += size;
            region
        };
        let layout = SharedLayout {
            control_a: take(CONTROL_BLOCK_SIZE),
            control_b: take(CONTROL_BLOCK_SIZE),
            a_to_b: take(ring_size),
            a_to_b_return: take(ring_size),
            b_to_a: take(ring_size),
            b_to_a_return: take(ring_size),
            pool_a: take(pool_size),
            pool_b: take(pool_size),
            buffer_size: config.buffer_size,
            ring_capacity: config.ring_capacity,
        };
        if next > shared_size {
            return Err(SharedError::TooSmall {
                needed: next,
                available: shared_size,
            });
        }
        Ok(layout)
    }

    /// The rings as (name, region), in layout order.
    pub fn rings(&self) -> [(&'static str, Region); 4] {
        [
            ("a_to_b", self.a_to_b),
            ("a_to_b_return", self.a_to_b_return),
            ("b_to_a", self.b_to_a),
            ("b_to_a_return", self.b_to_a_return),
        ]
    }

    /// The pools as (name, region).
    pub fn pools(&self) -> [(&'static str, Region); 2] {
        [("pool_a", self.pool_a), ("pool_b", self.pool_b)]
    }
}

/// A piece of the shared segment as a host pointer and length.
///
/// # Safety
/// `base` must be valid for `size` bytes.
unsafe fn piece(base: *mut u8, size: usize, region: Region) -> Option<(*mut u8, usize)> {
    if !Region::new(0, size as u64).contains_range(region.base, region.size) || region.size == 0 {
        return None;
    }
    // SAFETY: `region` lies inside `[0, size)` (checked above) and `base` is valid for `size`.
    Some((
        unsafe { base.add(region.base as usize) },
        region.size as usize,
    ))
}

/// Initialises every ring and pool of `layout` and zeroes the control blocks (host side).
///
/// # Safety
/// `base` must be valid for writes of `size` bytes (the whole shared segment), aligned to a
/// page, and nothing may use the segment while it is initialised.
pub unsafe fn init(base: *mut u8, size: usize, layout: &SharedLayout) -> Result<(), SharedError> {
    let too_small = SharedError::TooSmall {
        needed: 0,
        available: size as u64,
    };
    for region in [layout.control_a, layout.control_b] {
        // SAFETY: the caller's contract on `base` and `size`.
        let (pointer, len) = unsafe { piece(base, size, region) }.ok_or(too_small)?;
        // SAFETY: `pointer..pointer + len` lies inside the segment.
        unsafe { core::ptr::write_bytes(pointer, 0, len) };
    }
    for (name, region) in layout.rings() {
        // SAFETY: the caller's contract on `base` and `size`.
        let (pointer, len) = unsafe { piece(base, size, region) }.ok_or(too_small)?;
        // SAFETY: the piece is inside the segment, which nothing uses during initialisation.
        unsafe { ring::init::<Desc>(pointer, len, layout.ring_capacity) }
            .map_err(|error| SharedError::Ring(name, error))?;
    }
    let buffers = |region: Region| region.size.saturating_sub(pool::POOL_HEADER_SIZE as u64);
    for (name, region) in layout.pools() {
        // SAFETY: the caller's contract on `base` and `size`.
        let (pointer, len) = unsafe { piece(base, size, region) }.ok_or(too_small)?;
        let count = (buffers(region) / u64::from(layout.buffer_size.max(1))) as u32;
        // SAFETY: as for the rings.
        unsafe { pool::init(pointer, len, layout.buffer_size, count) }
            .map_err(|error| SharedError::Pool(name, error))?;
    }
    Ok(())
}

/// One OS's side of the shared segment.
#[derive(Debug)]
pub struct Endpoint {
    /// The ring this OS produces on (descriptors of its own pool).
    pub tx: Producer<Desc>,
    /// Where the peer returns this OS's buffers.
    pub tx_return: Consumer<Desc>,
    /// The ring the peer produces on (descriptors of the peer's pool).
    pub rx: Consumer<Desc>,
    /// Where this OS returns the peer's buffers.
    pub rx_return: Producer<Desc>,
    /// This OS's pool (wrap it in a [`pool::PoolOwner`]).
    pub own_pool: PoolView,
    /// The peer's pool (validate every descriptor against it).
    pub peer_pool: PoolView,
}

impl Endpoint {
    /// Attaches `role`'s side of the shared segment at `base`.
    ///
    /// # Safety
    /// `base` must be valid for reads and writes of `size` bytes for as long as the endpoint
    /// lives, and at most one endpoint per role may exist at a time.
    pub unsafe fn attach(
        base: *mut u8,
        size: usize,
        layout: &SharedLayout,
        role: Role,
    ) -> Result<Endpoint, SharedError> {
        let (tx, tx_return, rx, rx_return, own, peer) = match role {
            Role::A => (
                ("a_to_b", layout.a_to_b),
                ("a_to_b_return", layout.a_to_b_return),
                ("b_to_a", layout.b_to_a),
                ("b_to_a_return", layout.b_to_a_return),
                ("pool_a", layout.pool_a),
                ("pool_b", layout.pool_b),
            ),
            Role::B => (
                ("b_to_a", layout.b_to_a),
                ("b_to_a_return", layout.b_to_a_return),
                ("a_to_b", layout.a_to_b),
                ("a_to_b_return", layout.a_to_b_return),
                ("pool_b", layout.pool_b),
                ("pool_a", layout.pool_a),
            ),
        };
        let too_small = SharedError::TooSmall {
            needed: 0,
            available: size as u64,
        };
        let locate = |(name, region): (&'static str, Region)| {
            // SAFETY: the caller's contract on `base` and `size`.
            unsafe { piece(base, size, region) }
                .map(|piece| (name, piece))
                .ok_or(too_small)
        };
        let (tx, tx_return, rx, rx_return, own, peer) = (
            locate(tx)?,
            locate(tx_return)?,
            locate(rx)?,
            locate(rx_return)?,
            locate(own)?,
            locate(peer)?,
        );
        let ring_error = |name| move |error| SharedError::Ring(name, error);
        let pool_error = |name| move |error| SharedError::Pool(name, error);
        // In each attach below: the piece lies inside the segment, which the caller keeps
        // mapped, and only one endpoint per role exists, so this role is the only producer of
        // `tx` and `rx_return` and the only consumer of `tx_return` and `rx`.
        // SAFETY: see above.
        let tx_ring = unsafe { Producer::attach(tx.1.0, tx.1.1) }.map_err(ring_error(tx.0))?;
        // SAFETY: see above.
        let tx_return_ring = unsafe { Consumer::attach(tx_return.1.0, tx_return.1.1) }
            .map_err(ring_error(tx_return.0))?;
        // SAFETY: see above.
        let rx_ring = unsafe { Consumer::attach(rx.1.0, rx.1.1) }.map_err(ring_error(rx.0))?;
        // SAFETY: see above.
        let rx_return_ring = unsafe { Producer::attach(rx_return.1.0, rx_return.1.1) }
            .map_err(ring_error(rx_return.0))?;
        // SAFETY: see above; pools have no single-user rule.
        let own_pool = unsafe { PoolView::attach(own.1.0, own.1.1) }.map_err(pool_error(own.0))?;
        // SAFETY: see above.
        let peer_pool =
            unsafe { PoolView::attach(peer.1.0, peer.1.1) }.map_err(pool_error(peer.0))?;
        Ok(Endpoint {
            tx: tx_ring,
            tx_return: tx_return_ring,
            rx: rx_ring,
            rx_return: rx_return_ring,
            own_pool,
            peer_pool,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owned::OwnedRegion;
    use crate::pool::PoolOwner;

    #[test]
    fn layout_is_page_aligned_disjoint_and_fits() {
        let layout = SharedLayout::compute(16 << 20, SharedConfig::default()).unwrap();
        let mut all: std::vec::Vec<Region> = layout.rings().iter().map(|r| r.1).collect();
        all.extend(layout.pools().iter().map(|p| p.1));
        all.extend([layout.control_a, layout.control_b]);
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.base % PAGE_SIZE, 0);
            assert!(a.end().unwrap() <= 16 << 20);
            for b in &all[i + 1..] {
                assert!(!a.overlaps(b));
            }
        }
        assert!(matches!(
            SharedLayout::compute(1 << 20, SharedConfig::default()),
            Err(SharedError::TooSmall { .. })
        ));
    }

    #[test]
    fn both_sides_attach_and_move_a_buffer() {
        let config = SharedConfig {
            ring_capacity: 8,
            buffer_size: 256,
            buffers_per_pool: 8,
        };
        let layout = SharedLayout::compute(1 << 20, config).unwrap();
        let region = OwnedRegion::new(1 << 20);
        // SAFETY: the region is valid for its length and outlives the endpoints; one per role.
        unsafe { init(region.as_ptr(), region.len(), &layout).unwrap() };
        // SAFETY: as above; the only endpoint of role A.
        let mut a =
            unsafe { Endpoint::attach(region.as_ptr(), region.len(), &layout, Role::A) }.unwrap();
        // SAFETY: as above; the only endpoint of role B.
        let mut b =
            unsafe { Endpoint::attach(region.as_ptr(), region.len(), &layout, Role::B) }.unwrap();
        let mut storage = [0u64; pool::owner_storage_words(64)];
        let mut owner = PoolOwner::new(a.own_pool, &mut storage[..]).unwrap();
        let buffer = owner.alloc().unwrap();
        owner.write(&buffer, 0, b"ping").unwrap();
        a.tx.push(owner.submit(buffer, 0, 4).unwrap()).unwrap();
        let desc = b.rx.pop().unwrap().unwrap();
        let mut bytes = [0u8; 4];
        b.peer_pool.read(&desc, &mut bytes).unwrap();
        assert_eq!(&bytes, b"ping");
        b.rx_return
            .push(b.peer_pool.return_desc(&desc).unwrap())
            .unwrap();
        assert_eq!(owner.reclaim_from(&mut a.tx_return, 8).unwrap(), 1);
    }

    #[test]
    fn attach_rejects_a_layout_outside_the_segment() {
        let mut layout = SharedLayout::compute(
            1 << 20,
            SharedConfig {
                ring_capacity: 8,
                buffer_size: 256,
                buffers_per_pool: 8,
            },
        )
        .unwrap();
        let region = OwnedRegion::new(1 << 20);
        // SAFETY: as above.
        unsafe { init(region.as_ptr(), region.len(), &layout).unwrap() };
        layout.pool_b.base = (1 << 20) - 4096;
        // SAFETY: as above.
        let result = unsafe { Endpoint::attach(region.as_ptr(), region.len(), &layout, Role::A) };
        assert!(result.is_err());
        // A layout pointing a ring at a pool's bytes fails the ring's header checks.
        layout.pool_b = layout.pool_a;
        layout.a_to_b = layout.pool_a;
        // SAFETY: as above.
        let result = unsafe { Endpoint::attach(region.as_ptr(), region.len(), &layout, Role::A) };
        assert!(matches!(result, Err(SharedError::Ring("a_to_b", _))));
    }
}
