"""MONAI transforms, the on-disk cache and build_training_set."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from _mri_fixtures import coil_covariance, coil_maps, correlated_noise, write_fastmri
from monai.data import DataLoader, PersistentDataset
from monai.transforms import Compose, Transform

from ambient_med.errors import DataError, NoiseEstimateError
from ambient_med.training.cache import AtomicPersistentDataset, source_signature, warm_cache
from ambient_med.training.datasets import DatasetInfo, build_training_set
from ambient_med.training.transforms import (
    CoilCombine,
    CoilCombined,
    ComplexToChannels,
    ComplexToChannelsd,
    EstimateCoilMapsd,
    LoadSlice,
    LoadSliced,
    RandPatch,
    RandPatchd,
    ScaleWithNoise,
    ScaleWithNoised,
    WhitenCoilNoise,
    WhitenCoilNoised,
)


@pytest.fixture(scope="module")
def small_h5(tmp_path_factory):
    d = tmp_path_factory.mktemp("h5")
    write_fastmri(d / "a.h5", slices=3, coils=4, kx=96, ky=40, recon=(48, 48), seed=1)
    write_fastmri(d / "b.h5", slices=2, coils=6, kx=112, ky=44, recon=(56, 56), seed=2)
    return d


def test_sigma_n_bookkeeping_through_the_dict_pipeline():
    """Pure correlated coil noise in k-space, true maps: after whitening, combination, channels
    and scaling, the image std per channel equals the item's sigma_n (model space)."""
    rng = np.random.default_rng(0)
    cov = coil_covariance(8, 3.0, rng)
    k = correlated_noise(cov, (192, 192), rng).astype(np.complex64)
    pipe = Compose([WhitenCoilNoised("image"), CoilCombined("image"), ComplexToChannelsd("image"),
                    ScaleWithNoised("image", scale=7.0)])
    d = pipe({"image": k, "maps": coil_maps(192, 8)})
    assert d["image"].shape == (2, 192, 192) and d["image"].dtype == torch.float32
    assert "maps" not in d and d["scale"] == 7.0
    assert d["sigma_n"] == pytest.approx(np.sqrt(np.mean(np.diag(cov).real)) / 7.0, rel=0.03)
    for ch in d["image"]:
        assert ch.std().item() == pytest.approx(d["sigma_n"], rel=0.03)


def test_array_transforms_match_dict_twins():
    rng = np.random.default_rng(1)
    k = (rng.normal(size=(4, 32, 32)) + 1j * rng.normal(size=(4, 32, 32))).astype(np.complex64)
    w = WhitenCoilNoise()(k)
    assert np.allclose(WhitenCoilNoised("image")({"image": k})["image"], w)
    img = CoilCombine()(w)  # no maps: whitened coil images
    assert img.shape == (4, 32, 32)
    ch = ComplexToChannels()(img)
    assert ch.shape == (8, 32, 32) and torch.equal(ch[1], torch.from_numpy(img[0].imag))
    assert torch.allclose(ScaleWithNoise(2.0)(ch), ch / 2)
    d = ScaleWithNoised("x", scale=2.0, allow_missing_keys=True)({"image": ch, "sigma_n": 1.0})
    assert d["sigma_n"] == 0.5 and torch.equal(d["image"], ch)  # missing key skipped, sigma still scaled
    with pytest.raises(KeyError):
        ComplexToChannelsd("x")({"image": ch})


def test_explicit_sigma_skips_whitening():
    k = np.ones((2, 8, 8), np.complex64)
    d = WhitenCoilNoised("image")({"image": k, "sigma_n": 0.5})
    assert d["image"] is k and d["sigma_n"] == 0.5 and d["noise_method"] == "explicit"


def test_load_and_maps_on_fastmri_file(small_h5):
    f = small_h5 / "a.h5"
    k = LoadSlice()(f, 1)
    assert k.shape == (4, 48, 40)
    d = LoadSliced("image")({"image": str(f), "index": 1})
    assert np.array_equal(d["image"], k) and d["kind"] == "kspace"
    d = EstimateCoilMapsd("image")(d)
    assert d["maps"].shape == k.shape
    norm = np.sum(np.abs(d["maps"]) ** 2, axis=0)
    assert np.allclose(norm[norm > 0], 1, atol=1e-4)


