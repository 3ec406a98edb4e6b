//! `scalable_benchmark` (feature `mpi`): the invocation benchmarks run from every rank of an MPI
//! job at once, as in the rFaaS scalability experiments.
//!
//! ```text
//! mpirun -n N scalable_benchmark --cluster FILE --function NAME --sizes LIST --repetitions R \
//!     --output FILE [--mode warm|throughput|cold]
//! ```
//!
//! * `warm`: a [`Session`] gives every rank its own workers; per payload size every rank makes
//!   `warmup` then `repetitions` blocking offloads (one row each), each phase started by a
//!   barrier so that the ranks measure at the same time.
//! * `throughput`: the same session, `--in-flight K` offloads in flight per rank (submit, wait
//!   for the oldest, submit again); one row per invocation (submit-to-result latency), and the
//!   invocations per second of each rank and of the job.
//! * `cold`: no session: per repetition, a barrier, then every rank at once leases a core,
//!   allocates an executor, connects and makes the first invocation (`Cluster::allocate`, timed
//!   per phase as in `cold_benchmark`), then deallocates.
//!
//! Every rank's rows travel to rank 0 with `Gatherv` ([`gather_bytes`]), which writes ONE CSV
//! (the columns of the other invocation benchmarks, `rank` and `world_size` filled in, plus
//! [`COLD_PHASES`] for `cold`), a JSON metadata file beside it (world size, MPI library, each
//! rank's workers, throughput, billing), and prints a summary from the ranks' HDR histograms,
//! merged (total per mode and size, then each rank's percentiles).
//!
//! A rank whose executor dies (or whose calls fail otherwise) stops measuring that size, keeps
//! the rows it has, reports the error on its stderr, skips the rest of the run and still takes
//! part in every collective: the loops reach every barrier and gather on every path. Rank 0
//! then writes the files with everyone's rows, names the failed ranks, and [`run`] returns them
//! in [`Outcome::failed`] (the binary exits with status 1).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};
use mpi::traits::*;
use serde::{Deserialize, Serialize};

use super::invocation::{
    library_path, payload, pin_client, write_outputs, BenchError, CommonArgs, Record, COLD_PHASES,
};
use super::stats::Latencies;
use crate::client::{AllocationSpec, ClientError, ClientOptions, Cluster, InvokeError};
use crate::mpi_glue::collective::{all_flags, gather_bytes};
use crate::mpi_glue::{Session, SessionConfig, SessionError, SessionReport, WorkerPlace};
use crate::rdma::{Fabric, FabricUser};

/// The `benchmark` column.
pub const BENCHMARK: &str = "scalable_benchmark";

/// What `scalable_benchmark` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScalableMode {
    /// Latency of blocking offloads from every rank at once.
    Warm,
    /// `--in-flight` offloads in flight per rank: latency and invocations per second.
    Throughput,
    /// Concurrent cold starts (lease, allocation, connection, first call) from every rank.
    Cold,
}

impl ScalableMode {
    /// The name in the `mode` column.
    pub fn name(self) -> &'static str {
        match self {
            ScalableMode::Warm => "warm",
            ScalableMode::Throughput => "throughput",
            ScalableMode::Cold => "cold",
        }
    }
}

/// Flags of `scalable_benchmark`.
#[derive(ClapArgs, Clone, Debug)]
pub struct ScalableArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// `warm`: blocking offloads, latency per size from every rank; `throughput`: --in-flight
    /// offloads in flight per rank, latency and invocations/s; `cold`: every rank at once
    /// leases, allocates, connects and invokes once, per repetition (phase columns).
    #[arg(long, value_enum, default_value_t = ScalableMode::Warm)]
    pub mode: ScalableMode,
    /// Workers (executor cores) per rank (warm, throughput).
    #[arg(long, default_value_t = 1)]
    pub cores_per_rank: u32,
    /// Offloads in flight per rank (throughput; 1..=256; also the slots per worker).
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Executor hot timeout, ms: -1 always hot (busy-polling), 0 always warm (sleeps between
    /// calls; use it when ranks and executors outnumber the cores), > 0 hot that long after work.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub hot_timeout_ms: i64,
    /// How long a waiting rank busy-polls before it sleeps on the completion queue, µs
    /// (default: it always busy-polls, as warm_benchmark does).
    #[arg(long)]
    pub client_spin_us: Option<u64>,
}

