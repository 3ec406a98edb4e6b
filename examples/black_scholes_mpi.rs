//! An MPI application that offloads part of its work to rfaas, as in the IPDPS'24 experiments:
//! every rank prices a batch of European options with Black–Scholes, a share of them on remote
//! workers (in batches, several in flight) while local threads (rayon) price the rest, and checks the
//! combined result against a purely local computation.
//!
//! ```text
//! cargo build --release --features mpi --example black_scholes_mpi -p rfaas -p rfaas-functions
//! rfaas local-cluster start --run-dir /tmp/rfaas --provider shm
//! mpirun -n 2 target/release/examples/black_scholes_mpi --cluster /tmp/rfaas/cluster.json
//! ```
//!
//! Rank 0 prints one line per rank and a total; the exit status is non-zero when any rank's
//! result differs from the local reference or its offloads failed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use functions::black_scholes::{
    black_scholes_reference, decode_prices, encode_options, price, OptionParams, Prices,
    OPTION_RECORD_BYTES, PRICE_RECORD_BYTES,
};
use mpi::traits::*;
use rayon::prelude::*;
use rfaas::mpi_glue::{Session, SessionConfig};

/// Black–Scholes over MPI, part offloaded to rfaas workers, checked against a local run.
#[derive(Parser, Debug)]
struct Args {
    /// cluster.json (default: $RFAAS_CLUSTER).
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// The function library (default: libfunctions.so beside or above this executable).
    #[arg(long)]
    library: Option<PathBuf>,
    /// Options priced per rank.
    #[arg(long, default_value_t = 200_000)]
    options: usize,
    /// Share of each rank's options priced remotely (0..=1).
    #[arg(long, default_value_t = 0.5)]
    remote_fraction: f64,
    /// Options per offload.
    #[arg(long, default_value_t = 2_000)]
    batch: usize,
    /// Offloads in flight per rank.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Remote workers per rank.
    #[arg(long, default_value_t = 1)]
    cores_per_rank: u32,
    /// Executor hot timeout, ms (-1 always hot, 0 always warm: the default on small machines).
    #[arg(long, default_value_t = 0)]
    hot_timeout_ms: i64,
    /// Also write each rank's options and combined prices to `DIR/rank<R>.options` (40-byte
    /// input records) and `DIR/rank<R>.prices` (16-byte output records), for a check by an
    /// independent implementation.
    #[arg(long, value_name = "DIR")]
    prices_out: Option<PathBuf>,
}

fn main() -> Result<()> {
    rfaas::logging::init("warn");
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.remote_fraction) || args.batch == 0 || args.in_flight == 0 {
        bail!("--remote-fraction must be in 0..=1, --batch and --in-flight at least 1");
    }
    let universe = rfaas::mpi_glue::init()?;
    let world = universe.world();
    let mut cfg = SessionConfig::new(
        rfaas::bench::invocation::library_path(args.library.as_deref())?,
        &["black_scholes"],
    );
    cfg.cluster = args.cluster.clone();
    cfg.cores_per_rank = args.cores_per_rank;
    cfg.input_capacity = (args.batch * OPTION_RECORD_BYTES) as u32;
    cfg.output_capacity = (args.batch * PRICE_RECORD_BYTES) as u32;
    cfg.slots = args.in_flight.min(256) as u32;
    cfg.hot_timeout_ms = args.hot_timeout_ms;
    let session = Session::start(&world, &cfg).context("starting the rfaas session")?;
    let rank = session.rank();

    let options = generate(args.options, rank as u64);
    let remote = (args.options as f64 * args.remote_fraction).round() as usize;
    let t = Instant::now();
    let (remote_prices, local_prices) = std::thread::scope(|s| {
        // Local threads price the tail while this thread offloads the head (MPI_THREAD_FUNNELED:
        // only this thread touches the session). The tail is split over rayon's pool: every
        // option is priced independently, in order.
        let local = s.spawn(|| {
            options[remote..]
                .par_iter()
                .map(price)
                .collect::<Vec<Prices>>()
        });
        let remote_prices = offload_all(&session, &options[..remote], &args);
        (remote_prices, local.join().expect("local pricing thread"))
    });
    let elapsed = t.elapsed();
    let reference = black_scholes_reference(&options);
    let (ok, max_err, error) = match remote_prices {
        Ok(mut prices) => {
            prices.extend(local_prices);
            if let Some(dir) = &args.prices_out {
                write_prices(dir, rank, &options, &prices)?;
            }
            let err = max_error(&prices, &reference);
            (prices.len() == reference.len() && err <= 1e-9, err, None)
        }
        Err(e) => (false, f64::NAN, Some(e.to_string())),
    };
    if let Some(e) = &error {
        eprintln!("rank {rank}: offload failed: {e}");
    }

    // One line per rank to rank 0: ok flag, error, seconds.
    let line = format!(
        "rank {rank}: {} options, {remote} remote, {:.3} s, max |error| {max_err:.2e}: {}",
        args.options,
        elapsed.as_secs_f64(),
        if ok { "ok" } else { "MISMATCH" }
    );
    let lines = rfaas::mpi_glue::collective::gather_bytes(session.comm(), 0, line.as_bytes())?;
    let mut all_ok = [u8::from(ok)];
    let mut every = [0u8];
    session.comm().all_reduce_into(
        &all_ok[..],
        &mut every[..],
        mpi::collective::SystemOperation::min(),
    );
    all_ok[0] = every[0];
    let report = session.finish()?;
    if let (Some(lines), Some(report)) = (lines, report) {
        for l in lines {
            println!("{}", String::from_utf8_lossy(&l));
        }
        println!(
            "{} ranks, {} offloads, p50 {} us, p99 {} us per offload of {} options; result {}",
            world.size(),
            report.total.count(),
            report.total.quantile_ns(0.5) / 1000,
            report.total.quantile_ns(0.99) / 1000,
            args.batch,
            if all_ok[0] == 1 {
                "correct on every rank"
            } else {
                "WRONG"
            }
        );
    }
    if all_ok[0] != 1 {
        std::process::exit(1);
    }
    Ok(())
}

