//! [`Scheduler`]: the resource manager's registry of executor managers and leases, as one
//! state machine.
//!
//! Commands ([`register`](Scheduler::register), [`heartbeat`](Scheduler::heartbeat),
//! [`drain`](Scheduler::drain), [`deregister`](Scheduler::deregister),
//! [`grant`](Scheduler::grant), [`renew`](Scheduler::renew), [`release`](Scheduler::release))
//! and the passage of time ([`tick`](Scheduler::tick)) change it; what the caller must act on
//! (stop executors of ended leases, tell clients) comes back as values and [`Event`]s. No I/O,
//! no clock: `now` is passed in.
//!
//! This file holds the state itself and how a lease ends (its capacity goes back); the
//! commands live in one file each, as `impl Scheduler` blocks:
//!
//! | file | what |
//! |---|---|
//! | [`registration.rs`](super::registration) | register (and reconcile hosted leases), heartbeat, drain, resume, deregister |
//! | `leasing.rs` | grant, renew, release, lease tokens |
//! | `expiry.rs` | `tick` (a lease expires, a node dies) and `next_deadline` |
//! | `queries.rs` | views of nodes and leases, metrics |
//! | [`snapshot.rs`](super::snapshot) | the durable state and restore |
//! | `invariants.rs` | `check_invariants` |
//!
//! # Invariants (checked by [`Scheduler::check_invariants`])
//!
//! * On every node, the cores and memory used are exactly the sum of the parts of the live
//!   leases on it, and free = total − used (zero if a node came back smaller than its leases):
//!   no core is counted in two leases and free never exceeds total.
//! * However a lease ends (release, expiry, node death, deregistration), every part goes back
//!   to its node at once.
//! * Only alive nodes are in the placement index, each with its current free cores; a lease
//!   never has a part on a dead node.
//!
//! # Cost
//!
//! Grant is O(parts · log n) (a range query on the free-core index, see
//! [`super::placement`]), plus a token; renew and release are O(parts · log n); `tick` is
//! O((expired + dead) · log n). A node whose memory is too short for a request is skipped,
//! so a memory-bound request can walk more nodes.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::error::SchedError;
use super::event::{Ended, Event};
use super::journal::Marks;
use super::lease::{EndReason, Lease, LeaseId, LeaseState, LeaseView};
use super::metrics::Counters;
use super::node::{Node, NodeId};
use super::placement::FreeIndex;
use super::token::TokenSource;

/// Longest node name accepted.
pub const MAX_NODE_NAME: usize = 255;

/// Tunables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A node not heard of for longer than this is marked dead at the next tick.
    pub heartbeat_timeout_ms: u64,
    /// TTL of a lease whose request names none.
    pub default_ttl_ms: u64,
    /// Longest TTL granted (longer requests are clamped).
    pub max_ttl_ms: u64,
    /// TTL of a lease adopted from a re-registering node (its client must renew within it).
    pub adopt_ttl_ms: u64,
    /// Most nodes one split request is spread over.
    pub max_split_parts: usize,
    /// Ended leases remembered (for "lease N has ended: expired" answers).
    pub keep_ended: usize,
    /// The first lease id (a restarted resource manager without durable state should start
    /// above every id it may have granted before, e.g. from the wall clock).
    pub first_lease_id: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_timeout_ms: 10_000,
            default_ttl_ms: 60_000,
            max_ttl_ms: 24 * 3_600_000,
            adopt_ttl_ms: 60_000,
            max_split_parts: 64,
            keep_ended: 10_000,
            first_lease_id: 1,
        }
    }
}

/// An ended lease as remembered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndedLease {
    /// What listings show.
    pub view: LeaseView,
    pub(super) token: String,
}

/// The registry of executor managers and leases.
#[derive(Debug)]
pub struct Scheduler {
    pub(super) config: Config,
    pub(super) tokens: TokenSource,
    pub(super) nodes: HashMap<NodeId, Node>,
    pub(super) by_name: HashMap<String, NodeId>,
    pub(super) next_node: u32,
    pub(super) free: FreeIndex,
    pub(super) heartbeats: BTreeSet<(Millis, NodeId)>,
    pub(super) leases: HashMap<LeaseId, Lease>,
    pub(super) deadlines: BTreeSet<(Millis, LeaseId)>,
    pub(super) next_lease: u64,
    pub(super) ended: VecDeque<LeaseId>,
    pub(super) ended_by_id: HashMap<LeaseId, EndedLease>,
    pub(super) counters: Counters,
    /// What commands touched, when the journal is on ([`super::journal`]).
    pub(super) marks: Option<Marks>,
}

