//! Device discovery, the device context and the protection domain every resource of a fabric
//! shares.
//!
//! rdma_cm opens each device itself and binds every `rdma_cm_id` to its own context, and a queue
//! pair must be created on the context of its id. So the fabric does not `ibv_open_device` on
//! its own: it takes the context rdma_cm hands out through `rdma_get_devices` (which also holds a
//! reference that keeps the device open) and allocates the protection domain, the completion
//! queues and the memory regions on that one.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use rdma_sys::{
    ibv_alloc_pd, ibv_context, ibv_dealloc_pd, ibv_device_attr, ibv_free_device_list,
    ibv_get_device_list, ibv_get_device_name, ibv_pd, ibv_query_device, rdma_free_devices,
    rdma_get_devices,
};

use super::cm::CmMonitor;
use super::error::{check_ret, last_os_error, no_device, PROVIDER};
use crate::rdma::error::{FabricError, Result};

/// Limits of the device that the provider clamps requests to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceCaps {
    /// Most work requests per queue.
    pub max_qp_wr: u32,
    /// Most entries per completion queue.
    pub max_cqe: u32,
}

/// An open device: rdma_cm's context for it, our protection domain, and the connection monitor.
pub(crate) struct Device {
    name: String,
    /// The array `rdma_get_devices` returned; holding it keeps rdma_cm's reference on the device.
    list: NonNull<*mut ibv_context>,
    ctx: NonNull<ibv_context>,
    pd: NonNull<ibv_pd>,
    caps: DeviceCaps,
    /// Watches established connections for disconnects (see [`CmMonitor`]). Dropped first.
    monitor: Option<CmMonitor>,
}

// SAFETY: the context and protection domain are libibverbs objects that may be used from any
// thread (libibverbs serialises internally); `list` is only read at open and freed in Drop.
unsafe impl Send for Device {}
// SAFETY: as above; `&Device` only hands out the raw pointers to verbs calls that are
// thread-safe, and the Rust fields are immutable after construction.
unsafe impl Sync for Device {}

