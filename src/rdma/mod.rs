#![allow(unsafe_code)] // The fabric layer is where unsafe lives; every block says why it is sound.

//! The fabric layer: one verbs-shaped API, several providers.
//!
//! Every byte rfaas moves goes through the traits in this module. The protocol code above is
//! written once, generic over [`Fabric`], and runs over
//!
//! * [`shm`] — processes on one node: registered memory lives in memfd segments that the peer maps,
//!   so an RDMA write is a `memcpy` by the initiator and atomics are CPU atomics on the mapping;
//! * [`tcp`] — between nodes without RDMA: one stream per connection and a progress thread on the
//!   target that applies writes, reads and atomics without the application's help;
//! * `verbs` (feature `verbs`) — InfiniBand/RoCE through `rdma-sys` and rdma_cm.
//!
//! Pick one at run time with [`Provider`] (CLI, config or `RFAAS_PROVIDER`) and dispatch to generic
//! code with [`Provider::run`] and a [`FabricUser`].
//!
//! # Contract (every provider, checked by `tests/fabric_conformance.rs`)
//!
//! * Reliable-connected ordering per queue pair: when a `WriteImm` or `Send` completion is seen at
//!   the target, every earlier write on that queue pair is visible.
//! * A `WriteImm` consumes exactly one posted receive and reports `byte_len` = bytes written; zero
//!   bytes are legal. Immediates are in host order in this API.
//! * Atomics need an 8-byte aligned word in a region with `REMOTE_ATOMIC`; the old value lands in
//!   the request's SGE. They land with no action by the target application.
//! * A wrong rkey, an access out of bounds or without the right gives
//!   [`WcStatus::RemoteAccess`] at the initiator, leaves the target's memory unchanged, and moves
//!   the queue pair to the error state: later requests complete with [`WcStatus::WrFlush`].
//!   One known exception, in the `ofi` provider: once a write into a range of a remote region
//!   succeeded, later writes into that range on the same queue pair complete at transmit, so a
//!   region the target deregisters afterwards is not reported at the initiator (the target
//!   drops those writes; its memory is not touched). See `ofi`'s "Semantics worth knowing".
//! * With no receive posted, a `WriteImm` or `Send` waits up to [`QpTimeouts::rnr`], then fails with
//!   [`WcStatus::RnrRetryExceeded`].
//! * A peer that dies produces error or flush completions for everything outstanding, within a
//!   bounded time, and [`QueuePair::is_connected`] turns false. Nothing waits forever: every
//!   blocking call takes a timeout.
//! * Completions of any number of queue pairs can share one completion queue.
//!
//! # Threads
//!
//! Fabrics and memory regions are `Send + Sync`. Queue pairs and completion queues are `Send`:
//! one thread posts on a queue pair, one thread polls a completion queue (give each worker thread
//! its own, as rFaaS does). Software providers do their work inside `post_send`, so that thread
//! also pays for the copy; that is what makes the shared-memory path cost a `memcpy`.

pub mod error;
pub mod notify;
#[cfg(feature = "libfabric")]
pub mod ofi;
pub mod provider;
pub mod raw_floor;
pub mod segment;
pub mod shm;
pub mod tcp;
pub mod types;
#[cfg(feature = "verbs")]
pub mod verbs;

pub(crate) mod cq_core;
pub(crate) mod fabric_impl;
pub(crate) mod mr_table;
pub(crate) mod registration;
pub(crate) mod spsc;

use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

pub use error::{FabricError, Result};
pub use provider::{FabricUser, Provider};
pub use types::{
    Access, Op, QpCaps, QpTimeouts, RecvWr, RemoteBuf, SendFlags, SendWr, Sge, Wc, WcOpcode,
    WcStatus,
};

/// Undoes what linking optional native libraries does to signal handling (libfabric installs
/// handlers for SIGSEGV, SIGTERM, ... when loaded); a no-op without the `libfabric` feature.
/// Every rfaas binary calls it first.
pub fn restore_default_signals() {
    #[cfg(feature = "libfabric")]
    ofi::restore_default_signals();
}

/// Largest private-data blob carried by connect and accept, in bytes (verbs' rdma_cm allows 56
/// for RC connects; software providers allow this much).
pub const MAX_PRIVATE_DATA: usize = 1024;

