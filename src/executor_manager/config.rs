//! The executor manager's configuration: a TOML file, overridden by command-line flags.
//!
//! ```toml
//! # rfaas executor-manager --config em.toml
//! node = "node-7"                 # default: the host name
//! listen = "0.0.0.0:10000"        # HTTP API (port 0 picks one; see ready_file)
//! provider = "tcp"                # shm | tcp | verbs | ofi (default: $RFAAS_PROVIDER, else shm)
//! fabric_host = "10.0.0.7"        # where executors and the billing listener bind
//! cores = "2-15"                  # cores it may rent: a cpulist or [2, 3, 4]; default: its cpuset
//! manager_cores = "auto"          # where the manager's own threads run: auto (its cpuset but
//!                                 # the rented cores, if that leaves any), all, or a cpulist
//! nic = "mlx5_0"                  # order cores by this NIC (RDMA device or interface, e.g.
//!                                 # eth0); default: the RDMA device hwloc finds, if any
//! memory = "32GiB"                # memory it may rent (bytes or with a unit); default: MemTotal
//! secret_file = "/run/rfaas/secret"  # cluster secret, mode 0600 (required)
//! node_secret_file = "/run/rfaas/node-secret"  # node credential, mode 0600: sent to the
//!                                   # resource manager (none: the cluster secret is)
//! munge = true                      # also accept MUNGE credentials from clients
//! munge_socket = "/run/munge/munge.socket.2"  # munged's socket (implies munge = true)
//! run_dir = "/tmp/rfaas-em"       # executor logs (run_dir/logs), library cache (run_dir/cache)
//! executor_start_timeout_ms = 10000    # spawn until the executor reports ready
//! executor_connect_timeout_ms = 10000  # ready until the client connected every worker
//! max_allocations = 64            # live allocations at once (default: one per core)
//! pool_size = 1                   # executor processes kept started ahead of allocations
//!                                 # (default 1; 0 turns the pool off)
//! executor_start = "fork"        # fork executors from a zygote started with the manager
//!                                 # (default), or "exec" each one
//! pool_wait_ms = 20               # how long an allocation waits for a starting pooled
//!                                 # process before it spawns a fresh one (default: twice the
//!                                 # recent start time, at least 5 ms)
//! oversubscribe = 1               # BENCHMARKS ONLY: each core counts N times (N executors
//!                                 # share it); refused with a resource manager
//! request_timeout_ms = 10000      # to send a request's head, and then its body
//! stop_grace_ms = 2000            # SIGTERM to SIGKILL of an executor
//! resource_manager = "10.0.0.1:5000"  # register with this resource manager (same secret);
//!                                 # then allocations need a lease it granted
//! ```
//!
//! Unknown keys are errors (a typo must not silently fall back to a default). Every key has a
//! flag of the same name (`--fabric-host`, ...); a flag wins over the file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::control::executor_manager_api::MAX_LIBRARY_BYTES;
use crate::control::server_args::{Credentials, ServerArgs};
use crate::rdma::Provider;

pub use super::spawn::StartMethod;

pub use crate::control::server_args::ConfigError;

/// Command line of `rfaas executor-manager`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_help = "\
The config file takes every flag as a key, with '_' for '-':

  node = \"node-7\"
  listen = \"0.0.0.0:10000\"
  provider = \"tcp\"
  fabric_host = \"10.0.0.7\"
  cores = \"2-15\"
  manager_cores = \"0-1\"         # its own threads (default auto: all but the rented cores)
  nic = \"mlx5_0\"                  # rent the cores nearest this NIC first
  memory = \"32GiB\"
  secret_file = \"/run/rfaas/secret\"   # mode 0600; never put the secret on a command line
  run_dir = \"/tmp/rfaas-em\"

