"""Protocols: every packaged preset loads; unknown keys and wrong types are refused by name;
command-line overrides win; the resolved config round-trips."""

from __future__ import annotations

import pytest
import yaml
from _cli_fixtures import tiny_protocol

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import NetworkConfig
from ambient_med.errors import ConfigError
from ambient_med.training.config import (
    DataConfig,
    apply_overrides,
    available_protocols,
    load_protocol,
    load_resolved,
    parse_sigma_n,
    save_resolved,
)


def test_packaged_protocols_cover_the_issue_and_validate():
    names = available_protocols()
    for required in ("fastmri-knee-multicoil", "fastmri-brain-multicoil", "nifti-3d",
                     "microscopy-2d", "microscopy-3d", "demo"):
        assert required in names
    for n in names:
        p = load_protocol(n)
        assert p.name == n
        # network and loss sections build the engine's own configs (spatial dims from data)
        NetworkConfig(spatial_dims=p.data.spatial_dims, channels=2, **{
            k: v for k, v in p.network.to_dict().items() if k not in ("spatial_dims", "channels")})
        assert LossConfig(**vars(p.loss)).objective == p.loss.objective
    assert load_protocol("nifti-3d").data.spatial_dims == 3


def test_unknown_key_names_key_and_file(tmp_path):
    path = tiny_protocol(tmp_path, train={"lerning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"unknown key 'train.lerning_rate'") as e:
        load_protocol(path)
    assert str(path) in str(e.value)
    bad = tmp_path / "top.yaml"
    bad.write_text("nmae: x\n")
    with pytest.raises(ConfigError, match="unknown key 'nmae'"):
        load_protocol(bad)


@pytest.mark.parametrize("section,key,value,expected", [
    ("train", "steps", "many", "int"),
    ("train", "lr", "fast", "float"),
    ("network", "features", [8, "x"], "list"),
    ("data", "coil_maps", "yes", "bool"),
])
def test_wrong_type_names_key_expected_and_got(tmp_path, section, key, value, expected):
    path = tiny_protocol(tmp_path, **{section: {key: value}})
    with pytest.raises(ConfigError) as e:
        load_protocol(path)
    msg = str(e.value)
    assert f"'{section}.{key}'" in msg and expected in msg and "got" in msg


def test_derived_keys_are_refused(tmp_path):
    path = tiny_protocol(tmp_path, network={"channels": 3})
    with pytest.raises(ConfigError, match="network.channels.*measured from the data"):
        load_protocol(path)


def test_invalid_values_become_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="objective"):
        load_protocol(tiny_protocol(tmp_path, loss={"objective": "magic"}))
    with pytest.raises(ConfigError, match="norm_num_groups"):
        load_protocol(tiny_protocol(tmp_path, network={"norm_num_groups": 3}))


def test_overrides_win_and_resolved_config_round_trips(tmp_path):
    p = load_protocol(tiny_protocol(tmp_path))
    q = apply_overrides(p, {"train": {"steps": 77, "batch_size": None}, "data": {"sigma_n": 0.0}})
    assert q.train.steps == 77 and q.train.batch_size == p.train.batch_size
    assert q.data.sigma_n == 0.0 and p.train.steps == 4  # the original is untouched
    out = save_resolved(q, tmp_path / "config.yaml", extra={"scale": 2.5})
    assert yaml.safe_load(out.read_text())["resolved_from_data"]["scale"] == 2.5
    r = load_resolved(out)
    assert r.to_dict() == q.to_dict()


@pytest.mark.parametrize("text,expected", [("auto", "auto"), ("AUTO", "auto"), ("0", 0.0),
                                           ("0.013", 0.013), (2, 2.0)])
def test_parse_sigma_n_accepts(text, expected):
    assert parse_sigma_n(text) == expected


@pytest.mark.parametrize("text", ["-1", "abc", "nan", "inf", True])
def test_parse_sigma_n_refuses(text):
    with pytest.raises(ConfigError, match="sigma-n"):
        parse_sigma_n(text)


def test_unknown_protocol_name_lists_the_packaged_ones():
    with pytest.raises(ConfigError, match="fastmri-knee-multicoil"):
        load_protocol("no-such-protocol")
    assert DataConfig().sigma_n == "auto"
