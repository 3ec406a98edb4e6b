//! What a session reports when it ends: per rank, and merged on rank 0.

use serde::{Deserialize, Serialize};

use crate::bench::stats::Latencies;

/// One rank's share of a session, as gathered on rank 0 (each rank sends its own as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(with = "histogram_hex")]
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

/// Serde for a histogram as hex of its HDR V2 bytes (how ranks send theirs to rank 0).
mod histogram_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::bench::stats::Latencies;

    pub fn serialize<S: Serializer>(l: &Latencies, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(l.to_bytes()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Latencies, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text)
            .ok()
            .and_then(|b| Latencies::from_bytes(&b))
            .ok_or_else(|| serde::de::Error::custom("not an HDR histogram"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rank_report_survives_json_with_its_histogram() {
        let mut latency = Latencies::new();
        for i in 1..=100u64 {
            latency.record(Duration::from_micros(i));
        }
        let r = RankReport {
            rank: 3,
            nodes: vec!["n1".into()],
            workers: 2,
            invocations: 100,
            errors: 1,
            failure: Some("the executor is gone".into()),
            latency,
            execution_ns: 0,
            hot_polling_ns: 0,
        };
        let back: RankReport = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!((back.rank, back.invocations, back.errors), (3, 100, 1));
        assert_eq!(back.failure, r.failure);
        assert_eq!(back.latency.count(), 100);
        assert_eq!(back.latency.quantile_ns(0.5), r.latency.quantile_ns(0.5));
        let bad = serde_json::to_string(&r)
            .unwrap()
            .replace("\"latency\":\"", "\"latency\":\"zz");
        assert!(serde_json::from_str::<RankReport>(&bad).is_err());
    }
}
