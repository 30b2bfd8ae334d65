"""EDM preconditioning around MONAI's DiffusionModelUNet, 2D and 3D."""

import pytest
import torch

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig

TINY = dict(features=(8, 16), attention_levels=(False, True), norm_num_groups=4,
            num_head_channels=8)


@pytest.mark.parametrize("dims,channels", [(2, 1), (2, 2), (3, 2)])
def test_forward_and_backward_in_2d_and_3d(dims, channels):
    torch.manual_seed(0)
    m = EDMDenoiser(NetworkConfig(spatial_dims=dims, channels=channels, **TINY))
    x = torch.randn(2, channels, *([8] * dims), requires_grad=True)
    out = m(x, torch.tensor([0.05, 3.0]))
    assert out.shape == x.shape
    out.square().mean().backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(x.grad).all()


def test_preconditioning_matches_edm_table_1():
    m = EDMDenoiser(NetworkConfig(sigma_data=0.5, **TINY))
    s = torch.tensor([0.1, 1.0, 10.0])
    c_skip, c_out, c_in, c_noise = m.preconditioning(s)
    sd = 0.5
    assert torch.allclose(c_skip, sd**2 / (s**2 + sd**2))
    assert torch.allclose(c_out, s * sd / (s**2 + sd**2).sqrt())
    assert torch.allclose(c_in, 1 / (s**2 + sd**2).sqrt())
    assert torch.allclose(c_noise, s.log() / 4)
    # the skip path dominates at small sigma: D(x, sigma) -> x
    x = torch.randn(1, 1, 8, 8)
    assert torch.allclose(m(x, 1e-4), x, atol=1e-3)


def test_config_round_trip_and_validation():
    cfg = NetworkConfig(spatial_dims=3, channels=4, **TINY)
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible"):
        NetworkConfig(features=(10, 16), attention_levels=(False, False), norm_num_groups=4)


def test_attention_runs_fused_and_matches_the_explicit_attention_matrix():
    """The attention levels and the middle block use torch's scaled_dot_product_attention (no (HW)^2 matrix held in
    memory, what lets a whole frame through); the explicit einsum-softmax path of MONAI with the
    same weights gives the same output to float rounding."""
    from monai.networks.blocks.selfattention import SABlock

    torch.manual_seed(0)
    m = EDMDenoiser(NetworkConfig(spatial_dims=2, channels=1, **TINY)).eval()
    plain = EDMDenoiser(NetworkConfig(spatial_dims=2, channels=1, **{**TINY, "attention_levels": (False, False)}))
    # MONAI's middle block attends whatever the levels say
    assert [b.use_flash_attention for b in plain.modules() if isinstance(b, SABlock)] == [True]
    with torch.no_grad():
        for p in m.parameters():  # MONAI zero-initialises the output convolution
            p.add_(0.05 * torch.randn_like(p))
    blocks = [b for b in m.modules() if isinstance(b, SABlock)]
    assert blocks and all(b.use_flash_attention for b in blocks)
    x, s = torch.randn(2, 1, 16, 16), torch.tensor([0.2, 2.0])
    with torch.no_grad():
        fused = m(x, s)
        for b in blocks:
            b.use_flash_attention = False
        explicit = m(x, s)
    assert fused.abs().max() > 0.1
    assert torch.allclose(fused, explicit, atol=1e-5)
