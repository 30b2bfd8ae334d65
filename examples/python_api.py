"""The library API in one script: noisy data in, clean prior out, posterior denoising with an
uncertainty map. Runs on the CPU in about a minute (``--steps`` trades time for quality).

Units: the prior's public methods take and return images and ``sigma`` in the units of your
data (what ``ambient-med estimate-noise`` prints); here the "scanner" records intensities of
order 1000. The network trains in model space (data / scale), which the prior records.
Complex images go in and come out as complex tensors (inside: two real channels, re and im);
``space="model"`` is the expert path without any conversion.

    python examples/python_api.py --steps 300 --out /tmp/ambient-example
"""

import argparse
from pathlib import Path

import torch

from ambient_med import (
    AmbientPrior,
    EDMDenoiser,
    LossConfig,
    NetworkConfig,
    PriorMetadata,
    TensorDataset,
    TrainConfig,
    train,
)
from ambient_med.synthetic.mixtures import GaussianField


def main(steps: int, out: Path) -> dict:
    torch.manual_seed(0)
    field = GaussianField((16, 16))                       # a distribution with a known answer
    scale = 1000.0                                        # data units: "scanner" intensities
    sigma_n = 0.5 * scale                                 # noise std per real channel, data units
    clean = field.sample(2048) * scale
    noisy = clean + sigma_n * torch.randn_like(clean)     # all the trainer ever sees

    net = NetworkConfig(sigma_data=1.0, features=(16, 32), attention_levels=(False, False))
    result = train(EDMDenoiser(net), TensorDataset(noisy / scale, sigma_n / scale),  # model space
                   LossConfig(objective="ambient+consistency", sigma_data=1.0),
                   TrainConfig(steps=steps, batch_size=32, lr=1e-3, log_every=max(steps // 5, 1)),
                   run_dir=out / "run")
    meta = PriorMetadata(network=net.to_dict(), sigma_n_data=sigma_n, sigma_n_model=sigma_n / scale,
                         scale=scale, training={"image_shape": [16, 16], "steps": steps})
    path = AmbientPrior(result.model, meta).save(out / "prior.safetensors", overwrite=True)

    prior = AmbientPrior.load(path)                       # no unpickling: weights + JSON only
    test = field.sample(64) * scale
    sigma_y = 0.3 * scale                                 # a new scan at a different noise level
    y = test + sigma_y * torch.randn_like(test)
    post = prior.posterior(y, sigma_y=sigma_y, n_samples=4)   # data units in and out
    mse = lambda a: float(((a - test) / scale).square().mean())  # in units of the field's std
    report = {"mse_noisy": mse(y), "mse_posterior_mean": mse(post["mean"]),
              "mse_wiener_optimum": field.mmse(0.3), "mean_uncertainty": float(post["std"].mean() / scale)}
    print(report)
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("ambient-example"))
    a = p.parse_args()
    main(a.steps, a.out)
