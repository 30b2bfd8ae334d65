"""Exponential moving average of the weights: ``e <- e + (1 - decay) (p - e)`` per parameter,
buffers copied.

``fused=True`` updates all parameters with one multi-tensor call (``torch._foreach_lerp_``): the
same ``lerp`` arithmetic as the per-parameter loop, issued as a few CUDA kernels instead of one
launch per parameter tensor (the knee network has ~300 of them). On a CPU the two are the same
loop over tensors (identical results, ``tests/test_speed_options.py``).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, *,
               fused: bool = True) -> None:
    """Move ``ema``'s parameters toward ``model``'s by ``1 - decay``; copy the buffers."""
    pe = list(ema.parameters())
    pm = [p.detach() for p in model.parameters()]
    if fused and pe:
        torch._foreach_lerp_(pe, pm, 1 - decay)
    else:
        for e, m in zip(pe, pm):
            e.lerp_(m, 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
