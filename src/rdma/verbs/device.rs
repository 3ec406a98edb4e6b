//! Device discovery, the device context and the protection domain every resource of a fabric
//! shares.
//!
//! rdma_cm opens each device itself and binds every `rdma_cm_id` to its own context, and a queue
//! pair must be created on the context of its id. So the fabric does not `ibv_open_device` on
//! its own: it takes the context rdma_cm hands out through `rdma_get_devices` (which also holds a
//! reference that keeps the device open) and allocates the protection domain, the completion
//! queues and the memory regions on that one.
//!
//! # Which device
//!
//! [`crate::env::VERBS_DEVICE`] names one. Without it the fabric takes the device from rdma_cm:
//! the first device that rdma_cm binds one of this host's IP addresses to (on a throwaway id, as
//! every connection does), preferring one with a port in the ACTIVE state; failing that, the
//! first active device, then the first device. A dual-port card whose first function is not
//! cabled, or a bond listed after the ports it bonds, then works without configuration. A connection whose route runs over another device fails with an error that names
//! that device and the variable to set (a queue pair must live on the device of its route, and
//! the regions and completion queues it uses are created on the fabric's device before any
//! route is known).
//!
//! # Fork safety
//!
//! The executor manager starts processes while memory it bills to is registered. Unless the
//! kernel makes that safe by itself (`IBV_FORK_UNNEEDED`, Linux 5.13+), `ibv_fork_init` must run
//! before the first registration, or a page the child shares copy-on-write is remapped in the
//! parent while the device keeps writing the old one. [`fork_safety`] runs it once per process,
//! before any device is opened.

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ptr::NonNull;
use std::sync::OnceLock;

use arc_swap::ArcSwap;
use rdma_sys::{
    ___ibv_query_port, ibv_alloc_pd, ibv_atomic_cap, ibv_context, ibv_dealloc_pd, ibv_device_attr,
    ibv_fork_init, ibv_fork_status, ibv_free_device_list, ibv_get_device_list, ibv_get_device_name,
    ibv_is_fork_initialized, ibv_pd, ibv_port_attr, ibv_port_state, ibv_query_device,
    rdma_free_devices, rdma_get_devices,
};

use super::cm::CmMonitor;
use super::error::{check_ret, last_os_error, no_device, PROVIDER};
use crate::rdma::error::{FabricError, Result};
use crate::rdma::Sge;

/// Limits of the device that the provider clamps requests to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceCaps {
    /// Most work requests per queue.
    pub max_qp_wr: u32,
    /// Most entries per completion queue.
    pub max_cqe: u32,
    /// Whether the device executes remote atomics (`atomic_cap` is not `IBV_ATOMIC_NONE`).
    pub atomics: bool,
}

/// Whether a device with this `atomic_cap` executes remote fetch-add and compare-swap.
///
/// `IBV_ATOMIC_HCA` (atomic among the device's own atomics, what ConnectX reports) and
/// `IBV_ATOMIC_GLOB` (also against the CPU) both do; rfaas only combines remote atomics with
/// plain CPU reads of the word (and a reset before the word is handed out), which either level
/// keeps exact. `IBV_ATOMIC_NONE` (soft-iWARP,
/// some iWARP and RoCE devices) does not: a fetch-add there fails or, worse, is not atomic.
pub(crate) fn atomics_supported(atomic_cap: ibv_atomic_cap::Type) -> bool {
    atomic_cap != ibv_atomic_cap::IBV_ATOMIC_NONE
}

/// The error for a remote atomic (or a region asking for `REMOTE_ATOMIC`) on `device`.
pub(crate) fn no_atomics(device: &str) -> FabricError {
    FabricError::Unavailable {
        provider: PROVIDER,
        reason: format!(
            "RDMA device {device} has no remote atomics (atomic_cap IBV_ATOMIC_NONE); \
             rfaas bills through remote fetch-add: use a device with atomics (set {}) or another \
             provider",
            crate::env::VERBS_DEVICE
        ),
    }
}

/// Whether the process is (or need not be) prepared for `fork` with registered memory.
pub(crate) fn fork_status_is_safe(status: ibv_fork_status) -> bool {
    status != rdma_sys::IBV_FORK_DISABLED
}

