"""The MRI fixtures of the tests: the shared-data locator and the package's synthetic MRI
(:mod:`ambient_med.synthetic.mri`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ambient_med.synthetic.mri import (  # noqa: F401 (the tests import them from here)
    coil_covariance,
    coil_maps,
    correlated_noise,
    multicoil_kspace,
    phantom,
)
from ambient_med.synthetic.mri import write_knee_like as write_fastmri  # noqa: F401


def shared_data() -> Path:
    """``../shared/data`` beside the project root, or ``$AMBIENT_MED_SHARED_DATA``; skip if absent."""
    env = os.environ.get("AMBIENT_MED_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "mri").is_dir():
        pytest.skip(f"real data not found at {root} (set AMBIENT_MED_SHARED_DATA)")
    return root
