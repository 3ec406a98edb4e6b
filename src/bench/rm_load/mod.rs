//! `rm_load_benchmark`: the resource manager at cluster scale, over its real HTTP API.
//!
//! 1. Starts `rfaas resource-manager` on a fresh state directory ([`process`]).
//! 2. Floors of the same run: `GET /v1/health` (HTTP without the scheduler or the disk) and
//!    one small append + `fdatasync` in the state directory (the disk without HTTP).
//! 3. Registers N simulated executor managers and keeps them heartbeating at the interval the
//!    manager asks for ([`pace`]); grants L leases and keeps them renewing at a third of their
//!    TTL, as the client library does.
//! 4. With C concurrent clients, runs M cycles of grant → renew → release, timing each call:
//!    p50/p99 per call, grants per second, and the grant + release round trip of the first and
//!    the last 10% of the cycles side by side (it must not grow with the leases ever granted),
//!    and of every tenth of them in order (`tenth_1` ... `tenth_10`).
//! 5. The manager's RSS and CPU (`/proc`), the load generator's own CPU and the machine's
//!    load average around the cycles (what else the cores served), its state's size
//!    (snapshot + log), what the background load achieved (late or failed heartbeats and
//!    renewals, cycles whose lease a node death ended).
//! 6. `kill -9` and restart with the L leases: the time until it is ready again, and the
//!    leases it restored.
//!
//! Everything goes to one CSV of rows (benchmark, nodes, leases, clients, phase, metric,
//! value, unit) through [`crate::bench::csv_rows`].

pub mod api;
pub mod conn;
pub mod pace;
pub mod process;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use clap::Args as ClapArgs;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::csv_rows::{CsvError, RowWriter};
use super::stats::Latencies;
use api::Api;
use conn::{Conn, Target};
use pace::Pacer;
use process::RmProcess;

/// Why the load benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum RmLoadError {
    /// Files, processes.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Writing the CSV.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// The manager answered something unexpected, or not at all.
    #[error("resource manager API: {0}")]
    Api(String),
    /// The manager could not be started.
    #[error("{0}")]
    Setup(String),
}

/// Flags of `rm_load_benchmark`.
#[derive(ClapArgs, Clone, Debug)]
pub struct RmLoadArgs {
    /// Simulated executor managers (registered and heartbeating).
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Cores each simulated executor manager offers.
    #[arg(long, default_value_t = 16)]
    pub cores_per_node: u32,
    /// Live leases held (and renewed) during the measurement.
    #[arg(long, default_value_t = 100_000)]
    pub leases: usize,
    /// Concurrent clients of the measured cycles.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Grant → renew → release cycles measured.
    #[arg(long, default_value_t = 100_000)]
    pub cycles: usize,
    /// TTL of the leases (held ones renew at a third of it).
    #[arg(long, default_value_t = 60_000)]
    pub ttl_ms: u64,
    /// The manager's heartbeat timeout (nodes heartbeat at a third of it).
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_timeout_ms: u64,
    /// Connections sending heartbeats (one request in flight each), and as many sending
    /// renewals (the default rates, 3,000 heartbeats/s and 5,000 renewals/s, need more than
    /// a few: a connection sends its next request only once the last is answered).
    #[arg(long, default_value_t = 32)]
    pub background_threads: usize,
    /// Threads of the load generator's async runtime, which runs the clients of the measured
    /// cycles, the heartbeats, the renewals and the health floor (registration and the
    /// filling grants use blocking clients of their own).
    #[arg(long, default_value_t = 2)]
    pub generator_threads: usize,
    /// The manager's `compact_log_bytes` (default: the manager's own): how much log it
    /// writes before compacting it into a snapshot, which holds the scheduler's lock while
    /// it encodes the state.
    #[arg(long)]
    pub compact_log_bytes: Option<u64>,
    /// The `rfaas` binary (default: beside this one).
    #[arg(long)]
    pub rfaas: Option<PathBuf>,
    /// State directory of the manager (default: a temporary one, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where to write the CSV rows.
    #[arg(long)]
    pub output: PathBuf,
}

