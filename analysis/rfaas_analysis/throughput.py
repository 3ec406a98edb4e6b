"""Throughput (invocations per second) of ``mode=throughput`` rows.

Rows are grouped by (benchmark, provider, payload_bytes, world_size).  Within a
group each rank's throughput is computed on its own and the group's throughput
is the **sum over ranks** (ranks run at the same time; their clocks need not
agree).  For one rank with n rows, the first rule whose columns are filled on
every row of the group is used:

1. ``duration``: a ``duration_ns`` column (wall time of the rank's whole
   throughput phase for that payload size, repeated on its rows):
   ``n / (max(duration_ns) / 1e9)``.
2. ``timestamps``: a ``timestamp_ns`` column (when each invocation completed,
   on the rank's own clock): ``(n - 1) / ((max - min) / 1e9)``; needs n >= 2.
3. ``littles_law``: otherwise, Little's law with K invocations in flight
   (``in_flight`` column, mean over the rank's rows; 1 when the column is
   absent): ``K / (mean(latency_ns) / 1e9)``.  This assumes the pipeline was
   kept full; it is an estimate, not a measurement.

The method used is named in the table's ``method`` column.
"""

from __future__ import annotations

import pandas as pd

THROUGHPUT_MODE = "throughput"
KEYS = ["benchmark", "provider", "payload_bytes", "world_size"]
COLUMNS = KEYS + ["ranks", "invocations", "method", "throughput_per_s"]


def _filled(g: pd.DataFrame, col: str) -> bool:
    return col in g.columns and g[col].notna().all()


def choose_method(g: pd.DataFrame) -> str:
    if _filled(g, "duration_ns") and (g["duration_ns"] > 0).all():
        return "duration"
    if _filled(g, "timestamp_ns"):
        spans = g.groupby("rank")["timestamp_ns"].agg(lambda s: s.max() - s.min())
        counts = g.groupby("rank").size()
        if (counts >= 2).all() and (spans > 0).all():
            return "timestamps"
    return "littles_law"


def rank_throughput(r: pd.DataFrame, method: str) -> float:
    n = len(r)
    if method == "duration":
        return n / (float(r["duration_ns"].max()) / 1e9)
    if method == "timestamps":
        return (n - 1) / (float(r["timestamp_ns"].max() - r["timestamp_ns"].min()) / 1e9)
    k = float(r["in_flight"].mean()) if _filled(r, "in_flight") else 1.0
    mean_latency = float(r["latency_ns"].mean())
    return k / (mean_latency / 1e9) if mean_latency > 0 else float("inf")


def throughput_table(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per group of ``mode == "throughput"`` rows; empty if there are none."""
    if raw.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = raw[raw["mode"] == THROUGHPUT_MODE]
    out = []
    for key, g in rows.groupby(KEYS, sort=True):
        method = choose_method(g)
        total = sum(rank_throughput(r, method) for _, r in g.groupby("rank", dropna=False))
        out.append(
            dict(zip(KEYS, key))
            | {"ranks": int(g["rank"].nunique(dropna=False)), "invocations": len(g), "method": method,
               "throughput_per_s": total}
        )
    return pd.DataFrame(out, columns=COLUMNS)
