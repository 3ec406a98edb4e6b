//! `lease_benchmark`: the resource manager's lease grant + release round trip over HTTP, one
//! client at a time (latency) and from many concurrent clients (grants per second).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use super::invocation::BenchError;
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
    for i in 0..args.repetitions + args.repetitions / 10 {
        let t = Instant::now();
        grant_release(&cluster, args.cores)?;
        if i >= args.repetitions / 10 {
            round_trip.record(t.elapsed());
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