/// A fabric domain: the factory for memory regions, completion queues and connections of one
/// provider. Cheap to clone (clones share the domain) and to share between threads.
pub trait Fabric: Clone + Send + Sync + Sized + 'static {
    /// Registered memory.
    type Mr: MemoryRegion;
    /// Completion queue.
    type Cq: CompletionQueue;
    /// Connected queue pair.
    type Qp: QueuePair;
    /// Passive side of connection setup.
    type Listener: Listener<Self>;
    /// A pending incoming connection.
    type Request: ConnRequest<Self>;

    /// Which provider this is.
    fn provider(&self) -> Provider;

    /// Allocates `len` bytes (zeroed, page aligned, pre-faulted) and registers them with `access`.
    fn alloc_mr(&self, len: usize, access: Access) -> Result<Self::Mr>;

    /// Creates a completion queue that holds up to `depth` locally generated completions
    /// (incoming completions are bounded by the receives posted).
    fn create_cq(&self, depth: u32) -> Result<Self::Cq>;

    /// Listens for connections on `addr` (provider specific: a socket path for shm, `host:port`
    /// for tcp and verbs; port 0 picks one, see [`Listener::local_addr`]).
    fn listen(&self, addr: &str) -> Result<Self::Listener>;

    /// Connects a new queue pair to the listener at `addr`, posting `initial_recvs` before the
    /// connection is established. Returns the queue pair and the private data of the accept.
    fn connect(
        &self,
        addr: &str,
        init: QpInit<'_, Self>,
        initial_recvs: &[RecvWr],
        private_data: &[u8],
        timeout: Duration,
    ) -> Result<(Self::Qp, Vec<u8>)>;
}

/// What a new queue pair is made of.
pub struct QpInit<'a, F: Fabric> {
    /// Where completions of send requests go.
    pub send_cq: &'a F::Cq,
    /// Where completions of receives go (may be the same queue as `send_cq`).
    pub recv_cq: &'a F::Cq,
    /// Queue sizes.
    pub caps: QpCaps,
    /// Failure timers.
    pub timeouts: QpTimeouts,
}

impl<F: Fabric> Clone for QpInit<'_, F> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F: Fabric> Copy for QpInit<'_, F> {}

impl<'a, F: Fabric> QpInit<'a, F> {
    /// Default sizes and timers, one completion queue for both directions.
    pub fn new(cq: &'a F::Cq) -> Self {
        QpInit {
            send_cq: cq,
            recv_cq: cq,
            caps: QpCaps::default(),
            timeouts: QpTimeouts::default(),
        }
    }
}

/// The passive side of connection setup.
pub trait Listener<F: Fabric>: Send {
    /// The address peers connect to (with the port or path actually bound).
    fn local_addr(&self) -> String;

    /// Waits up to `timeout` for the next well-formed connection request. Malformed or failed
    /// handshakes are logged and skipped, never returned. `Ok(None)` on timeout.
    fn next_request(&self, timeout: Duration) -> Result<Option<F::Request>>;

    /// A descriptor that turns readable when a request may be waiting (for epoll).
    fn raw_fd(&self) -> RawFd;
}

/// An incoming connection request, to accept or reject.
pub trait ConnRequest<F: Fabric>: Send {
    /// The private data the peer sent with its connect.
    fn private_data(&self) -> &[u8];

    /// A description of the peer for logs (address, pid, uid where known).
    fn peer(&self) -> &str;

    /// Creates a queue pair, posts `initial_recvs` on it, and completes the connection with
    /// `private_data` for the peer.
    fn accept(
        self,
        init: QpInit<'_, F>,
        initial_recvs: &[RecvWr],
        private_data: &[u8],
    ) -> Result<F::Qp>;

    /// Refuses the connection; the peer's `connect` fails with [`FabricError::Rejected`].
    fn reject(self, reason: &str);
}

/// A connected queue pair (reliable connection).
pub trait QueuePair: Send {
    /// The local queue pair number (reported in completions).
    fn qp_num(&self) -> u32;

    /// Posts one send request. Never blocks for long: software providers wait at most the RNR
    /// timeout for a receive at the target. Errors of the request itself arrive as completions.
    fn post_send(&self, wr: &SendWr) -> Result<()>;

    /// Posts one receive request.
    fn post_recv(&self, wr: &RecvWr) -> Result<()>;

    /// False once the queue pair is in the error state (disconnected, peer died, access error).
    fn is_connected(&self) -> bool;