Stops cleanly on SIGTERM or SIGINT: its executors get SIGTERM, then SIGKILL after stop_grace_ms.
Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more.")]
pub struct ManagerArgs {
    /// The configuration file, listen address, secret and credential files, request timeout.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Node name reported to clients and in the cluster file (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Fabric provider of the executors and of billing: shm, tcp, verbs or ofi (the libfabric
    /// provider then comes from `RFAAS_OFI_PROVIDER` or `FI_PROVIDER`).
    #[arg(long)]
    pub provider: Option<Provider>,
    /// Host (address) the executors' and the billing listener's fabric endpoints bind to.
    #[arg(long, value_name = "HOST")]
    pub fabric_host: Option<String>,
    /// Cores it may rent out, as a cpulist (e.g. 2-7,12). Default: this process's cpuset.
    #[arg(long, value_name = "CPULIST")]
    pub cores: Option<String>,
    /// Cores the manager's own threads run on: `auto` (default: its cpuset but the cores it
    /// rents out, or its whole cpuset when that leaves none), `all` (its whole cpuset), or a
    /// cpulist. Executors are not bound by it: they run on their allocation's cores.
    #[arg(long, value_name = "auto|all|CPULIST")]
    pub manager_cores: Option<String>,
    /// NIC whose nearest cores are rented out first: an RDMA device (mlx5_0) or a network
    /// interface (eth0). Default: the RDMA device hwloc finds (feature hwloc), else cpuset order.
    #[arg(long, value_name = "NAME")]
    pub nic: Option<String>,
    /// Memory it may rent out: bytes, or with a unit (512MiB, 4GiB, 8G). Default: MemTotal.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Directory for executor logs (RUN_DIR/logs) and the library cache (RUN_DIR/cache).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Library cache directory (default RUN_DIR/cache).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// How long an executor may take to report ready, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub executor_start_timeout_ms: Option<u64>,
    /// How long an executor waits for its client to connect every worker, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub executor_connect_timeout_ms: Option<u64>,
    /// Most live allocations at once (default: one per core).
    #[arg(long, value_name = "N")]
    pub max_allocations: Option<u32>,
    /// Executor processes kept started ahead of allocations (default 1; 0: no pool).
    #[arg(long, value_name = "N")]
    pub pool_size: Option<usize>,
    /// How executors start: `fork` (default: forked from a zygote process the manager starts
    /// once, about 1 ms sooner than `exec` on a VM) or `exec` (each one runs the executable).
    #[arg(long, value_name = "fork|exec")]
    pub executor_start: Option<StartMethod>,
    /// Benchmarks only: each core counts N times, so N executors share it (default 1: one
    /// executor per core). Refused together with a resource manager; the manager warns at start.
    #[arg(long, value_name = "N")]
    pub oversubscribe: Option<u32>,
    /// Grace between SIGTERM and SIGKILL when an executor is stopped, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub stop_grace_ms: Option<u64>,
    /// Largest library upload accepted, bytes (at most 256 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_library_bytes: Option<usize>,
    /// Library cache size limit, bytes: least recently used libraries are evicted beyond it
    /// (default 4 GiB).
    #[arg(long, value_name = "BYTES")]
    pub max_cache_bytes: Option<u64>,
    /// Most assets one allocation may ship for its library's init function (default 32).
    #[arg(long, value_name = "N")]
    pub max_assets: Option<u32>,
    /// Most bytes of assets one allocation may ship, all together (default 1 GiB; each asset is
    /// an upload, so at most max_library_bytes).
    #[arg(long, value_name = "BYTES")]
    pub max_assets_bytes: Option<u64>,
    /// Ended allocations remembered for status queries.
    #[arg(long, value_name = "N")]
    pub keep_ended: Option<usize>,
    /// Write {node, http, pid} as JSON to this file once the API is up (for launchers).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// HTTP address (host:port) of the resource manager to register with (same cluster
    /// secret). When set, allocations need a lease that resource manager granted.
    #[arg(long, value_name = "HOST:PORT")]
    pub resource_manager: Option<String>,
}

