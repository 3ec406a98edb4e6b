//! The resource manager's scheduler: executor managers and leases as pure state machines.
//!
//! No sockets, no threads, no clock (the quinn-proto style of shared/DESIGN.md §12): the
//! resource manager's HTTP layer turns requests into commands on a [`Scheduler`], passes the
//! time in as [`Millis`], calls [`Scheduler::tick`] periodically and acts on the [`Event`]s
//! (stop the executors of ended leases). Everything here is unit-tested without I/O.
//!
//! What the original rFaaS resource manager got wrong, and what this one guarantees instead
//! (shared/REFERENCE-rfaas.md §5):
//!
//! * **Capacity always returns**, however a lease ends: release, expiry (leases have a TTL and
//!   are renewed), death of a node (missed heartbeats), deregistration. No core is ever counted
//!   in two leases, and free never exceeds total ([`Scheduler::check_invariants`]).
//! * **Nodes have a life**: [`NodeState`] Alive → Draining (no new leases) → Dead (missed
//!   heartbeats); deregistration never fails on a known node.
//! * **Restart without loss**: the state serialises ([`Scheduler::snapshot`],
//!   [`Scheduler::from_snapshot`]), and executor managers re-registering with the leases they
//!   host ([`NodeInfo::hosted`]) are reconciled so that no core is granted twice.
//! * **Placement** by [`Policy`] (pack or spread), honouring cores and memory, optionally split
//!   over several nodes, in O(log n) per grant ([`placement`]).
//!
//! ```
//! use rfaas::scheduler::{Config, LeaseRequest, Millis, NodeInfo, Scheduler};
//!
//! let mut s = Scheduler::new(Config::default());
//! let node = |name: &str| NodeInfo {
//!     name: name.into(), address: format!("{name}:10000"), cores: 4, memory: 1 << 30,
//!     hosted: vec![],
//! };
//! s.register(node("n1"), Millis(0)).unwrap();
//! let g = s.grant(LeaseRequest::cores(3), Millis(1)).unwrap();
//! assert_eq!(g.parts[0].node, "n1");
//! let err = s.grant(LeaseRequest::cores(2), Millis(2)).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "no capacity: 2 cores requested, largest free 1 on a node, 1 free in total \
//!      (splitting over nodes not allowed)"
//! );
//! s.release(g.lease, &g.token).unwrap();
//! assert_eq!(s.metrics().cores_free, 4);
//! ```

pub mod bench;
pub mod clock;
pub mod error;
pub mod event;
pub mod journal;
pub mod lease;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod state_machine;
pub mod token;

mod expiry;
mod invariants;
mod leasing;
mod queries;
pub mod registration;
pub mod snapshot;

#[cfg(test)]
mod tests;

pub use clock::Millis;
pub use error::SchedError;
pub use event::{Ended, Event};
pub use journal::{Change, Image, Meta};
pub use lease::{
    EndReason, Grant, Lease, LeaseId, LeaseRequest, LeaseState, LeaseView, Origin, Part, PartView,
};
pub use metrics::{Counters, Metrics};
pub use node::{HostedLease, Node, NodeId, NodeInfo, NodeState, NodeView};
pub use placement::Policy;
pub use registration::Registered;
pub use snapshot::{Snapshot, SnapshotView};
pub use state_machine::{Config, EndedLease, Scheduler};
pub use token::TokenSource;
