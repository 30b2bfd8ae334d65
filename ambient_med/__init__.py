"""ambient-med: exact diffusion priors trained on noisy MRI and microscopy data alone.

Where things live:
    losses.py    the objectives (clean, naive, ambient-Tweedie, consistency)
    sampling.py  Heun, ancestral, truncated and posterior samplers
    networks.py  EDM preconditioning around MONAI's DiffusionModelUNet
    prior.py     AmbientPrior: the .safetensors prior file and the inference API
    train.py     the training loop (EMA, checkpoints, resume)
    noise.py     sigma_n estimation; mri/ the FFT, coil and SENSE operators; io/ the readers
"""

__version__ = "0.1.0"

__all__ = ["AmbientPrior", "__version__"]


def __getattr__(name):  # lazy, so that `import ambient_med` (and the CLI's --help) stays fast
    if name == "AmbientPrior":
        from .prior import AmbientPrior

        return AmbientPrior
    raise AttributeError(f"module 'ambient_med' has no attribute {name!r}")
