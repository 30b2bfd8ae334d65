"""``build_training_set``: files in, a training dataset in model space and its description out.

Each item is ``{"image": float32 tensor (C, *spatial), "sigma_n": float}`` in model space.
The scale ``s`` (docs/design.md section 2) is the bias-corrected 99th percentile of the pixel
magnitude, ``s = sqrt(p99(|y|^2) - E|n|^2)`` with ``E|n|^2 = 2 sigma_n^2`` for complex and
magnitude data and ``sigma_n^2`` for real intensities, over up to ``STAT_ITEMS`` items spread
through the dataset, so model-space images have magnitude of order 1; ``sigma_n_model =
sigma_n_data / s``; ``sigma_data = sqrt(var(y) - sigma_n^2)`` in model space (docs/design.md section 3).

Non-Gaussian noise (docs/design.md section 6). The ambient objective is exact only for clean images plus
white Gaussian noise of known std, so microscopy intensities (Poisson-Gaussian,
``y = a Poisson(x/a) + N(mu, b)``) and magnitude volumes (Rician, or noncentral chi with
``n_coils``) are first *variance-stabilised*: each file's :class:`ambient_med.noise.NoiseModel`
is fitted (``sigma_n="auto"``: gain and read noise by
:meth:`~ambient_med.noise.PoissonGaussian.estimate`; ``sigma`` by PIESNO for magnitudes) and
every item becomes ``z = model.stabilise(y)`` (generalised Anscombe transform, resp. the
noncentral-chi VST), whose noise is approximately Gaussian with **unit** variance. Training then
sees ``sigma_n = 1`` in stabilised units, divided by the scale ``s`` of ``z`` as usual (the bias
term of ``s`` is ``sigma_n^2 = 1``: the stabilised noise is additive). The model's ``to_dict()``
is recorded in :attr:`DatasetInfo.noise` (and from there in the prior), so that inference
stabilises its input the same way and returns ``invert_mean`` / ``invert_sample`` of the
result in the units of the data.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import Dataset
from monai.transforms import CenterSpatialCropd, Compose, Lambdad, MapTransform

from ambient_med import noise
from ambient_med.errors import AmbientMedError, ConfigError, DataError, NoiseEstimateError
from ambient_med.io.discover import discover, open_source
from ambient_med.training.autoprotocol import file_format
from ambient_med.training.cache import AtomicPersistentDataset, settings_hash, source_signature, warm_cache
from ambient_med.training.transforms import (
    CoilCombined,
    ComplexToChannelsd,
    CompressCoilsd,
    EstimateCoilMapsd,
    LoadSliced,
    RandPatchd,
    ScaleWithNoised,
    WhitenCoilNoised,
    patch_seed,
)

STAT_ITEMS = 16
# Random-patch training: an epoch draws at least this many patches (ModelSpaceSet), so that
# one volume or one large image fills batches like a folder of images does.
MIN_EPOCH_DRAWS = 256
# ESPIRiT on more coils is slow (about C^3); compress whitened k-space to this many virtual coils.
VIRTUAL_COILS = 8
KINDS = ("complex", "magnitude", "intensity")


@dataclass
class DatasetInfo:
    """What the training set is. ``sigma_n_*`` are per real channel (median over the items
    sampled for statistics); ``noise_uncertainty`` is the estimator's relative standard error
    for one item (see :mod:`ambient_med.noise`); ``scale`` is ``s``."""

    files: list[str]
    kind: str
    channels: int
    spatial_dims: int
    shape: tuple[int, ...]
    scale: float
    sigma_n_data: float
    sigma_n_model: float
    noise_method: str
    noise_uncertainty: float
    sigma_data: float
    n_items: int = 0
    coil_maps: bool = True
    noise_model: str = "gaussian"     # of the training images: gaussian | rician | noncentral-chi
    n_coils: int | None = None        # the N of a magnitude noise model (None: not applicable)
    # NoiseModel.to_dict() of the stabilisation applied to the training images (first file's;
    # every file is stabilised with its own fit, listed in ``noise_files``); None: Gaussian,
    # no stabilisation, ``sigma_n_*`` in the units of the data.
    noise: dict | None = None
    noise_files: dict = field(default_factory=dict)
    cache_dir: str | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def _user_error(e: BaseException) -> AmbientMedError | None:
    while e is not None:
        if isinstance(e, AmbientMedError):
            return e
        e = e.__cause__
    return None


class _UnwrapUserErrors:
    """Re-raise a user error (bad file, no noise estimate) found inside MONAI's
    ``RuntimeError("applying transform ...")`` wrapper, so the CLI can report it in one line."""

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except RuntimeError as e:
            err = _user_error(e)
            if err is None:
                raise
            raise err from None


class TrainingSet(_UnwrapUserErrors, Dataset):
    """MONAI ``Dataset`` of training items; user errors surface unwrapped."""


class _CachedTrainingSet(_UnwrapUserErrors, AtomicPersistentDataset):
    """Disk-cached preprocessing; user errors surface unwrapped."""


class DrawKey(NamedTuple):
    """Which draw of an item a training step asks for: ``(index, epoch, seed)``."""

    index: int
    epoch: int
    seed: int


class ModelSpaceSet(torch.utils.data.Dataset):
    """The training set: cached preprocessing (``data``), then the cheap per-draw stage
    (``post``: crop, scale to model space, random patch).

    ``dataset[i]`` is draw ``i`` with the patch of :func:`~ambient_med.training.transforms.patch_seed`
    ``(0, 0, i)``; ``dataset[DrawKey(i, epoch, seed)]`` (what ``train``'s sampler asks for, see
    ``keyed_draws``) the patch of ``(seed, epoch, i)``. Random patches are therefore a pure
    function of (seed, epoch, draw): the same in every process and DataLoader worker, and the
    same after ``--resume`` as in the run that was never stopped.

    With random patches an epoch is a number of patch draws, not a number of images: draw ``i``
    cuts a patch of item ``i mod n``, and an epoch holds ``draws_per_epoch`` draws, at least
    ``MIN_EPOCH_DRAWS`` and a whole number of passes over the items. One large volume or image
    then trains like a folder of them (every step sees fresh patches of it); with many items an
    epoch is one pass, as before."""

    keyed_draws = True

    def __init__(self, data, post: Compose, patcher: RandPatchd | None = None):
        self.data, self.post, self.patcher = data, post, patcher
        n = len(data)
        self.passes = max(1, -(-MIN_EPOCH_DRAWS // n)) if patcher is not None and n > 0 else 1

    @property
    def n_items(self) -> int:
        return len(self.data)

    def __len__(self) -> int:
        return len(self.data) * self.passes

    def __getitem__(self, key):
        index, epoch, seed = key if isinstance(key, tuple) else (int(key), 0, 0)
        if not 0 <= int(index) < len(self):
            raise IndexError(f"draw {index} out of range ({len(self)} draws per epoch)")
        d = self.post(self.data[int(index) % len(self.data)])
        if self.patcher is not None:
            d = self.patcher.draw(d, patch_seed(seed, epoch, index))
        return {k: d[k] for k in ("image", "sigma_n")}


def _resolve_kind(kind: str, sources) -> str:
    found = {s.kind for s in sources}
    if len(found) > 1:
        raise DataError(None, f"the inputs mix data kinds {sorted(found)}; train on one kind at a time")
    src_kind = found.pop()
    natural = "complex" if src_kind == "kspace" else src_kind
    if kind == "auto":
        return natural
    if kind not in KINDS:
        raise ValueError(f"kind must be 'auto' or one of {KINDS}, got {kind!r}")
    if kind == "complex" and natural != "complex":
        raise DataError(None, f"kind='complex' needs k-space or complex inputs; these are {src_kind}")
    return kind


class ReorientCanonicald(MapTransform):
    """NIfTI volumes to the closest canonical (RAS+) voxel order, as ``nibabel.as_closest_canonical``:
    axes permuted and flipped (never resampled) so that array axes 0, 1, 2 run towards Right,
    Anterior, Superior. Runs on the path in ``d[key]`` before loading: it records the file's
    orientation (``nibabel.orientations.io_orientation`` of the affine, header only), and on the
    loaded ``(C, X, Y, Z)`` array after loading (``apply``)."""

    def __init__(self, keys: KeysCollection = "image"):
        super().__init__(keys)

    def __call__(self, data):
        import nibabel as nib

        d = dict(data)
        for key in self.key_iterator(d):
            d["_ornt"] = nib.orientations.io_orientation(nib.load(str(d[key])).affine)
        return d

    @staticmethod
    def apply(data):
        from nibabel.orientations import apply_orientation

        d = dict(data)
        ornt = d.pop("_ornt")
        d["image"] = np.stack([np.ascontiguousarray(apply_orientation(c, ornt)) for c in d["image"]])
        return d


class StabiliseNoised(MapTransform):
    """``d[key] = model.stabilise(d[key])`` with the model ``noise.from_dict(d["noise"])`` the
    item carries (None: unchanged). After it the item's noise is ~N(0, 1) per pixel. An
    equalising Poisson-Gaussian model then adds its per-pixel top-up noise
    (``PoissonGaussian.equalise_noise``), one draw per item, seeded by the file and index, so the
    cache and every process see the same image."""

    def __init__(self, keys: KeysCollection = "image"):
        super().__init__(keys)

    def __call__(self, data):
        d = dict(data)
        if d.get("noise") is None:
            return d
        model = noise.from_dict(d["noise"])
        for key in self.key_iterator(d):
            x = d[key]
            y = x.double() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)
            z = model.stabilise(y)
            if getattr(model, "equalise", False):
                seed = zlib.crc32(f"{d.get('source')}:{d.get('index')}".encode())
                z = model.equalise_noise(z, y, np.random.default_rng(seed))
            d[key] = torch.as_tensor(np.asarray(z) if not torch.is_tensor(z) else z, dtype=torch.float32)
        return d


STABILISED_MODELS = ("poisson-gaussian", "rician", "noncentral-chi")
PG_STAT_ITEMS = 16
# Random-patch training: an epoch draws at least this many patches (ModelSpaceSet), so that
# one volume or one large image fills batches like a folder of images does.
MIN_EPOCH_DRAWS = 256


def is_microscopy(src) -> bool:
    from ambient_med.io.microscopy import PlaneStack

    return isinstance(src, PlaneStack)


def fit_noise_model(src, path: Path, model_name: str, n_coils: int | None, sigma_n,
                    estimator: str = "auto", noise_map: bool = False):
    """The :class:`~ambient_med.noise.NoiseModel` that stabilises ``src`` (None: Gaussian,
    no stabilisation). ``sigma_n="auto"`` fits it from the data; a number is the magnitude
    model's ``sigma`` in data units (Poisson-Gaussian needs ``auto``: its ``a`` and ``b`` are
    not one number)."""
    if model_name == "poisson-gaussian":
        if sigma_n != "auto":
            raise ConfigError(f"{path}: noise_model poisson-gaussian fits the gain a and read noise b "
                              "from the data: pass --sigma-n auto (or --noise-model gaussian with a number)")
        idx = np.unique(np.linspace(0, len(src) - 1, min(PG_STAT_ITEMS, len(src))).round().astype(int))
        frames = [src.read(int(i)) for i in idx]
        common = tuple(min(f.shape[d] for f in frames) for d in range(frames[0].ndim))
        # frames of different sizes (a folder of frames): the fit needs one array, so the centres
        frames = np.stack([f[tuple(slice((n - c) // 2, (n - c) // 2 + c) for n, c in zip(f.shape, common))]
                           for f in frames])
        try:
            fit = noise.PoissonGaussian.estimate(frames)
        except NoiseEstimateError as e:
            raise NoiseEstimateError(f"{path}: {e}") from None
        model = noise.PoissonGaussian(fit.a, fit.b, fit.mu, equalise=noise_map)
        model.details = fit.details
        return model
    if model_name in ("rician", "noncentral-chi"):
        if sigma_n == "auto":
            est = _file_sigma(src, path, model_name, estimator, n_coils)
            sigma, n = est.sigma, est.details.get("n_coils") or 1
            m = noise.Rician(sigma) if model_name == "rician" else noise.NoncentralChi(
                sigma, n, est.details.get("n_coils_nominal"))
            m.details = {"method": est.method, "uncertainty": est.uncertainty}
            return m
        if estimator == "effective-chi":
            raise ConfigError(f"{path}: noise_estimator effective-chi fits N_eff and sigma from the data: pass "
                              "--sigma-n auto (a number sets sigma of the nominal n_coils model; use estimator piesno)")
        if float(sigma_n) == 0:
            return None
        n = n_coils or getattr(src, "n_coils", None) or 1
        return noise.Rician(float(sigma_n)) if model_name == "rician" else noise.NoncentralChi(float(sigma_n), n)
    return None


def _preprocess(src_kind: str, kind: str, spatial_dims: int, coil_maps: bool,
                reorient: bool = False) -> Compose:
    steps = [LoadSliced("image", spatial_dims=spatial_dims)]
    if reorient:
        steps = [ReorientCanonicald("image"), *steps, ReorientCanonicald.apply]
    if src_kind == "kspace":
        steps.append(WhitenCoilNoised("image"))
        if coil_maps:
            steps += [CompressCoilsd("image", VIRTUAL_COILS), EstimateCoilMapsd("image")]
        steps.append(CoilCombined("image"))
    if kind == "magnitude" and src_kind in ("kspace", "complex"):
        steps.append(Lambdad("image", _rss_magnitude))
    steps.append(ComplexToChannelsd("image"))
    steps.append(StabiliseNoised("image"))
    return Compose(steps)


def _rss_magnitude(x):
    return np.sqrt(np.sum(np.abs(x) ** 2, axis=0, keepdims=True)).astype(np.float32)


def _file_sigma(src, path: Path, noise_model: str, estimator: str, n_coils) -> noise.NoiseEstimate:
    try:
        return noise.estimate_source(src, noise_model, estimator, n_coils)
    except NoiseEstimateError as e:
        raise NoiseEstimateError(f"{path}: {e}") from None


def intensity_scale(mag2: np.ndarray, noise_power: float) -> float:
    """The model-space intensity scale: ``sqrt(p99(|y|^2) - noise_power)``, the 99th percentile of
    the squared magnitudes with the noise's expected contribution (``2 sigma^2`` for complex
    data, ``sigma^2`` for real) removed; plain ``sqrt(p99)`` where the noise would claim more than
    half of it."""
    p2 = np.percentile(mag2, 99)
    return float(np.sqrt(p2 - noise_power)) if p2 > 2 * noise_power else float(np.sqrt(p2))


def build_training_set(paths: list[str | Path], *, sigma_n: str | float = "auto", kind: str = "auto",
                       spatial_dims: int = 2, patch_size: tuple[int, ...] | None = None,
                       cache_dir: Path | None = None, coil_maps: bool = True,
                       num_workers: int = 0, noise_model: str = "auto", noise_estimator: str = "auto",
                       n_coils: int | None = None, noise_map: bool = False,
                       reorient: bool = False) -> tuple[torch.utils.data.Dataset, DatasetInfo]:
    """Files, folders or globs -> (dataset of model-space items, :class:`DatasetInfo`).

    ``sigma_n="auto"`` measures the noise (k-space corners per slice, PIESNO for magnitude
    volumes, wavelet MAD for image arrays); a number overrides it in data units (for k-space
    the data is then taken as already white and not whitened); 0 means clean data.
    ``kind="auto"``: complex for k-space (.h5 with ``kspace``, .cfl), magnitude for NIfTI,
    complex or intensity for NumPy by dtype. ``coil_maps=False`` keeps the whitened coil
    images as ``2*C`` channels instead of an ESPIRiT combination; with maps, files with more
    than ``VIRTUAL_COILS`` coils are first SVD-compressed to that many (after whitening, so
    the noise sigma is unchanged). With ``cache_dir`` the
    preprocessing is cached on disk (see :mod:`ambient_med.training.cache`), filled with
    ``num_workers`` processes. Items of different sizes are centre-cropped to the smallest
    common shape unless ``patch_size`` draws random patches. ``reorient`` brings 3D NIfTI
    volumes to the closest canonical (RAS+) voxel order (:class:`ReorientCanonicald`); other
    inputs are refused with it. ``noise_map`` (Poisson-Gaussian only) equalises the stabilised
    noise to unit variance per pixel (:class:`StabiliseNoised`).
    """
    if sigma_n != "auto" and not (isinstance(sigma_n, (int, float)) and sigma_n >= 0):
        raise ValueError(f"sigma_n must be 'auto' or a number >= 0, got {sigma_n!r}")
    if patch_size is not None and len(patch_size) != spatial_dims:
        raise ValueError(f"patch_size {patch_size} has {len(patch_size)} dims; spatial_dims is {spatial_dims}")
    files = discover(list(paths))
    sources = [open_source(f, spatial_dims) for f in files]
    src_kind = sources[0].kind if len({s.kind for s in sources}) == 1 else None
    kind = _resolve_kind(kind, sources)
    if src_kind == "kspace" and not coil_maps and len({s.n_coils for s in sources}) > 1:
        raise DataError(None, "coil counts differ between files; use coil_maps=True to combine coils")
    # the noise model and estimator (noise.resolve_noise_model): refused here if they do not fit
    # Microscopy intensities: Poisson-Gaussian by default when sigma_n is measured (the
    # estimators of noise.resolve_noise_model know Gaussian and magnitude models only).
    micro = all(is_microscopy(s) for s in sources)
    pg = noise_model == "poisson-gaussian" or (noise_model == "auto" and micro and sigma_n == "auto")
    if noise_map and not pg:
        raise ConfigError(f"{files[0]}: noise_map equalises Poisson-Gaussian noise (microscopy intensities "
                          "with sigma_n auto); these data get one noise level per image")
    if pg and kind != "intensity":
        raise ConfigError(f"{files[0]}: noise_model poisson-gaussian is for intensity data (microscopy); "
                          f"these are {kind}")
    if pg:
        models = [("poisson-gaussian", "poisson-gaussian-fit", None) for _ in sources]
    else:
        models = [noise.resolve_noise_model(src.kind, noise_model, noise_estimator, n_coils, src.n_coils, str(f))
                  for f, src in zip(files, sources)]
    train_model, train_n = models[0][0], models[0][2]
    if kind == "magnitude" and src_kind in ("kspace", "complex"):  # |coil combination| or RSS
        train_model = "rician" if coil_maps or src_kind == "complex" else "noncentral-chi"
        train_n = 1 if train_model == "rician" else sources[0].n_coils
    elif train_model == "gaussian":
        train_n = None
    if reorient and (spatial_dims != 3 or any(file_format(f) != "nifti" for f in files)):
        raise ConfigError(f"{files[0]}: data.reorient needs 3D NIfTI volumes (spatial_dims: 3), "
                          "which carry the affine it reorients by; set data.reorient: false")
    settings = {"kind": kind, "spatial_dims": spatial_dims, "coil_maps": coil_maps, "version": 1,
                "reorient": reorient,
                "virtual_coils": VIRTUAL_COILS if coil_maps else None,
                "sigma_n": sigma_n, **({"noise_map": True} if noise_map else {})}
    stabilise = train_model in STABILISED_MODELS and not (kind == "magnitude" and src_kind in ("kspace", "complex"))
    items, file_method, file_noise = [], {}, {}
    for f, src in zip(files, sources):
        model = fit_noise_model(src, f, train_model, n_coils, sigma_n, noise_estimator,
                                noise_map) if stabilise else None
        if model is not None:
            file_noise[str(f)] = model
            s_n = 1.0  # the stabilised noise: unit variance
            file_method[str(f)] = (f"{model.details.get('method', 'explicit')}; {model.name} VST",
                                   float(model.details.get("uncertainty", 0.0)))
        elif sigma_n != "auto":
            s_n = float(sigma_n)
        elif src_kind == "kspace":
            s_n = None  # measured per slice while whitening
        else:
            est = _file_sigma(src, f, noise_model, noise_estimator, n_coils)
            s_n, file_method[str(f)] = est.sigma, (est.method, est.uncertainty)
        for i in range(len(src)):
            item = {"image": str(f), "index": i, "source": source_signature(f),
                    "settings": settings_hash(settings), "sigma_n": s_n}
            if str(f) in file_method:
                item["noise_method"], item["noise_uncertainty"] = file_method[str(f)]
            if str(f) in file_noise:
                item["noise"] = file_noise[str(f)].to_dict()
            items.append(item)
    pre = _preprocess(src_kind, kind, spatial_dims, coil_maps, reorient)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        base = _CachedTrainingSet(items, pre, cache_dir=Path(cache_dir))
        if num_workers > 0:
            warm_cache(base, num_workers)
    else:
        base = TrainingSet(items, pre)

    stat_idx = np.unique(np.linspace(0, len(items) - 1, min(STAT_ITEMS, len(items))).round().astype(int))
    stats = [base[int(i)] for i in stat_idx]
    shapes = [tuple(s["image"].shape[1:]) for s in stats]
    if src_kind == "kspace":  # every item's shape is cheap to know only per file: use one slice each
        shapes += [tuple(src.read(0).shape[1:]) for src in sources] if coil_maps is not None else []
    common = tuple(int(min(s[d] for s in shapes)) for d in range(spatial_dims))
    channels = int(stats[0]["image"].shape[0])
    sig = np.array([float(s["sigma_n"]) for s in stats])
    sigma_n_data = float(np.median(sig))
    bias = (sigma_n_data**2 if kind == "intensity" or file_noise else 2 * sigma_n_data**2)
    scale = intensity_scale(np.concatenate([_mag2(s["image"], kind).ravel() for s in stats]), bias)
    if not np.isfinite(scale) or scale <= 0:
        raise DataError(None, f"cannot set an intensity scale: the data is all zeros ({files[0]} ...)")
    y = np.concatenate([s["image"].numpy().ravel() for s in stats]) / scale
    sigma_n_model = sigma_n_data / scale
    signal_var = float(np.var(y)) - sigma_n_model**2
    if not signal_var > 0:
        # sigma_data = sqrt(var(y) - sigma_n^2) <= 0: the noise claims all the variance. Training
        # would divide by sigma_data = 0 (NaN loss from step 1) and learn nothing.
        where = f"{files[0]}{' ...' if len(files) > 1 else ''}"
        raise ConfigError(
            f"{where}: sigma_n = {sigma_n_data:.6g} is at or above the standard deviation of the "
            f"data ({np.sqrt(np.var(y)) * scale:.6g} per real channel, data units): no signal "
            "would be left to learn; pass a smaller --sigma-n, or 'auto' to measure it")
    sigma_data = float(np.sqrt(signal_var))
    methods = Counter(str(s.get("noise_method", "explicit")) for s in stats)

    post = []
    if patch_size is None and any(s != common for s in shapes):
        post.append(CenterSpatialCropd("image", roi_size=common))
    post.append(ScaleWithNoised("image", scale=scale))
    patcher = RandPatchd("image", patch_size=patch_size) if patch_size is not None else None
    info = DatasetInfo(
        files=[str(f) for f in files], kind=kind, channels=channels, spatial_dims=spatial_dims,
        shape=tuple(patch_size) if patch_size is not None else common, scale=scale,
        sigma_n_data=sigma_n_data, sigma_n_model=sigma_n_model,
        noise_method=methods.most_common(1)[0][0],
        noise_uncertainty=float(np.median([float(s.get("noise_uncertainty", 0.0)) for s in stats])),
        sigma_data=sigma_data, n_items=len(items), coil_maps=coil_maps,
        noise_model=train_model if (file_noise or not stabilise) else "gaussian", n_coils=train_n,
        noise=next(iter(file_noise.values())).to_dict() if file_noise else None,
        noise_files={k: m.to_dict() for k, m in file_noise.items()},
        cache_dir=None if cache_dir is None else str(cache_dir), settings=settings,
    )
    return ModelSpaceSet(base, Compose(post), patcher), info


def _mag2(image: torch.Tensor, kind: str) -> np.ndarray:
    """Squared magnitude per pixel: complex pairs of channels summed, real channels as is."""
    x = image.numpy().astype(np.float64)
    if kind == "complex":
        return x[0::2] ** 2 + x[1::2] ** 2
    return x**2
