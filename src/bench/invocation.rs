//! Invocation benchmarks with the rFaaS names: `warm_benchmark`, `cold_benchmark` and
//! `parallel_invocations`, against a cluster file's executor managers.
//!
//! Each writes tidy CSV, one row per measurement (header [`INVOCATION_HEADER`], plus one `*_ns`
//! column per phase for cold starts), a JSON metadata file beside it, and prints a p50/p99/p99.9
//! summary per (mode, payload) from merged HDR histograms.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use serde::{Deserialize, Serialize};

use super::csv_rows::{CsvError, RowWriter};
use super::placement::{ClientPlacement, WorkerCore};
use super::stats::Latencies;
use crate::client::{AllocationSpec, ClientError, ClientOptions, Cluster, Executor};
use crate::rdma::{Fabric, FabricUser};

/// Columns every invocation benchmark writes, in order.
pub const INVOCATION_HEADER: &str =
    "benchmark,mode,provider,payload_bytes,rank,world_size,node,worker,repetition,latency_ns";
/// The phases of a cold start, as extra columns of `cold_benchmark`. They are disjoint and add up
/// to each row's `latency_ns` exactly: the allocation request without the spawn (the lease from
/// the resource manager when there is one, HTTP, library check, core reservation), spawning the
/// executor process (or taking one from the manager's pool) without loading code, loading the
/// library and resolving the functions, connecting the fabric to the worker, the first
/// invocation, and what is left: the client's own bookkeeping between them.
pub const COLD_PHASES: [&str; 6] = [
    "allocation_ns",
    "spawn_ns",
    "code_load_ns",
    "connect_ns",
    "first_invocation_ns",
    "client_ns",
];

/// The [`COLD_PHASES`] of one cold start that took `total_ns`, its first invocation
/// `first_ns`: they add up to `total_ns` (unless the parts overlap, which they do not).
pub fn cold_phases(
    tm: &crate::client::AllocationTimings,
    first_ns: u64,
    total_ns: u64,
) -> Vec<u64> {
    let mut phases = vec![
        tm.request_ns.saturating_sub(tm.spawn_ns),
        tm.spawn_ns.saturating_sub(tm.code_load_ns),
        tm.code_load_ns,
        tm.connect_ns,
        first_ns,
    ];
    let measured: u64 = phases.iter().sum();
    phases.push(total_ns.saturating_sub(measured));
    phases
}

/// The `mode` of a cold start's row: the benchmark's mode and where the executor came from,
/// `<mode>-pool` (the manager's pool of pre-started executors) or `<mode>-fresh` (spawned for
/// it), so that every summary and report keeps the two apart.
pub fn cold_mode(mode: &str, pooled: bool) -> String {
    format!("{mode}-{}", if pooled { "pool" } else { "fresh" })
}

/// Flags all three benchmarks share.
#[derive(ClapArgs, Clone, Debug)]
pub struct CommonArgs {
    /// cluster.json written by `rfaas local-cluster start` or the Slurm script (default: $RFAAS_CLUSTER).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Function to invoke (from the library).
    #[arg(long, default_value = "empty")]
    pub function: String,
    /// Payload sizes, comma separated: bytes or with a unit (64,4KiB,1MiB).
    #[arg(long, value_delimiter = ',', default_value = "64,4096", value_parser = |s: &str| crate::size::parse_size_at_most(s, 1 << 30))]
    pub sizes: Vec<usize>,
    /// Measured invocations (or allocations, for cold_benchmark) per size and mode.
    #[arg(long, default_value_t = 1000)]
    pub repetitions: usize,
    /// Unmeasured invocations first, per size and mode.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Where to write the CSV (a JSON metadata file goes beside it).
    #[arg(long)]
    pub output: PathBuf,
    /// The function library (default: libfunctions.so beside this executable).
    #[arg(long)]
    pub library: Option<PathBuf>,
    /// Pin the client thread to this core (default: the last core of the cpuset that none of
    /// the benchmark's own workers runs on; stderr says where every thread runs).
    #[arg(long)]
    pub client_core: Option<usize>,
    /// Seconds a call may take before it counts as failed.
    #[arg(long, default_value_t = 10)]
    pub timeout_s: u64,
}

