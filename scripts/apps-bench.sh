#!/usr/bin/env bash
# The applications' benchmark (README "Applications", Results), in one run on a local shm
# cluster: the thumbnailer on IMAGES generated photos of SIZE_KB KB with 2 workers, one call in
# flight per worker (per-image overhead: p50 remote - p50 local) and two (throughput), each
# against 2 local rayon threads; then the classifier, CALLS calls each of `classify` (model
# loaded once by init) and `classify_reload` (parsed on every call), with the model of
# jobs/classifier/tests/make_model.py. Release build; BUILD=0 skips it.
# Usage: scripts/apps-bench.sh [OUT_DIR]   (IMAGES=40 SIZE_KB=100 CALLS=200 PYTHON=.venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d /tmp/rfaas-apps-bench.XXXXXX)}
IMAGES=${IMAGES:-40}
SIZE_KB=${SIZE_KB:-100}
CALLS=${CALLS:-200}
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python3
R=target/release
if [[ ${BUILD:-1} != 0 ]]; then
    cargo build --release -p rfaas-thumbnailer -p rfaas-classifier --lib
    cargo build --release -p rfaas --bin rfaas --bin rfaas-executor --example thumbnailer --example classifier
fi
mkdir -p "$OUT"
run="$OUT/cluster"
"$R/rfaas" local-cluster start --run-dir "$run" --provider shm --no-resource-manager >/dev/null
trap '"$R/rfaas" local-cluster stop --run-dir "$run" >/dev/null' EXIT
for depth in 1 2; do
    gen=()
    [[ $depth == 1 ]] && gen=(--generate "$IMAGES" --size-kb "$SIZE_KB")
    echo "== thumbnailer, $depth call(s) in flight per worker"
    "$R/examples/thumbnailer" --cluster "$run/cluster.json" --library "$R/libthumbnailer.so" \
        --input "$OUT/photos" "${gen[@]}" --output "$OUT/thumbs-$depth" --workers 2 \
        --in-flight "$depth" --csv "$OUT/thumbnailer-$depth.csv"
done
echo "== classifier"
"$PYTHON" jobs/classifier/tests/make_model.py "$OUT/model"
"$R/examples/classifier" --cluster "$run/cluster.json" --library "$R/libclassifier.so" \
    --model "$OUT/model/model.onnx" --top-k 3 --bench "$CALLS" --csv "$OUT/classifier.csv" \
    "$OUT/model/image0.png"
echo "results: $OUT"