impl Device {
    /// Opens `requested`, or the first device when `None`.
    ///
    /// Fails with [`FabricError::Unavailable`] whose reason starts with "no RDMA device found"
    /// on a machine without devices or kernel support, and that lists the devices present when
    /// `requested` names none of them.
    pub fn open(requested: Option<&str>) -> Result<Device> {
        let names = device_names()?;
        let name = match requested {
            None => names[0].clone(),
            Some(want) if names.iter().any(|n| n == want) => want.to_string(),
            Some(want) => {
                return Err(FabricError::Unavailable {
                    provider: PROVIDER,
                    reason: format!(
                        "RDMA device {want:?} not found (set {} to one of: {})",
                        crate::env::VERBS_DEVICE,
                        names.join(", ")
                    ),
                })
            }
        };

        let mut n: libc::c_int = 0;
        // SAFETY: `n` is a valid out-pointer; the call returns NULL or a NULL-terminated array
        // of `n` contexts that stays valid until `rdma_free_devices`.
        let list = unsafe { rdma_get_devices(&mut n) };
        let Some(list) = NonNull::new(list) else {
            return Err(no_device("rdma_get_devices", last_os_error()));
        };
        let free_list = |list: NonNull<*mut ibv_context>| {
            // SAFETY: `list` came from rdma_get_devices and is freed exactly once.
            unsafe { rdma_free_devices(list.as_ptr()) }
        };
        let count = usize::try_from(n).unwrap_or(0);
        let mut found = None;
        for i in 0..count {
            // SAFETY: `i < n`, the array holds `n` entries.
            let ctx = unsafe { *list.as_ptr().add(i) };
            let Some(ctx) = NonNull::new(ctx) else {
                continue;
            };
            // SAFETY: `ctx` is an open context whose `device` outlives it.
            let dev = unsafe { (*ctx.as_ptr()).device };
            if dev.is_null() {
                continue;
            }
            // SAFETY: `dev` is a valid device; the name is a NUL-terminated string it owns.
            let dev_name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) };
            if dev_name.to_bytes() == name.as_bytes() {
                found = Some(ctx);
                break;
            }
        }
        let Some(ctx) = found else {
            free_list(list);
            return Err(FabricError::Unavailable {
                provider: PROVIDER,
                reason: format!(
                    "RDMA device {name:?} is not usable by rdma_cm (no context for it)"
                ),
            });
        };

        let caps = match query_caps(ctx) {
            Ok(c) => c,
            Err(e) => {
                free_list(list);
                return Err(e);
            }
        };
        // SAFETY: `ctx` is an open context.
        let pd = unsafe { ibv_alloc_pd(ctx.as_ptr()) };
        let Some(pd) = NonNull::new(pd) else {
            let e = last_os_error();
            free_list(list);
            return Err(FabricError::io(format!("ibv_alloc_pd on {name}"), e));
        };
        let mut dev = Device {
            name,
            list,
            ctx,
            pd,
            caps,
            monitor: None,
        };
        // On error `dev` is dropped, which frees the PD and the list.
        dev.monitor = Some(CmMonitor::start()?);
        tracing::debug!(device = %dev.name, ?caps, "verbs device open");
        Ok(dev)
    }

    /// The device name (e.g. `mlx5_0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device context (rdma_cm's).
    pub fn ctx(&self) -> *mut ibv_context {
        self.ctx.as_ptr()
    }

    /// The protection domain every region and queue pair of this fabric lives in.
    pub fn pd(&self) -> *mut ibv_pd {
        self.pd.as_ptr()
    }

    /// Device limits.
    pub fn caps(&self) -> DeviceCaps {
        self.caps
    }

    /// The connection monitor.
    pub fn monitor(&self) -> &CmMonitor {
        self.monitor
            .as_ref()
            .expect("monitor lives until Device::drop")
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Every queue pair, region and completion queue holds an Arc<Device>, so none is left.
        // The monitor first: it joins its thread and closes its event channel.
        drop(self.monitor.take());
        // SAFETY: the PD was allocated in `open` and every object in it (regions, queue pairs)
        // is gone (they keep the Device alive).
        let ret = unsafe { ibv_dealloc_pd(self.pd.as_ptr()) };
        if let Err(e) = check_ret(ret, "ibv_dealloc_pd") {
            tracing::warn!(device = %self.name, "{e}");
        }
        // SAFETY: `list` came from rdma_get_devices and is freed exactly once; the context is
        // not used after this.
        unsafe { rdma_free_devices(self.list.as_ptr()) };
    }
}

/// The names of the RDMA devices of this machine, in the kernel's order.
///
/// [`FabricError::Unavailable`] ("no RDMA device found ...") when there are none or the kernel
/// has no RDMA support (`ibv_get_device_list` fails with ENOSYS then).
pub(crate) fn device_names() -> Result<Vec<String>> {
    let mut n: libc::c_int = 0;
    // SAFETY: `n` is a valid out-pointer; the result is NULL or an array we free below.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(no_device("ibv_get_device_list", last_os_error()));
    }
    let count = usize::try_from(n).unwrap_or(0);
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: the array holds `n` valid device pointers followed by NULL.
        let dev = unsafe { *list.add(i) };
        if dev.is_null() {
            break;
        }
        // SAFETY: `dev` is valid until the list is freed; the name is NUL terminated.
        let name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once; the names were copied.
    unsafe { ibv_free_device_list(list) };
    if names.is_empty() {
        return Err(no_device("ibv_get_device_list", "0 devices"));
    }
    Ok(names)
}

fn query_caps(ctx: NonNull<ibv_context>) -> Result<DeviceCaps> {
    let mut attr = MaybeUninit::<ibv_device_attr>::zeroed();
    // SAFETY: `ctx` is open and `attr` points to writable memory of the right type.
    let ret = unsafe { ibv_query_device(ctx.as_ptr(), attr.as_mut_ptr()) };
    check_ret(ret, "ibv_query_device")?;
    // SAFETY: zero-initialised plain-data struct, filled in by the successful call.
    let attr = unsafe { attr.assume_init() };
    Ok(DeviceCaps {
        max_qp_wr: u32::try_from(attr.max_qp_wr).unwrap_or(0).max(1),
        max_cqe: u32::try_from(attr.max_cqe).unwrap_or(0).max(1),
    })
}