/// One measurement: one CSV row, its fields in [`INVOCATION_HEADER`] order, then the phases.
///
/// Serialised with serde: as a CSV row ([`super::csv_rows`]), and as bytes when
/// `scalable_benchmark`'s ranks send their rows to rank 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Benchmark name.
    pub benchmark: String,
    /// Mode (hot, warm, cached, uncached, parallel).
    pub mode: String,
    /// Provider name.
    pub provider: String,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// MPI rank (0 here).
    pub rank: u32,
    /// MPI world size (1 here).
    pub world_size: u32,
    /// Executor manager (node) name.
    pub node: String,
    /// Worker index.
    pub worker: usize,
    /// Repetition.
    pub repetition: usize,
    /// Nanoseconds.
    pub latency_ns: u64,
    /// Cold-start phases, in [`COLD_PHASES`] order (empty for other benchmarks): as many extra
    /// columns.
    #[serde(default)]
    pub phases: Vec<u64>,
}

/// Benchmark failure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Talking to the cluster failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An invocation failed.
    #[error("invocation failed: {0}")]
    Invoke(#[from] crate::client::InvokeError),
    /// Files.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Writing the CSV.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// The provider could not be opened.
    #[error("fabric: {0}")]
    Fabric(#[from] crate::rdma::FabricError),
}

/// Finds the function library: the flag, else `libfunctions.so` beside this executable or one
/// directory up (cargo puts examples in `target/<profile>/examples/`, the library in
/// `target/<profile>/`).
pub fn library_path(flag: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("libfunctions.so"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            BenchError::Usage(
                "no --library given and no libfunctions.so beside or above this executable (build it: cargo build --release -p rfaas-functions)".into(),
            )
        })
}

/// Writes the CSV, the metadata JSON, and prints the summary; returns the summary lines.
pub fn finish(
    args: &CommonArgs,
    benchmark: &str,
    records: &[Record],
    extra_columns: &[&str],
    config: serde_json::Value,
) -> Result<Vec<String>, BenchError> {
    write_outputs(
        &args.output,
        benchmark,
        records,
        extra_columns,
        config,
        serde_json::Map::new(),
    )?;
    let lines = summarize(records);
    for l in &lines {
        println!("{l}");
    }
    Ok(lines)
}

/// Writes the CSV (header [`INVOCATION_HEADER`] plus `extra_columns`, one row per record) to
/// `output` (`--output`) and the JSON metadata beside it, with `extra`'s keys added at its top
/// level (what `scalable_benchmark` adds: world size, MPI library, per-rank placement, ...).
/// Prints nothing.
pub fn write_outputs(
    output: &Path,
    benchmark: &str,
    records: &[Record],
    extra_columns: &[&str],
    config: serde_json::Value,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<(), BenchError> {
    if let Some(dir) = output.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let file = std::io::BufWriter::new(std::fs::File::create(output)?);
    let header: Vec<&str> = INVOCATION_HEADER
        .split(',')
        .chain(extra_columns.iter().copied())
        .collect();
    let mut csv = RowWriter::new(file, &header, &output.display().to_string())?;
    for r in records {
        csv.row(r)?;
    }
    csv.finish()?.flush()?;
    let mut meta = serde_json::json!({
        "benchmark": benchmark,
        "rfaas_version": env!("CARGO_PKG_VERSION"),
        "git_rev": git_rev(),
        "config": config,
        "slurm": std::env::vars().filter(|(k, _)| k.starts_with("SLURM_")).collect::<BTreeMap<_, _>>(),
        "csv": output.display().to_string(),
    });
    // The libfabric provider, fabric and version behind `ofi` rows.
    let mut fabrics = serde_json::Map::new();
    for r in records {
        if fabrics.contains_key(&r.provider) {
            continue;
        }
        if let Ok(p) = r.provider.parse::<crate::rdma::Provider>() {
            fabrics.insert(r.provider.clone(), crate::rdma::provider::describe(p));
        }
    }
    if let Some(m) = meta.as_object_mut() {
        m.insert("fabric".into(), serde_json::Value::Object(fabrics));
    }
    if let Some(m) = meta.as_object_mut() {
        m.extend(extra);
    }
    std::fs::write(
        output.with_extension("json"),
        serde_json::to_string_pretty(&meta).unwrap_or_default(),
    )?;
    Ok(())
}

fn git_rev() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// p50/p99/p99.9 per (benchmark, mode, provider, payload), from merged histograms.
pub fn summarize(records: &[Record]) -> Vec<String> {
    let mut groups: BTreeMap<(String, String, usize), Latencies> = BTreeMap::new();
    for r in records {
        groups
            .entry((r.mode.clone(), r.provider.clone(), r.payload_bytes))
            .or_default()
            .record(Duration::from_nanos(r.latency_ns));
    }
    let mut lines = vec![format!(
        "{:<10} {:<8} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "mode", "provider", "payload", "count", "p50_ns", "p99_ns", "p99.9_ns"
    )];
    for ((mode, provider, size), h) in &groups {
        lines.push(format!(
            "{mode:<10} {provider:<8} {size:>10} {:>8} {:>10} {:>10} {:>10}",
            h.count(),
            h.quantile_ns(0.5),
            h.quantile_ns(0.99),
            h.quantile_ns(0.999)
        ));
    }
    lines
}

/// The executor manager (node) an allocation is on: its lease's node when a resource manager
/// placed it, else the first manager of the cluster file (where allocations without a lease
/// go), else its address.
pub(crate) fn node_of<F: Fabric>(exec: &Executor<F>, cluster: &Cluster) -> String {
    exec.lease()
        .and_then(|l| l.parts().first().map(|p| p.node.clone()))
        .or_else(|| cluster.names.first().cloned())
        .unwrap_or_else(|| exec.allocation().address.clone())
}

/// The cores of an allocation's workers, for [`ClientPlacement`].
pub(crate) fn worker_cores<F: Fabric>(exec: &Executor<F>, node: &str) -> Vec<WorkerCore> {
    exec.allocation()
        .workers
        .iter()
        .map(|w| WorkerCore {
            node: node.to_string(),
            worker: w.index as usize,
            core: w.core as usize,
        })
        .collect()
}

pub(crate) fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed)) as u8)
        .collect()
}

