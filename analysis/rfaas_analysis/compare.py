"""Comparing two runs: ratios new/old of p50 and p99 per group.

``ratio = new / old``: below 1 the new run is faster, above 1 it is slower.
Groups are matched on their key columns (the percentile table's
benchmark, mode, provider, payload_bytes, world_size; or provider and
payload_bytes for fabric floor tables).  A group found in only one run is
listed with ``only in new`` / ``only in old`` and no ratio.  An old value of 0
gives no ratio (empty).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import schema

STATS = ("p50_ns", "p99_ns")


def _ratio(new: pd.Series, old: pd.Series) -> pd.Series:
    new = new.astype("float64")
    old = old.astype("float64")
    return (new / old.where(old > 0)).astype("float64")


def _integers(s: pd.Series) -> pd.Series:
    """Nullable integers when every value is a whole number (so the CSV shows 1187, not 1187.0)."""
    v = s.astype("float64")
    return v.astype("Int64") if (v.dropna() == v.dropna().round()).all() else v


def compare_tables(new: pd.DataFrame, old: pd.DataFrame, keys: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Outer-join two aggregate tables on ``keys`` and add ``<stat>_ratio`` columns."""
    keys = list(keys)
    count = "count" if "count" in new.columns else "iterations"
    cols = keys + [count] + list(STATS)
    old, new = old[cols], new[cols]
    # An empty side (e.g. a run with no rows of this kind) has untyped columns: align them.
    if old.empty and not new.empty:
        old = old.astype(new.dtypes.to_dict())
    elif new.empty and not old.empty:
        new = new.astype(old.dtypes.to_dict())
    merged = pd.merge(
        old, new, on=keys, how="outer", suffixes=("_old", "_new"), indicator=True, sort=True
    )
    out = merged[keys].copy()
    out["status"] = merged["_merge"].map({"both": "both", "left_only": "only in old", "right_only": "only in new"})
    out[f"old_{count}"] = _integers(merged[f"{count}_old"])
    out[f"new_{count}"] = _integers(merged[f"{count}_new"])
    for s in STATS:
        out[f"old_{s}"] = _integers(merged[f"{s}_old"])
        out[f"new_{s}"] = _integers(merged[f"{s}_new"])
        out[f"{s.removesuffix('_ns')}_ratio"] = _ratio(merged[f"{s}_new"], merged[f"{s}_old"])
    return out.reset_index(drop=True)


def compare_latency(new_table: pd.DataFrame, old_table: pd.DataFrame) -> pd.DataFrame:
    return compare_tables(new_table, old_table, schema.GROUP_KEYS)


def compare_fabric(new_fabric: pd.DataFrame, old_fabric: pd.DataFrame) -> pd.DataFrame:
    return compare_tables(new_fabric, old_fabric, schema.FABRIC_KEYS)


def geometric_mean(ratios: pd.Series) -> float:
    """Geometric mean of the finite, positive ratios (NaN if there are none)."""
    r = ratios.dropna()
    r = r[(r > 0) & np.isfinite(r)]
    return float(np.exp(np.log(r).mean())) if len(r) else float("nan")
