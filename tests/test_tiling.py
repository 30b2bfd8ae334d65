"""Patch-wise inference with overlap blending (ambient_med.diffusion.tiling)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ambient_med.diffusion.tiling import reflect_indices, tiled_apply, window_1d


def conv_net(d: int, radius: int, seed: int = 0):
    """A small fixed random conv net (zero padding) of receptive radius ``radius``."""
    g = torch.Generator().manual_seed(seed)
    conv = F.conv2d if d == 2 else F.conv3d
    ws = [torch.randn(4, 2, *(3,) * d, generator=g) / 6, torch.randn(2, 4, *(2 * radius - 1,) * d, generator=g) / 20]

    def fn(t):
        h = torch.tanh(conv(t, ws[0].to(t), padding=1))
        return conv(h, ws[1].to(t), padding=radius - 1)
    return fn


@pytest.mark.parametrize("shape,patch,overlap", [
    ((2, 2, 37, 50), 16, 8), ((1, 2, 7, 5), 16, 4), ((3, 2, 64, 64), 32, 0),
    ((1, 2, 9, 20, 17), 8, 4), ((2, 2, 3, 4, 5), (4, 8, 8), (2, 4, 4)),
])
def test_pointwise_fn_is_reproduced_exactly(shape, patch, overlap):
    x = torch.randn(shape, dtype=torch.float64)
    fn = lambda t: torch.sin(3 * t) + t**2  # noqa: E731
    y = tiled_apply(fn, x, patch, overlap, batch_size=3)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    torch.testing.assert_close(y, fn(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,shape,patch,overlap", [(2, (2, 2, 70, 45), 24, 12), (3, (1, 2, 13, 18, 15), 12, 8)])
def test_local_conv_net_has_no_seams(d, shape, patch, overlap):
    r = overlap // 4                                                   # margin = receptive radius
    fn = conv_net(d, r)
    x = torch.randn(shape)
    y = tiled_apply(fn, x, patch, overlap, batch_size=4)
    assert y.shape == x.shape and y.dtype == torch.float32
    # exact against fn on the reflect-padded image (no seam anywhere) ...
    xp = x
    for ax, n in enumerate(shape[2:]):
        xp = xp.index_select(2 + ax, reflect_indices(n, overlap, n + 2 * overlap))
    crop = (slice(None), slice(None), *[slice(overlap, overlap + n) for n in shape[2:]])
    torch.testing.assert_close(y, fn(xp)[crop], rtol=1e-5, atol=1e-5)
    # ... and against the whole image (zero padded) away from the image border
    inner = (slice(None), slice(None), *[slice(r + 1, n - r - 1) for n in shape[2:]])
    torch.testing.assert_close(y[inner], fn(x)[inner], rtol=1e-5, atol=1e-5)
    # a window with no margin lets the patch-edge artefacts leak into the seams
    y0 = tiled_apply(fn, x, patch, overlap, margin=0)
    assert (y0[inner] - fn(x)[inner]).abs().max() > 1e-3


def test_windows_partition_unity_and_errors():
    p, o, m = 32, 12, 3
    w = window_1d(p, o, m, torch.float64)
    s = torch.zeros(p + 3 * (p - o))
    for k in range(4):
        s[k * (p - o):k * (p - o) + p] += w
    torch.testing.assert_close(s[o:-o], torch.ones_like(s[o:-o]))
    assert torch.all(w[:m] == 0) and torch.all(w[-m:] == 0)
    with pytest.raises(ValueError, match="overlap < patch"):
        tiled_apply(lambda t: t, torch.zeros(1, 1, 8, 8), 8, 8)
    with pytest.raises(ValueError, match="must be"):
        tiled_apply(lambda t: t, torch.zeros(1, 8, 8), 8, 2)
    with pytest.raises(ValueError, match="fn must return"):
        tiled_apply(lambda t: t[..., :-1], torch.zeros(1, 1, 8, 8), 4, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_device_preserved_cuda():
    x = torch.randn(1, 1, 40, 33, device="cuda", dtype=torch.float16)
    y = tiled_apply(lambda t: 2 * t, x, 16, 8)
    assert y.device == x.device and y.dtype == torch.float16
    torch.testing.assert_close(y, 2 * x, rtol=1e-2, atol=1e-2)


def test_nearest_blend_keeps_the_variance_of_random_draws():
    """Posterior draws are independent per patch: smooth blending averages them in the overlaps
    (variance w^2 + (1-w)^2 of one draw, half mid-ramp); ``blend="nearest"`` keeps every pixel
    one draw, so a std map stays honest across the seams."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(400, 1, 40, 40)
    draw = lambda t: torch.randn(t.shape, generator=g)  # noqa: E731
    var_smooth = tiled_apply(draw, x, 16, 8, batch_size=256).var(0)
    var_nearest = tiled_apply(draw, x, 16, 8, batch_size=256, blend="nearest").var(0)
    assert float(var_smooth.min()) < 0.7          # the overlaps lose variance when blended
    # 400 draws per pixel: each variance estimate has std 0.07, so 5 std over 1,600 pixels
    assert torch.allclose(var_nearest, torch.ones_like(var_nearest), atol=0.35)
    assert abs(float(var_nearest.mean()) - 1) < 0.03
    # a deterministic pointwise fn gives the same result either way
    z = torch.randn(2, 3, 40, 40, generator=g)
    assert torch.allclose(tiled_apply(torch.tanh, z, 16, 8, blend="nearest"), torch.tanh(z))
    with pytest.raises(ValueError, match="blend"):
        tiled_apply(torch.tanh, z, 16, 8, blend="max")


def test_tweedie_std_map_of_a_tiled_image_is_the_whole_image_map():
    """``denoise`` estimates the Tweedie variance of a large image once, through the tiled
    denoiser: for a local denoiser (receptive radius within the window's zero margin) that is
    the whole-image estimate with the same probes, so it cannot show tile seams."""
    from ambient_med.diffusion.tiling import tiled_denoiser
    from ambient_med.diffusion.tweedie import posterior_variance

    torch.manual_seed(0)
    k = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]]).reshape(1, 1, 3, 3)

    def local(x, sigma):  # nonlinear, 3x3 support: shrinks small local contrasts more
        sm = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), k)
        return sm + torch.tanh(3 * (x - sm)) / 3

    x = torch.randn(1, 1, 64, 64)
    whole = posterior_variance(local, x, 0.5, generator=torch.Generator().manual_seed(3))
    tiled = posterior_variance(tiled_denoiser(local, 32), x, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(tiled, whole, atol=2e-3 * float(whole.max()))
