"""Speed options of the training loop, each a ``train.*`` protocol key (``TrainConfig``) that acts
on the step and leaves the math alone (``tests/test_speed_options.py`` checks both):

- ``mixed_precision`` (bf16 autocast around the loss, CUDA only; the step is ``train.py``'s),
- ``channels_last``: weights (and so activations) in NHWC / NDHWC memory order,
- ``compile``: ``torch.compile`` of the denoiser, compiled before the first step on the first
  batch's shapes (both phases of the objective, with and without the consistency term) and
  guarded: if compiling fails, one logged line and the step runs uncompiled,
- ``grad_checkpointing``: every residual and attention block of the UNet recomputes its
  activations in the backward pass instead of keeping them (less memory, ~1/3 more compute;
  the answer for 3D patches that do not fit),
- ``fused_ema``: the EMA as one multi-tensor update (:mod:`ambient_med.training.ema`).

None of them changes what is learned beyond float round-off. Which are on by default is decided by
``benchmarks/gpu.py`` (figures in ``benchmarks/results/gpu*``). The consistency pair is not an
option: ``chain_terms.consistency_term`` always evaluates both chains, and the ambient term, in one
batched network call with gradient.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger("ambient_med")

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def memory_format(spatial_dims: int) -> torch.memory_format:
    """``channels_last`` for 2D images, ``channels_last_3d`` for volumes."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def spatial_dims_of(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "spatial_dims"):
        return int(cfg.spatial_dims)
    conv = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
    return 3 if isinstance(conv, nn.Conv3d) else 2


@contextlib.contextmanager
def channels_last(modules: list[nn.Module], enabled: bool, spatial_dims: int):
    """Convert ``modules`` (and their first input) to channels-last memory order for the duration
    (the Parameter objects stay the same, so optimizers keep working); back to contiguous
    afterwards, as safetensors only writes contiguous tensors."""
    if not enabled:
        yield
        return
    fmt = memory_format(spatial_dims)

    def inputs_too(module, args):  # the first convolution then reads NHWC too
        x, *rest = args
        return (x.contiguous(memory_format=fmt), *rest)

    hooks = []
    for m in modules:
        m.to(memory_format=fmt)
        hooks.append(m.register_forward_pre_hook(inputs_too))
    try:
        yield
    finally:
        for m, h in zip(modules, hooks):
            h.remove()
            m.to(memory_format=torch.contiguous_format)


class _CheckpointedForward:
    """A block's forward that keeps only its inputs for the backward pass and recomputes the rest
    (``torch.utils.checkpoint``, non-reentrant). Without gradient it is the plain forward."""

    def __init__(self, forward: Callable):
        self.forward = forward

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        # the UNet's blocks hold no dropout: nothing random to replay
        return checkpoint(self.forward, *args, use_reentrant=False, preserve_rng_state=False,
                          **kwargs)


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks that ``grad_checkpointing`` wraps: MONAI's residual and attention blocks."""
    from monai.networks.blocks.spatialattention import SpatialAttentionBlock
    from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

    return [m for m in model.modules()
            if isinstance(m, (DiffusionUNetResnetBlock, SpatialAttentionBlock))]


@contextlib.contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool):
    """Checkpoint every block of ``checkpoint_blocks(model)`` for the duration; yields the number
    of blocks wrapped. The weights and ``state_dict`` are untouched."""
    blocks = checkpoint_blocks(model) if enabled else []
    for b in blocks:
        b.forward = _CheckpointedForward(b.forward)
    try:
        yield len(blocks)
    finally:
        for b in blocks:
            b.__dict__.pop("forward", None)


class GuardedCompile:
    """``torch.compile(module)``, falling back to ``module`` itself (one logged warning) when
    compiling fails. Compiling is lazy (first call per shape and grad mode), so the training loop
    calls :meth:`warm_up` before its first step to compile every shape the steps will use."""

    def __init__(self, module: nn.Module, mode: str):
        if mode not in COMPILE_MODES or mode == "off":
            raise ValueError(f"compile mode must be one of {COMPILE_MODES[1:]}, got {mode!r}")
        self.eager = module
        self.mode = mode
        self.compiled: Callable | None = None
        self.seconds = 0.0
        try:
            self.compiled = torch.compile(module, mode=None if mode == "default" else mode)
        except Exception as e:  # noqa: BLE001 - any failure means: run uncompiled
            self._fall_back(e)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def _fall_back(self, e: BaseException) -> None:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        log.warning("torch.compile (mode %s) failed: %s: %s; training continues uncompiled",
                    self.mode, type(e).__name__, first)
        self.compiled = None

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                if self.mode != "reduce-overhead":
                    return self.compiled(*args, **kwargs)
                # CUDA graphs reuse their output buffers on the next replay; the loss keeps
                # one call's output (the consistency target) across later calls, so copy it
                torch.compiler.cudagraph_mark_step_begin()
                return self.compiled(*args, **kwargs).clone()
            except Exception as e:  # noqa: BLE001
                self._fall_back(e)
        return self.eager(*args, **kwargs)

    def warm_up(self, step: Callable[[], None]) -> None:
        """Run ``step`` (forward and backward on real shapes, no optimizer step) so that the forward
        and the lazily compiled backward graphs exist before timing and training start; on any
        failure fall back to eager."""
        if self.compiled is None:
            return
        t = time.perf_counter()
        try:
            step()
        except Exception as e:  # noqa: BLE001
            self._fall_back(e)
        self.seconds = time.perf_counter() - t
        if self.compiled is not None:
            log.info("torch.compile (mode %s): compiled in %.0f s", self.mode, self.seconds)


class TensorMemory:
    """Peak bytes of live tensor storages created while active, on any device (a CPU stand-in
    for ``torch.cuda.max_memory_allocated``, for benchmarks and tests): every operator output's
    storage is counted from its creation until it is freed. Tensors that existed before (weights,
    inputs) are not counted. Slows every operator down; use it for measurement only."""

    def __init__(self):
        self.peak = 0
        self.current = 0
        self._live: dict[int, int] = {}
        self._mode = None

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        import weakref

        s = t.untyped_storage()
        key, n = s.data_ptr(), s.nbytes()
        if n == 0 or key in self._live:
            return
        self._live[key] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(s, self._free, key)

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.device.type != "meta":
                        tracker._track(t)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False