/// Why `scalable_benchmark` could not run (a failing rank is not an error: see [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum ScalableError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// The session (MPI, lease, allocation, connection) could not be set up.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Reading the library or writing the results.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// The cluster (cold mode).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Some rank could not open the cluster or read the library (cold mode).
    #[error("ranks {0:?} could not open the cluster or read the library")]
    Peers(Vec<i32>),
}

/// What a run produced, on this rank.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// This rank.
    pub rank: i32,
    /// Ranks in the job.
    pub world_size: i32,
    /// On rank 0: the ranks that failed, with their first error (empty elsewhere).
    pub failed: Vec<(i32, String)>,
    /// On rank 0: the summary lines printed.
    pub summary: Vec<String>,
}

/// Initialises MPI, runs the benchmark on `MPI_COMM_WORLD`, finalises MPI.
pub fn run(args: &ScalableArgs) -> Result<Outcome, ScalableError> {
    validate(args)?;
    let universe = crate::mpi_glue::init()?;
    let world = universe.world();
    let r = run_on(&world, args);
    drop(world);
    drop(universe);
    r
}

fn validate(args: &ScalableArgs) -> Result<(), ScalableError> {
    let c = &args.common;
    let bad = |m: &str| Err(ScalableError::Usage(m.into()));
    if c.sizes.is_empty() {
        return bad("--sizes needs at least one size");
    }
    if c.repetitions == 0 {
        return bad("--repetitions must be at least 1");
    }
    if c.sizes.iter().any(|&s| s > u32::MAX as usize) {
        return bad("payload sizes must fit in 32 bits");
    }
    if !(1..=256).contains(&args.in_flight) {
        return bad("--in-flight must be in 1..=256");
    }
    if args.cores_per_rank == 0 {
        return bad("--cores-per-rank must be at least 1");
    }
    Ok(())
}

/// Runs the benchmark on every rank of `comm` (collective). Errors in setting up are the same
/// on every rank; a rank failing later is reported in [`Outcome::failed`] on rank 0.
pub fn run_on<C: Communicator>(comm: &C, args: &ScalableArgs) -> Result<Outcome, ScalableError> {
    let (rank, size) = (comm.rank(), comm.size());
    if rank == 0 {
        eprintln!(
            "[scalable_benchmark] {} ranks, mode {}, sizes {:?}, {} repetitions (+{} warm-up)",
            size,
            args.mode.name(),
            args.common.sizes,
            args.common.repetitions,
            args.common.warmup
        );
    }
    match args.mode {
        ScalableMode::Warm | ScalableMode::Throughput => run_session(comm, args),
        ScalableMode::Cold => run_cold(comm, args),
    }
}

/// Pins this rank's thread: to `--client-core` when given, else to a core of its cpuset that
/// none of its own workers uses (`avoid`: their cores; on a real cluster they are on other
/// nodes and this costs nothing), counted down from the last one by local rank, so that with
/// one rank it is where warm_benchmark's client goes. When every core of its cpuset is one of
/// its workers' (mpirun bound the rank to that core: run it with `--bind-to none`), the rank
/// stays where it is and says so.
fn pin_rank(args: &ScalableArgs, rank: i32, avoid: &[usize]) {
    if args.common.client_core.is_some() {
        return pin_client(args.common.client_core);
    }
    let local: usize = std::env::var("OMPI_COMM_WORLD_LOCAL_RANK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rank as usize);
    let free: Vec<usize> = crate::pin::allowed_cores()
        .into_iter()
        .filter(|c| !avoid.contains(c))
        .collect();
    if free.is_empty() {
        eprintln!(
            "[scalable_benchmark] rank {rank}: every core it may use runs one of its own \
             workers; not pinned (run mpirun with --bind-to none)"
        );
        return;
    }
    pin_client(Some(free[free.len() - 1 - local % free.len()]));
}

fn client_options(args: &ScalableArgs) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(args.common.timeout_s.max(1)),
        spin: args
            .client_spin_us
            .map_or(Duration::from_secs(3600), Duration::from_micros),
        ..ClientOptions::default()
    }
}

fn max_size(args: &ScalableArgs) -> u32 {
    args.common.sizes.iter().copied().max().unwrap_or(64).max(1) as u32
}

