"""CUDA paths (mixed precision training, device-following sampling); skipped without a GPU."""

import pytest
import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.synthetic.mixtures import GaussianField
from ambient_med.training.loop import TensorDataset, TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
NET = NetworkConfig(sigma_data=1.0, features=(8, 16), attention_levels=(False, True),
                    norm_num_groups=4, num_head_channels=8)


def test_mixed_precision_training_and_resume_on_cuda(tmp_path):
    g = torch.Generator().manual_seed(0)
    x0 = GaussianField((16, 16)).sample(128, g)
    data = TensorDataset(x0 + 0.5 * torch.randn(x0.shape, generator=g), 0.5)
    loss = LossConfig(sigma_data=1.0, consistency_start=0.0)
    cfg = TrainConfig(steps=20, batch_size=16, log_every=5, lr_warmup=2)
    torch.manual_seed(0)
    first = train(EDMDenoiser(NET), data, loss, cfg, run_dir=tmp_path, device="cuda", stop_after=10)
    res = train(EDMDenoiser(NET), data, loss, cfg, run_dir=tmp_path, device="cuda", resume=True)
    assert first.step == 10 and res.step == 20
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in first.history + res.history)
    assert next(res.model.parameters()).device.type == "cuda"


def test_cpu_and_cuda_denoisers_agree_and_sampling_follows_the_device(tmp_path):
    torch.manual_seed(0)
    meta = PriorMetadata(network=NET.to_dict(), training={"image_shape": [16, 16]})
    path = AmbientPrior(EDMDenoiser(NET), meta).save(tmp_path / "p.safetensors")
    cpu, gpu = AmbientPrior.load(path), AmbientPrior.load(path, device="cuda")
    x = torch.randn(4, 1, 16, 16)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    assert torch.allclose(cpu.denoise(x, 0.7), gpu.denoise(x.cuda(), 0.7).cpu(), atol=1e-4)
    s = gpu.sample(3, steps=4)
    assert s.device.type == "cuda" and s.shape == (3, 1, 16, 16) and torch.isfinite(s).all()
