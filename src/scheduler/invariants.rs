//! [`Scheduler::check_invariants`]: the invariants of the module docs of
//! [`super::state_machine`], checked in O(nodes + leases).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::lease::{LeaseId, LeaseState};
use super::node::{NodeId, NodeState};
use super::state_machine::Scheduler;

impl Scheduler {
    /// Checks every invariant (O(nodes + leases)); the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut used: HashMap<NodeId, (u32, u64, BTreeSet<LeaseId>)> = HashMap::new();
        for (id, l) in &self.leases {
            if *id != l.id || l.state != LeaseState::Live || l.parts.is_empty() {
                return Err(format!("lease {id} is malformed"));
            }
            if !self.deadlines.contains(&(l.expires_at, *id)) {
                return Err(format!("lease {id} has no deadline"));
            }
            if self.ended_by_id.contains_key(id) {
                return Err(format!("lease {id} is both live and ended"));
            }
            let mut on = HashSet::new();
            for p in &l.parts {
                if !on.insert(p.node) {
                    return Err(format!("lease {id} has two parts on node {}", p.node));
                }
                match self.nodes.get(&p.node) {
                    None => return Err(format!("lease {id} is on unknown node {}", p.node)),
                    Some(n) if n.state == NodeState::Dead => {
                        return Err(format!("lease {id} is on dead node {}", n.name))
                    }
                    Some(_) => {}
                }
                let u = used.entry(p.node).or_default();
                u.0 += p.cores;
                u.1 += p.memory;
                u.2.insert(*id);
            }
        }
        if self.deadlines.len() != self.leases.len() {
            return Err("stale deadlines".into());
        }
        let (mut indexed, mut heartbeating) = (0, 0);
        for (id, n) in &self.nodes {
            let (c, m, ls) = used.remove(id).unwrap_or_default();
            if n.cores_used != c || n.memory_used != m || n.leases != ls {
                return Err(format!(
                    "node {}: {} cores / {} bytes / {} leases used, leases hold {c} / {m} / {}",
                    n.name,
                    n.cores_used,
                    n.memory_used,
                    n.leases.len(),
                    ls.len()
                ));
            }
            if n.cores_free() > n.cores_total || n.memory_free() > n.memory_total {
                return Err(format!("node {}: free exceeds total", n.name));
            }
            if n.schedulable() {
                indexed += 1;
                if !self.free.contains(*id, n.cores_free()) {
                    return Err(format!("node {} missing from the free index", n.name));
                }
            }
            if n.heartbeating() {
                heartbeating += 1;
                if !self.heartbeats.contains(&(n.last_heartbeat, *id)) {
                    return Err(format!("node {} missing from the heartbeat index", n.name));
                }
            }
            if self.by_name.get(&n.name) != Some(id) {
                return Err(format!("node {} missing from the name map", n.name));
            }
        }
        if indexed != self.free.len() || heartbeating != self.heartbeats.len() {
            return Err("stale index entries".into());
        }
        if self.by_name.len() != self.nodes.len() {
            return Err("stale name map entries".into());
        }
        let free: u64 = self
            .nodes
            .values()
            .filter(|n| n.schedulable())
            .map(|n| u64::from(n.cores_free()))
            .sum();
        if free != self.free.total_free() {
            return Err(format!(
                "index says {} free, nodes say {free}",
                self.free.total_free()
            ));
        }
        if self.ended.len() != self.ended_by_id.len() {
            return Err("ended ring and map disagree".into());
        }
        Ok(())
    }
}
