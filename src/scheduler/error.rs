//! [`SchedError`]: why the scheduler refused a command.

use super::lease::{EndReason, LeaseId};

/// Why a command was refused. Each message says what to do or what is free.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// No executor manager of that name is registered.
    #[error("unknown node {0:?} (not registered, or deregistered)")]
    UnknownNode(String),
    /// The node missed its heartbeats and was marked dead; it must register again.
    #[error("node {0:?} was marked dead after missing heartbeats: register again")]
    NodeDead(String),
    /// The node is draining: it takes no new leases.
    #[error("node {0:?} is draining")]
    NodeDraining(String),
    /// No such lease (never granted, or ended long ago).
    #[error("unknown lease {0}")]
    UnknownLease(LeaseId),
    /// The lease ended (recently enough to be remembered).
    #[error("lease {lease} has ended: {reason}")]
    LeaseEnded {
        /// The lease.
        lease: LeaseId,
        /// How it ended.
        reason: EndReason,
    },
    /// The lease's TTL passed; it ends at the next tick and cannot be renewed.
    #[error("lease {0} has expired (its TTL passed without a renewal)")]
    LeaseExpired(LeaseId),
    /// The token does not match the lease's.
    #[error("wrong token for lease {0}")]
    WrongToken(LeaseId),
    /// Not enough free capacity for the request.
    #[error(
        "no capacity: {requested} cores requested{}, largest free {largest_free} on a node, {total_free} free in total{}",
        if *memory_per_core > 0 { format!(" ({memory_per_core} bytes of memory each)") } else { String::new() },
        if *split_allowed { "" } else { " (splitting over nodes not allowed)" }
    )]
    NoCapacity {
        /// Cores asked for.
        requested: u32,
        /// Memory asked for per core, in bytes.
        memory_per_core: u64,
        /// Most free cores on one node that takes leases.
        largest_free: u32,
        /// Free cores on all nodes that take leases.
        total_free: u64,
        /// Whether the request allowed a split.
        split_allowed: bool,
    },
    /// The command is malformed (zero cores, zero TTL, an inconsistent report, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A token could not be generated.
    #[error("cannot generate a lease token: {0}")]
    Token(String),
}
