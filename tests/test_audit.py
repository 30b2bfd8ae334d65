"""``ambient-med audit`` on a tiny untrained prior: the report's fields and their invariants; a
training set that contains the prior's own samples is flagged as copied (rho = 1)."""

from __future__ import annotations

import json

import numpy as np
import torch
from _cli_fixtures import assert_user_error, cli

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.tasks.audit import audit, audit_space, nearest_correlation

NET = NetworkConfig(channels=2, sigma_data=0.5, features=(8, 16), attention_levels=(False, False),
                    norm_num_groups=4, num_head_channels=8)


def _prior():
    torch.manual_seed(0)
    return AmbientPrior(EDMDenoiser(NET), PriorMetadata(
        network=NET.to_dict(), data_kind="complex", scale=2.0, sigma_n_data=0.2,
        sigma_n_model=0.1, training={"image_shape": [16, 16]}))


def test_nearest_correlation_flags_copies_and_audit_report(tmp_path):
    prior = _prior()
    train = torch.randn(12, 1, 16, 16, dtype=torch.complex64)
    rho = nearest_correlation(audit_space(prior, torch.cat([train[:3] * 5.0, -train[3:4]])),
                              audit_space(prior, train))
    torch.testing.assert_close(rho[:3], torch.ones(3, dtype=torch.float64))   # scale-invariant
    assert rho[3] < 0.5                                                      # sign matters
    r = audit(prior, train, heldout=torch.randn(4, 1, 16, 16, dtype=torch.complex64),
              n_samples=4, steps=2, n_attack=4)
    assert 0 <= r["share_rho_gt_0.95"] <= r["share_rho_gt_0.9"] <= 1
    qs = list(r["nearest_rho_quantiles"].values())
    assert qs == sorted(qs) and -1 <= qs[0] and qs[-1] <= 1
    att = r["reconstruction_attack"]
    assert att["sigma_data_units"] == 1.0 and att["train_error"] > 0 and att["heldout_error"] > 0
    # CLI: JSON report, refuses to overwrite, bad input one line
    np.save(tmp_path / "train.npy", train[:, 0].numpy())
    prior.save(tmp_path / "p.safetensors")
    args = ("audit", "--prior", tmp_path / "p.safetensors", "--data", tmp_path / "train.npy",
            "--n-samples", "3", "--steps", "2", "--out", tmp_path / "audit.json")
    res = cli(*args)
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    rep = json.loads((tmp_path / "audit.json").read_text())
    assert rep["n_samples"] == 3 and "heldout_error" not in rep["reconstruction_attack"]
    assert_user_error(cli(*args), "audit.json", "exists")
    np.save(tmp_path / "real.npy", np.ones((4, 3, 16, 16), np.float32))
    assert_user_error(cli("audit", "--prior", tmp_path / "p.safetensors", "--data",
                          tmp_path / "real.npy"), "real.npy", "does not match")
