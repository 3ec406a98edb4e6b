//! The table of registered memory regions of one domain, and the access check every provider
//! runs before it touches registered memory.
//!
//! Keys are `slot << 12 | generation` (12-bit generation, so a stale key of a deregistered region
//! stops matching when its slot is reused). The table is an array of fixed-size entries that can
//! live on the heap (tcp) or in a shared segment that peers map read-only (shm), so a peer checks
//! rkeys, bounds and rights itself with a few atomic loads and no system call.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::{FabricError, Result};
use super::types::{Access, WcStatus};

const GEN_BITS: u32 = 12;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;
const VALID: u64 = 1;

/// One entry: `state` = generation << 32 | access << 1 | valid.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Entry {
    state: AtomicU64,
    base: AtomicU64,
    len: AtomicU64,
    /// Provider-specific word (shm: nothing yet; kept for a stable 32-byte layout).
    aux: AtomicU64,
}

/// Bytes per entry (the layout peers rely on).
pub(crate) const ENTRY_SIZE: usize = std::mem::size_of::<Entry>();

/// Splits a key into (slot, generation).
#[inline]
pub(crate) fn split_key(key: u32) -> (usize, u32) {
    ((key >> GEN_BITS) as usize, key & GEN_MASK)
}

/// A read view of a table (the owner's, or a peer's mapped read-only).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableView {
    entries: *const Entry,
    cap: usize,
}

// SAFETY: the entries are only read atomically; the owner of the backing memory keeps it alive
// for as long as any view exists (views are held next to their backing).
unsafe impl Send for TableView {}
// SAFETY: as above.
unsafe impl Sync for TableView {}

/// Where an access resolved to: the region's base address in its owner and the offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub slot: usize,
    pub base: u64,
    pub offset: u64,
}

/// The completion status of an access the region table refuses: `RemoteAccess` for a peer's
/// access (`remote`), `LocalProtection` for a local SGE.
#[inline]
pub(crate) fn access_failure(remote: bool) -> WcStatus {
    if remote {
        WcStatus::RemoteAccess
    } else {
        WcStatus::LocalProtection
    }
}

impl TableView {
    /// A view over `cap` entries at `entries`.
    ///
    /// # Safety
    /// `entries` must point to `cap` properly aligned `Entry`s that stay valid while the view is
    /// used.
    pub(crate) unsafe fn new(entries: *const Entry, cap: usize) -> TableView {
        TableView { entries, cap }
    }

    #[inline]
    fn entry(&self, slot: usize) -> &Entry {
        debug_assert!(slot < self.cap);
        // SAFETY: `slot < cap` (callers check) and the constructor's contract keeps the entry valid.
        unsafe { &*self.entries.add(slot) }
    }

    /// Checks that `len` bytes at `addr` lie inside the region `key` names and that it grants
    /// `need`. Returns where they are, or the completion status of the failed access
    /// (`remote` selects RemoteAccess vs LocalProtection).
    #[inline]
    pub(crate) fn check(
        &self,
        key: u32,
        addr: u64,
        len: u64,
        need: Access,
        remote: bool,
    ) -> std::result::Result<Resolved, WcStatus> {
        let fail = access_failure(remote);
        let (slot, gen) = split_key(key);
        if slot >= self.cap {
            return Err(fail);
        }
        let e = self.entry(slot);
        let s1 = e.state.load(Ordering::Acquire);
        if s1 & VALID == 0 || (s1 >> 32) as u32 != gen {
            return Err(fail);
        }
        let access = Access::from_bits_truncate(((s1 & 0xFFFF_FFFF) >> 1) as u32);
        let base = e.base.load(Ordering::Relaxed);
        let rlen = e.len.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if e.state.load(Ordering::Relaxed) != s1 {
            return Err(fail); // changed under us: treat as deregistered
        }
        if !access.contains(need) {
            return Err(fail);
        }
        let Some(offset) = addr.checked_sub(base) else {
            return Err(fail);
        };
        match offset.checked_add(len) {
            Some(end) if end <= rlen => Ok(Resolved { slot, base, offset }),
            _ => Err(fail),
        }
    }
}

/// The owner's side of a table: registration and deregistration.
#[derive(Debug)]
pub(crate) struct MrTable {
    view: TableView,
    alloc: Mutex<Alloc>,
}

#[derive(Debug)]
struct Alloc {
    free: Vec<usize>,
    gens: Vec<u32>,
}

impl MrTable {
    /// A table over `cap` entries at `entries` (zeroed memory means "all free").
    ///
    /// # Safety
    /// As [`TableView::new`], and the memory must be writable by this process and zeroed.
    pub(crate) unsafe fn new(entries: *const Entry, cap: usize) -> MrTable {
        // SAFETY: forwarded contract.
        let view = unsafe { TableView::new(entries, cap) };
        MrTable {
            view,
            alloc: Mutex::new(Alloc {
                free: (0..cap).rev().collect(),
                gens: vec![0; cap],
            }),
        }
    }

