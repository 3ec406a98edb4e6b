//! Arenas: one large sparse memfd per access class, carved into memory regions.
//!
//! A peer maps each arena once, at connect time, so registering a region later needs no fd
//! passing and the data path never misses a mapping. The memfd is sized up front (sparse: pages
//! exist only once touched) and sealed, so a peer's mapping can never fault. Regions are
//! pre-faulted when allocated and their pages are given back (hole punch) when freed.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use crate::rdma::error::{FabricError, Result};
use crate::rdma::segment::Segment;

const PAGE: usize = 4096;

/// Which peers' rights an arena's mapping carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArenaClass {
    /// Peers map it read-write (regions with REMOTE_WRITE or REMOTE_ATOMIC).
    ReadWrite,
    /// Peers map it read-only (regions with REMOTE_READ only).
    ReadOnly,
}

/// A sparse shared arena and its free list.
#[derive(Debug)]
pub(crate) struct Arena {
    pub(crate) seg: Arc<Segment>,
    free: Mutex<BTreeMap<usize, usize>>, // offset -> length, coalesced
}

impl Arena {
    pub(crate) fn new(class: ArenaClass, bytes: usize) -> Result<Arena> {
        let name = match class {
            ArenaClass::ReadWrite => "rfaas-shm-rw",
            ArenaClass::ReadOnly => "rfaas-shm-ro",
        };
        let seg = Segment::create(name, bytes, false)?;
        let mut free = BTreeMap::new();
        free.insert(0, seg.len());
        Ok(Arena {
            seg: Arc::new(seg),
            free: Mutex::new(free),
        })
    }

    /// Base address of the arena in this process.
    pub(crate) fn base(&self) -> u64 {
        self.seg.as_ptr() as u64
    }

    /// Carves `len` bytes (rounded up to pages), pre-faulted and zeroed; returns the offset.
    pub(crate) fn alloc(&self, len: usize) -> Result<(usize, usize)> {
        let want = len.max(1).div_ceil(PAGE) * PAGE;
        let off = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let found = free.iter().find(|(_, &l)| l >= want).map(|(&o, &l)| (o, l));
            let Some((o, l)) = found else {
                return Err(FabricError::Invalid(format!(
                    "shm arena exhausted: no {want} contiguous bytes left (set {} to enlarge it)",
                    crate::env::SHM_ARENA_BYTES
                )));
            };
            free.remove(&o);
            if l > want {
                free.insert(o + want, l - want);
            }
            o
        };
        self.seg.prefault(off, want);
        Ok((off, want))
    }

    /// Returns a range to the arena and gives its pages back to the system (so the next user
    /// sees zeroes).
    pub(crate) fn free(&self, off: usize, len: usize) {
        let (Ok(o), Ok(l)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
            return;
        };
        // SAFETY: punching a hole in our own memfd over a range that no region uses any more.
        unsafe {
            libc::fallocate(
                self.seg.fd().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                o,
                l,
            );
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let mut start = off;
        let mut length = len;
        if let Some((&po, &pl)) = free.range(..off).next_back() {
            if po + pl == off {
                free.remove(&po);
                start = po;
                length += pl;
            }
        }
        if let Some(&nl) = free.get(&(off + len)) {
            free.remove(&(off + len));
            length += nl;
        }
        free.insert(start, length);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carves_frees_coalesces_and_zeroes() {
        let a = Arena::new(ArenaClass::ReadWrite, 64 * PAGE).unwrap();
        let (o1, l1) = a.alloc(100).unwrap();
        let (o2, l2) = a.alloc(2 * PAGE).unwrap();
        assert_eq!((l1, l2), (PAGE, 2 * PAGE));
        assert_ne!(o1, o2);
        // SAFETY: test code; writing inside the first carved range.
        unsafe { *a.seg.as_ptr().add(o1) = 7 };
        a.free(o1, l1);
        a.free(o2, l2);
        assert!(
            a.alloc(64 * PAGE).is_ok(),
            "freed ranges coalesce back into one"
        );
        // SAFETY: test code; the whole arena is carved now; reading its first byte.
        let first = unsafe { *a.seg.as_ptr().add(o1) };
        assert_eq!(first, 0, "freed pages come back zeroed");
        assert!(a.alloc(1).is_err());
    }
}
