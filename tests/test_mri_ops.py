"""Centred orthonormal FFT, complex<->channels and the SENSE operator: adjoint and unitarity."""

import numpy as np
import pytest
import torch

from ambient_med.mri import SenseOp, fftc, ifftc
from ambient_med.mri.coils import coil_combine, normalize_maps
from ambient_med.mri.complex import channels_to_complex, complex_to_channels


def _inner(a, b):
    return torch.sum(a.conj() * b)


@pytest.mark.parametrize("shape,axes", [((4, 16, 12), (-2, -1)), ((2, 6, 8, 10), (-3, -2, -1)), ((9,), (0,))])
def test_fft_unitary_and_adjoint_torch(shape, axes):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.complex128, generator=g)
    y = torch.randn(shape, dtype=torch.complex128, generator=g)
    assert torch.allclose(ifftc(fftc(x, axes), axes), x, atol=1e-12)
    assert torch.allclose(torch.linalg.vector_norm(fftc(x, axes)), torch.linalg.vector_norm(x))
    assert torch.allclose(_inner(fftc(x, axes), y), _inner(x, ifftc(y, axes)))


def test_fft_numpy_matches_torch_and_centres_dc():
    x = np.ones((8, 6), np.complex64)
    k = fftc(x)
    assert k.dtype == np.complex64
    assert np.isclose(abs(k[4, 3]), np.sqrt(48), rtol=1e-6)  # DC at n // 2, orthonormal scale
    r = np.random.default_rng(1).normal(size=(5, 7)) + 0j
    assert np.allclose(fftc(r), fftc(torch.from_numpy(r)).numpy())
    assert np.allclose(ifftc(r), ifftc(torch.from_numpy(r)).numpy())


def test_white_noise_keeps_sigma_through_fft():
    rng = np.random.default_rng(2)
    n = 0.3 * (rng.normal(size=(256, 256)) + 1j * rng.normal(size=(256, 256)))
    k = fftc(n)
    assert np.std(k.real) == pytest.approx(0.3, rel=0.01)
    assert np.std(k.imag) == pytest.approx(0.3, rel=0.01)


def test_complex_channels_roundtrip():
    x = torch.randn(2, 3, 4, 5, dtype=torch.complex64)
    c = complex_to_channels(x, dim=1)
    assert c.shape == (2, 6, 4, 5) and c.dtype == torch.float32
    assert torch.equal(c[:, 0], x[:, 0].real) and torch.equal(c[:, 1], x[:, 0].imag)
    assert torch.equal(channels_to_complex(c, dim=1), x)
    xn = x.numpy()
    assert np.array_equal(complex_to_channels(xn, dim=1), c.numpy())
    assert np.array_equal(channels_to_complex(c.numpy(), dim=1), xn)


@pytest.mark.parametrize("spatial", [(12, 10), (6, 8, 5)])
@pytest.mark.parametrize("masked", [False, True])
def test_sense_adjoint(spatial, masked):
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(2, 4, *spatial, dtype=torch.complex128, generator=g)
    mask = (torch.rand(1, 1, *spatial, generator=g) > 0.5).double() if masked else None
    A = SenseOp(maps, mask)
    x = torch.randn(2, *spatial, dtype=torch.complex128, generator=g)
    y = torch.randn(2, 4, *spatial, dtype=torch.complex128, generator=g)
    assert A(x).shape == (2, 4, *spatial)
    assert torch.allclose(_inner(A(x), y), _inner(x, A.H(y)), rtol=1e-10)


def test_sense_with_normalised_maps_is_isometry_and_matches_numpy_combination():
    rng = np.random.default_rng(4)
    maps = normalize_maps(rng.normal(size=(6, 16, 16)) + 1j * rng.normal(size=(6, 16, 16)))
    x = rng.normal(size=(16, 16)) + 1j * rng.normal(size=(16, 16))
    A = SenseOp(torch.from_numpy(maps)[None])
    xt = torch.from_numpy(x)[None]
    assert torch.allclose(A.normal(xt), xt)  # A^H A = I when sum |S|^2 = 1, full sampling
    k = A(xt)[0].numpy()
    assert np.allclose(coil_combine(ifftc(k), maps), x)
