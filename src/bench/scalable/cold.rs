//! `cold`: per repetition, every rank at once leases a core, allocates an executor, connects
//! and makes the first invocation, timed per phase, then deallocates.

use std::time::Instant;

use mpi::traits::*;

use super::gather::gather_all;
use super::rank::{progress, RankState};
use super::report::complete;
use super::{client_options, max_size, place_client, Outcome, ScalableArgs, ScalableError};
use crate::bench::invocation::{cold_mode, library_path, payload, BenchError};
use crate::client::{AllocationSpec, Cluster};
use crate::mpi_glue::collective::all_flags;
use crate::rdma::{Fabric, FabricUser};

pub(super) fn run_cold<C: Communicator>(
    comm: &C,
    args: &ScalableArgs,
) -> Result<Outcome, ScalableError> {
    let rank = comm.rank();
    // Its workers come and go with every cold start; the rank is placed once, before them.
    place_client(args, rank, &[]);
    let c = &args.common;
    let setup = Cluster::open(c.cluster.as_deref())
        .map_err(ScalableError::from)
        .and_then(|cl| {
            let lib = std::fs::read(library_path(c.library.as_deref())?).map_err(BenchError::Io)?;
            Ok((cl, lib))
        });
    let ok = all_flags(comm, setup.is_ok());
    let (cluster, library) = match setup {
        Ok(s) if ok.iter().all(|&f| f) => s,
        Err(e) => return Err(e),
        Ok(_) => {
            return Err(ScalableError::Peers(
                (0..ok.len() as i32).filter(|&r| !ok[r as usize]).collect(),
            ))
        }
    };
    let mut spec = AllocationSpec::new(library, &[c.function.as_str()]);
    spec.cores = 1;
    spec.input_capacity = max_size(args);
    spec.output_capacity = max_size(args);
    spec.slots = 1;
    spec.hot_timeout_ms = args.hot_timeout_ms;
    spec.library_hash(); // hashed once, not in every measured allocation
    let mut state = RankState::new(rank, comm.size(), cluster.provider.name().to_string());
    let opened = cluster.provider.run(ColdRank {
        comm,
        args,
        cluster: &cluster,
        spec: &spec,
        state: &mut state,
    });
    if let Err(e) = opened {
        // No fabric on this rank: it fails, and still takes part in every collective.
        state.fail(format!(
            "opening the {} fabric: {e}",
            cluster.provider.name()
        ));
        cold_loop(comm, args, &mut state, None);
    }
    let gathered = gather_all(comm, &state)?;
    complete(comm, args, &state, gathered, None)
}

struct ColdRank<'a, C> {
    comm: &'a C,
    args: &'a ScalableArgs,
    cluster: &'a Cluster,
    spec: &'a AllocationSpec,
    state: &'a mut RankState,
}

impl<C: Communicator> FabricUser for ColdRank<'_, C> {
    type Output = ();
    fn run<F: Fabric>(self, fabric: F) {
        let first = match self.cluster.managers.len() {
            0 => 0,
            n => self.state.rank as usize % n,
        };
        let (cluster, spec, args) = (self.cluster, self.spec, self.args);
        let mut once = |input: &[u8]| cold_once(&fabric, cluster, spec, args, first, input);
        cold_loop(self.comm, self.args, self.state, Some(&mut once));
    }
}

/// One cold start: `(node, total ns, phases, executor from the pool)`.
type ColdStep<'a> = &'a mut dyn FnMut(&[u8]) -> Result<(String, u64, Vec<u64>, bool), BenchError>;

/// The cold loop: per size and repetition a barrier, then one cold start unless this rank has
/// failed (or has no `step`); after each size the progress `Allgather`. The collectives do not
/// depend on what happened.
fn cold_loop<C: Communicator>(
    comm: &C,
    args: &ScalableArgs,
    state: &mut RankState,
    mut step: Option<ColdStep<'_>>,
) {
    let c = &args.common;
    let warmup = c.warmup.min(3);
    for &bytes in &c.sizes {
        let t = Instant::now();
        let input = payload(bytes, bytes + state.rank as usize);
        for i in 0..warmup + c.repetitions {
            comm.barrier();
            let Some(step) = step.as_mut().filter(|_| state.failure.is_none()) else {
                continue;
            };
            match step(&input) {
                Ok((node, total, phases, pooled)) => {
                    if i >= warmup {
                        // cold-pool or cold-fresh: where the executor came from.
                        let mode = cold_mode("cold", pooled);
                        state.record(&mode, bytes, &node, 0, i - warmup, total, phases);
                    }
                }
                Err(e) => state.fail(format!("cold {bytes} B: {e}")),
            }
        }
        progress(comm, state, "cold", bytes, t);
    }
}

/// One cold start: `(node, total ns, phases in COLD_PHASES order, executor from the pool)`.
fn cold_once<F: Fabric>(
    fabric: &F,
    cluster: &Cluster,
    spec: &AllocationSpec,
    args: &ScalableArgs,
    first: usize,
    input: &[u8],
) -> Result<(String, u64, Vec<u64>, bool), BenchError> {
    let t0 = Instant::now();
    let exec = cluster.allocate(fabric, spec, client_options(args), first)?;
    let f = exec.function(&args.common.function)?;
    let mut output = vec![0u8; exec.output_capacity()];
    let t1 = Instant::now();
    let r = exec.invoke(f, input, &mut output);
    let first_ns = t1.elapsed().as_nanos() as u64;
    let total = t0.elapsed().as_nanos() as u64;
    let tm = exec.timings();
    let pooled = exec.allocation().pooled;
    let node = exec
        .lease()
        .and_then(|l| l.parts().first().map(|p| p.node.clone()))
        .or_else(|| cluster.names.get(first).cloned())
        .unwrap_or_default();
    let d = exec.deallocate();
    r?;
    d?;
    Ok((
        node,
        total,
        crate::bench::invocation::cold_phases(&tm, first_ns, total),
        pooled,
    ))
}