/// Runs `ibv_fork_init` once per process unless the kernel makes it unnecessary; every device
/// open calls this before anything is registered. An error when it cannot be done (memory was
/// registered already by other code in this process without it): registering anyway could
/// corrupt memory silently after the next `fork`.
pub(crate) fn fork_safety() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: no arguments; reads the kernel's copy-on-fork support and library state.
        let status = unsafe { ibv_is_fork_initialized() };
        if status == rdma_sys::IBV_FORK_UNNEEDED {
            tracing::debug!("ibv_fork_init not needed: the kernel keeps registered pages on fork");
            return Ok(());
        }
        // SAFETY: no arguments; called before this process registers memory through rfaas.
        let ret = unsafe { ibv_fork_init() };
        if ret != 0 {
            return Err(format!(
                "ibv_fork_init failed ({}): memory was registered before fork support could be \
                 enabled, and the executor manager forks",
                std::io::Error::from_raw_os_error(ret.abs())
            ));
        }
        // SAFETY: as above.
        let status = unsafe { ibv_is_fork_initialized() };
        if !fork_status_is_safe(status) {
            return Err(format!(
                "ibv_fork_init left fork support off (status {status})"
            ));
        }
        Ok(())
    })
    .clone()
    .map_err(|reason| FabricError::Unavailable {
        provider: PROVIDER,
        reason,
    })
}

/// The name of the device `ctx` belongs to.
pub(crate) fn ctx_device_name(ctx: *mut ibv_context) -> String {
    if ctx.is_null() {
        return "(none)".into();
    }
    // SAFETY: `ctx` is an open context (the caller's id or device holds it); its `device`
    // outlives it and the name is a NUL-terminated string owned by the device.
    unsafe {
        let dev = (*ctx).device;
        if dev.is_null() {
            return "(unknown)".into();
        }
        CStr::from_ptr(ibv_get_device_name(dev))
            .to_string_lossy()
            .into_owned()
    }
}

/// Registered ranges by lkey: `lkey → (address, length)`.
type MrRanges = HashMap<u32, (u64, u64)>;

/// An open device: rdma_cm's context for it, our protection domain, and the connection monitor.
pub(crate) struct Device {
    name: String,
    /// The array `rdma_get_devices` returned; holding it keeps rdma_cm's reference on the device.
    list: NonNull<*mut ibv_context>,
    ctx: NonNull<ibv_context>,
    pd: NonNull<ibv_pd>,
    caps: DeviceCaps,
    /// Memory registered in this fabric's protection domain (for the lkey check of inline sends).
    mrs: ArcSwap<MrRanges>,
    /// Watches established connections for disconnects and the device's asynchronous events
    /// (see [`CmMonitor`]). Dropped first.
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
        fork_safety()?;
        let names = device_names()?;
        let name = match requested {
            None => first_active(&names),
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
            mrs: ArcSwap::from_pointee(MrRanges::new()),
            monitor: None,
        };
        // On error `dev` is dropped, which frees the PD and the list.
        dev.monitor = Some(CmMonitor::start(ctx)?);
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

    /// Records a registered range (called by `VerbsMr::alloc`).
    pub fn add_mr(&self, lkey: u32, addr: u64, len: u64) {
        self.mrs.rcu(|m| {
            let mut m = MrRanges::clone(m);
            m.insert(lkey, (addr, len));
            m
        });
    }

    /// Forgets a registered range (called before `ibv_dereg_mr`).
    pub fn remove_mr(&self, lkey: u32) {
        self.mrs.rcu(|m| {
            let mut m = MrRanges::clone(m);
            m.remove(&lkey);
            m
        });
    }

    /// Whether `sge` lies inside memory registered in this fabric under its lkey.
    pub fn lkey_covers(&self, sge: &Sge) -> bool {
        sge_inside(&self.mrs.load(), sge)
    }

