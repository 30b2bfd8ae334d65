"""Coil noise covariance, Cholesky whitening, ESPIRiT coil maps and coil combination.

Conventions (docs/design.md sections 2 and 6). Noise samples ``n`` of a ``C``-coil receiver are
complex with covariance per real channel

    Sigma = E[n n^H] / 2,          Sigma_cc = sigma_c^2,

so the diagonal holds the per-coil ``sigma`` (std of the real part, and of the imaginary part).
Whitening with ``W = sigma_out * L^{-1}``, ``Sigma = L L^H`` (Cholesky), gives coil noise that is
white, uncorrelated across coils and of std ``sigma_out`` per real channel. With coil maps
normalised to ``sum_c |S_c|^2 = 1`` and a centred orthonormal FFT, the coil-combined complex
image ``x = sum_c conj(S_c) F^H k_c`` then carries white noise of the same ``sigma_out``
wherever the maps are non-zero (Pruessmann et al., MRM 1999; Roemer et al., MRM 1990): per
pixel, ``sum_c conj(S_c) n_c`` with ``n_c`` i.i.d. of variance ``sigma^2`` per real channel has
variance ``sigma^2 sum_c |S_c|^2``.

The maps must therefore be unit-norm in *every* pixel (docs/design.md section 6). ESPIRiT's eigenvalue
crop zeroes them outside the object, which would make the combined image exactly 0 there, a
noise-free pixel that breaks the ambient objective. :func:`espirit_maps` keeps the dominant
eigenvector everywhere (``crop=0``) and :func:`fill_maps` extrapolates any remaining zero pixel
from its nearest non-zero neighbour, so the training images keep white noise of ``sigma`` over
the whole field of view. A smaller field of view is a crop of the *image* (a box), never a
zeroing of the maps.

References: Uecker et al., "ESPIRiT", MRM 71:990 (2014), via ``sigpy.mri.app.EspiritCalib``
(BSD-3; Ong & Lustig) for 3D and a separable re-statement of the same algorithm for 2D
(:func:`espirit_calib_2d`).
"""

from __future__ import annotations

import contextlib

import numpy as np

from ambient_med.errors import NoiseEstimateError


def noise_covariance(noise: np.ndarray) -> np.ndarray:
    """Sample covariance per real channel, ``Sigma = n n^H / (2 M)``, of noise ``(C, ...)``.

    ``noise`` holds ``M`` complex samples per coil (all trailing axes are flattened). The mean
    is not subtracted: receiver noise is zero-mean, and k-space corners have no DC.
    """
    n = np.asarray(noise)
    n = n.reshape(n.shape[0], -1).astype(np.complex128)
    if n.shape[1] < 2:
        raise NoiseEstimateError(f"need at least 2 noise samples per coil, got {n.shape[1]}")
    return (n @ n.conj().T) / (2 * n.shape[1])


def whitening_matrix(cov: np.ndarray, sigma_out: float | None = None) -> np.ndarray:
    """``W = sigma_out * L^{-1}`` with ``cov = L L^H``; ``W cov W^H = sigma_out^2 I``.

    ``sigma_out`` defaults to the root-mean-square per-coil sigma, ``sqrt(mean(diag(cov)))``,
    so that whitened data stays in the units of the input.
    """
    cov = np.asarray(cov, dtype=np.complex128)
    if sigma_out is None:
        sigma_out = float(np.sqrt(np.mean(np.real(np.diag(cov)))))
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as e:
        raise NoiseEstimateError(
            "coil noise covariance is not positive definite (a dead or duplicated coil, "
            "or too few noise samples)"
        ) from e
    return sigma_out * np.linalg.inv(L)


