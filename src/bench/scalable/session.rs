//! `warm` and `throughput`: a [`Session`] gives every rank its workers; per size a warm-up and
//! a measured phase, each started by a barrier on every rank.

use std::collections::VecDeque;
use std::time::Instant;

use mpi::traits::*;

use super::gather::gather_all;
use super::rank::{progress, Place, RankState, Rate};
use super::report::complete;
use super::{
    client_options, max_size, place_client, Outcome, ScalableArgs, ScalableError, ScalableMode,
};
use crate::bench::invocation::{library_path, payload};
use crate::bench::placement::WorkerCore;
use crate::client::InvokeError;
use crate::mpi_glue::collective::gather_bytes;
use crate::mpi_glue::{Session, SessionConfig, WorkerPlace};

/// Takes this rank's workers in turn and names each: every call goes to the worker its row
/// names ([`Session::offload_on`]).
struct RoundRobin {
    /// (node, worker index within its allocation), in [`Session::workers`] order.
    places: Vec<(String, usize)>,
    next: usize,
}

impl RoundRobin {
    fn new(places: &[WorkerPlace]) -> RoundRobin {
        RoundRobin {
            places: places.iter().map(|p| (p.node.clone(), p.worker)).collect(),
            next: 0,
        }
    }

    /// The next worker: its index in [`Session::workers`], node and worker index.
    fn take(&mut self) -> Result<(usize, String, usize), InvokeError> {
        if self.places.is_empty() {
            return Err(InvokeError::Invalid("this rank has no workers".into()));
        }
        let w = self.next % self.places.len();
        self.next += 1;
        let (node, worker) = self.places[w].clone();
        Ok((w, node, worker))
    }
}

pub(super) fn run_session<C: Communicator>(
    comm: &C,
    args: &ScalableArgs,
) -> Result<Outcome, ScalableError> {
    let c = &args.common;
    let throughput = args.mode == ScalableMode::Throughput;
    // The same on every rank (it looks beside the executable): only rank 0 reads the file.
    let library = library_path(c.library.as_deref())?;
    let mut cfg = SessionConfig::new(library, &[c.function.as_str()]);
    // Every call is timed here, per row: the session need not time it again.
    cfg.record_latency = false;
    cfg.cluster = c.cluster.clone();
    cfg.cores_per_rank = args.cores_per_rank;
    cfg.input_capacity = max_size(args);
    cfg.output_capacity = max_size(args);
    cfg.slots = if throughput { args.in_flight as u32 } else { 1 };
    cfg.hot_timeout_ms = args.hot_timeout_ms;
    cfg.options = client_options(args);
    let t = Instant::now();
    let session = Session::start(comm, &cfg)?;
    let (rank, size) = (session.rank(), session.size());
    let places = session.workers();
    let own: Vec<WorkerCore> = places
        .iter()
        .map(|p| WorkerCore {
            node: p.node.clone(),
            worker: p.worker,
            core: p.core as usize,
        })
        .collect();
    place_client(args, rank, &own);
    let mut state = RankState::new(rank, size, session.provider().name().to_string());
    state.workers = places.iter().map(Place::from).collect();
    // Everyone's placement to rank 0, printed at once (a test kills one rank's executor by it).
    let mine = serde_json::to_vec(&state.workers).unwrap_or_default();
    if let Some(all) = gather_bytes(session.comm(), 0, &mine)? {
        eprintln!(
            "[scalable_benchmark] session up in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        for (r, bytes) in all.iter().enumerate() {
            let places: Vec<Place> = serde_json::from_slice(bytes).unwrap_or_default();
            for p in places {
                eprintln!(
                    "[scalable_benchmark] placement: rank {r} node {} allocation {} worker {} core {}",
                    p.node, p.allocation, p.worker, p.core
                );
            }
        }
    }
    let mut rr = RoundRobin::new(&places);
    let mode = args.mode.name();
    let f = session
        .function(&c.function)
        .map_err(|e| ScalableError::Usage(format!("function {:?}: {e}", c.function)))?;
    for &bytes in &c.sizes {
        let t = Instant::now();
        // Two phases, each started by a barrier on every rank (failed or not): the warm-up,
        // then the measured calls, so that the ranks measure at the same time.
        for (count, measured) in [(c.warmup, false), (c.repetitions, true)] {
            session.comm().barrier();
            if state.failure.is_some() || count == 0 {
                continue;
            }
            let phase = Phase {
                f,
                bytes,
                count,
                measured,
            };
            let r = if throughput {
                throughput_phase(&session, args.in_flight, phase, &mut rr, &mut state)
            } else {
                warm_phase(&session, phase, &mut rr, &mut state)
            };
            if let Err(e) = r {
                state.fail(format!("{mode} {bytes} B: {e}"));
            }
        }
        progress(session.comm(), &state, mode, bytes, t);
    }
    let gathered = gather_all(session.comm(), &state);
    let report = session.finish();
    let (gathered, report) = (gathered?, report?);
    complete(comm, args, &state, gathered, report)
}

