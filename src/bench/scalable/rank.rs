//! One rank's measurements: its rows and histograms while it runs, and the summary it sends
//! rank 0 at the end (failure, workers, histograms, rates).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpi::traits::*;
use serde::{Deserialize, Serialize};

use super::BENCHMARK;
use crate::bench::invocation::Record;
use crate::bench::stats::Latencies;
use crate::mpi_glue::collective::all_flags;
use crate::mpi_glue::WorkerPlace;

/// One worker of a rank, as the metadata lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Place {
    pub(super) node: String,
    pub(super) address: String,
    pub(super) allocation: u64,
    pub(super) worker: usize,
    pub(super) core: u32,
}

impl From<&WorkerPlace> for Place {
    fn from(w: &WorkerPlace) -> Place {
        Place {
            node: w.node.clone(),
            address: w.address.clone(),
            allocation: w.allocation,
            worker: w.worker,
            core: w.core,
        }
    }
}

/// Throughput of one rank at one size.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct Rate {
    pub(super) invocations: u64,
    pub(super) elapsed_ns: u64,
}

impl Rate {
    pub(super) fn per_s(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.invocations as f64 * 1e9 / self.elapsed_ns as f64
        }
    }
}

/// What a rank sends rank 0 besides its rows.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct RankSummary {
    pub(super) rank: i32,
    pub(super) failure: Option<String>,
    pub(super) workers: Vec<Place>,
    /// (mode, payload bytes, HDR V2 bytes in hex).
    pub(super) histograms: Vec<(String, usize, String)>,
    /// (payload bytes, rate) in throughput mode.
    pub(super) rates: Vec<(usize, Rate)>,
}

/// One rank's measurements so far.
pub(super) struct RankState {
    pub(super) rank: i32,
    pub(super) world_size: i32,
    pub(super) provider: String,
    pub(super) records: Vec<Record>,
    pub(super) histograms: BTreeMap<(String, usize), Latencies>,
    pub(super) rates: Vec<(usize, Rate)>,
    pub(super) failure: Option<String>,
    pub(super) workers: Vec<Place>,
}

impl RankState {
    pub(super) fn new(rank: i32, world_size: i32, provider: String) -> RankState {
        RankState {
            rank,
            world_size,
            provider,
            records: Vec::new(),
            histograms: BTreeMap::new(),
            rates: Vec::new(),
            failure: None,
            workers: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &mut self,
        mode: &str,
        size: usize,
        node: &str,
        worker: usize,
        repetition: usize,
        latency_ns: u64,
        phases: Vec<u64>,
    ) {
        self.histograms
            .entry((mode.to_string(), size))
            .or_default()
            .record(Duration::from_nanos(latency_ns));
        self.records.push(Record {
            benchmark: BENCHMARK.into(),
            mode: mode.to_string(),
            provider: self.provider.clone(),
            payload_bytes: size,
            rank: self.rank as u32,
            world_size: self.world_size as u32,
            node: node.to_string(),
            worker,
            repetition,
            latency_ns,
            phases,
        });
    }

    pub(super) fn fail(&mut self, what: String) {
        eprintln!("[scalable_benchmark] rank {}: {what}", self.rank);
        self.failure.get_or_insert(what);
    }

    pub(super) fn summary(&self) -> RankSummary {
        RankSummary {
            rank: self.rank,
            failure: self.failure.clone(),
            workers: self.workers.clone(),
            histograms: self
                .histograms
                .iter()
                .map(|((m, s), h)| (m.clone(), *s, hex::encode(h.to_bytes())))
                .collect(),
            rates: self.rates.clone(),
        }
    }
}

/// Rank 0's line after each size (every rank calls it: it is an `Allgather`).
pub(super) fn progress<C: Communicator>(
    comm: &C,
    state: &RankState,
    mode: &str,
    size: usize,
    t: Instant,
) {
    let ok = all_flags(comm, state.failure.is_none());
    if state.rank == 0 {
        let failed: Vec<usize> = (0..ok.len()).filter(|&r| !ok[r]).collect();
        let tail = if failed.is_empty() {
            String::new()
        } else {
            format!("; failed ranks: {failed:?}")
        };
        eprintln!(
            "[scalable_benchmark] {mode} {size} B: done on {} of {} ranks in {:.2} s{tail}",
            ok.len() - failed.len(),
            ok.len(),
            t.elapsed().as_secs_f64()
        );
    }
}
