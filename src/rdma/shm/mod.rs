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
use std::time::Duration;

pub use cq::ShmCq;
pub use listener::{ShmListener, ShmRequest};
pub use mr::ShmMr;
pub use qp::ShmQp;
#[doc(hidden)]
pub use ring::RingLoop;

use super::error::Result;
use super::mr_table::{Entry, MrTable, ENTRY_SIZE};
use super::segment::Segment;
use super::{Access, Fabric, Provider, QpInit, RecvWr};
use arena::{Arena, ArenaClass};
use control::Control;

/// Regions a domain can register.
const TABLE_CAP: usize = 4096;
/// Default arena size (address space; only touched pages use memory).
const DEFAULT_ARENA_BYTES: usize = 16 << 30;

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
        let arena = std::env::var(crate::env::SHM_ARENA_BYTES)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(DEFAULT_ARENA_BYTES);
        let rw = Arena::new(ArenaClass::ReadWrite, arena)?;
        let ro = Arena::new(ArenaClass::ReadOnly, (arena / 4).max(1 << 20))?;
        let table_seg = Arc::new(Segment::create(
            "rfaas-shm-table",
            TABLE_CAP * ENTRY_SIZE,
            true,
        )?);
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

impl Fabric for ShmFabric {
    type Mr = ShmMr;
    type Cq = ShmCq;
    type Qp = ShmQp;
    type Listener = ShmListener;
    type Request = ShmRequest;

    fn provider(&self) -> Provider {
        Provider::Shm
    }

    fn alloc_mr(&self, len: usize, access: Access) -> Result<ShmMr> {
        ShmMr::alloc(&self.dom, len, access)
    }

    fn create_cq(&self, depth: u32) -> Result<ShmCq> {
        ShmCq::new(depth)
    }

    fn listen(&self, addr: &str) -> Result<ShmListener> {
        ShmListener::bind(&self.dom, addr)
    }

    fn connect(
        &self,
        addr: &str,
        init: QpInit<'_, Self>,
        initial_recvs: &[RecvWr],
        private_data: &[u8],
        timeout: Duration,
    ) -> Result<(ShmQp, Vec<u8>)> {
        listener::connect(&self.dom, addr, init, initial_recvs, private_data, timeout)
    }
}
