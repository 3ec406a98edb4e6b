"""Shared helpers: run latency.py as a subprocess, check PNG files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "latency.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_script(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )


def assert_valid_png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import numpy as np

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name}: not a PNG signature"
    assert len(data) > 5_000, f"{path.name}: only {len(data)} bytes"
    img = mpimg.imread(path)  # decodes the whole image (Pillow)
    assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] >= 300, f"{path.name}: shape {img.shape}"
    assert float(np.asarray(img[..., :3]).std()) > 0.01, f"{path.name}: blank image"


@pytest.fixture
def run():
    return run_script
