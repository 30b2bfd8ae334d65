"""``AmbientPrior``: the trained prior as one ``.safetensors`` file, and the inference API.

The file holds the EMA weights of the preconditioned denoiser and JSON metadata under the key
``ambient_med`` (docs/design.md section 7): format version, network config, spatial dims, channels, data
kind, ``sigma_n`` in data and model space, the intensity scale ``s``, ``sigma_data``, the noise
model and a training summary. Loading never unpickles: a prior file is data, never code.

Noise models (docs/design.md section 6). A prior trained on variance-stabilised data (Poisson-Gaussian
microscopy, Rician / noncentral-chi magnitudes; see :mod:`ambient_med.training.datasets`) records the
model as ``metadata.noise`` (``NoiseModel.to_dict()``); then "data units" of ``sigma_n_data``
and ``scale`` are the *stabilised* units ``z = f(y)``, where the noise is ~N(0, 1). Its
``denoise`` and ``posterior`` take the raw data ``y``, stabilise it, work at noise level 1 in
``z`` and return the result in the units of ``y``: the posterior mean through the exact
unbiased inverse ``invert_mean`` (``E[f(y) | c] = z_hat`` solved for the clean signal ``c``;
the algebraic inverse would be biased by Jensen's inequality, Makitalo & Foi, IEEE TIP 20:99,
2011), samples through the algebraic inverse ``invert_sample``, and the std map as the std of
the inverted samples. Files written before noise models have no ``noise`` key: Gaussian.
Files with a non-Gaussian model carry ``format_version`` 2, so that an older ambient-med,
which would treat them as Gaussian, refuses them; Gaussian priors stay version 1.

Units. The public methods (``denoise``, ``score``, ``posterior``, ``sample``) take and return
images and ``sigma`` in the units of the user's data: what ``ambient-med estimate-noise`` prints,
per real channel. Complex images are complex tensors ``(N, C, *spatial)``; inside, each becomes
2 real channels (re, im) (docs/design.md section 2) and the result is complex again. Real tensors with
the model's channel layout are accepted too and come back real. The network lives in *model
space* (data divided by the scale ``s``): experts reach it with ``space="model"`` or
``denoise_model``, and ``to_model`` / ``to_data`` / ``sigma_to_model`` convert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .diffusion.networks import EDMDenoiser, NetworkConfig
from .diffusion.rotations import ensemble_mean
from .diffusion.sampling import DEFAULT_UNCERTAINTY, denoise_posterior, resolve_mode
from .diffusion.sampling import sample as _sample
from .errors import DataError
from .mri.complex import channels_to_complex, complex_to_channels
from .noise import TOPUP_DRAWS
from .utils import append_dims, as_sigma

FORMAT_VERSION = 2      # the newest this version reads; Gaussian priors are still written as 1


def inverse_slope(model, z: torch.Tensor) -> torch.Tensor:
    """``|d invert_sample / dz|`` at ``z`` (central difference): turns a std in the stabilised
    domain into one in the data's units (first-order error propagation)."""
    h = 1e-3 * (1 + z.abs())
    return ((model.invert_sample(z + h) - model.invert_sample(z - h)) / (2 * h)).abs()
METADATA_KEY = "ambient_med"


