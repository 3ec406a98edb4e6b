//! Rank 0's output: the CSV of every rank's rows, the JSON metadata beside it and the summary
//! (per mode and size the ranks' HDR histograms decoded and merged in parallel with rayon, then
//! each rank's line and, in throughput mode, the invocations per second).

use std::collections::BTreeMap;

use mpi::traits::*;
use rayon::prelude::*;

use super::gather::Gathered;
use super::rank::{RankState, RankSummary, Rate};
use super::{Outcome, ScalableArgs, ScalableError, ScalableMode, BENCHMARK};
use crate::bench::invocation::{write_outputs, COLD_PHASES};
use crate::bench::stats::Latencies;
use crate::mpi_glue::SessionReport;

/// Rank 0 writes the files and prints the summary; then every rank meets at a barrier (so no
/// rank exits, and no failing status stops the job, before the files are out).
pub(super) fn complete<C: Communicator>(
    comm: &C,
    args: &ScalableArgs,
    state: &RankState,
    gathered: Option<Gathered>,
    report: Option<SessionReport>,
) -> Result<Outcome, ScalableError> {
    let mut outcome = Outcome {
        rank: state.rank,
        world_size: state.world_size,
        ..Outcome::default()
    };
    let written = match gathered {
        Some(g) => write_root(args, state.world_size, g, report.as_ref(), &mut outcome),
        None => Ok(()),
    };
    comm.barrier();
    written.map(|()| outcome)
}

fn write_root(
    args: &ScalableArgs,
    world_size: i32,
    g: Gathered,
    report: Option<&SessionReport>,
    outcome: &mut Outcome,
) -> Result<(), ScalableError> {
    let records = g.records;
    for s in &g.summaries {
        if let Some(f) = &s.failure {
            outcome.failed.push((s.rank, f.clone()));
        }
    }
    for (r, e) in &g.unreadable {
        if !outcome.failed.iter().any(|(f, _)| f == r) {
            outcome.failed.push((*r, e.clone()));
        }
    }
    for &r in &g.dropped {
        if !outcome.failed.iter().any(|(f, _)| *f == r) {
            outcome
                .failed
                .push((r, "its rows exceed one MPI message; not in the CSV".into()));
        }
    }
    outcome.summary = summary_lines(&g.summaries);
    let c = &args.common;
    let config = serde_json::json!({
        "mode": args.mode.name(),
        "function": c.function,
        "sizes": c.sizes,
        "repetitions": c.repetitions,
        "warmup": c.warmup,
        "cores_per_rank": args.cores_per_rank,
        "in_flight": args.in_flight,
        "hot_timeout_ms": args.hot_timeout_ms,
        "client_spin_us": args.client_spin_us,
        "timeout_s": c.timeout_s,
    });
    let billing = |rank: i32| report.and_then(|r| r.ranks.iter().find(|x| x.rank == rank));
    let ranks: Vec<serde_json::Value> = g
        .summaries
        .iter()
        .map(|s| {
            let b = billing(s.rank);
            serde_json::json!({
                "rank": s.rank,
                "nodes": s.workers.iter().map(|w| w.node.clone()).collect::<std::collections::BTreeSet<_>>(),
                "workers": s.workers,
                "failure": s.failure,
                "execution_ns": b.map(|b| b.execution_ns),
                "hot_polling_ns": b.map(|b| b.hot_polling_ns),
                "offloads": b.map(|b| b.invocations),
                "offload_errors": b.map(|b| b.errors),
            })
        })
        .collect();
    let mut extra = serde_json::Map::new();
    extra.insert("world_size".into(), world_size.into());
    extra.insert(
        "mpi_library".into(),
        crate::mpi_glue::library_version().into(),
    );
    extra.insert("ranks".into(), ranks.into());
    if args.mode == ScalableMode::Throughput {
        extra.insert("throughput".into(), throughput_json(&g.summaries));
    }
    extra.insert(
        "failed_ranks".into(),
        serde_json::json!(outcome
            .failed
            .iter()
            .map(|(r, e)| serde_json::json!({"rank": r, "error": e}))
            .collect::<Vec<_>>()),
    );
    if let Some(r) = report {
        extra.insert("lease".into(), r.lease.into());
    }
    extra.insert("summary".into(), outcome.summary.clone().into());
    let extra_columns: &[&str] = match args.mode {
        ScalableMode::Cold => &COLD_PHASES,
        ScalableMode::Throughput => &["in_flight", "duration_ns"],
        _ => &[],
    };
    write_outputs(&c.output, BENCHMARK, &records, extra_columns, config, extra)?;
    for l in &outcome.summary {
        println!("{l}");
    }
    eprintln!(
        "[scalable_benchmark] {} rows from {world_size} ranks: {} (metadata {})",
        records.len(),
        c.output.display(),
        c.output.with_extension("json").display()
    );
    for (r, e) in &outcome.failed {
        eprintln!("[scalable_benchmark] rank {r} failed: {e}");
    }
    Ok(())
}