    /// The addresses of this host that rdma_cm binds to this device (its IPoIB or RoCE
    /// interfaces), IPv4 first.
    pub fn local_addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = interface_addrs()
            .into_iter()
            .filter(|ip| {
                super::cm::device_of_local_addr(*ip)
                    .is_some_and(|(ctx, _)| ctx == self.ctx.as_ptr() as usize)
            })
            .collect();
        v.sort_by_key(|ip| ip.is_ipv6());
        v
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

fn query_attr(ctx: NonNull<ibv_context>) -> Result<ibv_device_attr> {
    let mut attr = MaybeUninit::<ibv_device_attr>::zeroed();
    // SAFETY: `ctx` is open and `attr` points to writable memory of the right type.
    let ret = unsafe { ibv_query_device(ctx.as_ptr(), attr.as_mut_ptr()) };
    check_ret(ret, "ibv_query_device")?;
    // SAFETY: zero-initialised plain-data struct, filled in by the successful call.
    Ok(unsafe { attr.assume_init() })
}

fn query_caps(ctx: NonNull<ibv_context>) -> Result<DeviceCaps> {
    let attr = query_attr(ctx)?;
    Ok(DeviceCaps {
        max_qp_wr: u32::try_from(attr.max_qp_wr).unwrap_or(0).max(1),
        max_cqe: u32::try_from(attr.max_cqe).unwrap_or(0).max(1),
        atomics: atomics_supported(attr.atomic_cap),
    })
}

/// Whether `sge` lies inside one of `mrs` under its own lkey.
pub(crate) fn sge_inside(mrs: &MrRanges, sge: &Sge) -> bool {
    let Some(&(addr, len)) = mrs.get(&sge.lkey) else {
        return false;
    };
    let (Some(end), Some(region_end)) = (
        sge.addr.checked_add(u64::from(sge.len)),
        addr.checked_add(len),
    ) else {
        return false;
    };
    sge.addr >= addr && end <= region_end
}

/// The device to use when none is named: the best ranked by [`DeviceRank`], the earliest listed
/// among equals.
fn first_active(names: &[String]) -> String {
    let routed = routed_devices();
    let rank = |n: &String| DeviceRank {
        routed: routed.contains(n),
        active: has_active_port(n),
    };
    pick_device(names, rank).clone()
}

/// What makes a device a good default: rdma_cm binds an address of this host to it (so
/// connections can be routed over it at all), and a port of it is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DeviceRank {
    /// rdma_cm resolves one of this host's IP addresses to the device.
    pub routed: bool,
    /// A port is in the ACTIVE state.
    pub active: bool,
}

/// The first of `names` with the highest rank (`names` is not empty).
pub(crate) fn pick_device(
    names: &[String],
    mut rank: impl FnMut(&String) -> DeviceRank,
) -> &String {
    let mut best = &names[0];
    let mut best_rank = rank(best);
    for n in &names[1..] {
        let r = rank(n);
        if r > best_rank {
            best = n;
            best_rank = r;
        }
    }
    best
}

/// The names of the devices rdma_cm binds some address of this host to.
fn routed_devices() -> Vec<String> {
    interface_addrs()
        .into_iter()
        .filter_map(super::cm::device_of_local_addr)
        .map(|(_, name)| name)
        .collect()
}

/// Whether device `name` has a port in the ACTIVE state (opens the device briefly).
fn has_active_port(name: &str) -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: `n` is a valid out-pointer; the result is NULL or a list freed below.
    let list = unsafe { rdma_get_devices(&mut n) };
    if list.is_null() {
        return false;
    }
    let mut active = false;
    for i in 0..usize::try_from(n).unwrap_or(0) {
        // SAFETY: `i < n`, the array holds `n` entries.
        let ctx = unsafe { *list.add(i) };
        if ctx.is_null() || ctx_device_name(ctx) != name {
            continue;
        }
        let ports = NonNull::new(ctx)
            .and_then(|c| query_attr(c).ok())
            .map_or(0, |a| a.phys_port_cnt);
        for port in 1..=ports {
            let mut pa = MaybeUninit::<ibv_port_attr>::zeroed();
            // SAFETY: `ctx` is open and `pa` is writable memory of the right type.
            let ret = unsafe { ___ibv_query_port(ctx, port, pa.as_mut_ptr()) };
            // SAFETY: zeroed plain data, filled in by the call when it succeeded.
            if ret == 0 && unsafe { pa.assume_init() }.state == ibv_port_state::IBV_PORT_ACTIVE {
                active = true;
            }
        }
    }
    // SAFETY: the list came from rdma_get_devices and is freed once.
    unsafe { rdma_free_devices(list) };
    active
}

