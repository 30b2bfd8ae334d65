"""Never lose a run: SIGTERM/Ctrl-C save a checkpoint and exit cleanly; after ``kill -9``,
``--resume`` continues from the last checkpoint with the same step count and optimizer state
(bit-for-bit the run that was never interrupted)."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from _cli_fixtures import cli, kill_9_after_checkpoint, start_cli, tiny_data, tiny_protocol, wait_for_checkpoint

from ambient_med.prior import AmbientPrior
from ambient_med.training.checkpoint import list_checkpoints

STEPS = 40


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    return {"tmp": tmp, "data": tiny_data(tmp / "data", n_files=1, slices=8),
            "proto": tiny_protocol(tmp, train={"steps": STEPS, "checkpoint_every": 4,
                                               "batch_size": 2, "keep_checkpoints": 2})}


def _args(env, out, *extra):
    return ["train", "--data", env["data"], "--out", out, "--protocol", env["proto"],
            "--sigma-n", "0.05", "--previews", "0", "--no-progress", *extra]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_and_exits_cleanly(env, sig):
    out = env["tmp"] / f"stop_{sig.name}"
    proc = start_cli(*_args(env, out, "--steps", "100000"))
    wait_for_checkpoint(out, proc, 4)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, (stdout, stderr)
    assert "Traceback" not in stderr + stdout
    assert "interrupted at step" in stderr and "--resume" in stderr
    step = int(stderr.split("interrupted at step ")[1].split(":")[0])
    ck = list_checkpoints(out / "checkpoints")
    assert ck[-1][0] == step                                 # saved at the step it stopped
    state = torch.load(ck[-1][1], weights_only=True)
    assert state["step"] == step
    assert not (out / "prior.safetensors").exists()          # an unfinished run is not a prior


def test_kill_9_then_resume_continues_exactly(env):
    out = env["tmp"] / "killed"
    kill_9_after_checkpoint(out, _args(env, out), 8)
    assert not (out / "prior.safetensors").exists()
    k, path = list_checkpoints(out / "checkpoints")[-1]
    assert 8 <= k < STEPS
    saved = torch.load(path, weights_only=True)
    opt_steps = {float(s["step"]) for s in saved["optimizer"]["state"].values()}
    assert opt_steps == {float(k)}                           # AdamW state is that of step k
    rows_before = len((out / "metrics.jsonl").read_text().splitlines())

    r = cli(*_args(env, out, "--resume"))
    assert r.exit_code == 0, (r.stdout, r.stderr)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = [row["step"] for row in rows[rows_before:]]
    assert resumed == list(range(k + 1, STEPS + 1))          # picks up right after the checkpoint

    ref = env["tmp"] / "uninterrupted"
    r = cli(*_args(env, ref))
    assert r.exit_code == 0, r.stderr
    a = AmbientPrior.load(out / "prior.safetensors").model.state_dict()
    b = AmbientPrior.load(ref / "prior.safetensors").model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert AmbientPrior.load(out / "prior.safetensors").metadata.training["steps"] == STEPS
