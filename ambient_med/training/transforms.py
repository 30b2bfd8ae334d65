"""MONAI transforms for the MRI data path: array transforms and their dictionary twins.

Pipeline for k-space (docs/design.md section 6), each step a transform:

    LoadSliced -> WhitenCoilNoised -> [CompressCoilsd] -> EstimateCoilMapsd -> CoilCombined -> ComplexToChannelsd
    -> ScaleWithNoised -> RandPatchd

Dictionary items carry ``sigma_n``, the noise std per real channel in the units of the current
``image``: whitening sets it (root-mean-square coil sigma, which the coil combination keeps),
and ``ScaleWithNoised`` divides image and ``sigma_n`` by the same ``s`` (model space:
``sigma_n_model = sigma_n_data / s``). Transforms never add noise (docs/design.md section 2).

Every dictionary transform takes ``keys`` and ``allow_missing_keys`` (MONAI ``MapTransform``);
the random one is seeded with ``set_random_state``. They compose with ``monai.transforms.Compose``
and MONAI datasets, including ``PersistentDataset`` (everything before ``RandPatchd`` is
deterministic and can be cached).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from ambient_med import noise
from ambient_med.errors import NoiseEstimateError
from ambient_med.mri.coils import (
    coil_combine,
    compress_coils,
    espirit_maps,
    maps_cover_fov,
    whiten,
    whitening_matrix,
)
from ambient_med.mri.complex import complex_to_channels
from ambient_med.mri.fft import ifftc


def _spatial_axes(x) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


class _PerKey(MapTransform):
    """Dictionary twin that applies its array transform ``self.t`` to every selected key."""

    t: Transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.t(d[key])
        return d


class LoadSlice(Transform):
    """``(path, index)`` -> item ``index`` of the file, channel-first (C, *spatial).

    k-space files give centred complex k-space (C, kx, ky[, kz]); image files give (1, *spatial).
    ``options`` go to :func:`ambient_med.io.open_source` (``crop_oversampling``, ...).
    """

    def __init__(self, spatial_dims: int = 2, **options):
        self.spatial_dims, self.options = spatial_dims, options

    def source(self, path):
        from ambient_med.io.discover import open_source

        return open_source(path, self.spatial_dims, **self.options)

    def __call__(self, path, index: int = 0) -> np.ndarray:
        return self.source(path).read(int(index))


class LoadSliced(MapTransform):
    """``d[key]`` (a path) -> the array of item ``d[index_key]``; sets ``d["kind"]``."""

    def __init__(self, keys: KeysCollection = "image", index_key: str = "index", spatial_dims: int = 2,
                 allow_missing_keys: bool = False, **options):
        super().__init__(keys, allow_missing_keys)
        self.loader, self.index_key = LoadSlice(spatial_dims, **options), index_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            src = self.loader.source(d[key])
            d.setdefault("file", str(d[key]))
            d[key] = src.read(int(d.get(self.index_key, 0)))
            d["kind"] = src.kind
        return d


class WhitenCoilNoise(Transform):
    """Estimate the coil noise covariance from the outer k-space corners (or take ``cov``) and
    whiten: output coil noise is white, uncorrelated, of std ``sigma_out`` per real channel,
    by default the input's root-mean-square coil sigma. ``last_estimate`` keeps the estimate."""

    def __init__(self, corner_fraction: float = 0.125, sigma_out: float | None = None):
        self.fraction, self.sigma_out = corner_fraction, sigma_out
        self.last_estimate: noise.NoiseEstimate | None = None

    def __call__(self, kspace: np.ndarray, cov: np.ndarray | None = None) -> np.ndarray:
        if cov is None:
            self.last_estimate = noise.from_kspace(kspace, fraction=self.fraction)
            cov = self.last_estimate.covariance
        return whiten(kspace, whitening_matrix(cov, self.sigma_out))

    def sigma_after(self, cov: np.ndarray) -> float:
        return self.sigma_out or float(np.sqrt(np.mean(np.real(np.diag(cov)))))


