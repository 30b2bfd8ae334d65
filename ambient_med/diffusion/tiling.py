"""Patch-wise inference with overlap blending, 2D and 3D (docs/design.md section 9).

``tiled_apply(fn, x, patch, overlap)`` applies ``fn`` (e.g. a denoiser at a fixed ``sigma``)
to overlapping patches of ``x`` ``(N, C, *spatial)`` and blends the outputs with a separable
window normalised by the summed weights, ``y = sum_k w_k fn(P_k x) / sum_k w_k``.

Geometry, per spatial axis of length ``n`` with patch ``p``, overlap ``o`` and margin ``m``:

* the axis is reflect-padded by ``o`` on both sides (and further on the right up to ``p`` when
  ``n + 2 o < p``; the reflection repeats for any pad length), so image borders sit inside
  patches rather than on their edges;
* patches start every ``p - o`` samples; the last one is moved back to end at the padded end;
* the 1D window is 0 on the ``m`` samples at each patch edge, rises as
  ``sin^2(pi (d - m + 1/2) / (2 (o - 2m)))`` over the next ``o - 2m`` samples and is 1 inside.
  Rises and falls of neighbouring patches are aligned, so on the regular grid the weights sum
  to 1 (``sin^2 + cos^2``) and the normalisation only matters at the shifted last patch.

Because each patch's outputs within ``m`` of its edges get zero weight, a *local* ``fn`` whose
receptive field has radius ``<= m`` (a convolutional net's patch-edge artefacts stay within
its radius) gives exactly ``fn`` applied to the reflect-padded image: tiling leaves no seams.
Default ``m = o // 4``; pick ``o`` of 4x the receptive radius. A pointwise ``fn`` is
reproduced exactly (to float rounding) for any ``o``. (MONAI's ``sliding_window_inference``
blends with a Gaussian that is non-zero at patch edges and pads with constants, so edge
artefacts leak into the seams; hence this small module.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch


def _tuple(v, d: int, name: str) -> tuple[int, ...]:
    t = (int(v),) * d if isinstance(v, (int, float)) else tuple(int(u) for u in v)
    if len(t) != d:
        raise ValueError(f"{name} must be an int or {d} ints, got {v}")
    return t


def reflect_indices(n: int, left: int, total: int, device=None) -> torch.Tensor:
    """Indices into an axis of length ``n`` that reflect-pad it (``dcb|abcd|cba``, repeating for
    any pad length) so that ``left`` samples come before it and ``total`` samples in all."""
    i = torch.arange(total, device=device) - left
    if n == 1:
        return torch.zeros(total, dtype=torch.long, device=device)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i < n, i, period - i)


def window_1d(p: int, o: int, m: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Blending window of length ``p``: 0 on ``m`` edge samples, ``sin^2`` rise over ``o - 2m``."""
    w = torch.ones(p, dtype=torch.float64)
    r = o - 2 * m
    if o > 0:
        d = torch.arange(r, dtype=torch.float64)
        ramp = torch.sin(math.pi * (d + 0.5) / (2 * r)) ** 2
        w[:m] = 0
        w[m:m + r] = ramp
        w[p - m - r:p - m] = ramp.flip(0)
        if m:
            w[p - m:] = 0
    return w.to(dtype=dtype, device=device)


