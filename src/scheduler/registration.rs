//! Executor managers joining and leaving: [`Scheduler::register`] (with the reconciliation of
//! the leases a restarted node reports hosting), [`Scheduler::heartbeat`],
//! [`Scheduler::drain`] / [`Scheduler::resume`] and [`Scheduler::deregister`].

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::error::SchedError;
use super::event::Event;
use super::lease::{EndReason, Lease, LeaseId, LeaseState, Origin, Part};
use super::node::{Node, NodeId, NodeInfo, NodeState};
use super::state_machine::{Scheduler, MAX_NODE_NAME};
use super::token::token_matches;

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The node's id.
    pub node: NodeId,
    /// Whether it was unknown before.
    pub new: bool,
    /// Whether it had been marked dead (it is alive again).
    pub revived: bool,
    /// Hosted leases the scheduler did not know: now live, with [`Config::adopt_ttl_ms`](super::Config::adopt_ttl_ms).
    pub adopted: Vec<LeaseId>,
    /// Hosted leases it knew: their part on this node is at least what the node reports.
    pub confirmed: Vec<LeaseId>,
    /// Hosted leases that had already ended: the executor manager must stop them (their
    /// capacity is not counted).
    pub stale: Vec<(LeaseId, EndReason)>,
}

impl Scheduler {
    /// Registers an executor manager, or registers it again (idempotent: same name, same
    /// node; address and capacity are updated; a dead node comes back alive; a draining one
    /// stays draining). Leases it reports hosting are reconciled so that no core is counted
    /// twice: unknown ones are adopted, known ones keep at least the reported share, ended
    /// ones are returned as stale. All or nothing: an inconsistent report changes nothing.
    pub fn register(&mut self, info: NodeInfo, now: Millis) -> Result<Registered, SchedError> {
        if info.name.is_empty() || info.name.len() > MAX_NODE_NAME {
            return Err(SchedError::Invalid(format!(
                "node name must have 1 to {MAX_NODE_NAME} bytes"
            )));
        }
        if info.address.is_empty() {
            return Err(SchedError::Invalid(format!(
                "node {:?} has no address",
                info.name
            )));
        }
        if info.cores == 0 {
            return Err(SchedError::Invalid(format!(
                "node {:?} offers no cores",
                info.name
            )));
        }
        let mut seen = HashSet::new();
        for h in &info.hosted {
            if !seen.insert(h.lease) {
                return Err(SchedError::Invalid(format!(
                    "node {:?} reports lease {} twice",
                    info.name, h.lease
                )));
            }
            if h.cores == 0 {
                return Err(SchedError::Invalid(format!(
                    "node {:?} reports lease {} with no cores",
                    info.name, h.lease
                )));
            }
            if let Some(l) = self.leases.get(&h.lease) {
                if !token_matches(&l.token, &h.token) {
                    return Err(SchedError::Invalid(format!(
                        "node {:?} reports lease {} with a token that does not match",
                        info.name, h.lease
                    )));
                }
            }
        }

        let (id, new, revived) = match self.by_name.get(&info.name).copied() {
            Some(id) => {
                self.unindex(id);
                let n = self.nodes.get_mut(&id).expect("indexed node exists");
                let revived = n.state == NodeState::Dead;
                n.address = info.address;
                n.cores_total = info.cores;
                n.memory_total = info.memory;
                n.last_heartbeat = n.last_heartbeat.max(now);
                if revived {
                    n.state = NodeState::Alive;
                }
                (id, false, revived)
            }
            None => {
                let id = NodeId(self.next_node);
                self.next_node += 1;
                self.nodes.insert(
                    id,
                    Node {
                        id,
                        name: info.name.clone(),
                        address: info.address,
                        cores_total: info.cores,
                        cores_used: 0,
                        memory_total: info.memory,
                        memory_used: 0,
                        last_heartbeat: now,
                        registered_at: now,
                        state: NodeState::Alive,
                        leases: BTreeSet::new(),
                    },
                );
                self.by_name.insert(info.name, id);
                (id, true, false)
            }
        };

        let mut out = Registered {
            node: id,
            new,
            revived,
            adopted: Vec::new(),
            confirmed: Vec::new(),
            stale: Vec::new(),
        };
        self.touch_node(id);
        for h in info.hosted {
            let node = self.nodes.get_mut(&id).expect("node exists");
            if let Some(l) = self.leases.get_mut(&h.lease) {
                match l.parts.iter_mut().find(|p| p.node == id) {
                    Some(p) => {
                        let (dc, dm) = (
                            h.cores.saturating_sub(p.cores),
                            h.memory.saturating_sub(p.memory),
                        );
                        p.cores += dc;
                        p.memory += dm;
                        node.cores_used += dc;
                        node.memory_used += dm;
                    }
                    None => {
                        l.parts.push(Part {
                            node: id,
                            cores: h.cores,
                            memory: h.memory,
                        });
                        node.cores_used += h.cores;
                        node.memory_used += h.memory;
                        node.leases.insert(h.lease);
                    }
                }
                out.confirmed.push(h.lease);
                self.touch_lease(h.lease);
            } else if let Some(e) = self.ended_by_id.get(&h.lease) {
                let reason = match &e.view.state {
                    LeaseState::Ended(r) => r.clone(),
                    LeaseState::Live => EndReason::Released,
                };
                out.stale.push((h.lease, reason));
            } else {
                let expires_at = now.plus_ms(self.config.adopt_ttl_ms);
                node.cores_used += h.cores;
                node.memory_used += h.memory;
                node.leases.insert(h.lease);
                self.leases.insert(
                    h.lease,
                    Lease {
                        id: h.lease,
                        token: h.token,
                        client: h.client,
                        parts: vec![Part {
                            node: id,
                            cores: h.cores,
                            memory: h.memory,
                        }],
                        ttl_ms: self.config.adopt_ttl_ms,
                        granted_at: now,
                        expires_at,
                        state: LeaseState::Live,
                        origin: Origin::Adopted,
                    },
                );
                self.deadlines.insert((expires_at, h.lease));
                self.next_lease = self.next_lease.max(h.lease.0.saturating_add(1));
                self.counters.adoptions += 1;
                out.adopted.push(h.lease);
                self.touch_lease(h.lease);
            }
        }
        self.reindex(id);
        Ok(out)
    }

