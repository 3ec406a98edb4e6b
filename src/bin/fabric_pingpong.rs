//! `fabric_pingpong`: round-trip latency of the fabric providers and of the raw media they run
//! on, as CSV on stdout. See `fabric_pingpong --help` and [`rfaas::bench`].

use std::process::ExitCode;

use clap::Parser;
use rfaas::bench::{self, stats, Args};

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    rfaas::logging::init("warn");

    if let Some(mode) = args.internal_server {
        // This process is the server half, started by the client below.
        bench::serve(&args, mode).map_err(|e| anyhow::anyhow!("{mode} server: {e}"))?;
        return Ok(ExitCode::SUCCESS);
    }

    let report = bench::run(&args, &mut std::io::stdout().lock())?;
    for line in stats::summary(&report.rows) {
        eprintln!("{line}");
    }
    for (mode, err) in &report.failures {
        eprintln!("error: {mode}: {err}");
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
