//! `lease_benchmark`: the resource manager's lease grant + release round trip over HTTP, one
//! client at a time (latency) and from many concurrent clients (grants per second). Writes the
//! round trips as CSV rows like the other benchmarks (`--output`), the throughput phase into
//! the JSON metadata beside it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use super::invocation::{write_outputs, BenchError, Record};
use super::stats::Latencies;
use crate::client::{Cluster, Lease, LeaseOptions};

/// Flags of `lease_benchmark`.
#[derive(ClapArgs, Clone, Debug)]
pub struct LeaseArgs {
    /// cluster.json with a resource manager (default: $RFAAS_CLUSTER).
    #[arg(long)]
    pub cluster: Option<std::path::PathBuf>,
    /// Grant + release round trips measured one after another.
    #[arg(long, default_value_t = 2000)]
    pub repetitions: usize,
    /// Concurrent clients for the throughput phase.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Cores per lease.
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// Where to write the CSV: one row per measured round trip (mode `grant_release`), the
    /// columns of the other benchmarks; the throughput phase goes into the JSON metadata file
    /// beside it.
    #[arg(long)]
    pub output: std::path::PathBuf,
}

/// What one run measured.
#[derive(Debug)]
pub struct LeaseReport {
    /// Grant + release round trips, one client.
    pub round_trip: Latencies,
    /// Grants completed in the throughput phase.
    pub grants: u64,
    /// Refused grants (no capacity) in the throughput phase.
    pub refused: u64,
    /// Length of the throughput phase.
    pub elapsed: Duration,
}

fn options() -> LeaseOptions {
    LeaseOptions {
        auto_renew: false,
        ..LeaseOptions::default()
    }
}

fn grant_release(cluster: &Cluster, cores: u32) -> Result<(), BenchError> {
    let lease: Lease = cluster.lease(cores, &options())?;
    lease.release()?;
    Ok(())
}

/// Runs the benchmark and prints a summary.
pub fn run(args: &LeaseArgs) -> Result<LeaseReport, BenchError> {
    let cluster = Arc::new(Cluster::open(args.cluster.as_deref())?);
    if cluster.resource_manager.is_none() {
        return Err(BenchError::Usage(
            "the cluster file names no resource manager".into(),
        ));
    }
    let mut round_trip = Latencies::new();
    let mut records = Vec::with_capacity(args.repetitions);
    let warmup = args.repetitions / 10;
    let row = Record::single_client(
        "lease_benchmark",
        "grant_release".into(),
        cluster.provider.name(),
        0,
        "resource-manager".into(),
    );
    for i in 0..args.repetitions + warmup {
        let t = Instant::now();
        grant_release(&cluster, args.cores)?;
        let took = t.elapsed();
        if i >= warmup {
            round_trip.record(took);
            records.push(Record {
                repetition: i - warmup,
                latency_ns: took.as_nanos() as u64,
                ..row.clone()
            });
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let grants = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|_| {
            let (cluster, stop, grants, refused) = (
                cluster.clone(),
                stop.clone(),
                grants.clone(),
                refused.clone(),
            );
            let cores = args.cores;
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match grant_release(&cluster, cores) {
                        Ok(()) => grants.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds.max(1)));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let report = LeaseReport {
        round_trip,
        grants: grants.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    };
    let config = serde_json::json!({"repetitions": args.repetitions, "warmup": warmup,
        "clients": args.clients, "seconds": args.seconds, "cores": args.cores});
    let mut throughput = serde_json::Map::new();
    throughput.insert(
        "throughput".into(),
        serde_json::json!({"clients": args.clients, "grants": report.grants,
            "refused": report.refused, "elapsed_s": report.elapsed.as_secs_f64(),
            "grants_per_s": report.grants as f64 / report.elapsed.as_secs_f64()}),
    );
    write_outputs(
        &args.output,
        "lease_benchmark",
        &records,
        &[],
        config,
        throughput,
    )?;
    println!(
        "grant+release round trip, 1 client: p50 {} ns, p99 {} ns, p99.9 {} ns ({} samples)",
        report.round_trip.quantile_ns(0.5),
        report.round_trip.quantile_ns(0.99),
        report.round_trip.quantile_ns(0.999),
        report.round_trip.count()
    );
    println!(
        "{} concurrent clients: {:.0} grants/s ({} granted and released, {} refused for lack of capacity, {:.1} s)",
        args.clients,
        report.grants as f64 / report.elapsed.as_secs_f64(),
        report.grants,
        report.refused,
        report.elapsed.as_secs_f64()
    );
    Ok(report)
}