/// One figure of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `rm_load`.
    pub benchmark: &'static str,
    /// Simulated executor managers.
    pub nodes: usize,
    /// Live leases held.
    pub leases: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Which part of the run.
    pub phase: String,
    /// What.
    pub metric: String,
    /// How much.
    pub value: f64,
    /// In what.
    pub unit: &'static str,
}

struct Rows<'a> {
    args: &'a RmLoadArgs,
    rows: Vec<Row>,
}

impl Rows<'_> {
    fn add(&mut self, phase: &str, metric: &str, value: f64, unit: &'static str) {
        println!("{phase:<12} {metric:<28} {value:>14.1} {unit}");
        self.rows.push(Row {
            benchmark: "rm_load",
            nodes: self.args.nodes,
            leases: self.args.leases,
            clients: self.args.clients,
            phase: phase.into(),
            metric: metric.into(),
            value,
            unit,
        });
    }

    fn latencies(&mut self, phase: &str, what: &str, l: &Latencies) {
        self.add(
            phase,
            &format!("{what}_p50"),
            l.quantile_ns(0.5) as f64 / 1e3,
            "us",
        );
        self.add(
            phase,
            &format!("{what}_p99"),
            l.quantile_ns(0.99) as f64 / 1e3,
            "us",
        );
        self.add(phase, &format!("{what}_count"), l.count() as f64, "calls");
    }
}

/// Runs `f(i)` for i in 0..n on `threads` threads, each with its own client.
fn parallel<T: Send + 'static>(
    api: &Api,
    n: usize,
    threads: usize,
    f: impl Fn(&Api, usize) -> Result<T, RmLoadError> + Send + Sync + 'static,
) -> Result<Vec<T>, RmLoadError> {
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (api, f, next) = (api.fresh(), f.clone(), next.clone());
            std::thread::spawn(move || -> Result<Vec<(usize, T)>, RmLoadError> {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return Ok(out);
                    }
                    out.push((i, f(&api, i)?));
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| RmLoadError::Setup("a load thread panicked".into()))??,
        );
    }
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// One small append + fdatasync in `dir`, `n` times: the disk's floor for a durable change.
fn fsync_floor(dir: &std::path::Path, n: usize) -> Result<Latencies, RmLoadError> {
    use std::io::Write;
    let path = dir.join("fsync-floor");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let mut l = Latencies::new();
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&[7u8; 300])?;
        f.sync_data()?;
        l.record(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(path)?;
    Ok(l)
}

/// What the measured cycles found.
struct Cycles {
    grant: Latencies,
    renew: Latencies,
    release: Latencies,
    /// (cycle index, grant + release time) of every cycle.
    round_trips: Vec<(u64, Duration)>,
    refused: u64,
    /// Cycles whose lease had ended (its node declared dead) before its renewal or release.
    ended: u64,
    elapsed: Duration,
}

/// The part of a grant's answer a cycle needs.
#[derive(Deserialize)]
struct Granted {
    lease: u64,
    token: String,
}

/// What one client of the cycles measured.
#[derive(Default)]
struct ClientCycles {
    grant: Latencies,
    renew: Latencies,
    release: Latencies,
    trips: Vec<(u64, Duration)>,
}

