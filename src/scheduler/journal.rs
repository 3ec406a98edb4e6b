//! The journal: what a command changed, as typed records ([`Change`]) whose size is that of
//! the change, not of the state, and the [`Image`] that replays them into a [`Snapshot`].
//!
//! With [`Scheduler::journal`] on, every command marks the nodes and leases it touches;
//! [`Scheduler::take_changes`] turns the marks into records of their state *after* the
//! command (a node as it is now, or gone; a lease live, ended, or forgotten). Replaying records
//! in order on an [`Image`] of the last snapshot gives the state a new snapshot would have:
//! records are idempotent upserts, so replaying one twice does no harm.
//!
//! Not recorded, on purpose: heartbeats (a restored node gets a full heartbeat timeout
//! anyway), and what restore recomputes from the leases (a node's usage and lease set).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::lease::{Lease, LeaseId};
use super::metrics::Counters;
use super::node::{Node, NodeId};
use super::snapshot::Snapshot;
use super::state_machine::{EndedLease, Scheduler};

/// One entity's state after a command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A node as it is now (registered, drained, resumed, dead).
    Node(Node),
    /// A node was deregistered.
    NodeGone(NodeId),
    /// A live lease as it is now (granted, renewed, adopted, a part confirmed).
    Lease(Lease),
    /// A lease ended and is remembered so.
    Ended(EndedLease),
    /// A lease is neither live nor remembered (ended with `keep_ended = 0`).
    Forget(LeaseId),
}

/// The counters and id allocators, as they are after a command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Next node id.
    pub next_node: u32,
    /// Next lease id.
    pub next_lease: u64,
    /// Counters.
    pub counters: Counters,
}

/// Entities marked since the last [`Scheduler::take_changes`], in the order touched
/// (with repetitions).
#[derive(Debug, Default)]
pub(super) struct Marks {
    nodes: Vec<NodeId>,
    leases: Vec<LeaseId>,
}

impl Scheduler {
    /// Starts (or stops) marking what commands change, for [`Scheduler::take_changes`].
    pub fn journal(&mut self, on: bool) {
        self.marks = on.then(Marks::default);
    }

    pub(super) fn touch_node(&mut self, id: NodeId) {
        if let Some(m) = &mut self.marks {
            m.nodes.push(id);
        }
    }

    pub(super) fn touch_lease(&mut self, id: LeaseId) {
        if let Some(m) = &mut self.marks {
            m.leases.push(id);
        }
    }

    /// Every live lease's deadline (cheaper than [`Scheduler::leases`]).
    pub fn deadlines(&self) -> impl Iterator<Item = (LeaseId, Millis)> + '_ {
        self.deadlines.iter().map(|(t, id)| (*id, *t))
    }

    /// What changed since the last call (nothing with the journal off), and the counters.
    pub fn take_changes(&mut self) -> (Vec<Change>, Meta) {
        let meta = self.meta();
        let Some(marks) = self.marks.as_mut().map(std::mem::take) else {
            return (Vec::new(), meta);
        };
        let mut out = Vec::with_capacity(marks.nodes.len() + marks.leases.len());
        for id in last_of_each(marks.nodes) {
            out.push(match self.nodes.get(&id) {
                Some(n) => Change::Node(n.clone()),
                None => Change::NodeGone(id),
            });
        }
        // Ended leases in the order they ended: a lease touched twice by one command is
        // recorded once, where it was touched last, as it is at the end.
        for id in last_of_each(marks.leases) {
            out.push(match (self.leases.get(&id), self.ended_by_id.get(&id)) {
                (Some(l), _) => Change::Lease(l.clone()),
                (None, Some(e)) => Change::Ended(e.clone()),
                (None, None) => Change::Forget(id),
            });
        }
        (out, meta)
    }
}

/// `v` without repetitions, each kept where it occurs last (O(n)).
fn last_of_each<T: Copy + Eq + std::hash::Hash>(v: Vec<T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    let mut out: Vec<T> = v.into_iter().rev().filter(|x| seen.insert(*x)).collect();
    out.reverse();
    out
}

