//! What a session reports when it ends: per rank, and merged on rank 0.

use serde::{Deserialize, Serialize};

use crate::bench::stats::Latencies;

/// One rank's share of a session, as gathered on rank 0.
#[derive(Debug, Clone)]
pub struct RankReport {
    /// The rank.
    pub rank: i32,
    /// Nodes its workers ran on.
    pub nodes: Vec<String>,
    /// Its workers.
    pub workers: usize,
    /// Offloads that returned a result.
    pub invocations: u64,
    /// Offloads that failed.
    pub errors: u64,
    /// The first error that made its executor unusable (a dead executor), if any.
    pub failure: Option<String>,
    /// Latency of its successful blocking offloads and of submit-to-result for async ones.
    pub latency: Latencies,
    /// Nanoseconds its executors spent running functions (billing, from the executor managers).
    pub execution_ns: u64,
    /// Nanoseconds its executors spent hot-polling (billing).
    pub hot_polling_ns: u64,
}

/// The whole session, on rank 0 ([`super::Session::finish`]).
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// One entry per rank, in rank order.
    pub ranks: Vec<RankReport>,
    /// All ranks' latencies, merged (never averaged).
    pub total: Latencies,
    /// The lease the session ran under.
    pub lease: u64,
}

impl SessionReport {
    /// The ranks whose executors failed.
    pub fn failed_ranks(&self) -> Vec<i32> {
        self.ranks
            .iter()
            .filter(|r| r.failure.is_some())
            .map(|r| r.rank)
            .collect()
    }
}

/// The wire form of a [`RankReport`] (before billing), as one rank sends it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RankWire {
    pub rank: i32,
    pub nodes: Vec<String>,
    pub workers: usize,
    pub invocations: u64,
    pub errors: u64,
    pub failure: Option<String>,
    /// HDR V2 bytes, hex.
    pub histogram: String,
}

impl RankWire {
    pub(crate) fn into_report(self) -> RankReport {
        let latency = hex::decode(&self.histogram)
            .ok()
            .and_then(|b| Latencies::from_bytes(&b))
            .unwrap_or_default();
        RankReport {
            rank: self.rank,
            nodes: self.nodes,
            workers: self.workers,
            invocations: self.invocations,
            errors: self.errors,
            failure: self.failure,
            latency,
            execution_ns: 0,
            hot_polling_ns: 0,
        }
    }
}
