"""Fixtures of the Python package's tests: a real local cluster (`rfaas local-cluster start`,
a resource manager and an executor manager on 127.0.0.1), started once per test session and
stopped at the end, and the example function library (jobs/functions).

The binaries come from the cargo build of this checkout (`target/debug` unless
``RFAAS_TARGET_DIR`` names another directory). A missing binary, library or (for the MPI tests)
``mpirun`` fails the tests under ``CI=true`` and skips them elsewhere.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("RFAAS_TARGET_DIR", ROOT / "target" / "debug"))
RFAAS = TARGET / "rfaas"
LIBRARY = TARGET / "libfunctions.so"
IN_CI = os.environ.get("CI") == "true"
# Generous bounds that only say "did not hang".
START_TIMEOUT_S = 120


def missing(what: str) -> None:
    """Fails under CI=true, skips elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} is missing (CI=true: not skipping)")
    pytest.skip(f"{what} is missing")


def local_cluster(provider: str):
    """Starts a local cluster with `provider`; yields (run dir, cluster.json), then stops it."""
    if not RFAAS.exists():
        missing(f"{RFAAS} (run `cargo build --workspace --all-features`)")
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"rfaas-py-{provider}-"))
    start = subprocess.run(
        [str(RFAAS), "local-cluster", "start", "--run-dir", str(run_dir), "--provider", provider],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=START_TIMEOUT_S,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    if start.returncode != 0:
        logs = "".join(p.read_text() for p in (run_dir / "logs").glob("*.log")) if (run_dir / "logs").exists() else ""
        pytest.fail(f"local-cluster start failed:\n{start.stdout}\n{logs}")
    try:
        yield run_dir, run_dir / "cluster.json"
    finally:
        stop = subprocess.run(
            [str(RFAAS), "local-cluster", "stop", "--run-dir", str(run_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        if stop.returncode != 0:
            print(f"local-cluster stop failed:\n{stop.stdout}", file=sys.stderr)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def library() -> pathlib.Path:
    """The example function library (empty, echo, sleep_us, checksum, black_scholes, panic,
    segfault)."""
    if not LIBRARY.exists():
        missing(f"{LIBRARY} (run `cargo build --workspace --all-features`)")
    return LIBRARY


@pytest.fixture(scope="session")
def shm_cluster():
    """(run dir, cluster.json) of a local cluster on shared memory."""
    yield from local_cluster("shm")


@pytest.fixture(scope="session")
def cluster_file(shm_cluster) -> pathlib.Path:
    return shm_cluster[1]


@pytest.fixture(scope="session")
def mpirun() -> str:
    path = shutil.which("mpirun")
    if path is None:
        missing("mpirun (OpenMPI)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        missing("mpi4py (scripts/setup.sh installs it into .venv)")
    return path
