"""Writers of small, deterministic benchmark CSVs for the tests (standard library only)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

RAW_COLUMNS = [
    "benchmark", "mode", "provider", "payload_bytes", "rank", "world_size",
    "node", "worker", "repetition", "latency_ns",
]
PHASES = ["allocation_ns", "spawn_ns", "code_load_ns", "connect_ns", "first_invocation_ns"]
FABRIC_COLUMNS = ["provider", "payload_bytes", "iterations", "p50_ns", "p99_ns", "p999_ns"]


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def raw_rows(benchmark, mode, provider, payloads, reps, seed, world_size=1, base=1000, spread=400, extra=None):
    """``reps`` rows per payload and rank; latency grows with payload; values random but seeded."""
    rnd = random.Random(seed)
    rows = []
    for payload in payloads:
        for rank in range(world_size):
            for rep in range(reps):
                r = {
                    "benchmark": benchmark, "mode": mode, "provider": provider,
                    "payload_bytes": payload, "rank": rank, "world_size": world_size,
                    "node": "node0", "worker": rank, "repetition": rep,
                    "latency_ns": base + payload // 8 + rnd.randrange(spread),
                }
                if extra:
                    r.update(extra(rank, rep, r))
                rows.append(r)
    return rows


def warm_csv(path: Path, seed: int = 1, reps: int = 200, base_hot: int = 900, base_warm: int = 5000) -> Path:
    rows = raw_rows("warm_benchmark", "hot", "shm", [0, 64, 4096], reps, seed, base=base_hot)
    rows += raw_rows("warm_benchmark", "warm", "shm", [0, 64, 4096], reps, seed + 1, base=base_warm, spread=3000)
    return write_csv(path, RAW_COLUMNS, rows)


def cold_csv(path: Path, seed: int = 3, reps: int = 20) -> Path:
    rnd = random.Random(seed)

    def phases(rank, rep, r):
        vals = {
            "allocation_ns": 200_000 + rnd.randrange(50_000),
            "spawn_ns": 2_000_000 + rnd.randrange(500_000),
            "code_load_ns": 300_000 + rnd.randrange(100_000),
            "connect_ns": 100_000 + rnd.randrange(20_000),
            "first_invocation_ns": 5_000 + rnd.randrange(1_000),
        }
        vals["latency_ns"] = sum(vals.values())
        return vals

    rows = raw_rows("cold_benchmark", "cold", "shm", [64], reps, seed, extra=phases)
    return write_csv(path, RAW_COLUMNS + PHASES, rows)


def scalable_csv(path: Path, seed: int = 5, reps: int = 30, with_duration: bool = True) -> Path:
    rows = []
    for ws in (1, 2, 4):
        rows += raw_rows("scalable_benchmark", "warm", "tcp", [64], reps, seed + ws, world_size=ws,
                         base=1500 * ws)
        extra = (lambda rank, rep, r: {"in_flight": 4, "duration_ns": 1_000_000 * ws}) if with_duration else (
            lambda rank, rep, r: {"in_flight": 4})
        rows += raw_rows("scalable_benchmark", "throughput", "tcp", [64], reps, seed + 10 + ws, world_size=ws,
                         base=4000, extra=extra)
    return write_csv(path, RAW_COLUMNS + ["in_flight", "duration_ns"], rows)


def fabric_csv(path: Path, scale: float = 1.0) -> Path:
    rows = [
        {"provider": p, "payload_bytes": b, "iterations": 10000,
         "p50_ns": int((base + b // 16) * scale), "p99_ns": int((base * 2 + b // 8) * scale),
         "p999_ns": int((base * 4 + b // 4) * scale)}
        for p, base in (("shm", 300), ("tcp", 9000))
        for b in (0, 64, 4096)
    ]
    return write_csv(path, FABRIC_COLUMNS, rows)
