//! [`CorePool`]: which of the node's rentable cores belongs to which allocation.
//!
//! A pure state machine (no processes, no clock). Every core has at most one owner, so two
//! allocations never share a core; [`CorePool::release`] returns every core of an owner,
//! whatever ended it, and is idempotent. The pool keeps its cores in a preference order (cores
//! nearest the NIC first, see [`super::topology`]): reservations take the first free ones.

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

/// The cores a manager rents out, in preference order, and their owners (allocation ids).
#[derive(Debug, Clone)]
pub struct CorePool {
    owner: Vec<(u32, Option<u64>)>,
}

impl CorePool {
    /// A pool of `cores` in preference order (a repeated core keeps its first place), all free.
    pub fn new(cores: impl IntoIterator<Item = u32>) -> CorePool {
        let mut owner: Vec<(u32, Option<u64>)> = Vec::new();
        for c in cores {
            if !owner.iter().any(|(o, _)| *o == c) {
                owner.push((c, None));
            }
        }
        CorePool { owner }
    }

    /// A pool in which each of `cores` counts `per_core` times (at least once): `per_core`
    /// allocations may share a core. For benchmarks only (the manager's `oversubscribe`):
    /// executors that share a core share its time. The slots go round the cores, so that the
    /// first allocations still get a core each.
    pub fn oversubscribed(cores: impl IntoIterator<Item = u32>, per_core: u32) -> CorePool {
        let once = CorePool::new(cores).owner;
        let owner = (0..per_core.max(1))
            .flat_map(|_| once.iter().copied())
            .collect();
        CorePool { owner }
    }

    /// Executor slots in the pool (cores, times the oversubscription).
    pub fn total(&self) -> u32 {
        self.owner.len() as u32
    }

    /// Cores without an owner.
    pub fn free(&self) -> u32 {
        self.owner.iter().filter(|(_, o)| o.is_none()).count() as u32
    }

    /// Every core, in preference order (once, also when oversubscribed).
    pub fn order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = Vec::new();
        for (c, _) in &self.owner {
            if !order.contains(c) {
                order.push(*c);
            }
        }
        order
    }

    /// The free cores, in preference order (the next reservation takes the first ones).
    pub fn free_cores(&self) -> Vec<u32> {
        self.owner
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(c, _)| *c)
            .collect()
    }

    /// The owner of `core`, if it has one.
    pub fn owner_of(&self, core: u32) -> Option<u64> {
        self.owner
            .iter()
            .find(|(c, _)| *c == core)
            .and_then(|(_, o)| *o)
    }

    /// Cores owned by `owner`, in preference order (the order [`CorePool::reserve`] gave them).
    pub fn owned_by(&self, owner: u64) -> Vec<u32> {
        self.owner
            .iter()
            .filter(|(_, o)| *o == Some(owner))
            .map(|(c, _)| *c)
            .collect()
    }

    /// Gives the first `n` free cores in preference order to `owner`, or none at all.
    pub fn reserve(&mut self, owner: u64, n: u32) -> Result<Vec<u32>, CoreShortage> {
        let free = self.free();
        if n == 0 || n > free {
            return Err(CoreShortage {
                wanted: n,
                free,
                total: self.total(),
            });
        }
        let mut picked = Vec::with_capacity(n as usize);
        // Distinct cores first (they repeat only when oversubscribed), then any free slot.
        for distinct in [true, false] {
            for i in 0..self.owner.len() {
                let (c, o) = self.owner[i];
                if picked.len() == n as usize {
                    break;
                }
                if o.is_none() && !(distinct && picked.contains(&c)) {
                    self.owner[i].1 = Some(owner);
                    picked.push(c);
                }
            }
        }
        Ok(picked)
    }

    /// Frees every core of `owner`; returns them in preference order (empty when it had none).
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
    fn reservations_follow_the_preference_order() {
        // Cores near the NIC (6, 7) first, then the rest.
        let mut pool = CorePool::new([6, 7, 0, 1, 6]);
        assert_eq!(pool.order(), vec![6, 7, 0, 1]);
        assert_eq!(pool.reserve(1, 1).unwrap(), vec![6]);
        assert_eq!(pool.reserve(2, 2).unwrap(), vec![7, 0]);
        assert_eq!(pool.free_cores(), vec![1]);
        assert_eq!(pool.owner_of(0), Some(2));
        assert_eq!(pool.owner_of(9), None);
        assert_eq!(pool.release(1), vec![6]);
        assert_eq!(
            pool.free_cores(),
            vec![6, 1],
            "a freed near core is preferred again"
        );
        assert_eq!(pool.reserve(3, 1).unwrap(), vec![6]);
        assert_eq!(pool.owned_by(2), vec![7, 0]);
    }

    #[test]
    fn oversubscribed_cores_count_several_times_and_spread_first() {
        let mut pool = CorePool::oversubscribed([3, 5], 3);
        assert_eq!((pool.total(), pool.free()), (6, 6));
        assert_eq!(pool.order(), vec![3, 5]);
        // One allocation per core before any core is shared.
        assert_eq!(pool.reserve(1, 1).unwrap(), vec![3]);
        assert_eq!(pool.reserve(2, 1).unwrap(), vec![5]);
        // Two cores for one allocation: two distinct ones while there are.
        assert_eq!(pool.reserve(3, 2).unwrap(), vec![3, 5]);
        assert_eq!(pool.reserve(4, 2).unwrap(), vec![3, 5]);
        assert_eq!(pool.reserve(5, 1).unwrap_err().free, 0);
        assert_eq!(pool.release(3), vec![3, 5]);
        assert_eq!(pool.free(), 2);
        // Without oversubscription it is the plain pool.
        let plain = CorePool::oversubscribed([3, 5, 3], 1);
        assert_eq!((plain.total(), plain.order()), (2, vec![3, 5]));
        // A core free in two slots goes once to an allocation of two, with another core.
        let mut pool = CorePool::oversubscribed([0, 1], 2);
        pool.reserve(1, 1).unwrap(); // 0
        pool.reserve(2, 1).unwrap(); // 1
        pool.release(1);
        assert_eq!(pool.reserve(3, 2).unwrap(), vec![0, 1]);
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