class WhitenCoilNoised(MapTransform):
    """Dictionary twin: whitens ``d[key]`` and records ``sigma_n``, ``noise_method``,
    ``noise_uncertainty``. If ``d[sigma_key]`` is already a number (an explicit sigma_n), the
    data is taken as white with that sigma and left unchanged."""

    def __init__(self, keys: KeysCollection = "image", sigma_key: str = "sigma_n",
                 corner_fraction: float = 0.125, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.whitener, self.sigma_key = WhitenCoilNoise(corner_fraction), sigma_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if d.get(self.sigma_key) is not None:
            d.setdefault("noise_method", "explicit")
            d.setdefault("noise_uncertainty", 0.0)
            return d
        for key in self.key_iterator(d):
            try:
                d[key] = self.whitener(d[key])
            except NoiseEstimateError as e:   # name the file and slice, as every data error does
                where = f"{d['file']}: slice {d.get('index', 0)}: " if d.get("file") else ""
                raise NoiseEstimateError(f"{where}{e}") from None
            est = self.whitener.last_estimate
            d[self.sigma_key] = self.whitener.sigma_after(est.covariance)
            d["noise_method"], d["noise_uncertainty"] = est.method, est.uncertainty
        return d


class CompressCoils(Transform):
    """(C, *spatial) k-space -> (min(C, n_virtual), *spatial) SVD virtual coils; apply after
    whitening so that the noise stays white with the same sigma (see ``compress_coils``)."""

    def __init__(self, n_virtual: int = 8):
        self.n_virtual = int(n_virtual)

    def __call__(self, kspace: np.ndarray) -> np.ndarray:
        return compress_coils(kspace, self.n_virtual)


class CompressCoilsd(_PerKey):
    """Dictionary twin of :class:`CompressCoils`."""

    def __init__(self, keys: KeysCollection = "image", n_virtual: int = 8, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.t = CompressCoils(n_virtual)


class EstimateCoilMaps(Transform):
    """k-space (C, *spatial) -> ESPIRiT coil maps (C, *spatial), ``sum_c |S_c|^2 = 1`` (sigpy)."""

    def __init__(self, **espirit_options):
        self.options = espirit_options

    def __call__(self, kspace: np.ndarray, sigma: float | None = None) -> np.ndarray:
        options = {"sigma": sigma, **self.options}
        if options["sigma"] is None and options.get("fill", True):  # the maps' support needs the noise
            try:
                options["sigma"] = noise.from_kspace(kspace).sigma
            except NoiseEstimateError:  # noise-free data: no noise to keep, maps everywhere
                options["sigma"] = 0.0
        return espirit_maps(kspace, **options)


class EstimateCoilMapsd(MapTransform):
    """Dictionary twin: writes the maps of ``d[key]`` to ``d[maps_key]``."""

    def __init__(self, keys: KeysCollection = "image", maps_key: str = "maps",
                 allow_missing_keys: bool = False, **espirit_options):
        super().__init__(keys, allow_missing_keys)
        self.est, self.maps_key = EstimateCoilMaps(**espirit_options), maps_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            # the noise sigma of the (whitened) k-space decides where the object is
            d[self.maps_key] = self.est(d[key], sigma=d.get("sigma_n"))
        return d


class CoilCombine(Transform):
    """k-space (C, *spatial) -> image. With maps: ``sum_c conj(S_c) F^H k_c`` as (1, *spatial)
    complex (noise std kept for whitened data); without: the coil images (C, *spatial).
    Maps must be unit-norm in every pixel (``maps_cover_fov``): a pixel where they are 0 would
    carry no noise, which the ambient objective cannot train on (docs/design.md section 6)."""

    def __call__(self, kspace: np.ndarray, maps: np.ndarray | None = None) -> np.ndarray:
        imgs = ifftc(kspace, axes=_spatial_axes(kspace))
        if maps is None:
            return imgs.astype(np.complex64)
        if not maps_cover_fov(maps):
            raise ValueError("coil maps are not normalised to sum |S_c|^2 = 1 in every pixel "
                             "(cropped maps?): the combined image would be noise-free there")
        return coil_combine(imgs, maps)[None].astype(np.complex64)


class CoilCombined(MapTransform):
    """Dictionary twin: uses ``d[maps_key]`` when present and drops it unless ``keep_maps``."""

    def __init__(self, keys: KeysCollection = "image", maps_key: str = "maps", keep_maps: bool = False,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.maps_key, self.keep_maps, self.combine = maps_key, keep_maps, CoilCombine()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        maps = d.get(self.maps_key)
        for key in self.key_iterator(d):
            d[key] = self.combine(d[key], maps)
        if not self.keep_maps:
            d.pop(self.maps_key, None)
        return d


class ComplexToChannels(Transform):
    """Complex (C, *spatial) -> float32 tensor (2C, *spatial) ``[re_0, im_0, ...]``; real input
    -> float32 tensor unchanged in shape."""

    def __call__(self, x) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if torch.is_complex(x):
            x = complex_to_channels(x, dim=0)
        return x.to(torch.float32).contiguous()


class ComplexToChannelsd(_PerKey):
    """Dictionary twin of :class:`ComplexToChannels`."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.t = ComplexToChannels()


class ScaleWithNoise(Transform):
    """``x / s``: data units -> model space."""

    def __init__(self, scale: float):
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)

    def __call__(self, x):
        return x / self.scale


class ScaleWithNoised(_PerKey):
    """Divide ``d[key]`` and ``d[sigma_key]`` by ``s`` and record ``d["scale"] = s``, so that
    ``sigma_n`` stays the noise std of the image it travels with."""

    def __init__(self, keys: KeysCollection = "image", scale: float = 1.0, sigma_key: str = "sigma_n",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.t, self.sigma_key = ScaleWithNoise(scale), sigma_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = super().__call__(data)
        if d.get(self.sigma_key) is not None:
            d[self.sigma_key] = float(d[self.sigma_key]) / self.t.scale
        d["scale"] = float(d.get("scale", 1.0)) * self.t.scale
        return d


def patch_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index``'s random patch in ``epoch`` of a run seeded ``seed``.

    A patch is a pure function of ``(seed, epoch, index)`` (NumPy ``SeedSequence`` hashing of the
    three integers), never of a generator's history: the same item gets the same patch in any
    process, DataLoader workers never replay each other's offsets, and a resumed run draws the
    patches the uninterrupted run would have drawn."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class RandPatch(Randomizable, Transform):
    """Random N-D patch of ``patch_size`` from (C, *spatial); axes shorter than the patch are
    first reflect-padded (mirrored data keeps the per-pixel noise std, zeros would not)."""

    def __init__(self, patch_size: Sequence[int]):
        self.patch_size = tuple(int(p) for p in patch_size)
        self._start: tuple[int, ...] | None = None

    def randomize(self, spatial: Sequence[int]) -> None:
        self._start = tuple(int(self.R.randint(0, max(n - p, 0) + 1)) for n, p in zip(spatial, self.patch_size))

    def crop(self, x):
        if len(self.patch_size) != x.ndim - 1:
            raise ValueError(f"patch {self.patch_size} does not fit an item of shape {tuple(x.shape)}")
        pad = [max(p - n, 0) for n, p in zip(x.shape[1:], self.patch_size)]
        if any(q // 2 + q % 2 >= n for q, n in zip(pad, x.shape[1:]) if q):
            raise ValueError(f"patch {self.patch_size} is more than twice the image size "
                             f"{tuple(x.shape[1:])}: choose a smaller patch_size")
        if any(pad):
            t = torch.as_tensor(x)
            widths = [w for q in reversed(pad) for w in (q // 2, q - q // 2)]
            x = torch.nn.functional.pad(t[None], widths, mode="reflect" if t.ndim <= 4 else "replicate")[0]
        sl = tuple(slice(s, s + p) for s, p in zip(self._start, self.patch_size))
        return x[(slice(None), *sl)]

    def __call__(self, x, randomize: bool = True):
        if randomize:
            self.randomize([max(n, p) for n, p in zip(x.shape[1:], self.patch_size)])
        return self.crop(x)


class RandPatchd(Randomizable, MapTransform):
    """Dictionary twin: the same patch location for every key. ``draw(data, seed)`` cuts the
    patch that ``seed`` (see :func:`patch_seed`) determines, whatever was drawn before."""

    def __init__(self, keys: KeysCollection = "image", patch_size: Sequence[int] = (64, 64),
                 allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.patcher = RandPatch(patch_size)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.patcher.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        self.patcher.randomize(data)

    def draw(self, data: Mapping[Hashable, Any], seed: int) -> dict:
        self.set_random_state(seed=int(seed) % 2**32)
        return self(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        first = self.first_key(d)
        if first == []:
            return d
        ps = self.patcher.patch_size
        self.randomize([max(n, p) for n, p in zip(d[first].shape[1:], ps)])
        for key in self.key_iterator(d):
            d[key] = self.patcher.crop(d[key])
        return d
