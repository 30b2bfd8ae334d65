"""Where things are: the repository and the real data sets shared beside it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]          # the repository
SHARED_DATA = ROOT.parent / "shared" / "data"       # real data sets, beside the repository
FMD = SHARED_DATA / "microscopy" / "fmd_confocal_bpae_b"
MRI_DATA = SHARED_DATA / "mri"


def shared_data() -> Path:
    """``$AMBIENT_MED_SHARED_DATA`` when set (the tests' rule), else ``SHARED_DATA``."""
    env = os.environ.get("AMBIENT_MED_SHARED_DATA")
    return Path(env) if env else SHARED_DATA
