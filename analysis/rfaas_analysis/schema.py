"""Column names of the CSVs the benchmarks write (shared/DESIGN.md section 9).

Raw result rows (warm_benchmark, cold_benchmark, parallel_invocations,
scalable_benchmark) have one row per measurement, integer nanoseconds.
The fabric floor benchmark writes rows that are already aggregated.
"""

from __future__ import annotations

from typing import Iterable

#: Columns every raw results CSV must have (order as the benchmarks write them).
RAW_REQUIRED = (
    "benchmark",
    "mode",
    "provider",
    "payload_bytes",
    "rank",
    "world_size",
    "node",
    "worker",
    "repetition",
    "latency_ns",
)

#: Required raw columns that must hold a value on every row.
RAW_NONEMPTY = ("benchmark", "mode", "provider", "payload_bytes", "world_size", "latency_ns")

#: Required raw columns that hold integers (may be empty only if not in RAW_NONEMPTY).
RAW_INTEGER = ("payload_bytes", "rank", "world_size", "repetition", "latency_ns")

#: Optional numeric columns used for throughput (see throughput.py).
OPTIONAL_NUMERIC = ("in_flight", "duration_ns", "timestamp_ns")

#: ``*_ns`` columns that are *not* cold-start phases.
NOT_PHASES = frozenset(
    {"latency_ns", "duration_ns", "timestamp_ns", "start_ns", "end_ns", "p50_ns", "p99_ns", "p999_ns"}
)

#: A CSV with exactly these columns (in any order) is a fabric floor CSV.
FABRIC_COLUMNS = ("provider", "payload_bytes", "iterations", "p50_ns", "p99_ns", "p999_ns")

#: One line of the percentile table per distinct value of these columns.
GROUP_KEYS = ("benchmark", "mode", "provider", "payload_bytes", "world_size")

#: Key of the fabric floor table.
FABRIC_KEYS = ("provider", "payload_bytes")

#: The percentiles reported, as (column name, p in percent).
PERCENTILES = (("p50_ns", "50"), ("p90_ns", "90"), ("p99_ns", "99"), ("p999_ns", "99.9"))

#: Every column name the tool knows, for telling "not a results CSV" from "missing a column".
KNOWN_COLUMNS = frozenset(RAW_REQUIRED) | frozenset(FABRIC_COLUMNS) | frozenset(OPTIONAL_NUMERIC)


def phase_columns(columns: Iterable[str]) -> list[str]:
    """Cold-start phase columns: every ``*_ns`` column except those in ``NOT_PHASES``.

    Order is kept as in the input, so stacked plots follow the order in which
    the benchmark wrote the phases (allocation, spawn, code load, connect, first
    invocation).
    """
    return [c for c in columns if c.endswith("_ns") and c not in NOT_PHASES]
