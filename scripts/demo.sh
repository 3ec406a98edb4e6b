#!/usr/bin/env bash
# The main job (`make demo`, after the release build): the fabric floor, then a local cluster on
# shared memory (127.0.0.1), one real invocation through the CLI, the warm and cold benchmarks
# against it, scalable_benchmark and the Black-Scholes example under mpirun, the applications
# (thumbnails against local rayon, the ONNX classifier with its model loaded once), and the
# analysis report (table, CSV, PNG plots). Everything lands in results/demo-<time>/; the cluster is
# stopped whatever happens.
#
# Environment: REPETITIONS (warm benchmark calls per mode and size, default 20000),
# COLD_REPETITIONS (default 20), MPI_RANKS (default 2), MPI_REPETITIONS (scalable_benchmark
# calls per rank and size, default 5000), THUMBNAILS (generated photos, default 40) and
# THUMBNAIL_KB (their size, default 100), CLASSIFIER_CALLS (calls per classifier function,
# default 50), RESULTS (default results), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

R=target/release
RESULTS=${RESULTS:-results}
REPETITIONS=${REPETITIONS:-20000}
COLD_REPETITIONS=${COLD_REPETITIONS:-20}
MPI_RANKS=${MPI_RANKS:-2}
MPI_REPETITIONS=${MPI_REPETITIONS:-5000}
THUMBNAILS=${THUMBNAILS:-40}
THUMBNAIL_KB=${THUMBNAIL_KB:-100}
CLASSIFIER_CALLS=${CLASSIFIER_CALLS:-50}
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

# OpenMPI refuses root unless told; its default binding could put a rank on its own executor's
# core on one machine, hence --bind-to none (each rank pins itself off its workers' cores).
if [[ $(id -u) == 0 ]]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
MPIRUN=(mpirun --oversubscribe --bind-to none -n "$MPI_RANKS")

step "MPI: scalable_benchmark, $MPI_RANKS ranks sharing one lease, latency from every rank at once (one CSV)"
"${MPIRUN[@]}" "$R/scalable_benchmark" --cluster "$run/cluster.json" --library "$R/libfunctions.so" \
    --mode warm --hot-timeout-ms 0 --function empty --sizes 64,4096 --repetitions "$MPI_REPETITIONS" \
    --output "$out/scalable_benchmark.csv"

step "MPI: Black-Scholes, half of every rank's options offloaded, checked against a local run"
"${MPIRUN[@]}" "$R/examples/black_scholes_mpi" --cluster "$run/cluster.json" --library "$R/libfunctions.so"

step "thumbnailer: $THUMBNAILS generated ${THUMBNAIL_KB} KB photos, 2 rfaas workers (2 calls in flight each) against 2 local rayon threads"
"$R/examples/thumbnailer" --cluster "$run/cluster.json" --library "$R/libthumbnailer.so" \
    --input "$out/photos" --generate "$THUMBNAILS" --size-kb "$THUMBNAIL_KB" --output "$out/thumbnails" \
    --workers 2 --in-flight 2 --csv "$out/thumbnailer.csv"

step "classifier: a small ONNX model (jobs/classifier/tests/make_model.py) shipped as an asset, loaded once by init"
"$PYTHON" jobs/classifier/tests/make_model.py "$out/classifier"
"$R/examples/classifier" --cluster "$run/cluster.json" --library "$R/libclassifier.so" \
    --model "$out/classifier/model.onnx" --top-k 3 --bench "$CLASSIFIER_CALLS" \
    --csv "$out/classifier.csv" "$out/classifier"/image0.png "$out/classifier"/image1.png

"$R/rfaas" local-cluster stop --run-dir "$run"
trap - EXIT

step "invocation overhead over the fabric floor (64 B, p50, same run)"
fabric=$(awk -F, '$1=="shm" && $2==64 {print $4}' "$out/fabric_pingpong.csv")
hot=$(awk -F, '$2=="hot" && $4==64 {print $10}' "$out/warm_benchmark.csv" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "fabric round trip ${fabric} ns, hot invocation ${hot} ns: overhead $((hot - fabric)) ns"

step "report"
"$PYTHON" analysis/latency.py "$out/fabric_pingpong.csv" "$out/warm_benchmark.csv" \
    "$out/warm_idle_benchmark.csv" "$out/cold_benchmark.csv" "$out/scalable_benchmark.csv" \
    --out "$out/report"
echo
echo "results: $out (CSV, JSON metadata, report/ with tables and PNG plots)"
