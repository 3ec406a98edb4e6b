#!/usr/bin/env bash
# Installs what building rfaas with all features (mpi, hwloc, verbs) and running its tests needs,
# on Debian 12 (bookworm). Idempotent: it installs only what is missing, runs `apt-get update` at
# most once and only when something is missing, and does nothing else when all is present.
#
#   scripts/setup.sh            # system packages, Rust (if absent), Python requirements
#
# Needs root or sudo when a system package is missing. Environment:
#   RFAAS_SETUP_SKIP_APT=1      do not touch system packages (report what is missing and go on)
#   RFAAS_SETUP_SKIP_PYTHON=1   do not install the Python requirements
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
# feature libfabric (the `ofi` provider: bindgen over libfabric's headers, found with pkg-config);
# libfabric-bin gives fi_info / fi_pingpong for diagnostics
PKGS+=(libfabric-dev libfabric-bin)
# feature hwloc (hwlocality links libudev)
PKGS+=(libhwloc-dev hwloc libudev-dev)
# tests and the local cluster: Slurm started by hand, munge for its auth option
PKGS+=(slurm-wlm munge)
# `column` for the demo's tables (not in minimal images)
PKGS+=(bsdextrautils)
# analysis scripts and their tests
PKGS+=(python3 python3-venv python3-pip)

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
# Python; `make` runs analysis/ with .venv/bin/python.
if [[ -f analysis/requirements.txt && "${RFAAS_SETUP_SKIP_PYTHON:-0}" != 1 ]]; then
    VENV=${RFAAS_VENV:-.venv}
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "python: creating the virtual environment $VENV"
        python3 -m venv "$VENV"
    fi
    # Fast path: every pinned `name==version` already installed (pip itself takes seconds).
    if "$VENV/bin/python" - analysis/requirements.txt <<'PY'
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
        log "python: requirements of analysis/requirements.txt present in $VENV"
    else
        log "python: installing analysis/requirements.txt into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r analysis/requirements.txt
    fi
fi
