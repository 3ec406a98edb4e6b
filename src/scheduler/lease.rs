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

/// How a lease ended. In JSON (the API) `{"kind": "node_dead", "node": "a"}`; in compact
/// binary formats (the resource manager's log and snapshot, `postcard`, which cannot read
/// adjacently tagged enums) a plain variant index and its node.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// [`EndReason`] in human-readable formats.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", content = "node", rename_all = "snake_case")]
enum TaggedReason {
    Released,
    Expired,
    NodeDead(String),
    Deregistered(String),
}

/// [`EndReason`] in compact formats.
#[derive(Serialize, Deserialize)]
enum CompactReason {
    Released,
    Expired,
    NodeDead(String),
    Deregistered(String),
}

impl Serialize for EndReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (tagged, compact) = match self.clone() {
            EndReason::Released => (TaggedReason::Released, CompactReason::Released),
            EndReason::Expired => (TaggedReason::Expired, CompactReason::Expired),
            EndReason::NodeDead(n) => (
                TaggedReason::NodeDead(n.clone()),
                CompactReason::NodeDead(n),
            ),
            EndReason::Deregistered(n) => (
                TaggedReason::Deregistered(n.clone()),
                CompactReason::Deregistered(n),
            ),
        };
        if s.is_human_readable() {
            tagged.serialize(s)
        } else {
            compact.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for EndReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(if d.is_human_readable() {
            match TaggedReason::deserialize(d)? {
                TaggedReason::Released => EndReason::Released,
                TaggedReason::Expired => EndReason::Expired,
                TaggedReason::NodeDead(n) => EndReason::NodeDead(n),
                TaggedReason::Deregistered(n) => EndReason::Deregistered(n),
            }
        } else {
            match CompactReason::deserialize(d)? {
                CompactReason::Released => EndReason::Released,
                CompactReason::Expired => EndReason::Expired,
                CompactReason::NodeDead(n) => EndReason::NodeDead(n),
                CompactReason::Deregistered(n) => EndReason::Deregistered(n),
            }
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> [EndReason; 4] {
        [
            EndReason::Released,
            EndReason::Expired,
            EndReason::NodeDead("a".into()),
            EndReason::Deregistered("b".into()),
        ]
    }

    #[test]
    fn end_reasons_are_tagged_in_json_and_compact_in_postcard() {
        let json: Vec<String> = all()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(
            json,
            [
                r#"{"kind":"released"}"#,
                r#"{"kind":"expired"}"#,
                r#"{"kind":"node_dead","node":"a"}"#,
                r#"{"kind":"deregistered","node":"b"}"#,
            ]
        );
        for (r, j) in all().into_iter().zip(&json) {
            assert_eq!(serde_json::from_str::<EndReason>(j).unwrap(), r);
            let bytes = postcard::to_stdvec(&r).unwrap();
            assert_eq!(postcard::from_bytes::<EndReason>(&bytes).unwrap(), r);
        }
        // Variant index, then the node's name: a byte, or two and the name.
        assert_eq!(postcard::to_stdvec(&EndReason::Expired).unwrap(), [1]);
        assert_eq!(
            postcard::to_stdvec(&EndReason::NodeDead("a".into())).unwrap(),
            [2, 1, b'a']
        );
    }
}