/// `warm_benchmark`: latency of invocations on an allocation kept warm, per mode and size.
#[derive(ClapArgs, Clone, Debug)]
pub struct WarmArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// Modes: `hot` (hot_timeout -1, busy-polling executor) and/or `warm` (hot_timeout 0, the
    /// executor sleeps between calls).
    #[arg(long, value_delimiter = ',', default_value = "hot,warm")]
    pub modes: Vec<String>,
    /// Executor cores (invocations go round-robin over them).
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// Idle time between calls, in microseconds (0: back to back). With a gap longer than the
    /// warm spin (20 µs) a warm executor is asleep when the call comes, so this measures its
    /// wake-up; the mode column then reads e.g. `warm+200us`.
    #[arg(long, default_value_t = 0)]
    pub interval_us: u64,
}

/// `parallel_invocations`: one invocation on every core at once, per repetition.
#[derive(ClapArgs, Clone, Debug)]
pub struct ParallelArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// Executor cores, each invoked in parallel.
    #[arg(long, default_value_t = 2)]
    pub cores: u32,
    /// Executor hot timeout, ms (-1 always hot, 0 always warm).
    #[arg(long, default_value_t = -1)]
    pub hot_timeout: i64,
}

/// `cold_benchmark`: a fresh allocation per repetition, timing every phase to the first result.
#[derive(ClapArgs, Clone, Debug)]
pub struct ColdArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// `cached` (same library every time: the manager has it) and/or `uncached` (a byte-unique
    /// copy every time: uploaded, stored and loaded anew).
    #[arg(long, value_delimiter = ',', default_value = "cached,uncached")]
    pub modes: Vec<String>,
    /// Executor hot timeout, ms.
    #[arg(long, default_value_t = -1)]
    pub hot_timeout: i64,
    /// Do not wait, before each cold start, until the managers' executor pools are full
    /// again: back to back, a cold start may find its pooled executor still starting.
    #[arg(long)]
    pub back_to_back: bool,
    /// Bursts of concurrent cold starts instead of one at a time, comma separated (1,8,32,64):
    /// --repetitions rounds of each, one client thread per cold start, after at most one
    /// unmeasured round (--warmup 0 for none; mode `cached` only; give --hot-timeout 0 so that
    /// idle executors sleep).
    #[arg(long, value_delimiter = ',')]
    pub bursts: Vec<usize>,
}

