//! Registered memory of the `ofi` provider: page-aligned anonymous memory that rfaas allocates
//! itself (so `FI_MR_ALLOCATED` always holds), registered with the access the region needs, bound
//! to the endpoint where the provider asks for `FI_MR_ENDPOINT`. With `FI_MR_PROV_KEY` the key
//! is the provider's; without `FI_MR_VIRT_ADDR` remote addresses are offsets into the region.

use std::sync::Arc;

use super::domain::{Domain, MrEntry};
use super::sys;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::registration::{impl_memory_region, Registration};
use crate::rdma::segment::PrivateMem;
use crate::rdma::types::{Access, RemoteBuf};

/// A registered region of the `ofi` provider.
pub struct OfiMr {
    d: Arc<Domain>,
    /// The memory; unmapped after the registration is closed (fields drop after `Drop::drop`).
    _mem: PrivateMem,
    reg: Registration,
    mr: *mut sys::fid_mr,
}

// SAFETY: the region is plain mapped memory plus an opaque registration handle that is only
// closed in Drop (under the domain lock).
unsafe impl Send for OfiMr {}
// SAFETY: as above; the bytes are accessed through raw pointers only.
unsafe impl Sync for OfiMr {}

impl OfiMr {
    pub(crate) fn alloc(d: &Arc<Domain>, len: usize, access: Access) -> Result<OfiMr> {
        let mem = PrivateMem::new(len)?;
        let (ptr, mapped) = (mem.as_ptr(), mem.len());
        let mut fi_access = (sys::FI_SEND | sys::FI_RECV | sys::FI_READ | sys::FI_WRITE) as u64;
        if access.contains(Access::REMOTE_WRITE) {
            fi_access |= u64::from(sys::FI_REMOTE_WRITE);
        }
        if access.contains(Access::REMOTE_READ) {
            fi_access |= u64::from(sys::FI_REMOTE_READ);
        }
        if access.contains(Access::REMOTE_ATOMIC) {
            fi_access |= u64::from(sys::FI_REMOTE_READ | sys::FI_REMOTE_WRITE);
        }
        let (mr, desc, key) = d.register(ptr, mapped, fi_access)?;
        let Ok(rkey) = u32::try_from(key) else {
            d.deregister(mr);
            return Err(FabricError::Unavailable {
                provider: "ofi",
                reason: format!(
                    "libfabric provider {:?} chose a memory key ({key:#x}) wider than rfaas's \
                     32-bit rkeys",
                    d.info.provider
                ),
            });
        };
        let mut t = d.mrs.write().unwrap_or_else(|e| e.into_inner());
        let lkey = t.len() as u32;
        t.push(Some(MrEntry {
            addr: ptr as u64,
            len: len as u64,
            access,
            desc,
        }));
        drop(t);
        Ok(OfiMr {
            d: d.clone(),
            _mem: mem,
            reg: Registration {
                ptr,
                len,
                lkey,
                rkey,
                access,
            },
            mr,
        })
    }
}

impl_memory_region!(
    OfiMr,
    reg,
    fn remote(&self, off: usize, len: u32) -> RemoteBuf {
        let base = if self.d.virt_addr() {
            self.reg.ptr as u64
        } else {
            super::OFFSET_BIAS
        };
        RemoteBuf {
            addr: base + off as u64,
            rkey: self.reg.rkey,
            len,
        }
    }
);

impl Drop for OfiMr {
    fn drop(&mut self) {
        if let Some(e) = self
            .d
            .mrs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(self.reg.lkey as usize)
        {
            *e = None;
        }
        self.d.deregister(self.mr);
    }
}
