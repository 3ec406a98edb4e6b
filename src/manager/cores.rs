//! [`CorePool`]: which of the node's rentable cores belongs to which allocation.
//!
//! A pure state machine (no processes, no clock). Every core has at most one owner, so two
//! allocations never share a core; [`CorePool::release`] returns every core of an owner,
//! whatever ended it, and is idempotent.

use std::collections::BTreeMap;

/// Not enough free cores.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{wanted} cores asked for, {free} of {total} free")]
pub struct CoreShortage {
    /// Cores asked for.
    pub wanted: u32,
    /// Cores free now.
    pub free: u32,
    /// Cores this manager rents out in all.
    pub total: u32,
}

/// The cores a manager rents out and their owners (allocation ids).
#[derive(Debug, Clone)]
pub struct CorePool {
    owner: BTreeMap<u32, Option<u64>>,
}

impl CorePool {
    /// A pool of `cores` (duplicates ignored), all free.
    pub fn new(cores: impl IntoIterator<Item = u32>) -> CorePool {
        CorePool {
            owner: cores.into_iter().map(|c| (c, None)).collect(),
        }
    }

    /// Cores in the pool.
    pub fn total(&self) -> u32 {
        self.owner.len() as u32
    }

    /// Cores without an owner.
    pub fn free(&self) -> u32 {
        self.owner.values().filter(|o| o.is_none()).count() as u32
    }

    /// The owner of `core`, if it has one.
    pub fn owner_of(&self, core: u32) -> Option<u64> {
        self.owner.get(&core).copied().flatten()
    }

    /// Cores owned by `owner`, ascending.
    pub fn owned_by(&self, owner: u64) -> Vec<u32> {
        self.owner
            .iter()
            .filter(|(_, o)| **o == Some(owner))
            .map(|(c, _)| *c)
            .collect()
    }

    /// Gives `n` free cores (the lowest-numbered ones) to `owner`, or none at all.
    pub fn reserve(&mut self, owner: u64, n: u32) -> Result<Vec<u32>, CoreShortage> {
        let free = self.free();
        if n == 0 || n > free {
            return Err(CoreShortage {
                wanted: n,
                free,
                total: self.total(),
            });
        }
        let picked: Vec<u32> = self
            .owner
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(c, _)| *c)
            .take(n as usize)
            .collect();
        for c in &picked {
            self.owner.insert(*c, Some(owner));
        }
        Ok(picked)
    }

    /// Frees every core of `owner`; returns them (empty when it had none).
    pub fn release(&mut self, owner: u64) -> Vec<u32> {
        let mut freed = Vec::new();
        for (c, o) in self.owner.iter_mut() {
            if *o == Some(owner) {
                *o = None;
                freed.push(*c);
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shares_and_always_returns() {
        let mut pool = CorePool::new([4, 5, 6, 7, 5]);
        assert_eq!((pool.total(), pool.free()), (4, 4));
        assert_eq!(pool.reserve(1, 2).unwrap(), vec![4, 5]);
        assert_eq!(pool.reserve(2, 1).unwrap(), vec![6]);
        assert_eq!(
            pool.reserve(3, 2),
            Err(CoreShortage {
                wanted: 2,
                free: 1,
                total: 4
            })
        );
        assert_eq!(pool.reserve(3, 0).unwrap_err().wanted, 0);
        assert_eq!(pool.free(), 1, "a failed reservation takes nothing");
        assert_eq!(pool.owner_of(5), Some(1));
        assert_eq!(pool.release(1), vec![4, 5]);
        assert_eq!(pool.release(1), Vec::<u32>::new(), "release is idempotent");
        assert_eq!(pool.reserve(3, 3).unwrap(), vec![4, 5, 7]);
        assert_eq!(pool.owned_by(3), vec![4, 5, 7]);
        assert_eq!(pool.free(), 0);
        pool.release(2);
        pool.release(3);
        assert_eq!(pool.free(), 4);
    }

    #[test]
    fn random_operations_keep_owners_exclusive() {
        // A small deterministic pseudo-random walk over reserve/release.
        let mut pool = CorePool::new(0..16);
        let mut live: Vec<(u64, Vec<u32>)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for id in 0..10_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 && !live.is_empty() {
                let (owner, cores) = live.swap_remove((x as usize / 3) % live.len());
                assert_eq!(pool.release(owner), cores);
            } else if let Ok(cores) = pool.reserve(id, (x % 5) as u32 + 1) {
                live.push((id, cores));
            }
            let held: usize = live.iter().map(|(_, c)| c.len()).sum();
            assert_eq!(held as u32 + pool.free(), 16);
            let mut all: Vec<u32> = live.iter().flat_map(|(_, c)| c.iter().copied()).collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), held, "a core was given twice");
        }
    }
}
