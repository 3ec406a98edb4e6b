#!/usr/bin/env bash
# Installs what building rfaas with all features (mpi, hwloc, verbs) and running its tests needs,
# on Debian 12 (bookworm). Idempotent: it installs only what is missing, runs `apt-get update` at
# most once and only when something is missing, and does nothing else when all is present.
#
#   scripts/setup.sh            # system packages, Rust (if absent), Python requirements
#
# Needs root or sudo when a system package is missing. Environment:
#   RFAAS_SETUP_SKIP_APT=1      do not touch system packages (report what is missing and go on)
#   RFAAS_SETUP_SKIP_PYTHON=1   do not install the Python requirements nor the rfaas package
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

# --- system packages --------------------------------------------------------------------------
# build: a C toolchain for the linker and build scripts; bindgen needs libclang
PKGS=(build-essential pkg-config clang libclang-dev ca-certificates curl)
# feature mpi (rsmpi over OpenMPI)
PKGS+=(libopenmpi-dev openmpi-bin)
# feature verbs (rdma-sys, rdma_cm); ibverbs-utils gives ibv_devices for diagnostics
PKGS+=(libibverbs-dev librdmacm-dev ibverbs-utils)
# feature hwloc (hwlocality links libudev)
PKGS+=(libhwloc-dev hwloc libudev-dev)
# tests and the local cluster: Slurm started by hand, munge for its auth option
PKGS+=(slurm-wlm munge)
# `column` for the demo's tables (not in minimal images)
PKGS+=(bsdextrautils)
# scripts/resource-manager-walkthrough.sh (run by tests/docs.rs): curl (above) and jq
PKGS+=(jq)
# analysis scripts and their tests; the Python package (python/): mpi4py builds from source
# against OpenMPI and needs the Python headers
PKGS+=(python3 python3-venv python3-pip python3-dev)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} == 0)); then
    log "system packages: all ${#PKGS[@]} present"
elif [[ "${RFAAS_SETUP_SKIP_APT:-0}" == 1 ]]; then
    log "system packages missing (RFAAS_SETUP_SKIP_APT=1, not installing): ${missing[*]}"
else
    if [[ $(id -u) -eq 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        log "missing packages: ${missing[*]}"
        log "run this script as root, or install sudo"
        exit 1
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# --- Rust -------------------------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
    log "installing Rust (rustup, stable, minimal profile + rustfmt, clippy)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --component rustfmt,clippy
else
    log "rust: $(cargo --version)"
fi

# --- Python requirements ------------------------------------------------------------------------
# In a virtual environment of the checkout (.venv), so nothing is installed into the system's
# Python; `make` runs analysis/ and the Python package's tests with .venv/bin/python.
VENV=${RFAAS_VENV:-.venv}

# Installs a pinned requirements file unless every `name==version` in it is already there
# (pip itself takes seconds even when nothing is to be done).
install_pinned() {
    local req=$1
    if "$VENV/bin/python" - "$req" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    if "==" not in line:
        ok = False
        break
    name, want = (x.strip() for x in line.split("==", 1))
    try:
        ok = ok and version(name) == want
    except PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
PY
    then
        log "python: requirements of $req present in $VENV"
    else
        log "python: installing $req into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    fi
}

if [[ "${RFAAS_SETUP_SKIP_PYTHON:-0}" != 1 ]]; then
    # A venv copied from another checkout still runs that checkout's interpreter: start anew.
    if [[ -x "$VENV/bin/python" ]] && ! grep -qs "$(cd "$VENV" && pwd)" "$VENV/bin/pip"; then
        log "python: $VENV belongs to another checkout; recreating it"
        rm -rf "$VENV"
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "python: creating the virtual environment $VENV"
        python3 -m venv "$VENV"
    fi
    [[ -f analysis/requirements.txt ]] && install_pinned analysis/requirements.txt
    if [[ -f python/pyproject.toml ]]; then
        install_pinned python/requirements-dev.txt
        # The rfaas package (maturin builds the extension in release mode into target/):
        # rebuilt only when its sources or the client library's change.
        stamp_file="$VENV/.rfaas-python.stamp"
        stamp=$( { find python src -type f \( -name '*.rs' -o -name '*.py' -o -name '*.pyi' \
                        -o -name '*.toml' -o -name 'py.typed' \) -not -path 'python/tests/*' \
                        -not -path 'python/benchmarks/*' -not -path 'python/examples/*' | sort \
                    | xargs sha256sum; sha256sum Cargo.toml Cargo.lock; } | sha256sum | cut -d' ' -f1)
        if [[ "$(cat "$stamp_file" 2>/dev/null)" == "$stamp" ]] \
            && "$VENV/bin/python" -c 'import rfaas._native' 2>/dev/null; then
            log "python: the rfaas package is installed and current in $VENV"
        else
            log "python: building and installing the rfaas package (python/) into $VENV"
            PATH="$(cd "$VENV" && pwd)/bin:$PATH" "$VENV/bin/python" -m pip install --quiet \
                --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall ./python
            echo "$stamp" > "$stamp_file"
        fi
    fi
    # The analysis as a command, $VENV/bin/rfaas-analysis (analysis/pyproject.toml): editable, so
    # it follows the checkout; its dependencies are the pinned requirements above (pip fetches
    # only the build backend, setuptools, from the index).
    if [[ -f analysis/pyproject.toml && ! -x "$VENV/bin/rfaas-analysis" ]]; then
        log "python: installing the rfaas-analysis command into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e ./analysis
    fi
fi