fn spec(library: Vec<u8>, args: &CommonArgs, cores: u32, hot_timeout_ms: i64) -> AllocationSpec {
    let max = args.sizes.iter().copied().max().unwrap_or(64).max(1) as u32;
    let mut s = AllocationSpec::new(library, &[args.function.as_str()]);
    s.cores = cores;
    s.input_capacity = max;
    s.output_capacity = max;
    s.slots = 1;
    s.hot_timeout_ms = hot_timeout_ms;
    s
}

fn opts(args: &CommonArgs) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(args.timeout_s.max(1)),
        spin: Duration::from_secs(3600),
        ..ClientOptions::default()
    }
}

/// Runs `warm_benchmark`.
pub fn run_warm(args: &WarmArgs) -> Result<Vec<Record>, BenchError> {
    let cfg = serde_json::json!({"modes": args.modes, "cores": args.cores});
    run_on_cluster(args, &args.common, "warm_benchmark", cfg)
}

/// Runs `parallel_invocations`.
pub fn run_parallel(args: &ParallelArgs) -> Result<Vec<Record>, BenchError> {
    let cfg = serde_json::json!({"cores": args.cores, "hot_timeout_ms": args.hot_timeout});
    run_on_cluster(args, &args.common, "parallel_invocations", cfg)
}

/// One benchmark's run on a cluster's provider: its flags, the cluster, the function library,
/// where its client thread runs.
struct OnCluster<'a, A> {
    args: &'a A,
    cluster: &'a Cluster,
    library: Vec<u8>,
    client: ClientPlacement,
}

/// Opens the cluster and the library of `common`, runs `OnCluster<A>` on the cluster's
/// provider, then writes the CSV and metadata and prints the summary ([`finish`]). The
/// metadata's configuration is `config` with the sizes, repetitions and function added.
fn run_on_cluster<A>(
    args: &A,
    common: &CommonArgs,
    benchmark: &str,
    mut config: serde_json::Value,
) -> Result<Vec<Record>, BenchError>
where
    for<'a> OnCluster<'a, A>: FabricUser<Output = Result<Vec<Record>, BenchError>>,
{
    let cluster = Cluster::open(common.cluster.as_deref())?;
    let library = std::fs::read(library_path(common.library.as_deref())?)?;
    let records = cluster.provider.run(OnCluster {
        args,
        cluster: &cluster,
        library,
        client: ClientPlacement::new(benchmark, common.client_core, 0),
    })??;
    if let Some(m) = config.as_object_mut() {
        m.insert("sizes".into(), serde_json::json!(common.sizes));
        m.insert("repetitions".into(), serde_json::json!(common.repetitions));
        m.insert("function".into(), serde_json::json!(common.function));
    }
    finish(common, benchmark, &records, &[], config)?;
    Ok(records)
}

impl Record {
    /// The row of a client that runs alone (rank 0 of 1) without phases, for one (benchmark,
    /// mode, provider, payload, node): the per-measurement fields (worker, repetition,
    /// latency) are 0, each measurement sets its own.
    pub fn single_client(
        benchmark: &str,
        mode: String,
        provider: &str,
        payload_bytes: usize,
        node: String,
    ) -> Record {
        Record {
            benchmark: benchmark.into(),
            mode,
            provider: provider.into(),
            payload_bytes,
            rank: 0,
            world_size: 1,
            node,
            worker: 0,
            repetition: 0,
            latency_ns: 0,
            phases: Vec::new(),
        }
    }
}

impl FabricUser for OnCluster<'_, WarmArgs> {
    type Output = Result<Vec<Record>, BenchError>;
    fn run<F: Fabric>(mut self, fabric: F) -> Self::Output {
        let c = &self.args.common;
        let mut out = Vec::new();
        for mode in &self.args.modes {
            let hot = match mode.as_str() {
                "hot" => -1,
                "warm" => 0,
                m => return Err(BenchError::Usage(format!("unknown mode {m:?} (hot, warm)"))),
            };
            let label = match self.args.interval_us {
                0 => mode.clone(),
                us => format!("{mode}+{us}us"),
            };
            let exec = self.cluster.allocate(
                &fabric,
                &spec(self.library.clone(), c, self.args.cores, hot),
                opts(c),
                0,
            )?;
            let f = exec.function(&c.function)?;
            let node = node_of(&exec, self.cluster);
            self.client.place(&worker_cores(&exec, &node));
            let mut output = vec![0u8; exec.output_capacity()];
            for &size in &c.sizes {
                let input = payload(size, size);
                let row = Record::single_client(
                    "warm_benchmark",
                    label.clone(),
                    fabric.provider().name(),
                    size,
                    node.clone(),
                );
                for i in 0..c.warmup + c.repetitions {
                    let worker = i % exec.workers();
                    if self.args.interval_us > 0 {
                        std::thread::sleep(Duration::from_micros(self.args.interval_us));
                    }
                    let t = Instant::now();
                    exec.invoke_on(worker, f, &input, &mut output)?;
                    let ns = t.elapsed().as_nanos() as u64;
                    if i >= c.warmup {
                        out.push(Record {
                            worker,
                            repetition: i - c.warmup,
                            latency_ns: ns,
                            ..row.clone()
                        });
                    }
                }
            }
            exec.deallocate()?;
        }
        Ok(out)
    }
}