/// A snapshot being brought forward by records, in the order they were written.
#[derive(Debug)]
pub struct Image {
    nodes: BTreeMap<NodeId, Node>,
    /// Hashed, not ordered: replay is mostly lease upserts (sorted once, at the end).
    leases: HashMap<LeaseId, Lease>,
    ended: VecDeque<EndedLease>,
    /// The ids in `ended`: a snapshot taken in pieces may already hold an ended lease whose
    /// record is replayed after it, which must not be remembered twice.
    ended_ids: HashSet<LeaseId>,
    meta: Meta,
    keep_ended: usize,
}

impl Image {
    /// Starts from `snap`, remembering at most `keep_ended` ended leases.
    pub fn new(snap: Snapshot, keep_ended: usize) -> Image {
        Image {
            nodes: snap.nodes.into_iter().map(|n| (n.id, n)).collect(),
            leases: {
                let mut m = HashMap::with_capacity(snap.leases.len() + snap.leases.len() / 4);
                m.extend(snap.leases.into_iter().map(|l| (l.id, l)));
                m
            },
            ended_ids: snap.ended.iter().map(|e| e.view.id).collect(),
            ended: snap.ended.into(),
            meta: Meta {
                next_node: snap.next_node,
                next_lease: snap.next_lease,
                counters: snap.counters,
            },
            keep_ended,
        }
    }

    /// Applies one command's records.
    pub fn apply(&mut self, changes: Vec<Change>, meta: Meta) {
        for c in changes {
            match c {
                Change::Node(n) => {
                    self.nodes.insert(n.id, n);
                }
                Change::NodeGone(id) => {
                    self.nodes.remove(&id);
                }
                Change::Lease(l) => {
                    self.leases.insert(l.id, l);
                }
                Change::Ended(e) => {
                    self.leases.remove(&e.view.id);
                    if self.keep_ended > 0 && self.ended_ids.insert(e.view.id) {
                        while self.ended.len() >= self.keep_ended {
                            if let Some(old) = self.ended.pop_front() {
                                self.ended_ids.remove(&old.view.id);
                            }
                        }
                        self.ended.push_back(e);
                    }
                }
                Change::Forget(id) => {
                    self.leases.remove(&id);
                }
            }
        }
        // Allocators only grow, even if records came out of order.
        self.meta = Meta {
            next_node: self.meta.next_node.max(meta.next_node),
            next_lease: self.meta.next_lease.max(meta.next_lease),
            counters: meta.counters,
        };
    }

    /// Live leases now.
    pub fn live_leases(&self) -> usize {
        self.leases.len()
    }

    /// The snapshot it amounts to, taken at `taken_at`.
    pub fn into_snapshot(self, taken_at: Millis) -> Snapshot {
        let mut leases: Vec<Lease> = self.leases.into_values().collect();
        leases.sort_unstable_by_key(|l| l.id);
        Snapshot {
            taken_at,
            nodes: self.nodes.into_values().collect(),
            leases,
            ended: self.ended.into(),
            next_node: self.meta.next_node,
            next_lease: self.meta.next_lease,
            counters: self.meta.counters,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scheduler::{Config, LeaseRequest, NodeInfo, TokenSource};

    fn node(name: &str, cores: u32) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            address: format!("{name}:1"),
            cores,
            memory: 0,
            hosted: vec![],
        }
    }

    /// Nodes ("name state cores_used"), live leases (id, cores, deadline), ended lease ids,
    /// grants counted.
    pub(crate) type Observed = (Vec<String>, Vec<(u64, u32, u64)>, Vec<u64>, u64);

    /// The state a scheduler restored from `snap` shows (what an operator sees).
    pub(crate) fn observed(snap: Snapshot) -> Observed {
        let s = Scheduler::from_snapshot(Config::default(), TokenSource::Random, snap, Millis(0))
            .unwrap();
        s.check_invariants().unwrap();
        let nodes = s
            .nodes()
            .into_iter()
            .map(|n| format!("{} {} {}", n.name, n.state.name(), n.cores_used))
            .collect();
        let leases = s
            .leases()
            .into_iter()
            .map(|l| {
                (
                    l.id.0,
                    l.parts.iter().map(|p| p.cores).sum(),
                    l.expires_at.0,
                )
            })
            .collect();
        let ended = s.ended_leases().into_iter().map(|l| l.id.0).collect();
        (nodes, leases, ended, s.metrics().counters.grants)
    }