def _starts(length: int, p: int, stride: int) -> list[int]:
    s = list(range(0, length - p + 1, stride))
    if s[-1] != length - p:
        s.append(length - p)
    return s


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                patch: int | Sequence[int], overlap: int | Sequence[int],
                batch_size: int = 8, margin: int | Sequence[int] | None = None,
                blend: str = "smooth") -> torch.Tensor:
    """Apply ``fn`` to overlapping patches of ``x`` (N, C, *spatial) and blend (module doc).

    ``blend="nearest"`` takes each pixel from the one patch whose window is largest there
    instead of averaging: use it for *random draws* (posterior samples). Averaging independent
    draws of neighbouring patches shrinks their variance by ``w^2 + (1-w)^2`` in the overlaps (to
    half mid-ramp), so std maps from blended samples are too small there.

    ``fn`` maps ``(B, C, *patch)`` to ``(B, C_out, *patch)``; it is called on at most
    ``batch_size`` patches at a time. Returns ``(N, C_out, *spatial)`` in ``x``'s dtype and on
    its device, for any spatial size (smaller than the patch or not divisible by it).
    """
    d = x.ndim - 2
    if d not in (2, 3):
        raise ValueError(f"x must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}")
    p = _tuple(patch, d, "patch")
    o = _tuple(overlap, d, "overlap")
    m = tuple(oo // 4 for oo in o) if margin is None else _tuple(margin, d, "margin")
    for pp, oo, mm in zip(p, o, m):
        if not (pp >= 1 and 0 <= oo < pp and 0 <= mm and (oo == 0 or oo - 2 * mm >= 1)):
            raise ValueError(f"need patch >= 1, 0 <= overlap < patch and overlap > 2 margin; got "
                             f"patch {p}, overlap {o}, margin {m}")
    n = x.shape[2:]
    total = [max(nn + 2 * oo, pp) for nn, oo, pp in zip(n, o, p)]
    xp = x
    for ax in range(d):
        idx = reflect_indices(n[ax], o[ax], total[ax], device=x.device)
        xp = xp.index_select(2 + ax, idx)
    acc_dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    wins = [window_1d(pp, oo, mm, acc_dtype, x.device) for pp, oo, mm in zip(p, o, m)]
    w = wins[0]
    for v in wins[1:]:
        w = w[..., None] * v
    starts = list(itertools.product(*[_starts(t, pp, pp - oo) for t, pp, oo in zip(total, p, o)]))
    if blend not in ("smooth", "nearest"):
        raise ValueError(f"blend must be 'smooth' or 'nearest', got {blend!r}")
    owner = {}
    if blend == "nearest":  # the pixels each patch owns: largest window, first patch on ties
        best = torch.full(total, -1.0, dtype=acc_dtype, device=x.device)
        for s in starts:
            sl = tuple(slice(s0, s0 + pp) for s0, pp in zip(s, p))
            owner[s] = w > best[sl]
            best[sl] = torch.maximum(best[sl], w)
    jobs = [(i, s) for s in starts for i in range(x.shape[0])]
    out = wsum = None
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b:b + batch_size]
        tiles = torch.stack([xp[(i, slice(None), *[slice(s0, s0 + pp) for s0, pp in zip(s, p)])]
                             for i, s in chunk])
        y = fn(tiles)
        if y.shape[0] != len(chunk) or tuple(y.shape[2:]) != p:
            raise ValueError(f"fn must return (B, C_out, *patch) = ({len(chunk)}, C_out, {p}); "
                             f"got {tuple(y.shape)}")
        if out is None:
            out = torch.zeros((x.shape[0], y.shape[1], *total), dtype=acc_dtype, device=x.device)
            wsum = torch.zeros(total, dtype=acc_dtype, device=x.device)
        for k, (i, s) in enumerate(chunk):
            sl = tuple(slice(s0, s0 + pp) for s0, pp in zip(s, p))
            if blend == "nearest":
                mine = owner[s]
                out[(i, slice(None), *sl)] = torch.where(mine, y[k].to(acc_dtype), out[(i, slice(None), *sl)])
                if i == 0:
                    wsum[sl] = torch.where(mine, torch.ones_like(w), wsum[sl])
                continue
            out[(i, slice(None), *sl)] += w * y[k].to(acc_dtype)
            if i == 0:
                wsum[sl] += w
    crop = tuple(slice(oo, oo + nn) for oo, nn in zip(o, n))
    ws = wsum[crop]
    if not bool(torch.all(ws > 0)):
        raise RuntimeError("tiling left pixels without weight (a bug: please report)")
    return (out[(slice(None), slice(None), *crop)] / ws).to(x.dtype)


def tiled_denoiser(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   patch: int | Sequence[int], overlap: int | Sequence[int] | None = None,
                   batch_size: int = 8) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``D(x, sigma)`` evaluated patch-wise (:func:`tiled_apply`, smooth blending; overlap a
    quarter of the patch by default), for samplers that call a denoiser on images larger than
    the patches the network was trained on (GroupNorm statistics and the receptive field then
    match training). ``sigma`` may be a scalar or one level per image; differentiable, so the
    guided samplers' Jacobian products run through it."""
    p = patch
    o = overlap if overlap is not None else (
        p // 4 if isinstance(p, int) else tuple(int(q) // 4 for q in p))

    def apply(x: torch.Tensor, sigma) -> torch.Tensor:
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1)
        if s.numel() > 1 and not bool(torch.all(s == s[0])):  # per-image levels: one at a time
            return torch.cat([apply(x[i:i + 1], s[i]) for i in range(x.shape[0])])
        return tiled_apply(lambda t: denoiser(t, s[0]), x, p, o, batch_size=batch_size)

    return apply