    /// Tears the connection down; the peer sees flush completions. Idempotent.
    fn disconnect(&self);
}

/// A completion queue, shareable by many queue pairs.
pub trait CompletionQueue: Send {
    /// Moves up to `out.len()` completions into `out` and returns how many. Never blocks; on shm
    /// it makes no system call.
    fn poll(&self, out: &mut [Wc]) -> usize;

    /// Arms the queue: the next completion (or, with `solicited_only`, the next solicited
    /// completion or error) makes [`CompletionQueue::wait`] return and the fd readable.
    fn req_notify(&self, solicited_only: bool) -> Result<()>;

    /// Blocks until the armed event fires or `timeout` passes; `Ok(false)` on timeout. Consumes
    /// the event. As with verbs: arm, poll once more, then wait.
    fn wait(&self, timeout: Duration) -> Result<bool>;

    /// A descriptor that turns readable when the armed event fires.
    fn raw_fd(&self) -> RawFd;

    /// Polls, spinning for up to `spin`, then arms and blocks, until at least one completion
    /// arrives or `timeout` passes (then `Ok(0)`). The usual way to wait for work without burning
    /// a core, and without paying a cross-core wake-up when the answer comes quickly.
    fn poll_wait(&self, out: &mut [Wc], timeout: Duration, spin: Duration) -> Result<usize> {
        let start = Instant::now();
        let deadline = start + timeout;
        let spin_until = start + spin.min(timeout);
        loop {
            for _ in 0..64 {
                let n = self.poll(out);
                if n > 0 {
                    return Ok(n);
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= spin_until {
                break;
            }
        }
        loop {
            self.req_notify(false)?;
            let n = self.poll(out);
            if n > 0 {
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            self.wait(deadline - now)?;
        }
    }
}

/// Registered memory. Peers reach it through [`MemoryRegion::remote`]; local requests through
/// [`MemoryRegion::sge`].
///
/// The bytes are shared with the fabric and may change behind Rust's back, so the region hands
/// out raw pointers only; read data after the completion that announced it, with
/// [`MemoryRegion::read`], and touch words that peers update atomically with
/// [`MemoryRegion::atomic_u64`].
pub trait MemoryRegion: Send + Sync {
    /// First byte.
    fn as_ptr(&self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Local key (for SGEs).
    fn lkey(&self) -> u32;
    /// Remote key (for peers).
    fn rkey(&self) -> u32;
    /// Access rights it was registered with.
    fn access(&self) -> Access;

    /// True when the region has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The remote view of `len` bytes at `off`, to hand to a peer.
    fn remote(&self, off: usize, len: u32) -> RemoteBuf {
        RemoteBuf {
            addr: self.as_ptr() as u64 + off as u64,
            rkey: self.rkey(),
            len,
        }
    }

    /// A local SGE over `len` bytes at `off`.
    fn sge(&self, off: usize, len: u32) -> Sge {
        Sge {
            addr: self.as_ptr() as u64 + off as u64,
            len,
            lkey: self.lkey(),
        }
    }

    /// Copies `src` into the region at `off`. Panics when out of bounds.
    fn write(&self, off: usize, src: &[u8]) {
        assert!(
            off.checked_add(src.len())
                .is_some_and(|end| end <= self.len()),
            "write out of bounds"
        );
        // SAFETY: the range lies inside the region (checked above), which stays mapped while
        // `self` lives; `src` is a distinct Rust slice, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_ptr().add(off), src.len()) }
    }

    /// Copies bytes at `off` out of the region into `dst`. Panics when out of bounds.
    fn read(&self, off: usize, dst: &mut [u8]) {
        assert!(
            off.checked_add(dst.len())
                .is_some_and(|end| end <= self.len()),
            "read out of bounds"
        );
        // SAFETY: as in `write`; the bytes may be concurrently written by a peer, which at worst
        // yields a torn copy of plain bytes, never invalid Rust values.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        }
    }

    /// The 8-byte word at `off` as an atomic (peers may update it with remote atomics).
    /// Panics when `off` is out of bounds or not 8-byte aligned.
    fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 8 <= self.len(),
            "atomic word out of bounds or misaligned"
        );
        // SAFETY: the word is inside the region, 8-byte aligned (regions are page aligned), and
        // lives as long as `&self`; all concurrent accessors use atomic instructions.
        unsafe { AtomicU64::from_ptr(self.as_ptr().add(off).cast::<u64>()) }
    }
}