/// Per size: each rank's invocations/s, and the job's (all ranks' invocations over the longest
/// rank's measuring time: every rank starts measuring as it leaves the same barrier).
fn throughput_json(summaries: &[RankSummary]) -> serde_json::Value {
    let mut per_size: BTreeMap<usize, Vec<(i32, Rate)>> = BTreeMap::new();
    for s in summaries {
        for (size, r) in &s.rates {
            per_size.entry(*size).or_default().push((s.rank, *r));
        }
    }
    per_size
        .iter()
        .map(|(size, rates)| {
            serde_json::json!({
                "payload_bytes": size,
                "ranks": rates.iter().map(|(rank, r)| serde_json::json!({
                    "rank": rank,
                    "invocations": r.invocations,
                    "seconds": r.elapsed_ns as f64 / 1e9,
                    "invocations_per_s": r.per_s(),
                })).collect::<Vec<_>>(),
                "total_invocations_per_s": total_rate(rates),
            })
        })
        .collect::<Vec<_>>()
        .into()
}

fn total_rate(rates: &[(i32, Rate)]) -> f64 {
    let n: u64 = rates.iter().map(|(_, r)| r.invocations).sum();
    let longest = rates.iter().map(|(_, r)| r.elapsed_ns).max().unwrap_or(0);
    Rate {
        invocations: n,
        elapsed_ns: longest,
    }
    .per_s()
}

/// The summary: per (mode, size) the ranks' histograms merged, then each rank's own line, and
/// in throughput mode each rank's and the job's invocations/s.
fn summary_lines(summaries: &[RankSummary]) -> Vec<String> {
    // Every rank's histograms decoded in parallel (one rayon task per histogram)...
    let decoded: Vec<((String, usize), (i32, Latencies))> = summaries
        .par_iter()
        .flat_map_iter(|s| {
            s.histograms.iter().map(move |(mode, size, hex_bytes)| {
                let h = hex::decode(hex_bytes)
                    .ok()
                    .and_then(|b| Latencies::from_bytes(&b))
                    .unwrap_or_default();
                ((mode.clone(), *size), (s.rank, h))
            })
        })
        .collect();
    let mut per: BTreeMap<(String, usize), Vec<(i32, Latencies)>> = BTreeMap::new();
    for (key, rank_h) in decoded {
        per.entry(key).or_default().push(rank_h);
    }
    // ...and merged per (mode, size) in parallel, as a tree of pairwise merges.
    let totals: Vec<Latencies> = per
        .par_iter()
        .map(|(_, hs)| {
            hs.par_iter()
                .map(|(_, h)| h.clone())
                .reduce(Latencies::new, |mut a, b| {
                    a.merge(&b);
                    a
                })
        })
        .collect();
    let mut lines = vec![format!(
        "{:<10} {:>10} {:>5} {:>9} {:>10} {:>10} {:>10}",
        "mode", "payload", "ranks", "count", "p50_ns", "p99_ns", "p99.9_ns"
    )];
    for (((mode, size), hs), total) in per.iter().zip(&totals) {
        lines.push(format!(
            "{mode:<10} {size:>10} {:>5} {:>9} {:>10} {:>10} {:>10}",
            hs.len(),
            total.count(),
            total.quantile_ns(0.5),
            total.quantile_ns(0.99),
            total.quantile_ns(0.999)
        ));
    }
    for ((mode, size), hs) in &per {
        for (rank, h) in hs {
            lines.push(format!(
                "rank {rank} {mode} {size} B: count {}, p50 {} ns, p99 {} ns, p99.9 {} ns",
                h.count(),
                h.quantile_ns(0.5),
                h.quantile_ns(0.99),
                h.quantile_ns(0.999)
            ));
        }
    }
    let mut per_size: BTreeMap<usize, Vec<(i32, Rate)>> = BTreeMap::new();
    for s in summaries {
        for (size, r) in &s.rates {
            per_size.entry(*size).or_default().push((s.rank, *r));
        }
    }
    for (size, rates) in &per_size {
        for (rank, r) in rates {
            lines.push(format!(
                "rank {rank} throughput {size} B: {:.0} invocations/s",
                r.per_s()
            ));
        }
        lines.push(format!(
            "total throughput {size} B: {:.0} invocations/s from {} ranks",
            total_rate(rates),
            rates.len()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn summary_merges_histograms_and_rates() {
        let mut h = Latencies::new();
        h.record(Duration::from_micros(5));
        let s = |rank| RankSummary {
            rank,
            histograms: vec![("throughput".into(), 64, hex::encode(h.to_bytes()))],
            rates: vec![(
                64,
                Rate {
                    invocations: 1000,
                    elapsed_ns: 1_000_000_000 / (rank as u64 + 1),
                },
            )],
            ..RankSummary::default()
        };
        let lines = summary_lines(&[s(0), s(1)]);
        assert!(lines[1].contains("throughput") && lines[1].contains(" 2 "));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("rank 1 throughput 64 B:")));
        // 2000 invocations over the longest rank's second.
        assert!(lines
            .iter()
            .any(|l| l == "total throughput 64 B: 2000 invocations/s from 2 ranks"));
    }
}
