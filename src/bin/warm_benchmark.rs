//! `warm_benchmark`: Latency of invocations on an allocation kept warm (hot and always-warm executors).
//! See `warm_benchmark --help`; the work is done by [`rfaas::bench::invocation`].

use clap::Parser;

/// Latency of invocations on an allocation kept warm (hot and always-warm executors).
///
/// Writes one CSV row per measurement to --output (columns: benchmark, mode, provider,
/// payload_bytes, rank, world_size, node, worker, repetition, latency_ns), a JSON metadata file
/// beside it, and prints p50/p99/p99.9 per mode and payload size.
#[derive(Parser)]
#[command(name = "warm_benchmark", version)]
struct Cli {
    #[command(flatten)]
    args: rfaas::bench::invocation::WarmArgs,
}

fn main() -> anyhow::Result<()> {
    rfaas::logging::init("warn");
    let cli = Cli::parse();
    rfaas::bench::invocation::run_warm(&cli.args)?;
    Ok(())
}
