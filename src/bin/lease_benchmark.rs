//! `lease_benchmark`: lease grant + release round trips against a cluster's resource manager,
//! from one client (latency) and from many at once (grants per second).
//! See `lease_benchmark --help`; the work is done by [`rfaas::bench::lease`].

use clap::Parser;

/// Lease grant + release round trips against the resource manager of a cluster file: p50/p99
/// of one client's round trips, then grants per second with N concurrent clients.
///
/// Writes one CSV row per round trip to --output (columns: benchmark, mode, provider,
/// payload_bytes, rank, world_size, node, worker, repetition, latency_ns), and a JSON metadata
/// file beside it with the throughput phase.
#[derive(Parser)]
#[command(name = "lease_benchmark", version)]
struct Cli {
    #[command(flatten)]
    args: rfaas::bench::lease::LeaseArgs,
}

fn main() -> anyhow::Result<()> {
    rfaas::logging::init("warn");
    let cli = Cli::parse();
    rfaas::bench::lease::run(&cli.args)?;
    Ok(())
}