@pytest.mark.parametrize("shape,patch", [((1, 40, 50), (16, 16)), ((2, 10, 12, 14), (8, 8, 8)),
                                          ((1, 10, 12), (16, 8))])
def test_rand_patch_seeded_nd(shape, patch):
    x = torch.randn(shape)
    p1 = RandPatch(patch).set_random_state(3)(x)
    p2 = RandPatch(patch).set_random_state(3)(x)
    assert p1.shape == (shape[0], *patch) and torch.equal(p1, p2)
    t = RandPatchd(["image", "label"], patch).set_random_state(5)
    d = t({"image": x, "label": x.clone()})
    assert torch.equal(d["image"], d["label"])
    c = Compose([RandPatchd("image", patch)])
    c.set_random_state(9)
    a = c({"image": x})["image"]
    c.set_random_state(9)
    assert torch.equal(a, c({"image": x})["image"])


def _items(h5dir):
    return [{"image": str(f), "index": i, "source": source_signature(f)}
            for f in sorted(h5dir.glob("*.h5")) for i in range(2)]


PRE = [LoadSliced("image"), WhitenCoilNoised("image"), EstimateCoilMapsd("image"), CoilCombined("image"),
       ComplexToChannelsd("image")]


def test_monai_persistent_dataset_compatible(small_h5, tmp_path):
    ds = PersistentDataset(_items(small_h5), Compose(PRE + [RandPatchd("image", (16, 16))]), cache_dir=tmp_path)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 2, 16, 16) and batch["sigma_n"].shape == (2,)


def test_cache_atomic_parallel_resumable_and_invalidated(small_h5, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    ds = AtomicPersistentDataset(_items(small_h5), Compose(PRE), cache_dir=cache)
    assert warm_cache(ds, num_workers=2) == 4
    files = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
    assert len(files) == 4 and not list(cache.glob(".*.tmp"))
    first = ds[1]["image"]
    # resumable: delete two files; only those are recomputed, the others are untouched
    gone = sorted(files)[:2]
    for g in gone:
        (cache / g).unlink()
    warm_cache(ds, num_workers=0)
    now = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
    assert set(now) == set(files) and all(now[n] == files[n] for n in files if n not in gone)
    # cached items are read back, not recomputed: a transform that would fail is never called
    broken = AtomicPersistentDataset(_items(small_h5), Compose([_Fail()]), cache_dir=cache)
    assert torch.equal(broken[1]["image"], first)
    # a changed source file is a cache miss
    src = small_h5 / "a.h5"
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    AtomicPersistentDataset(_items(small_h5), Compose(PRE), cache_dir=cache)[0]
    assert len(list(cache.glob("*.pt"))) == 5


class _Fail(Transform):
    def __call__(self, d):
        raise AssertionError("recomputed instead of read from cache")


def test_build_training_set_kspace_mixed_sizes_and_coils(small_h5, tmp_path):
    ds, info = build_training_set([small_h5], cache_dir=tmp_path / "c", num_workers=2)
    assert isinstance(info, DatasetInfo) and len(ds) == info.n_items == 5
    assert info.kind == "complex" and info.channels == 2 and info.shape == (48, 40)
    assert info.noise_method == "k-space corner MAD" and 0 < info.noise_uncertainty < 0.2
    assert info.sigma_n_data == pytest.approx(0.02, rel=0.1)  # the fixture's noise, cropped readout
    assert info.sigma_n_model == pytest.approx(info.sigma_n_data / info.scale)
    assert 0 < info.sigma_data < 2
    item = ds[4]
    assert set(item) == {"image", "sigma_n"} and item["image"].shape == (2, 48, 40)
    assert isinstance(item["sigma_n"], float) and item["sigma_n"] == pytest.approx(info.sigma_n_model, rel=0.1)
    mag = item["image"].pow(2).sum(0).sqrt()
    assert 0.3 < torch.quantile(mag, 0.99).item() < 3  # model space: magnitude of order 1
    assert info.to_dict()["shape"] == [48, 40]
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 2, 48, 40)


