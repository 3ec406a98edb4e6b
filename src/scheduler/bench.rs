//! The scheduler benchmark behind `scheduler_bench`: grant latency with a large population.
//!
//! Builds a scheduler with `--nodes` executor managers (`--cores` cores and 1 TiB each) and
//! `--leases` live leases (1 to 8 cores each, 1 GiB per core, pack or spread at random), then
//! runs `--grants` iterations of grant + release of a random live lease (so the population
//! stays put) and prints p50/p99/p99.9 of grant and release from an HDR histogram. No sockets:
//! this is the scheduler alone, the floor under the resource manager's HTTP API.

use std::time::{Duration, Instant};

use super::{Config, LeaseId, LeaseRequest, Millis, NodeInfo, Policy, Scheduler, TokenSource};
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
    for i in 0..args.grants {
        if i % 1024 == 0 {
            now = now.plus_ms(1);
        }
        let req = request(&mut rng, args.split_percent);
        let t = Instant::now();
        let r = s.grant(req, now);
        grant.record(t.elapsed());
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
        release.record(t.elapsed());
        r.map_err(|e| anyhow::anyhow!("release: {e}"))?;
    }
    Ok(Report {
        grant,
        release,
        refused,
        setup,
        live: s.live_leases(),
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
        };
        let r = measure(&args).unwrap();
        assert_eq!(r.grant.count(), 500);
        assert_eq!(r.live as u64, 50 - r.refused);
    }
}
