"""ambient-med: diffusion priors of the clean images, trained on noisy MRI and microscopy data alone.

The public API (everything a script needs; deeper modules are the machinery):

    AmbientPrior                   a trained prior: load, sample, denoise, reconstruct, save
    train, TrainConfig             the training loop on a dataset of noisy items
    LossConfig, NetworkConfig      the objective and the network
    sample, denoise_posterior      samplers of the prior and of its posterior given a noisy image
    sample_dc, sample_dps          posterior samplers for linear inverse problems (MRI)
    reconstruct                    undersampled multi-coil k-space -> posterior mean and std
    estimate_noise                 the noise of a file, with the model ``train`` would use
    run_training                   what ``ambient-med train`` does, from Python (files in, run folder out)
    resolve_protocol_path          the YAML file of a built-in protocol, to read or copy
    EDMDenoiser, TensorDataset,    the pieces of a training run on tensors you already hold
    PriorMetadata                  (see examples/python_api.py)

Where things live (docs/design.md section 9): ``diffusion/`` (networks, losses, samplers),
``training/`` (loop, datasets, protocols), ``tasks/`` (what each command does), ``recon/``,
``noise/``, ``mri/``, ``io/``, ``synthetic/``, ``interop/``; ``cli.py`` the commands.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "AmbientPrior": "ambient_med.prior",
    "train": "ambient_med.training.loop",
    "TrainConfig": "ambient_med.training.loop",
    "LossConfig": "ambient_med.diffusion.losses",
    "NetworkConfig": "ambient_med.diffusion.networks",
    "sample": "ambient_med.diffusion.sampling",
    "denoise_posterior": "ambient_med.diffusion.sampling",
    "sample_dc": "ambient_med.recon.samplers",
    "sample_dps": "ambient_med.recon.samplers",
    "reconstruct": "ambient_med.recon.prior_glue",
    "estimate_noise": "ambient_med.tasks.noise",
    "run_training": "ambient_med.tasks.train",
    "resolve_protocol_path": "ambient_med.training.config",
    "EDMDenoiser": "ambient_med.diffusion.networks",
    "PriorMetadata": "ambient_med.prior",
    "TensorDataset": "ambient_med.training.loop",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name):  # lazy, so that `import ambient_med` (and the CLI's --help) stays fast
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ambient_med' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
