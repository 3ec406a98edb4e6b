"""Percentiles by the nearest-rank method, and the per-group percentile table.

Definition (the one ``--help`` and the README state):

    For n samples sorted ascending, x[1] <= ... <= x[n], the p-th percentile
    (0 < p <= 100) is x[k] with k = ceil(p / 100 * n)   (1-based rank).

So p50 of 1..100 is 50, p99.9 of 1..1000 is 999, and p99.9 of 1..100 is 100.
The result is always a measured value (no interpolation), it is the smallest
sample with at least p % of the samples at or below it -- the same meaning as an
HDR histogram's ``value_at_percentile``.  It is numpy's ``method="inverted_cdf"``
except that ``k`` is computed with exact rational arithmetic, so 99.9 % of 1000
samples is exactly rank 999 (numpy's floating point gives 999.0000000000001 and
takes rank 1000).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import numpy as np
import pandas as pd

from . import schema


def nearest_rank_index(p: str | int | Fraction, n: int) -> int:
    """0-based index of the p-th percentile in a sorted sample of size ``n``."""
    if n <= 0:
        raise ValueError("percentile of an empty sample")
    q = Fraction(str(p)) if not isinstance(p, Fraction) else p
    if not (0 < q <= 100):
        raise ValueError(f"percentile {p} outside (0, 100]")
    num = q.numerator * n
    den = q.denominator * 100
    k = -(-num // den)  # ceil(q * n / 100), exact
    return max(k, 1) - 1


def percentile(sorted_values: Sequence, p: str | int | Fraction):
    """The p-th nearest-rank percentile of an ascending sequence."""
    return sorted_values[nearest_rank_index(p, len(sorted_values))]


def summarize(values) -> dict:
    """count, min, p50, p90, p99, p99.9 and max of a sample (any order)."""
    v = np.sort(np.asarray(values))
    out = {"count": int(v.size), "min_ns": v[0].item()}
    for name, p in schema.PERCENTILES:
        out[name] = percentile(v, p).item()
    out["max_ns"] = v[-1].item()
    return out


TABLE_COLUMNS = list(schema.GROUP_KEYS) + ["count", "min_ns"] + [n for n, _ in schema.PERCENTILES] + ["max_ns"]


def percentile_table(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, mode, provider, payload_bytes, world_size) of ``latency_ns``.

    Rows from all ranks, workers, repetitions and input files are pooled before
    the percentiles are taken (percentiles are never averaged).
    """
    if raw.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    rows = []
    for key, g in raw.groupby(list(schema.GROUP_KEYS), sort=True):
        rows.append(dict(zip(schema.GROUP_KEYS, key)) | summarize(g["latency_ns"].to_numpy()))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
