"""What a training run carries from step to step, and how it is saved and restored: the model,
its EMA, the optimiser, the noise generator, the below-``sigma_n`` cache and the step; the guard
that refuses to save anything computed from a non-finite loss (docs/design.md section 7).

A checkpoint holds every rank's generator and cache, so that a resumed run (also under DDP)
continues bit for bit; it is written atomically by :func:`~.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..diffusion.distill import CleanCache
from ..errors import AmbientMedError
from .checkpoint import list_checkpoints, load_latest, save_checkpoint


class NonFiniteLossError(AmbientMedError, RuntimeError):
    """The loss or a gradient became NaN or infinite; nothing from the bad steps was saved."""


def _to_cpu(d: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in d.items()}


def _gather(obj, world: int) -> list:
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


class RunState:
    """The state of one rank's run. ``run_dir`` None: nothing is written (in-memory runs)."""

    def __init__(self, model, ema, opt, gen: torch.Generator, cache: CleanCache | None, cfg, loss_cfg,
                 run_dir: Path | None, rank: int, world: int, device: torch.device):
        self.model, self.ema, self.opt, self.gen, self.cache = model, ema, opt, gen, cache
        self.cfg, self.loss_cfg, self.rank, self.world, self.device = cfg, loss_cfg, rank, world, device
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints" if run_dir is not None else None
        self.step = 0
        # NaN/inf guard without a GPU sync per step: a flag accumulated on the device, read at
        # the log, checkpoint and end steps (the same steps on every rank), always before a write
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.checked = 0

    def restore(self) -> None:
        """Continue from the newest checkpoint in ``run_dir`` (if any)."""
        state = load_latest(self.ckpt_dir, map_location=self.device) if self.ckpt_dir is not None else None
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        gens = state["generator"]
        self.gen.set_state(gens[self.rank if self.rank < len(gens) else 0].cpu())
        self.step = self.checked = int(state["step"])
        if self.cache is not None and "cache" in state:
            caches = state["cache"]
            own = caches[self.rank if self.rank < len(caches) else 0]
            self.cache.load_state_dict({k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                                        for k, v in own.items()})

    def watch(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.nonfinite |= ~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm.detach()))

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if any step since the last check was not finite."""
        flag = self.nonfinite.float().reshape(1)
        if self.world > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            ck = list_checkpoints(self.ckpt_dir) if self.ckpt_dir is not None else []
            kept = (f"the last good checkpoint, step {ck[-1][0]}, is kept in {self.ckpt_dir}; lower "
                    f"train.lr in {self.run_dir / 'config.yaml'} and continue with --resume"
                    if ck else "no checkpoint was written; lower the learning rate (train.lr)")
            raise NonFiniteLossError(
                f"training stopped: the loss or gradient became non-finite (NaN or inf) between "
                f"steps {self.checked + 1} and {self.step}; nothing from those steps was saved; {kept}")
        self.checked = self.step

    def checkpoint(self) -> None:
        """Check the guard, then write a checkpoint (rank 0; every rank's generator and cache)."""
        self.check_finite()
        if self.ckpt_dir is None:
            return
        gens = [self.gen.get_state()]
        caches = [self.cache.state_dict()] if self.cache is not None else None
        if self.world > 1:
            gens = _gather(self.gen.get_state().cpu(), self.world)
            if self.cache is not None:  # every rank's own cache, so that each resumes its own
                caches = _gather(_to_cpu(self.cache.state_dict()), self.world)
        if self.rank == 0:
            extra = {"cache": caches} if caches is not None else {}
            save_checkpoint({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                             "optimizer": self.opt.state_dict(), "generator": gens, "step": self.step,
                             **extra, "train_config": json.dumps(self.cfg.to_dict()),
                             "loss_config": json.dumps(asdict(self.loss_cfg))},
                            self.ckpt_dir, self.step, self.cfg.keep_checkpoints)
