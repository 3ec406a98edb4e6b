#!/usr/bin/env bash
# The warm-invocation benchmark from C (examples/c/warm_benchmark.c through the installed
# librfaas) against the Rust client (warm_benchmark), on the same local cluster in the same run:
# function `empty`, a hot executor (busy-polling), one call at a time, client pinned to the
# last core. The two clients take turns, ROUNDS times each, so that the noise of this machine
# falls on both. One CSV, the usual columns plus `client` (rust or c); a summary with p50 and
# p99 per client and size, and the C client's p50 minus the Rust client's.
#
#   scripts/capi-bench.sh [BUILD_DIR] [OUT_CSV]      BUILD_DIR: target/release (default)
#
# Environment: SIZES (64), REPETITIONS (20000), WARMUP (1000), ROUNDS (3), PROVIDER (shm).
# Needs BUILD_DIR/{rfaas,warm_benchmark,libfunctions.so} and librfaas_c.so: make bench-capi builds them.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:-$root/target/release}" && pwd)"
out="${2:-$root/results/capi-bench-$(date +%Y%m%d-%H%M%S).csv}"
sizes="${SIZES:-64}"
reps="${REPETITIONS:-20000}"
warmup="${WARMUP:-1000}"
rounds="${ROUNDS:-3}"
provider="${PROVIDER:-shm}"
for f in rfaas warm_benchmark libfunctions.so; do
    [[ -f "$build/$f" ]] || { echo "capi-bench: $build/$f is missing" >&2; exit 1; }
done
mkdir -p "$(dirname "$out")"

tmp="$(mktemp -d)"
run="$tmp/run"
cleanup() {
    "$build/rfaas" local-cluster stop --run-dir "$run" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# The C benchmark is built the way a user builds it: against the installed library.
"$root/scripts/install-capi.sh" "$tmp/prefix" "$build" >/dev/null
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# shellcheck disable=SC2046
cc -O2 -Wall -Werror -o "$tmp/warm_benchmark_c" "$root/examples/c/warm_benchmark.c" \
    $(pkg-config --cflags --libs rfaas)

"$build/rfaas" local-cluster start --run-dir "$run" --provider "$provider" >/dev/null
cluster="$run/cluster.json"
lib="$build/libfunctions.so"

echo "benchmark,mode,provider,payload_bytes,rank,world_size,node,worker,repetition,latency_ns,client" > "$out"
for ((r = 1; r <= rounds; r++)); do
    "$build/warm_benchmark" --cluster "$cluster" --library "$lib" --function empty \
        --modes hot --sizes "$sizes" --repetitions "$reps" --warmup "$warmup" \
        --output "$tmp/rust.csv" >/dev/null 2>"$tmp/rust.err" || { cat "$tmp/rust.err" >&2; exit 1; }
    tail -n +2 "$tmp/rust.csv" | sed 's/$/,rust/' >> "$out"
    "$tmp/warm_benchmark_c" "$cluster" "$lib" empty "$sizes" "$reps" "$warmup" \
        > "$tmp/c.csv" 2>"$tmp/c.err" || { cat "$tmp/c.err" >&2; exit 1; }
    tail -n +2 "$tmp/c.csv" >> "$out"
done

# Summary: p50/p99 (nearest rank on the sorted latencies) per client and size.
summary() { # client size
    awk -F, -v c="$1" -v s="$2" 'NR > 1 && $11 == c && $4 == s { print $10 }' "$out" | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "0 0 0"; exit }
             i50 = int((NR - 1) * 0.50) + 1; i99 = int((NR - 1) * 0.99) + 1
             print NR, v[i50], v[i99] }'
}
IFS=, read -ra size_list <<< "$sizes"
for s in "${size_list[@]}"; do
    read -r rn r50 r99 <<< "$(summary rust "$s")"
    read -r cn c50 c99 <<< "$(summary c "$s")"
    echo "capi_bench: $provider hot $s B: rust n=$rn p50 $r50 ns p99 $r99 ns | c n=$cn p50 $c50 ns p99 $c99 ns | c-rust p50 $((c50 - r50)) ns"
done
echo "capi_bench: CSV $out"
