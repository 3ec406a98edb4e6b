//! The `tcp` provider: RDMA semantics over one TCP stream per queue pair, between nodes that
//! have no RDMA device (or on one node, when shared memory is not allowed).
//!
//! # How it works
//!
//! * **Domain** ([`TcpFabric`]): a table of registered regions (keys, bounds, rights; memory is
//!   private to this process) and one progress thread.
//! * **Connection**: a TCP stream with `TCP_NODELAY`. The handshake carries magic and version,
//!   queue pair numbers, queue sizes, the RNR timer and up to
//!   [`MAX_PRIVATE_DATA`](crate::rdma::MAX_PRIVATE_DATA) bytes of private data each way
//!   (`wire.rs`). The passive side runs each handshake on its own
//!   short-lived thread with a deadline, so a peer that stalls or sends garbage is logged and
//!   dropped while others are served (`listener.rs`).
//! * **Initiator**: `post_send` checks the local SGE against the region table, then writes one
//!   frame (32-byte header, then payload straight from the region) from the caller's thread,
//!   under a per-queue-pair send lock. Writes and sends complete when the target acknowledges
//!   them (piggybacked on whatever it sends back, or an explicit ACK), reads and atomics when
//!   their answer arrives.
//! * **Target**: whoever holds a stream's reader applies its frames directly to registered
//!   memory after checking key, bounds and rights (`rx.rs`): writes land in the region, atomics
//!   are CPU atomics on it, reads are answered from it, write-with-immediate and send consume a
//!   posted receive and push a receive completion. Failures answer with a NAK (the initiator's
//!   request completes with `RemoteAccess`, `RnrRetryExceeded`, ...) and move both sides to the
//!   error state, where everything posted flushes.
//! * **Progress** (`progress.rs`): the domain's progress thread reads any stream that turns
//!   readable, so one-sided operations land without the target application. When an
//!   application busy-polls a CQ, [`TcpCq::poll`](crate::rdma::CompletionQueue::poll) reads
//!   that CQ's streams itself (hybrid progress; `cq.rs`), and the progress thread steps aside
//!   until the polling stops or the application arms the CQ to block.
//! * **Completion queues** are the shared `CqCore` (`cq_core.rs`) plus an overflow
//!   list; blocking uses its [`Notifier`](crate::rdma::notify::Notifier) (arm, re-poll, wait).
//!
//! See `qp.rs` for the lock order and `domain.rs` for the rule that keeps region memory mapped
//! while the progress thread may still write into it.
//!
//! # Semantics worth knowing
//!
//! * A signaled write, write-with-immediate or send completes when the target has applied it
//!   (its acknowledgement arrived), as on verbs, not merely when the bytes reached the kernel:
//!   that is what lets a refused write complete with `RemoteAccess` exactly once. A busy-polling
//!   peer holds its acknowledgement back for up to 50 µs so that its reply carries it; ping-pong
//!   traffic therefore sends no extra frames.
//! * Frames of one queue pair are applied in order. A write-with-immediate or send that finds
//!   no receive posted holds everything behind it on that stream (acknowledgements and answers
//!   for the other direction included) until a receive is posted or the initiator's RNR timer
//!   runs out.
//! * A zero-length write or write-with-immediate touches no memory and checks no key.
//! * Every error completion moves the queue pair to the error state, and the peer's with it (the
//!   stream is shut down).
//! * An answer (read, atomic) is sent by the thread that read the request, under the queue
//!   pair's send lock; a poster blocked in a large send on a full socket delays it, at most by
//!   the send timeout (`QpTimeouts::response`).

mod cq;
mod domain;
mod listener;
mod mr;
mod progress;
mod qp;
mod rx;
mod wire;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use cq::{TcpCq, HYBRID_MAX_QPS};
pub use listener::{TcpListener, TcpRequest, HANDSHAKE_TIMEOUT};
pub use mr::TcpMr;
pub use qp::TcpQp;

use super::error::Result;
use super::provider::Provider;
use domain::Domain;

/// A domain of the tcp provider: registered memory, completion queues and connections, plus
/// the progress thread that serves peers' one-sided operations. Cheap to clone (all clones are
/// the same domain); the progress thread stops when the domain and everything made from it is
/// dropped.
#[derive(Clone, Debug)]
pub struct TcpFabric {
    dom: Arc<Domain>,
}

impl TcpFabric {
    /// Opens a domain and starts its progress thread.
    pub fn new() -> Result<TcpFabric> {
        Ok(TcpFabric {
            dom: Domain::new()?,
        })
    }
}

crate::rdma::fabric_impl::impl_fabric!(TcpFabric {
    provider: Provider::Tcp,
    domain: dom,
    Mr: TcpMr = |dom: &Arc<Domain>, len, access| TcpMr::new(Arc::clone(dom), len, access),
    Cq: TcpCq = |_, depth| TcpCq::new(depth),
    Listener: TcpListener = TcpListener::bind,
    Request: TcpRequest,
    Qp: TcpQp = listener::connect,
});
