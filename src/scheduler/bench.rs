//! The scheduler benchmark behind `scheduler_bench`: grant latency with a large population.
//!
//! Builds a scheduler with `--nodes` executor managers (`--cores` cores and 1 TiB each) and
//! `--leases` live leases (1 to 8 cores each, 1 GiB per core, pack or spread at random), then
//! runs `--grants` iterations of grant + release of a random live lease (so the population
//! stays put), writes every grant and release as a CSV row like the other benchmarks
//! (`--output`, JSON metadata beside it) and prints p50/p99/p99.9 of grant and release from an
//! HDR histogram. No sockets:
//! this is the scheduler alone, the floor under the resource manager's HTTP API.

use std::time::{Duration, Instant};

use super::{Config, LeaseId, LeaseRequest, Millis, NodeInfo, Policy, Scheduler, TokenSource};
use crate::bench::invocation::{write_outputs, Record};
use crate::bench::stats::Latencies;

/// Benchmark parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Executor managers registered.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: u32,
    /// Cores per executor manager.
    #[arg(long, default_value_t = 64)]
    pub cores: u32,
    /// Live leases kept during the measurement.
    #[arg(long, default_value_t = 100_000)]
    pub leases: u32,
    /// Measured grant + release iterations.
    #[arg(long, default_value_t = 200_000)]
    pub grants: u32,
    /// Percentage of requests that allow a split over several nodes.
    #[arg(long, default_value_t = 10)]
    pub split_percent: u32,
    /// Seeded (not random) tokens: leaves the OS random generator out of the measurement.
    #[arg(long)]
    pub seeded_tokens: bool,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where to write the CSV: one row per measured grant and release (modes `grant`,
    /// `release`), the columns of the other benchmarks; a JSON metadata file goes beside it.
    #[arg(long)]
    pub output: std::path::PathBuf,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Grant latencies.
    pub grant: Latencies,
    /// Release latencies.
    pub release: Latencies,
    /// Grants refused for lack of capacity during the measurement.
    pub refused: u64,
    /// Time to build the initial state.
    pub setup: Duration,
    /// Live leases at the end.
    pub live: usize,
    /// Every grant's latency, ns, in order.
    pub grant_ns: Vec<u64>,
    /// Every release's latency, ns, in order.
    pub release_ns: Vec<u64>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn request(rng: &mut Rng, split_percent: u32) -> LeaseRequest {
    LeaseRequest {
        cores: rng.below(8) as u32 + 1,
        memory_per_core: 1 << 30,
        policy: if rng.below(2) == 0 {
            Policy::Pack
        } else {
            Policy::Spread
        },
        allow_split: rng.below(100) < u64::from(split_percent),
        ttl: Some(Duration::from_secs(3600)),
        client: "bench".into(),
    }
}

/// Runs the benchmark and prints its results.
pub fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let report = measure(args)?;
    println!(
        "scheduler: {} nodes x {} cores, {} live leases (setup {:.2} s), {} grant+release iterations, {} refused, {} tokens",
        args.nodes,
        args.cores,
        report.live,
        report.setup.as_secs_f64(),
        args.grants,
        report.refused,
        if args.seeded_tokens { "seeded" } else { "random" },
    );
    for (name, h) in [("grant", &report.grant), ("release", &report.release)] {
        println!(
            "{name:>8}: n={} p50={} ns p99={} ns p99.9={} ns max={} ns",
            h.count(),
            h.quantile_ns(0.5),
            h.quantile_ns(0.99),
            h.quantile_ns(0.999),
            h.quantile_ns(1.0),
        );
    }
    let row = |mode: &str, repetition: usize, latency_ns: u64| Record {
        repetition,
        latency_ns,
        ..Record::single_client("scheduler_bench", mode.into(), "none", 0, String::new())
    };
    let records: Vec<Record> = (report.grant_ns.iter().enumerate())
        .map(|(i, &ns)| row("grant", i, ns))
        .chain((report.release_ns.iter().enumerate()).map(|(i, &ns)| row("release", i, ns)))
        .collect();
    let config = serde_json::json!({"nodes": args.nodes, "cores": args.cores, "leases": args.leases,
        "grants": args.grants, "split_percent": args.split_percent,
        "seeded_tokens": args.seeded_tokens, "seed": args.seed});
    let mut extra = serde_json::Map::new();
    extra.insert(
        "population".into(),
        serde_json::json!({"live_at_end": report.live, "refused": report.refused,
            "setup_s": report.setup.as_secs_f64()}),
    );
    write_outputs(
        &args.output,
        "scheduler_bench",
        &records,
        &[],
        config,
        extra,
    )?;
    Ok(report)
}

/// Builds the population and measures, printing nothing.
pub fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    let tokens = if args.seeded_tokens {
        TokenSource::Seeded(args.seed)
    } else {
        TokenSource::Random
    };
    let mut s = Scheduler::with_tokens(Config::default(), tokens);
    let mut rng = Rng(args.seed | 1);
    let mut now = Millis(0);
    let t0 = Instant::now();
    for i in 0..args.nodes {
        s.register(
            NodeInfo {
                name: format!("node{i:05}"),
                address: format!("10.{}.{}.{}:10000", i >> 16, (i >> 8) & 255, i & 255),
                cores: args.cores,
                memory: 1 << 40,
                hosted: Vec::new(),
            },
            now,
        )?;
    }
    let mut live: Vec<(LeaseId, String)> = Vec::with_capacity(args.leases as usize);
    while live.len() < args.leases as usize {
        let g = s
            .grant(request(&mut rng, args.split_percent), now)
            .map_err(|e| anyhow::anyhow!("building the population: {e}"))?;
        live.push((g.lease, g.token));
    }
    let setup = t0.elapsed();
    let (mut grant, mut release, mut refused) = (Latencies::new(), Latencies::new(), 0);
    let mut grant_ns = Vec::with_capacity(args.grants as usize);
    let mut release_ns = Vec::with_capacity(args.grants as usize);
    for i in 0..args.grants {
        if i % 1024 == 0 {
            now = now.plus_ms(1);
        }
        let req = request(&mut rng, args.split_percent);
        let t = Instant::now();
        let r = s.grant(req, now);
        let took = t.elapsed();
        grant.record(took);
        grant_ns.push(took.as_nanos() as u64);
        match r {
            Ok(g) => live.push((g.lease, g.token)),
            Err(_) => refused += 1,
        }
        if live.is_empty() {
            continue;
        }
        let (id, token) = live.swap_remove(rng.below(live.len() as u64) as usize);
        let t = Instant::now();
        let r = s.release(id, &token);
        let took = t.elapsed();
        release.record(took);
        release_ns.push(took.as_nanos() as u64);
        r.map_err(|e| anyhow::anyhow!("release: {e}"))?;
    }
    Ok(Report {
        grant,
        release,
        refused,
        setup,
        live: s.live_leases(),
        grant_ns,
        release_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_keeps_the_population() {
        let args = BenchArgs {
            nodes: 20,
            cores: 16,
            leases: 50,
            grants: 500,
            split_percent: 10,
            seeded_tokens: true,
            seed: 3,
            output: std::path::PathBuf::new(),
        };
        let r = measure(&args).unwrap();
        assert_eq!(r.grant.count(), 500);
        assert_eq!(r.grant_ns.len(), 500);
        assert_eq!(r.live as u64, 50 - r.refused);
    }
}
