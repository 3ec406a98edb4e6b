#!/usr/bin/env bash
# The main job (`make demo`, after the release build): the fabric floor, then a local cluster on
# shared memory (127.0.0.1), one real invocation through the CLI, the warm and cold benchmarks
# against it, and the analysis report (table, CSV, PNG plots). Everything lands in
# results/demo-<time>/; the cluster is stopped whatever happens.
#
# Environment: REPETITIONS (warm benchmark calls per mode and size, default 20000),
# COLD_REPETITIONS (default 20), RESULTS (default results), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

R=target/release
RESULTS=${RESULTS:-results}
REPETITIONS=${REPETITIONS:-20000}
COLD_REPETITIONS=${COLD_REPETITIONS:-20}
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python3
out="$RESULTS/demo-$(date +%Y%m%d-%H%M%S)"
run="$out/cluster"
mkdir -p "$out"
step() { printf '\n==> %s\n' "$*"; }

step "fabric floor: one write-with-immediate each way between two pinned processes (ns)"
"$R/fabric_pingpong" --provider shm-raw,shm --sizes 64,4096 --iterations 20000 --max-time-per-size 2 \
    > "$out/fabric_pingpong.csv" 2> "$out/fabric_pingpong.summary.txt"
column -s, -t < "$out/fabric_pingpong.csv"

step "local cluster on shm (run directory $run)"
"$R/rfaas" local-cluster start --run-dir "$run" --provider shm
trap '"$R/rfaas" local-cluster stop --run-dir "$run" || true' EXIT
"$R/rfaas" status --cluster "$run/cluster.json"

step "one invocation through the CLI: echo"
printf 'hello from rfaas' | "$R/rfaas" invoke --cluster "$run/cluster.json" \
    --library "$R/libfunctions.so" --function echo --input -
echo

step "warm_benchmark: function 'empty', hot (busy-polling executor) and warm (sleeping executor)"
"$R/warm_benchmark" --cluster "$run/cluster.json" --library "$R/libfunctions.so" --function empty \
    --sizes 64,4096 --repetitions "$REPETITIONS" --output "$out/warm_benchmark.csv"

step "warm_benchmark with 200 us between calls: a warm executor is asleep when each call comes"
"$R/warm_benchmark" --cluster "$run/cluster.json" --library "$R/libfunctions.so" --function empty \
    --modes hot,warm --interval-us 200 --sizes 64 --repetitions 2000 --output "$out/warm_idle_benchmark.csv"

step "cold_benchmark: a fresh executor process per call, library cached and not"
"$R/cold_benchmark" --cluster "$run/cluster.json" --library "$R/libfunctions.so" --function empty \
    --sizes 64 --repetitions "$COLD_REPETITIONS" --output "$out/cold_benchmark.csv"

"$R/rfaas" local-cluster stop --run-dir "$run"
trap - EXIT

step "invocation overhead over the fabric floor (64 B, p50, same run)"
fabric=$(awk -F, '$1=="shm" && $2==64 {print $4}' "$out/fabric_pingpong.csv")
hot=$(awk -F, '$2=="hot" && $4==64 {print $10}' "$out/warm_benchmark.csv" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "fabric round trip ${fabric} ns, hot invocation ${hot} ns: overhead $((hot - fabric)) ns"

step "report"
"$PYTHON" analysis/latency.py "$out/fabric_pingpong.csv" "$out/warm_benchmark.csv" \
    "$out/warm_idle_benchmark.csv" "$out/cold_benchmark.csv" \
    --out "$out/report"
echo
echo "results: $out (CSV, JSON metadata, report/ with tables and PNG plots)"
