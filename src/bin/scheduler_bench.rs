//! `scheduler_bench`: grant latency of the resource manager's scheduler alone (no sockets) with
//! a large population. See `scheduler_bench --help`; the work is done by
//! [`rfaas::scheduler::bench`].

use clap::Parser;

/// Grant latency of the scheduler alone with 10,000 nodes and 100,000 live leases (defaults).
///
/// Writes one CSV row per grant and release to --output (columns: benchmark, mode, provider,
/// payload_bytes, rank, world_size, node, worker, repetition, latency_ns), a JSON metadata file
/// beside it, and prints p50/p99/p99.9 of grant and release.
#[derive(Parser)]
#[command(name = "scheduler_bench", version)]
struct Cli {
    #[command(flatten)]
    args: rfaas::scheduler::bench::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    rfaas::scheduler::bench::run(&cli.args)?;
    Ok(())
}
