"""The analysis as a command: `rfaas-analysis` (analysis/pyproject.toml), and what latency.py
says when its packages are missing (no advice to pip-install into the system's Python)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCRIPT


def test_without_its_packages_latency_py_points_to_a_virtual_environment():
    # -S: no site-packages, so numpy/pandas/matplotlib cannot be imported.
    r = subprocess.run([sys.executable, "-S", str(SCRIPT), "x.csv"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "scripts/setup.sh" in r.stderr, r.stderr
    assert "pip install ./analysis" in r.stderr, r.stderr
    assert "pip install -r" not in r.stderr, r.stderr


def test_the_installed_command_is_the_same_program():
    exe = Path(sys.prefix) / "bin" / "rfaas-analysis"
    if not exe.exists():
        msg = f"{exe} is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: rfaas-analysis "), r.stdout
    want = subprocess.run([sys.executable, str(SCRIPT), "--help"],
                          capture_output=True, text=True, timeout=60).stdout
    assert r.stdout.split("\n", 2)[2] == want.split("\n", 2)[2]