/// One phase of one size: `count` calls of `f`, recorded when `measured`.
#[derive(Clone, Copy)]
struct Phase {
    f: crate::client::FunctionId,
    bytes: usize,
    count: usize,
    measured: bool,
}

impl Phase {
    /// The input of every call of rank `rank` (its bytes differ by size and rank) and a buffer
    /// for the results.
    fn buffers(&self, rank: i32) -> (Vec<u8>, Vec<u8>) {
        let input = payload(self.bytes, self.bytes + rank as usize);
        (input, vec![0u8; self.bytes.max(1)])
    }
}

fn warm_phase(
    session: &Session,
    p: Phase,
    rr: &mut RoundRobin,
    state: &mut RankState,
) -> Result<(), InvokeError> {
    let (input, mut output) = p.buffers(state.rank);
    for i in 0..p.count {
        let (w, node, worker) = rr.take()?;
        let t = Instant::now();
        session.offload_on(w, p.f, &input, &mut output)?;
        let ns = t.elapsed().as_nanos() as u64;
        if p.measured {
            state.record("warm", p.bytes, &node, worker, i, ns, vec![]);
        }
    }
    Ok(())
}

/// `in_flight` offloads in flight (submit, wait for the oldest, submit again); when measured,
/// the rank's rate is its calls over the time from the phase's start (a barrier on every
/// rank) to its last result.
fn throughput_phase(
    session: &Session,
    in_flight: usize,
    p: Phase,
    rr: &mut RoundRobin,
    state: &mut RankState,
) -> Result<(), InvokeError> {
    let (input, mut output) = p.buffers(state.rank);
    let mut flight = VecDeque::with_capacity(in_flight);
    let mut submitted = 0usize;
    let first_record = state.records.len();
    let start = Instant::now();
    loop {
        while flight.len() < in_flight && submitted < p.count {
            let (w, node, worker) = rr.take()?;
            let t = Instant::now();
            let o = session.offload_async_on(w, p.f, &input, output.len())?;
            flight.push_back((submitted, node, worker, t, o));
            submitted += 1;
        }
        // Anything still in flight after an error is dropped with the session.
        let Some((i, node, worker, t, o)) = flight.pop_front() else {
            break;
        };
        session.wait(o, &mut output)?;
        let ns = t.elapsed().as_nanos() as u64;
        if p.measured {
            state.record("throughput", p.bytes, &node, worker, i, ns, vec![]);
        }
    }
    if p.measured {
        let elapsed_ns = start.elapsed().as_nanos() as u64;
        // The columns analysis/ computes the rate from: in_flight, duration_ns.
        for r in &mut state.records[first_record..] {
            r.phases = vec![in_flight as u64, elapsed_ns];
        }
        state.rates.push((
            p.bytes,
            Rate {
                invocations: p.count as u64,
                elapsed_ns,
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_every_worker_in_turn() {
        let place = |node: &str, worker| WorkerPlace {
            node: node.into(),
            address: node.into(),
            allocation: 1,
            worker,
            core: 0,
        };
        let mut rr = RoundRobin::new(&[place("a", 0), place("a", 1), place("b", 0)]);
        let got: Vec<_> = (0..6).map(|_| rr.take().unwrap()).collect();
        let want = [
            (0, "a", 0),
            (1, "a", 1),
            (2, "b", 0),
            (0, "a", 0),
            (1, "a", 1),
            (2, "b", 0),
        ];
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0, g.1.as_str(), g.2), w);
        }
        assert!(RoundRobin::new(&[]).take().is_err());
    }
}
