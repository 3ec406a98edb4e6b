//! The domain: registered memory (keys, bounds, rights, lifetime) and the progress thread.
//!
//! # Memory lifetime rule
//!
//! A region's memory ([`Region`]) is reference counted. The [`super::TcpMr`] handle holds one
//! reference and the domain's slot table holds another while the region is registered. Every
//! access that reaches registered memory first resolves its key to a [`Pinned`] view, which
//! holds its own reference for as long as the access runs: a payload being received into the
//! region, a read answer being sent from it, a pending read or atomic whose result lands in it.
//! Dropping the handle deregisters the key at once (new accesses fail with
//! [`WcStatus::RemoteAccess`] or [`WcStatus::LocalProtection`]), and the memory is unmapped
//! only when the last pinned access finishes, so the progress thread never writes into unmapped
//! or reused memory.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::progress::Progress;
use crate::rdma::error::Result;
use crate::rdma::mr_table::{access_failure, split_key, HeapMrTable};
use crate::rdma::segment::PrivateMem;
use crate::rdma::types::{Access, WcStatus};

/// Most regions one domain can register at once.
pub(crate) const MAX_REGIONS: usize = 4096;

/// Registered memory: private anonymous pages plus the key and rights they were registered with.
#[derive(Debug)]
pub(crate) struct Region {
    mem: PrivateMem,
    len: usize,
    pub(crate) key: u32,
    pub(crate) access: Access,
}

impl Region {
    /// First byte.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.mem.as_ptr()
    }

    /// Registered length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// `len` bytes at `offset` of a region, checked against its key, bounds and rights, and kept
/// alive (mapped) while this value lives.
#[derive(Clone, Debug)]
pub(crate) struct Pinned {
    region: Arc<Region>,
    offset: usize,
    len: usize,
}

impl Pinned {
    /// First byte of the range.
    pub(crate) fn ptr(&self) -> *mut u8 {
        // SAFETY: `offset + len <= region.len()` was checked when the view was made, so the
        // pointer stays inside (or one past the end of) the region's mapping.
        unsafe { self.region.ptr().add(self.offset) }
    }

    /// Bytes in the range.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// One domain's shared state.
pub(crate) struct Domain {
    table: HeapMrTable,
    slots: Box<[ArcSwapOption<Region>]>,
    pub(crate) progress: Progress,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain").finish_non_exhaustive()
    }
}

impl Domain {
    /// A domain with an empty region table and a running progress thread.
    pub(crate) fn new() -> Result<Arc<Domain>> {
        Ok(Arc::new(Domain {
            table: HeapMrTable::new(MAX_REGIONS),
            slots: (0..MAX_REGIONS).map(|_| ArcSwapOption::empty()).collect(),
            progress: Progress::start()?,
        }))
    }

    /// Allocates and registers `len` bytes with `access`.
    pub(crate) fn register(&self, len: usize, access: Access) -> Result<Arc<Region>> {
        let mem = PrivateMem::new(len)?;
        let key = self
            .table
            .register(mem.as_ptr() as u64, len as u64, access)?;
        let region = Arc::new(Region {
            mem,
            len,
            key,
            access,
        });
        let (slot, _) = split_key(key);
        self.slots[slot].store(Some(region.clone()));
        Ok(region)
    }

    /// Deregisters `region`: its key stops resolving; the memory lives on while pinned.
    pub(crate) fn deregister(&self, region: &Region) {
        let (slot, _) = split_key(region.key);
        if let Some(s) = self.slots.get(slot) {
            // Only clear the slot if it still holds this region (it cannot hold another one
            // while the key is registered, but be defensive).
            let cur = s.load();
            if cur.as_ref().is_some_and(|r| r.key == region.key) {
                s.store(None);
            }
        }
        self.table.deregister(region.key);
    }

    /// Checks that `len` bytes at `addr` lie in the region `key` names and that it grants
    /// `need`, and pins them. `remote` picks the failure status: `RemoteAccess` for a peer's
    /// access, `LocalProtection` for a local SGE.
    #[inline]
    pub(crate) fn resolve(
        &self,
        key: u32,
        addr: u64,
        len: u64,
        need: Access,
        remote: bool,
    ) -> std::result::Result<Pinned, WcStatus> {
        let fail = access_failure(remote);
        let r = self.table.view().check(key, addr, len, need, remote)?;
        let region = self
            .slots
            .get(r.slot)
            .and_then(|s| s.load_full())
            .ok_or(fail)?;
        // The slot may have been reused between the check and the load: the key and the
        // region's own length decide.
        let offset = usize::try_from(r.offset).map_err(|_| fail)?;
        let len = usize::try_from(len).map_err(|_| fail)?;
        if region.key != key
            || !region.access.contains(need)
            || !offset
                .checked_add(len)
                .is_some_and(|end| end <= region.len())
        {
            return Err(fail);
        }
        Ok(Pinned {
            region,
            offset,
            len,
        })
    }
}