/// One client: cycles (grant, renew, release on its own connection, one request in flight)
/// until `total` cycles were started by all clients.
async fn client_cycles(
    mut conn: Conn,
    grant_body: Bytes,
    next: Arc<AtomicU64>,
    total: u64,
    refused: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
) -> Result<ClientCycles, RmLoadError> {
    let mut out = ClientCycles::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return Ok(out);
        }
        let a = conn
            .call(Method::POST, "/v1/leases", grant_body.clone())
            .await?;
        if a.status == 503 {
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if a.status != 201 {
            return Err(a.unexpected("grant"));
        }
        out.grant.record(a.took);
        let g: Granted = serde_json::from_slice(&a.body)
            .map_err(|e| RmLoadError::Api(format!("grant answer: {e}")))?;
        let token = Bytes::from(json!({ "token": g.token }).to_string());
        let r = conn
            .call(
                Method::POST,
                &format!("/v1/leases/{}/renew", g.lease),
                token.clone(),
            )
            .await?;
        if !lease_call_done(&r, "renew", &mut out.renew, &ended)? {
            continue;
        }
        let x = conn
            .call(Method::DELETE, &format!("/v1/leases/{}", g.lease), token)
            .await?;
        if !lease_call_done(&x, "release", &mut out.release, &ended)? {
            continue;
        }
        out.trips.push((i, a.took + x.took));
    }
}

/// A renewal's or release's answer `a`: 200 counts its time into `lat` (`true`: the cycle goes
/// on); 410, the lease ended meanwhile (its node missed heartbeats the load generator could not
/// send in time), counts into `ended`, not fatal (`false`: the cycle ends); anything else is an
/// error.
fn lease_call_done(
    a: &conn::Answer,
    what: &str,
    lat: &mut Latencies,
    ended: &AtomicU64,
) -> Result<bool, RmLoadError> {
    match a.status {
        200 => {
            lat.record(a.took);
            Ok(true)
        }
        410 => {
            ended.fetch_add(1, Ordering::Relaxed);
            Ok(false)
        }
        _ => Err(a.unexpected(what)),
    }
}

