"""Random patches are a pure function of (seed, epoch, item): the same item gives the same
patch in every process, DataLoader workers never replay each other's offsets, and a patch
protocol resumes bit-for-bit after ``kill -9``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli_fixtures import cli, kill_9_after_checkpoint, tiny_data, tiny_protocol

from ambient_med.prior import AmbientPrior
from ambient_med.training.checkpoint import list_checkpoints
from ambient_med.training.loop import ResumableSampler

STEPS = 24


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("patches")
    return {"tmp": tmp, "data": tiny_data(tmp / "data", n_files=1, slices=8),
            "proto": tiny_protocol(tmp, "patchy", data={"patch_size": [8, 8]},
                                   train={"steps": STEPS, "checkpoint_every": 4, "batch_size": 2,
                                          "keep_checkpoints": 2})}


def _args(env, out, *extra):
    return ["train", "--data", env["data"], "--out", out, "--protocol", env["proto"],
            "--sigma-n", "0.05", "--previews", "0", "--no-progress", "--device", "cpu", *extra]


def test_patch_protocol_resumes_bit_for_bit_after_kill_9(env):
    out = env["tmp"] / "killed"
    kill_9_after_checkpoint(out, _args(env, out), 8)
    k = list_checkpoints(out / "checkpoints")[-1][0]
    assert 8 <= k < STEPS
    rows_before = len((out / "metrics.jsonl").read_text().splitlines())

    r = cli(*_args(env, out, "--resume"))           # a new process: a fresh global RNG
    assert r.exit_code == 0, (r.stdout, r.stderr)
    ref = env["tmp"] / "uninterrupted"
    r = cli(*_args(env, ref))
    assert r.exit_code == 0, r.stderr
    a = AmbientPrior.load(out / "prior.safetensors").model.state_dict()
    b = AmbientPrior.load(ref / "prior.safetensors").model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the losses after the checkpoint are those of the uninterrupted run, step by step
    resumed = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][rows_before:]
    straight = {row["step"]: row["loss"] for row in
                map(json.loads, (ref / "metrics.jsonl").read_text().splitlines())}
    assert [row["step"] for row in resumed] == list(range(k + 1, STEPS + 1))
    assert all(row["loss"] == straight[row["step"]] for row in resumed)


def test_workers_draw_distinct_offsets_that_any_process_reproduces(tmp_path):
    from ambient_med.training.datasets import DrawKey, build_training_set
    # 8 identical images whose pixels encode their position: a patch reveals its offset
    img = np.arange(32 * 32, dtype=np.float32).reshape(32, 32) + 1
    np.save(tmp_path / "same.npy", np.stack([img] * 8))
    ds, _ = build_training_set([tmp_path / "same.npy"], sigma_n=0.0, patch_size=(8, 8))
    sampler = ResumableSampler(len(ds), seed=3, keyed=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)
    it = iter(loader)
    batches = [next(it)["image"] for _ in range(4)]          # workers 0, 1, 0, 1
    corners = torch.cat(batches)[:, 0, 0, 0]
    assert len(set(corners.tolist())) > 8                    # not one worker's offsets twice
    assert not torch.equal(batches[0], batches[1])
    keys = list(zip(range(16), iter(ResumableSampler(len(ds), seed=3, keyed=True))))
    here = torch.stack([ds[key]["image"] for _, key in keys])
    assert torch.equal(here, torch.cat(batches))             # the same patches in this process
    assert torch.equal(ds[DrawKey(2, 5, 3)]["image"], ds[DrawKey(2, 5, 3)]["image"])
    assert not torch.equal(ds[DrawKey(2, 5, 3)]["image"], ds[DrawKey(2, 6, 3)]["image"])


def test_one_image_fills_an_epoch_of_distinct_patches(tmp_path):
    """An epoch is a number of patch draws: one image gives MIN_EPOCH_DRAWS draws of distinct
    patches, seeded by (seed, epoch, draw), not one item repeated."""
    from ambient_med.training.datasets import MIN_EPOCH_DRAWS, DrawKey, build_training_set
    img = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) + 1
    np.save(tmp_path / "one.npy", img)
    ds, info = build_training_set([tmp_path / "one.npy"], sigma_n=0.0, patch_size=(8, 8))
    assert info.n_items == 1 and len(ds) == MIN_EPOCH_DRAWS
    corners = [float(ds[DrawKey(i, 0, 7)]["image"][0, 0, 0]) for i in range(64)]
    assert len(set(corners)) > 48                              # 57^2 offsets: few repeats
    assert torch.equal(ds[DrawKey(63, 1, 7)]["image"], ds[DrawKey(63, 1, 7)]["image"])
    with pytest.raises(IndexError):
        ds[DrawKey(len(ds), 0, 7)]
    # whole images (no patches): one pass over the items is an epoch, as before
    whole, _ = build_training_set([tmp_path / "one.npy"], sigma_n=0.0)
    assert len(whole) == 1