def whiten(kspace: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Apply ``W`` (C_out, C) across the coil axis 0 of ``kspace`` (C, *spatial)."""
    k = np.asarray(kspace)
    out = np.tensordot(W, k, axes=(1, 0))
    return out.astype(np.result_type(k.dtype, np.complex64), copy=False)


def espirit_maps(
    kspace: np.ndarray,
    calib_width: int = 24,
    thresh: float = 0.02,
    kernel_width: int = 6,
    crop: float = 0.0,
    max_iter: int = 30,
    fill: bool = True,
    sigma: float | None = None,
    support_snr: float = 2.0,
) -> np.ndarray:
    """ESPIRiT coil maps ``S`` (C, *spatial) from centred k-space (C, *spatial), via sigpy.

    sigpy returns the dominant eigenvector per voxel, so ``sum_c |S_c|^2 = 1`` where the
    eigenvalue exceeds ``crop`` and 0 elsewhere; we renormalise to remove round-off. The
    default ``crop=0`` keeps the eigenvector in every voxel, including the air, where it is
    arbitrary but unit-norm (which is all the noise needs; the signal there is ~0). With
    ``fill`` (default) any voxel whose maps are still zero (a ``crop > 0``, or a null
    eigenvector) takes the maps of its nearest non-zero voxel (:func:`fill_maps`), so the
    maps are unit-norm everywhere and the combined image has noise everywhere; ``fill=False``
    gives the classic cropped maps (a support mask for reconstruction, not for training).

    In pure-noise voxels the uncropped eigenvector is not just arbitrary: calibrated on the same
    noisy k-space, it aligns with that voxel's own noise, and ``sum_c conj(S_c) n_c`` then has
    *more* than ``sigma^2`` variance (1.3-1.5x the std on 32x32 phantoms, where the calibration
    region is most of k-space). So with ``fill`` the maps are kept only on the object,
    :func:`object_support` (smoothed root-sum-of-squares above ``support_snr`` times its
    noise-only mean, for the per-channel noise ``sigma``, which ``fill`` needs: measure it with
    :func:`ambient_med.noise.from_kspace`), and extrapolated from there into the air. The
    k-space scale does not matter: it is divided out before calibration. ``max_iter=30``
    power iterations: on the 8-coil brain the maps then differ from 100 iterations by < 2e-6
    (1 - |<S_30, S_100>| per voxel); 10 iterations are not enough.
    """
    import sigpy.mri.app as app

    try:  # OpenBLAS threads spin against torch's OpenMP pool: a 0.03 s SVD took 12 s
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1, user_api="blas")
    except ImportError:
        limits = contextlib.nullcontext()
    k = np.asarray(kspace)
    scale = np.max(np.abs(k))
    if not np.isfinite(scale) or scale == 0:
        raise ValueError("k-space is empty or non-finite; cannot estimate coil maps")
    cw = int(min(calib_width, *k.shape[1:]))
    kn = (k / scale).astype(np.complex64)
    with limits:
        if k.ndim == 3:  # 2D k-space: the separable form, 5-20x faster than sigpy's kernel loop
            maps = espirit_calib_2d(kn, cw, thresh, min(kernel_width, cw), crop, max_iter)
        else:
            maps = app.EspiritCalib(kn, calib_width=cw, thresh=thresh,
                                    kernel_width=min(kernel_width, cw), crop=crop,
                                    max_iter=max_iter, show_pbar=False).run()
    maps = normalize_maps(np.nan_to_num(np.asarray(maps)))  # sigpy's phase reference divides by |S_0|
    if not fill:
        return maps.astype(np.complex64)
    if sigma is None:  # mri/ sits below noise/: the caller measures the noise
        raise ValueError("espirit_maps(fill=True) needs the per-channel noise sigma of the k-space, "
                         "e.g. ambient_med.noise.from_kspace(kspace).sigma (0 for noise-free data)")
    if sigma > 0:
        support = object_support(k, sigma, support_snr)
        if support.any():
            maps = maps * support
    return fill_maps(maps).astype(np.complex64)


def espirit_calib_2d(kspace: np.ndarray, calib_width: int, thresh: float, kernel_width: int,
                     crop: float, max_iter: int) -> np.ndarray:
    """``sigpy.mri.app.EspiritCalib`` for 2D k-space (C, N, M), the same algorithm without its
    loop over kernels (Uecker et al. 2014, sec. "ESPIRiT"; sigpy, BSD-3).

    The calibration matrix (every ``w x w`` block of the centred ``calib_width`` region) gives,
    by SVD, the kernels ``K_k`` (C, w, w) whose singular values exceed ``thresh`` times the
    largest (here from the eigenvectors of its Gram matrix; only their span matters). sigpy forms their centred inverse FFTs ``k_k(x)`` (C,) and sums
    ``A(x) = N M / w^2 sum_k k_k(x) k_k(x)^H`` one kernel at a time. Zero-padding ``w x w`` to
    ``N x M`` and the 2D inverse FFT are separable, ``k_k(x, y) = sum_ab K_k[:, a, b] Ex[x, a] Ey[y, b]``
    with ``Ex[:, a]`` the inverse FFT of a unit vector at the padded position ``a``, so

        A(x, y)[c, d] = sum_{a b a' b'} G[c a b, d a' b'] Ex[x, a] conj(Ex[x, a']) Ey[y, b] conj(Ey[y, b'])

    with the kernel Gram matrix ``G = K^T conj(K)`` (C w^2 square): two small matrix products
    instead of ``n_kernels x C`` FFTs of the whole image. The maps are the dominant eigenvector
    per voxel by ``max_iter`` power iterations from all-ones (as sigpy), phase-referenced to
    coil 0 and zeroed where the eigenvalue is at most ``crop``.
    """
    import sigpy as sp

    C, N, M = kspace.shape
    w = kernel_width
    calib = sp.resize(kspace, [C, calib_width, calib_width])
    mat = sp.array_to_blocks(calib, [w, w], [1, 1]).reshape(C, -1, w * w)
    mat = mat.transpose(1, 0, 2).reshape(-1, C * w * w)
    # right singular vectors from the eigenvectors of mat^H mat (in float64: the threshold
    # on singular values is thresh^2 on eigenvalues); 10x faster than the SVD of mat
    m64 = mat.astype(np.complex128)
    ev, v = np.linalg.eigh(m64.conj().T @ m64)
    keep = v[:, ev > thresh**2 * ev.max()]                               # (C w w, n_kernels)
    gram = (keep.conj() @ keep.T).astype(np.complex64).reshape(C, w, w, C, w, w)  # [c a b, d a' b']

    def columns(n: int) -> np.ndarray:  # (n, w): inverse FFT of each zero-padded unit vector
        return np.stack([sp.ifft(sp.resize(np.eye(w, dtype=np.complex64)[a], (n,)))
                         for a in range(w)], axis=1)

    ex, ey = columns(N), columns(M)
    py = (ey[:, :, None] * ey.conj()[:, None, :]).reshape(M, w * w)      # [y, b b']
    h = py @ gram.transpose(2, 5, 0, 1, 3, 4).reshape(w * w, -1)        # [y, c a d a']
    h = h.reshape(M, C, w, C, w).transpose(2, 4, 0, 1, 3).reshape(w * w, -1)  # [a a', y c d]
    px = (ex[:, :, None] * ex.conj()[:, None, :]).reshape(N, w * w)      # [x, a a']
    aha = ((px @ h) * (N * M / w**2)).reshape(N * M, C, C).astype(np.complex64)

    x = np.ones((N * M, C, 1), dtype=np.complex64)
    eig = np.ones((N * M, 1, 1), dtype=np.float32)
    for _ in range(max_iter):
        y = aha @ x
        eig = np.sqrt(np.sum(np.abs(y) ** 2, axis=1, keepdims=True))
        x = y / np.where(eig > 0, eig, 1)
    maps = x[..., 0].T.reshape(C, N, M)
    with np.errstate(invalid="ignore", divide="ignore"):
        maps = maps * np.conj(maps[0] / np.abs(maps[0]))
    return maps * (eig.reshape(N, M) > crop)


def object_support(kspace: np.ndarray, sigma: float, snr: float = 2.0, width: int = 5) -> np.ndarray:
    """Voxels that hold signal: the root-sum-of-squares coil image ``r``, averaged over a
    ``width``-voxel box, exceeds ``snr`` times its noise-only mean. For ``C`` coils of white
    noise ``sigma`` per real channel, ``r / sigma`` is chi with ``2C`` degrees of freedom, mean
    ``sqrt(2) Gamma(C + 1/2) / Gamma(C)`` (about ``sqrt(2C)``)."""
    from scipy import ndimage
    from scipy.special import gammaln

    from ambient_med.mri.fft import ifftc

    k = np.asarray(kspace)
    c = k.shape[0]
    rss = np.sqrt(np.sum(np.abs(ifftc(k, axes=tuple(range(1, k.ndim)))) ** 2, axis=0))
    chi_mean = np.sqrt(2) * np.exp(gammaln(c + 0.5) - gammaln(c))
    return ndimage.uniform_filter(rss, width, mode="wrap") > snr * sigma * chi_mean


def fill_maps(maps: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Give every voxel where ``sum_c |S_c|^2 < eps`` the (normalised) maps of its nearest
    voxel where the maps are non-zero (Euclidean distance transform, scipy): nearest-neighbour
    extrapolation outside the object. Afterwards ``sum_c |S_c|^2 = 1`` in every voxel, so the
    coil combination keeps the noise std over the whole field of view (module docstring).
    Maps that are zero everywhere are refused."""
    from scipy import ndimage

    m = normalize_maps(np.asarray(maps))
    empty = np.sum(np.abs(m) ** 2, axis=0) < eps
    if not empty.any():
        return m
    if empty.all():
        raise ValueError("coil maps are zero everywhere; cannot combine coils")
    idx = ndimage.distance_transform_edt(empty, return_distances=False, return_indices=True)
    return m[(slice(None), *idx)]


def maps_cover_fov(maps: np.ndarray, atol: float = 1e-3) -> bool:
    """True when ``sum_c |S_c|^2 = 1`` (within ``atol``) in every voxel: the condition for
    the combined image to carry white noise of the coil sigma everywhere."""
    return bool(np.all(np.abs(np.sum(np.abs(np.asarray(maps)) ** 2, axis=0) - 1) <= atol))


def compress_coils(kspace: np.ndarray, n_virtual: int) -> np.ndarray:
    """SVD coil compression (Buehrer et al., MRM 57:1131, 2007; Huang et al., MRI 26:133, 2008):
    project (C, *spatial) onto the ``n_virtual`` dominant left singular vectors, ``U^H k``.

    ``U^H`` has orthonormal rows, so whitened (white, uncorrelated) coil noise stays white with
    the same sigma; only signal in the discarded virtual coils is lost (the fraction of signal
    energy kept is ``sum(s[:V]^2) / sum(s^2)``). ESPIRiT cost grows roughly as ``C^3``.
    """
    k = np.asarray(kspace)
    if n_virtual >= k.shape[0]:
        return k
    flat = k.reshape(k.shape[0], -1)
    u, _, _ = np.linalg.svd(flat @ flat.conj().T)
    return np.tensordot(u[:, :n_virtual].conj().T, k, axes=(1, 0)).astype(k.dtype, copy=False)


def normalize_maps(maps: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Scale maps so that ``sum_c |S_c|^2 = 1`` at every voxel where they are non-zero."""
    norm = np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))
    return np.where(norm > eps, maps / np.maximum(norm, eps), 0)


def coil_combine(coil_images: np.ndarray, maps: np.ndarray | None = None) -> np.ndarray:
    """Combine coil images (C, *spatial) to one complex image (*spatial).

    With maps: the SENSE/Roemer combination ``sum_c conj(S_c) x_c`` (exact for fully sampled,
    whitened data; noise std preserved, see module docstring). Without maps: root sum of
    squares, a magnitude image whose noise is non-central chi, not Gaussian.
    """
    x = np.asarray(coil_images)
    if maps is None:
        return np.sqrt(np.sum(np.abs(x) ** 2, axis=0))
    return np.sum(np.conj(maps) * x, axis=0)
