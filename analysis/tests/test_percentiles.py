"""Percentiles checked against an independent pure-Python nearest-rank computation."""

from __future__ import annotations

import csv
import random
from collections import defaultdict

import numpy as np
import pytest

import csvgen
from rfaas_analysis.load import load_files
from rfaas_analysis.percentiles import nearest_rank_index, percentile, percentile_table, summarize

# The percentiles in per-mille, so the reference below uses integers only.
PER_MILLE = {"p50_ns": 500, "p90_ns": 900, "p99_ns": 990, "p999_ns": 999}


def reference(values: list[int], per_mille: int) -> int:
    """Nearest rank, written independently: sort, take element ceil(pm/1000 * n) (1-based)."""
    s = sorted(values)
    rank = (per_mille * len(s) + 999) // 1000
    return s[max(rank, 1) - 1]


@pytest.mark.parametrize(
    "values,p,expected",
    [
        (list(range(1, 101)), "50", 50),
        (list(range(1, 101)), "90", 90),
        (list(range(1, 101)), "99", 99),
        (list(range(1, 101)), "99.9", 100),
        (list(range(1, 1001)), "99.9", 999),  # exact arithmetic: 0.999 * 1000 is rank 999, not 1000
        (list(range(1, 1001)), "50", 500),
        ([7], "50", 7),
        ([7], "99.9", 7),
        ([1, 2], "50", 1),
        ([1, 2, 3], "50", 2),
        ([10, 20, 30, 40], "75", 30),
        ([10, 20, 30, 40], "75.1", 40),
        ([5, 1, 4, 2, 3], "100", 5),
    ],
)
def test_known_values(values, p, expected):
    assert percentile(sorted(values), p) == expected


def test_index_bounds_and_bad_input():
    assert nearest_rank_index("0.001", 10) == 0
    assert nearest_rank_index(100, 10) == 9
    with pytest.raises(ValueError):
        nearest_rank_index(50, 0)
    with pytest.raises(ValueError):
        nearest_rank_index(0, 10)
    with pytest.raises(ValueError):
        nearest_rank_index("100.1", 10)


def test_matches_reference_and_numpy_inverted_cdf_on_random_samples():
    rnd = random.Random(42)
    for n in list(range(1, 60)) + [99, 100, 101, 999, 1000, 1001, 4321]:
        values = [rnd.randrange(10_000_000) for _ in range(n)]
        got = summarize(values)
        assert got["count"] == n
        assert got["min_ns"] == min(values)
        assert got["max_ns"] == max(values)
        for col, pm in PER_MILLE.items():
            assert got[col] == reference(values, pm), (n, col)
            if (pm * n) % 1000:
                # numpy agrees except where p*n/100 is a whole number, where float rounding
                # (e.g. 0.999 * 1000 = 999.0000000000001) can move it one rank up.
                assert got[col] == np.percentile(values, pm / 10, method="inverted_cdf"), (n, col)


def test_table_from_csv_matches_independent_grouping(tmp_path):
    """Load generated CSVs through the real loader and check every cell of the table."""
    warm = csvgen.warm_csv(tmp_path / "warm.csv", reps=137)
    scal = csvgen.scalable_csv(tmp_path / "scal.csv", reps=41)

    expected = defaultdict(list)
    for path in (warm, scal):
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                key = (r["benchmark"], r["mode"], r["provider"], int(r["payload_bytes"]), int(r["world_size"]))
                expected[key].append(int(r["latency_ns"]))

    table = percentile_table(load_files([str(warm), str(scal)]).raw)
    assert len(table) == len(expected)
    seen = set()
    for row in table.to_dict("records"):
        key = (row["benchmark"], row["mode"], row["provider"], row["payload_bytes"], row["world_size"])
        values = expected[key]
        assert row["count"] == len(values)
        assert row["min_ns"] == min(values)
        assert row["max_ns"] == max(values)
        for col, pm in PER_MILLE.items():
            assert row[col] == reference(values, pm), (key, col)
        seen.add(key)
    assert seen == set(expected)
    # scalable_benchmark pools all ranks: world_size 4 has 4 x 41 rows for the one payload
    assert expected[("scalable_benchmark", "warm", "tcp", 64, 4)] and len(
        expected[("scalable_benchmark", "warm", "tcp", 64, 4)]) == 4 * 41


def test_same_group_in_two_files_is_pooled(tmp_path):
    a = csvgen.write_csv(tmp_path / "a.csv", csvgen.RAW_COLUMNS,
                         csvgen.raw_rows("warm_benchmark", "hot", "shm", [64], 10, 1, base=100, spread=10))
    b = csvgen.write_csv(tmp_path / "b.csv", csvgen.RAW_COLUMNS,
                         csvgen.raw_rows("warm_benchmark", "hot", "shm", [64], 10, 2, base=900, spread=10))
    table = percentile_table(load_files([str(a), str(b)]).raw)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["count"] == 20
    # 20 values: 10 around 108..117, 10 around 908..917; the p50 (rank 10) is the largest of the low ones
    assert 108 <= row["p50_ns"] < 118 and 908 <= row["p90_ns"] < 918
