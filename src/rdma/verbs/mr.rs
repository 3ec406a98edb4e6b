//! Memory regions: page-aligned, zeroed, pre-faulted anonymous memory registered with
//! `ibv_reg_mr` in the fabric's protection domain.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::{ibv_access_flags, ibv_dereg_mr, ibv_mr, ibv_reg_mr};

use super::device::Device;
use super::error::last_os_error;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::registration::{impl_memory_region, Registration};
use crate::rdma::Access;

/// The `ibv_access_flags` for `access`.
///
/// Verbs refuses remote write or remote atomic access without local write, so those imply it
/// (the region still reports the rights it was asked for).
pub(crate) fn access_flags(access: Access) -> u32 {
    let mut f = 0;
    if access.intersects(Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC) {
        f |= ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    if access.contains(Access::REMOTE_WRITE) {
        f |= ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
    }
    if access.contains(Access::REMOTE_READ) {
        f |= ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;
    }
    if access.contains(Access::REMOTE_ATOMIC) {
        f |= ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0;
    }
    f
}

/// Registered memory of the verbs provider.
pub struct VerbsMr {
    reg: Registration,
    map_len: usize,
    mr: NonNull<ibv_mr>,
    // Keeps the protection domain alive until the region is deregistered.
    _dev: Arc<Device>,
}

// SAFETY: the mapping and the registration are owned by this value; the API hands out raw
// pointers only and verbs registration handles may be used from any thread.
unsafe impl Send for VerbsMr {}
// SAFETY: `&VerbsMr` exposes only immutable fields and raw pointers.
unsafe impl Sync for VerbsMr {}

impl std::fmt::Debug for VerbsMr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsMr").field("reg", &self.reg).finish()
    }
}

impl VerbsMr {
    pub(crate) fn alloc(dev: &Arc<Device>, len: usize, access: Access) -> Result<VerbsMr> {
        if len == 0 {
            return Err(FabricError::Invalid(
                "verbs memory regions cannot be empty".into(),
            ));
        }
        if access.contains(Access::REMOTE_ATOMIC) && !dev.caps().atomics {
            return Err(super::device::no_atomics(dev.name()));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let map_len = len
            .checked_next_multiple_of(page)
            .ok_or_else(|| FabricError::Invalid(format!("region of {len} bytes is too large")))?;
        // SAFETY: a fresh private anonymous mapping; the result is checked. Anonymous memory is
        // zeroed and MAP_POPULATE faults it in now rather than on the first access.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(FabricError::io(
                format!("mmap {map_len} bytes"),
                last_os_error(),
            ));
        }
        let ptr = NonNull::new(p.cast::<u8>()).expect("mmap never returns NULL on success");
        let unmap = || {
            // SAFETY: the mapping was created above and is unmapped once.
            unsafe { libc::munmap(p, map_len) };
        };
        // Register exactly `len` bytes, so that the device rejects accesses past the end.
        // SAFETY: the PD is valid and the range lies inside our mapping, which stays mapped
        // until the region is deregistered in Drop.
        let mr = unsafe { ibv_reg_mr(dev.pd(), p, len, access_flags(access) as libc::c_int) };
        let Some(mr) = NonNull::new(mr) else {
            let e = last_os_error();
            unmap();
            let hint = if e.raw_os_error() == Some(libc::ENOMEM) {
                " (is the locked-memory limit, ulimit -l, too low?)"
            } else {
                ""
            };
            return Err(FabricError::io(
                format!("ibv_reg_mr of {len} bytes{hint}"),
                e,
            ));
        };
        // SAFETY: `mr` is valid; the keys are plain fields.
        let (lkey, rkey) = unsafe { ((*mr.as_ptr()).lkey, (*mr.as_ptr()).rkey) };
        dev.add_mr(lkey, p as u64, len as u64);
        Ok(VerbsMr {
            reg: Registration {
                ptr: ptr.as_ptr(),
                len,
                lkey,
                rkey,
                access,
            },
            map_len,
            mr,
            _dev: Arc::clone(dev),
        })
    }
}

impl Drop for VerbsMr {
    fn drop(&mut self) {
        self._dev.remove_mr(self.reg.lkey);
        // SAFETY: the registration and mapping were made in `alloc` and are released once,
        // registration first. The caller must not have requests in flight on the region (as
        // with verbs; a late access then fails with a protection error, not a memory error).
        unsafe {
            let ret = ibv_dereg_mr(self.mr.as_ptr());
            if ret != 0 {
                tracing::warn!("ibv_dereg_mr: errno {ret}");
            }
            libc::munmap(self.reg.ptr.cast(), self.map_len);
        }
    }
}

impl_memory_region!(VerbsMr, reg);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_flags_map_to_verbs() {
        assert_eq!(access_flags(Access::empty()), 0);
        assert_eq!(access_flags(Access::LOCAL_WRITE), 1);
        assert_eq!(access_flags(Access::REMOTE_READ), 4);
        // Remote write and atomics need local write in verbs.
        assert_eq!(access_flags(Access::REMOTE_WRITE), 1 | 2);
        assert_eq!(access_flags(Access::REMOTE_ATOMIC), 1 | 8);
        assert_eq!(access_flags(Access::ALL), 1 | 2 | 4 | 8);
    }
}
