#!/usr/bin/env bash
# The `ofi` provider's figures, measured in one run (README, "Results"):
#
# 1. `fabric_pingpong --provider ofi-raw,ofi` on each libfabric provider (RUNS runs, 64 B and
#    4 KiB): the layer's cost as the ratio of p50 round trips, per run and as the median of runs;
# 2. a local cluster on `ofi` for each of HOT_PROVIDERS: `warm_benchmark --modes hot` back to
#    back, then `fabric_pingpong --provider ofi` right after (the hot invocation against the ofi
#    round trip), and `warm_benchmark --modes warm --interval-us GAP_US` (a call after a gap:
#    the executor asleep on its completion queue, on the provider's wait object where it has one).
#
# Usage: scripts/ofi-bench.sh            (release binaries of target/release, built beforehand:
#        cargo build --release --all-features)
# Environment: RUNS (3), ITERS (20000), OFI_PROVIDERS and HOT_PROVIDERS ("shm tcp;ofi_rxm"),
# GAP_US (1000: the warm gap), OUT (results/ofi-bench-<time>), RFAAS_BIN_DIR (target/release).
# Writes OUT/pingpong.csv, OUT/warm-<provider>-{hot,gap}.csv (+ .json) and OUT/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${RFAAS_BIN_DIR:-target/release}
RUNS=${RUNS:-3}
ITERS=${ITERS:-20000}
OFI_PROVIDERS=${OFI_PROVIDERS:-"shm tcp;ofi_rxm"}
HOT_PROVIDERS=${HOT_PROVIDERS:-"shm tcp;ofi_rxm"}
GAP_US=${GAP_US:-1000}
OUT=${OUT:-results/ofi-bench-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
for b in fabric_pingpong warm_benchmark rfaas libfunctions.so; do
	[ -e "$BIN/$b" ] || { echo "ofi-bench: $BIN/$b is missing: cargo build --release --all-features" >&2; exit 1; }
done
mkdir -p "$OUT"
pp=$OUT/pingpong.csv
echo "libfabric,run,provider,payload_bytes,iterations,p50_ns,p99_ns,p999_ns" >"$pp"

pingpong() { # libfabric provider, run label, modes, sizes
	RFAAS_OFI_PROVIDER=$1 timeout 300 "$BIN/fabric_pingpong" --provider "$3" --sizes "$4" \
		--iterations "$ITERS" --max-time-per-size 3 2>>"$OUT/pingpong.stderr" |
		tail -n +2 | sed "s/^/$1,$2,/" >>"$pp"
}

for prov in $OFI_PROVIDERS; do
	for run in $(seq 1 "$RUNS"); do
		pingpong "$prov" "$run" ofi-raw,ofi 64,4096
	done
done

cluster=$OUT/cluster
cleanup() { "$BIN/rfaas" local-cluster stop --run-dir "$cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT
for prov in $HOT_PROVIDERS; do
	tag=${prov//;/_}
	RFAAS_OFI_PROVIDER=$prov timeout 60 "$BIN/rfaas" local-cluster start --run-dir "$cluster" \
		--provider ofi --nodes 1 >"$OUT/cluster-$tag.log" 2>&1
	RFAAS_OFI_PROVIDER=$prov timeout 300 "$BIN/warm_benchmark" --cluster "$cluster/cluster.json" \
		--function empty --sizes 64 --repetitions "$ITERS" --modes hot \
		--output "$OUT/warm-$tag-hot.csv" >"$OUT/warm-$tag-hot.txt" 2>&1
	pingpong "$prov" "after-hot" ofi 64
	RFAAS_OFI_PROVIDER=$prov timeout 300 "$BIN/warm_benchmark" --cluster "$cluster/cluster.json" \
		--function empty --sizes 64 --repetitions $((ITERS / 10)) --modes warm \
		--interval-us "$GAP_US" --output "$OUT/warm-$tag-gap.csv" >"$OUT/warm-$tag-gap.txt" 2>&1
	"$BIN/rfaas" local-cluster stop --run-dir "$cluster" >/dev/null 2>&1
done

"$PYTHON" - "$OUT" "$HOT_PROVIDERS" <<'EOF' | tee "$OUT/summary.txt"
import csv, statistics, sys, pathlib
out, hot = pathlib.Path(sys.argv[1]), sys.argv[2].split()
rows = list(csv.DictReader(open(out / "pingpong.csv")))
p50 = lambda lf, run, mode, size: next((int(r["p50_ns"]) for r in rows if r["libfabric"] == lf
      and r["run"] == run and r["provider"] == mode and r["payload_bytes"] == size), None)
print("fabric_pingpong round trip p50 (ns): ofi / ofi-raw = ratio, per run; median of runs")
for lf in dict.fromkeys(r["libfabric"] for r in rows):
    for size in ("64", "4096"):
        runs = sorted({r["run"] for r in rows if r["libfabric"] == lf and r["run"].isdigit()})
        pairs = [(p50(lf, k, "ofi", size), p50(lf, k, "ofi-raw", size)) for k in runs]
        pairs = [(a, b) for a, b in pairs if a and b]
        if not pairs:
            continue
        cells = ", ".join(f"{a}/{b}={a / b:.2f}x" for a, b in pairs)
        ratio = statistics.median(a / b for a, b in pairs)
        print(f"  {lf:12} {size:>5} B: {cells}; median ratio {ratio:.2f}x (target 1.3x)")
for lf in hot:
    lat = {}
    for part in ("hot", "gap"):
        path = out / f"warm-{lf.replace(';', '_')}-{part}.csv"
        for r in csv.DictReader(open(path)):
            lat.setdefault(r["mode"], []).append(int(r["latency_ns"]))
    rt = p50(lf, "after-hot", "ofi", "64")
    for mode, v in lat.items():
        print(f"  warm_benchmark on ofi/{lf}, {mode}, 64 B: p50 {statistics.median(v):.0f} ns, "
              f"p99 {sorted(v)[int(0.99 * (len(v) - 1))]} ns")
    if rt and "hot" in lat:
        d = statistics.median(lat["hot"]) - rt
        print(f"  hot invocation minus the ofi round trip right after ({rt} ns): {d:+.0f} ns "
              "(target: at most +300 ns)")
EOF
