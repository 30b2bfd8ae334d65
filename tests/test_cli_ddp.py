"""Distributed data parallel for real: two CPU processes on the gloo backend, joined through
the environment variables that torchrun sets, end with identical weights; under torchrun the
CLI trains with one writer of checkpoints, metrics and the prior."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from _cli_fixtures import ddp_stop_worker, ddp_worker, free_port, subprocess_env, tiny_data, tiny_protocol

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return {"tmp": tmp, "data": tiny_data(tmp / "data", n_files=1, slices=8),
            "proto": tiny_protocol(tmp, train={"steps": 6, "batch_size": 2, "checkpoint_every": 3})}


def test_two_gloo_ranks_hold_identical_weights(env):
    dump = env["tmp"] / "dump"
    dump.mkdir()
    out = env["tmp"] / "run_spawn"
    mp.start_processes(ddp_worker, args=(2, free_port(), str(env["data"]), str(env["proto"]),
                                         str(out), str(dump)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 6
    for key in ("model", "ema"):
        assert r0[key].keys() == r1[key].keys()
        for name in r0[key]:
            assert torch.equal(r0[key][name], r1[key][name]), (key, name)
    # the weights did train (they differ from the shared initialisation)
    torch.manual_seed(0)
    init = EDMDenoiser(NetworkConfig(channels=2, features=(8, 16), attention_levels=(False, False),
                                     norm_num_groups=4, num_head_channels=8)).state_dict()
    moved = [n for n in init if n in r0["model"] and init[n].shape == r0["model"][n].shape
             and not torch.equal(init[n], r0["model"][n])]
    assert len(moved) > len(init) // 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))   # one writer: no duplicated rows


def test_torchrun_cli(env):
    out = env["tmp"] / "run_torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "ambient_med", "train",
           "--data", str(env["data"]), "--out", str(out), "--protocol", str(env["proto"]),
           "--sigma-n", "0.05", "--device", "cpu", "--previews", "0", "--no-progress"]
    p = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    assert p.stdout.count("prior: ") == 1                   # rank 0 reports, once
    assert (out / "prior.safetensors").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_000000003.pt", "step_000000006.pt"]


def test_sigterm_to_one_rank_stops_all_ranks_at_the_same_step(env):
    """A signal that reaches only one rank (or the ranks at different steps) must not leave the
    others waiting in a collective: all ranks agree to stop after the same step and rank 0 saves."""
    import os
    import signal
    import time

    from ambient_med.training.checkpoint import list_checkpoints

    dump = env["tmp"] / "dump_stop"
    dump.mkdir()
    out = env["tmp"] / "run_stop"
    ctx = mp.start_processes(ddp_stop_worker, args=(2, free_port(), str(env["data"]),
                                                    str(env["proto"]), str(out), str(dump)),
                             nprocs=2, join=False, start_method="spawn")
    t0 = time.time()
    while not (list_checkpoints(out / "checkpoints") and list_checkpoints(out / "checkpoints")[-1][0] >= 3):
        assert time.time() - t0 < 120, "no checkpoint"
        time.sleep(0.1)
    os.kill(ctx.processes[1].pid, signal.SIGTERM)
    deadline = time.time() + 60
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("ranks did not stop together (a collective is waiting)")
    s0, s1 = (json.loads((dump / f"stop{r}.json").read_text()) for r in (0, 1))
    assert s0["interrupted"] and s1["interrupted"] and s0["step"] == s1["step"]
    assert list_checkpoints(out / "checkpoints")[-1][0] == s0["step"]
