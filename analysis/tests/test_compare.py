"""--compare: new/old ratios of p50 and p99 per group."""

from __future__ import annotations

import csv
import math

import pytest

import csvgen
from conftest import run_script


def _fixed(path, benchmark_rows):
    """benchmark_rows: {(mode, payload): [latencies]} -> a warm_benchmark CSV."""
    rows = []
    for (mode, payload), lats in benchmark_rows.items():
        for i, lat in enumerate(lats):
            rows.append({"benchmark": "warm_benchmark", "mode": mode, "provider": "shm", "payload_bytes": payload,
                         "rank": 0, "world_size": 1, "node": "n", "worker": 0, "repetition": i, "latency_ns": lat})
    return csvgen.write_csv(path, csvgen.RAW_COLUMNS, rows)


def test_compare_ratios_cli(tmp_path):
    # 100 values 1..100 scaled: p50 = 50*s, p99 = 99*s (nearest rank)
    old = _fixed(tmp_path / "old.csv", {("hot", 64): [10 * v for v in range(1, 101)],
                                         ("warm", 64): [100 * v for v in range(1, 101)],
                                         ("hot", 0): [1, 2, 3]})
    new = _fixed(tmp_path / "new.csv", {("hot", 64): [8 * v for v in range(1, 101)],
                                         ("warm", 64): [150 * v for v in range(1, 101)],
                                         ("hot", 4096): [5, 6, 7]})
    out = tmp_path / "out"
    r = run_script(new, "--compare", old, "--out", out)
    assert r.returncode == 0, r.stderr
    with open(out / "compare.csv", newline="") as f:
        rows = {(x["mode"], int(x["payload_bytes"])): x for x in csv.DictReader(f)}
    hot = rows[("hot", 64)]
    assert (int(hot["old_p50_ns"]), int(hot["new_p50_ns"])) == (500, 400)
    assert float(hot["p50_ratio"]) == pytest.approx(400 / 500)
    assert float(hot["p99_ratio"]) == pytest.approx(792 / 990)
    warm = rows[("warm", 64)]
    assert float(warm["p50_ratio"]) == pytest.approx(1.5)
    assert float(warm["p99_ratio"]) == pytest.approx(1.5)
    assert rows[("hot", 0)]["status"] == "only in old" and rows[("hot", 0)]["p50_ratio"] == ""
    assert rows[("hot", 4096)]["status"] == "only in new" and rows[("hot", 4096)]["p50_ratio"] == ""
    assert hot["status"] == "both"
    # printed too: the ratios and their geometric mean
    assert "0.800" in r.stdout and "1.500" in r.stdout
    gm50 = math.sqrt(0.8 * 1.5)
    assert f"p50 {gm50:.3f}" in r.stdout


def test_compare_fabric_floor_in_process(tmp_path):
    from rfaas_analysis.compare import compare_fabric
    from rfaas_analysis.load import load_files

    new = load_files([str(csvgen.fabric_csv(tmp_path / "new.csv"))]).fabric
    old = load_files([str(csvgen.fabric_csv(tmp_path / "old.csv", scale=2.0))]).fabric
    cmp = compare_fabric(new, old)
    assert len(cmp) == 6 and set(cmp["status"]) == {"both"}
    for r in cmp.to_dict("records"):
        assert r["p50_ratio"] == pytest.approx(r["new_p50_ns"] / r["old_p50_ns"])
        assert r["p50_ratio"] == pytest.approx(0.5, rel=0.01)
