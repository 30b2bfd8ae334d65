"""The names ``ambient_med`` promises are there, are the real objects, and import lazily."""

import subprocess
import sys

import ambient_med


def test_every_public_name_resolves_to_its_module_object():
    import importlib

    for name, module in ambient_med._PUBLIC.items():
        assert getattr(ambient_med, name) is getattr(importlib.import_module(module), name), name
    assert set(ambient_med.__all__) >= {"AmbientPrior", "train", "TrainConfig", "LossConfig", "NetworkConfig",
                                        "sample", "sample_dc", "sample_dps", "estimate_noise", "reconstruct"}


def test_import_is_light():
    """``import ambient_med`` (the CLI's --help) does not pull in torch."""
    code = "import sys, ambient_med; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