    /// A node is alive at `now`.
    pub fn heartbeat(&mut self, node: &str, now: Millis) -> Result<(), SchedError> {
        let id = self.node_id(node)?;
        let n = &self.nodes[&id];
        if n.state == NodeState::Dead {
            return Err(SchedError::NodeDead(node.to_string()));
        }
        if now > n.last_heartbeat {
            self.heartbeats.remove(&(n.last_heartbeat, id));
            self.heartbeats.insert((now, id));
            self.nodes.get_mut(&id).expect("node exists").last_heartbeat = now;
        }
        Ok(())
    }

    pub(super) fn set_state(&mut self, node: &str, to: NodeState) -> Result<(), SchedError> {
        let id = self.node_id(node)?;
        if self.nodes[&id].state == NodeState::Dead {
            return Err(SchedError::NodeDead(node.to_string()));
        }
        self.unindex(id);
        self.nodes.get_mut(&id).expect("node exists").state = to;
        self.reindex(id);
        self.touch_node(id);
        Ok(())
    }

    /// The node takes no new leases; the ones it has continue (idempotent).
    pub fn drain(&mut self, node: &str) -> Result<(), SchedError> {
        self.set_state(node, NodeState::Draining)
    }

    /// A draining node takes new leases again (idempotent).
    pub fn resume(&mut self, node: &str) -> Result<(), SchedError> {
        self.set_state(node, NodeState::Alive)
    }

    /// Forgets a node; its leases end ([`EndReason::Deregistered`]) and are returned as events.
    pub fn deregister(&mut self, node: &str) -> Result<Vec<Event>, SchedError> {
        let id = self.node_id(node)?;
        let reason = EndReason::Deregistered(node.to_string());
        let mut events = Vec::new();
        self.end_node_leases(id, &reason, &mut events);
        self.unindex(id);
        self.nodes.remove(&id);
        self.by_name.remove(node);
        self.touch_node(id);
        Ok(events)
    }
}
