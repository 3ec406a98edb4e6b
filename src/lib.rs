//! # rfaas — serverless functions for supercomputers, invoked in microseconds over RDMA
//!
//! A Rust successor of rFaaS (Copik et al., IPDPS'23). Idle cores on cluster nodes are rented out
//! as leases; clients write a function's input straight into an executor's memory with one RDMA
//! write-with-immediate, the executor runs the function and writes the result straight back.
//!
//! ## Quick start
//!
//! ```text
//! make demo      # install what is needed, build, run the main job (local cluster on shm)
//! make test      # install what is needed, build, run the whole test suite
//! ```
//!
//! ## Crate layout
//!
//! * [`rdma`] — the fabric layer: one verbs-shaped API over shared memory, TCP, and (feature
//!   `verbs`) InfiniBand/RoCE verbs.
//! * [`protocol`] — the invocation protocol (header, immediates, slots and credits, hot/warm
//!   schedule) as pure state machines.
//! * [`control`] — control-plane messages (HTTP/JSON) and secrets.
//! * [`function`] — function libraries with the rFaaS C ABI: the content-hash cache and the
//!   loader; the ABI types and the export macros come from the function authors' crate
//!   `rfaas-function` (`crates/rfaas-function`), re-exported here. Function state loaded once:
//!   an allocation ships named assets ([`client::AllocationSpec::add_asset`]), and the library's
//!   optional init function ([`export_init!`], or `rfaas_init` in C) receives them once per
//!   executor before the first invocation ([`function::assets`]).
//! * [`executor`] — the executor process: one pinned worker thread per leased core.
//! * [`executor_manager`] — the executor manager, one per node: its HTTP API
//!   (`http_server`), allocation in named steps (`service`), spawning and reaping executors
//!   (`spawn`), the link to the resource manager (`resource_manager_link`), billing.
//! * [`scheduler`] — the resource manager's registry of nodes and leases as a pure state
//!   machine, one file per concern: `registration` (register, heartbeat, drain, deregister),
//!   `leasing` (grant, renew, release), `expiry` (tick: where a lease expires), `snapshot`
//!   (restart recovery), `placement`, `invariants`.
//! * [`resource_manager`] — the resource manager (`rfaas resource-manager`): the scheduler
//!   behind an HTTP/JSON API, with durable state.
//! * [`manager_process`] — what both managers' processes do alike around their API: session,
//!   runtime, listening, serving until SIGTERM or SIGINT.
//! * [`http`] — what the HTTP servers share: JSON errors, body limits, authentication.
//! * [`client`] — the client library: allocate, connect, invoke (blocking, async, parallel).
//! * [`cluster`] — cluster files and a local cluster on one machine.
//! * [`bench`](mod@bench) — the benchmarks behind the thin binaries.
//! * [`pin`] — pinning threads to cores (hwloc with feature `hwloc`).
//! * [`env`](mod@env) — every environment variable rfaas reads.
//! * [`size`] — the one parser of sizes in bytes (`4096`, `64KiB`, `16GiB`, `2GB`).
//! * [`atomic_write`] — the one way a file is replaced atomically (and durably when asked).
//!
//! ## Features
//!
//! | feature | what it adds | build dependencies (Debian) |
//! |---|---|---|
//! | (default) | shm and tcp providers, managers, client, benchmarks: Rust, and mimalloc (the `rfaas` binary's allocator, built from C) | a C compiler (`build-essential`) |
//! | `verbs` | the InfiniBand/RoCE provider (`rdma-sys`, rdma_cm) | `libibverbs-dev librdmacm-dev libclang-dev` |
//! | `hwloc` | topology-aware pinning near the NIC (`hwlocality`) | `libhwloc-dev libudev-dev` |
//! | `mpi` | the MPI client layer (rsmpi over OpenMPI) | `libopenmpi-dev libclang-dev` |
//!
//! At run time `verbs` needs `libibverbs1 librdmacm1` (and a device to do anything useful),
//! `hwloc` needs `libhwloc15`, `mpi` needs OpenMPI.

pub mod atomic_write;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod control;
pub mod env;
pub mod executor;
pub mod executor_manager;
pub mod function;
pub mod http;
pub mod http_agent;
pub mod logging;
pub mod manager_process;
#[cfg(feature = "mpi")]
pub mod mpi_glue;
pub mod pin;
pub mod protocol;
pub mod rdma;
pub mod resource_manager;
pub mod scheduler;
pub mod size;

#[cfg(feature = "mpi")]
pub use mpi_glue::{offload, offload_async};

/// Export a safe Rust function with the rFaaS C ABI (`export_function!`) and a library's init
/// function (`export_init!`): the macros of the function authors' crate `rfaas-function`,
/// re-exported (a function library should depend on that crate alone).
pub use rfaas_function::{export_function, export_init};