/// The configuration file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node: Option<String>,
    listen: Option<String>,
    provider: Option<Provider>,
    fabric_host: Option<String>,
    cores: Option<CoresValue>,
    manager_cores: Option<String>,
    nic: Option<String>,
    memory: Option<SizeValue>,
    run_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    executor_start_timeout_ms: Option<u64>,
    executor_connect_timeout_ms: Option<u64>,
    max_allocations: Option<u32>,
    pool_size: Option<usize>,
    executor_start: Option<StartMethod>,
    pool_wait_ms: Option<u64>,
    oversubscribe: Option<u32>,
    request_timeout_ms: Option<u64>,
    stop_grace_ms: Option<u64>,
    max_library_bytes: Option<usize>,
    max_cache_bytes: Option<u64>,
    max_assets: Option<u32>,
    max_assets_bytes: Option<u64>,
    keep_ended: Option<usize>,
    ready_file: Option<PathBuf>,
    resource_manager: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CoresValue {
    List(Vec<u32>),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// Pooled executors by default: one is enough for a cold start at a time, and costs a few MiB
/// and no core while it waits.
pub const DEFAULT_POOL_SIZE: usize = 1;
/// Assets one allocation may ship by default (`max_assets`).
pub const DEFAULT_MAX_ASSETS: u32 = 32;
/// Bytes of assets one allocation may ship by default, all together (`max_assets_bytes`).
pub const DEFAULT_MAX_ASSETS_BYTES: u64 = 1 << 30;
/// Most assets one allocation may ship, whatever the configuration says (the init entry counts
/// them in a `uint32_t`, every one is a mapped file of the executor, and their paths travel in
/// the executor's configuration, at most 1 MiB).
pub const MAX_ASSETS: u32 = 1024;

/// Most pooled executors.
pub const MAX_POOL_SIZE: usize = 64;
/// Largest `oversubscribe`.
pub const MAX_OVERSUBSCRIBE: u32 = 64;

/// The resolved configuration of an executor manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Node name.
    pub node: String,
    /// HTTP listen address.
    pub listen: String,
    /// Fabric provider.
    pub provider: Provider,
    /// Host the fabric endpoints bind to.
    pub fabric_host: String,
    /// Cores it may rent, ascending, distinct (the order allocations take them in comes from
    /// [`super::topology::discover`]).
    pub cores: Vec<u32>,
    /// The NIC named to order cores by; `None`: the RDMA device found, if any.
    pub nic: Option<String>,
    /// Memory it may rent, bytes.
    pub memory: u64,
    /// The credentials it accepts (secret files, MUNGE).
    pub credentials: Credentials,
    /// Run directory (logs).
    pub run_dir: PathBuf,
    /// Library cache directory.
    pub cache_dir: PathBuf,
    /// Spawn to ready.
    pub executor_start_timeout: Duration,
    /// Ready to every worker connected (passed to the executor).
    pub executor_connect_timeout: Duration,
    /// Live allocations at once.
    pub max_allocations: u32,
    /// Executor processes kept started ahead of allocations (0: none).
    pub pool_size: usize,
    /// How executors start.
    pub executor_start: StartMethod,
    /// The cores the manager's own threads are bound to (`None`: not bound, its whole cpuset).
    pub manager_cores: Option<Vec<u32>>,
    /// The cpuset the manager was started with: executors, which inherit the manager's binding,
    /// are given it to pin themselves within ([`crate::executor::CPUSET_ENV`]).
    pub node_cpuset: Vec<u32>,
    /// How long an allocation waits for a starting pooled process (`None`: twice the recent
    /// start time, at least 5 ms).
    pub pool_wait: Option<Duration>,
    /// How many executors may share one core (1: none; more only for benchmarks).
    pub oversubscribe: u32,
    /// Request head, then body.
    pub request_timeout: Duration,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// Largest library upload.
    pub max_library_bytes: usize,
    /// Library cache size limit, bytes (the asset cache has the same limit of its own).
    pub max_cache_bytes: u64,
    /// Most assets per allocation.
    pub max_assets: u32,
    /// Most bytes of assets per allocation, all together.
    pub max_assets_bytes: u64,
    /// Ended allocations remembered.
    pub keep_ended: usize,
    /// Where to announce readiness.
    pub ready_file: Option<PathBuf>,
    /// The resource manager to register with (`host:port`); `None`: no leases needed.
    pub resource_manager: Option<String>,
}

