//! A batch of independent inputs through one function, remotely and locally: the applications'
//! benchmark (thumbnails of a directory of images, classifications).
//!
//! * [`run_remote`] spreads the inputs over an allocation's workers: one client thread per
//!   worker takes the next input from a shared counter and keeps up to `in_flight` invocations
//!   posted on its worker ([`Executor::submit`]), collecting the oldest ([`Executor::wait`]) when
//!   full. A worker serves its slots in order, so the oldest result comes first. An item's
//!   latency runs from its submit to its result, so with `in_flight > 1` it includes the time it
//!   queued behind the items before it on the worker.
//! * [`run_local`] does the same work with a local function on a rayon pool of the client's
//!   cores; an item's latency is the function's run time.
//!
//! Both return every item's output and latency and the batch's wall time, so that items per
//! second and the per-item overhead of going through rfaas (p50 remote − p50 local) come from
//! one run. [`BatchRow`] is the CSV row of one item ([`BATCH_CSV_HEADER`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::stats::Latencies;
use crate::client::{Executor, FunctionId, InvokeError, Pending};
use crate::rdma::Fabric;

/// One item's outcome.
#[derive(Debug, Clone)]
pub struct ItemResult {
    /// Position of the input in the batch.
    pub index: usize,
    /// Submit to result (remote) or the function's run time (local).
    pub latency: Duration,
    /// The function's output bytes, or why the call failed (an rfaas-level failure: a timeout,
    /// output too large, a panic; an application's own error status is part of its output).
    pub output: Result<Vec<u8>, String>,
    /// The worker (remote) or pool thread (local) that ran it.
    pub worker: usize,
}

/// A whole batch.
#[derive(Debug, Clone)]
pub struct BatchRun {
    /// Every item, in input order.
    pub items: Vec<ItemResult>,
    /// From the first submit to the last result.
    pub wall: Duration,
}

impl BatchRun {
    /// Items per second over the wall time.
    pub fn per_second(&self) -> f64 {
        self.items.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// The items' latencies as a histogram.
    pub fn latencies(&self) -> Latencies {
        let mut l = Latencies::new();
        for i in &self.items {
            l.record(i.latency);
        }
        l
    }

    /// The items that failed at the rfaas level.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &str)> {
        self.items
            .iter()
            .filter_map(|i| i.output.as_ref().err().map(|e| (i.index, e.as_str())))
    }

    /// One CSV row per item, `mode` naming the run ("remote", "local").
    pub fn rows(
        &self,
        mode: &str,
        parallelism: usize,
        in_flight: usize,
        inputs: &[Vec<u8>],
    ) -> Vec<BatchRow> {
        self.items
            .iter()
            .map(|i| BatchRow {
                mode: mode.to_string(),
                parallelism,
                in_flight,
                item: i.index,
                worker: i.worker,
                input_bytes: inputs.get(i.index).map_or(0, Vec::len),
                output_bytes: i.output.as_ref().map_or(0, Vec::len),
                latency_ns: u64::try_from(i.latency.as_nanos()).unwrap_or(u64::MAX),
                ok: i.output.is_ok(),
            })
            .collect()
    }
}

/// The CSV header of [`BatchRow`]s.
pub const BATCH_CSV_HEADER: [&str; 9] = [
    "mode",
    "parallelism",
    "in_flight",
    "item",
    "worker",
    "input_bytes",
    "output_bytes",
    "latency_ns",
    "ok",
];

/// One item of a batch as a CSV row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRow {
    /// "remote" or "local" (or the caller's name for the run).
    pub mode: String,
    /// Workers (remote) or pool threads (local).
    pub parallelism: usize,
    /// Invocations in flight per worker (1 for local).
    pub in_flight: usize,
    /// The item's position in the batch.
    pub item: usize,
    /// Which worker or thread ran it.
    pub worker: usize,
    /// Input size.
    pub input_bytes: usize,
    /// Output size (0 when the call failed).
    pub output_bytes: usize,
    /// Latency in ns.
    pub latency_ns: u64,
    /// Whether the call succeeded at the rfaas level.
    pub ok: bool,
}

