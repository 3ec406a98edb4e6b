//! The `shm` provider: RDMA semantics between processes of one node, over shared memory.
//!
//! * **Memory.** Remotely accessible regions are carved from two sparse memfd arenas per domain
//!   (one that peers map read-write, one they map read-only); regions without remote rights are
//!   private memory. A peer maps the arenas once, at connect time.
//! * **Data path.** Everything happens in the initiator's `post_send`: a write is a checked
//!   `memcpy` into the peer's mapping, an atomic is a CPU atomic on it, a read is a copy out of it.
//!   A write-with-immediate or send then publishes an entry in the target queue pair's incoming
//!   ring (a shared segment), which the target's completion queue polls. No allocation, no lock
//!   and no system call on this path unless the target armed its completion queue (then one
//!   eventfd write wakes it).
//! * **Checks.** The initiator checks rkey, bounds and rights against the target's region table,
//!   which the target shares read-only; regions with only remote-read rights are mapped read-only
//!   in peers, so even a buggy peer cannot write them.
//! * **Connections.** A Unix seqpacket socket per queue pair: the handshake checks the peer's
//!   uid (`SO_PEERCRED`) both ways and passes the segments' fds (`SCM_RIGHTS`); the socket then
//!   stays open as the liveness channel. When a peer dies its socket closes, a control thread
//!   notices within milliseconds, moves the queue pair to the error state and wakes waiters, and
//!   outstanding receives flush.
//! * **Trust.** A connected peer of the same uid can write any byte of the read-write arena, so
//!   rkeys protect against bugs, not against a malicious same-uid peer. Connections from other
//!   uids are refused.
//!
//! Addresses: `host:port` (an abstract Unix socket named after the port, so shm and tcp
//! addresses look alike; port 0 picks one), `@name` (abstract socket) or a filesystem path.

mod addr;
mod arena;
mod control;
mod cq;
mod listener;
mod mr;
mod qp;
mod ring;
mod wire;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub use cq::ShmCq;
pub use listener::{ShmListener, ShmRequest};
pub use mr::ShmMr;
pub use qp::ShmQp;
#[doc(hidden)]
pub use ring::RingLoop;

use super::error::{FabricError, Result};
use super::mr_table::{Entry, MrTable, ENTRY_SIZE};
use super::segment::Segment;
use super::Provider;
use arena::{Arena, ArenaClass};
use control::Control;

/// Regions a domain can register.
const TABLE_CAP: usize = 4096;
/// Entries of the region table faulted in when a domain opens (one page).
const TABLE_PREFAULT: usize = 4096 / ENTRY_SIZE;
/// Default size of the read-write arena (address space; only touched pages use memory); the
/// read-only arena is a quarter of it (at least 1 MiB).
pub const DEFAULT_ARENA_BYTES: usize = 16 << 30;
/// Smallest arena accepted from [`crate::env::SHM_ARENA_BYTES`].
const MIN_ARENA_BYTES: usize = 1 << 20;

/// The read-write arena size: [`crate::env::SHM_ARENA_BYTES`] parsed with
/// [`crate::size::parse_size`] (`1GiB`, `64MiB`, `1073741824`), else [`DEFAULT_ARENA_BYTES`].
/// A value that does not parse, or is under 1 MiB, is an error naming the variable.
pub fn arena_bytes() -> Result<usize> {
    arena_bytes_from(std::env::var(crate::env::SHM_ARENA_BYTES).ok().as_deref())
}

/// [`arena_bytes`] for the variable's value `value` (`None`: unset).
fn arena_bytes_from(value: Option<&str>) -> Result<usize> {
    let var = crate::env::SHM_ARENA_BYTES;
    let Some(text) = value else {
        return Ok(DEFAULT_ARENA_BYTES);
    };
    let bad = |why: String| FabricError::Invalid(format!("{var}: {why}"));
    let n = crate::size::parse_size(text).map_err(|e| bad(e.to_string()))?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n >= MIN_ARENA_BYTES)
        .ok_or_else(|| {
            bad(format!(
                "{text:?} is not between 1 MiB and the address space"
            ))
        })
}

/// A shm domain. Cheap to clone; all clones share one set of arenas and one control thread.
#[derive(Clone, Debug)]
pub struct ShmFabric {
    dom: Arc<Domain>,
}

#[derive(Debug)]
pub(crate) struct Domain {
    pub(crate) rw: Arena,
    pub(crate) ro: Arena,
    pub(crate) table_seg: Arc<Segment>,
    pub(crate) table: MrTable,
    pub(crate) control: Control,
    next_qp: AtomicU32,
}

impl ShmFabric {
    /// Opens a domain: maps its arenas and region table and starts its control thread.
    pub fn new() -> Result<ShmFabric> {
        let arena = arena_bytes()?;
        let rw = Arena::new(ArenaClass::ReadWrite, arena)?;
        let ro = Arena::new(ArenaClass::ReadOnly, (arena / 4).max(1 << 20))?;
        // Not pre-faulted whole: 32 pages of shared memory cost a fresh executor about 60 µs
        // before it can report, while a process registers a handful of regions, from the
        // lowest free slot up. The first page (128 entries) is faulted in now; later ones on
        // first registration there, off the data path (peers fault on their first read anyway).
        let table_seg = Arc::new(Segment::create(
            "rfaas-shm-table",
            TABLE_CAP * ENTRY_SIZE,
            false,
        )?);
        table_seg.prefault(0, TABLE_PREFAULT * ENTRY_SIZE);
        // SAFETY: the segment is zeroed, page aligned (so aligned for `Entry`), holds TABLE_CAP
        // entries, and is kept alive by the domain next to the table.
        let table = unsafe { MrTable::new(table_seg.as_ptr().cast::<Entry>(), TABLE_CAP) };
        let control = Control::start()?;
        let dom = Domain {
            rw,
            ro,
            table_seg,
            table,
            control,
            next_qp: AtomicU32::new(1),
        };
        Ok(ShmFabric { dom: Arc::new(dom) })
    }
}

impl Domain {
    fn next_qp_num(&self) -> u32 {
        self.next_qp.fetch_add(1, Ordering::Relaxed)
    }
}

crate::rdma::fabric_impl::impl_fabric!(ShmFabric {
    provider: Provider::Shm,
    domain: dom,
    Mr: ShmMr = ShmMr::alloc,
    Cq: ShmCq = |_, depth| ShmCq::new(depth),
    Listener: ShmListener = ShmListener::bind,
    Request: ShmRequest,
    Qp: ShmQp = listener::connect,
});

#[cfg(test)]
mod arena_size_tests {
    use super::*;

    #[test]
    fn the_arena_size_variable_takes_units_and_refuses_what_it_cannot_read() {
        assert_eq!(arena_bytes_from(None).unwrap(), 16 << 30);
        assert_eq!(arena_bytes_from(Some("1GiB")).unwrap(), 1 << 30);
        assert_eq!(arena_bytes_from(Some("67108864")).unwrap(), 64 << 20);
        for bad in ["1.5GiB", "lots", "4096"] {
            let e = arena_bytes_from(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("RFAAS_SHM_ARENA_BYTES"), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
