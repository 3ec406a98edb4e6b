"""Throughput (three documented rules) and cold-start phase medians, computed independently."""

from __future__ import annotations

import pytest

import csvgen
from rfaas_analysis.load import load_files
from rfaas_analysis.phases import phase_table
from rfaas_analysis.throughput import throughput_table


def _rows(ws, per_rank, extra):
    rows = []
    for rank in range(ws):
        for rep in range(per_rank):
            rows.append({
                "benchmark": "scalable_benchmark", "mode": "throughput", "provider": "tcp",
                "payload_bytes": 64, "rank": rank, "world_size": ws, "node": "n", "worker": rank,
                "repetition": rep, **extra(rank, rep),
            })
    return rows


def _load(tmp_path, rows, columns):
    path = csvgen.write_csv(tmp_path / "t.csv", csvgen.RAW_COLUMNS + columns, rows)
    return load_files([str(path)]).raw


def test_duration_rule(tmp_path):
    # rank r ran for (r + 1) ms; 50 invocations each: 50/0.001 + 50/0.002 = 75,000 /s
    rows = _rows(2, 50, lambda rank, rep: {"latency_ns": 3000, "duration_ns": 1_000_000 * (rank + 1)})
    t = throughput_table(_load(tmp_path, rows, ["duration_ns"]))
    assert list(t["method"]) == ["duration"]
    assert t["ranks"].iloc[0] == 2 and t["invocations"].iloc[0] == 100
    assert t["throughput_per_s"].iloc[0] == pytest.approx(50 / 0.001 + 50 / 0.002)


def test_timestamp_rule(tmp_path):
    # completions every 10 us on each rank: (n-1)/span = 99 / 990 us = 100,000 /s per rank
    rows = _rows(3, 100, lambda rank, rep: {"latency_ns": 5000, "timestamp_ns": 7_000_000 * rank + 10_000 * rep})
    t = throughput_table(_load(tmp_path, rows, ["timestamp_ns"]))
    assert list(t["method"]) == ["timestamps"]
    assert t["throughput_per_s"].iloc[0] == pytest.approx(3 * 99 / 990e-6)


def test_littles_law_rule_with_and_without_in_flight(tmp_path):
    # mean latency 4 us, 8 in flight: 8 / 4e-6 = 2,000,000 /s per rank
    rows = _rows(2, 10, lambda rank, rep: {"latency_ns": 3000 if rep % 2 else 5000, "in_flight": 8})
    t = throughput_table(_load(tmp_path, rows, ["in_flight"]))
    assert list(t["method"]) == ["littles_law"]
    assert t["throughput_per_s"].iloc[0] == pytest.approx(2 * 8 / 4e-6)

    rows = _rows(1, 10, lambda rank, rep: {"latency_ns": 2000})
    (tmp_path / "t.csv").unlink()
    t = throughput_table(_load(tmp_path, rows, []))
    assert t["throughput_per_s"].iloc[0] == pytest.approx(1 / 2e-6)


def test_only_throughput_mode_counts(tmp_path):
    path = csvgen.warm_csv(tmp_path / "w.csv", reps=5)
    assert throughput_table(load_files([str(path)]).raw).empty


def test_cold_phase_medians(tmp_path):
    path = csvgen.cold_csv(tmp_path / "cold.csv", reps=21)
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    tab, phases = phase_table(load_files([str(path)]).raw)
    assert phases == csvgen.PHASES  # generic *_ns detection, file order kept
    assert len(tab) == 1 and tab["count"].iloc[0] == 21
    for c in phases + ["latency_ns"]:
        values = sorted(int(r[c]) for r in rows)
        assert tab[f"p50_{c}"].iloc[0] == values[10]  # nearest rank: ceil(0.5 * 21) = 11th


def test_phase_detection_ignores_non_phase_ns_columns(tmp_path):
    rows = _rows(1, 3, lambda rank, rep: {"latency_ns": 10, "duration_ns": 100, "timestamp_ns": rep})
    tab, phases = phase_table(_load(tmp_path, rows, ["duration_ns", "timestamp_ns"]))
    assert phases == [] and tab.empty
