#!/usr/bin/env bash
# The MPI benchmark targets of issue 5, on a fresh local cluster, in one run:
#
#  1. `scalable_benchmark --mode warm` p50 per rank against `warm_benchmark` p50, same cluster,
#     same sizes, same executor mode: always-warm executors (warm_benchmark --modes warm vs
#     scalable --hot-timeout-ms 0) and hot ones (--modes hot vs --hot-timeout-ms -1), for N = 1
#     and 2 ranks. Target: every rank within 1.5x.
#  2. `scalable_benchmark --mode throughput` (K in flight per rank) for N = 1, 2 and 4: invocations
#     per second per rank and in total, and the total against N = 1.
#
# Usage: scripts/mpi-bench.sh   (environment: REPS, SIZES, TP_REPS, TP_SIZES, IN_FLIGHT, TP_HOT,
#        PROVIDER, OUT, BUILD=0 to skip the release build). Prints two tables (also saved in
#        $OUT/table.txt, with every CSV, JSON, summary .txt and stderr .log); exits non-zero when
#        a step fails. About 5 seconds after the build with the defaults.
# The cluster: `rfaas local-cluster start --nodes 1` (a resource manager and one executor
# manager renting this machine's cores) plus one more executor manager on the same cores, so that
# 4 ranks find 4 leasable cores even on a 2-core machine. Everything is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-20000}
SIZES=${SIZES:-64,4096}
TP_REPS=${TP_REPS:-200000}
TP_SIZES=${TP_SIZES:-64}
IN_FLIGHT=${IN_FLIGHT:-4}
TP_HOT=${TP_HOT:-0}
PROVIDER=${PROVIDER:-shm}
BIN=target/release
OUT=${OUT:-results/mpi-bench-$(date +%Y%m%d-%H%M%S)}

if [ "${BUILD:-1}" = 1 ]; then
    cargo build --release --all-features --workspace --bins --examples --lib
fi
mkdir -p "$OUT"
RUN=$(mktemp -d /tmp/rfaas-mpi-bench.XXXXXX)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RUST_BACKTRACE=0
# No binding: each rank pins itself away from its own executor's core.
MPIRUN=(mpirun --bind-to none --oversubscribe)
EXTRA_PID=

cleanup() {
    if [ -n "$EXTRA_PID" ]; then
        kill -TERM "$EXTRA_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$EXTRA_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$EXTRA_PID" 2>/dev/null || true
    fi
    "$BIN/rfaas" local-cluster stop --run-dir "$RUN/cluster" >/dev/null 2>&1 || true
    rm -rf "$RUN"
}
trap cleanup EXIT

"$BIN/rfaas" local-cluster start --run-dir "$RUN/cluster" --provider "$PROVIDER" --nodes 1 >/dev/null
CLUSTER=$RUN/cluster/cluster.json
RM=$(sed -n 's/.*"resource_manager": *"\([^"]*\)".*/\1/p' "$CLUSTER")
mkdir -p "$RUN/extra"
"$BIN/rfaas" executor-manager --node em-extra --listen 127.0.0.1:0 --provider "$PROVIDER" \
    --fabric-host 127.0.0.1 --secret-file "$RUN/cluster/secret" --run-dir "$RUN/extra" \
    --ready-file "$RUN/extra/ready.json" --resource-manager "$RM" --new-session \
    >"$RUN/extra/log" 2>&1 &
EXTRA_PID=$!
for _ in $(seq 200); do
    "$BIN/rfaas" status --cluster "$CLUSTER" 2>/dev/null | grep -q '^em-extra  *alive' && break
    sleep 0.1
done
"$BIN/rfaas" status --cluster "$CLUSTER" | grep -q '^em-extra  *alive' ||
    { echo "the extra executor manager did not register:" >&2; cat "$RUN/extra/log" >&2; exit 1; }

