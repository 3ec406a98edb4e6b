//! `cold_benchmark`: Cold starts: a fresh allocation per repetition, every phase timed to the first result.
//! See `cold_benchmark --help`; the work is done by [`rfaas::bench::invocation`].

use clap::Parser;

/// Cold starts: a fresh allocation per repetition, every phase timed to the first result.
///
/// Writes one CSV row per measurement to --output (columns: benchmark, mode, provider,
/// payload_bytes, rank, world_size, node, worker, repetition, latency_ns), a JSON metadata file
/// beside it, and prints p50/p99/p99.9 per mode and payload size.
#[derive(Parser)]
#[command(name = "cold_benchmark", version)]
struct Cli {
    #[command(flatten)]
    args: rfaas::bench::invocation::ColdArgs,
}

fn main() -> anyhow::Result<()> {
    rfaas::logging::init("warn");
    let cli = Cli::parse();
    rfaas::bench::invocation::run_cold(&cli.args)?;
    Ok(())
}
