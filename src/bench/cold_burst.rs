//! The parts of `cold_benchmark` beyond one cold start at a time: waiting (outside the timed
//! part) until the managers' executor pools are full again, and bursts of concurrent cold
//! starts (`--bursts 1,8,32,64`).
//!
//! * **Pool wait.** A pooled executor's replacement starts only once the cold start that took
//!   it has answered its first invocation, and takes about as long as a fresh spawn. Back to
//!   back, the next cold start would find the replacement still starting and measure part of a
//!   spawn. So before each cold start the benchmark asks every manager (`GET /v1/status`)
//!   until its pool is full, bounded by [`POOL_WAIT`]; `--back-to-back` turns it off.
//! * **Bursts.** For a burst of `B`, `B` client threads wait at a barrier, then each allocates one
//!   core, connects and invokes once, timed per phase like a single cold start; then all
//!   deallocate, and the pools refill before the next round. Rows carry the thread as `rank`
//!   and `B` as `world_size`, and the mode `<mode>-burst<B>-pool` or `-fresh`. A burst of 64
//!   needs 64 executor slots: on a small node that takes a manager started with
//!   `oversubscribe` (benchmarks only, see the executor manager's configuration).

use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::invocation::{cold_phases, BenchError, Record};
use crate::client::{AllocationSpec, ClientOptions, Cluster, Executor, Lease};
use crate::rdma::Fabric;

/// Longest wait for the managers' pools to be full before a cold start.
pub const POOL_WAIT: Duration = Duration::from_secs(10);

/// Pause between two status requests while a pool refills (outside the timed part).
const POOL_POLL: Duration = Duration::from_millis(2);

/// Waits until every manager of `cluster` with a pool has all of it ready, at most
/// [`POOL_WAIT`]; returns whether they did (a manager that cannot be asked counts as ready:
/// the cold start will say what is wrong).
pub fn wait_pools_full(cluster: &Cluster) -> bool {
    let deadline = Instant::now() + POOL_WAIT;
    loop {
        let full = cluster.managers.iter().all(|m| match m.status() {
            Ok(s) => s.pool.ready.len() as u32 >= s.pool.size,
            Err(_) => true,
        });
        if full {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POOL_POLL);
    }
}

/// The mode of a burst's row: `<mode>-burst<B>-pool` or `<mode>-burst<B>-fresh`.
pub fn burst_mode(mode: &str, burst: usize, pooled: bool) -> String {
    super::invocation::cold_mode(&format!("{mode}-burst{burst}"), pooled)
}

/// What one cold start measured.
pub(super) struct One {
    pub(super) latency_ns: u64,
    pub(super) phases: Vec<u64>,
    pub(super) pooled: bool,
    pub(super) node: String,
}

/// One cold start (of a burst, or of `cold_benchmark`'s sequence): allocate (inside `lease`
/// when there is one, else from manager `first` on), connect, invoke once; the executor is
/// handed back (a burst keeps every thread's executor until the whole burst is measured).
#[allow(clippy::too_many_arguments)]
pub(super) fn cold_start<F: Fabric>(
    fabric: &F,
    cluster: &Cluster,
    spec: &AllocationSpec,
    opts: ClientOptions,
    function: &str,
    input: &[u8],
    lease: Option<&Lease>,
    first: usize,
) -> Result<(One, Executor<F>), BenchError> {
    let t0 = Instant::now();
    let exec = match lease {
        Some(l) => cluster.allocate_leased(fabric, l, spec, opts)?,
        None => cluster.allocate(fabric, spec, opts, first)?,
    };
    let f = exec.function(function)?;
    let mut output = vec![0u8; exec.output_capacity()];
    let t1 = Instant::now();
    exec.invoke(f, input, &mut output)?;
    let first_ns = t1.elapsed().as_nanos() as u64;
    let total = t0.elapsed().as_nanos() as u64;
    let one = One {
        latency_ns: total,
        phases: cold_phases(&exec.timings(), first_ns, total),
        pooled: exec.allocation().pooled,
        node: super::invocation::node_of(&exec, cluster),
    };
    Ok((one, exec))
}

/// Runs `rounds` bursts of `burst` concurrent cold starts with `spec` (one core each) and
/// returns their rows, `mode` naming the benchmark's mode (`cached`). Each round starts once
/// the pools are full; every executor of a round is released before the next.
#[allow(clippy::too_many_arguments)]
pub fn run_bursts<F: Fabric>(
    fabric: &F,
    cluster: &Cluster,
    spec: &AllocationSpec,
    opts: ClientOptions,
    function: &str,
    input: &[u8],
    mode: &str,
    burst: usize,
    rounds: usize,
    warmup: usize,
) -> Result<Vec<Record>, BenchError> {
    if burst == 0 {
        return Err(BenchError::Usage(
            "a burst has at least one cold start".into(),
        ));
    }
    let mut out = Vec::new();
    let managers = cluster.managers.len().max(1);
    for round in 0..warmup + rounds {
        if !wait_pools_full(cluster) {
            eprintln!("[cold_benchmark] the executor pools were not full within {POOL_WAIT:?}; measuring anyway");
        }
        let barrier = Barrier::new(burst);
        let results: Vec<Result<(One, Executor<F>), BenchError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..burst)
                .map(|t| {
                    let (barrier, fabric) = (&barrier, fabric.clone());
                    s.spawn(move || {
                        barrier.wait();
                        let first = t % managers;
                        cold_start(&fabric, cluster, spec, opts, function, input, None, first)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(BenchError::Usage("a burst thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut measured = Vec::with_capacity(burst);
        let mut failed = None;
        for r in results {
            match r {
                Ok((one, exec)) => {
                    measured.push(one);
                    if let Err(e) = exec.deallocate() {
                        failed.get_or_insert(BenchError::from(e));
                    }
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if round < warmup {
            continue;
        }
        for (t, one) in measured.into_iter().enumerate() {
            out.push(Record {
                benchmark: "cold_benchmark".into(),
                mode: burst_mode(mode, burst, one.pooled),
                provider: fabric.provider().name().into(),
                payload_bytes: input.len(),
                rank: t as u32,
                world_size: burst as u32,
                node: one.node,
                worker: 0,
                repetition: round - warmup,
                latency_ns: one.latency_ns,
                phases: one.phases,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_rows_name_the_burst_and_the_origin() {
        assert_eq!(burst_mode("cached", 64, true), "cached-burst64-pool");
        assert_eq!(burst_mode("cached", 8, false), "cached-burst8-fresh");
    }
}
