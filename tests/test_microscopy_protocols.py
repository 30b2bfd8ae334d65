"""Microscopy protocols: a .tif or a folder of frames chooses microscopy-2d (a Z stack named
by its metadata: microscopy-3d) and trains end to end with Poisson-Gaussian stabilisation."""

import numpy as np
import pytest
from _cli_fixtures import cli
from _micro_fixtures import write_cells_tif

from ambient_med.prior import AmbientPrior
from ambient_med.training.autoprotocol import choose_protocol
from ambient_med.training.config import load_protocol


def test_microscopy_protocols_load_with_tiff_reader_and_poisson_gaussian():
    for name, dims in (("microscopy-2d", 2), ("microscopy-3d", 3)):
        p = load_protocol(name)
        assert p.data.reader == "tiff" and p.data.noise_model == "poisson-gaussian"
        assert p.data.spatial_dims == dims and len(p.data.patch_size) == dims


def test_protocol_chosen_from_microscopy_data(tmp_path):
    plain = write_cells_tif(tmp_path / "planes.tif", n=4, size=16)
    zstack = write_cells_tif(tmp_path / "zstack.tif", n=4, size=16, axes="ZYX")
    assert choose_protocol([plain])[0] == "microscopy-2d"      # page stack without metadata: planes
    assert choose_protocol([zstack])[0] == "microscopy-3d"
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((16, 16), 10 * i, np.uint8)).save(frames / f"f{i}.png")
    assert choose_protocol([frames])[0] == "microscopy-2d"


def test_train_on_a_tif_end_to_end(tmp_path):
    tif = write_cells_tif(tmp_path / "cells.tif", n=4, size=64)
    r = cli("train", "--data", tif, "--out", tmp_path / "run", "--sigma-n", "auto", "--steps", "3",
            "--batch-size", "2", "--previews", "0", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "protocol: microscopy-2d" in r.stderr and "noise model: poisson-gaussian" in r.stderr
    assert "not supported" not in r.stderr
    prior = AmbientPrior.load(tmp_path / "run" / "prior.safetensors")
    assert prior.metadata.noise["name"] == "poisson-gaussian" and prior.metadata.training["steps"] == 3
    assert prior.rotation_invariant       # cells have no "up": posterior means average quarter turns
    # on a CPU the data choose the CPU preset, and the first lines say so
    assert "protocol: microscopy-2d-cpu (chosen from the data" in r.stderr and "on a CPU" in r.stderr
    assert tuple(prior.metadata.network["features"]) == (16, 32, 32)
    # 3 steps: the warm-up is cut to a tenth of the run, and said
    assert "learning-rate warm-up: 1 steps (a tenth of the run; the protocol says 100)" in r.stderr


def test_a_named_protocol_is_kept_on_a_cpu(tmp_path):
    """Only a protocol chosen from the data is swapped for its CPU preset; a named one is the user's."""
    tif = write_cells_tif(tmp_path / "cells.tif", n=4, size=64)
    r = cli("train", "--data", tif, "--out", tmp_path / "run", "--protocol", "microscopy-2d", "--steps", "10",
            "--batch-size", "2", "--previews", "0", "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "microscopy-2d-cpu" not in r.stderr + r.stdout
    assert "learning-rate warm-up: 1 steps" in r.stderr
    prior = AmbientPrior.load(tmp_path / "run")
    assert tuple(prior.metadata.network["features"]) == (32, 64, 64)
    assert prior.metadata.noise["a"] == pytest.approx(2.0, rel=0.3)


def test_estimate_noise_answers_with_the_model_train_uses(tmp_path):
    """A TIFF stack gets the Poisson-Gaussian fit train makes, in counts and photons; the model can
    be asked for by name, and is refused for data that are not intensities."""
    import json

    import nibabel as nib
    import numpy as np
    from _cli_fixtures import assert_user_error, cli
    from _micro_fixtures import A, write_cells_tif

    tif = write_cells_tif(tmp_path / "cells.tif", n=6, size=64)
    r = cli("estimate-noise", tif)
    assert r.exit_code == 0, r.stderr
    assert "poisson-gaussian" in r.stdout and "counts per photon" in r.stdout and "photons" in r.stdout
    d = json.loads(cli("estimate-noise", tif, "--json").stdout)
    assert d["noise_model"] == "poisson-gaussian" and d["frames"] == 6
    assert abs(d["a"] - A) < 0.25 * A and d["photons_at_median"] > 0
    np.save(tmp_path / "cells.npy", np.asarray(__import__("tifffile").imread(tif)))
    d = json.loads(cli("estimate-noise", tmp_path / "cells.npy", "--noise-model", "poisson-gaussian",
                       "--json").stdout)
    assert d["noise_model"] == "poisson-gaussian"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2), np.float32), np.eye(4)), str(tmp_path / "v.nii"))
    assert_user_error(cli("estimate-noise", tmp_path / "v.nii", "--noise-model", "poisson-gaussian"),
                      "v.nii", "intensity")