# Each scalable run right after its warm_benchmark baseline, so that both see the same machine.
: >"$RUN/sc"
for exec_mode in warm hot; do
    hot=0; [ "$exec_mode" = hot ] && hot=-1
    for n in 1 2; do
        tag=$exec_mode-n$n
        echo "warm_benchmark --modes $exec_mode, then scalable_benchmark --mode warm with $n rank(s)" >&2
        "$BIN/warm_benchmark" --cluster "$CLUSTER" --sizes "$SIZES" --repetitions "$REPS" \
            --modes "$exec_mode" --output "$OUT/warm_benchmark-$tag.csv" >"$OUT/warm_benchmark-$tag.txt"
        "${MPIRUN[@]}" -n "$n" "$BIN/scalable_benchmark" --cluster "$CLUSTER" --sizes "$SIZES" \
            --repetitions "$REPS" --hot-timeout-ms "$hot" --output "$OUT/scalable-warm-$tag.csv" \
            >"$OUT/scalable-warm-$tag.txt" 2>"$OUT/scalable-warm-$tag.log"
        # warm_benchmark "warm  shm  64  20000  351 ..." -> size p50;
        # scalable "rank 1 warm 64 B: count 20000, p50 391 ns, ..." -> "warm 2 1 64 391 351"
        awk -v m="$exec_mode" -v n="$n" '
            NR == FNR { if ($1 == m) wb[$3] = $5; next }
            $1 == "rank" && $3 == "warm" { gsub(",", "", $9); print m, n, $2, $4, $9, wb[$4] }' \
            "$OUT/warm_benchmark-$tag.txt" "$OUT/scalable-warm-$tag.txt" >>"$RUN/sc"
    done
done

: >"$RUN/tp"
for n in 1 2 4; do
    echo "scalable_benchmark --mode throughput: $n rank(s), $IN_FLIGHT in flight each" >&2
    "${MPIRUN[@]}" -n "$n" "$BIN/scalable_benchmark" --cluster "$CLUSTER" --mode throughput \
        --sizes "$TP_SIZES" --repetitions "$TP_REPS" --in-flight "$IN_FLIGHT" \
        --hot-timeout-ms "$TP_HOT" --output "$OUT/scalable-throughput-n$n.csv" \
        >"$OUT/scalable-throughput-n$n.txt" 2>"$OUT/scalable-throughput-n$n.log"
    # "total throughput 64 B: 324498 invocations/s from 4 ranks" -> "4 64 324498"
    awk -v n="$n" '$1 == "total" && $2 == "throughput" { print n, $3, $5 }' \
        "$OUT/scalable-throughput-n$n.txt" >>"$RUN/tp"
done

{
    echo
    echo "warm invocations, p50 per rank: scalable_benchmark --mode warm vs warm_benchmark (target: ratio <= 1.5)"
    printf '%-9s %8s %5s %5s %16s %14s %7s\n' executor payload ranks rank warm_bench_p50 scalable_p50 ratio
    awk '{ ratio = ($6 > 0) ? $5 / $6 : 0; if (ratio > worst) worst = ratio;
           printf "%-9s %8s %5s %5s %13s ns %11s ns %7.2f\n", $1, $4, $2, $3, $6, $5, ratio }
         END { printf "worst ratio %.2f: target %s\n", worst, (worst > 0 && worst <= 1.5) ? "met" : "NOT met" }' \
        "$RUN/sc"
    echo
    echo "throughput: $IN_FLIGHT in flight per rank, hot_timeout_ms $TP_HOT ($(nproc) cores here: more ranks than that oversubscribe)"
    printf '%5s %8s %16s %12s\n' ranks payload invocations/s vs_1_rank
    awk '{ if ($1 == 1) one[$2] = $3; r = (one[$2] > 0) ? $3 / one[$2] : 0;
           printf "%5s %8s %16.0f %12.2f\n", $1, $2, $3, r }' "$RUN/tp"
    echo
    echo "files: $OUT"
} | tee "$OUT/table.txt"