/// Runs `func` on every input over all of `exec`'s workers with up to `in_flight` calls posted
/// per worker (at most the allocation's slots per worker); `output_len` is each call's output
/// capacity. A failed call is recorded and the batch goes on; an error is returned only for bad
/// arguments.
pub fn run_remote<F: Fabric>(
    exec: &Executor<F>,
    func: FunctionId,
    inputs: &[Vec<u8>],
    in_flight: usize,
    output_len: usize,
) -> Result<BatchRun, InvokeError> {
    if in_flight == 0 {
        return Err(InvokeError::Invalid("in_flight must be at least 1".into()));
    }
    if output_len > exec.output_capacity() {
        return Err(InvokeError::Invalid(format!(
            "output of {output_len} bytes above the allocation's {}",
            exec.output_capacity()
        )));
    }
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(inputs.len()));
    let start = Instant::now();
    std::thread::scope(|s| {
        for worker in 0..exec.workers() {
            let (next, results) = (&next, &results);
            s.spawn(move || {
                let mut mine = Vec::new();
                let mut posted: VecDeque<(usize, Instant, Pending)> = VecDeque::new();
                let mut out = vec![0u8; output_len];
                let collect = |(index, t0, p): (usize, Instant, Pending), out: &mut [u8]| {
                    let output = exec
                        .wait(p, out)
                        .map(|n| out[..n].to_vec())
                        .map_err(|e| e.to_string());
                    ItemResult {
                        index,
                        latency: t0.elapsed(),
                        output,
                        worker,
                    }
                };
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(input) = inputs.get(index) else {
                        break;
                    };
                    if posted.len() >= in_flight {
                        let oldest = posted.pop_front().expect("queue is full");
                        mine.push(collect(oldest, &mut out));
                    }
                    loop {
                        let t0 = Instant::now();
                        match exec.submit(Some(worker), func, input, output_len) {
                            Ok(p) => posted.push_back((index, t0, p)),
                            // More in flight than the allocation has slots: collect one first.
                            Err(InvokeError::Busy) if !posted.is_empty() => {
                                let oldest = posted.pop_front().expect("not empty");
                                mine.push(collect(oldest, &mut out));
                                continue;
                            }
                            Err(e) => mine.push(ItemResult {
                                index,
                                latency: t0.elapsed(),
                                output: Err(e.to_string()),
                                worker,
                            }),
                        }
                        break;
                    }
                }
                while let Some(p) = posted.pop_front() {
                    mine.push(collect(p, &mut out));
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
            });
        }
    });
    let wall = start.elapsed();
    let mut items = results.into_inner().unwrap_or_else(|p| p.into_inner());
    items.sort_by_key(|i| i.index);
    Ok(BatchRun { items, wall })
}

/// Runs `f` on every input on a rayon pool of `threads` threads (the client's cores).
pub fn run_local<Fn>(inputs: &[Vec<u8>], threads: usize, f: Fn) -> Result<BatchRun, String>
where
    Fn: std::ops::Fn(&[u8]) -> Result<Vec<u8>, String> + Sync,
{
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("batch-local-{i}"))
        .build()
        .map_err(|e| format!("starting {threads} local threads: {e}"))?;
    let start = Instant::now();
    let items: Vec<ItemResult> = pool.install(|| {
        inputs
            .par_iter()
            .enumerate()
            .map(|(index, input)| {
                let t0 = Instant::now();
                let output = f(input);
                ItemResult {
                    index,
                    latency: t0.elapsed(),
                    output,
                    worker: rayon::current_thread_index().unwrap_or(0),
                }
            })
            .collect()
    });
    Ok(BatchRun {
        items,
        wall: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_runs_every_item_in_order() {
        let inputs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i)]).collect();
        let run = run_local(&inputs, 2, |b| {
            if b.len() == 7 {
                Err("seven".into())
            } else {
                Ok(vec![b.len() as u8])
            }
        })
        .unwrap();
        assert_eq!(run.items.len(), 50);
        for (i, item) in run.items.iter().enumerate() {
            assert_eq!(item.index, i);
            if i == 7 {
                assert_eq!(item.output, Err("seven".to_string()));
            } else {
                assert_eq!(item.output, Ok(vec![i as u8]));
            }
        }
        assert_eq!(run.failures().collect::<Vec<_>>(), vec![(7, "seven")]);
        let rows = run.rows("local", 2, 1, &inputs);
        assert_eq!(rows[9].input_bytes, 9);
        assert_eq!(rows[9].output_bytes, 1);
        assert!(!rows[7].ok);
        assert_eq!(run.latencies().count(), 50);
    }
}