    #[test]
    fn replaying_the_records_of_every_command_gives_the_snapshot() {
        let mut s = Scheduler::new(Config {
            keep_ended: 3,
            heartbeat_timeout_ms: 100,
            ..Config::default()
        });
        s.journal(true);
        let base = s.snapshot(Millis(0));
        let mut img = Image::new(base, 3);
        let mut step = |s: &mut Scheduler| {
            let (c, m) = s.take_changes();
            img.apply(c, m);
        };
        s.register(node("a", 4), Millis(0)).unwrap();
        step(&mut s);
        s.register(node("b", 4), Millis(0)).unwrap();
        step(&mut s);
        let mut held = Vec::new();
        for i in 0..6 {
            held.push(s.grant(LeaseRequest::cores(1), Millis(i)).unwrap());
            step(&mut s);
        }
        s.renew(held[0].lease, &held[0].token, Millis(50)).unwrap();
        step(&mut s);
        for g in &held[1..4] {
            s.release(g.lease, &g.token).unwrap();
            step(&mut s);
        }
        s.drain("a").unwrap();
        step(&mut s);
        // b misses its heartbeats: it dies, its leases end in one tick.
        s.heartbeat("a", Millis(150)).unwrap();
        assert!(!s.tick(Millis(160)).is_empty());
        step(&mut s);
        s.deregister("a").unwrap();
        step(&mut s);
        s.register(node("b", 2), Millis(170)).unwrap();
        step(&mut s);
        s.grant(LeaseRequest::cores(2), Millis(171)).unwrap();
        step(&mut s);

        let direct = observed(s.snapshot(Millis(200)));
        let replayed = observed(img.into_snapshot(Millis(200)));
        assert_eq!(replayed, direct);
        // And the case is not trivial: a live lease, ended ones, a node.
        assert_eq!(direct.0, ["b alive 2"]);
        assert_eq!(direct.1.len(), 1);
        assert_eq!(direct.2.len(), 3);
        assert_eq!(direct.3, 7);
    }

    /// A snapshot read in pieces may hold an ended lease whose record is replayed after it.
    #[test]
    fn an_ended_lease_replayed_again_is_remembered_once() {
        let mut s = Scheduler::new(Config::default());
        s.register(node("a", 4), Millis(0)).unwrap();
        s.journal(true);
        let mut ended = Vec::new();
        for _ in 0..3 {
            let g = s.grant(LeaseRequest::cores(1), Millis(1)).unwrap();
            s.release(g.lease, &g.token).unwrap();
            let (changes, meta) = s.take_changes();
            ended.push((changes, meta, g.lease.0));
        }
        let mut img = Image::new(s.snapshot(Millis(0)), 2);
        img.leases.clear();
        img.ended.clear();
        img.ended_ids.clear();
        let ids = |img: &Image| img.ended.iter().map(|e| e.view.id.0).collect::<Vec<_>>();
        let (a, b, c) = (ended[0].2, ended[1].2, ended[2].2);
        for i in [0, 1, 0] {
            img.apply(ended[i].0.clone(), ended[i].1);
        }
        assert_eq!(ids(&img), [a, b], "a replayed again stays where it was");
        img.apply(ended[2].0.clone(), ended[2].1);
        assert_eq!(ids(&img), [b, c], "the oldest makes room");
    }

    #[test]
    fn without_the_journal_nothing_is_marked() {
        let mut s = Scheduler::new(Config::default());
        s.register(node("a", 4), Millis(0)).unwrap();
        assert!(s.take_changes().0.is_empty());
        s.journal(true);
        s.grant(LeaseRequest::cores(1), Millis(1)).unwrap();
        let (c, m) = s.take_changes();
        assert!(matches!(c.as_slice(), [Change::Lease(_)]), "{c:?}");
        assert_eq!(m.counters.grants, 1);
        assert!(s.take_changes().0.is_empty());
    }
}