@dataclass
class PriorMetadata:
    network: dict
    data_kind: str = "intensity"          # complex | magnitude | intensity
    sigma_n_data: float = 0.0
    sigma_n_model: float = 0.0
    scale: float = 1.0
    noise_model: str = "gaussian"
    noise: dict | None = None             # NoiseModel.to_dict() of the stabilisation; None: Gaussian
    training: dict = field(default_factory=dict)
    format_version: int = 1

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
        if not self.noise:
            d.pop("noise")
        d["format_version"] = 2 if self.noise else 1
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PriorMetadata":
        d = json.loads(text)
        for derived in ("spatial_dims", "channels", "sigma_data"):
            d.pop(derived, None)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def prior_file(path: str | Path) -> Path:
    """The prior file a user means: ``path`` itself, or ``path/prior.safetensors`` when
    ``path`` is the run folder ``train`` wrote."""
    p = Path(path)
    return p / "prior.safetensors" if p.is_dir() else p


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
        """A prior from its ``.safetensors`` file or the run folder ``train`` wrote it in. The
        file is data: weights and JSON metadata, never unpickled code."""
        from safetensors import SafetensorError, safe_open

        path = prior_file(path)
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
    def rotation_invariant(self) -> bool:
        """Trained on images with no preferred orientation (the protocol's
        ``data.rotation_invariant``): posterior means average over quarter turns."""
        return bool(self.metadata.training.get("rotation_invariant", False))

    @property
    def sigma_n(self) -> float:
        """The training data's noise level in the units of the data (what ``estimate-noise``
        printed), per real channel; ``metadata.sigma_n_model`` is the same in model space."""
        return self.metadata.sigma_n_data

    @property
    def is_complex(self) -> bool:
        """Complex images, stored as (re, im) channel pairs."""
        return self.metadata.data_kind == "complex" and self.metadata.channels % 2 == 0

    @property
    def noise_model(self):
        """The :class:`~ambient_med.noise.NoiseModel` the training data were stabilised with,
        or None (Gaussian noise, no stabilisation)."""
        if not self.metadata.noise:
            return None
        from .noise import from_dict

        return from_dict(self.metadata.noise)

    def input_noise(self, x: torch.Tensor | None = None, sigma=None):
        """The noise model of an input ``x`` in data units, for a prior with a noise model:
        ``sigma`` a :class:`~ambient_med.noise.NoiseModel` (used as is), ``None`` or ``"prior"``
        (the recorded one), ``"auto"`` (the recorded family fitted on ``x``), or a number (a
        magnitude model's ``sigma`` in data units; refused for Poisson-Gaussian, whose noise is
        not one number). None for Gaussian priors."""
        from .noise import NoiseModel, NoncentralChi, PoissonGaussian, Rician

        if isinstance(sigma, NoiseModel):
            return sigma
        rec = self.noise_model
        if rec is None:
            return None
        if sigma is None or sigma == "prior":
            return rec
        if sigma == "auto":
            if x is None:
                raise ValueError("sigma='auto' needs the input image to fit the noise model on")
            arr = x.detach().cpu().numpy()
            if isinstance(rec, PoissonGaussian):   # refitted; equalised as the training data were
                fit = PoissonGaussian.estimate(arr)
                model = PoissonGaussian(fit.a, fit.b, fit.mu, equalise=rec.equalise)
                model.details = fit.details
                return model
            if isinstance(rec, Rician):
                return Rician.estimate(arr)
            if rec.n_coils_nominal is not None:   # an effective fit: fit it again on this input
                return NoncentralChi.estimate(arr, n_coils=rec.n_coils_nominal, effective=True)
            return NoncentralChi.estimate(arr, n_coils=rec.n_coils)
        if isinstance(rec, PoissonGaussian):
            raise ValueError("this prior was trained on Poisson-Gaussian data: its noise is not one "
                             "number; pass sigma='auto' (fit a, b on the input), 'prior' (the training "
                             "data's a, b) or a PoissonGaussian model")
        if isinstance(rec, Rician):
            return Rician(float(sigma))
        return NoncentralChi(float(sigma), rec.n_coils, rec.n_coils_nominal)

    def to(self, device) -> "AmbientPrior":
        self.model.to(device)
        return self

    # ---------------------------------------------------------------- units
    def to_model(self, x_data: torch.Tensor) -> torch.Tensor:
        """Data units -> model space: complex ``(N, C, *spatial)`` -> ``2C`` real channels
        (re, im), then divided by the scale ``s``. Real input must already have the model's
        channel count (for complex priors: the interleaved (re, im) channels)."""
        x = complex_to_channels(x_data, dim=1) if torch.is_complex(x_data) else x_data
        if torch.is_complex(x_data) and not self.is_complex:
            raise ValueError(f"this prior was trained on {self.metadata.data_kind} images; "
                             "pass a real tensor, not a complex one")
        if x.ndim != self.metadata.spatial_dims + 2 or x.shape[1] != self.metadata.channels:
            want = (f"complex (N, {self.metadata.channels // 2}, *spatial) or real "
                    if self.is_complex else "")
            raise ValueError(f"expected {want}(N, {self.metadata.channels}, *spatial) with "
                             f"{self.metadata.spatial_dims} spatial dims, got shape "
                             f"{tuple(x_data.shape)}{' complex' if torch.is_complex(x_data) else ''}")
        return x / self.metadata.scale

    def to_data(self, x_model: torch.Tensor, as_complex: bool | None = None,
                channel_dim: int = 1) -> torch.Tensor:
        """Model space -> data units (times ``s``); complex priors give complex tensors unless
        ``as_complex=False`` (then the interleaved (re, im) real channels)."""
        x = x_model * self.metadata.scale
        if self.is_complex if as_complex is None else as_complex:
            x = channels_to_complex(x, dim=channel_dim)
        return x

    def sigma_to_model(self, sigma: float | torch.Tensor) -> float | torch.Tensor:
        """A noise std per real channel in data units -> model space (divided by ``s``)."""
        return sigma / self.metadata.scale

    def _check_space(self, space: str) -> None:
        if space not in ("data", "model"):
            raise ValueError(f"space must be 'data' (the units of your images, what "
                             f"estimate-noise prints) or 'model', got {space!r}")

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma=None, *,
                space: str = "data") -> torch.Tensor:
        """Posterior mean ``E[x0 | x_sigma]`` of an image ``x`` carrying white Gaussian noise of
        std ``sigma`` per real channel (scalar or per sample). Data units in and out (complex in,
        complex out); ``space="model"`` takes and returns model-space tensors. ``sigma = 0``
        returns ``x`` unchanged (the clean image is its own posterior mean); ``None``: the
        training data's ``sigma_n``.

        Priors with a noise model (``metadata.noise``): ``sigma`` picks the input's noise model
        (:meth:`input_noise`); the result is ``invert_mean(D(stabilise(x), 1))`` in the units of
        ``x`` (module docstring). A prior of rotation-invariant images (:attr:`rotation_invariant`)
        averages ``D`` over the four quarter turns (:mod:`ambient_med.diffusion.rotations`)."""
        self._check_space(space)
        if space == "model":
            return self.denoise_model(x, sigma)
        model = self.input_noise(x, sigma)
        if model is not None and model.name != "gaussian":
            # equalising noise models top the input up: the mean of TOPUP_DRAWS draws
            draws = TOPUP_DRAWS if getattr(model, "equalise", False) else 1
            zs = [self.to_model(model.stabilise_observation(x.float(), seed=k)) for k in range(draws)]
            s1 = self.sigma_to_model(1.0)
            z_hat = ensemble_mean(lambda t: self.denoise_model(t, s1), zs, self.rotation_invariant)
            return model.invert_mean(self.to_data(z_hat, as_complex=False))
        if model is not None:
            sigma = model.sigma
        if sigma is None:
            sigma = self.sigma_n
        zero = as_sigma(torch.as_tensor(sigma, dtype=torch.float32), x.real) == 0
        if bool(zero.all()):          # exactly the input: no round trip through model units
            return x.clone()
        s = torch.as_tensor(self.sigma_to_model(sigma))
        out = self.to_data(ensemble_mean(lambda t: self.denoise_model(t, s), [self.to_model(x)],
                                         self.rotation_invariant), as_complex=torch.is_complex(x))
        return torch.where(append_dims(zero.to(out.device), x.ndim), x, out)

    @torch.no_grad()
    def denoise_model(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``denoise`` in model space (expert path): ``x`` real ``(N, C, *spatial)``, ``sigma``
        the model-space std. Pixels of samples with ``sigma = 0`` are returned unchanged."""
        s = as_sigma(sigma, x)
        zero = s == 0
        if bool(zero.all()):
            return x.clone()
        d = self.model(x, torch.where(zero, torch.ones_like(s), s))
        return torch.where(append_dims(zero, x.ndim), x, d)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor, *,
              space: str = "data") -> torch.Tensor:
        """``grad_x log p_sigma(x) = (E[x0 | x] - x) / sigma^2`` (Tweedie), differentiable in
        ``x``. Data units by default: ``x`` and ``sigma`` as your images, the score in 1/data
        units (complex: ``d/dRe + i d/dIm``); ``space="model"`` for model-space tensors."""
        self._check_space(space)
        if space == "model":
            s = as_sigma(sigma, x)
            return (self.model(x, s) - x) / append_dims(s, x.ndim) ** 2
        xm = self.to_model(x)
        sm = as_sigma(self.sigma_to_model(torch.as_tensor(sigma, dtype=xm.dtype)), xm)
        score_m = (self.model(xm, sm) - xm) / append_dims(sm, xm.ndim) ** 2
        # d/dx_data = d/dx_model / s
        return self.to_data(score_m, as_complex=torch.is_complex(x)) / self.metadata.scale ** 2

    def sample(self, n: int, steps: int | None = None, mode: str = "auto", *,
               stop: float | None = None,
               shape: tuple[int, ...] | None = None, sampler: str = "heun",
               generator: torch.Generator | None = None, callback=None, space: str = "data",
               **kwargs) -> torch.Tensor:
        """``n`` samples of the clean distribution, in data units (complex priors: complex
        ``(n, C/2, *shape)``) or, with ``space="model"``, model space ``(n, C, *shape)``.
        ``shape`` is spatial; it defaults to the training patch size. ``mode``: ``auto``
        (default: stop at ``0.5 sigma_n`` with a last Tweedie step for an ambient prior of noisy
        data, run to 0 for a prior of clean data or a naive one; ``sampling.AUTO_STOP``), ``full`` (to 0) or ``truncated`` (stop at
        ``stop * sigma_n``, default ``stop = 1``). ``steps`` defaults to the sampler's calibrated
        count (``sampling.DEFAULT_STEPS``)."""
        self._check_space(space)
        if shape is None:
            shape = tuple(self.metadata.training.get("image_shape", ()))
            if not shape:
                raise ValueError("pass shape=...: the prior does not record an image shape")
        full_shape = (n, self.metadata.channels, *shape)
        # a prior that learned the noisy images as they are (naive) has nothing to stop short of
        learned_clean = self.metadata.training.get("objective") not in ("naive", "clean")
        mode, stop = resolve_mode(mode, self.metadata.sigma_n_model if learned_clean else 0.0, stop)
        x = _sample(self.model, full_shape, steps=steps, sampler=sampler, mode=mode, stop=stop,
                    sigma_n=self.metadata.sigma_n_model, device=self.device,
                    generator=generator, callback=callback, **kwargs)
        return x if space == "model" else self.to_data(x)

    def posterior(self, y: torch.Tensor, sigma_y=None, n_samples: int = 8, *,
                  steps: int | None = None, sampler: str | None = None, space: str = "data",
                  uncertainty: str = DEFAULT_UNCERTAINTY, **kwargs) -> dict[str, torch.Tensor]:
        """Posterior of ``x0`` given ``y = x0 + sigma_y e``: ``{"mean", "samples" (S, N, ...),
        "std"}`` (std: per real channel; for complex data ``std`` is complex, real part the
        std of the real parts, imaginary part that of the imaginary parts). ``uncertainty``:
        ``"tweedie"`` (default) reads the std map off the network at ``sigma_y`` (Tweedie's second
        moment, :mod:`ambient_med.diffusion.tweedie`), ``"samples"`` takes the std of the ``n_samples``
        posterior samples (``n_samples = 0``: no samples). Priors with a noise model: ``sigma_y``
        as in :meth:`denoise`; samples are stabilised-space posterior samples mapped back by
        ``invert_sample``, ``mean`` (that of :meth:`denoise`: the mean of the top-up draws, over
        quarter turns for a rotation-invariant prior) by ``invert_mean``, ``std`` the per-pixel std of the inverted
        samples or, from Tweedie, the stabilised std times the slope of ``invert_sample`` at the
        posterior mean (first-order error propagation), all in the units of ``y``. Data units in
        and out unless ``space="model"``. ``steps`` and ``sampler`` default to those of
        :func:`ambient_med.diffusion.sampling.denoise_posterior`."""
        self._check_space(space)
        opts = {k: v for k, v in (("steps", steps), ("sampler", sampler)) if v is not None}
        opts["uncertainty"] = uncertainty
        if space == "model":
            return denoise_posterior(self.model, y, sigma_y, n_samples=n_samples, **opts, **kwargs)
        model = self.input_noise(y, sigma_y)
        if model is not None and model.name != "gaussian":
            # in z = f(y) the noise is N(0, 1): sample there, then map every sample back by the
            # algebraic inverse and the mean by the unbiased one
            post = denoise_posterior(self.model, self.to_model(model.stabilise_observation(y.float())),
                                     float(self.sigma_to_model(1.0)), n_samples=n_samples,
                                     **opts, **kwargs)
            samples = model.invert_sample(self.to_data(post["samples"], False, channel_dim=2))
            if uncertainty == "samples":
                std = samples.std(0)
            else:
                z_hat = self.to_data(post["mean"], False)
                std = inverse_slope(model, z_hat) * self.to_data(post["std"], False)
            # the mean is denoise's: the top-up draws of an equalising model, the quarter turns of
            # a rotation-invariant prior (one pass of it went into the std above)
            return {"mean": self.denoise(y, sigma_y), "samples": samples, "std": std}
        if model is not None:
            sigma_y = model.sigma
        if sigma_y is None:
            sigma_y = self.sigma_n
        post = denoise_posterior(self.model, self.to_model(y), float(self.sigma_to_model(sigma_y)),
                                 n_samples=n_samples, **opts, **kwargs)
        c = torch.is_complex(y)
        mean = self.to_data(post["mean"], c)
        if self.rotation_invariant:   # denoise's mean: the quarter-turn ensemble
            mean = self.denoise(y, sigma_y)
        return {"mean": mean, "std": self.to_data(post["std"], c),
                "samples": self.to_data(post["samples"], c, channel_dim=2)}

    def principal_components(self, y: torch.Tensor, sigma_y=None, k: int = 4, *,
                             space: str = "data", **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` leading posterior principal components of ``x0`` given ``y = x0 + sigma_y e``
        (Gaussian noise; ``sigma_y`` defaults to ``sigma_n``): the eigenpairs of Tweedie's
        ``Cov[x0 | y] = sigma_y^2 dD/dy`` (Manor and Michaeli, ICLR 2024;
        :func:`ambient_med.diffusion.tweedie.posterior_principal_components`, whose options ``kwargs``
        pass to). Returns the variances ``(N, k)``, in squared data units, and unit-norm
        components ``(N, k, C, *spatial)`` (complex for complex data) unless ``space="model"``."""
        from .diffusion.tweedie import posterior_principal_components

        self._check_space(space)
        if self.noise_model is not None and self.noise_model.name != "gaussian":
            raise ValueError("principal components are defined for priors of Gaussian noise; this "
                             f"prior's noise model is {self.noise_model.name}")
        if sigma_y is None:
            sigma_y = self.sigma_n if space == "data" else self.metadata.sigma_n_model
        x = y if space == "model" else self.to_model(y)
        sigma = sigma_y if space == "model" else self.sigma_to_model(sigma_y)
        var, comps = posterior_principal_components(self.model, x, float(sigma), k, **kwargs)
        if space == "model":
            return var, comps
        scale = self.metadata.scale
        # components are unit vectors: the unit change keeps them, only the variances scale
        return var * scale**2, self.to_data(comps / scale, torch.is_complex(y), channel_dim=2)

    def reconstruct(self, kspace, mask, *, maps=None, sigma: str | float = "auto",
                    method: str = "dc", n_samples: int = 8, steps: int | None = None,
                    generator: torch.Generator | None = None, callback=None,
                    **kwargs) -> dict:
        """Posterior reconstruction from undersampled multi-coil k-space ``(N, C, *spatial)`` or
        ``(C, *spatial)`` in data units: ``{"mean", "std", "samples", "calls", ...}`` as complex
        images in data units. SENSE model, ESPIRiT maps when ``maps`` is None, ``sigma="auto"``
        estimated from the acquired readout edges; ``method`` ``"dc"`` or ``"dps"``. See
        :func:`ambient_med.recon.prior_glue.reconstruct` for the math."""
        from .recon.prior_glue import reconstruct

        return reconstruct(self, kspace, mask, maps=maps, sigma=sigma, method=method,
                           n_samples=n_samples, steps=steps, generator=generator,
                           callback=callback, **kwargs)
