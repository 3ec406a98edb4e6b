//! Persistence: the whole state as a [`Snapshot`] ([`Scheduler::snapshot`]) and back
//! ([`Scheduler::from_snapshot`]), for the resource manager's durable state file.

use std::collections::HashMap;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::clock::Millis;
use super::error::SchedError;
use super::lease::{Lease, LeaseId, LeaseState};
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

/// The whole state as it is, borrowed: serialises exactly as the [`Snapshot`] it amounts to
/// (nodes and leases in no particular order), without copying it first. The resource manager
/// encodes it under the scheduler's lock, which is much shorter than cloning every lease
/// ([`Scheduler::snapshot`]) under it.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotView<'a> {
    sched: &'a Scheduler,
    taken_at: Millis,
}

/// The values of a map as a sequence of known length.
struct Values<'a, K, V>(&'a HashMap<K, V>);

impl<K, V: Serialize> Serialize for Values<'_, K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.values())
    }
}

impl Serialize for SnapshotView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sched = self.sched;
        let ended: Vec<&EndedLease> = sched
            .ended
            .iter()
            .filter_map(|id| sched.ended_by_id.get(id))
            .collect();
        // The fields of `Snapshot`, in its order.
        let mut st = s.serialize_struct("Snapshot", 7)?;
        st.serialize_field("taken_at", &self.taken_at)?;
        st.serialize_field("nodes", &Values(&sched.nodes))?;
        st.serialize_field("leases", &Values(&sched.leases))?;
        st.serialize_field("ended", &ended)?;
        st.serialize_field("next_node", &sched.next_node)?;
        st.serialize_field("next_lease", &sched.next_lease)?;
        st.serialize_field("counters", &sched.counters)?;
        st.end()
    }
}

impl Scheduler {
    /// The whole state at `now`, borrowed, to serialise as a [`Snapshot`].
    pub fn snapshot_view(&self, now: Millis) -> SnapshotView<'_> {
        SnapshotView {
            sched: self,
            taken_at: now,
        }
    }

    /// The id allocators and the counters, as a snapshot holds them.
    pub fn meta(&self) -> super::journal::Meta {
        super::journal::Meta {
            next_node: self.next_node,
            next_lease: self.next_lease,
            counters: self.counters,
        }
    }

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
        s.nodes.reserve(snap.nodes.len());
        s.by_name.reserve(snap.nodes.len());
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
        // Bulk construction: the ordered sets (deadlines, each node's leases) are built once
        // from sorted vectors instead of by one insertion per lease.
        s.leases.reserve(snap.leases.len());
        let mut deadlines = Vec::with_capacity(snap.leases.len());
        let mut on_node: HashMap<NodeId, Vec<LeaseId>> = HashMap::with_capacity(s.nodes.len());
        for mut l in snap.leases {
            if l.parts.is_empty() || s.leases.contains_key(&l.id) {
                return Err(SchedError::Invalid(format!(
                    "snapshot lease {} is empty or listed twice",
                    l.id
                )));
            }
            for (i, p) in l.parts.iter().enumerate() {
                let n = s.nodes.get_mut(&p.node).ok_or_else(|| {
                    SchedError::Invalid(format!("snapshot lease {} is on an unknown node", l.id))
                })?;
                if n.state == NodeState::Dead || l.parts[..i].iter().any(|q| q.node == p.node) {
                    return Err(SchedError::Invalid(format!(
                        "snapshot lease {} is on dead node {:?} or twice on one node",
                        l.id, n.name
                    )));
                }
                n.cores_used += p.cores;
                n.memory_used += p.memory;
                on_node.entry(p.node).or_default().push(l.id);
            }
            l.state = LeaseState::Live;
            l.granted_at = rebase(l.granted_at);
            l.expires_at = now.plus_ms(l.expires_at.0.saturating_sub(snap.taken_at.0));
            s.next_lease = s.next_lease.max(l.id.0.saturating_add(1));
            deadlines.push((l.expires_at, l.id));
            s.leases.insert(l.id, l);
        }
        s.deadlines = deadlines.into_iter().collect();
        for (id, leases) in on_node {
            if let Some(n) = s.nodes.get_mut(&id) {
                n.leases = leases.into_iter().collect();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{LeaseRequest, NodeInfo};

    #[test]
    fn the_borrowed_view_reads_back_as_the_snapshot() {
        let mut s = Scheduler::new(Config {
            keep_ended: 2,
            ..Config::default()
        });
        for i in 0..5 {
            let info = NodeInfo {
                name: format!("n{i}"),
                address: format!("n{i}:1"),
                cores: 4,
                memory: 1 << 20,
                hosted: vec![],
            };
            s.register(info, Millis(i)).unwrap();
        }
        let grants: Vec<_> = (0..12)
            .map(|i| s.grant(LeaseRequest::cores(1 + i % 2), Millis(10 + i as u64)))
            .collect::<Result<_, _>>()
            .unwrap();
        for g in &grants[..3] {
            s.release(g.lease, &g.token).unwrap();
        }
        let sorted = |mut snap: Snapshot| {
            snap.nodes.sort_by_key(|n| n.id);
            snap.leases.sort_by_key(|l| l.id);
            serde_json::to_value(snap).unwrap()
        };
        let direct = s.snapshot(Millis(50));
        assert_eq!(
            (direct.nodes.len(), direct.leases.len(), direct.ended.len()),
            (5, 9, 2)
        );
        let view = s.snapshot_view(Millis(50));
        let bytes = postcard::to_stdvec(&view).unwrap();
        let from_binary: Snapshot = postcard::from_bytes(&bytes).unwrap();
        let from_json: Snapshot =
            serde_json::from_str(&serde_json::to_string(&view).unwrap()).unwrap();
        assert_eq!(sorted(from_binary), sorted(direct.clone()));
        assert_eq!(sorted(from_json), sorted(direct));
    }

    #[test]
    fn a_snapshot_with_a_lease_twice_on_a_node_or_on_an_unknown_or_dead_one_is_refused() {
        let mut s = Scheduler::new(Config::default());
        for name in ["a", "b"] {
            let info = NodeInfo {
                name: name.into(),
                address: format!("{name}:1"),
                cores: 4,
                memory: 0,
                hosted: vec![],
            };
            s.register(info, Millis(0)).unwrap();
        }
        s.grant(LeaseRequest::cores(2), Millis(1)).unwrap();
        let good = s.snapshot(Millis(2));
        let restore = |snap: Snapshot| {
            Scheduler::from_snapshot(Config::default(), TokenSource::Random, snap, Millis(3))
        };
        let restored = restore(good.clone()).unwrap();
        restored.check_invariants().unwrap();
        assert_eq!(restored.metrics().cores_used, 2);

        let mut twice = good.clone();
        let part = twice.leases[0].parts[0];
        twice.leases[0].parts.push(part);
        let e = restore(twice).unwrap_err().to_string();
        assert!(e.contains("twice on one node"), "{e}");

        let mut unknown = good.clone();
        unknown.leases[0].parts[0].node = NodeId(99);
        let e = restore(unknown).unwrap_err().to_string();
        assert!(e.contains("unknown node"), "{e}");

        let mut dead = good;
        let on = dead.leases[0].parts[0].node;
        let n = dead.nodes.iter_mut().find(|n| n.id == on).unwrap();
        n.state = NodeState::Dead;
        let e = restore(dead).unwrap_err().to_string();
        assert!(e.contains("dead node"), "{e}");
    }
}
