//! Messages of the resource manager's HTTP API (`rfaas resource-manager`, see
//! [`crate::resource_manager`] for curl examples).
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | `POST` | `/v1/nodes` | [`RegisterRequest`] → 201 (new) / 200 [`RegisterResponse`] |
//! | `POST` | `/v1/nodes/{name}/heartbeat` | → [`NodeView`] |
//! | `POST` | `/v1/nodes/{name}/drain` | → [`NodeView`] |
//! | `POST` | `/v1/nodes/{name}/resume` | → [`NodeView`] |
//! | `DELETE` | `/v1/nodes/{name}` | → [`DeregisterResponse`] |
//! | `GET` | `/v1/nodes` | → [`NodeList`] |
//! | `POST` | `/v1/leases` | [`GrantRequest`] → 201 [`GrantResponse`] |
//! | `GET` | `/v1/leases` | → [`LeaseList`] (`?ended=true`: recently ended ones too; `?node=NAME`: those with a part there) |
//! | `GET` | `/v1/leases/{id}` | → [`LeaseView`] (live or recently ended; header [`LEASE_TOKEN_HEADER`]: 403 unless it is a live lease's token) |
//! | `POST` | `/v1/leases/{id}/renew` | [`TokenBody`] → [`RenewResponse`] |
//! | `DELETE` | `/v1/leases/{id}` | [`TokenBody`] or header [`LEASE_TOKEN_HEADER`] → [`ReleaseResponse`] |
//! | `GET` | `/v1/metrics` | → [`MetricsResponse`] |
//! | `GET` | `/v1/health` | → `{"ok":true}` (no authentication) |
//!
//! Every route but `/v1/health` needs `Authorization: Bearer <cluster secret>`. Errors are
//! [`ApiError`](super::executor_manager_api::ApiError) bodies: 400 malformed (bad JSON, a missing field, zero
//! cores), 401 no or wrong secret, 403 wrong lease token, 404 unknown node, lease or route,
//! 408 body too slow, 409 node dead or draining (register again / resume), 410 lease ended or
//! expired, 413 body over 64 KiB, 503 no capacity (the message says what is free), 500 the
//! change could not be saved to the state file.
//!
//! Times named `*_ms` without `unix` are milliseconds on the resource manager's monotonic clock
//! (listings carry `now_ms` to compare with); `*_unix_ms` are wall-clock milliseconds since the
//! Unix epoch.

use serde::{Deserialize, Serialize};

pub use crate::scheduler::{
    EndReason, HostedLease, LeaseId, LeaseView, Metrics, NodeId, NodeView, PartView, Policy,
};

/// Header that may carry a lease token on `DELETE /v1/leases/{id}` (instead of a body).
pub const LEASE_TOKEN_HEADER: &str = "x-rfaas-lease-token";

/// An executor manager registers (or registers again, idempotently). Every field is checked
/// ([`crate::control::registration`]); unknown fields are refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Unique node name.
    pub name: String,
    /// The executor manager's HTTP address (`host:port`), passed on to clients in grants.
    pub address: String,
    /// Cores it rents out.
    pub cores: u32,
    /// Bytes of memory it rents out (0: memory is not accounted).
    #[serde(default)]
    pub memory: u64,
    /// Leases it hosts now (after a restart of either side); empty on a fresh start.
    #[serde(default)]
    pub hosted: Vec<HostedLease>,
}

/// A hosted lease the resource manager knows as ended: its executors must be stopped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StaleLease {
    /// The lease.
    pub lease: LeaseId,
    /// How it ended.
    pub reason: EndReason,
}

/// What a registration did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegisterResponse {
    /// The node as registered.
    pub node: NodeView,
    /// It was unknown before.
    pub new: bool,
    /// It had been marked dead and is alive again.
    pub revived: bool,
    /// Hosted leases adopted (unknown to the resource manager; their clients must renew).
    pub adopted: Vec<LeaseId>,
    /// Hosted leases it knew.
    pub confirmed: Vec<LeaseId>,
    /// Hosted leases that had ended: stop them.
    pub stale: Vec<StaleLease>,
    /// Heartbeat at least this often.
    pub heartbeat_interval_ms: u64,
    /// A node not heard of for this long is marked dead and its leases end.
    pub heartbeat_timeout_ms: u64,
}

/// Answer to a deregistration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeregisterResponse {
    /// The node forgotten.
    pub node: String,
    /// Its leases, now ended.
    pub ended: Vec<LeaseId>,
}

/// Every node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeList {
    /// The resource manager's clock now.
    pub now_ms: u64,
    /// Nodes in registration order.
    pub nodes: Vec<NodeView>,
}

/// A client asks for cores. Unknown fields are refused (a typo is not silently ignored).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Cores in all (at least 1).
    pub cores: u32,
    /// Bytes of memory per core.
    #[serde(default)]
    pub memory_per_core: u64,
    /// `pack` (fullest node that fits first, the default) or `spread` (emptiest first).
    #[serde(default)]
    pub policy: Policy,
    /// Whether the cores may come from several nodes when no single node has them all.
    #[serde(default)]
    pub allow_split: bool,
    /// Lifetime without renewal (default and maximum: the resource manager's configuration).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// Who asks, for logs and listings.
    #[serde(default)]
    pub client: String,
}

/// A granted lease.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantResponse {
    /// The lease.
    pub lease: LeaseId,
    /// Its token: to renew and release it, and to allocate on the executor managers.
    pub token: String,
    /// Where its cores are (node, executor-manager address, cores, memory).
    pub parts: Vec<PartView>,
    /// Its TTL: renew well within it.
    pub ttl_ms: u64,
    /// Time left until it ends unless renewed.
    pub expires_in_ms: u64,
    /// When it ends unless renewed (wall clock).
    pub expires_at_unix_ms: u64,
}

/// A lease token, for renew and release.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenBody {
    /// The token the grant returned.
    pub token: String,
}

/// Answer to a renewal.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenewResponse {
    /// The lease.
    pub lease: LeaseId,
    /// Its TTL.
    pub ttl_ms: u64,
    /// Time left until it ends unless renewed again.
    pub expires_in_ms: u64,
    /// When it ends unless renewed again (wall clock).
    pub expires_at_unix_ms: u64,
}

/// Answer to a release.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseResponse {
    /// The lease, now ended.
    pub lease: LeaseId,
    /// The capacity that went back.
    pub parts: Vec<PartView>,
}

/// Live (and optionally recently ended) leases.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseList {
    /// The resource manager's clock now.
    pub now_ms: u64,
    /// Live leases by id.
    pub leases: Vec<LeaseView>,
    /// Recently ended leases, oldest first (only with `?ended=true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<LeaseView>,
}

/// Gauges and counters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MetricsResponse {
    /// The scheduler's gauges (nodes, cores, memory, leases) and counters (grants,
    /// rejections, renewals, releases, expiries, node losses and deaths, adoptions).
    #[serde(flatten)]
    pub scheduler: Metrics,
    /// Since this process started.
    pub uptime_ms: u64,
    /// State-file writes that succeeded since this process started.
    pub snapshots_written: u64,
    /// State-file writes that failed since this process started.
    pub snapshot_errors: u64,
}
