"""Cold-start phases: the median (nearest-rank p50) of each phase column per group.

Phase columns are every ``*_ns`` column other than ``latency_ns`` and the
non-phase names in ``schema.NOT_PHASES`` (``duration_ns``, ``timestamp_ns``,
...), in the order the file has them.  Only rows with at least one phase value
count.  Note that medians of the phases need not add up to the median of
``latency_ns``; the table shows both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import schema
from .percentiles import percentile


def phase_table(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Return (table, phase column names).  The table is empty when no row has phases."""
    phases = schema.phase_columns(raw.columns)
    keys = list(schema.GROUP_KEYS)
    columns = keys + ["count"] + [f"p50_{c}" for c in phases] + ["p50_latency_ns"]
    if raw.empty or not phases:
        return pd.DataFrame(columns=columns), phases
    rows = raw[raw[phases].notna().any(axis=1)]
    out = []
    for key, g in rows.groupby(keys, sort=True):
        rec = dict(zip(keys, key)) | {"count": len(g)}
        for c in phases:
            v = np.sort(g[c].dropna().to_numpy())
            rec[f"p50_{c}"] = percentile(v, 50).item() if v.size else np.nan
        rec["p50_latency_ns"] = percentile(np.sort(g["latency_ns"].to_numpy()), 50).item()
        out.append(rec)
    return pd.DataFrame(out, columns=columns), phases


def median_row_table(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Return (table, phase column names): per group, the phases of its median row.

    The median row is the row whose ``latency_ns`` is the group's nearest-rank p50 (rows of
    equal latency: the first in file order).  Unlike the per-phase medians of ``phase_table``,
    its phases are one cold start's, so they add up to its total; ``other_ns`` is what its
    phase columns leave of ``latency_ns`` (0 when the file's phases add up, as
    ``cold_benchmark``'s do).  Only rows with every phase value count.
    """
    phases = schema.phase_columns(raw.columns)
    keys = list(schema.GROUP_KEYS)
    columns = keys + ["count", "repetition"] + phases + ["other_ns", "latency_ns"]
    if raw.empty or not phases:
        return pd.DataFrame(columns=columns), phases
    rows = raw[raw[phases].notna().all(axis=1)]
    out = []
    for key, g in rows.groupby(keys, sort=True):
        ordered = g.sort_values("latency_ns", kind="stable")
        k = -(-len(ordered) // 2)  # nearest rank: ceil(n / 2), 1-based
        row = ordered.iloc[k - 1]
        rec = dict(zip(keys, key)) | {"count": len(g), "repetition": row.get("repetition")}
        for c in phases:
            rec[c] = int(row[c])
        rec["latency_ns"] = int(row["latency_ns"])
        rec["other_ns"] = max(0, rec["latency_ns"] - sum(rec[c] for c in phases))
        out.append(rec)
    return pd.DataFrame(out, columns=columns), phases
