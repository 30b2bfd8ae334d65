"""``AmbientPrior``: the trained prior as one ``.safetensors`` file, and the inference API.

The file holds the EMA weights of the preconditioned denoiser and JSON metadata under the key
``ambient_med`` (DESIGN section 7): format version, network config, spatial dims, channels, data
kind, ``sigma_n`` in data and model space, the intensity scale ``s``, ``sigma_data``, the noise
model and a training summary. Loading never unpickles: a prior file is data, never code.

All methods work in *model space* (data divided by ``scale``); ``to_model`` / ``to_data`` convert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import DataError
from .networks import EDMDenoiser, NetworkConfig
from .sampling import denoise_posterior, sample as _sample
from .utils import as_sigma

FORMAT_VERSION = 1
METADATA_KEY = "ambient_med"


@dataclass
class PriorMetadata:
    network: dict
    data_kind: str = "intensity"          # complex | magnitude | intensity
    sigma_n_data: float = 0.0
    sigma_n_model: float = 0.0
    scale: float = 1.0
    noise_model: str = "gaussian"
    training: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def spatial_dims(self) -> int:
        return int(self.network["spatial_dims"])

    @property
    def channels(self) -> int:
        return int(self.network["channels"])

    @property
    def sigma_data(self) -> float:
        return float(self.network["sigma_data"])

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d.update(spatial_dims=self.spatial_dims, channels=self.channels, sigma_data=self.sigma_data)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PriorMetadata":
        d = json.loads(text)
        for derived in ("spatial_dims", "channels", "sigma_data"):
            d.pop(derived, None)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class AmbientPrior:
    """A trained clean-image prior: ``denoise``, ``score``, ``sample``, ``posterior``."""

    def __init__(self, model: EDMDenoiser, metadata: PriorMetadata):
        self.model = model.eval()
        self.metadata = metadata

    # ---------------------------------------------------------------- file
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the prior atomically (temporary file, then rename). Refuses to replace an
        existing file unless ``overwrite``."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp), metadata={METADATA_KEY: self.metadata.to_json()})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "AmbientPrior":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(path, "prior file not found")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                raw = (f.metadata() or {}).get(METADATA_KEY)
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(path, f"not a readable .safetensors prior ({e})") from None
        if raw is None:
            raise DataError(path, f"has no '{METADATA_KEY}' metadata: not an ambient-med prior")
        meta = PriorMetadata.from_json(raw)
        if meta.format_version > FORMAT_VERSION:
            raise DataError(path, f"prior format {meta.format_version} is newer than this "
                                  f"ambient-med supports ({FORMAT_VERSION}); upgrade the package")
        model = EDMDenoiser(NetworkConfig.from_dict(meta.network))
        model.load_state_dict(state, strict=True)
        return cls(model.to(device), meta)

    # ---------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sigma_n(self) -> float:
        """The training data's noise level in model space."""
        return self.metadata.sigma_n_model

    def to(self, device) -> "AmbientPrior":
        self.model.to(device)
        return self

    def to_model(self, x_data: torch.Tensor) -> torch.Tensor:
        return x_data / self.metadata.scale

    def to_data(self, x_model: torch.Tensor) -> torch.Tensor:
        return x_model * self.metadata.scale

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``E[x0 | x_sigma]`` (model space). ``sigma`` is per real channel; scalar or per sample."""
        return self.model(x, as_sigma(sigma, x))

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (Tweedie). Differentiable in ``x``."""
        s = as_sigma(sigma, x)
        from .utils import append_dims
        return (self.model(x, s) - x) / append_dims(s, x.ndim) ** 2

    def sample(self, n: int, steps: int = 32, mode: str = "full", *, shape: tuple[int, ...] | None = None,
               sampler: str = "heun", generator: torch.Generator | None = None,
               callback=None, **kwargs) -> torch.Tensor:
        """``n`` samples of the clean distribution (model space). ``shape`` is spatial; it defaults
        to the training patch size. ``mode`` is ``full`` or ``truncated`` (stop at ``sigma_n``)."""
        if shape is None:
            shape = tuple(self.metadata.training.get("image_shape", ()))
            if not shape:
                raise ValueError("pass shape=...: the prior does not record an image shape")
        full_shape = (n, self.metadata.channels, *shape)
        return _sample(self.model, full_shape, steps=steps, sampler=sampler, mode=mode,
                       sigma_n=self.sigma_n, device=self.device, generator=generator,
                       callback=callback, **kwargs)

    def posterior(self, y: torch.Tensor, sigma_y: float, n_samples: int = 8, steps: int = 16,
                  **kwargs) -> dict[str, torch.Tensor]:
        """Posterior mean, samples and per-pixel std for ``y = x0 + sigma_y e`` (model space)."""
        return denoise_posterior(self.model, y, sigma_y, n_samples=n_samples, steps=steps, **kwargs)