    /// The read view (for local checks).
    pub(crate) fn view(&self) -> TableView {
        self.view
    }

    /// Registers `len` bytes at `base` with `access`; returns the key.
    pub(crate) fn register(&self, base: u64, len: u64, access: Access) -> Result<u32> {
        let mut a = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        let slot = a.free.pop().ok_or_else(|| {
            FabricError::Invalid(format!(
                "too many memory regions (at most {})",
                self.view.cap
            ))
        })?;
        if slot >= (u32::MAX >> GEN_BITS) as usize {
            return Err(FabricError::Invalid("memory region table too large".into()));
        }
        a.gens[slot] = (a.gens[slot] + 1) & GEN_MASK;
        let gen = a.gens[slot];
        let e = self.view.entry(slot);
        e.base.store(base, Ordering::Relaxed);
        e.len.store(len, Ordering::Relaxed);
        let state = (u64::from(gen) << 32) | (u64::from(access.bits()) << 1) | VALID;
        e.state.store(state, Ordering::Release);
        Ok(((slot as u32) << GEN_BITS) | gen)
    }

    /// Deregisters the region `key` names (no-op for a stale key).
    pub(crate) fn deregister(&self, key: u32) {
        let mut a = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        let (slot, gen) = split_key(key);
        if slot >= self.view.cap || a.gens[slot] != gen {
            return;
        }
        let e = self.view.entry(slot);
        if e.state.load(Ordering::Relaxed) & VALID == 0 {
            return;
        }
        e.state.store(0, Ordering::Release);
        a.free.push(slot);
    }
}

/// A heap-backed table (for providers whose peers never read it directly).
#[derive(Debug)]
pub(crate) struct HeapMrTable {
    table: MrTable,
    _entries: Box<[Entry]>,
}

impl HeapMrTable {
    pub(crate) fn new(cap: usize) -> HeapMrTable {
        let entries: Box<[Entry]> = (0..cap).map(|_| Entry::default()).collect();
        // SAFETY: the boxed slice holds `cap` zeroed entries and moves with (and outlives the
        // use of) the table; a boxed slice's heap address is stable across moves of the box.
        let table = unsafe { MrTable::new(entries.as_ptr(), cap) };
        HeapMrTable {
            table,
            _entries: entries,
        }
    }
}

impl std::ops::Deref for HeapMrTable {
    type Target = MrTable;
    fn deref(&self) -> &MrTable {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_check_bounds_rights_and_generation() {
        let t = HeapMrTable::new(4);
        let k = t
            .register(0x1000, 100, Access::REMOTE_WRITE | Access::LOCAL_WRITE)
            .unwrap();
        let v = t.view();
        assert_eq!(
            v.check(k, 0x1000, 100, Access::REMOTE_WRITE, true)
                .unwrap()
                .offset,
            0
        );
        assert_eq!(
            v.check(k, 0x1010, 10, Access::REMOTE_WRITE, true)
                .unwrap()
                .offset,
            0x10
        );
        assert_eq!(
            v.check(k, 0x1000, 101, Access::REMOTE_WRITE, true),
            Err(WcStatus::RemoteAccess)
        );
        assert_eq!(
            v.check(k, 0xfff, 1, Access::REMOTE_WRITE, true),
            Err(WcStatus::RemoteAccess)
        );
        assert_eq!(
            v.check(k, 0x1000, 8, Access::REMOTE_READ, true),
            Err(WcStatus::RemoteAccess)
        );
        assert_eq!(
            v.check(k, 0x1000, 8, Access::REMOTE_READ, false),
            Err(WcStatus::LocalProtection)
        );
        assert_eq!(
            v.check(k ^ 1, 0x1000, 8, Access::REMOTE_WRITE, true),
            Err(WcStatus::RemoteAccess)
        );
        assert_eq!(
            v.check(u32::MAX, 0x1000, 8, Access::REMOTE_WRITE, true),
            Err(WcStatus::RemoteAccess)
        );
        t.deregister(k);
        assert!(v.check(k, 0x1000, 8, Access::REMOTE_WRITE, true).is_err());
        let k2 = t.register(0x1000, 100, Access::REMOTE_WRITE).unwrap();
        assert_ne!(k, k2, "a reused slot gets a new generation");
        assert!(v.check(k, 0x1000, 8, Access::REMOTE_WRITE, true).is_err());
    }

    #[test]
    fn table_fills_up_with_a_clear_error() {
        let t = HeapMrTable::new(2);
        t.register(0, 1, Access::LOCAL_WRITE).unwrap();
        t.register(0, 1, Access::LOCAL_WRITE).unwrap();
        assert!(matches!(
            t.register(0, 1, Access::LOCAL_WRITE),
            Err(FabricError::Invalid(_))
        ));
    }
}
