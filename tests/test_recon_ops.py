"""Batched CG, the real-channel adapters and the SENSE glue of ambient_med.recon: adjoints by the
dot-product test, batch tiling, ESPIRiT maps."""

import numpy as np
import pytest
import torch
from _mri_fixtures import coil_maps, multicoil_kspace

from ambient_med.mri import SenseOp
from ambient_med.mri.fft import fftc, ifftc
from ambient_med.recon import adjoint_mismatch, cg, complex_to_real
from ambient_med.recon.mri import espirit_sense_operator, measurement, sense_operator, to_complex_image


def test_batched_cg_solves_each_row_and_freezes_indefinite_rows():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    q = torch.randn(3, 10, 10, generator=g, dtype=torch.float64)
    mats = q @ q.transpose(1, 2) + 0.1 * torch.eye(10, dtype=torch.float64)
    op = lambda v: (mats @ v.reshape(3, 10, 1)).reshape(3, 2, 5)
    x, info = cg(op, b, iters=200, tol=1e-12)
    want = torch.linalg.solve(mats, b.reshape(3, 10, 1)).reshape(3, 2, 5)
    assert torch.allclose(x, want, atol=1e-9) and info.residual.max() < 1e-10
    x0, _ = cg(op, b, want + 1e-3, iters=200, tol=1e-12)          # warm start
    assert torch.allclose(x0, want, atol=1e-9)
    mats[1] = -mats[1]                                              # an indefinite row
    x, info = cg(op, b, iters=50, tol=1e-12)
    assert torch.isfinite(x).all() and torch.allclose(x[0], want[0], atol=1e-9)


def test_cg_on_complex_tensors_uses_the_real_inner_product():
    g = torch.Generator().manual_seed(1)
    w = torch.rand(2, 8, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(2, 8, generator=g, dtype=torch.complex128)
    x, _ = cg(lambda v: w * v, b, iters=20, tol=1e-13)
    assert torch.allclose(x, b / w, atol=1e-10)


def test_sense_dot_product_test_complex128():
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 4, 12, 10, generator=g, dtype=torch.complex128)
    mask = (torch.rand(1, 1, 12, 10, generator=g) > 0.5).double()
    A = SenseOp(maps, mask)
    x = torch.randn(2, 12, 10, generator=g, dtype=torch.complex128)
    y = torch.randn(2, 4, 12, 10, generator=g, dtype=torch.complex128)
    assert adjoint_mismatch(A, A.H, x, y) < 1e-14


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-14), (torch.float32, 1e-6)])
def test_real_channel_sense_adjoint(dtype, tol):
    g = torch.Generator().manual_seed(3)
    maps = torch.from_numpy(coil_maps(16, 4))[None]
    mask = torch.zeros(16, 16)
    mask[::3] = 1
    fwd, adj = sense_operator(maps, mask)
    x = torch.randn(3, 2, 16, 16, generator=g, dtype=dtype)
    y = torch.randn(3, 8, 16, 16, generator=g, dtype=dtype)
    assert fwd(x).shape == (3, 8, 16, 16) and fwd(x).dtype == dtype
    assert adj(y).shape == (3, 2, 16, 16) and adj(y).dtype == dtype
    assert adjoint_mismatch(fwd, adj, x, y) < tol
    # the same numbers as the complex operator
    xc = to_complex_image(x.double())
    want = SenseOp(maps.to(torch.complex128), mask.double())(xc)
    assert torch.allclose(fwd(x.double()), measurement(want), atol=1e-12)


def test_complex_adapter_for_a_real_image_has_the_real_adjoint():
    g = torch.Generator().manual_seed(4)
    mask = (torch.rand(8, 8, generator=g) > 0.4).double()
    fwd, adj = complex_to_real(lambda x: mask * fftc(x), lambda k: ifftc(mask * k), real_image=True)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    assert adj(y).shape == x.shape
    assert adjoint_mismatch(fwd, adj, x, y) < 1e-14


def test_per_sample_maps_are_tiled_in_sample_major_order():
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.complex128)
    fwd, adj = sense_operator(maps)
    x = torch.randn(6, 2, 8, 8, generator=g, dtype=torch.float64)   # K = 3 samples of N = 2
    out = fwd(x)
    for row in range(6):
        single, _ = sense_operator(maps[row % 2:row % 2 + 1])
        assert torch.allclose(out[row:row + 1], single(x[row:row + 1]))
    with pytest.raises(ValueError, match="multiple"):
        fwd(x[:5])


def test_espirit_operator_from_undersampled_kspace():
    k, _, _, _, true_maps = multicoil_kspace(32, 4, snr_db=30, seed=1)
    mask = np.zeros((32, 32), np.float32)
    mask[::2] = 1
    mask[12:20] = 1                                                   # calibration lines
    fwd, adj, maps = espirit_sense_operator(k * mask, mask, calib_width=8)
    assert maps.shape == (1, 4, 32, 32)
    assert np.allclose(np.sum(np.abs(maps) ** 2, axis=1), 1, atol=1e-3)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 32, 32, generator=g)
    y = torch.randn(1, 8, 32, 32, generator=g)
    assert adjoint_mismatch(fwd, adj, x, y) < 1e-6
    # the maps agree with the true ones up to a phase per voxel where the object is
    inner = np.abs(np.sum(maps[0].conj() * true_maps, axis=0))
    assert np.median(inner) > 0.9
