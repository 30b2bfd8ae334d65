"""Every command answers every input: broken files of every reader through every command.

Rows: (reader, fault, command). A row either fails the way a user error must (exit code 2, one
error line that names the file, no traceback) or succeeds cleanly where success is the right
answer (``SUCCEEDS``: grey images saved as RGB, frames of mixed sizes, complex NIfTI). The files
are tiny (``_bad_files``) and the priors untrained, so the whole table runs in seconds. The
prior-file and existing-output rows cover ``info``, ``sample`` and every ``--prior`` / ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _bad_files import FAULTS, READERS, applicable, make
from _cli_fixtures import INFO_PREFIXES, cli, tiny_protocol

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.prior import AmbientPrior, PriorMetadata

COMMANDS = ("estimate-noise", "train", "denoise", "audit", "recon")

# (reader, fault) -> commands for which the input is fine and the command must succeed
SUCCEEDS = {
    ("tif", "grey_rgb"): {"denoise", "audit"},      # train, estimate-noise: one 16x16 frame is too
    ("png", "grey_rgb"): {"estimate-noise", "train", "audit", "denoise"},  # little for a PG fit
    ("png", "mixed"): {"estimate-noise", "train", "denoise"},      # audit needs one size (refused)
    ("nii", "dtype"): {"estimate-noise", "train"},                 # complex NIfTI: complex images
}

ROWS = [(r, f, c) for r in READERS for f in FAULTS if applicable(r, f) for c in COMMANDS]


def _prior(folder: Path, channels: int, kind: str) -> Path:
    net = NetworkConfig(channels=channels, sigma_data=0.5, features=(8, 16), attention_levels=(False, False),
                        norm_num_groups=4, num_head_channels=8)
    torch.manual_seed(0)
    prior = AmbientPrior(EDMDenoiser(net), PriorMetadata(
        network=net.to_dict(), data_kind=kind, scale=100.0, sigma_n_data=5.0, sigma_n_model=0.05,
        training={"image_shape": [16, 16]}))
    return prior.save(folder / f"{kind}.safetensors")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table")
    return {"tmp": tmp, "real": _prior(tmp, 1, "intensity"), "complex": _prior(tmp, 2, "complex"),
            "proto": tiny_protocol(tmp, "any", data={"reader": "auto", "kind": "auto", "patch_size": [8, 8]},
                                   train={"steps": 1, "batch_size": 2}, sampler={"previews": 0}),
            "n": iter(range(10**6))}


def _args(env, command: str, path: Path) -> tuple:
    out = env["tmp"] / f"out{next(env['n'])}"
    suffix = "".join(path.suffixes) or ".tif"
    return {
        "estimate-noise": ("estimate-noise", path),
        "train": ("train", "--data", path, "--out", out, "--protocol", env["proto"], "--sigma-n", "auto",
                  "--no-progress"),
        "denoise": ("denoise", "--prior", env["real"], "--input", path, "--out", str(out) + suffix,
                    "--no-progress"),
        "audit": ("audit", "--prior", env["real"], "--data", path, "--n-samples", "2", "--steps", "2"),
        "recon": ("recon", "--prior", env["complex"], "--data", path, "--out", str(out) + ".npy",
                  "--samples", "1", "--steps", "2", "--no-progress"),
    }[command]


def _error_lines(result, data: Path | None) -> list[str]:
    """stderr lines that are not the run's informational lines (``INFO_PREFIXES``, and recon's
    description of the k-space it read, which names the file and its slices)."""
    return [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith(INFO_PREFIXES)
            and not (data is not None and ln.startswith(f"{data}: ") and "slice(s)" in ln)]


def assert_one_line_naming(result, name: str, data: Path | None = None) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = _error_lines(result, data)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("reader,fault,command", ROWS, ids=["-".join(r) for r in ROWS])
def test_broken_input(env, reader, fault, command):
    path = make(reader, fault, env["tmp"] / "files")
    r = cli(*_args(env, command, path))
    if command in SUCCEEDS.get((reader, fault), ()):
        assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
        assert "Traceback" not in r.stderr + r.stdout
    else:
        assert_one_line_naming(r, path.name.split(".")[0], path)     # a .cfl error may name its .hdr


PRIOR_FAULTS = ("truncated", "empty", "missing", "not_safetensors", "folder_without_prior")


def _broken_prior(env, fault: str) -> Path:
    d = env["tmp"] / f"prior-{fault}"
    d.mkdir(exist_ok=True)
    p = d / "prior.safetensors"
    if fault == "truncated":
        data = Path(env["real"]).read_bytes()
        p.write_bytes(data[: len(data) // 3])
    elif fault == "empty":
        p.write_bytes(b"")
    elif fault == "not_safetensors":
        p.write_bytes(b"\x80\x04\x95 this is a pickle, not a prior" * 8)
    elif fault == "folder_without_prior":
        return d
    return p


PRIOR_COMMANDS = ("info", "sample", "denoise", "audit", "recon")
PRIOR_ROWS = [(f, c) for f in PRIOR_FAULTS for c in PRIOR_COMMANDS]


@pytest.mark.parametrize("fault,command", PRIOR_ROWS, ids=["-".join(r) for r in PRIOR_ROWS])
def test_broken_prior(env, fault, command):
    prior = _broken_prior(env, fault)
    good_image = make("npy", "constant", env["tmp"] / "files")      # never read: the prior fails first
    kspace = make("h5", "constant", env["tmp"] / "files")
    out = env["tmp"] / f"pout{next(env['n'])}"
    args = {"info": ("info", prior),
            "sample": ("sample", "--prior", prior, "--out", str(out) + ".npy", "--n", "1", "--steps", "2"),
            "denoise": ("denoise", "--prior", prior, "--input", good_image, "--out", str(out) + ".npy"),
            "audit": ("audit", "--prior", prior, "--data", good_image),
            "recon": ("recon", "--prior", prior, "--data", kspace, "--out", str(out) + ".npy")}[command]
    assert_one_line_naming(cli(*args), "prior")


OUTPUT_ROWS = ("train", "sample", "denoise", "audit", "recon")


@pytest.mark.parametrize("command", OUTPUT_ROWS)
def test_existing_output_is_never_overwritten(env, command):
    """Each command refuses to replace an existing output, names it and says how (--overwrite)."""
    tmp = env["tmp"] / f"existing-{command}"
    tmp.mkdir()
    image = make("npy", "nan", tmp)                     # a broken input: the output is checked first
    out = {"train": tmp / "run", "sample": tmp / "s.npy", "denoise": tmp / "d.npy",
           "audit": tmp / "a.json", "recon": tmp / "r.npy"}[command]
    if command == "train":
        out.mkdir()
        (out / "keep.txt").write_text("a user's file")
    else:
        out.write_bytes(b"a user's file")
    args = {"train": ("train", "--data", image, "--out", out, "--protocol", env["proto"], "--no-progress"),
            "sample": ("sample", "--prior", env["real"], "--out", out, "--n", "1", "--steps", "2"),
            "denoise": ("denoise", "--prior", env["real"], "--input", image, "--out", out),
            "audit": ("audit", "--prior", env["real"], "--data", image, "--out", out),
            "recon": ("recon", "--prior", env["complex"], "--data", make("h5", "nan", tmp), "--out", out)}[command]
    r = cli(*args)
    assert_one_line_naming(r, out.name)
    assert "overwrite" in r.stderr or "resume" in r.stderr
    kept = out / "keep.txt" if command == "train" else out
    assert kept.read_bytes() == b"a user's file"
