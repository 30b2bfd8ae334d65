"""Figures: matplotlib without a display (Agg), saving, grids of images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int) -> None:
    """Tight layout, write ``path``, free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def image_grid(images: dict, path: Path, title: str, ncol: int = 6, dpi: int = 90) -> None:
    """Named images in rows of ``ncol``, grey from 0; an image named with `` std `` is a
    standard-deviation map (magma, up to its 99.5th percentile)."""
    plt = pyplot()
    names = list(images)
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.2 * ncol, 2.4 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        img = images[name]
        std = " std " in f" {name} "
        ax.imshow(img, cmap="magma" if std else "gray", vmin=0,
                  vmax=float(np.percentile(img, 99.5)) if std else None)
        ax.set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    save(fig, path, dpi)


def tile2x2(images):
    """The first four images ``(4, H, W)`` (torch) as one ``(2H, 2W)`` tile."""
    import torch

    return torch.cat([torch.cat(list(images[:2]), 1), torch.cat(list(images[2:4]), 1)], 0)
