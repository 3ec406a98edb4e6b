"""The ``latency.py`` command line: read CSVs, print tables, write CSVs and PNGs."""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

from . import schema
from .compare import compare_fabric, compare_latency, geometric_mean
from .errors import InputError
from .load import FABRIC, load_files
from .percentiles import percentile_table
from .phases import median_row_table, phase_table
from .throughput import throughput_table

DESCRIPTION = """\
Percentile tables, throughput, comparisons and PNG plots from the tidy CSVs
written by the rFaaS benchmarks (warm_benchmark, cold_benchmark,
parallel_invocations, scalable_benchmark, fabric floor).

Every RESULTS.csv is read; raw rows from all files are pooled (several runs of
the same group merge into one sample).  The tables are printed; with --out DIR
they are also written as CSV into DIR together with the PNG plots.  A plot with
no data is skipped with a one-line note; that is not an error."""

EPILOG = f"""\
input CSVs
  raw results      one row per measurement, integer nanoseconds. Required columns:
                     {",".join(schema.RAW_REQUIRED)}
                   benchmark, mode, provider, payload_bytes, world_size and
                   latency_ns must be filled on every row. Extra columns are kept.
                   cold_benchmark phase columns: every *_ns column other than
                   latency_ns, duration_ns, timestamp_ns, start_ns, end_ns
                   (e.g. allocation_ns,spawn_ns,code_load_ns,connect_ns,
                   first_invocation_ns). Optional: in_flight, duration_ns,
                   timestamp_ns (used for throughput, see below).
  fabric floor     a CSV whose columns are exactly
                     {",".join(schema.FABRIC_COLUMNS)}
                   (already aggregated, as fabric_pingpong prints it): printed
                   as a table, plotted (rows with iterations 0 are listed,
                   not plotted), compared.

definitions
  group            benchmark, mode, provider, payload_bytes, world_size. The
                   percentile table has one line per group; rows of all ranks,
                   nodes, workers and repetitions in a group are pooled
                   (percentiles are never averaged).
  percentile       nearest rank: sort the n latencies of a group ascending,
                   x[1] <= ... <= x[n]; the p-th percentile is x[ceil(p/100*n)]
                   with exact rational arithmetic. Always a measured value, no
                   interpolation; the meaning of an HDR histogram's value at
                   percentile and of numpy's method="inverted_cdf" (without
                   its float round-up at whole ranks). Examples: p50 of
                   1..100 = 50; p99.9 of 1..1000 = 999; p99.9 of 1..100 = 100.
  count/min/max    number of rows, smallest and largest latency_ns of the group.
  p50 p90 p99 p999 the 50th, 90th, 99th and 99.9th percentile (ns).
  throughput       for rows with mode=throughput, per (benchmark, provider,
                   payload_bytes, world_size): the sum over ranks of each
                   rank's invocations per second, by the first rule whose
                   columns are filled on every row of the group:
                   duration   : n / (max duration_ns / 1e9), duration_ns = wall
                                time of the rank's whole throughput phase;
                   timestamps : (n-1) / ((max-min timestamp_ns) / 1e9),
                                timestamp_ns = completion time, per rank clock;
                   littles_law: in_flight / (mean latency_ns / 1e9), with
                                in_flight = 1 if the column is absent
                                (Little's law; an estimate assuming the
                                pipeline stays full).
                   The table's "method" column says which rule was used.
  cold phases      per group of rows that have phase values: the nearest-rank
                   median of each phase column and of latency_ns. Medians of
                   phases need not add up to the median total.
  median row       per group of rows with every phase value: the phases of
                   the row whose latency_ns is the nearest-rank p50 (ties: the
                   first in the file). They add up to its latency; other_ns
                   is what its phases leave of it.
  ratio            with --compare: new/old for p50 and p99 of each group
                   matched on its key (< 1: the new run is faster). Groups in
                   one run only are listed as "only in new"/"only in old".
                   The geometric mean of the ratios is printed below.

outputs (in DIR, with --out DIR)
  percentiles.csv                   the percentile table (ns)
  throughput.csv                    when there are mode=throughput rows
  cold_phases.csv                   when there are cold-start phase columns
  cold_median_row.csv               the phases of each cold-start group's median row
  fabric_floor.csv                  when a fabric floor CSV was given
  compare.csv, compare_fabric.csv   with --compare
  cdf_<mode>.png                    latency CDF, one file per mode, one line per group
  latency_vs_payload.png            p50 and p99 against payload size (+ fabric floor p50);
                                    scalable_benchmark is left out unless it is alone
  scalable_latency_vs_ranks.png     scalable_benchmark p50 and p99 against world_size
  scalable_throughput_vs_ranks.png  throughput against world_size
  cold_start_phases.png             the median row's phases, stacked, per cold-start group
  cold_start_phase_distribution.png each phase's distribution per cold-start group
  hot_vs_warm.png                   p50 and p99, hot beside warm, for groups with both
  fabric_floor.png                  fabric floor p50 and p99 against payload
  Plots are drawn with matplotlib's headless Agg backend; latency axes in us.

exit status
  0 success; 2 bad input (a nonexistent, empty or non-CSV file, a missing
  column, a non-number in a numeric column) or bad arguments, explained in
  one line on stderr; 1 an output file could not be written.

examples
  python analysis/latency.py results/warm.csv results/cold.csv --out results/report
  python analysis/latency.py new.csv --compare old.csv --out results/cmp
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) or "latency.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", nargs="+", metavar="RESULTS.csv", help="benchmark CSV files (raw rows or fabric floor)")
    p.add_argument("--out", metavar="DIR", help="write the tables as CSV and the PNG plots here (created if missing); "
                   "without it only the tables are printed")
    p.add_argument("--compare", metavar="OLD.csv", action="append", default=[],
                   help="an earlier run to compare with: prints new/old ratios of p50 and p99 per group "
                   "(repeat the option to pool several old files)")
    return p


def _fmt(df: pd.DataFrame) -> str:
    def num(x):
        if pd.isna(x):
            return "-"
        if isinstance(x, float) and not x.is_integer():
            return f"{x:.3f}"
        return f"{int(x)}"

    shown = df.copy()
    for c in shown.columns:
        if c.endswith("_ns") or c.endswith("count") or c.endswith("iterations"):
            shown[c] = shown[c].map(num)
        elif c.endswith("_ratio"):
            shown[c] = shown[c].map(lambda x: "-" if pd.isna(x) else f"{x:.3f}")
        elif c == "throughput_per_s":
            shown[c] = shown[c].map(lambda x: f"{x:,.0f}")
    return shown.to_string(index=False)


def _section(title: str, df: pd.DataFrame) -> None:
    print(f"\n== {title} ==")
    print(_fmt(df))


def _write_csv(df: pd.DataFrame, out: str, name: str, written: list[str]) -> None:
    path = os.path.join(out, name)
    df.to_csv(path, index=False)
    written.append(path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        res = load_files(args.results)
        old = load_files(args.compare) if args.compare else None
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    for path, kind, n in res.files:
        print(f"read {path}: {n} rows ({'fabric floor' if kind == FABRIC else 'raw results'})")

    table = percentile_table(res.raw)
    tput = throughput_table(res.raw)
    phase_tab, phases = phase_table(res.raw)
    median_rows, _ = median_row_table(res.raw)

    if not table.empty:
        _section("latency percentiles (ns, nearest rank)", table)
    if not tput.empty:
        _section("throughput (invocations/s, sum over ranks)", tput)
    if not phase_tab.empty:
        _section("cold-start phases (ns, median per phase)", phase_tab)
    if not median_rows.empty:
        _section("cold-start phases of the median row (ns, they add up to its latency)", median_rows)
    if not res.fabric.empty:
        _section("fabric floor (ns)", res.fabric.sort_values(list(schema.FABRIC_KEYS)))

    cmp_tab = cmp_fab = None
    if old is not None:
        old_table = percentile_table(old.raw)
        if not table.empty or not old_table.empty:
            cmp_tab = compare_latency(table, old_table)
            _section(f"compare with {', '.join(args.compare)} (ratio = new/old)", cmp_tab)
            print(f"geometric mean of ratios: p50 {geometric_mean(cmp_tab['p50_ratio']):.3f}, "
                  f"p99 {geometric_mean(cmp_tab['p99_ratio']):.3f}")
        if not res.fabric.empty or not old.fabric.empty:
            cmp_fab = compare_fabric(res.fabric, old.fabric)
            _section("compare fabric floor (ratio = new/old)", cmp_fab)

    if not args.out:
        print("\n(no --out DIR given: nothing written)")
        return 0

    written: list[str] = []
    try:
        os.makedirs(args.out, exist_ok=True)
        if not table.empty:
            _write_csv(table, args.out, "percentiles.csv", written)
        if not tput.empty:
            _write_csv(tput, args.out, "throughput.csv", written)
        if not phase_tab.empty:
            _write_csv(phase_tab, args.out, "cold_phases.csv", written)
        if not median_rows.empty:
            _write_csv(median_rows, args.out, "cold_median_row.csv", written)
        if not res.fabric.empty:
            _write_csv(res.fabric, args.out, "fabric_floor.csv", written)
        if cmp_tab is not None:
            _write_csv(cmp_tab, args.out, "compare.csv", written)
        if cmp_fab is not None:
            _write_csv(cmp_fab, args.out, "compare_fabric.csv", written)

        from .plots import write_all  # matplotlib is only imported when plotting

        plots = write_all(res.raw, table, tput, median_rows, phases, res.fabric, args.out)
    except OSError as e:
        print(f"error: cannot write to {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1

    print()
    for p in plots:
        if p.path:
            written.append(p.path)
        else:
            print(f"note: skipped {p.name}: {p.note}")
    print(f"wrote {len(written)} files to {os.path.abspath(args.out)}:")
    for w in written:
        print(f"  {w}")
    return 0
