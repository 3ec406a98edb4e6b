//! Executor managers as the scheduler knows them: [`NodeInfo`] (what one registers with),
//! [`Node`] (the registry entry) and [`NodeState`].
//!
//! ```text
//! register ──▶ Alive ──drain──▶ Draining ──resume──▶ Alive
//!                │                  │
//!                └──missed heartbeats (tick)──▶ Dead ──register──▶ Alive
//! deregister: from any state, the node is forgotten and its leases end
//! ```

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::lease::LeaseId;

/// A node's id, assigned at its first registration (registration order: the placement
/// tie-breaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeating; takes new leases.
    Alive,
    /// Heartbeating; keeps its leases, takes no new ones.
    Draining,
    /// Missed its heartbeats: its leases ended, its cores left the pool.
    Dead,
}

impl NodeState {
    /// The name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Draining => "draining",
            NodeState::Dead => "dead",
        }
    }
}

/// A lease an executor manager reports it hosts when it (re-)registers: how the scheduler
/// learns leases again after a restart without durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedLease {
    /// The lease.
    pub lease: LeaseId,
    /// Its token (the executor manager checks it on allocation, so it knows it).
    pub token: String,
    /// Cores it holds on this node.
    pub cores: u32,
    /// Bytes of memory it holds on this node.
    #[serde(default)]
    pub memory: u64,
    /// Who holds it, for logs.
    #[serde(default)]
    pub client: String,
}

/// What an executor manager registers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique name (the host name, usually).
    pub name: String,
    /// Where its HTTP API listens (`host:port`), passed on to clients in grants.
    pub address: String,
    /// Cores it rents out.
    pub cores: u32,
    /// Bytes of memory it rents out.
    pub memory: u64,
    /// Leases it hosts now (empty on a fresh start).
    #[serde(default)]
    pub hosted: Vec<HostedLease>,
}

/// A registered executor manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its HTTP address.
    pub address: String,
    /// Cores it rents out.
    pub cores_total: u32,
    /// Cores held by live leases (can exceed the total only after a node re-registered with
    /// fewer cores than its leases hold; free is then zero).
    pub cores_used: u32,
    /// Bytes of memory it rents out.
    pub memory_total: u64,
    /// Bytes held by live leases.
    pub memory_used: u64,
    /// When it last registered or heartbeated.
    pub last_heartbeat: Millis,
    /// When it first registered (this incarnation of the registry entry).
    pub registered_at: Millis,
    /// Its state.
    pub state: NodeState,
    /// Live leases with a part on this node (rebuilt from the leases on restore).
    #[serde(skip)]
    pub(crate) leases: BTreeSet<LeaseId>,
}

impl Node {
    /// Free cores (never more than the total).
    pub fn cores_free(&self) -> u32 {
        self.cores_total.saturating_sub(self.cores_used)
    }

    /// Free bytes of memory (never more than the total).
    pub fn memory_free(&self) -> u64 {
        self.memory_total.saturating_sub(self.memory_used)
    }

    /// Whether it takes new leases.
    pub fn schedulable(&self) -> bool {
        self.state == NodeState::Alive
    }

    /// Whether it is expected to heartbeat.
    pub fn heartbeating(&self) -> bool {
        self.state != NodeState::Dead
    }

    /// Live leases with a part here.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// What listings show.
    pub fn view(&self) -> NodeView {
        NodeView {
            id: self.id,
            name: self.name.clone(),
            address: self.address.clone(),
            state: self.state,
            cores_total: self.cores_total,
            cores_used: self.cores_used,
            cores_free: self.cores_free(),
            memory_total: self.memory_total,
            memory_used: self.memory_used,
            memory_free: self.memory_free(),
            last_heartbeat: self.last_heartbeat,
            leases: self.leases.len(),
        }
    }
}

/// A node as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Id.
    pub id: NodeId,
    /// Name.
    pub name: String,
    /// HTTP address.
    pub address: String,
    /// State.
    pub state: NodeState,
    /// Cores rented out.
    pub cores_total: u32,
    /// Cores held by leases.
    pub cores_used: u32,
    /// Cores free.
    pub cores_free: u32,
    /// Memory rented out (bytes).
    pub memory_total: u64,
    /// Memory held by leases.
    pub memory_used: u64,
    /// Memory free.
    pub memory_free: u64,
    /// Last registration or heartbeat.
    pub last_heartbeat: Millis,
    /// Live leases with a part here.
    pub leases: usize,
}
