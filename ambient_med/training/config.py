"""Protocols: YAML presets that describe a whole training run, validated against dataclasses.

A protocol has five sections, each checked against a schema so that a typo is refused with a
message naming the key and the file (a silently ignored ``lerning_rate`` would waste a GPU-day):

    data:     reader and preprocessing (``DataConfig``)
    network:  ``NetworkConfig`` fields, except those the data decide (spatial_dims, channels, sigma_data)
    loss:     ``LossConfig`` fields, except sigma_data (measured on the data)
    train:    ``TrainConfig`` fields, with the speed options (bf16 autocast, channels-last,
              ``torch.compile``, gradient checkpointing, fused EMA; :mod:`ambient_med.training.speed`)
    sampler:  ``SamplerConfig`` (previews and the defaults of ``ambient-med sample``)

``--protocol NAME`` resolves ``NAME`` among the packaged presets in ``ambient_med/protocols``;
anything with a ``/`` or a ``.yaml`` suffix is read as a file. Command-line options override
protocol values (``apply_overrides``); the resolved result is written to ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..diffusion.losses import LossConfig
from ..diffusion.networks import NetworkConfig
from ..errors import ConfigError
from ..utils import parse_sigma
from .loop import TrainConfig

PROTOCOL_DIR = Path(__file__).parents[1] / "protocols"
DEFAULT_PROTOCOL = "fastmri-knee-multicoil"


@dataclass
class DataConfig:
    """How files become training images. Every key acts: ``reader`` refuses files of another
    format (``auto``: any; ``tiff``: TIFF/OME-TIFF stacks and folders of PNG/TIFF frames, see
    :mod:`ambient_med.io.microscopy`; see :mod:`ambient_med.training.autoprotocol`), ``kind``,
    ``spatial_dims``, ``patch_size``, ``coil_maps``, ``reorient``, ``sigma_n``, ``noise_model``, ``noise_map``
    (``poisson-gaussian``, ``rician``, ``noncentral-chi``: the data are variance-stabilised
    before training, see :mod:`ambient_med.training.datasets`), ``cache_dir`` and ``num_workers`` drive
    ``build_training_set``; ``rotation_invariant`` is written into the prior and makes its
    posterior means average over quarter turns (:mod:`ambient_med.diffusion.rotations`). A protocol that names a feature the package lacks is refused when
    it is loaded, never trained some other way. (There is no free-text
    ``preprocessing`` key: a description cannot be checked, so it lives in YAML comments.)"""

    reader: str = "auto"              # auto | fastmri | nifti | numpy | cfl | tiff
    kind: str = "auto"                # training images: auto | complex | magnitude | intensity
    spatial_dims: int = 2
    patch_size: Union[list[int], None] = None
    coil_maps: bool = True
    reorient: bool = False            # 3D NIfTI: to the closest canonical (RAS+) voxel order
    sigma_n: Union[str, float] = "auto"
    noise_model: str = "auto"         # auto | gaussian | rician | noncentral-chi | poisson-gaussian
    noise_estimator: str = "auto"     # auto | kspace-corners | wavelet-mad | piesno | effective-chi
    n_coils: Union[int, None] = None  # N of a magnitude (noncentral chi) model; None: from the file
    # Poisson-Gaussian: equalise the stabilised noise to unit variance in every pixel (a per-pixel
    # sigma_n map from the local intensity, noise added where it is below 1; docs/design.md section 6)
    noise_map: bool = False
    # the images have no preferred orientation (cells under a microscope, not anatomy): posterior
    # means average the denoiser over the four quarter turns of the image plane
    rotation_invariant: bool = False
    cache_dir: Union[str, None] = None
    num_workers: int = 0

    def __post_init__(self):
        readers = ("auto", "fastmri", "nifti", "numpy", "cfl", "tiff")
        kinds = ("auto", "complex", "magnitude", "intensity")
        if self.reader not in readers:
            raise ValueError(f"reader must be one of {readers}, got {self.reader!r}")
        if self.kind not in kinds:
            raise ValueError(f"kind must be one of {kinds}, got {self.kind!r}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        from ..noise import ESTIMATORS, NOISE_MODELS

        models = ("auto", *NOISE_MODELS, "poisson-gaussian")
        if self.noise_model not in models:
            raise ValueError(f"noise_model {self.noise_model!r} is not implemented in this version "
                             f"(available: {', '.join(models)})")
        if self.noise_estimator not in ("auto", *ESTIMATORS):
            raise ValueError(f"noise_estimator {self.noise_estimator!r} is not implemented "
                             f"(available: auto, {', '.join(ESTIMATORS)})")
        if self.n_coils is not None and self.n_coils < 1:
            raise ValueError(f"n_coils must be a positive integer, got {self.n_coils}")
        if self.noise_map and self.noise_model not in ("auto", "poisson-gaussian"):
            raise ValueError(f"noise_map equalises Poisson-Gaussian noise; noise_model {self.noise_model!r} "
                             "has one noise level per image (set noise_map: false)")
        self.sigma_n = parse_sigma_n(self.sigma_n)


@dataclass
class SamplerConfig:
    sampler: str = "heun"             # heun | ancestral
    steps: int = 32
    mode: str = "auto"                # auto | full | truncated (ambient_med.diffusion.sampling.resolve_mode)
    stop: float | None = None         # auto, truncated: stop at stop * sigma_n, return D there
    churn: float = 0.0
    previews: int = 8                 # images in samples.png at the end of training

    def __post_init__(self):
        if self.sampler not in ("heun", "ancestral"):
            raise ValueError(f"sampler must be 'heun' or 'ancestral', got {self.sampler!r}")
        if self.mode not in ("auto", "full", "truncated"):
            raise ValueError(f"mode must be 'auto', 'full' or 'truncated', got {self.mode!r}")
        if self.stop is not None and not 0 < self.stop <= 1:
            raise ValueError(f"stop is a fraction of sigma_n in (0, 1], got {self.stop}")
        if self.mode == "full" and self.stop is not None:
            raise ValueError("stop applies to the modes 'auto' and 'truncated' (full runs to 0)")


# network/loss fields that the data decide; a protocol may not set them
DERIVED = {"network": ("spatial_dims", "channels", "sigma_data"), "loss": ("sigma_data",)}
SECTIONS = {"data": DataConfig, "network": NetworkConfig, "loss": LossConfig,
            "train": TrainConfig, "sampler": SamplerConfig}
TOP_LEVEL = ("name", "description")


@dataclass
class Protocol:
    name: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    source: str = "<defaults>"

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        from ..diffusion.losses import inactive_keys

        for sec in SECTIONS:
            d = _plain(asdict(getattr(self, sec)))
            for k in DERIVED.get(sec, ()):
                d.pop(k, None)
            if sec == "loss":  # only the keys that act (a resolved config is a valid protocol)
                for k in inactive_keys(self.loss):
                    d.pop(k, None)
            out[sec] = d
        return out


def parse_sigma_n(value: Any) -> str | float:
    """``"auto"`` or a finite number >= 0 (0 means the data are clean)."""
    return parse_sigma(value, "--sigma-n", allow_zero=True)


def _plain(x):
    if isinstance(x, tuple):
        return [_plain(v) for v in x]
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(value: Any, tp) -> bool:
    """Does a YAML value fit annotation ``tp``? (int accepted for float; lists for tuples)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if origin is tuple and args and Ellipsis not in typing.get_args(tp) and len(args) != len(value):
            return False
        return all(any(_check_type(v, a) for a in args) for v in value) if args else True
    return True


