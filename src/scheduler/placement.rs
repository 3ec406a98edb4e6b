//! Placement: which node(s) a request goes to.
//!
//! The nodes that take leases are kept in a [`FreeIndex`], ordered by (free cores, node id), so
//! that finding a node is a range query, O(log n), not a scan:
//!
//! * [`Policy::Pack`] takes the node with the *fewest* free cores that still fits (fill the
//!   fullest node first, keep large holes for large requests);
//! * [`Policy::Spread`] takes the node with the *most* free cores (spread the load);
//! * ties go to the lowest node id (registration order), so placement is deterministic.
//!
//! A node that has the cores but not the memory is skipped (the walk goes on to the next one).
//! When no single node fits and the request allows a split, the cores are taken from the
//! nodes with the most free cores first (fewest parts), each part limited by that node's free
//! memory, up to a configured number of parts.

use std::collections::BTreeSet;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::node::NodeId;

/// Where to place a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Fill the fullest node that fits first.
    #[default]
    Pack,
    /// Emptiest node first.
    Spread,
}

/// The nodes that take leases, ordered by free cores.
#[derive(Debug, Clone, Default)]
pub struct FreeIndex {
    set: BTreeSet<(u32, NodeId)>,
    total_free: u64,
}

impl FreeIndex {
    /// Adds a node with `free` cores.
    pub fn insert(&mut self, node: NodeId, free: u32) {
        if self.set.insert((free, node)) {
            self.total_free += u64::from(free);
        }
    }

    /// Removes a node that had `free` cores; whether it was there.
    pub fn remove(&mut self, node: NodeId, free: u32) -> bool {
        let was = self.set.remove(&(free, node));
        if was {
            self.total_free -= u64::from(free);
        }
        was
    }

    /// Whether the node is there with `free` cores.
    pub fn contains(&self, node: NodeId, free: u32) -> bool {
        self.set.contains(&(free, node))
    }

    /// Nodes in the index.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether no node takes leases.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Free cores on all indexed nodes.
    pub fn total_free(&self) -> u64 {
        self.total_free
    }

    /// Most free cores on one indexed node.
    pub fn largest_free(&self) -> u32 {
        self.set.last().map_or(0, |(f, _)| *f)
    }

    /// Visits nodes with at least `min_free` free cores, most free first, lowest id first
    /// among equals, until `visit` returns true.
    fn walk_descending(&self, min_free: u32, mut visit: impl FnMut(u32, NodeId) -> bool) {
        let mut upper: Bound<(u32, NodeId)> = Bound::Unbounded;
        while let Some(&(level, _)) = self.set.range((Bound::Unbounded, upper)).next_back() {
            if level < min_free {
                return;
            }
            for &(f, id) in self
                .set
                .range((level, NodeId(0))..=(level, NodeId(u32::MAX)))
            {
                if visit(f, id) {
                    return;
                }
            }
            upper = Bound::Excluded((level, NodeId(0)));
        }
    }

    /// One node for `cores` cores and `memory` bytes (`memory_free` tells a node's free
    /// memory), by `policy`.
    pub fn place_one(
        &self,
        cores: u32,
        memory: u64,
        policy: Policy,
        memory_free: impl Fn(NodeId) -> u64,
    ) -> Option<NodeId> {
        let fits = |id: NodeId| memory == 0 || memory_free(id) >= memory;
        match policy {
            Policy::Pack => self
                .set
                .range((cores, NodeId(0))..)
                .map(|&(_, id)| id)
                .find(|&id| fits(id)),
            Policy::Spread => {
                let mut found = None;
                self.walk_descending(cores, |_, id| {
                    if fits(id) {
                        found = Some(id);
                    }
                    found.is_some()
                });
                found
            }
        }
    }

    /// Parts (node, cores) for `cores` cores at `memory_per_core` bytes each over at most
    /// `max_parts` nodes, fewest parts first; `None` when they cannot be found.
    pub fn place_split(
        &self,
        cores: u32,
        memory_per_core: u64,
        max_parts: usize,
        memory_free: impl Fn(NodeId) -> u64,
    ) -> Option<Vec<(NodeId, u32)>> {
        if u64::from(cores) > self.total_free {
            return None;
        }
        let mut parts = Vec::new();
        let mut left = cores;
        self.walk_descending(1, |free, id| {
            let by_memory = memory_free(id)
                .checked_div(memory_per_core)
                .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX));
            let take = free.min(by_memory).min(left);
            if take > 0 {
                parts.push((id, take));
                left -= take;
            }
            left == 0 || parts.len() >= max_parts
        });
        (left == 0).then_some(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(free: &[u32]) -> FreeIndex {
        let mut ix = FreeIndex::default();
        for (i, f) in free.iter().enumerate() {
            ix.insert(NodeId(i as u32), *f);
        }
        ix
    }

    #[test]
    fn pack_takes_the_fullest_fit_and_spread_the_emptiest() {
        let ix = index(&[4, 2, 8, 2, 8]);
        let any = |_| u64::MAX;
        assert_eq!(ix.place_one(2, 0, Policy::Pack, any), Some(NodeId(1)));
        assert_eq!(ix.place_one(3, 0, Policy::Pack, any), Some(NodeId(0)));
        assert_eq!(ix.place_one(1, 0, Policy::Spread, any), Some(NodeId(2)));
        assert_eq!(ix.place_one(9, 0, Policy::Spread, any), None);
        assert_eq!(ix.place_one(9, 0, Policy::Pack, any), None);
        assert_eq!((ix.total_free(), ix.largest_free()), (24, 8));
    }

    #[test]
    fn memory_is_honoured() {
        let ix = index(&[4, 2, 8, 2, 8]);
        let mem = |id: NodeId| [100, 10, 10, 100, 50][id.0 as usize];
        assert_eq!(ix.place_one(2, 50, Policy::Pack, mem), Some(NodeId(3)));
        assert_eq!(ix.place_one(2, 50, Policy::Spread, mem), Some(NodeId(4)));
        assert_eq!(ix.place_one(2, 101, Policy::Spread, mem), None);
        // Split: node 4 gives 5 (50/10), node 2 gives 1 (10/10), node 0 gives 4.
        assert_eq!(
            ix.place_split(10, 10, 8, mem),
            Some(vec![(NodeId(2), 1), (NodeId(4), 5), (NodeId(0), 4)])
        );
        assert_eq!(ix.place_split(10, 10, 2, mem), None);
        assert_eq!(ix.place_split(25, 0, 8, |_| 0), None);
    }
}
