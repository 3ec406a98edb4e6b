//! The InfiniBand/RoCE provider: ibverbs through `rdma-sys`, connection setup through rdma_cm.
//!
//! The real thing that the software providers imitate. One [`VerbsFabric`] is one RDMA device
//! (from [`crate::env::VERBS_DEVICE`], or the one rdma_cm routes this host's addresses over, see
//! `device.rs`) with one protection domain that every region and queue pair lives in.
//!
//! | API | verbs |
//! |---|---|
//! | `alloc_mr` | `mmap` (page aligned, zeroed, `MAP_POPULATE`) + `ibv_reg_mr` |
//! | `create_cq` | `ibv_create_comp_channel` + `ibv_create_cq` (channel fd non-blocking) |
//! | `listen`, `connect` | rdma_cm (`RDMA_PS_TCP`, RC), addresses `host:port` |
//! | `post_send` | `ibv_post_send`, one SGE, immediates converted to network order |
//! | `poll` | `ibv_poll_cq` (no system call) |
//! | `wait` | `poll(2)` on the channel fd, `ibv_get_cq_event`, `ibv_ack_cq_events` |
//!
//! # Differences from the software providers
//!
//! * Private data: a connect carries at most [`MAX_CONNECT_DATA`] = 55 bytes, an accept
//!   [`MAX_ACCEPT_DATA`] = 195 (rdma_cm's IB CM fields, less one length byte that keeps lengths
//!   exact); longer blobs fail with [`FabricError::Invalid`](crate::rdma::FabricError::Invalid).
//! * Regions cannot be empty, and asking for remote write or atomic access implies local write
//!   (verbs refuses the combination otherwise).
//! * The RNR timeout is rounded to what verbs can express (≤ 6 retries of the IB RNR timer; at
//!   most about 3.9 s, or forever from one hour on); the response timeout sets the local ACK
//!   timeout with 7 transport retries. In verbs both halves of the RNR wait belong to the
//!   receiver of the request: a side waits for as long as its *peer's* [`QpTimeouts::rnr`](crate::rdma::QpTimeouts) says.
//! * Unsignaled sends: the provider signals every half send queue itself and hides those
//!   completions; a queue pair whose send queue is full polls its send completion queue before
//!   it posts (see `signal.rs`). Posting therefore never fails for lack of polling unless the
//!   caller leaves a whole queue of its own signaled completions unpolled.
//! * Remote atomics need a device whose `atomic_cap` is not `IBV_ATOMIC_NONE`; elsewhere regions
//!   with `REMOTE_ATOMIC` and atomic requests fail with
//!   [`FabricError::Unavailable`](crate::rdma::FabricError::Unavailable) naming the device.
//! * `ibv_fork_init` runs before the first device is opened (unless the kernel makes it
//!   unnecessary), since the executor manager forks while memory is registered.
//! * Inline sends go inline only when their SGE lies in a region registered in this fabric with
//!   that lkey (the device does not check the lkey of inline data); others are posted normally
//!   and a bad SGE fails with `LocalProtection`, as in the other providers.
//! * `accept` waits up to [`ACCEPT_TIMEOUT`] for the peer's final handshake message.
//! * A peer that disconnects or dies is noticed by a per-device monitor thread (rdma_cm
//!   DISCONNECTED), which moves the queue pair to the error state so outstanding requests
//!   flush. A peer whose node vanishes without a word is noticed by the transport timers of the
//!   next request sent to it.
//!
//! # Machines without RDMA
//!
//! [`VerbsFabric::open_default`] returns [`FabricError::Unavailable`](crate::rdma::FabricError::Unavailable) with a reason that starts
//! with "no RDMA device found" and names the call that said so. Nothing here panics or aborts
//! for lack of a device.

mod async_events;
mod cm;
mod conn;
mod cq;
mod device;
mod error;
mod mr;
mod qp;
mod signal;
mod wire;

#[cfg(test)]
mod layout;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use conn::{VerbsListener, VerbsRequest, ACCEPT_TIMEOUT};
pub use cq::VerbsCq;
pub use mr::VerbsMr;
pub use qp::VerbsQp;
pub use wire::{MAX_ACCEPT_DATA, MAX_CONNECT_DATA};

use crate::rdma::error::Result;
use crate::rdma::Provider;

/// The verbs fabric: one RDMA device and its protection domain. Cheap to clone.
#[derive(Clone)]
pub struct VerbsFabric {
    dev: Arc<device::Device>,
}

impl std::fmt::Debug for VerbsFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsFabric")
            .field("device", &self.dev.name())
            .finish()
    }
}

impl VerbsFabric {
    /// Opens the device named by `RFAAS_VERBS_DEVICE`, or the first one when it is unset.
    ///
    /// [`FabricError::Unavailable`](crate::rdma::FabricError::Unavailable) when the machine has no RDMA device ("no RDMA device found
    /// (...)"), or when the named device does not exist (the reason lists those that do).
    pub fn open_default() -> Result<VerbsFabric> {
        let requested = std::env::var(crate::env::VERBS_DEVICE).ok();
        let requested = requested
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        VerbsFabric::open(requested)
    }

    /// Opens `device` (e.g. `mlx5_0`), or the first device when `None`.
    pub fn open(device: Option<&str>) -> Result<VerbsFabric> {
        Ok(VerbsFabric {
            dev: Arc::new(device::Device::open(device)?),
        })
    }

    /// The names of this machine's RDMA devices; [`FabricError::Unavailable`](crate::rdma::FabricError::Unavailable) when there are
    /// none.
    pub fn device_names() -> Result<Vec<String>> {
        device::device_names()
    }

    /// The name of the device this fabric uses.
    pub fn device_name(&self) -> &str {
        self.dev.name()
    }

    /// The IP addresses of this host that lead to this fabric's device (its IPoIB or RoCE
    /// interfaces; rdma_cm binds each to the device), IPv4 first. Listen on one of them:
    /// `127.0.0.1` reaches an RDMA device only through soft-RoCE on the loopback interface.
    pub fn local_addrs(&self) -> Vec<std::net::IpAddr> {
        self.dev.local_addrs()
    }

    /// A listen address (`ip:0`) on the device [`VerbsFabric::open_default`] picks, for servers
    /// that were given none; `None` without a device or without an IP address on it.
    pub fn default_bind() -> Option<String> {
        let ip = *VerbsFabric::open_default().ok()?.local_addrs().first()?;
        Some(wire::format_addr(std::net::SocketAddr::new(ip, 0)))
    }
}

crate::rdma::fabric_impl::impl_fabric!(VerbsFabric {
    provider: Provider::Verbs,
    domain: dev,
    Mr: VerbsMr = VerbsMr::alloc,
    Cq: VerbsCq = VerbsCq::new,
    Listener: VerbsListener = VerbsListener::bind,
    Request: VerbsRequest,
    Qp: VerbsQp = conn::connect,
});
