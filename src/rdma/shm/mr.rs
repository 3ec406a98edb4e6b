//! shm memory regions.

use std::sync::Arc;

use super::arena::ArenaClass;
use super::Domain;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::registration::{impl_memory_region, Registration};
use crate::rdma::segment::PrivateMem;
use crate::rdma::Access;

#[derive(Debug)]
enum Backing {
    Arena {
        class: ArenaClass,
        off: usize,
        alloc_len: usize,
    },
    /// Kept to own (and unmap on drop) the region's memory.
    Private(#[allow(dead_code)] PrivateMem),
}

/// A registered shm region. Deregistered (and its memory returned) on drop.
#[derive(Debug)]
pub struct ShmMr {
    dom: Arc<Domain>,
    reg: Registration,
    backing: Backing,
}

// SAFETY: the region is plain memory owned by the domain's arena or by `PrivateMem`; the pointer
// stays valid while the region lives and all access goes through raw pointers or atomics.
unsafe impl Send for ShmMr {}
// SAFETY: as above.
unsafe impl Sync for ShmMr {}

impl ShmMr {
    pub(crate) fn alloc(dom: &Arc<Domain>, len: usize, access: Access) -> Result<ShmMr> {
        if len == 0 {
            return Err(FabricError::Invalid("memory region of zero bytes".into()));
        }
        let class = if access.intersects(Access::REMOTE_WRITE | Access::REMOTE_ATOMIC) {
            Some(ArenaClass::ReadWrite)
        } else if access.contains(Access::REMOTE_READ) {
            Some(ArenaClass::ReadOnly)
        } else {
            None
        };
        let (ptr, backing) = match class {
            Some(class) => {
                let arena = match class {
                    ArenaClass::ReadWrite => &dom.rw,
                    ArenaClass::ReadOnly => &dom.ro,
                };
                let (off, alloc_len) = arena.alloc(len)?;
                // SAFETY: `off` is inside the arena mapping (returned by its allocator).
                let ptr = unsafe { arena.seg.as_ptr().add(off) };
                (
                    ptr,
                    Backing::Arena {
                        class,
                        off,
                        alloc_len,
                    },
                )
            }
            None => {
                let mem = PrivateMem::new(len)?;
                (mem.as_ptr(), Backing::Private(mem))
            }
        };
        let key = match dom.table.register(ptr as u64, len as u64, access) {
            Ok(k) => k,
            Err(e) => {
                if let Backing::Arena {
                    class,
                    off,
                    alloc_len,
                } = backing
                {
                    dom.arena(class).free(off, alloc_len);
                }
                return Err(e);
            }
        };
        Ok(ShmMr {
            dom: dom.clone(),
            reg: Registration {
                ptr,
                len,
                lkey: key,
                rkey: key,
                access,
            },
            backing,
        })
    }
}

impl Domain {
    pub(crate) fn arena(&self, class: ArenaClass) -> &super::arena::Arena {
        match class {
            ArenaClass::ReadWrite => &self.rw,
            ArenaClass::ReadOnly => &self.ro,
        }
    }
}

impl_memory_region!(ShmMr, reg);

impl Drop for ShmMr {
    fn drop(&mut self) {
        self.dom.table.deregister(self.reg.lkey);
        if let Backing::Arena {
            class,
            off,
            alloc_len,
        } = self.backing
        {
            self.dom.arena(class).free(off, alloc_len);
        }
    }
}
