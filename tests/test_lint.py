"""The code passes the project's lint (ruff, configured in pyproject.toml): unused names,
undefined names, import order. Part of the default test run, so CI runs it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff comes with the [test] extra")
    ruff = shutil.which("ruff") or None
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    r = subprocess.run([*cmd, "check", "--no-cache", "ambient_med", "tests", "benchmarks", "examples"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
