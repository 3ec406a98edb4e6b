"""The phases of the median row (they add up to it), and the two cold-start phase plots, for
pool against fresh rows as cold_benchmark writes them."""

from __future__ import annotations

import csv
import random

import csvgen
from conftest import assert_valid_png, run_script
from rfaas_analysis.load import load_files
from rfaas_analysis.phases import median_row_table

COLD_PHASES = ["allocation_ns", "spawn_ns", "code_load_ns", "connect_ns", "first_invocation_ns", "client_ns"]


def _cold_rows(mode, reps, seed, spawn_base):
    rnd = random.Random(seed)
    rows = []
    for rep in range(reps):
        phases = {
            "allocation_ns": 200_000 + rnd.randrange(100_000),
            "spawn_ns": spawn_base + rnd.randrange(2_000_000),
            "code_load_ns": 80_000 + rnd.randrange(20_000),
            "connect_ns": 300_000 + rnd.randrange(300_000),
            "first_invocation_ns": 20_000 + rnd.randrange(2_000_000),
            "client_ns": rnd.randrange(10_000),
        }
        rows.append({
            "benchmark": "cold_benchmark", "mode": mode, "provider": "shm", "payload_bytes": 64,
            "rank": 0, "world_size": 1, "node": "n", "worker": 0, "repetition": rep,
            "latency_ns": sum(phases.values()), **phases,
        })
    return rows


def _write(path, rows):
    return csvgen.write_csv(path, csvgen.RAW_COLUMNS + COLD_PHASES, rows)


def test_median_row_is_one_cold_start_whose_phases_add_up(tmp_path):
    rows = _cold_rows("cached-pool", 31, 1, 500_000) + _cold_rows("cached-fresh", 30, 2, 2_000_000)
    path = _write(tmp_path / "cold.csv", rows)
    tab, phases = median_row_table(load_files([str(path)]).raw)
    assert phases == COLD_PHASES
    assert list(tab["mode"]) == ["cached-fresh", "cached-pool"]
    for mode, n in (("cached-pool", 31), ("cached-fresh", 30)):
        mine = [r for r in rows if r["mode"] == mode]
        # nearest rank: the ceil(n/2)-th smallest latency
        expected = sorted(mine, key=lambda r: r["latency_ns"])[(n + 1) // 2 - 1]
        got = tab[tab["mode"] == mode].iloc[0]
        assert got["count"] == n
        assert got["repetition"] == expected["repetition"]
        assert got["latency_ns"] == expected["latency_ns"]
        for c in COLD_PHASES:
            assert got[c] == expected[c]
        assert sum(int(got[c]) for c in COLD_PHASES) == got["latency_ns"]
        assert got["other_ns"] == 0


def test_time_outside_the_phases_is_shown_not_hidden(tmp_path):
    rows = _cold_rows("cold", 5, 3, 1_000_000)
    for r in rows:
        r["latency_ns"] += 7_000 + r["repetition"]  # phases that do not cover the whole row
    path = _write(tmp_path / "cold.csv", rows)
    tab, _ = median_row_table(load_files([str(path)]).raw)
    expected = sorted(rows, key=lambda r: r["latency_ns"])[2]
    assert tab["other_ns"].iloc[0] == 7_000 + expected["repetition"]


def test_equal_latencies_take_the_first_row_in_the_file(tmp_path):
    rows = _cold_rows("cold", 4, 4, 1_000_000)
    for r in rows:
        r.update({c: 10 for c in COLD_PHASES})
        r["latency_ns"] = 60
    rows[0]["client_ns"], rows[0]["latency_ns"] = 1, 51  # the smallest: the 2nd of 4 is the median
    path = _write(tmp_path / "cold.csv", rows)
    tab, _ = median_row_table(load_files([str(path)]).raw)
    assert tab["repetition"].iloc[0] == 1


def test_report_plots_pool_against_fresh(tmp_path):
    rows = _cold_rows("cached-pool", 40, 5, 500_000) + _cold_rows("cached-fresh", 40, 6, 2_000_000)
    path = _write(tmp_path / "cold.csv", rows)
    out = tmp_path / "report"
    r = run_script(path, "--out", out)
    assert r.returncode == 0, r.stderr
    for name in ("cold_start_phases.png", "cold_start_phase_distribution.png"):
        assert_valid_png(out / name)
        assert str(out / name) in r.stdout
    assert "phases of the median row" in r.stdout
    with open(out / "cold_median_row.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["mode"] for t in table] == ["cached-fresh", "cached-pool"]
    for t in table:
        assert sum(int(t[c]) for c in COLD_PHASES) + int(t["other_ns"]) == int(t["latency_ns"])