def _build(section: str, cls, values: Any, source: str, base=None):
    """Validate ``values`` (a mapping from YAML) against ``cls`` and build it over ``base``."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section '{section}' must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, val in values.items():
        if key in DERIVED.get(section, ()):
            raise ConfigError(f"{source}: key '{section}.{key}' is measured from the data and "
                              "cannot be set in a protocol")
        if key not in names:
            close = [n for n in names if n[:4] == str(key)[:4]]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{section}.{key}'{hint}")
        if not _check_type(val, hints[key]):
            raise ConfigError(f"{source}: key '{section}.{key}' expects {_type_name(hints[key])}, "
                              f"got {type(val).__name__} {val!r}")
    merged = asdict(base) if base is not None else {}
    merged.update(values)
    try:
        return cls(**merged)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: section '{section}': {e}") from None


def protocol_from_dict(raw: Any, source: str = "<dict>") -> Protocol:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a protocol must be a YAML mapping of sections")
    for key in raw:
        if key not in SECTIONS and key not in TOP_LEVEL:
            raise ConfigError(f"{source}: unknown key '{key}' (sections: {', '.join(SECTIONS)})")
    for key in TOP_LEVEL:
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{source}: key '{key}' expects str, got {type(raw[key]).__name__}")
    kw = {sec: _build(sec, cls, raw.get(sec), source) for sec, cls in SECTIONS.items()}
    _refuse_inactive_loss_keys(raw.get("loss"), kw["loss"], source)
    return Protocol(name=raw.get("name", Path(source).stem), description=raw.get("description", ""),
                    source=source, **kw)


def _refuse_inactive_loss_keys(raw_loss: Any, loss: LossConfig, source: str) -> None:
    from ..diffusion.losses import inactive_keys

    if not isinstance(raw_loss, dict):
        return
    idle = sorted(set(raw_loss) & inactive_keys(loss))
    if idle:
        raise ConfigError(
            f"{source}: loss key(s) {', '.join(idle)} do nothing with objective "
            f"{loss.objective!r}" + (f", consistency_variant {loss.consistency_variant!r}"
                                     if loss.objective == "ambient+consistency" else "")
            + (", sure_fraction 0" if loss.sure_fraction == 0 else "") + "; remove them")


def available_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def resolve_protocol_path(name_or_file: str | Path) -> Path:
    s = str(name_or_file)
    if "/" in s or s.endswith((".yaml", ".yml")) or Path(s).is_file():
        path = Path(s)
        if not path.is_file():
            raise ConfigError(f"protocol file {path} does not exist")
        return path
    path = PROTOCOL_DIR / f"{s}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown protocol '{s}'; packaged protocols: "
                          f"{', '.join(available_protocols())} (or pass a YAML file)")
    return path


def load_protocol(name_or_file: str | Path = DEFAULT_PROTOCOL) -> Protocol:
    """Read, parse and validate a protocol by packaged name or file path."""
    path = resolve_protocol_path(name_or_file)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"protocol file {path} cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"protocol file {path} is not valid YAML "
                          f"({str(e).splitlines()[0]})") from None
    return protocol_from_dict(raw or {}, str(path))


def apply_overrides(p: Protocol, overrides: dict[str, dict[str, Any]]) -> Protocol:
    """Command-line values win over the protocol: ``{"train": {"steps": 100}}``; None = not given."""
    out = dataclasses.replace(p)
    for sec, values in overrides.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            setattr(out, sec, _build(sec, SECTIONS[sec], values, "command line",
                                     base=getattr(out, sec)))
    return out


def save_resolved(p: Protocol, path: str | Path, extra: dict | None = None) -> Path:
    """Write the resolved configuration (protocol after overrides, plus what the data decided)."""
    d = p.to_dict()
    d["source"] = p.source
    if extra:
        d["resolved_from_data"] = _plain(extra)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(d, sort_keys=False))
    tmp.replace(path)
    return path


def load_resolved(path: str | Path) -> Protocol:
    """Read back a run folder's ``config.yaml`` (for ``--resume``)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw.pop("resolved_from_data", None)
    if isinstance(raw.get("data"), dict):  # run folders written before the key was removed
        raw["data"].pop("preprocessing", None)
    source = raw.pop("source", str(path))
    p = protocol_from_dict(raw, str(path))
    p.source = source
    return p
