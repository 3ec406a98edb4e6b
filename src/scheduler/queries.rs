//! Read-only views of the state: nodes, leases (live and recently ended), metrics.

use super::lease::{Lease, LeaseId, LeaseView, Part, PartView};
use super::metrics::Metrics;
use super::node::{Node, NodeState, NodeView};
use super::state_machine::Scheduler;

impl Scheduler {
    pub(super) fn part_view(&self, p: &Part) -> PartView {
        let (node, address) = self
            .nodes
            .get(&p.node)
            .map_or((String::new(), String::new()), |n| {
                (n.name.clone(), n.address.clone())
            });
        PartView {
            node,
            address,
            cores: p.cores,
            memory: p.memory,
        }
    }

    pub(super) fn lease_view(&self, l: &Lease) -> LeaseView {
        LeaseView {
            id: l.id,
            client: l.client.clone(),
            parts: l.parts.iter().map(|p| self.part_view(p)).collect(),
            ttl_ms: l.ttl_ms,
            granted_at: l.granted_at,
            expires_at: l.expires_at,
            state: l.state.clone(),
            origin: l.origin,
        }
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<NodeView> {
        self.by_name.get(name).map(|id| self.nodes[id].view())
    }

    /// Every node, by id (registration order).
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = self.nodes.values().map(Node::view).collect();
        v.sort_unstable_by_key(|n| n.id);
        v
    }

    /// One lease, live or recently ended.
    pub fn lease(&self, id: LeaseId) -> Option<LeaseView> {
        match self.leases.get(&id) {
            Some(l) => Some(self.lease_view(l)),
            None => self.ended_by_id.get(&id).map(|e| e.view.clone()),
        }
    }

    /// Live leases, by id.
    pub fn leases(&self) -> Vec<LeaseView> {
        let mut v: Vec<LeaseView> = self.leases.values().map(|l| self.lease_view(l)).collect();
        v.sort_unstable_by_key(|l| l.id);
        v
    }

    /// Recently ended leases, oldest first.
    pub fn ended_leases(&self) -> Vec<LeaseView> {
        self.ended
            .iter()
            .filter_map(|id| self.ended_by_id.get(id).map(|e| e.view.clone()))
            .collect()
    }

    /// Live leases.
    pub fn live_leases(&self) -> usize {
        self.leases.len()
    }

    /// Gauges and counters now.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics {
            leases_live: self.leases.len() as u64,
            cores_grantable: self.free.total_free(),
            counters: self.counters,
            ..Metrics::default()
        };
        for n in self.nodes.values() {
            match n.state {
                NodeState::Alive => m.nodes_alive += 1,
                NodeState::Draining => m.nodes_draining += 1,
                NodeState::Dead => {
                    m.nodes_dead += 1;
                    continue;
                }
            }
            m.cores_total += u64::from(n.cores_total);
            m.cores_used += u64::from(n.cores_used);
            m.cores_free += u64::from(n.cores_free());
            m.memory_total += n.memory_total;
            m.memory_used += n.memory_used;
            m.memory_free += n.memory_free();
        }
        m
    }
}
