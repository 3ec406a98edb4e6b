//! `cold_benchmark`: Cold starts: a fresh allocation per repetition, every phase timed to the first result.
//! See `cold_benchmark --help`; the work is done by [`rfaas::bench::invocation`].

use clap::Parser;

/// Cold starts: a fresh allocation per repetition, every phase timed to the first result.
///
/// Writes one CSV row per measurement to --output (columns: benchmark, mode, provider,
/// payload_bytes, rank, world_size, node, worker, repetition, latency_ns, then the phases
/// allocation_ns, spawn_ns, code_load_ns, connect_ns, first_invocation_ns), a JSON metadata
/// file beside it, and prints p50/p99/p99.9 per mode and payload size.
#[derive(Parser)]
#[command(name = "cold_benchmark", version)]
#[command(mut_arg("warmup", |a| a
    .help("Unmeasured cold starts first, per size and mode: at most 3 (each is a whole allocation)")
    .default_value("3")))]
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