/// Every IP address of this host's interfaces (`getifaddrs`).
fn interface_addrs() -> Vec<IpAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is an element of the list getifaddrs returned, valid until freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: `ifa_addr` points to a sockaddr of the family it names, at least as large
            // as the struct read for that family.
            let ip = unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                        Some(IpAddr::from(a.sin_addr.s_addr.to_ne_bytes()))
                    }
                    libc::AF_INET6 => {
                        let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                        let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                        // Link-local addresses need a scope that `host:port` cannot carry.
                        (ip.segments()[0] & 0xffc0 != 0xfe80).then_some(IpAddr::V6(ip))
                    }
                    _ => None,
                }
            };
            out.extend(ip);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once; nothing points into it any more.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomics_need_an_atomic_capability() {
        assert!(!atomics_supported(ibv_atomic_cap::IBV_ATOMIC_NONE));
        assert!(atomics_supported(ibv_atomic_cap::IBV_ATOMIC_HCA));
        assert!(atomics_supported(ibv_atomic_cap::IBV_ATOMIC_GLOB));
        let e = no_atomics("siw0").to_string();
        assert!(
            e.contains("siw0") && e.contains("IBV_ATOMIC_NONE") && e.contains("RFAAS_VERBS_DEVICE"),
            "{e}"
        );
    }

    #[test]
    fn fork_support_is_on_before_anything_is_registered() {
        // Needs no device: libibverbs prepares its own state (or finds the kernel does it).
        fork_safety().expect("fork safety");
        // SAFETY: no arguments.
        let status = unsafe { ibv_is_fork_initialized() };
        assert!(fork_status_is_safe(status), "status {status}");
        assert!(!fork_status_is_safe(rdma_sys::IBV_FORK_DISABLED));
        // Idempotent.
        fork_safety().expect("second call");
    }

    #[test]
    fn default_device_is_routed_then_active_then_first() {
        let names: Vec<String> = ["mlx5_0", "mlx5_1", "mlx5_bond_0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ranks = |routed: &[&str], active: &[&str]| {
            let (routed, active): (Vec<String>, Vec<String>) = (
                routed.iter().map(|s| s.to_string()).collect(),
                active.iter().map(|s| s.to_string()).collect(),
            );
            move |n: &String| DeviceRank {
                routed: routed.contains(n),
                active: active.contains(n),
            }
        };
        // Nothing known: the first listed.
        assert_eq!(pick_device(&names, ranks(&[], &[])), "mlx5_0");
        // Only the second port is cabled.
        assert_eq!(pick_device(&names, ranks(&[], &["mlx5_1"])), "mlx5_1");
        // A bond: its slaves' ports are up too, but only the bond carries the address.
        assert_eq!(
            pick_device(
                &names,
                ranks(&["mlx5_bond_0"], &["mlx5_0", "mlx5_1", "mlx5_bond_0"])
            ),
            "mlx5_bond_0"
        );
        // Routed beats active; among equals the earliest wins.
        assert_eq!(
            pick_device(&names, ranks(&["mlx5_1"], &["mlx5_0"])),
            "mlx5_1"
        );
        assert_eq!(
            pick_device(&names, ranks(&["mlx5_0", "mlx5_1"], &["mlx5_0", "mlx5_1"])),
            "mlx5_0"
        );
    }

    #[test]
    fn inline_check_needs_the_sge_inside_its_own_region() {
        let mut m = MrRanges::new();
        m.insert(7, (0x1000, 0x100));
        m.insert(9, (0x8000, 0x10));
        let sge = |addr, len, lkey| Sge { addr, len, lkey };
        assert!(sge_inside(&m, &sge(0x1000, 0x100, 7)));
        assert!(sge_inside(&m, &sge(0x10f0, 0x10, 7)));
        assert!(
            !sge_inside(&m, &sge(0x10f0, 0x11, 7)),
            "one byte past the end"
        );
        assert!(!sge_inside(&m, &sge(0xfff, 2, 7)), "starts before");
        assert!(
            !sge_inside(&m, &sge(0x8000, 8, 7)),
            "another region's range"
        );
        assert!(sge_inside(&m, &sge(0x8000, 8, 9)));
        assert!(!sge_inside(&m, &sge(0x1000, 8, 8)), "unknown lkey");
        assert!(!sge_inside(&m, &sge(u64::MAX - 2, 8, 7)), "overflow");
    }
}
