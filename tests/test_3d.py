"""The 3-D path (``spatial_dims: 3``): patch sampler, sliding-window inferer, config
rules, and train -> predict -> evaluate on PET/CT phantoms in the autoPET layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config, train_via_cli
from fusionseg.cli import app
from fusionseg.config import SamplingConfig, validate_config
from fusionseg.data.preprocess import PreparedCase
from fusionseg.data.samplers.patches3d import PatchDataset, WholeCaseDataset
from fusionseg.errors import ConfigError
from fusionseg.inference.inferers import get_inferer
from fusionseg.inference.inferers.sliding_window import MIRRORS_3D, volume_probabilities, window_predictor
from fusionseg.inference.options import InferOptions
from fusionseg.models import build_model

MODEL_3D = {"name": "monai_unet", "kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 1}}


def _case(shape=(20, 18, 14), seed=0) -> PreparedCase:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[5:9, 6:10, 4:8] = 1
    return PreparedCase(
        case_id=f"c{seed}",
        modalities=("pet", "ct"),
        image=rng.random((2, *shape), dtype=np.float32),
        label=label,
        bbox=((2, 2 + shape[0]), (0, shape[1]), (1, 1 + shape[2])),
        original_shape=(shape[0] + 4, shape[1], shape[2] + 2),
        affine=np.eye(4),
        spacing=(4.0, 4.0, 3.27),
        axial_axis=2,
    )


def _config_3d(data, tmp_path, **changes) -> dict:
    cfg = tiny_config(
        "petct3d",
        data,
        tmp_path,
        spatial_dims=3,
        model=MODEL_3D,
        loss={"name": "dice_ce", "kwargs": {}},
        sampling={"mode": "patch", "patch_size": [16, 16, 16], "tumour_probability": 0.8, "patches_per_case": 2},
        train={"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2, "lr": 0.01},
        evaluation={"overlays": 0, "metrics": ["dice", "hd95"], "challenge": "GLI"},
        postprocess={"method": "none"},
    )
    cfg.update(changes)
    return cfg


def test_patches_have_the_patch_size_even_when_the_case_is_smaller():
    cfg = SamplingConfig(mode="patch", patch_size=(24, 16, 16), tumour_probability=1.0, patches_per_case=3)
    ds = PatchDataset([_case()], ["ct", "pet"], cfg, seed=3)
    assert len(ds) == 3
    item = ds[0]
    assert item["image"].shape == (2, 24, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"].shape == (24, 16, 16) and item["label"].dtype == torch.int64
    assert item["label"].any()  # tumour_probability 1: centred on tumour
    # reproducible per (seed, epoch, index), different across epochs
    again = PatchDataset([_case()], ["ct", "pet"], cfg, seed=3)[0]
    assert torch.equal(item["image"], again["image"])
    ds.set_epoch(1)
    assert not all(
        torch.equal(ds[i]["image"], PatchDataset([_case()], ["ct", "pet"], cfg, seed=3)[i]["image"]) for i in range(3)
    )


def _monai_every_call(cfg: SamplingConfig, case: PreparedCase, modalities, seed: int, epoch: int, i: int) -> dict:
    """The patch as MONAI gives it when it pads the case and finds the tumour /
    background voxels on every call (the sampler before its per-case cache)."""
    from monai.transforms import (
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    from fusionseg.data.samplers.patches3d import _Seeded

    keys, p = ["image", "label"], cfg.tumour_probability
    chain = _Seeded(
        [
            SpatialPadd(keys, spatial_size=cfg.patch_size),
            RandCropByPosNegLabeld(keys, label_key="label", spatial_size=cfg.patch_size, pos=p, neg=1 - p),
            *[RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)],
            RandScaleIntensityd("image", factors=0.1, prob=0.5, channel_wise=True),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5, channel_wise=True),
        ]
    )
    channels = [case.modalities.index(m) for m in modalities]
    data = {"image": np.asarray(case.image)[channels], "label": case.label.astype(np.int64)[None]}
    out = chain(data, int(np.random.default_rng((seed, epoch, i)).integers(2**31)))[0]
    return {"image": torch.as_tensor(np.asarray(out["image"])), "label": torch.as_tensor(np.asarray(out["label"])[0])}


@pytest.mark.parametrize("cache_bytes", [0, 1 << 30])
def test_patches_are_those_monai_gives_when_it_indexes_the_case_on_every_call(cache_bytes):
    cfg = SamplingConfig(mode="patch", patch_size=(24, 16, 8), tumour_probability=0.5, patches_per_case=6, augment=True)
    cases = [_case(seed=0), _case(shape=(26, 20, 12), seed=1)]
    ds = PatchDataset(cases, ["ct", "pet"], cfg, seed=5)
    ds.cache_bytes = cache_bytes
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ref = _monai_every_call(cfg, cases[i // 6], ["ct", "pet"], 5, epoch, i)
            item = ds[i]
            assert torch.equal(item["image"], ref["image"]) and torch.equal(item["label"], ref["label"]), (epoch, i)
    assert len(ds._cache) == (0 if cache_bytes == 0 else 2)
    # a patch is a copy: changing it leaves the cached case as it was
    before = ds[0]["image"].clone()
    ds[0]["image"].zero_()
    assert torch.equal(ds[0]["image"], before)


def test_patch_channels_follow_the_requested_modality_order():
    cfg = SamplingConfig(mode="patch", patch_size=(8, 8, 8), tumour_probability=1.0)
    case = _case()
    case.image[1] = 5.0  # ct constant
    item = PatchDataset([case], ["ct", "pet"], cfg)[0]
    assert torch.all(item["image"][0] == 5.0) and not torch.all(item["image"][1] == 5.0)


def test_whole_validation_cases_are_padded_with_background():
    ds = WholeCaseDataset([_case()], ["pet", "ct"], (24, 24, 16))
    item = ds[0]
    assert item["image"].shape == (2, 24, 24, 16)
    assert float(item["image"][:, 20:].abs().sum()) == 0 and int(item["label"][20:].sum()) == 0
    assert int(item["label"].sum()) == int(_case().label.sum())


def test_sliding_window_equals_a_bare_monai_call():
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = build_model("monai_unet", in_channels=2, num_classes=2, spatial_dims=3, **MODEL_3D["kwargs"]).eval()
    case = _case()
    options = InferOptions(roi_size=(16, 16, 16), overlap=0.5, sw_batch_size=2, blend="gaussian")
    ours = volume_probabilities([net], case.image, options)
    with torch.no_grad():
        bare = sliding_window_inference(
            torch.from_numpy(case.image)[None],
            (16, 16, 16),
            2,
            lambda x: torch.softmax(net(x), 1),
            overlap=0.5,
            mode="gaussian",
        )[0]
    assert torch.equal(ours, torch.as_tensor(bare))
    labels = get_inferer(3)([net], case, ["pet", "ct"], _scheme(), 2, options)
    assert labels.shape == case.original_shape
    expected = ours.argmax(0).numpy().astype(np.uint8)
    assert np.array_equal(labels[2:-2, :, 1:-1], expected) and not labels[:2].any()


def test_3d_mirroring_averages_the_eight_flips():
    assert len(MIRRORS_3D) == 8 and () in MIRRORS_3D and (2, 3, 4) in MIRRORS_3D
    torch.manual_seed(0)
    net = build_model("monai_unet", in_channels=2, num_classes=2, spatial_dims=3, **MODEL_3D["kwargs"]).eval()
    x = torch.rand(1, 2, 16, 16, 16)
    with torch.no_grad():
        tta = window_predictor(net, mirror=True)(x)
        flipped = window_predictor(net, mirror=True)(x.flip(2))
    assert torch.allclose(flipped, tta.flip(2), atol=1e-5)  # invariant to a flip of its input


def fit_train(run) -> list[str]:
    return json.loads((run / "splits.json").read_text())["folds"][0]["train"]


def _scheme():
    from fusionseg.constants import get_label_scheme

    return get_label_scheme("petct")


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"sampling": {"mode": "tumour"}}, "sampling.mode: patch"),
        ({"sampling": {"mode": "patch", "patch_size": [16, 16]}}, "[X, Y, Z]"),
        ({"sampling": {"mode": "patch", "patch_size": [16, 16, 16], "val_mode": "all"}}, "sampling.val_mode"),
        ({"strategy": "joint"}, "spatial_dims 3 takes strategy early"),
    ],
)
def test_settings_that_do_not_apply_to_3d_are_errors(change, expected, tmp_path):
    raw = {"name": "x", "data": {"root": str(tmp_path)}, "spatial_dims": 3, "model": MODEL_3D}
    raw["sampling"] = {"mode": "patch", "patch_size": [16, 16, 16]}
    raw.update(change)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_config(raw)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"sampling": {"patches_per_case": 4}}, "patches_per_case applies to spatial_dims 3"),
        ({"inference": {"overlap": 0.25}}, "inference.overlap applies to spatial_dims 3"),
        ({"sampling": {"mode": "patch", "patch_size": [16, 16, 16]}}, "spatial_dims 2 takes [H, W]"),
    ],
)
def test_3d_settings_are_errors_under_2d(change, expected, tmp_path):
    raw = {"name": "x", "data": {"root": str(tmp_path)}, **change}
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_config(raw)


@pytest.mark.parametrize("target_spacing", [None, [6.0, 6.0, 5.0]], ids=["own-grid", "resampled"])
def test_train_predict_evaluate_3d_petct(phantom_dataset, tmp_path, target_spacing):
    """A 3-D early-fusion run on autoPET-layout phantoms (on their own grid, or
    resampled to a coarser target spacing and back); fusionseg predict gives the
    run's own test predictions voxel for voxel (same inferer), on the input grid with
    the input's affine and header, and fusionseg evaluate reproduces the run's numbers."""
    data = phantom_dataset("autopet", n_cases=4)
    cfg = _config_3d(data, tmp_path)
    if target_spacing is not None:
        cfg["preprocess"] = {"target_spacing": target_spacing}
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    fit = json.loads((run / "fold_0" / "fit.json").read_text())
    assert fit["patch_size"] == [16, 16, 16] and fit["train_patches_per_epoch"] == 2 * len(fit_train(run))
    test_cases = json.loads((run / "splits.json").read_text())["folds"][0]["test"]
    out = tmp_path / "pred"
    args = ["predict", str(run), str(data), str(out), "--fold", "0", "--no-progress"]
    for case in test_cases:
        args += ["--case", case]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for case in test_cases:
        mine, theirs = nib.load(out / f"{case}.nii.gz"), nib.load(run / "predictions" / f"{case}.nii.gz")
        assert np.array_equal(np.asanyarray(mine.dataobj), np.asanyarray(theirs.dataobj)), case
        source = nib.load(next((data / case).glob("SUV.nii.gz")))
        assert np.array_equal(mine.affine, source.affine) and mine.shape == source.shape
    ev = tmp_path / "ev"
    result = CliRunner().invoke(app, ["evaluate", str(out), str(data), "--output-dir", str(ev), "--no-progress"])
    assert result.exit_code == 0, result.output
    ours = pd.read_csv(ev / "metrics_per_case.csv").set_index(["case", "region"]).sort_index()
    runs = pd.read_csv(run / "metrics_per_case.csv").set_index(["case", "region"]).sort_index()
    assert np.allclose(ours["dice"], runs.loc[ours.index, "dice"], atol=1e-12)


# -- PET rules (strategy: threshold) ---------------------------------------------------


def test_threshold_rules_on_known_values():
    from fusionseg.config import ThresholdConfig
    from fusionseg.inference.rules import threshold_mask

    suv = np.array([[[0.0, 2.4, 2.5, 4.0, 10.0]]])
    assert threshold_mask(suv, ThresholdConfig(rule="suv", value=2.5)).tolist() == [[[0, 0, 1, 1, 1]]]
    assert threshold_mask(suv, ThresholdConfig(rule="suvmax_fraction", value=0.4)).tolist() == [[[0, 0, 0, 1, 1]]]
    assert not threshold_mask(np.zeros((2, 2, 2)), ThresholdConfig(rule="suvmax_fraction", value=0.4)).any()
    with pytest.raises(ValueError, match="fraction of SUVmax"):
        ThresholdConfig(rule="suvmax_fraction", value=40)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"threshold": None}, "needs a threshold section"),
        ({"model": {"name": "monai_unet"}}, "model does not apply under strategy: threshold"),
        ({"data": {"modalities": ["ct"]}}, "reads the PET"),
        ({"postprocess": {"method": "validation"}}, "needs a model"),
        ({"strategy": "early"}, "threshold applies to strategy: threshold only"),
    ],
)
def test_threshold_config_rules(change, expected, tmp_path):
    raw = {"name": "t", "data": {"root": str(tmp_path), "modalities": ["pet", "ct"]}, "strategy": "threshold"}
    raw["threshold"] = {"rule": "suv", "value": 2.5}
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) and value else value
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match=expected):
        validate_config(raw)


def test_threshold_run_scores_the_rule_like_a_model(phantom_dataset, tmp_path):
    """A threshold row trains nothing, writes predictions with the PET's header and
    per-case metrics that fusionseg evaluate reproduces; fusionseg predict on the run
    applies the rule to cases and writes what the folds wrote."""
    from fusionseg.inference.rules import threshold_mask

    data = phantom_dataset("autopet", n_cases=4)
    cfg = {
        "name": "suv25",
        "strategy": "threshold",
        "threshold": {"rule": "suv", "value": 2.5},
        "data": {"root": str(data), "modalities": ["pet", "ct"], "cache_dir": str(tmp_path / "cache")},
        "split": {"kind": "kfold", "folds": 2},
        "evaluation": {"overlays": 0, "metrics": ["dice", "fpv_ml", "fnv_ml"]},
        "output_dir": str(tmp_path / "runs"),
    }
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    fit = json.loads((run / "fold_0" / "fit.json").read_text())
    assert fit["rule"] == {"rule": "suv", "value": 2.5} and fit["stages"] == [] and fit["checkpoint"] is None
    for case in sorted(p.name for p in data.iterdir() if p.is_dir()):
        pred = nib.load(run / "predictions" / f"{case}.nii.gz")
        suv = nib.load(data / case / "SUV.nii.gz")
        assert np.array_equal(np.asanyarray(pred.dataobj), threshold_mask(suv.get_fdata(), _rule()))
        assert np.array_equal(pred.affine, suv.affine)
    ev = tmp_path / "ev"
    out = CliRunner().invoke(
        app, ["evaluate", str(run / "predictions"), str(data), "--output-dir", str(ev), "--no-progress"]
    )
    assert out.exit_code == 0, out.output
    ours = pd.read_csv(ev / "metrics_per_case.csv").set_index(["case", "region"]).sort_index()
    runs = pd.read_csv(run / "metrics_per_case.csv").set_index(["case", "region"]).sort_index()
    for metric in ("dice", "fpv_ml", "fnv_ml"):
        assert np.allclose(ours[metric], runs.loc[ours.index, metric], atol=1e-12)
    # predict on the rule run applies the rule to new cases, as the folds did
    out = tmp_path / "p"
    result = CliRunner().invoke(app, ["predict", str(run), str(data), str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "rule: SUV >= 2.5 (no network" in " ".join(result.output.split())
    for case in sorted(p.name for p in data.iterdir() if p.is_dir()):
        mine, theirs = nib.load(out / f"{case}.nii.gz"), nib.load(run / "predictions" / f"{case}.nii.gz")
        assert np.array_equal(np.asanyarray(mine.dataobj), np.asanyarray(theirs.dataobj)), case
        assert np.array_equal(mine.affine, theirs.affine)


def _rule():
    from fusionseg.config import ThresholdConfig

    return ThresholdConfig(rule="suv", value=2.5)


# -- resampling to a target spacing (preprocess.target_spacing) ------------------------


def test_resampled_case_goes_back_onto_its_own_grid(phantom_dataset):
    """A case resampled to twice its voxel size has about half the voxels per axis; its
    label is nearest-neighbour (same values), the one-hot label taken back by
    ``to_box`` and un-cropped lands on the source grid and overlaps the source GT."""
    from fusionseg.config import PreprocessConfig
    from fusionseg.data.cases import discover
    from fusionseg.data.io import load_volume
    from fusionseg.data.preprocess import prepare_case_arrays

    ds = discover(phantom_dataset("autopet", n_cases=4))
    case = ds.labelled[0]
    plain = prepare_case_arrays(case, ds.scheme, PreprocessConfig())
    target = tuple(2 * s for s in plain.spacing)
    coarse = prepare_case_arrays(case, ds.scheme, PreprocessConfig(target_spacing=target))
    assert not plain.resampled and coarse.resampled and coarse.box_shape == plain.image.shape[1:]
    assert all(abs(n - b / 2) <= 1 for n, b in zip(coarse.image.shape[1:], coarse.box_shape))
    assert set(np.unique(coarse.label)) <= set(np.unique(plain.label))
    onehot = np.stack([coarse.label == k for k in range(ds.scheme.num_classes)]).astype(np.float32)
    back = coarse.uncrop(coarse.to_box(onehot).argmax(axis=0).astype(np.uint8))
    gt, _ = load_volume(case.label, dtype=np.int64)
    assert back.shape == gt.shape
    inter = np.logical_and(back > 0, gt > 0).sum()
    assert 2 * inter / ((back > 0).sum() + (gt > 0).sum()) > 0.8
    assert np.array_equal(coarse.crop(back).shape, coarse.label.shape)


def test_target_spacing_changes_the_cache_key_and_rejects_central_slices(tmp_path, phantom_dataset):
    from fusionseg.config import PreprocessConfig

    assert PreprocessConfig(target_spacing=(2, 2, 2)).key() != PreprocessConfig().key()
    with pytest.raises(ValueError, match="target_spacing"):
        PreprocessConfig(target_spacing=(0, 2, 2))
    cfg = tiny_config("s", phantom_dataset("brats2018", n_cases=4), tmp_path, preprocess={"target_spacing": [2, 2, 2]})
    cfg["sampling"] = {"mode": "central", "central_k": 4}
    with pytest.raises(ConfigError, match="target_spacing"):
        validate_config(cfg)
