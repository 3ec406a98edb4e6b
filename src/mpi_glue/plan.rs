//! Dividing a job's leased cores among its ranks: a pure function, tested without MPI.
//!
//! The leader leases `ranks × cores_per_rank` cores once (split over nodes when needed) and
//! then makes one allocation per rank and node, so that every rank has executors of its own:
//! a function that crashes its executor takes down one rank's workers, never another's.
//! Ranks take the lease's parts in order, so neighbouring ranks share a node; a rank straddles
//! two nodes only when a part's cores are not a multiple of `cores_per_rank`.

use serde::{Deserialize, Serialize};

/// One allocation to make for a rank: `cores` cores on the lease's part `part`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Index into the lease's parts.
    pub part: usize,
    /// Cores of that part for this rank.
    pub cores: u32,
}

/// Why the cores cannot be divided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Zero ranks or zero cores per rank.
    #[error("need at least one rank and one core per rank")]
    Empty,
    /// The parts hold fewer cores than the ranks need.
    #[error("the lease has {have} cores, {ranks} ranks × {per_rank} cores need {need}")]
    TooFew {
        /// Cores in the lease.
        have: u64,
        /// Cores needed.
        need: u64,
        /// Ranks.
        ranks: usize,
        /// Cores per rank.
        per_rank: u32,
    },
}

/// Splits parts of `part_cores[i]` cores among `ranks` ranks of `per_rank` cores each: rank `r`
/// gets the pieces `plan[r]`, in part order, adding up to `per_rank`.
pub fn divide(
    part_cores: &[u32],
    ranks: usize,
    per_rank: u32,
) -> Result<Vec<Vec<Piece>>, PlanError> {
    if ranks == 0 || per_rank == 0 {
        return Err(PlanError::Empty);
    }
    let have: u64 = part_cores.iter().map(|&c| u64::from(c)).sum();
    let need = ranks as u64 * u64::from(per_rank);
    if have < need {
        return Err(PlanError::TooFew {
            have,
            need,
            ranks,
            per_rank,
        });
    }
    let mut left: Vec<u32> = part_cores.to_vec();
    let mut part = 0;
    let mut plan = Vec::with_capacity(ranks);
    for _ in 0..ranks {
        let mut want = per_rank;
        let mut pieces = Vec::new();
        while want > 0 {
            while left[part] == 0 {
                part += 1;
            }
            let take = want.min(left[part]);
            left[part] -= take;
            want -= take;
            pieces.push(Piece { part, cores: take });
        }
        plan.push(pieces);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores_of(plan: &[Vec<Piece>]) -> Vec<u32> {
        plan.iter()
            .map(|p| p.iter().map(|x| x.cores).sum())
            .collect()
    }

    #[test]
    fn one_node_one_piece_per_rank() {
        let plan = divide(&[8], 4, 2).unwrap();
        assert_eq!(plan.len(), 4);
        for p in &plan {
            assert_eq!(p, &vec![Piece { part: 0, cores: 2 }]);
        }
    }

    #[test]
    fn ranks_fill_nodes_in_order_and_straddle_only_at_a_boundary() {
        let plan = divide(&[3, 5], 4, 2).unwrap();
        assert_eq!(cores_of(&plan), vec![2, 2, 2, 2]);
        assert_eq!(plan[0], vec![Piece { part: 0, cores: 2 }]);
        assert_eq!(
            plan[1],
            vec![Piece { part: 0, cores: 1 }, Piece { part: 1, cores: 1 }]
        );
        assert_eq!(plan[2], vec![Piece { part: 1, cores: 2 }]);
        assert_eq!(plan[3], vec![Piece { part: 1, cores: 2 }]);
    }

    #[test]
    fn never_more_cores_of_a_part_than_it_has() {
        for parts in [vec![1, 1, 1, 1], vec![7, 0, 2, 9], vec![16]] {
            let total: u32 = parts.iter().sum();
            for per_rank in 1..=4u32 {
                let ranks = (total / per_rank) as usize;
                if ranks == 0 {
                    continue;
                }
                let plan = divide(&parts, ranks, per_rank).unwrap();
                let mut used = vec![0u32; parts.len()];
                for p in plan.iter().flatten() {
                    assert!(p.cores > 0);
                    used[p.part] += p.cores;
                }
                for (u, have) in used.iter().zip(&parts) {
                    assert!(u <= have, "{parts:?} per_rank {per_rank}");
                }
                assert!(cores_of(&plan).iter().all(|&c| c == per_rank));
            }
        }
    }

    #[test]
    fn too_few_cores_and_empty_requests_are_errors() {
        assert_eq!(
            divide(&[2, 1], 2, 2),
            Err(PlanError::TooFew {
                have: 3,
                need: 4,
                ranks: 2,
                per_rank: 2
            })
        );
        assert_eq!(divide(&[4], 0, 1), Err(PlanError::Empty));
        assert_eq!(divide(&[4], 1, 0), Err(PlanError::Empty));
    }
}
