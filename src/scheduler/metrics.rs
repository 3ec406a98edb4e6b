//! [`Metrics`]: a snapshot of the scheduler's gauges and counters.

use serde::{Deserialize, Serialize};

/// Things counted since the scheduler was created (kept across snapshots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Leases granted.
    pub grants: u64,
    /// Grants refused (no capacity, invalid).
    pub rejections: u64,
    /// Renewals accepted.
    pub renewals: u64,
    /// Leases released by their client.
    pub releases: u64,
    /// Leases that expired.
    pub expiries: u64,
    /// Leases ended by a node's death or deregistration.
    pub node_losses: u64,
    /// Nodes marked dead.
    pub node_deaths: u64,
    /// Leases adopted from re-registering nodes.
    pub adoptions: u64,
}

/// Gauges and counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Nodes taking leases.
    pub nodes_alive: u64,
    /// Nodes draining.
    pub nodes_draining: u64,
    /// Nodes marked dead (still listed).
    pub nodes_dead: u64,
    /// Cores on alive and draining nodes.
    pub cores_total: u64,
    /// Cores held by live leases.
    pub cores_used: u64,
    /// Free cores on alive and draining nodes.
    pub cores_free: u64,
    /// Free cores that can be granted (alive nodes only).
    pub cores_grantable: u64,
    /// Memory on alive and draining nodes (bytes).
    pub memory_total: u64,
    /// Memory held by live leases.
    pub memory_used: u64,
    /// Free memory on alive and draining nodes.
    pub memory_free: u64,
    /// Live leases.
    pub leases_live: u64,
    /// Counters.
    pub counters: Counters,
}
