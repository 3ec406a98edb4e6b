#!/usr/bin/env bash
# The Python targets of issue 11, on a fresh local cluster, in one run: warm invocations (64 B,
# function `empty`, hot executor) from the Rust client (`warm_benchmark`), from Python
# (`rfaas.Executor.invoke`, new bytes and into a buffer) and from mpi4py.futures
# (`MPICommExecutor` under `mpirun -n 2`), by python/benchmarks/warm_invoke.py.
#
# Usage: scripts/python-bench.sh   (environment: REPS, MPI_REPS, SIZES, PROVIDER, OUT, BUILD=0 to
#        skip the release build). Writes $OUT/warm.csv (column `client`) and $OUT/summary.txt
#        (p50/p99 per client, Python minus Rust, mpi4py.futures over Python, targets met or
#        missed); exits non-zero when a step fails. The cluster is stopped in any case.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-20000}
MPI_REPS=${MPI_REPS:-2000}
SIZES=${SIZES:-64}
PROVIDER=${PROVIDER:-shm}
BIN=target/release
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results/python-bench-$(date +%Y%m%d-%H%M%S)}

if [ "${BUILD:-1}" = 1 ]; then
    cargo build --release -p rfaas -p rfaas-functions --features rfaas/mpi --lib \
        --bin warm_benchmark --bin rfaas --bin rfaas-executor
fi
mkdir -p "$OUT"
RUN=$(mktemp -d /tmp/rfaas-python-bench.XXXXXX)
cleanup() {
    "$BIN/rfaas" local-cluster stop --run-dir "$RUN" >/dev/null 2>&1 || true
    rm -rf "$RUN"
}
trap cleanup EXIT
RUST_LOG=warn "$BIN/rfaas" local-cluster start --run-dir "$RUN" --provider "$PROVIDER" >/dev/null
"$PYTHON" python/benchmarks/warm_invoke.py --cluster "$RUN/cluster.json" --bin-dir "$BIN" \
    --sizes "$SIZES" --repetitions "$REPS" --mpi4py-repetitions "$MPI_REPS" \
    --output "$OUT/warm.csv" 2> >(tee "$OUT/summary.txt" >&2)
echo "CSV: $OUT/warm.csv, summary: $OUT/summary.txt"
