"""The library API in one script: noisy data in, clean prior out, posterior denoising with an
uncertainty map. Runs on the CPU in about a minute (``--steps`` trades time for quality).

    python examples/python_api.py --steps 300 --out /tmp/ambient-example
"""

import argparse
from pathlib import Path

import torch

from ambient_med.losses import LossConfig
from ambient_med.networks import EDMDenoiser, NetworkConfig
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.synthetic import GaussianField
from ambient_med.train import TensorDataset, TrainConfig, train


def main(steps: int, out: Path) -> dict:
    torch.manual_seed(0)
    field = GaussianField((16, 16))                       # a distribution with a known answer
    sigma_n = 0.5
    clean = field.sample(2048)
    noisy = clean + sigma_n * torch.randn_like(clean)     # all the trainer ever sees

    net = NetworkConfig(sigma_data=1.0, features=(16, 32), attention_levels=(False, False))
    result = train(EDMDenoiser(net), TensorDataset(noisy, sigma_n),
                   LossConfig(objective="ambient+consistency", sigma_data=1.0),
                   TrainConfig(steps=steps, batch_size=32, lr=1e-3, log_every=max(steps // 5, 1)),
                   run_dir=out / "run")
    meta = PriorMetadata(network=net.to_dict(), sigma_n_data=sigma_n, sigma_n_model=sigma_n,
                         training={"image_shape": [16, 16], "steps": steps})
    path = AmbientPrior(result.model, meta).save(out / "prior.safetensors", overwrite=True)

    prior = AmbientPrior.load(path)                       # no unpickling: weights + JSON only
    test = field.sample(64)
    y = test + 0.3 * torch.randn_like(test)               # a new scan at a different noise level
    post = prior.posterior(y, sigma_y=0.3, n_samples=4, steps=8)
    mse = lambda a: float((a - test).square().mean())
    report = {"mse_noisy": mse(y), "mse_posterior_mean": mse(post["mean"]),
              "mse_wiener_optimum": field.mmse(0.3), "mean_uncertainty": float(post["std"].mean())}
    print(report)
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("ambient-example"))
    a = p.parse_args()
    main(a.steps, a.out)
