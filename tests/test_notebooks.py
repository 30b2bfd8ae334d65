"""The example notebooks: each ``examples/*.ipynb`` is the jupytext rendering of its percent-format
``.py`` (the ``.py`` is the source; regenerate with ``jupytext --to ipynb examples/NAME.py``), and
each runs end to end at tiny settings, writing a figure and finite denoised arrays with a
non-zero posterior std."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"microscopy_quickstart": "microscopy_quickstart.png", "microscopy_3d": "microscopy_3d.png"}


def _cells(nb):
    return [(c["cell_type"], c["source"] if isinstance(c["source"], str) else "".join(c["source"]))
            for c in nb["cells"]]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_in_sync_with_its_py(name):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    py, ipynb = ROOT / "examples" / f"{name}.py", ROOT / "examples" / f"{name}.ipynb"
    fresh = jupytext.reads(py.read_text(), fmt="py:percent")
    committed = nbformat.read(ipynb, as_version=4)
    assert _cells(committed) == _cells(fresh), (
        f"{ipynb.name} is out of date: run `jupytext --to ipynb examples/{name}.py`")
    assert not any(c.get("outputs") for c in committed["cells"]), f"{ipynb.name}: commit it without outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_at_tiny_settings(name, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "MPLBACKEND": "Agg", "AMBIENT_MED_TINY": "1", "AMBIENT_MED_STEPS": "4",
           "AMBIENT_MED_OUT": str(out), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"{name}: {seconds:.1f} s")
    assert "fitted noise model" in r.stdout and "poisson-gaussian" in r.stdout
    fig = out / NOTEBOOKS[name]
    assert fig.is_file() and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000
    assert (out / "run" / "prior.safetensors").is_file()
    arrays = np.load(out / "denoised.npz")
    for key in ("noisy", "mean", "samples", "std", "clean"):
        assert np.all(np.isfinite(arrays[key])), key
    assert arrays["mean"].shape == arrays["noisy"].shape == arrays["std"].shape
    assert arrays["samples"].shape[1:] == arrays["noisy"].shape and len(arrays["samples"]) >= 2
    assert float(arrays["std"].max()) > 0 and float(arrays["std"].mean()) > 0
    # the output folder is the user's: a second run without AMBIENT_MED_OVERWRITE=1 is refused
    again = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "AMBIENT_MED_OVERWRITE" in again.stderr
