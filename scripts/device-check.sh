#!/usr/bin/env bash
# Hardware check, ready to run on a cluster node: finds RDMA devices (/sys/class/infiniband) and
# libfabric providers for HPC NICs (cxi = Slingshot, efa, opx / psm2 / psm3 = Omni-Path,
# verbs;ofi_rxm), and on whatever it finds runs
#   1. the fabric conformance suite: `verbs` (RFAAS_VERBS_DEVICE) and `ofi` (RFAAS_TEST_OFI_PROVIDER)
#   2. fabric_pingpong, layered and raw: verbs; ofi and ofi-raw
#   3. warm_benchmark on a local cluster of that provider
# and writes one CSV (check,provider,detail,payload_bytes,p50_ns,p99_ns,result) plus a summary
# that says what it found, what it ran and what it skipped. On a machine with none of these it
# says so, writes both files, and exits 0.
#
# Usage: scripts/device-check.sh [--out DIR] [--no-build] [--iterations N]
#   --out DIR       results directory (default results/device-check-<time>)
#   --no-build      use the binaries in target/release as they are
#   --iterations N  round trips per size for fabric_pingpong (default 20000), calls for
#                   warm_benchmark (default 5000)
# Environment: RFAAS_DEVICE_CHECK_OFI (space-separated libfabric providers to check instead of
# the ones detected, e.g. "cxi" or "shm" to try the pipeline on a laptop), RFAAS_VERBS_DEVICE
# (device to use; default the first found), CARGO (default cargo).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="results/device-check-$(date +%Y%m%d-%H%M%S)"
BUILD=1
ITERS=20000
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --iterations) ITERS="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "device-check: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$ITERS" in ''|*[!0-9]*) echo "device-check: --iterations needs a number" >&2; exit 2 ;; esac
CARGO="${CARGO:-cargo}"
export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$OUT"
CSV="$OUT/device-check.csv"
SUMMARY="$OUT/summary.txt"
LOG="$OUT/log.txt"
echo "check,provider,detail,payload_bytes,p50_ns,p99_ns,result" > "$CSV"
: > "$SUMMARY"
: > "$LOG"
say() { echo "$*" | tee -a "$SUMMARY"; }
row() { echo "$1,$2,$3,$4,$5,$6,$7" >> "$CSV"; }
FAILED=0
PP_EXTRA=()

say "rfaas device check on $(hostname) at $(date -u +%FT%TZ) ($(git rev-parse --short HEAD 2>/dev/null || echo no-git))"

