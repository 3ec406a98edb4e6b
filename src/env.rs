//! Every environment variable rfaas reads, in one place.

/// Fabric provider: `shm` (default), `tcp`, `verbs` or `ofi`; read by the library,
/// `fabric_pingpong`, `rfaas local-cluster start` and `rfaas executor-manager` (a `--provider`
/// flag wins).
pub const PROVIDER: &str = "RFAAS_PROVIDER";
/// RDMA device name for the verbs provider (default: the first device found), e.g. `mlx5_0`.
pub const VERBS_DEVICE: &str = "RFAAS_VERBS_DEVICE";
/// libfabric provider of the `ofi` fabric provider (`shm`, `tcp;ofi_rxm`, `cxi`, `efa`, ...);
/// libfabric's own `FI_PROVIDER` is used when this is unset.
pub const OFI_PROVIDER: &str = "RFAAS_OFI_PROVIDER";
/// Log filter, as for `tracing_subscriber::EnvFilter` (e.g. `info`, `rfaas=debug`).
pub const LOG: &str = "RUST_LOG";
/// Size of the shm provider's read-write arena (the sparse shared memory that remotely accessible
/// regions are carved from), in bytes or with a unit (`1GiB`, see [`crate::size`]); default
/// 16 GiB of address space, only touched pages use memory. The read-only arena is a quarter of
/// it. A value that does not parse is an error, never ignored.
pub const SHM_ARENA_BYTES: &str = "RFAAS_SHM_ARENA_BYTES";
/// Tests only: path of a prebuilt `libfunctions.so` (otherwise the tests build it).
pub const TEST_FUNCTIONS_LIB: &str = "RFAAS_TEST_FUNCTIONS_LIB";
/// The cluster file (`cluster.json`, written by `rfaas local-cluster start` or a batch script) that
/// clients, benchmarks and `rfaas status` read when no `--cluster FILE` is given.
pub const CLUSTER: &str = "RFAAS_CLUSTER";
/// Tests only: IP address of the `RFAAS_VERBS_DEVICE` device that the verbs conformance and unit
/// tests listen on (default: the first address rdma_cm binds to that device).
pub const TEST_VERBS_ADDR: &str = "RFAAS_TEST_VERBS_ADDR";
/// Tests only: a libfabric provider (`cxi`, `efa`, ...) the `ofi` conformance suite also runs on
/// (trials `ofi-env::*`), besides libfabric's `shm` and `tcp;ofi_rxm`.
pub const TEST_OFI_PROVIDER: &str = "RFAAS_TEST_OFI_PROVIDER";
/// Tests only (`python/tests`, read there): the cargo output directory holding `rfaas` and
/// `libfunctions.so` (default `target/debug`).
pub const TARGET_DIR: &str = "RFAAS_TARGET_DIR";
/// Clients: authenticate with MUNGE (a fresh credential per request from munged's default
/// socket) instead of the cluster secret, when `1` (or `true`, `yes`); the cluster file's secret
/// is then not read. See [`crate::client::Credential`].
pub const MUNGE: &str = "RFAAS_MUNGE";
/// Clients: authenticate with MUNGE through munged's socket at this path (implies
/// [`MUNGE`]).
pub const MUNGE_SOCKET: &str = "RFAAS_MUNGE_SOCKET";
/// Tests only (`tests/chaos.rs`): the chaos run's seed (default: from the clock; printed, so a
/// failing run can be repeated).
pub const CHAOS_SEED: &str = "RFAAS_CHAOS_SEED";
/// Tests only (`tests/chaos.rs`): how many faults the chaos run injects (default 20).
pub const CHAOS_STEPS: &str = "RFAAS_CHAOS_STEPS";
/// Internal, set by an executor manager for the executors it starts: the fabric provider an
/// executor opens before its configuration arrives (see [`crate::executor::EARLY_PROVIDER_ENV`]).
pub const EXECUTOR_PROVIDER: &str = crate::executor::EARLY_PROVIDER_ENV;
/// Internal, set by an executor manager for the executors it starts: the fabric address an
/// executor listens on before its configuration arrives (see
/// [`crate::executor::EARLY_LISTEN_ENV`]).
pub const EXECUTOR_LISTEN: &str = crate::executor::EARLY_LISTEN_ENV;
/// Internal, set by an executor manager for the executors of its pool: print a standby event
/// once the fabric is open (see [`crate::executor::EARLY_STANDBY_ENV`]).
pub const EXECUTOR_STANDBY: &str = crate::executor::EARLY_STANDBY_ENV;
/// Internal, set by an executor manager for the executors it starts: the cpuset they pin their
/// threads within (see [`crate::executor::CPUSET_ENV`]).
pub const EXECUTOR_CPUSET: &str = crate::executor::CPUSET_ENV;
