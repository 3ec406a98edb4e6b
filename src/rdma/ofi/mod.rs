//! The `ofi` provider (feature `libfabric`): the fabric API over libfabric's reliable-datagram
//! endpoints, the one interface that reaches HPE Slingshot (`cxi`), AWS EFA (`efa`), Omni-Path
//! (`opx`, `psm2`) and InfiniBand (`verbs;ofi_rxm`); CI runs it on libfabric's own `shm` and
//! `tcp;ofi_rxm`.
//!
//! # How it works
//!
//! * **Domain** (`domain.rs`): one fabric, domain and `FI_EP_RDM` endpoint per [`OfiFabric`],
//!   with its address vector and one libfabric completion queue (`FI_CQ_FORMAT_DATA`). The
//!   provider comes from `RFAAS_OFI_PROVIDER`, else `FI_PROVIDER`, else libfabric's first choice;
//!   `fi_getinfo` is asked for RMA, messages and (if offered) atomics, with the memory
//!   registration modes rfaas handles (`FI_MR_LOCAL`, `FI_MR_VIRT_ADDR`, `FI_MR_ALLOCATED`,
//!   `FI_MR_PROV_KEY`, `FI_MR_ENDPOINT`) and the per-peer write ordering the contract needs
//!   (`FI_ORDER_RAW | FI_ORDER_WAW | FI_ORDER_SAW`).
//! * **Queue pairs** (`qp.rs`) are (endpoint, peer address, peer queue pair number): the target
//!   queue pair, the immediate, the solicited bit and piggybacked receive credits travel in the
//!   64 bits of remote CQ data of `fi_writemsg(FI_REMOTE_CQ_DATA)`, so a provider must offer
//!   8 bytes of CQ data; where the provider does not report the length of a remote write
//!   (`tcp;ofi_rxm` in 1.17), a short write's length travels there too (`wire.rs`). Sends and
//!   credit grants are small internal messages into receive buffers the domain keeps posted.
//! * **Delivery completion** is asked for on the first write into a remote range only; once it
//!   succeeded, later writes inside that range on the same queue pair complete at transmit
//!   (`qp.rs`, `Window`): the target accepted that key and those bounds already, and per-peer
//!   ordering, not delivery completion, makes them visible before a later write-with-data.
//! * **Connection setup** (`listener.rs`): a TCP side channel exchanges endpoint names, queue
//!   pair numbers, receive credits and private data, then stays open as the liveness channel.
//! * **Progress**: libfabric's data progress is manual on every provider rfaas targets, so
//!   whoever polls an empty completion queue drives it, and each domain runs a progress thread
//!   that makes sure it is driven at least every millisecond (remote atomics on billing memory,
//!   credit grants and writes with data land while no one polls), standing aside while the
//!   application drives it, and watches the side channels. A blocked
//!   waiter sleeps on the completion queue's wait object where the provider has one
//!   (`FI_WAIT_FD` + `fi_trywait`: `tcp;ofi_rxm`), else spins, then sleeps in 200 µs slices
//!   (`shm`, and `cxi` / `efa`, which have none); [`OfiInfo::wait_object`] says which.
//!
//! # Semantics worth knowing
//!
//! * A region with `REMOTE_WRITE` and `REMOTE_READ` accepts atomics even without
//!   `REMOTE_ATOMIC` (libfabric has no separate atomic right). A misaligned atomic is refused
//!   locally (`RemoteInvalidRequest`).
//! * Sends carry at most 4096 bytes.
//! * Without a wait object, blocking waits sleep in slices of 200 µs between progress calls, so
//!   a warm wake-up costs up to that much there.
//! * A region the target deregisters after a write proved a range of it is not noticed by the
//!   initiator's later writes into that range (they complete at transmit; the target drops
//!   them). Ranges not yet written get the target's verdict as before.

mod cq;
mod domain;
mod listener;
mod mr;
mod qp;
pub mod raw;
mod shm_regions;
mod sys;
mod wire;

use std::sync::Arc;

pub use cq::OfiCq;
pub use domain::OfiInfo;
pub use listener::{OfiListener, OfiRequest, HANDSHAKE_TIMEOUT};
pub use mr::OfiMr;
pub use qp::OfiQp;
pub use shm_regions::remove_regions_of_dead as remove_shm_regions_of_dead;

use super::error::Result;
use super::provider::Provider;
use domain::Domain;

/// Where a provider wants offsets into the region rather than virtual addresses (no
/// `FI_MR_VIRT_ADDR`), [`MemoryRegion::remote`](crate::rdma::MemoryRegion::remote) hands out
/// `OFFSET_BIAS + offset` (so address arithmetic by callers cannot wrap below zero) and the
/// initiator subtracts it again; an address below the bias becomes an offset no region has.
pub const OFFSET_BIAS: u64 = 1 << 48;

/// Environment variable naming the libfabric provider (`shm`, `tcp;ofi_rxm`, `cxi`, ...);
/// `FI_PROVIDER` is used when it is unset.
pub const OFI_PROVIDER_ENV: &str = crate::env::OFI_PROVIDER;

/// A domain of the `ofi` provider.
#[derive(Clone)]
pub struct OfiFabric {
    d: Arc<Domain>,
}

impl OfiFabric {
    /// Opens a domain of the libfabric provider named by `RFAAS_OFI_PROVIDER` or `FI_PROVIDER`
    /// (libfabric's first choice when neither is set).
    pub fn new() -> Result<OfiFabric> {
        OfiFabric::with_provider(configured_provider().as_deref())
    }

    /// Opens a domain of libfabric provider `provider` (e.g. `"shm"`, `"tcp;ofi_rxm"`).
    pub fn with_provider(provider: Option<&str>) -> Result<OfiFabric> {
        Ok(OfiFabric {
            d: Domain::open(provider)?,
        })
    }

    /// What the libfabric provider in use offers.
    pub fn info(&self) -> &OfiInfo {
        &self.d.info
    }
}

/// Signals whose handlers libfabric 1.17 installs when it is loaded (its shm provider's cleanup
/// handlers: they turn a segfault into `exit(1)` and chain into the process's own SIGTERM
/// handling).
pub(crate) const LIBFABRIC_SIGNALS: [i32; 6] = [
    libc::SIGINT,
    libc::SIGILL,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGSEGV,
    libc::SIGTERM,
];

/// Puts back the default action of the signals libfabric takes over, for a libfabric loaded
/// before rfaas's code runs (preloaded, or linked by another library); called first thing by
/// every rfaas binary. The libfabric rfaas opens itself at run time keeps the process's
/// handlers anyway (`sys::SignalsKept`), so a crashing executor is still reported as killed by
/// its signal and the daemons' own SIGTERM handling is the only one. The cost: libfabric's shm
/// provider no longer removes its `/dev/shm` files when a process dies of a signal.
pub fn restore_default_signals() {
    for sig in LIBFABRIC_SIGNALS {
        // SAFETY: installing SIG_DFL has no memory-safety preconditions; it runs before any
        // thread or handler of rfaas's own exists.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// The libfabric provider the environment names (`RFAAS_OFI_PROVIDER`, else `FI_PROVIDER`).
pub fn configured_provider() -> Option<String> {
    [crate::env::OFI_PROVIDER, "FI_PROVIDER"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

crate::rdma::fabric_impl::impl_fabric!(OfiFabric {
    provider: Provider::Ofi,
    domain: d,
    Mr: OfiMr = OfiMr::alloc,
    Cq: OfiCq = OfiCq::new,
    Listener: OfiListener = OfiListener::bind,
    Request: OfiRequest,
    Qp: OfiQp = listener::connect,
});
