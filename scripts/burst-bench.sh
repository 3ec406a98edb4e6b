#!/usr/bin/env bash
# Bursts of concurrent cold starts: a local shm cluster renting ONE core with
# `oversubscribe = 64` (benchmarks only: up to 64 executors share that core), then
# `cold_benchmark --modes cached --bursts 1,8,32,64 --hot-timeout 0`, REPETITIONS rounds of
# each burst, the client threads on the other core. Run once with the default pool (1) and once
# with a pool as large as the largest burst. Prints p50/p99 per burst and pool size.
# MANAGER_CORES sets the manager's manager_cores (default auto: the core it does not rent out,
# where the client threads run too; "all" lets it run on the executors' core as well).
# Release build; BUILD=0 skips it.
# Usage: scripts/burst-bench.sh [REPETITIONS] [OUT_DIR] [BURSTS]
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-10}
OUT=${2:-$(mktemp -d /tmp/rfaas-burst-bench.XXXXXX)}
BURSTS=${3:-1,8,32,64}
MANAGER_CORES=${MANAGER_CORES:-auto}
R=target/release
if [[ ${BUILD:-1} != 0 ]]; then
    cargo build --release -p rfaas --bin rfaas --bin rfaas-executor --bin cold_benchmark
    cargo build --release -p rfaas-functions --lib
fi
mkdir -p "$OUT"
largest=$(tr ',' '\n' <<<"$BURSTS" | sort -n | tail -1)
for pool in 1 "$largest"; do
    run="$OUT/run-pool$pool"
    printf 'pool_size = %s\noversubscribe = 64\nmanager_cores = "%s"\n' "$pool" "$MANAGER_CORES" \
        > "$OUT/em-pool$pool.toml"
    "$R/rfaas" local-cluster start --run-dir "$run" --provider shm --cores-per-node 1 \
        --manager-config "$OUT/em-pool$pool.toml" --no-resource-manager >/dev/null
    trap '"$R/rfaas" local-cluster stop --run-dir "$run" >/dev/null' EXIT
    echo "== pool_size = $pool, oversubscribe = 64 (one core), manager_cores = $MANAGER_CORES, bursts $BURSTS"
    "$R/cold_benchmark" --cluster "$run/cluster.json" --library "$R/libfunctions.so" \
        --function empty --modes cached --sizes 64 --hot-timeout 0 --bursts "$BURSTS" \
        --repetitions "$REPS" --output "$OUT/burst-pool$pool.csv"
    "$R/rfaas" local-cluster stop --run-dir "$run" >/dev/null
    trap - EXIT
done
# Per pool size and burst: p50/p99 over every cold start of every round, and how many came
# from the pool.
python3 - "$OUT" <<'PY'
import csv, glob, os, re, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "burst-pool*.csv"))):
    pool = re.search(r"burst-pool(\d+)", f).group(1)
    rows = list(csv.DictReader(open(f)))
    for b in sorted({int(r["world_size"]) for r in rows}):
        rs = [r for r in rows if int(r["world_size"]) == b]
        lat = sorted(int(r["latency_ns"]) for r in rs)
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e3
        pooled = sum(r["mode"].endswith("-pool") for r in rs)
        print(f"burst,{pool},{b},{len(rs)},{pooled},{p(0.5):.0f},{p(0.99):.0f}")
PY
echo "(columns: burst,pool_size,burst_size,cold_starts,from_pool,p50_us,p99_us)"
echo "CSVs in $OUT"
