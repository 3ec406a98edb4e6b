//! The MPI client layer (feature `mpi`, rsmpi over OpenMPI): the ranks of a job share leases
//! and offload to their own workers with no MPI traffic per call.
//!
//! A [`Session`] is collective over a duplicate of the application's communicator:
//!
//! 1. rank 0 leases `size × cores_per_rank` cores from the resource manager once for the job
//!    (split over nodes when one has too few) and makes one allocation per rank and node, so
//!    that each rank's executors are its own ([`plan::divide`]);
//! 2. the allocations (addresses, worker indices, per-allocation tokens) are scattered to the
//!    ranks with `Scatterv`;
//! 3. every rank connects directly to its workers, and the ranks agree (`Allgather`) that all
//!    of them did before anyone invokes;
//! 4. [`offload`] / [`offload_async`] (or the methods of the same names) invoke from the rank
//!    over the fabric: one write each way, no MPI call;
//! 5. [`Session::finish`] gathers every rank's HDR histogram, counts and errors to rank 0
//!    (`Gatherv`), which adds each rank's billing from the executor managers, ends the
//!    allocations and releases the lease.
//!
//! A rank whose executor died gets [`crate::client::InvokeError::ExecutorGone`] from its
//! offloads; the other ranks carry on, and the report says which rank failed and why.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use rfaas::mpi_glue::{Session, SessionConfig};
//!
//! let universe = rfaas::mpi_glue::init()?;
//! let world = universe.world();
//! let cfg = SessionConfig::new("target/release/libfunctions.so", &["echo"]);
//! let session = Session::start(&world, &cfg)?; // collective
//! let mut out = vec![0u8; 64];
//! let n = rfaas::offload(&session, "echo", b"hello", &mut out)?;
//! assert_eq!(&out[..n], b"hello");
//! if let Some(report) = session.finish()? {
//!     // rank 0: every rank's latencies and billing
//!     println!("{} invocations, p50 {} ns", report.total.count(), report.total.quantile_ns(0.5));
//! }
//! # Ok(()) }
//! ```
//!
//! Threads: MPI is initialised with `MPI_THREAD_FUNNELED` ([`init`]); a session and its
//! offloads belong to the thread that started it (it is not `Sync`). Local threads may compute
//! meanwhile: submit with [`offload_async`], work, then [`Session::wait`].

pub mod collective;
pub mod plan;
mod report;
mod session;

pub use report::{RankReport, SessionReport};
pub use session::{offload, offload_async, Offload, Session, SessionConfig, WorkerPlace};

use crate::client::{ClientError, InvokeError};

/// What can go wrong in a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Talking to the cluster failed on this rank.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An invocation failed.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// The leased cores cannot be divided among the ranks.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// Rank 0 could not set the session up; every rank gets its message.
    #[error("session setup on rank 0 failed: {0}")]
    Leader(String),
    /// Some ranks could not connect to their workers: the session is off on every rank.
    #[error("ranks {ranks:?} could not connect to their workers{}", own.as_ref().map(|e| format!(" (this rank: {e})")).unwrap_or_default())]
    Peers {
        /// The ranks that failed.
        ranks: Vec<i32>,
        /// This rank's own error, when it is one of them.
        own: Option<String>,
    },
    /// MPI itself (initialisation, thread level, message sizes).
    #[error("MPI: {0}")]
    Mpi(String),
}

/// Initialises MPI with `MPI_THREAD_FUNNELED` (a lease renewer thread runs beside the main
/// thread but never calls MPI) and checks that the library provides it. Once per process.
pub fn init() -> Result<mpi::environment::Universe, SessionError> {
    let (universe, provided) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        .ok_or_else(|| SessionError::Mpi("MPI is already initialised in this process".into()))?;
    if provided == mpi::Threading::Single {
        return Err(SessionError::Mpi(format!(
            "the MPI library provides thread level {provided:?}, rfaas needs Funneled"
        )));
    }
    Ok(universe)
}

/// The MPI library's version string (OpenMPI's ends with a NUL byte: trimmed).
pub fn library_version() -> String {
    mpi::environment::library_version()
        .unwrap_or_default()
        .trim_end_matches('\0')
        .trim()
        .to_string()
}
