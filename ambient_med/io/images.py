"""Turning model tensors into pictures: magnitude of complex channel pairs, middle slice of
3D volumes, and PNG grids (matplotlib's Agg backend: no display needed on clusters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_display(x: torch.Tensor | np.ndarray, complex_pairs: bool) -> np.ndarray:
    """``(N, C, *spatial)`` -> ``(N, H, W)`` float: magnitude over channel pairs when the data
    are complex (2 real channels per complex one), root-sum-of-squares of channels otherwise;
    3D volumes show their middle slice."""
    a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    while a.ndim > 4:                       # 3D: (N, C, D, H, W) -> middle D
        a = a[:, :, a.shape[2] // 2]
    if complex_pairs and a.shape[1] % 2 == 0:
        return np.sqrt(np.sum(a**2, axis=1))
    return np.sqrt(np.sum(a**2, axis=1)) if a.shape[1] > 1 else a[:, 0]


def save_grid(rows: list[tuple[str, np.ndarray]], path: str | Path, vmax: float | None = None,
              cmaps: dict[str, str] | None = None) -> Path:
    """Write a labelled grid: one row per ``(label, (N, H, W))``, shared grey scale per row
    (``vmax`` for all rows unless a row has its own colour map, e.g. an uncertainty map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(r[1].shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n + 1.2, 1.5 * len(rows)), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        cmap = (cmaps or {}).get(label, "gray")
        top = float(np.percentile(imgs, 99.5)) if (vmax is None or cmap != "gray") else vmax
        for j in range(n):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < imgs.shape[0]:
                ax.imshow(imgs[j], cmap=cmap, vmin=0, vmax=max(top, 1e-8))
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