def test_build_training_set_patches_explicit_sigma_and_no_maps(small_h5):
    ds, info = build_training_set([small_h5 / "a.h5"], sigma_n=0.05, patch_size=(16, 16), coil_maps=False)
    assert info.channels == 8 and info.noise_method == "explicit" and info.sigma_n_data == 0.05
    assert ds[0]["image"].shape == (8, 16, 16)
    assert ds[0]["sigma_n"] == pytest.approx(0.05 / info.scale)
    _, clean = build_training_set([small_h5 / "a.h5"], sigma_n=0)
    assert clean.sigma_n_model == 0


def test_build_training_set_volumes(tmp_path):
    rng = np.random.default_rng(0)
    vol = np.zeros((40, 40, 24), np.float32)
    vol[8:32, 8:32, 4:20] = 10.0
    vol = np.abs(vol + 0.5 * (rng.normal(size=vol.shape) + 1j * rng.normal(size=vol.shape))).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "m.nii.gz")
    ds, info = build_training_set([tmp_path / "m.nii.gz"], spatial_dims=3, patch_size=(16, 16, 16))
    assert info.kind == "magnitude" and info.noise_method.startswith("PIESNO")
    # Rician magnitudes are variance-stabilised: the PIESNO sigma is the model's, sigma_n is 1
    assert info.noise["name"] == "rician" and info.sigma_n_data == 1.0
    assert info.noise["sigma"] == pytest.approx(0.5, rel=0.1) and ds[0]["image"].shape == (1, 16, 16, 16)
    np.save(tmp_path / "c.npy", (vol[None, :, :, 10] * np.exp(1j * 0.3)).astype(np.complex64))
    ds2, info2 = build_training_set([tmp_path / "c.npy"])
    assert info2.kind == "complex" and info2.channels == 2


def test_build_training_set_errors(tmp_path):
    write_fastmri(tmp_path / "clean.h5", slices=1, coils=2, kx=64, ky=32, recon=(32, 32), sigma=0)
    with pytest.raises(NoiseEstimateError, match="noise-free"):
        build_training_set([tmp_path / "clean.h5"])
    np.save(tmp_path / "x.npy", np.ones((8, 8), np.float32))
    with pytest.raises(DataError, match="mix data kinds"):
        build_training_set([tmp_path / "clean.h5", tmp_path / "x.npy"], sigma_n=0)
    with pytest.raises(DataError, match="kind='complex'"):
        build_training_set([tmp_path / "x.npy"], kind="complex", sigma_n=0)


def test_estimate_noise_file_on_fastmri(small_h5):
    from ambient_med.tasks.noise import estimate_noise_file

    est = estimate_noise_file(small_h5 / "a.h5")
    assert est.method == "k-space corner MAD" and est.sigma == pytest.approx(0.02, rel=0.1)


def test_coil_compression_keeps_white_noise_sigma():
    from ambient_med.training.transforms import CompressCoils, CompressCoilsd

    rng = np.random.default_rng(2)
    k = 0.3 * (rng.normal(size=(12, 96, 96)) + 1j * rng.normal(size=(12, 96, 96)))
    k[:, 40:56, 40:56] += 50 * rng.normal(size=(12, 1, 1))  # a low-rank "signal"
    c = CompressCoils(4)(k)
    assert c.shape == (4, 96, 96)
    corner = np.concatenate([c[:, :20, :20].real.ravel(), c[:, :20, :20].imag.ravel()])
    assert np.std(corner) == pytest.approx(0.3, rel=0.05)
    assert np.allclose(CompressCoilsd("image", 4)({"image": k})["image"], c)
    assert CompressCoils(16)(k) is k


def test_build_training_set_cache_reused_and_keyed_by_settings(small_h5, tmp_path):
    cache = tmp_path / "c"
    build_training_set([small_h5 / "b.h5"], cache_dir=cache)
    n = len(list(cache.glob("*.pt")))
    assert n == 2
    ds, _ = build_training_set([small_h5 / "b.h5"], cache_dir=cache)  # same settings: reused
    assert len(list(cache.glob("*.pt"))) == n
    build_training_set([small_h5 / "b.h5"], cache_dir=cache, coil_maps=False)  # new settings: new keys
    assert len(list(cache.glob("*.pt"))) == 2 * n
