//! Leases: [`LeaseRequest`] (what a client asks for), [`Lease`] (what the scheduler keeps),
//! [`Grant`] (what the client gets back), and how a lease ends ([`EndReason`]).
//!
//! ```text
//! grant ──▶ Live ──renew (before its deadline)──▶ Live
//!            │
//!            ├─release──────────────▶ Ended(Released)
//!            ├─tick after deadline──▶ Ended(Expired)
//!            ├─a node of it dies────▶ Ended(NodeDead)
//!            └─a node deregisters───▶ Ended(Deregistered)
//! ```
//!
//! However a lease ends, every core and byte of every part goes back to its node.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::node::NodeId;
use super::placement::Policy;

/// A lease's id, unique for the scheduler's lifetime (and across restores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Cores in all.
    pub cores: u32,
    /// Bytes of memory per core (so a split request divides it with its cores).
    #[serde(default)]
    pub memory_per_core: u64,
    /// Where to place it.
    #[serde(default)]
    pub policy: Policy,
    /// Whether the cores may come from several nodes when no single node has them all.
    #[serde(default)]
    pub allow_split: bool,
    /// How long the lease lives without a renewal (`None`: the configured default; clamped to
    /// the configured maximum).
    #[serde(default)]
    pub ttl: Option<Duration>,
    /// Who asks, for logs and listings.
    #[serde(default)]
    pub client: String,
}

impl LeaseRequest {
    /// `cores` cores, no memory, packed, not split, default TTL.
    pub fn cores(cores: u32) -> LeaseRequest {
        LeaseRequest {
            cores,
            memory_per_core: 0,
            policy: Policy::Pack,
            allow_split: false,
            ttl: None,
            client: String::new(),
        }
    }
}

/// The share of a lease on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The node.
    pub node: NodeId,
    /// Cores there.
    pub cores: u32,
    /// Bytes of memory there.
    pub memory: u64,
}

/// How a lease ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "node", rename_all = "snake_case")]
pub enum EndReason {
    /// Its client released it.
    Released,
    /// Its TTL passed without a renewal.
    Expired,
    /// A node holding a part of it missed its heartbeats.
    NodeDead(String),
    /// A node holding a part of it deregistered.
    Deregistered(String),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Released => write!(f, "released"),
            EndReason::Expired => write!(f, "expired (not renewed within its TTL)"),
            EndReason::NodeDead(n) => write!(f, "node {n:?} died (missed heartbeats)"),
            EndReason::Deregistered(n) => write!(f, "node {n:?} deregistered"),
        }
    }
}

/// Where a lease is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Holding its cores.
    Live,
    /// Over; its cores went back.
    Ended(EndReason),
}

/// How the scheduler learnt of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// It granted it.
    Granted,
    /// An executor manager reported hosting it when it registered (restart recovery).
    Adopted,
}

/// A lease as the scheduler keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    /// Id.
    pub id: LeaseId,
    /// The secret the client proves it holds the lease with.
    pub(crate) token: String,
    /// Who holds it.
    pub client: String,
    /// Its parts (one per node; at least one).
    pub parts: Vec<Part>,
    /// Its TTL.
    pub ttl_ms: u64,
    /// When it was granted (or adopted).
    pub granted_at: Millis,
    /// When it ends unless renewed.
    pub expires_at: Millis,
    /// Its state.
    pub state: LeaseState,
    /// How the scheduler learnt of it.
    pub origin: Origin,
}

impl Lease {
    /// Cores in all.
    pub fn cores(&self) -> u32 {
        self.parts.iter().map(|p| p.cores).sum()
    }

    /// Memory in all.
    pub fn memory(&self) -> u64 {
        self.parts.iter().map(|p| p.memory).sum()
    }

    /// Its part on `node`, if any.
    pub fn part_on(&self, node: NodeId) -> Option<&Part> {
        self.parts.iter().find(|p| p.node == node)
    }
}

/// A lease's part as clients and listings see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartView {
    /// Node name.
    pub node: String,
    /// The node's executor-manager address.
    pub address: String,
    /// Cores there.
    pub cores: u32,
    /// Bytes of memory there.
    pub memory: u64,
}

/// What a granted client gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The lease.
    pub lease: LeaseId,
    /// Its token (to renew, release, and allocate on the executor managers).
    pub token: String,
    /// Where its cores are.
    pub parts: Vec<PartView>,
    /// Its TTL.
    pub ttl_ms: u64,
    /// When it ends unless renewed.
    pub expires_at: Millis,
}

/// A lease as listings show it (no token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    /// Id.
    pub id: LeaseId,
    /// Who holds it.
    pub client: String,
    /// Where its cores are.
    pub parts: Vec<PartView>,
    /// Its TTL.
    pub ttl_ms: u64,
    /// When it was granted.
    pub granted_at: Millis,
    /// When it ends unless renewed.
    pub expires_at: Millis,
    /// Its state.
    pub state: LeaseState,
    /// How the scheduler learnt of it.
    pub origin: Origin,
}
