//! `scalable_benchmark`: the invocation benchmarks from every rank of an MPI job at once.
//! See `scalable_benchmark --help`; the work is done by [`rfaas::bench::scalable`].

use std::process::ExitCode;

use clap::Parser;

/// Invocation latency, throughput and cold starts measured from every rank of an MPI job at once.
///
/// Run it under mpirun: `mpirun -n N scalable_benchmark --cluster FILE --function NAME --sizes
/// LIST --repetitions R --output FILE [--mode warm|throughput|cold]`. In `warm` and
/// `throughput` modes the ranks share one lease (taken by rank 0) and each rank invokes its own
/// workers; in `cold` mode every rank leases, allocates, connects and invokes once per
/// repetition, all at the same time.
///
/// Rank 0 gathers every rank's rows (MPI Gatherv) into ONE CSV at --output (columns: benchmark,
/// mode, provider, payload_bytes, rank, world_size, node, worker, repetition, latency_ns, plus
/// the cold-start phases in cold mode), writes a JSON metadata file beside it (world size, MPI
/// library, each rank's workers, throughput, billing), prints a summary merged from all ranks'
/// histograms, and shows progress on stderr.
///
/// Each rank pins its thread to a core of its cpuset that its own workers do not use
/// (--client-core: that core for every rank). OpenMPI binds each rank to one core by default,
/// which may be its executor's core on a single machine: run `mpirun --bind-to none` there.
///
/// Exit status: 0 when every rank measured everything; 1 when any rank failed (e.g. its
/// executor died: that rank stops, reports its error on stderr, and the CSV still holds every
/// other rank's rows) or the run could not start.
#[derive(Parser)]
#[command(name = "scalable_benchmark", version)]
struct Cli {
    #[command(flatten)]
    args: rfaas::bench::scalable::ScalableArgs,
}

fn main() -> anyhow::Result<ExitCode> {
    rfaas::logging::init("warn");
    let cli = Cli::parse();
    let outcome = rfaas::bench::scalable::run(&cli.args)?;
    if outcome.rank == 0 && !outcome.failed.is_empty() {
        let ranks: Vec<i32> = outcome.failed.iter().map(|(r, _)| *r).collect();
        eprintln!(
            "scalable_benchmark: {} of {} ranks failed: {ranks:?}",
            ranks.len(),
            outcome.world_size
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
