"""Posterior means averaged over rotations, for images with no preferred orientation.

Cells under a microscope have no "up": the law of the clean images is invariant under the
rotations ``R_k`` by ``k`` quarter turns in the image plane (the last two axes), and then so is
the exact denoiser, ``D(R x) = R D(x)``. A learned ``D`` is only approximately equivariant: its
error is partly random in the orientation, so the average

    D_rot(x) = (1/K) sum_k R_k^{-1} D(R_k x)

keeps the exact answer a fixed point and averages the orientation-dependent error down (the
geometric self-ensemble of Timofte, Rothe and Van Gool, "Seven ways to improve example-based
single image super resolution", CVPR 2016; Lim et al., EDSR, CVPRW 2017). Anatomy has an
orientation, so MRI protocols leave it off.

When the posterior mean already averages several inputs (the top-up draws of an equalising noise
model, ``noise.TOPUP_DRAWS``), draw ``k`` is denoised in rotation ``k``: the ensemble costs no
extra network call (``benchmarks/results/fmd_rotations.md`` measures the gain on FMD).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

QUARTER_TURNS = 4


def rotate(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` turned by ``k`` quarter turns in its last two axes (``k`` may be negative)."""
    return torch.rot90(x, k % QUARTER_TURNS, dims=(-2, -1))


def ensemble_mean(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[torch.Tensor],
                  rotations: bool) -> torch.Tensor:
    """The mean of ``fn`` over ``inputs`` (draws of the same observation); with ``rotations``,
    over at least the 4 quarter turns, input ``k mod len(inputs)`` in turn ``k``:
    ``mean_k R_k^{-1} fn(R_k inputs[k])``. Without, ``mean_k fn(inputs[k])``."""
    if not inputs:
        raise ValueError("ensemble_mean needs at least one input")
    if not rotations:
        return sum(fn(z) for z in inputs) / len(inputs)
    n = max(len(inputs), QUARTER_TURNS)
    return sum(rotate(fn(rotate(inputs[k % len(inputs)], k)), -k) for k in range(n)) / n


__all__ = ["ensemble_mean", "rotate", "QUARTER_TURNS"]
