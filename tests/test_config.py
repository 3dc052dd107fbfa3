"""Typed configs: validation, overrides, round trip."""

from __future__ import annotations

import pytest
import yaml

from fusionseg.config import load_config, validate_config
from fusionseg.errors import ConfigError


def test_defaults_roundtrip_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "x", "modalities": ["T1Gd", "FLAIR"]}}))
    cfg = load_config(path, ["train.epochs=3", "model.kwargs={channels: [8, 16]}"])
    assert cfg.name == "exp"
    assert cfg.data.modalities == ["t1ce", "flair"]  # canonical names
    assert cfg.train.epochs == 3 and cfg.model.kwargs == {"channels": [8, 16]}
    assert validate_config(yaml.safe_load(cfg.to_yaml())) == cfg


def test_unknown_keys_and_bad_values_are_listed(tmp_path):
    with pytest.raises(ConfigError, match="train.epoch"):
        validate_config({"name": "x", "data": {"root": "x"}, "train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="patch_size"):
        validate_config({"name": "x", "data": {"root": "x"}, "sampling": {"mode": "patch"}})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"strategy": "erly"}, ["strategy", "'early', 'decoupled', 'joint', 'a2fseg', 'threshold' or 'ssl'"]),
        ({"evaluation": {"challenge": "GLLI"}}, ["evaluation.challenge", "GLI", "MEN", "custom"]),
        ({"model": {"name": "unett"}}, ["model:", "unet2stage", "monai_unet"]),
        ({"model": {"kwargs": {"chanels": [4, 8]}}}, ["model:", "chanels", "channels"]),
        ({"loss": {"name": "dice_cee"}}, ["loss:", "dice_ce", "dice_focal"]),
        ({"loss": {"kwargs": {"gama": 2}}}, ["loss:", "gama"]),
        ({"strategy": "joint", "fusion": {"model": {"name": "lrnet"}}}, ["fusion.model:", "lrrnet"]),
    ],
)
def test_component_name_typos_fail_at_load_with_the_choices(section, expected):
    raw = {"name": "x", "data": {"root": "somewhere"}, **section}
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    for text in expected:
        assert text in str(info.value), (text, str(info.value))
    assert "Value error," not in str(info.value)


def test_a_fusion_section_under_early_fusion_is_an_error():
    # early fusion builds no fusion network: a fusion section there is an error, not ignored
    with pytest.raises(ConfigError, match="fusion does not apply under strategy: early"):
        validate_config({"name": "x", "data": {"root": "somewhere"}, "fusion": {"model": {"name": "lrnet"}}})
    assert validate_config({"name": "x", "data": {"root": "somewhere"}}).fusion is None


def test_every_shipped_config_loads_under_every_protocol():
    """configs/*.yaml: experiment configs validate; studies validate under each protocol,
    and the real-data rows name only cases that exist (where ../shared/data is here)."""
    from pathlib import Path

    from conftest import SHARED_DATA
    from fusionseg.experiments.study import load_study

    repo = Path(__file__).resolve().parents[1]
    checked = 0
    for path in sorted((repo / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "study" not in raw:
            load_config(path)
            checked += 1
            continue
        for protocol in raw.get("protocols") or [None]:
            for cfg in load_study(path, protocol).configs:
                checked += 1
                root = SHARED_DATA / cfg.data.root.name
                if cfg.data.cases and root.is_dir() and str(cfg.data.root).startswith("../shared/data"):
                    missing = [c for c in cfg.data.cases if not (root / c).is_dir()]
                    assert not missing, (path.name, protocol, missing)
    assert checked >= 20


def test_omitted_loss_options_are_the_named_losss_own():
    """S0's class weights are the default of the default loss (dice_ce) only: naming
    another loss without kwargs takes that loss's defaults instead of failing on, or
    silently training with, options meant for dice_ce."""
    data = {"root": "/data/brats"}
    assert validate_config({"name": "a", "data": data}).loss.kwargs == {"class_weights": [0.5, 2.0, 5.0, 4.0]}
    named = validate_config({"name": "b", "data": data, "loss": {"name": "dice_ce"}})
    assert named.loss.kwargs["class_weights"] == [0.5, 2, 5, 4]
    assert validate_config({"name": "c", "data": data, "loss": {"name": "focal"}}).loss.kwargs == {}
    regions = {"name": "d", "data": data, "loss": {"name": "region_dice_bce"}, "output": {"kind": "regions"}}
    assert validate_config(regions).loss.kwargs == {}