impl FabricUser for OnCluster<'_, ParallelArgs> {
    type Output = Result<Vec<Record>, BenchError>;
    fn run<F: Fabric>(mut self, fabric: F) -> Self::Output {
        let c = &self.args.common;
        let exec = self.cluster.allocate(
            &fabric,
            &spec(
                self.library.clone(),
                c,
                self.args.cores,
                self.args.hot_timeout,
            ),
            opts(c),
            0,
        )?;
        let f = exec.function(&c.function)?;
        let n = exec.workers();
        let node = node_of(&exec, self.cluster);
        self.client.place(&worker_cores(&exec, &node));
        let mut out = Vec::new();
        let mut buffers: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; exec.output_capacity()]).collect();
        for &size in &c.sizes {
            let inputs: Vec<Vec<u8>> = (0..n).map(|w| payload(size, w)).collect();
            let input_refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            let row = Record::single_client(
                "parallel_invocations",
                format!("parallel-{n}"),
                fabric.provider().name(),
                size,
                node.clone(),
            );
            for i in 0..c.warmup + c.repetitions {
                let t = Instant::now();
                let mut outs: Vec<&mut [u8]> = buffers.iter_mut().map(Vec::as_mut_slice).collect();
                let results = exec.invoke_parallel(f, &input_refs, &mut outs);
                let ns = t.elapsed().as_nanos() as u64;
                for (w, r) in results.into_iter().enumerate() {
                    r?;
                    if i >= c.warmup {
                        out.push(Record {
                            worker: w,
                            repetition: i - c.warmup,
                            latency_ns: ns,
                            ..row.clone()
                        });
                    }
                }
            }
        }
        exec.deallocate()?;
        Ok(out)
    }
}

/// Runs `cold_benchmark`.
pub fn run_cold(args: &ColdArgs) -> Result<Vec<Record>, BenchError> {
    let cluster = Cluster::open(args.common.cluster.as_deref())?;
    let library = std::fs::read(library_path(args.common.library.as_deref())?)?;
    let records = cluster.provider.run(Cold {
        args,
        cluster: &cluster,
        library,
    })??;
    let cfg = serde_json::json!({"modes": args.modes, "hot_timeout_ms": args.hot_timeout, "sizes": args.common.sizes, "repetitions": args.common.repetitions, "function": args.common.function, "back_to_back": args.back_to_back, "bursts": args.bursts});
    finish(&args.common, "cold_benchmark", &records, &COLD_PHASES, cfg)?;
    Ok(records)
}

struct Cold<'a> {
    args: &'a ColdArgs,
    cluster: &'a Cluster,
    library: Vec<u8>,
}