impl ManagerConfig {
    /// Reads the file named by `--config` (if any), applies the flags, fills defaults and checks.
    pub fn load(args: &ManagerArgs) -> Result<ManagerConfig, ConfigError> {
        let server = &args.server;
        let (file, from_file) = server.read_file::<FileConfig>()?;
        // Relative paths in a file are relative to the file.
        let rel = |p: PathBuf| from_file.path(p);

        let node = args.node.clone().or(file.node).unwrap_or_else(default_node);
        let listen = server.listen(file.listen, "127.0.0.1:10000");
        let provider = match args.provider.or(file.provider) {
            Some(p) => p,
            None => Provider::from_env().map_err(|e| ConfigError::Invalid(e.to_string()))?,
        };
        let fabric_host = args
            .fabric_host
            .clone()
            .or(file.fabric_host)
            .unwrap_or_else(|| "127.0.0.1".into());
        let cores = match (&args.cores, file.cores) {
            (Some(list), _) => parse_cpulist(list)?,
            (None, Some(CoresValue::Text(list))) => parse_cpulist(&list)?,
            (None, Some(CoresValue::List(mut v))) => {
                v.sort_unstable();
                v.dedup();
                v
            }
            (None, None) => crate::pin::allowed_cores()
                .into_iter()
                .map(|c| c as u32)
                .collect(),
        };
        let node_cpuset: Vec<u32> = crate::pin::allowed_cores()
            .into_iter()
            .map(|c| c as u32)
            .collect();
        let manager_cores = match args
            .manager_cores
            .as_deref()
            .or(file.manager_cores.as_deref())
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
            .unwrap_or("auto")
        {
            "auto" => Some(
                node_cpuset
                    .iter()
                    .copied()
                    .filter(|c| !cores.contains(c))
                    .collect::<Vec<u32>>(),
            )
            .filter(|own| !own.is_empty()),
            "all" => None,
            list => Some(parse_cpulist(list).map_err(|e| {
                ConfigError::Invalid(format!(
                    "manager_cores: expected auto, all or a cpulist: {e}"
                ))
            })?),
        };
        let memory = match (&args.memory, file.memory) {
            (Some(s), _) => parse_size(s)?,
            (None, Some(SizeValue::Text(s))) => parse_size(&s)?,
            (None, Some(SizeValue::Bytes(b))) => b,
            (None, None) => total_memory(),
        };
        let credentials = server.credentials(&from_file)?;
        let run_dir = args
            .run_dir
            .clone()
            .or(file.run_dir.map(rel))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("rfaas-em-{node}")));
        let cache_dir = args
            .cache_dir
            .clone()
            .or(file.cache_dir.map(rel))
            .unwrap_or_else(|| run_dir.join("cache"));
        // Absolute, whatever the working directory: executors run in `run_dir` and are handed
        // paths under it (library, lease deadline file) that must not depend on where the
        // manager was started.
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        let (run_dir, cache_dir) = (absolute(run_dir), absolute(cache_dir));
        let ms = Duration::from_millis;
        let oversubscribe = args.oversubscribe.or(file.oversubscribe).unwrap_or(1);
        let cfg = ManagerConfig {
            max_allocations: args
                .max_allocations
                .or(file.max_allocations)
                .unwrap_or((cores.len() as u32).saturating_mul(oversubscribe.max(1))),
            oversubscribe,
            pool_size: args
                .pool_size
                .or(file.pool_size)
                .unwrap_or(DEFAULT_POOL_SIZE),
            executor_start: args
                .executor_start
                .or(file.executor_start)
                .unwrap_or_default(),
            pool_wait: file.pool_wait_ms.map(Duration::from_millis),
            manager_cores,
            node_cpuset,
            node,
            listen,
            provider,
            fabric_host,
            cores,
            nic: args
                .nic
                .clone()
                .or(file.nic)
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
            memory,
            credentials,
            run_dir,
            cache_dir,
            executor_start_timeout: ms(args
                .executor_start_timeout_ms
                .or(file.executor_start_timeout_ms)
                .unwrap_or(10_000)),
            executor_connect_timeout: ms(args
                .executor_connect_timeout_ms
                .or(file.executor_connect_timeout_ms)
                .unwrap_or(10_000)),
            request_timeout: ms(server.request_timeout_ms(file.request_timeout_ms, 10_000)),
            stop_grace: ms(args.stop_grace_ms.or(file.stop_grace_ms).unwrap_or(2_000)),
            max_cache_bytes: args
                .max_cache_bytes
                .or(file.max_cache_bytes)
                .unwrap_or(4 << 30),
            max_library_bytes: args
                .max_library_bytes
                .or(file.max_library_bytes)
                .unwrap_or(MAX_LIBRARY_BYTES),
            max_assets: args
                .max_assets
                .or(file.max_assets)
                .unwrap_or(DEFAULT_MAX_ASSETS),
            max_assets_bytes: args
                .max_assets_bytes
                .or(file.max_assets_bytes)
                .unwrap_or(DEFAULT_MAX_ASSETS_BYTES),
            keep_ended: args.keep_ended.or(file.keep_ended).unwrap_or(100),
            ready_file: args.ready_file.clone().or(file.ready_file.map(rel)),
            resource_manager: args
                .resource_manager
                .clone()
                .or(file.resource_manager)
                .filter(|a| !a.is_empty()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node.is_empty() || self.node.len() > 128 {
            return bad(format!(
                "node name {:?} must have 1 to 128 characters",
                self.node
            ));
        }
        if self.cores.is_empty() {
            return bad("no cores to rent out".into());
        }
        // The cpuset `load` read (once) for the executors.
        let allowed = &self.node_cpuset;
        if let Some(c) = self.cores.iter().find(|c| !allowed.contains(c)) {
            return bad(format!(
                "core {c} is not in this process's cpuset {}: executors could not be pinned there",
                format_cpulist(allowed)
            ));
        }
        if let Some(c) = self
            .manager_cores
            .iter()
            .flatten()
            .find(|c| !allowed.contains(c))
        {
            return bad(format!(
                "manager_cores: core {c} is not in this process's cpuset {}",
                format_cpulist(allowed)
            ));
        }
        if self.max_allocations == 0 {
            return bad("max_allocations must be at least 1".into());
        }
        if self.oversubscribe == 0 || self.oversubscribe > MAX_OVERSUBSCRIBE {
            return bad(format!("oversubscribe must be in 1..={MAX_OVERSUBSCRIBE}"));
        }
        if self.oversubscribe > 1 && self.resource_manager.is_some() {
            return bad(
                "oversubscribe is for benchmarks on a manager without a resource manager: \
                 leased cores are never shared"
                    .into(),
            );
        }
        if self.pool_size > MAX_POOL_SIZE {
            return bad(format!("pool_size must be in 0..={MAX_POOL_SIZE}"));
        }
        if self.memory == 0 {
            return bad("memory must be positive".into());
        }
        if self.max_library_bytes == 0 || self.max_library_bytes > MAX_LIBRARY_BYTES {
            return bad(format!(
                "max_library_bytes must be in 1..={MAX_LIBRARY_BYTES}"
            ));
        }
        if self.max_assets > MAX_ASSETS {
            return bad(format!("max_assets must be in 0..={MAX_ASSETS}"));
        }
        for (name, d) in [
            ("executor_start_timeout_ms", self.executor_start_timeout),
            ("executor_connect_timeout_ms", self.executor_connect_timeout),
            ("request_timeout_ms", self.request_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}

fn default_node() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Parses a Linux cpulist (`0-3,8,10-11`) into ascending distinct core numbers.
pub fn parse_cpulist(s: &str) -> Result<Vec<u32>, ConfigError> {
    let bad = || ConfigError::Invalid(format!("bad core list {s:?}: expected e.g. 0-3,8,10-11"));
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u32>().map_err(|_| bad())?,
                b.trim().parse::<u32>().map_err(|_| bad())?,
            ),
            None => {
                let c = part.parse::<u32>().map_err(|_| bad())?;
                (c, c)
            }
        };
        if lo > hi || hi - lo > 65_536 {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Formats core numbers as a cpulist (`0-3,8`).
pub fn format_cpulist(cores: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cores.len() {
        let mut j = i;
        while j + 1 < cores.len() && cores[j + 1] == cores[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cores[i].to_string()
        } else {
            format!("{}-{}", cores[i], cores[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Parses a size with [`crate::size::parse_size`] (bytes, `512MiB`, `4GiB`, `8G`, `2GB`).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    crate::size::parse_size(s).map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// The node's MemTotal, bytes (1 GiB when /proc/meminfo cannot be read).
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1 << 30, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_and_sizes() {
        assert_eq!(
            parse_cpulist("0-3,8, 10-11,2").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(format_cpulist(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpulist(&[5]), "5");
        for bad in ["", "a", "3-1", "1-", "-"] {
            assert!(parse_cpulist(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("2 GB").unwrap(), 2_000_000_000);
        assert!(
            parse_size("4X").is_err()
                && parse_size("GiB").is_err()
                && parse_size("99999999999T").is_err()
        );
        assert!(total_memory() > 0);
    }

    #[test]
    fn executor_start_reads_from_file_and_flag_in_any_case() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        let load = |file: &str, flag: Option<StartMethod>| {
            let config = dir.path().join("em.toml");
            std::fs::write(&config, file).unwrap();
            ManagerConfig::load(&ManagerArgs {
                server: ServerArgs {
                    secret_file: Some(secret.clone()),
                    config: Some(config),
                    ..Default::default()
                },
                executor_start: flag,
                ..Default::default()
            })
        };
        assert_eq!(load("", None).unwrap().executor_start, StartMethod::Fork);
        let exec = load("executor_start = \"Exec\"\n", None).unwrap();
        assert_eq!(exec.executor_start, StartMethod::Exec);
        let flag = load("executor_start = \"exec\"\n", Some(StartMethod::Fork)).unwrap();
        assert_eq!(flag.executor_start, StartMethod::Fork, "the flag wins");
        let err = load("executor_start = \"vfork\"\n", None).unwrap_err();
        assert!(err.to_string().contains("fork or exec"), "{err}");
        assert_eq!("FORK".parse::<StartMethod>(), Ok(StartMethod::Fork));
    }

    #[test]
    fn a_relative_run_dir_becomes_absolute() {
        // Executors run in run_dir and get paths under it: a relative one would point elsewhere.
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        let args = ManagerArgs {
            server: ServerArgs {
                secret_file: Some(secret),
                ..Default::default()
            },
            run_dir: Some("some/relative/dir".into()),
            ..Default::default()
        };
        let cfg = ManagerConfig::load(&args).unwrap();
        let want = std::env::current_dir().unwrap().join("some/relative/dir");
        assert_eq!(cfg.run_dir, want);
        assert!(cfg.cache_dir.is_absolute(), "{:?}", cfg.cache_dir);
    }

    #[test]
    fn manager_cores_default_to_the_cores_not_rented_out() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        let allowed: Vec<u32> = crate::pin::allowed_cores()
            .into_iter()
            .map(|c| c as u32)
            .collect();
        let load = |cores: &[u32], manager_cores: Option<&str>| {
            ManagerConfig::load(&ManagerArgs {
                server: ServerArgs {
                    secret_file: Some(secret.clone()),
                    ..Default::default()
                },
                cores: Some(format_cpulist(cores)),
                manager_cores: manager_cores.map(str::to_string),
                ..Default::default()
            })
        };
        // Renting out every core leaves the manager unbound, whatever the setting but a list.
        let cfg = load(&allowed, None).unwrap();
        assert_eq!(cfg.manager_cores, None);
        assert_eq!(cfg.node_cpuset, allowed);
        assert_eq!(load(&allowed, Some("all")).unwrap().manager_cores, None);
        assert_eq!(load(&allowed, Some(" ALL ")).unwrap().manager_cores, None);
        assert_eq!(load(&allowed, Some("Auto")).unwrap().manager_cores, None);
        let last = *allowed.last().unwrap();
        assert_eq!(
            load(&allowed, Some(&last.to_string()))
                .unwrap()
                .manager_cores,
            Some(vec![last])
        );
        if allowed.len() >= 2 {
            // Auto: every core of its cpuset but the rented ones.
            let cfg = load(&allowed[..1], Some(" auto ")).unwrap();
            assert_eq!(cfg.manager_cores.as_deref(), Some(&allowed[1..]));
            assert_eq!(
                cfg.node_cpuset, allowed,
                "executors pin within the whole cpuset"
            );
            assert_eq!(
                load(&allowed[..1], Some("all")).unwrap().manager_cores,
                None
            );
        }
        // A core outside its cpuset, or a malformed list, is refused.
        let outside = allowed.iter().max().unwrap() + 1;
        let e = load(&allowed, Some(&outside.to_string())).unwrap_err();
        assert!(e.to_string().contains("manager_cores"), "{e}");
        let e = load(&allowed, Some("some")).unwrap_err().to_string();
        assert!(e.contains("auto, all or a cpulist"), "{e}");
    }

    #[test]
    fn asset_limits_default_and_bound() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        let mut args = ManagerArgs {
            server: ServerArgs {
                secret_file: Some(secret),
                ..Default::default()
            },
            ..Default::default()
        };
        let cfg = ManagerConfig::load(&args).unwrap();
        assert_eq!((cfg.max_assets, cfg.max_assets_bytes), (32, 1 << 30));
        args.max_assets = Some(1025);
        let e = ManagerConfig::load(&args).unwrap_err();
        assert!(e.to_string().contains("max_assets"), "{e}");
        args.max_assets = Some(0); // no assets at all: allowed
        args.max_assets_bytes = Some(10);
        let cfg = ManagerConfig::load(&args).unwrap();
        assert_eq!((cfg.max_assets, cfg.max_assets_bytes), (0, 10));
    }

    #[test]
    fn file_then_flags_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("em.toml");
        let allowed = crate::pin::allowed_cores();
        let (first, last) = (allowed[0] as u32, *allowed.last().unwrap() as u32);
        std::fs::write(
            &path,
            format!(
                "node = \"n1\"\nprovider = \"tcp\"\ncores = [{last}, {first}, {first}]\nmemory = \"1GiB\"\n\
                 secret_file = \"secret\"\nstop_grace_ms = 50\nnic = \"mlx5_0\"\n"
            ),
        )
        .unwrap();
        let mut args = ManagerArgs {
            server: ServerArgs {
                config: Some(path.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let cfg = ManagerConfig::load(&args).unwrap();
        assert_eq!(cfg.node, "n1");
        assert_eq!(cfg.provider, Provider::Tcp);
        let mut want = vec![first, last];
        want.dedup();
        assert_eq!(cfg.cores, want);
        assert_eq!(cfg.memory, 1 << 30);
        assert_eq!(cfg.credentials.secret_file, dir.path().join("secret"));
        assert_eq!(cfg.stop_grace, Duration::from_millis(50));
        assert_eq!(cfg.max_allocations, want.len() as u32);
        assert_eq!(cfg.cache_dir, cfg.run_dir.join("cache"));
        assert_eq!(cfg.nic.as_deref(), Some("mlx5_0"));

        args.cores = Some(first.to_string());
        args.node = Some("n2".into());
        args.memory = Some("64MiB".into());
        args.nic = Some("eth0".into());
        let cfg = ManagerConfig::load(&args).unwrap();
        assert_eq!(cfg.nic.as_deref(), Some("eth0"), "the flag wins");
        assert_eq!(
            (cfg.node.as_str(), cfg.cores.clone(), cfg.memory),
            ("n2", vec![first], 64 << 20)
        );
        args.cores = Some("100000".into());
        let err = ManagerConfig::load(&args).unwrap_err();
        assert!(err.to_string().contains("cpuset"), "{err}");

        std::fs::write(&path, "nodee = \"typo\"\nsecret_file = \"s\"\n").unwrap();
        let err = ManagerConfig::load(&ManagerArgs {
            server: ServerArgs {
                config: Some(path.clone()),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("nodee"), "{err}");

        let err = ManagerConfig::load(&ManagerArgs::default()).unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        let err = ManagerConfig::load(&ManagerArgs {
            server: ServerArgs {
                secret_file: Some("s".into()),
                ..Default::default()
            },
            max_allocations: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("max_allocations"), "{err}");
    }
}
