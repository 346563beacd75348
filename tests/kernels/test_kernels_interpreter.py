"""Runs ``tests/kernels/interpreted/*`` in child processes with TRITON_INTERPRET=1 (see that conftest)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
FILES = sorted(p.name for p in (HERE / "interpreted").glob("test_*.py"))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="collected directly in this process")
@pytest.mark.parametrize("name", FILES)
def test_interpreted(name):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(HERE / "interpreted" / name)]
    proc = subprocess.run(cmd, cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
