//! `scalable_benchmark` (feature `mpi`): the invocation benchmarks run from every rank of an MPI
//! job at once, as in the rFaaS scalability experiments.
//!
//! ```text
//! mpirun -n N scalable_benchmark --cluster FILE --function NAME --sizes LIST --repetitions R \
//!     --output FILE [--mode warm|throughput|cold]
//! ```
//!
//! * `warm`: a [`Session`](crate::mpi_glue::Session) gives every rank its own workers; per
//!   payload size every rank makes `warmup` then `repetitions` blocking offloads (one row each),
//!   each phase started by a barrier so that the ranks measure at the same time.
//! * `throughput`: the same session, `--in-flight K` offloads in flight per rank (submit, wait
//!   for the oldest, submit again); one row per invocation (submit-to-result latency), and the
//!   invocations per second of each rank and of the job.
//! * `cold`: no session: per repetition, a barrier, then every rank at once leases a core,
//!   allocates an executor, connects and makes the first invocation (`Cluster::allocate`, timed
//!   per phase as in `cold_benchmark`), then deallocates; a row's mode says where its executor
//!   came from, `cold-pool` (the manager's pool) or `cold-fresh` (spawned for it).
//!
//! Every rank's rows travel to rank 0 as typed records (serde into postcard bytes) with
//! `Gatherv` ([`gather_bytes`](crate::mpi_glue::collective::gather_bytes)); rank 0 decodes them
//! (rayon: one task per rank) and writes ONE CSV (the columns of the other invocation
//! benchmarks, `rank` and `world_size` filled in, plus
//! [`COLD_PHASES`](crate::bench::invocation::COLD_PHASES) for `cold`), a JSON metadata file
//! beside it (world size, MPI library, each rank's workers, throughput, billing), and prints a
//! summary from the ranks' HDR histograms, merged (total per mode and size, then each rank's
//! percentiles).
//!
//! A rank whose executor dies (or whose calls fail otherwise) stops measuring that size, keeps
//! the rows it has, reports the error on its stderr, skips the rest of the run and still takes
//! part in every collective: the loops reach every barrier and gather on every path. Rank 0
//! then writes the files with everyone's rows, names the failed ranks, and [`run`] returns them
//! in [`Outcome::failed`] (the binary exits with status 1).
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | flags, modes, errors, the entry points, where a rank's thread runs |
//! | `rank.rs` | one rank's measurements and what it reports to rank 0 |
//! | `session.rs` | `warm` and `throughput`: the session and its measured phases |
//! | `cold.rs` | `cold`: concurrent cold starts |
//! | `gather.rs` | every rank's rows and summary to rank 0, as typed records |
//! | `report.rs` | rank 0: the CSV, the metadata, the summary (histograms merged with rayon) |

mod cold;
mod gather;
mod rank;
mod report;
mod session;

use std::time::Duration;

use clap::{Args as ClapArgs, ValueEnum};
use mpi::traits::*;

use super::invocation::{BenchError, CommonArgs};
use super::placement::{ClientPlacement, WorkerCore};
use crate::client::{ClientError, ClientOptions};
use crate::mpi_glue::SessionError;

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
        ScalableMode::Warm | ScalableMode::Throughput => session::run_session(comm, args),
        ScalableMode::Cold => cold::run_cold(comm, args),
    }
}

/// Pins this rank's thread ([`ClientPlacement`]): to `--client-core` when given, else to a core
/// of its cpuset that none of its own `workers` uses (on a real cluster they are on other nodes
/// and this costs nothing), counted down from the last one by local rank, so that with one rank
/// it is where warm_benchmark's client goes. When every core of its cpuset is one of its
/// workers' (mpirun bound the rank to that core: run it with `--bind-to none`), the rank stays
/// where it is and says so. Every rank prints on stderr where its workers and its thread run.
fn place_client(args: &ScalableArgs, rank: i32, workers: &[WorkerCore]) -> ClientPlacement {
    let local: usize = std::env::var("OMPI_COMM_WORLD_LOCAL_RANK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rank as usize);
    let mut client = ClientPlacement::new(
        &format!("scalable_benchmark rank {rank}"),
        args.common.client_core,
        local,
    );
    client.place(workers);
    client
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
