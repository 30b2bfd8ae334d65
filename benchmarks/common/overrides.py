"""``--loss KEY=VALUE`` overrides for the benchmarks that train priors (fmd.py, magnitude_mri.py)."""

from __future__ import annotations

import yaml

from ambient_med.diffusion.losses import LossConfig


def loss_overrides(pairs: list[str]) -> dict:
    """``["sure_fraction=0.5", ...]`` -> typed values (YAML scalars)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in LossConfig.__dataclass_fields__:
            raise SystemExit(f"--loss {pair!r}: expected KEY=VALUE with a LossConfig field as KEY")
        out[key] = yaml.safe_load(value)
    return out