/// One worker of a rank, as the metadata lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Place {
    node: String,
    address: String,
    allocation: u64,
    worker: usize,
    core: u32,
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
struct Rate {
    invocations: u64,
    elapsed_ns: u64,
}

impl Rate {
    fn per_s(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.invocations as f64 * 1e9 / self.elapsed_ns as f64
        }
    }
}

/// What a rank sends rank 0 besides its rows.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RankSummary {
    rank: i32,
    failure: Option<String>,
    workers: Vec<Place>,
    /// (mode, payload bytes, HDR V2 bytes in hex).
    histograms: Vec<(String, usize, String)>,
    /// (payload bytes, rate) in throughput mode.
    rates: Vec<(usize, Rate)>,
}

/// One rank's measurements so far.
struct RankState {
    rank: i32,
    world_size: i32,
    provider: String,
    records: Vec<Record>,
    histograms: BTreeMap<(String, usize), Latencies>,
    rates: Vec<(usize, Rate)>,
    failure: Option<String>,
    workers: Vec<Place>,
}

impl RankState {
    fn new(rank: i32, world_size: i32, provider: String) -> RankState {
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
    fn record(
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
            benchmark: BENCHMARK,
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

    fn fail(&mut self, what: String) {
        eprintln!("[scalable_benchmark] rank {}: {what}", self.rank);
        self.failure.get_or_insert(what);
    }

    fn summary(&self) -> RankSummary {
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
fn progress<C: Communicator>(comm: &C, state: &RankState, mode: &str, size: usize, t: Instant) {
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

fn run_session<C: Communicator>(comm: &C, args: &ScalableArgs) -> Result<Outcome, ScalableError> {
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
    let own_cores: Vec<usize> = places.iter().map(|p| p.core as usize).collect();
    pin_rank(args, rank, &own_cores);
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
                bytes,
                count,
                measured,
            };
            let r = if throughput {
                throughput_phase(&session, args.in_flight, f, phase, &mut rr, &mut state)
            } else {
                warm_phase(&session, f, phase, &mut rr, &mut state)
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

/// One phase of one size: `count` calls, recorded when `measured`.
#[derive(Clone, Copy)]
struct Phase {
    bytes: usize,
    count: usize,
    measured: bool,
}

fn warm_phase(
    session: &Session,
    f: crate::client::FunctionId,
    p: Phase,
    rr: &mut RoundRobin,
    state: &mut RankState,
) -> Result<(), InvokeError> {
    let input = payload(p.bytes, p.bytes + state.rank as usize);
    let mut output = vec![0u8; p.bytes.max(1)];
    for i in 0..p.count {
        let (w, node, worker) = rr.take()?;
        let t = Instant::now();
        session.offload_on(w, f, &input, &mut output)?;
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
    f: crate::client::FunctionId,
    p: Phase,
    rr: &mut RoundRobin,
    state: &mut RankState,
) -> Result<(), InvokeError> {
    let input = payload(p.bytes, p.bytes + state.rank as usize);
    let mut output = vec![0u8; p.bytes.max(1)];
    let mut flight = VecDeque::with_capacity(in_flight);
    let mut submitted = 0usize;
    let first_record = state.records.len();
    let start = Instant::now();
    loop {
        while flight.len() < in_flight && submitted < p.count {
            let (w, node, worker) = rr.take()?;
            let t = Instant::now();
            let o = session.offload_async_on(w, f, &input, output.len())?;
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

fn run_cold<C: Communicator>(comm: &C, args: &ScalableArgs) -> Result<Outcome, ScalableError> {
    let rank = comm.rank();
    pin_rank(args, rank, &[]);
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

/// One cold start: `(node, total ns, phases)`.
type ColdStep<'a> = &'a mut dyn FnMut(&[u8]) -> Result<(String, u64, Vec<u64>), BenchError>;

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
                Ok((node, total, phases)) => {
                    if i >= warmup {
                        state.record("cold", bytes, &node, 0, i - warmup, total, phases);
                    }
                }
                Err(e) => state.fail(format!("cold {bytes} B: {e}")),
            }
        }
        progress(comm, state, "cold", bytes, t);
    }
}

/// One cold start: `(node, total ns, phases in COLD_PHASES order)`.
fn cold_once<F: Fabric>(
    fabric: &F,
    cluster: &Cluster,
    spec: &AllocationSpec,
    args: &ScalableArgs,
    first: usize,
    input: &[u8],
) -> Result<(String, u64, Vec<u64>), BenchError> {
    let t0 = Instant::now();
    let exec = cluster.allocate(fabric, spec, client_options(args), first)?;
    let f = exec.function(&args.common.function)?;
    let mut output = vec![0u8; exec.output_capacity()];
    let t1 = Instant::now();
    let r = exec.invoke(f, input, &mut output);
    let first_ns = t1.elapsed().as_nanos() as u64;
    let total = t0.elapsed().as_nanos() as u64;
    let tm = exec.timings();
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
        vec![
            tm.request_ns.saturating_sub(tm.spawn_ns),
            tm.spawn_ns.saturating_sub(tm.code_load_ns),
            tm.code_load_ns,
            tm.connect_ns,
            first_ns,
        ],
    ))
}

/// Every rank's rows and summary, on rank 0 (collective).
struct Gathered {
    rows: Vec<Vec<u8>>,
    summaries: Vec<RankSummary>,
    /// Ranks whose rows could not travel (too many bytes for one MPI count).
    dropped: Vec<i32>,
}

fn gather_all<C: Communicator>(
    comm: &C,
    state: &RankState,
) -> Result<Option<Gathered>, ScalableError> {
    let mut csv = String::new();
    for r in &state.records {
        csv.push_str(&r.csv());
        csv.push('\n');
    }
    // Gatherv counts are i32 in total: a rank that would overflow them sends no rows (and
    // every rank agrees first, so that nobody waits in a gather the root left).
    let limit = i32::MAX as usize / comm.size().max(1) as usize;
    let fits = all_flags(comm, csv.len() <= limit);
    let dropped: Vec<i32> = (0..fits.len() as i32)
        .filter(|&r| !fits[r as usize])
        .collect();
    let rows = gather_bytes(
        comm,
        0,
        if csv.len() <= limit {
            csv.as_bytes()
        } else {
            b""
        },
    )?;
    let summary = serde_json::to_vec(&state.summary()).unwrap_or_default();
    let summaries = gather_bytes(comm, 0, &summary)?;
    Ok(match (rows, summaries) {
        (Some(rows), Some(s)) => Some(Gathered {
            rows,
            summaries: s
                .iter()
                .enumerate()
                .map(|(r, b)| {
                    serde_json::from_slice(b).unwrap_or_else(|e| RankSummary {
                        rank: r as i32,
                        failure: Some(format!("unreadable summary from rank {r}: {e}")),
                        ..RankSummary::default()
                    })
                })
                .collect(),
            dropped,
        }),
        _ => None,
    })
}

/// Rank 0 writes the files and prints the summary; then every rank meets at a barrier (so no
/// rank exits, and no failing status stops the job, before the files are out).
fn complete<C: Communicator>(
    comm: &C,
    args: &ScalableArgs,
    state: &RankState,
    gathered: Option<Gathered>,
    report: Option<SessionReport>,
) -> Result<Outcome, ScalableError> {
    let mut outcome = Outcome {
        rank: state.rank,
        world_size: state.world_size,
        ..Outcome::default()
    };
    let written = match gathered {
        Some(g) => write_root(args, state.world_size, g, report.as_ref(), &mut outcome),
        None => Ok(()),
    };
    comm.barrier();
    written.map(|()| outcome)
}

fn write_root(
    args: &ScalableArgs,
    world_size: i32,
    g: Gathered,
    report: Option<&SessionReport>,
    outcome: &mut Outcome,
) -> Result<(), ScalableError> {
    let mut records = Vec::new();
    for bytes in &g.rows {
        for line in String::from_utf8_lossy(bytes).lines() {
            if let Some(r) = parse_record(line) {
                records.push(r);
            }
        }
    }
    for s in &g.summaries {
        if let Some(f) = &s.failure {
            outcome.failed.push((s.rank, f.clone()));
        }
    }
    for &r in &g.dropped {
        if !outcome.failed.iter().any(|(f, _)| *f == r) {
            outcome
                .failed
                .push((r, "its rows exceed one MPI message; not in the CSV".into()));
        }
    }
    outcome.summary = summary_lines(&g.summaries);
    let c = &args.common;
    let config = serde_json::json!({
        "mode": args.mode.name(),
        "function": c.function,
        "sizes": c.sizes,
        "repetitions": c.repetitions,
        "warmup": c.warmup,
        "cores_per_rank": args.cores_per_rank,
        "in_flight": args.in_flight,
        "hot_timeout_ms": args.hot_timeout_ms,
        "client_spin_us": args.client_spin_us,
        "timeout_s": c.timeout_s,
    });
    let billing = |rank: i32| report.and_then(|r| r.ranks.iter().find(|x| x.rank == rank));
    let ranks: Vec<serde_json::Value> = g
        .summaries
        .iter()
        .map(|s| {
            let b = billing(s.rank);
            serde_json::json!({
                "rank": s.rank,
                "nodes": s.workers.iter().map(|w| w.node.clone()).collect::<std::collections::BTreeSet<_>>(),
                "workers": s.workers,
                "failure": s.failure,
                "execution_ns": b.map(|b| b.execution_ns),
                "hot_polling_ns": b.map(|b| b.hot_polling_ns),
                "offloads": b.map(|b| b.invocations),
                "offload_errors": b.map(|b| b.errors),
            })
        })
        .collect();
    let mut extra = serde_json::Map::new();
    extra.insert("world_size".into(), world_size.into());
    extra.insert(
        "mpi_library".into(),
        crate::mpi_glue::library_version().into(),
    );
    extra.insert("ranks".into(), ranks.into());
    if args.mode == ScalableMode::Throughput {
        extra.insert("throughput".into(), throughput_json(&g.summaries));
    }
    extra.insert(
        "failed_ranks".into(),
        serde_json::json!(outcome
            .failed
            .iter()
            .map(|(r, e)| serde_json::json!({"rank": r, "error": e}))
            .collect::<Vec<_>>()),
    );
    if let Some(r) = report {
        extra.insert("lease".into(), r.lease.into());
    }
    extra.insert("summary".into(), outcome.summary.clone().into());
    let extra_columns: &[&str] = match args.mode {
        ScalableMode::Cold => &COLD_PHASES,
        ScalableMode::Throughput => &["in_flight", "duration_ns"],
        _ => &[],
    };
    write_outputs(c, BENCHMARK, &records, extra_columns, config, extra)?;
    for l in &outcome.summary {
        println!("{l}");
    }
    eprintln!(
        "[scalable_benchmark] {} rows from {world_size} ranks: {} (metadata {})",
        records.len(),
        c.output.display(),
        c.output.with_extension("json").display()
    );
    for (r, e) in &outcome.failed {
        eprintln!("[scalable_benchmark] rank {r} failed: {e}");
    }
    Ok(())
}

/// Per size: each rank's invocations/s, and the job's (all ranks' invocations over the longest
/// rank's measuring time: every rank starts measuring as it leaves the same barrier).
fn throughput_json(summaries: &[RankSummary]) -> serde_json::Value {
    let mut per_size: BTreeMap<usize, Vec<(i32, Rate)>> = BTreeMap::new();
    for s in summaries {
        for (size, r) in &s.rates {
            per_size.entry(*size).or_default().push((s.rank, *r));
        }
    }
    per_size
        .iter()
        .map(|(size, rates)| {
            serde_json::json!({
                "payload_bytes": size,
                "ranks": rates.iter().map(|(rank, r)| serde_json::json!({
                    "rank": rank,
                    "invocations": r.invocations,
                    "seconds": r.elapsed_ns as f64 / 1e9,
                    "invocations_per_s": r.per_s(),
                })).collect::<Vec<_>>(),
                "total_invocations_per_s": total_rate(rates),
            })
        })
        .collect::<Vec<_>>()
        .into()
}

fn total_rate(rates: &[(i32, Rate)]) -> f64 {
    let n: u64 = rates.iter().map(|(_, r)| r.invocations).sum();
    let longest = rates.iter().map(|(_, r)| r.elapsed_ns).max().unwrap_or(0);
    Rate {
        invocations: n,
        elapsed_ns: longest,
    }
    .per_s()
}

/// The summary: per (mode, size) the ranks' histograms merged, then each rank's own line, and
/// in throughput mode each rank's and the job's invocations/s.
fn summary_lines(summaries: &[RankSummary]) -> Vec<String> {
    let mut per: BTreeMap<(String, usize), Vec<(i32, Latencies)>> = BTreeMap::new();
    for s in summaries {
        for (mode, size, hex_bytes) in &s.histograms {
            let h = hex::decode(hex_bytes)
                .ok()
                .and_then(|b| Latencies::from_bytes(&b))
                .unwrap_or_default();
            per.entry((mode.clone(), *size))
                .or_default()
                .push((s.rank, h));
        }
    }
    let mut lines = vec![format!(
        "{:<10} {:>10} {:>5} {:>9} {:>10} {:>10} {:>10}",
        "mode", "payload", "ranks", "count", "p50_ns", "p99_ns", "p99.9_ns"
    )];
    for ((mode, size), hs) in &per {
        let mut total = Latencies::new();
        for (_, h) in hs {
            total.merge(h);
        }
        lines.push(format!(
            "{mode:<10} {size:>10} {:>5} {:>9} {:>10} {:>10} {:>10}",
            hs.len(),
            total.count(),
            total.quantile_ns(0.5),
            total.quantile_ns(0.99),
            total.quantile_ns(0.999)
        ));
    }
    for ((mode, size), hs) in &per {
        for (rank, h) in hs {
            lines.push(format!(
                "rank {rank} {mode} {size} B: count {}, p50 {} ns, p99 {} ns, p99.9 {} ns",
                h.count(),
                h.quantile_ns(0.5),
                h.quantile_ns(0.99),
                h.quantile_ns(0.999)
            ));
        }
    }
    let mut per_size: BTreeMap<usize, Vec<(i32, Rate)>> = BTreeMap::new();
    for s in summaries {
        for (size, r) in &s.rates {
            per_size.entry(*size).or_default().push((s.rank, *r));
        }
    }
    for (size, rates) in &per_size {
        for (rank, r) in rates {
            lines.push(format!(
                "rank {rank} throughput {size} B: {:.0} invocations/s",
                r.per_s()
            ));
        }
        lines.push(format!(
            "total throughput {size} B: {:.0} invocations/s from {} ranks",
            total_rate(rates),
            rates.len()
        ));
    }
    lines
}

/// A CSV line of [`Record::csv`] back into a record (rank 0 reads the gathered rows).
fn parse_record(line: &str) -> Option<Record> {
    let f: Vec<&str> = line.split(',').collect();
    if f.len() < 10 || f[0] != BENCHMARK {
        return None;
    }
    Some(Record {
        benchmark: BENCHMARK,
        mode: f[1].to_string(),
        provider: f[2].to_string(),
        payload_bytes: f[3].parse().ok()?,
        rank: f[4].parse().ok()?,
        world_size: f[5].parse().ok()?,
        node: f[6].to_string(),
        worker: f[7].parse().ok()?,
        repetition: f[8].parse().ok()?,
        latency_ns: f[9].parse().ok()?,
        phases: f[10..]
            .iter()
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u64>>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_csv() {
        let r = Record {
            benchmark: BENCHMARK,
            mode: "cold".into(),
            provider: "shm".into(),
            payload_bytes: 64,
            rank: 3,
            world_size: 4,
            node: "em-1".into(),
            worker: 0,
            repetition: 7,
            latency_ns: 12345,
            phases: vec![1, 2, 3, 4, 5],
        };
        let back = parse_record(&r.csv()).unwrap();
        assert_eq!(back.csv(), r.csv());
        assert!(parse_record("warm_benchmark,hot,shm,64,0,1,n,0,0,1").is_none());
    }

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

    #[test]
    fn summary_merges_histograms_and_rates() {
        let mut h = Latencies::new();
        h.record(Duration::from_micros(5));
        let s = |rank| RankSummary {
            rank,
            histograms: vec![("throughput".into(), 64, hex::encode(h.to_bytes()))],
            rates: vec![(
                64,
                Rate {
                    invocations: 1000,
                    elapsed_ns: 1_000_000_000 / (rank as u64 + 1),
                },
            )],
            ..RankSummary::default()
        };
        let lines = summary_lines(&[s(0), s(1)]);
        assert!(lines[1].contains("throughput") && lines[1].contains(" 2 "));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("rank 1 throughput 64 B:")));
        // 2000 invocations over the longest rank's second.
        assert!(lines
            .iter()
            .any(|l| l == "total throughput 64 B: 2000 invocations/s from 2 ranks"));
    }
}
