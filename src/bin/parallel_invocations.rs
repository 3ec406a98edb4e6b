//! `parallel_invocations`: One invocation on every core of an allocation at once, per repetition.
//! See `parallel_invocations --help`; the work is done by [`rfaas::bench::invocation`].

use clap::Parser;

/// One invocation on every core of an allocation at once, per repetition.
///
/// Writes one CSV row per measurement to --output (columns: benchmark, mode, provider,
/// payload_bytes, rank, world_size, node, worker, repetition, latency_ns), a JSON metadata file
/// beside it, and prints p50/p99/p99.9 per mode and payload size.
#[derive(Parser)]
#[command(name = "parallel_invocations", version)]
struct Cli {
    #[command(flatten)]
    args: rfaas::bench::invocation::ParallelArgs,
}

fn main() -> anyhow::Result<()> {
    rfaas::logging::init("warn");
    let cli = Cli::parse();
    rfaas::bench::invocation::run_parallel(&cli.args)?;
    Ok(())
}