/// Prices `options` remotely, `args.batch` per offload, up to `args.in_flight` in flight.
fn offload_all(session: &Session, options: &[OptionParams], args: &Args) -> Result<Vec<Prices>> {
    let batches: Vec<Vec<u8>> = options.chunks(args.batch).map(encode_options).collect();
    let mut results: Vec<Vec<Prices>> = vec![Vec::new(); batches.len()];
    let mut out = vec![0u8; args.batch * PRICE_RECORD_BYTES];
    let mut flight = std::collections::VecDeque::new();
    for (i, input) in batches.iter().enumerate() {
        if flight.len() == args.in_flight {
            let (j, o) = flight.pop_front().expect("in flight");
            let n = session.wait(o, &mut out)?;
            results[j] = decode_prices(&out[..n]);
        }
        let len = input.len() / OPTION_RECORD_BYTES * PRICE_RECORD_BYTES;
        flight.push_back((
            i,
            rfaas::offload_async(session, "black_scholes", input, len)?,
        ));
    }
    while let Some((j, o)) = flight.pop_front() {
        let n = session.wait(o, &mut out)?;
        results[j] = decode_prices(&out[..n]);
    }
    Ok(results.concat())
}

/// Deterministic options per rank (a small xorshift generator: no dependency needed).
fn generate(n: usize, seed: u64) -> Vec<OptionParams> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| OptionParams {
            spot: 50.0 + 100.0 * next(),
            strike: 50.0 + 100.0 * next(),
            rate: 0.01 + 0.09 * next(),
            volatility: 0.05 + 0.6 * next(),
            time: 0.1 + 2.0 * next(),
        })
        .collect()
}

/// Writes `options` and `prices` as the kernel's input and output records.
fn write_prices(
    dir: &std::path::Path,
    rank: i32,
    options: &[OptionParams],
    prices: &[Prices],
) -> Result<()> {
    let path = dir.join(format!("rank{rank}.options"));
    std::fs::write(&path, encode_options(options)).with_context(|| path.display().to_string())?;
    let bytes: Vec<u8> = prices
        .iter()
        .flat_map(|p| [p.call.to_le_bytes(), p.put.to_le_bytes()])
        .flatten()
        .collect();
    let path = dir.join(format!("rank{rank}.prices"));
    std::fs::write(&path, bytes).with_context(|| path.display().to_string())
}

fn max_error(a: &[Prices], b: &[Prices]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.call - y.call).abs().max((x.put - y.put).abs()))
        .fold(0.0, f64::max)
}