impl Scheduler {
    /// An empty scheduler with random tokens.
    pub fn new(config: Config) -> Scheduler {
        Scheduler::with_tokens(config, TokenSource::Random)
    }

    /// An empty scheduler taking tokens from `tokens`.
    pub fn with_tokens(config: Config, tokens: TokenSource) -> Scheduler {
        Scheduler {
            next_lease: config.first_lease_id.max(1),
            config,
            tokens,
            nodes: HashMap::new(),
            by_name: HashMap::new(),
            next_node: 0,
            free: FreeIndex::default(),
            heartbeats: BTreeSet::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            ended: VecDeque::new(),
            ended_by_id: HashMap::new(),
            counters: Counters::default(),
            marks: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(super) fn node_id(&self, name: &str) -> Result<NodeId, SchedError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| SchedError::UnknownNode(name.to_string()))
    }

    /// Takes a node out of the indexes (before changing its usage, state or heartbeat).
    pub(super) fn unindex(&mut self, id: NodeId) {
        let n = &self.nodes[&id];
        if n.schedulable() {
            self.free.remove(id, n.cores_free());
        }
        if n.heartbeating() {
            self.heartbeats.remove(&(n.last_heartbeat, id));
        }
    }

    /// Puts a node back in the indexes its state calls for.
    pub(super) fn reindex(&mut self, id: NodeId) {
        let n = &self.nodes[&id];
        if n.schedulable() {
            self.free.insert(id, n.cores_free());
        }
        if n.heartbeating() {
            self.heartbeats.insert((n.last_heartbeat, id));
        }
    }

    pub(super) fn end_node_leases(
        &mut self,
        id: NodeId,
        reason: &EndReason,
        events: &mut Vec<Event>,
    ) {
        let held: Vec<LeaseId> = self.nodes[&id].leases.iter().copied().collect();
        for l in held {
            if let Some(e) = self.end_lease(l, reason.clone()) {
                events.push(Event::LeaseEnded(e));
            }
        }
    }

    /// Ends a live lease: every part goes back to its node; remembered as ended.
    pub(super) fn end_lease(&mut self, id: LeaseId, reason: EndReason) -> Option<Ended> {
        let mut lease = self.leases.remove(&id)?;
        self.touch_lease(id);
        self.deadlines.remove(&(lease.expires_at, id));
        for p in &lease.parts {
            let Some(n) = self.nodes.get(&p.node) else {
                continue;
            };
            if n.schedulable() {
                self.free.remove(p.node, n.cores_free());
            }
            let n = self.nodes.get_mut(&p.node).expect("node exists");
            debug_assert!(n.cores_used >= p.cores && n.memory_used >= p.memory);
            n.cores_used = n.cores_used.saturating_sub(p.cores);
            n.memory_used = n.memory_used.saturating_sub(p.memory);
            n.leases.remove(&id);
            if n.schedulable() {
                self.free.insert(p.node, n.cores_free());
            }
        }
        match &reason {
            EndReason::Released => self.counters.releases += 1,
            EndReason::Expired => self.counters.expiries += 1,
            EndReason::NodeDead(_) | EndReason::Deregistered(_) => self.counters.node_losses += 1,
        }
        lease.state = LeaseState::Ended(reason.clone());
        let view = self.lease_view(&lease);
        let ended = Ended {
            lease: id,
            client: lease.client.clone(),
            reason,
            parts: view.parts.clone(),
        };
        if self.config.keep_ended > 0 {
            while self.ended.len() >= self.config.keep_ended {
                if let Some(old) = self.ended.pop_front() {
                    self.ended_by_id.remove(&old);
                }
            }
            self.ended.push_back(id);
            self.ended_by_id.insert(
                id,
                EndedLease {
                    view,
                    token: lease.token,
                },
            );
        }
        Some(ended)
    }
}