/// The measured cycles: `args.clients` clients, each a task with its own connection.
async fn run_cycles(target: &Target, args: &RmLoadArgs) -> Result<Cycles, RmLoadError> {
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let grant_body =
        Bytes::from(json!({"cores": 1, "ttl_ms": args.ttl_ms, "client": "rm_load"}).to_string());
    let conns = Conn::open_many(target, args.clients.max(1)).await?;
    let start = Instant::now();
    let clients: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            tokio::spawn(client_cycles(
                conn,
                grant_body.clone(),
                next.clone(),
                args.cycles as u64,
                refused.clone(),
                ended.clone(),
            ))
        })
        .collect();
    let mut out = Cycles {
        grant: Latencies::new(),
        renew: Latencies::new(),
        release: Latencies::new(),
        round_trips: Vec::with_capacity(args.cycles),
        refused: 0,
        ended: 0,
        elapsed: Duration::ZERO,
    };
    let mut failure = None;
    for c in clients {
        match c.await {
            Ok(Ok(c)) => {
                out.grant.merge(&c.grant);
                out.renew.merge(&c.renew);
                out.release.merge(&c.release);
                out.round_trips.extend(c.trips);
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => {
                failure = failure.or(Some(RmLoadError::Setup(format!("a client failed: {e}"))))
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    out.elapsed = start.elapsed();
    out.refused = refused.load(Ordering::Relaxed);
    out.ended = ended.load(Ordering::Relaxed);
    out.round_trips.sort_unstable_by_key(|(i, _)| *i);
    Ok(out)
}

/// Runs the benchmark; the rows it wrote.
pub fn run(args: &RmLoadArgs) -> Result<Vec<Row>, RmLoadError> {
    let exe = match &args.rfaas {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("rfaas"),
    };
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut rows = Rows {
        args,
        rows: Vec::new(),
    };
    let mut rm = RmProcess::start(
        &exe,
        &dir,
        &format!(
            "heartbeat_timeout_ms = {}\nmax_ttl_ms = {}\n{}",
            args.heartbeat_timeout_ms,
            args.ttl_ms.max(86_400_000),
            args.compact_log_bytes
                .map(|b| format!("compact_log_bytes = {b}\n"))
                .unwrap_or_default()
        ),
    )?;
    let api = Api::new(&rm.http, &rm.secret);
    let target = Target::new(&rm.http, &rm.secret)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.generator_threads.max(1))
        .thread_name("rm-load")
        .enable_all()
        .build()?;

    // Floors.
    let health = rt.block_on(async {
        let mut conn = Conn::new(&target);
        let mut l = Latencies::new();
        for _ in 0..2000 {
            l.record(
                conn.expect(200, Method::GET, "/v1/health", Bytes::new())
                    .await?
                    .1,
            );
        }
        Ok::<_, RmLoadError>(l)
    })?;
    rows.latencies("floor", "health", &health);
    rows.latencies("floor", "fsync", &fsync_floor(&dir, 300)?);

    // N nodes, heartbeating.
    let cores = args.cores_per_node;
    let t = Instant::now();
    let intervals = parallel(&api, args.nodes, args.clients, move |api, i| {
        let body = json!({"name": format!("sim-{i}"), "cores": cores, "memory": 0,
                          "address": format!("127.0.0.1:{}", 1024 + i % 60_000)});
        let (v, _) = api.expect(201, "POST", "/v1/nodes", Some(&body))?;
        Ok(v["heartbeat_interval_ms"].as_u64().unwrap_or(1000))
    })?;
    rows.add("setup", "register_s", t.elapsed().as_secs_f64(), "s");
    let every = Duration::from_millis(intervals.first().copied().unwrap_or(1000));
    let heartbeats = Pacer::start(
        &rt,
        &target,
        args.nodes,
        every,
        args.background_threads,
        |i| {
            (
                Method::POST,
                format!("/v1/nodes/sim-{i}/heartbeat"),
                Bytes::new(),
            )
        },
    )?;

    // L leases, renewing.
    let t = Instant::now();
    let ttl = args.ttl_ms;
    let held = parallel(&api, args.leases, args.clients, move |api, _| {
        let body = json!({"cores": 1, "ttl_ms": ttl, "client": "held"});
        let (v, _) = api.expect(201, "POST", "/v1/leases", Some(&body))?;
        Ok((
            v["lease"].as_u64().unwrap_or(0),
            v["token"].as_str().unwrap_or("").to_string(),
        ))
    })?;
    let fill = t.elapsed().as_secs_f64();
    rows.add("setup", "fill_s", fill, "s");
    rows.add(
        "setup",
        "fill_grants_per_s",
        args.leases as f64 / fill,
        "1/s",
    );
    let held = Arc::new(held);
    let renewals = {
        let held = held.clone();
        Pacer::start(
            &rt,
            &target,
            args.leases,
            Duration::from_millis(ttl / 3),
            args.background_threads,
            move |i| {
                let (id, token) = &held[i];
                let body = Bytes::from(json!({ "token": token }).to_string());
                (Method::POST, format!("/v1/leases/{id}/renew"), body)
            },
        )?
    };

    // The measured cycles.
    let before = rm.usage()?;
    let generator_before = process::usage_of(std::process::id())?;
    rows.add("load", "loadavg_1m_before", load_average(), "tasks");
    let (bg_hb, bg_renew) = (heartbeats.done.clone(), renewals.done.clone());
    let (hb0, rn0) = (
        bg_hb.load(Ordering::Relaxed),
        bg_renew.load(Ordering::Relaxed),
    );
    let c = rt.block_on(run_cycles(&target, args))?;
    let after = rm.usage()?;
    let generator_after = process::usage_of(std::process::id())?;
    rows.add("load", "loadavg_1m_after", load_average(), "tasks");
    let secs = c.elapsed.as_secs_f64();
    rows.latencies("load", "grant", &c.grant);
    rows.latencies("load", "renew", &c.renew);
    rows.latencies("load", "release", &c.release);
    rows.add("load", "grants_per_s", c.grant.count() as f64 / secs, "1/s");
    rows.add("load", "refused", c.refused as f64, "grants");
    rows.add("load", "ended_by_node_death", c.ended as f64, "cycles");
    rows.add(
        "load",
        "background_heartbeats_per_s",
        (bg_hb.load(Ordering::Relaxed) - hb0) as f64 / secs,
        "1/s",
    );
    rows.add(
        "load",
        "background_renewals_per_s",
        (bg_renew.load(Ordering::Relaxed) - rn0) as f64 / secs,
        "1/s",
    );
    let trips = &c.round_trips;
    let tenth = (trips.len() / 10).max(1);
    let latencies = |part: &[(u64, Duration)]| {
        let mut l = Latencies::new();
        for (_, d) in part {
            l.record(*d);
        }
        l
    };
    let first = latencies(&trips[..tenth.min(trips.len())]);
    let last = latencies(&trips[trips.len().saturating_sub(tenth)..]);
    rows.latencies("first_10pct", "grant_release", &first);
    rows.latencies("last_10pct", "grant_release", &last);
    // Every tenth, in order: a trend shows as a slope, a warm-up as a first tenth apart.
    for (k, part) in trips.chunks(tenth).take(10).enumerate() {
        rows.latencies(
            &format!("tenth_{}", k + 1),
            "grant_release",
            &latencies(part),
        );
    }
    rows.add(
        "rm",
        "cpu_percent",
        (after.cpu.saturating_sub(before.cpu)).as_secs_f64() / secs * 100.0,
        "%",
    );
    rows.add(
        "generator",
        "cpu_percent",
        (generator_after.cpu.saturating_sub(generator_before.cpu)).as_secs_f64() / secs * 100.0,
        "%",
    );
    rows.add("rm", "rss_mib", after.rss as f64 / 1048576.0, "MiB");
    rows.add(
        "rm",
        "rss_peak_mib",
        after.rss_peak as f64 / 1048576.0,
        "MiB",
    );
    let (snap, log) = rm.state_bytes()?;
    rows.add("rm", "snapshot_mib", snap as f64 / 1048576.0, "MiB");
    rows.add("rm", "log_mib", log as f64 / 1048576.0, "MiB");

    let hb = heartbeats.stop(&rt);
    let rn = renewals.stop(&rt);
    rows.latencies("background", "heartbeat", &hb.latencies);
    rows.add("background", "heartbeat_failed", hb.failed as f64, "calls");
    rows.add("background", "heartbeat_late", hb.late as f64, "calls");
    rows.latencies("background", "renewal", &rn.latencies);
    rows.add("background", "renewal_failed", rn.failed as f64, "calls");
    rows.add("background", "renewal_late", rn.late as f64, "calls");
    let (m, _) = api.expect(200, "GET", "/v1/metrics", None)?;
    let counter = |k: &str| m["counters"][k].as_f64().or(m[k].as_f64()).unwrap_or(-1.0);
    rows.add("rm", "leases_live", counter("leases_live"), "leases");
    rows.add("rm", "node_deaths", counter("node_deaths"), "nodes");
    rows.add("rm", "expiries", counter("expiries"), "leases");

    // Restart with the leases.
    let took = rm.kill9_and_restart()?;
    rows.add(
        "restart",
        "kill9_to_ready_ms",
        took.as_secs_f64() * 1e3,
        "ms",
    );
    let api = Api::new(&rm.http, &rm.secret);
    let (m, _) = api.expect(200, "GET", "/v1/metrics", None)?;
    rows.add(
        "restart",
        "leases_restored",
        metric(&m, "leases_live"),
        "leases",
    );
    rows.add(
        "restart",
        "rss_mib",
        rm.usage()?.rss as f64 / 1048576.0,
        "MiB",
    );

    let header = [
        "benchmark",
        "nodes",
        "leases",
        "clients",
        "phase",
        "metric",
        "value",
        "unit",
    ];
    let file = std::fs::File::create(&args.output)?;
    let mut w = RowWriter::new(file, &header, &args.output.display().to_string())?;
    for r in &rows.rows {
        w.row(r)?;
    }
    w.finish()?;
    Ok(rows.rows)
}

/// The machine's load average over the last minute (`/proc/loadavg`; -1 if unreadable): the
/// other work the figures shared the cores with.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1.0)
}

fn metric(m: &Value, key: &str) -> f64 {
    m[key].as_f64().unwrap_or(-1.0)
}