# --- what is there --------------------------------------------------------------------------
VERBS_DEVS=()
if [ -d /sys/class/infiniband ]; then
    for d in /sys/class/infiniband/*; do [ -e "$d" ] && VERBS_DEVS+=("$(basename "$d")"); done
fi
if [ ${#VERBS_DEVS[@]} -gt 0 ]; then
    say "found RDMA devices: ${VERBS_DEVS[*]}"
else
    say "found no RDMA device (/sys/class/infiniband is empty or absent)"
fi

OFI_PROVS=()
if [ -n "${RFAAS_DEVICE_CHECK_OFI:-}" ]; then
    read -r -a OFI_PROVS <<< "$RFAAS_DEVICE_CHECK_OFI"
    say "libfabric providers to check (RFAAS_DEVICE_CHECK_OFI): ${OFI_PROVS[*]}"
elif command -v fi_info >/dev/null 2>&1; then
    LISTED=$(fi_info -l 2>/dev/null | sed -n 's/^\([a-z0-9_;]*\):$/\1/p' | tr '\n' ' ')
    say "libfabric $(fi_info --version 2>/dev/null | sed -n 's/.*libfabric: *//p' | head -1) lists: ${LISTED:-nothing}"
    for p in cxi efa opx psm3 psm2; do
        # A provider is usable only if it reports an endpoint (psm2 is listed without a NIC).
        if [[ " $LISTED " == *" $p "* ]] && fi_info -p "$p" -t FI_EP_RDM >/dev/null 2>&1; then
            OFI_PROVS+=("$p")
        fi
    done
    if [[ " $LISTED " == *" verbs "* ]] && [ ${#VERBS_DEVS[@]} -gt 0 ] \
        && fi_info -p "verbs;ofi_rxm" -t FI_EP_RDM >/dev/null 2>&1; then
        OFI_PROVS+=("verbs;ofi_rxm")
    fi
else
    say "fi_info not found (apt-get install libfabric-bin): libfabric providers not checked"
fi
if [ ${#OFI_PROVS[@]} -gt 0 ]; then
    say "libfabric providers for HPC NICs: ${OFI_PROVS[*]}"
else
    say "found no libfabric provider for an HPC NIC (cxi, efa, opx, psm3, psm2, verbs;ofi_rxm)"
fi

if [ ${#VERBS_DEVS[@]} -eq 0 ] && [ ${#OFI_PROVS[@]} -eq 0 ]; then
    say "skipped: verbs conformance, ofi conformance, fabric_pingpong, warm_benchmark (no device)"
    say "nothing to check on this machine; results: $CSV, $SUMMARY"
    row none - "no RDMA device or HPC libfabric provider" - - - skipped
    exit 0
fi

# --- build ----------------------------------------------------------------------------------
FEATURES=libfabric
[ ${#VERBS_DEVS[@]} -gt 0 ] && FEATURES="verbs,libfabric"
if [ "$BUILD" = 1 ]; then
    say "building (release, features $FEATURES) ..."
    if ! "$CARGO" build --release --workspace --features "$FEATURES" --bins >>"$LOG" 2>&1; then
        say "build failed (see $LOG)"; row build - "features $FEATURES" - - - failed; exit 1
    fi
fi
BIN=target/release

conformance() { # provider-label filter env...
    local label="$1" filter="$2"; shift 2
    local out="$OUT/conformance-$label.txt"
    env "$@" "$CARGO" test --release --features "$FEATURES" --test fabric_conformance -- "$filter" \
        --test-threads=1 >"$out" 2>&1
    local line
    line=$(grep -E '^test result' "$out" | tail -1)
    local pass fail
    pass=$(echo "$line" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
    fail=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
    if [ -n "$pass" ] && [ "${fail:-1}" = 0 ] && [ "$pass" -gt 0 ]; then
        row conformance "$label" "$pass passed" - - - ok
        say "conformance $label: $pass passed"
    else
        row conformance "$label" "${pass:-0} passed ${fail:-?} failed" - - - failed
        say "conformance $label: FAILED (${line:-no result}; see $out)"; FAILED=1
    fi
}

pingpong() { # label modes env...
    local label="$1" modes="$2"; shift 2
    local csv="$OUT/pingpong-$label.csv"
    if env "$@" "$BIN/fabric_pingpong" --provider "$modes" --sizes 64,4096,65536 "${PP_EXTRA[@]}" \
        --iterations "$ITERS" --warmup 1000 --max-time-per-size 5 >"$csv" 2>>"$LOG"; then :; else
        say "fabric_pingpong $label ($modes): FAILED (see $LOG)"; FAILED=1
    fi
    tail -n +2 "$csv" | while IFS=, read -r prov size iters p50 p99 _; do
        row fabric_pingpong "$prov" "$label" "$size" "$p50" "$p99" ok
        say "fabric_pingpong $label $prov $size B: p50 $p50 ns, p99 $p99 ns ($iters round trips)"
    done
}

warm() { # label provider env...
    local label="$1" provider="$2"; shift 2
    local dir="$OUT/cluster-$label" csv="$OUT/warm-$label.csv"
    if ! env "$@" "$BIN/rfaas" local-cluster start --run-dir "$dir" --provider "$provider" \
        --no-resource-manager >>"$LOG" 2>&1; then
        say "warm_benchmark $label: local cluster did not start (see $LOG)"; FAILED=1
        row warm_benchmark "$provider" "$label" - - - failed; return
    fi
    if env "$@" "$BIN/warm_benchmark" --cluster "$dir/cluster.json" --function empty \
        --sizes 64,4096 --repetitions "$(( ITERS / 4 + 1 ))" --output "$csv" >>"$LOG" 2>&1; then
        python3 - "$csv" "$label" >>"$CSV" <<'PY'
import csv, sys
rows = {}
for r in csv.DictReader(open(sys.argv[1])):
    rows.setdefault((r["provider"], r["mode"], int(r["payload_bytes"])), []).append(int(r["latency_ns"]))
for (prov, mode, size), v in sorted(rows.items()):
    v.sort()
    p = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    print(f"warm_benchmark,{prov},{sys.argv[2]} {mode},{size},{p(0.5)},{p(0.99)},ok")
PY
        say "warm_benchmark $label: done ($csv)"
    else
        say "warm_benchmark $label: FAILED (see $LOG)"; FAILED=1
        row warm_benchmark "$provider" "$label" - - - failed
    fi
    "$BIN/rfaas" local-cluster stop --run-dir "$dir" >>"$LOG" 2>&1 || true
}

# --- verbs ----------------------------------------------------------------------------------
if [ ${#VERBS_DEVS[@]} -gt 0 ]; then
    DEV="${RFAAS_VERBS_DEVICE:-${VERBS_DEVS[0]}}"
    IP=""
    for n in /sys/class/infiniband/"$DEV"/device/net/*; do
        [ -e "$n" ] || continue
        IP=$(ip -4 -o addr show dev "$(basename "$n")" 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -1)
        [ -n "$IP" ] && break
    done
    say "verbs: device $DEV, address ${IP:-none (no IPv4 on its netdev)}"
    conformance "verbs-$DEV" verbs RFAAS_VERBS_DEVICE="$DEV" RFAAS_TEST_VERBS_ADDR="$IP"
    if [ -n "$IP" ]; then
        PP_EXTRA=(--bind "$IP:0")
        pingpong "verbs-$DEV" verbs RFAAS_VERBS_DEVICE="$DEV"
        PP_EXTRA=()
        warm "verbs-$DEV" verbs RFAAS_VERBS_DEVICE="$DEV"
    else
        say "skipped: verbs fabric_pingpong and warm_benchmark (no IPv4 address on $DEV's netdev)"
    fi
fi

# --- ofi ------------------------------------------------------------------------------------
for P in "${OFI_PROVS[@]}"; do
    L=$(echo "$P" | tr ';' '-')
    say "ofi: libfabric provider $P"
    conformance "ofi-$L" ofi-env RFAAS_TEST_OFI_PROVIDER="$P"
    pingpong "ofi-$L" ofi,ofi-raw RFAAS_OFI_PROVIDER="$P"
    warm "ofi-$L" ofi RFAAS_OFI_PROVIDER="$P"
done

say "results: $CSV, $SUMMARY, logs $LOG"
exit "$FAILED"