impl FabricUser for Cold<'_> {
    type Output = Result<Vec<Record>, BenchError>;
    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let c = &self.args.common;
        // Each cold start is a new allocation: the client moves (outside the timed part) when
        // one lands on its core.
        let mut client = ClientPlacement::new("cold_benchmark", c.client_core, 0);
        client.place(&[]);
        let mut out = Vec::new();
        let mut cached_spec: Option<AllocationSpec> = None;
        // With a resource manager the core is leased once, up front: a cold start is an
        // allocation (a fresh executor process) inside a lease, as an application would do it.
        let lease = match &self.cluster.resource_manager {
            Some(_) => Some(
                self.cluster
                    .lease(1, &crate::client::LeaseOptions::default())?,
            ),
            None => None,
        };
        if !self.args.bursts.is_empty() {
            return self.bursts(&fabric, lease.as_ref());
        }
        for mode in &self.args.modes {
            if mode != "cached" && mode != "uncached" {
                return Err(BenchError::Usage(format!(
                    "unknown mode {mode:?} (cached, uncached)"
                )));
            }
            for &size in &c.sizes {
                let input = payload(size, size);
                // Warm-up allocations are not measured (they also put the cached library in place).
                for i in 0..c.warmup.min(3) + c.repetitions {
                    let mut library = self.library.clone();
                    if mode == "uncached" {
                        // Trailing bytes leave the ELF loadable but make its content hash new, so
                        // the manager stores it and the executor loads it from a new file.
                        library.extend_from_slice(
                            &crate::control::secret::random_bytes::<16>()
                                .map_err(|e| BenchError::Usage(e.to_string()))?,
                        );
                    }
                    let s = match &cached_spec {
                        Some(s) if mode == "cached" => s.clone(),
                        _ => {
                            let s = spec(library, c, 1, self.args.hot_timeout);
                            if mode == "cached" {
                                s.library_hash();
                                cached_spec = Some(s.clone());
                            }
                            s
                        }
                    };
                    if !self.args.back_to_back && !super::cold_burst::wait_pools_full(self.cluster)
                    {
                        eprintln!("[cold_benchmark] the executor pools were not full within {:?}; measuring anyway", super::cold_burst::POOL_WAIT);
                    }
                    let (one, exec) = super::cold_burst::cold_start(
                        &fabric,
                        self.cluster,
                        &s,
                        opts(c),
                        &c.function,
                        &input,
                        lease.as_ref(),
                        0,
                    )?;
                    let cores = worker_cores(&exec, &one.node);
                    exec.deallocate()?;
                    client.keep_clear_of(&cores);
                    if i >= c.warmup.min(3) {
                        out.push(Record {
                            benchmark: "cold_benchmark".into(),
                            mode: cold_mode(mode, one.pooled),
                            provider: fabric.provider().name().into(),
                            payload_bytes: size,
                            rank: 0,
                            world_size: 1,
                            node: one.node,
                            worker: 0,
                            repetition: i - c.warmup.min(3),
                            latency_ns: one.latency_ns,
                            phases: one.phases,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Cold<'_> {
    /// `--bursts`: rounds of concurrent cold starts per burst size (see [`super::cold_burst`]).
    fn bursts<F: Fabric>(
        &self,
        fabric: &F,
        lease: Option<&crate::client::Lease>,
    ) -> Result<Vec<Record>, BenchError> {
        let c = &self.args.common;
        if self.args.modes.iter().any(|m| m != "cached") {
            return Err(BenchError::Usage(
                "--bursts measures the mode cached only: give --modes cached".into(),
            ));
        }
        if lease.is_some() {
            return Err(BenchError::Usage(
                "--bursts needs a cluster without a resource manager (each cold start would \
                 need a lease of its own)"
                    .into(),
            ));
        }
        let spec = spec(self.library.clone(), c, 1, self.args.hot_timeout);
        spec.library_hash();
        // Many client threads on few cores: they sleep on their completion queue soon.
        let opts = ClientOptions {
            spin: Duration::from_micros(50),
            ..opts(c)
        };
        let mut out = Vec::new();
        for &size in &c.sizes {
            let input = payload(size, size);
            for &burst in &self.args.bursts {
                out.extend(super::cold_burst::run_bursts(
                    fabric,
                    self.cluster,
                    &spec,
                    opts,
                    &c.function,
                    &input,
                    "cached",
                    burst,
                    c.repetitions,
                    c.warmup.min(1),
                )?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::AllocationTimings;

    #[test]
    fn cold_phases_add_up_to_the_total() {
        // request 1000 = allocation 300 + spawn 700 (of which code load 200).
        let tm = AllocationTimings {
            request_ns: 1000,
            spawn_ns: 700,
            code_load_ns: 200,
            connect_ns: 50,
        };
        let p = cold_phases(&tm, 40, 1100);
        assert_eq!(p, [300, 500, 200, 50, 40, 10]);
        assert_eq!(p.len(), COLD_PHASES.len());
        assert_eq!(p.iter().sum::<u64>(), 1100);
    }

    #[test]
    fn cold_rows_say_where_the_executor_came_from() {
        assert_eq!(cold_mode("cached", true), "cached-pool");
        assert_eq!(cold_mode("uncached", false), "uncached-fresh");
    }
}
