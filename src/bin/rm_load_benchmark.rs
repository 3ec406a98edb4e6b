//! `rm_load_benchmark`: the resource manager at cluster scale over its HTTP API: N simulated
//! executor managers heartbeating, L leases renewing, C clients granting, renewing and
//! releasing; latencies, grants per second, RSS, CPU, state size, restart time.
//! See `rm_load_benchmark --help`; the work is done by [`rfaas::bench::rm_load`].

use clap::Parser;

/// Load test of a resource manager this benchmark starts (`rfaas resource-manager` beside
/// it): registers --nodes simulated executor managers and keeps them heartbeating, holds
/// --leases leases renewing at a third of their TTL, then runs --cycles grant → renew →
/// release cycles with --clients concurrent clients; finally kill -9 and restart.
///
/// Writes one CSV row per figure to --output (columns: benchmark, nodes, leases, clients,
/// phase, metric, value, unit) and prints them.
#[derive(Parser)]
#[command(name = "rm_load_benchmark", version)]
struct Cli {
    #[command(flatten)]
    args: rfaas::bench::rm_load::RmLoadArgs,
}

fn main() -> anyhow::Result<()> {
    rfaas::logging::init("warn");
    let cli = Cli::parse();
    rfaas::bench::rm_load::run(&cli.args)?;
    Ok(())
}
