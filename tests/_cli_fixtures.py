"""Shared helpers for the CLI tests: a tiny protocol, tiny phantom files, runners.

Everything is sized to keep the CLI tests well under three minutes on two busy CPU cores:
16x16 images, a two-level UNet with 8/16 features, a handful of steps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from ambient_med.cli import app

ROOT = Path(__file__).resolve().parents[1]
TRUE_SIGMA = 0.05


def tiny_protocol(folder: Path, name: str = "tiny", **sections) -> Path:
    """A valid protocol file for 16x16 two-channel data; ``sections`` update its sections."""
    p = {
        "name": name,
        "description": "test protocol",
        "data": {"reader": "fastmri", "kind": "complex", "spatial_dims": 2, "coil_maps": True,
                 "sigma_n": "auto", "num_workers": 0},
        "network": {"features": [8, 16], "attention_levels": [False, False],
                    "num_res_blocks": 1, "norm_num_groups": 4, "num_head_channels": 8},
        "loss": {"objective": "ambient+consistency", "consistency_start": 0.5},
        "train": {"steps": 4, "batch_size": 4, "lr": 1e-3, "lr_warmup": 1, "log_every": 1,
                  "checkpoint_every": 2, "keep_checkpoints": 2, "mixed_precision": False},
        "sampler": {"sampler": "heun", "steps": 2, "mode": "full", "previews": 2},
    }
    for sec, values in sections.items():
        p[sec].update(values)
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def tiny_data(folder: Path, n_files: int = 1, slices: int = 8, size: int = 16, seed: int = 0) -> Path:
    """Noisy 4-coil fastMRI phantom files (k-space noise std TRUE_SIGMA) in ``folder``."""
    from ambient_med.synthetic.phantoms import make_phantom_dataset

    make_phantom_dataset(folder, n_files=n_files, slices=slices, size=size, coils=4,
                         sigma=TRUE_SIGMA, seed=seed)
    return Path(folder)


@contextlib.contextmanager
def one_thread():
    """Tiny networks on a shared 2-core machine: one intra-op thread is 3x faster than two
    (OpenMP threads spin against the other processes). Restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def cli(*args: str):
    """Run ``ambient-med ARGS`` in-process; returns typer's Result (stdout, stderr, exit_code)."""
    with one_thread():
        return CliRunner().invoke(app, [str(a) for a in args])


# the run's own progress lines (what it chose, before training) may precede an error on stderr
INFO_PREFIXES = ("protocol: ", "noise model: ")


def assert_user_error(result, *words: str) -> str:
    """Exit code 2, one error line on stderr that names the cause, no traceback anywhere; the
    only other stderr lines allowed are the run's informational lines (``INFO_PREFIXES``)."""
    err = result.stderr
    assert result.exit_code == 2, (result.exit_code, result.stdout, err, result.exception)
    assert "Traceback" not in err + result.stdout
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(INFO_PREFIXES)]
    assert len(lines) == 1, err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def start_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ambient_med", *map(str, args)],
                            env=subprocess_env(), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, min_step: int, timeout: float = 90) -> int:
    """Poll ``run/checkpoints`` until a checkpoint of at least ``min_step`` exists."""
    from ambient_med.training.checkpoint import list_checkpoints

    t0 = time.time()
    while time.time() - t0 < timeout:
        ck = list_checkpoints(run / "checkpoints")
        if ck and ck[-1][0] >= min_step:
            return ck[-1][0]
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.communicate()}")
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    raise AssertionError("no checkpoint appeared in time")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world: int, port: int, data: str, protocol: str, out: str,
               dump: str) -> None:
    """One rank of the DDP test: join through the environment variables torchrun sets, train
    through ``run_training``, and save this rank's trained and EMA weights for comparison."""
    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import ambient_med.tasks.train as run

    seen = {}
    inner = run.train

    def spy(model, *a, **k):  # train() updates ``model`` in place: keep a handle on it
        seen["model"] = model
        seen["data"] = a[0]
        return inner(model, *a, **k)

    run.train = spy
    res = run.run_training([data], out, protocol=protocol, sigma_n=TRUE_SIGMA, device="cpu",
                           handle_signals=False, previews=0)
    torch.save({"model": seen["model"].state_dict(), "ema": res.model.state_dict(),
                "step": res.step, "world": torch.distributed.get_world_size()},
               Path(dump) / f"rank{rank}.pt")
    torch.distributed.barrier()  # see ddp_stop_worker
    torch.distributed.destroy_process_group()


def ddp_stop_worker(rank: int, world: int, port: int, data: str, protocol: str, out: str,
                    dump: str) -> None:
    """One rank of the DDP stop test: a long run with signal handling; records where it stopped."""
    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from ambient_med.tasks.train import run_training

    res = run_training([data], out, protocol=protocol, sigma_n=TRUE_SIGMA, device="cpu",
                       steps=100000, handle_signals=True, previews=0)
    Path(dump, f"stop{rank}.json").write_text(
        f'{{"step": {res.step}, "interrupted": {str(res.interrupted).lower()}}}')
    # both ranks reach here before either tears down gloo: a peer vanishing mid-teardown can abort
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def kill_9_after_checkpoint(out: Path, cli_args: list[str], min_step: int) -> None:
    """Start ``ambient-med CLI_ARGS``, wait for a checkpoint at ``min_step`` or later, then
    ``kill -9`` it (no handler runs: what survives is only what was written atomically)."""
    proc = start_cli(*cli_args)
    wait_for_checkpoint(out, proc, min_step)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
