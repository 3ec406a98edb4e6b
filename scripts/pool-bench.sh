#!/usr/bin/env bash
# Cold starts from the executor pool against fresh spawns, in one run: a local shm cluster with
# one core rented out, `cold_benchmark --modes cached` with pool_size = 1, then pool_size = 0
# (executors forked from the manager's zygote), then pool_size = 0 with executor_start = "exec"
# (each executor exec'd; its mode reads cached-fresh-exec). CONFIGS="1:fork 1:exec ..." picks
# others (pool_size:executor_start).
# Prints cold_benchmark's p50/p99 per mode and the median of each phase over the rows, and the
# phases of the median row (which add up to its latency), and with .venv the analysis plots of
# both (OUT_DIR/report). Release build; BUILD=0 skips it.
# Usage: scripts/pool-bench.sh [REPETITIONS] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-200}
OUT=${2:-$(mktemp -d /tmp/rfaas-pool-bench.XXXXXX)}
R=target/release
if [[ ${BUILD:-1} != 0 ]]; then
    cargo build --release -p rfaas --bin rfaas --bin rfaas-executor --bin cold_benchmark
    cargo build --release -p rfaas-functions --lib
fi
mkdir -p "$OUT"
# pool_size:executor_start of each run; a run with exec has "-exec" added to its mode column.
CONFIGS=${CONFIGS:-1:fork 0:fork 0:exec}
csvs=()
for config in $CONFIGS; do
    size=${config%%:*} start=${config##*:} name=pool$size-$start
    run="$OUT/run-$name"
    printf 'pool_size = %s\nexecutor_start = "%s"\n' "$size" "$start" > "$OUT/em-$name.toml"
    "$R/rfaas" local-cluster start --run-dir "$run" --provider shm --cores-per-node 1 \
        --manager-config "$OUT/em-$name.toml" --no-resource-manager >/dev/null
    trap '"$R/rfaas" local-cluster stop --run-dir "$run" >/dev/null' EXIT
    echo "== pool_size = $size, executor_start = $start"
    "$R/cold_benchmark" --cluster "$run/cluster.json" --library "$R/libfunctions.so" \
        --function empty --modes cached --sizes 64 --repetitions "$REPS" \
        --output "$OUT/cold-$name.csv"
    "$R/rfaas" local-cluster stop --run-dir "$run" >/dev/null
    trap - EXIT
    if [[ $start == exec ]]; then
        sed -i -E '2,$ s/^(cold_benchmark,[a-z]+-(pool|fresh)),/\1-exec,/' "$OUT/cold-$name.csv"
    fi
    csvs+=("$OUT/cold-$name.csv")
done
# Per mode: median of each phase, and the phases of the median row (they add up to it).
python3 - "${csvs[@]}" <<'PY'
import csv, statistics, sys
rows = [r for f in sys.argv[1:] for r in csv.DictReader(open(f))]
phases = [c for c in rows[0] if c.endswith("_ns") and c != "latency_ns"]
for mode in sorted({r["mode"] for r in rows}):
    rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: int(r["latency_ns"]))
    lat = [int(r["latency_ns"]) for r in rs]
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    med = rs[len(rs) // 2]
    print(f"{mode}: n={len(rs)} p50={statistics.median(lat)/1e3:.0f}us p99={p99/1e3:.0f}us")
    print("  median per phase:  " + ", ".join(f"{p[:-3]} {statistics.median(int(r[p]) for r in rs)/1e3:.0f}us" for p in phases))
    print(f"  median row ({int(med['latency_ns'])/1e3:.0f}us): " + ", ".join(f"{p[:-3]} {int(med[p])/1e3:.0f}us" for p in phases))
PY
# The report's plots: the phases of each mode's median row, and each phase's distribution.
if [[ -x .venv/bin/python ]]; then
    .venv/bin/python analysis/latency.py "${csvs[@]}" --out "$OUT/report" \
        | grep -E 'cold_start|cold_median' || true
fi
echo "CSVs in $OUT"
