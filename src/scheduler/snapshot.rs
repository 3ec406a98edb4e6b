//! Persistence: the whole state as a [`Snapshot`] ([`Scheduler::snapshot`]) and back
//! ([`Scheduler::from_snapshot`]), for the resource manager's durable state file.

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::error::SchedError;
use super::lease::{Lease, LeaseState};
use super::metrics::Counters;
use super::node::{Node, NodeId, NodeState};
use super::state_machine::{Config, EndedLease, Scheduler};
use super::token::TokenSource;

/// The whole state, for persistence ([`Scheduler::snapshot`], [`Scheduler::from_snapshot`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken (times in it are relative to the clock of that process).
    pub taken_at: Millis,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Live leases.
    pub leases: Vec<Lease>,
    /// Recently ended leases, oldest first.
    pub ended: Vec<EndedLease>,
    /// Next node id.
    pub next_node: u32,
    /// Next lease id.
    pub next_lease: u64,
    /// Counters.
    pub counters: Counters,
}

impl Scheduler {
    /// The whole state at `now`, to persist.
    pub fn snapshot(&self, now: Millis) -> Snapshot {
        let mut nodes: Vec<Node> = self.nodes.values().cloned().collect();
        nodes.sort_unstable_by_key(|n| n.id);
        let mut leases: Vec<Lease> = self.leases.values().cloned().collect();
        leases.sort_unstable_by_key(|l| l.id);
        Snapshot {
            taken_at: now,
            nodes,
            leases,
            ended: self
                .ended
                .iter()
                .filter_map(|id| self.ended_by_id.get(id).cloned())
                .collect(),
            next_node: self.next_node,
            next_lease: self.next_lease,
            counters: self.counters,
        }
    }

    /// Restores a snapshot in a process whose clock reads `now`: leases keep the time they
    /// had left when it was taken (the downtime is not held against them), nodes get a full
    /// heartbeat timeout to show up. Usage is recomputed from the leases, not trusted.
    pub fn from_snapshot(
        config: Config,
        tokens: TokenSource,
        snap: Snapshot,
        now: Millis,
    ) -> Result<Scheduler, SchedError> {
        let rebase = |t: Millis| Millis(now.0.saturating_sub(snap.taken_at.0.saturating_sub(t.0)));
        let mut s = Scheduler::with_tokens(config, tokens);
        s.counters = snap.counters;
        s.next_node = snap.next_node;
        s.next_lease = s.next_lease.max(snap.next_lease);
        for mut n in snap.nodes {
            if s.nodes.contains_key(&n.id) || s.by_name.contains_key(&n.name) {
                return Err(SchedError::Invalid(format!(
                    "snapshot lists node {:?} twice",
                    n.name
                )));
            }
            n.cores_used = 0;
            n.memory_used = 0;
            n.leases.clear();
            n.registered_at = rebase(n.registered_at);
            n.last_heartbeat = now;
            s.next_node = s.next_node.max(n.id.0.saturating_add(1));
            s.by_name.insert(n.name.clone(), n.id);
            s.nodes.insert(n.id, n);
        }
        for mut l in snap.leases {
            if l.parts.is_empty() || s.leases.contains_key(&l.id) {
                return Err(SchedError::Invalid(format!(
                    "snapshot lease {} is empty or listed twice",
                    l.id
                )));
            }
            for p in &l.parts {
                let n = s.nodes.get_mut(&p.node).ok_or_else(|| {
                    SchedError::Invalid(format!("snapshot lease {} is on an unknown node", l.id))
                })?;
                if n.state == NodeState::Dead || !n.leases.insert(l.id) {
                    return Err(SchedError::Invalid(format!(
                        "snapshot lease {} is on dead node {:?} or twice on one node",
                        l.id, n.name
                    )));
                }
                n.cores_used += p.cores;
                n.memory_used += p.memory;
            }
            l.state = LeaseState::Live;
            l.granted_at = rebase(l.granted_at);
            l.expires_at = now.plus_ms(l.expires_at.0.saturating_sub(snap.taken_at.0));
            s.next_lease = s.next_lease.max(l.id.0.saturating_add(1));
            s.deadlines.insert((l.expires_at, l.id));
            s.leases.insert(l.id, l);
        }
        for e in snap.ended {
            let id = e.view.id;
            if s.leases.contains_key(&id) || s.ended_by_id.contains_key(&id) {
                continue;
            }
            s.next_lease = s.next_lease.max(id.0.saturating_add(1));
            s.ended.push_back(id);
            s.ended_by_id.insert(id, e);
        }
        let ids: Vec<NodeId> = s.nodes.keys().copied().collect();
        for id in ids {
            s.reindex(id);
        }
        Ok(s)
    }
}
