"""rfaas.mpi under mpirun with 2 ranks: the Black-Scholes example (examples/python) checked
against its local computation, and bad input on every rank."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT

# "Did not hang" bound for one mpirun.
RUN_TIMEOUT_S = 300


def run_mpi(mpirun, n, script, *args):
    env = {
        **os.environ,
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        # The ranks' own MPI traffic is tiny; vader (shared memory) needs more care as root.
        "OMPI_MCA_btl": "self,tcp",
        "OMPI_MCA_mpi_yield_when_idle": "1",
    }
    cmd = [mpirun, "--bind-to", "none", "--oversubscribe", "-n", str(n), sys.executable, str(script), *map(str, args)]
    p = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env, start_new_session=True,
    )
    try:
        out, _ = p.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # mpirun and every rank
        out, _ = p.communicate()
        pytest.fail(f"mpirun still running after {RUN_TIMEOUT_S} s:\n{out}")
    return p.returncode, out


def test_black_scholes_example_under_mpirun(mpirun, cluster_file, library):
    rc, out = run_mpi(
        mpirun, 2, ROOT / "examples" / "python" / "offload_mpi.py",
        "--cluster", cluster_file, "--library", library, "--options", "4000", "--batch", "50",
    )
    assert rc == 0, out
    for rank in (0, 1):
        line = next((l for l in out.splitlines() if l.startswith(f"rank {rank}:")), None)
        assert line is not None and line.endswith(": ok"), out
        assert "2000 remote" in line, line
    assert "2 ranks, " in out and "result correct on every rank" in out, out


def test_bad_input_under_mpirun(mpirun, cluster_file, library):
    rc, out = run_mpi(mpirun, 2, ROOT / "python" / "tests" / "mpi_bad_input.py", cluster_file, library)
    assert rc == 0, out
    assert "rank 0: bad input ok" in out and "rank 1: bad input ok" in out, out
