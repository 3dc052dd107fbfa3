"""Missing modalities (S1): simulation, modality dropout, config rules, subset scoring
in train / compare / evaluate-subsets, and predict on a case that lacks a sequence."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config, train_via_cli
from fusionseg.cli import app
from fusionseg.config import validate_config
from fusionseg.errors import ConfigError
from fusionseg.experiments.subset_report import subset_order
from fusionseg.models import build_model
from fusionseg.strategies.a2fseg import A2FSegStrategy, deep_supervision_weights
from fusionseg.strategies.early import EarlyFusion
from fusionseg.strategies.missing import ModalityDropout, WithSubset, simulate_missing, subset_mask

MODS = ("t1", "t1ce", "t2", "flair")


def _early(mask_channels: bool = False) -> EarlyFusion:
    torch.manual_seed(0)
    model = build_model(
        "monai_unet",
        in_channels=4 * (2 if mask_channels else 1),
        num_classes=4,
        spatial_dims=2,
        channels=(4, 8),
        strides=(2,),
        num_res_units=1,
    )
    return EarlyFusion(model, MODS).configure_missing("zero", mask_channels=mask_channels).eval()


def test_zero_simulation_equals_feeding_a_zeroed_channel():
    strategy, x = _early(), torch.randn(2, 4, 16, 16)
    available = subset_mask(MODS, ("t1", "t2"), batch=2)
    zeroed = x.clone()
    zeroed[:, [1, 3]] = 0
    with torch.no_grad():
        assert torch.equal(strategy(x, available), strategy.model(zeroed))
        # the absent channels are never read: NaN there changes nothing
        x[:, 3] = float("nan")
        assert torch.equal(strategy(x, available), strategy.model(zeroed))
        # every modality present: the plain input
        assert torch.equal(WithSubset(strategy, MODS)(x[:, :].nan_to_num()), strategy.model(x.nan_to_num()))


def test_mean_simulation_and_mask_channels():
    x = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).view(2, 4, 2, 2)
    available = torch.tensor([[True, False, True, False], [True, True, True, False]])
    filled = simulate_missing(x, available, "mean")
    assert torch.equal(filled[0, 1], (x[0, 0] + x[0, 2]) / 2) and torch.equal(filled[0, 0], x[0, 0])
    assert torch.allclose(filled[1, 3], x[1, :3].mean(dim=0))
    strategy = _early(mask_channels=True)
    seen = {}
    strategy.model.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        strategy(torch.randn(2, 4, 16, 16), available)
    assert seen["x"].shape[1] == 8 and torch.equal(seen["x"][:, 4:, 0, 0], available.float())
    with pytest.raises(ValueError, match="no modality present"):
        simulate_missing(x, torch.zeros(2, 4, dtype=torch.bool), "zero")


def test_alternate_dropout_schedule_and_resume():
    drop, full = ModalityDropout("alternate", 4, seed=3), torch.ones(6, 4, dtype=torch.bool)
    drop.start_epoch(0)  # epoch 1 (1-based, odd): every modality
    assert all(torch.equal(drop(full), full) for _ in range(5))
    drop.start_epoch(1)  # epoch 2: one subset of size 1-3 shared by the batch
    draws = [drop(full) for _ in range(40)]
    assert all((d == d[0]).all() and 1 <= int(d[0].sum()) <= 3 for d in draws)
    assert len({tuple(d[0].tolist()) for d in draws}) > 3
    again = ModalityDropout("alternate", 4, seed=3)
    again.start_epoch(1)  # a resumed run draws the same subsets
    assert all(torch.equal(again(full), d) for d in draws)


def test_per_sample_dropout_never_empties_a_sample():
    drop, full = ModalityDropout("per_sample", 4, seed=0), torch.ones(64, 4, dtype=torch.bool)
    kept = drop(full)
    assert (kept.sum(dim=1) >= 1).all()
    assert 10 < int(kept.all(dim=1).sum()) < 54  # about half keep everything
    assert len({tuple(r.tolist()) for r in kept}) > 4


def _cfg(**extra):
    return {"name": "x", "data": {"root": "/nowhere"}, **extra}


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"missing": {"simulate": "drop_branch"}}, "needs a model with one branch per modality"),
        ({"strategy": "joint", "missing": {"mask_channels": True}}, "mask_channels applies to strategy early"),
        ({"strategy": "a2fseg", "model": {"name": "monai_unet"}}, "strategy a2fseg takes model a2fseg"),
        ({"model": {"name": "a2fseg"}}, "model a2fseg needs strategy a2fseg"),
        ({"missing": {"dropout": "sometimes"}}, "alternate"),
    ],
)
def test_missing_settings_that_do_not_apply_are_errors(extra, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_cfg(**extra))


def test_simulation_default_follows_the_strategy():
    assert validate_config(_cfg()).missing.simulate == "zero"
    cfg = validate_config(_cfg(strategy="a2fseg", model={"name": "a2fseg", "kwargs": {"base": 4, "depth": 2}}))
    assert cfg.missing.simulate == "drop_branch"


def test_a2fseg_strategy_ignores_absent_channels_and_trains_every_head():
    torch.manual_seed(0)
    model = build_model("a2fseg", in_channels=4, num_classes=4, spatial_dims=2, base=4, depth=2)
    from fusionseg.losses import build_seg_loss

    strategy = A2FSegStrategy(model, MODS, build_seg_loss("dice_ce", num_classes=4)).configure_missing("drop_branch")
    strategy.eval()
    x, noisy = torch.randn(2, 4, 16, 16), None
    noisy = x.clone()
    noisy[:, 2] = torch.randn(2, 16, 16) * 100
    with torch.no_grad():
        a = WithSubset(strategy, ("t1", "t1ce", "flair"))(x)
        b = WithSubset(strategy, ("t1", "t1ce", "flair"))(noisy)
    assert torch.equal(a, b)
    strategy.train()
    batch = {"image": x, "label": torch.randint(0, 4, (2, 16, 16)), "available": torch.ones(2, 4, dtype=torch.bool)}
    loss, logs = strategy.training_loss(batch)
    loss.backward()
    assert {"loss_final", "loss_average", "loss_branches"} <= set(logs)
    # every head but the coarsest (deep-supervision weight 0; the first decoder stage) learns
    no_grad = {n for n, p in strategy.named_parameters() if p.grad is None}
    assert no_grad and all(".heads.0." in n for n in no_grad)
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])


def _subset_run(tmp_path, data, name, **sections):
    cfg = tiny_config(name, data, tmp_path, **sections)
    cfg["data"]["modalities"] = list(MODS)
    cfg["evaluation"] = {"metrics": ["dice"], "modality_subsets": "all", "overlays": 0}
    return cfg


def test_train_scores_every_subset_and_evaluate_subsets_gives_the_same_numbers(brats18_phantom, tmp_path):
    cfg = _subset_run(tmp_path, brats18_phantom, "early_sub", missing={"dropout": "alternate"})
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(run / "fold_0" / "subsets" / "metrics_per_case.csv")
    assert set(frame["subset"]) == {"+".join(s) for s in subset_order(MODS)}
    assert len(frame) == frame["case"].nunique() * 15 * 3
    md = (run / "modality_subsets.md").read_text()
    assert "zero: absent input channels set to 0" in md and "alternate" in md
    assert (run / "modality_subsets.png").stat().st_size > 0
    # evaluate-subsets on the finished run: the same numbers, read from a fresh computation
    shutil.rmtree(run / "fold_0" / "subsets")
    out = CliRunner().invoke(app, ["evaluate-subsets", str(run), "--subsets", "t1ce+flair,flair"])
    assert out.exit_code == 0, out.output
    again = pd.read_csv(run / "fold_0" / "subsets" / "metrics_per_case.csv")
    merged = again.merge(frame, on=["case", "fold", "subset", "region"], suffixes=("", "_train"))
    assert len(merged) == len(again) == frame["case"].nunique() * 2 * 3
    assert (merged["dice"] == merged["dice_train"]).all()


def test_a2fseg_run_and_predict_without_a_sequence(brats18_phantom, tmp_path):
    model = {"name": "a2fseg", "kwargs": {"base": 4, "depth": 2}}
    cfg = _subset_run(
        tmp_path, brats18_phantom, "a2f", strategy="a2fseg", model=model, missing={"dropout": "alternate"}
    )
    cfg["evaluation"]["modality_subsets"] = ["flair", "t1ce+flair"]
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(run / "fold_0" / "subsets" / "metrics_per_case.csv")["subset"]) == {"flair", "t1ce+flair"}
    data = tmp_path / "incomplete"
    shutil.copytree(brats18_phantom, data)
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    flair = next(case.glob("*_flair.nii*"))
    flair.unlink()
    out = CliRunner().invoke(app, ["predict", str(run), str(data), str(tmp_path / "pred"), "--case", case.name])
    assert out.exit_code == 0, out.output
    assert "lacks flair" in out.output and (tmp_path / "pred" / f"{case.name}.nii.gz").exists()


def test_predict_without_a_sequence_needs_a_model_built_for_it(brats18_phantom, tmp_path):
    cfg = tiny_config("plain", brats18_phantom, tmp_path)
    cfg["data"]["modalities"] = list(MODS)
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    data = tmp_path / "incomplete"
    shutil.copytree(brats18_phantom, data)
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    next(case.glob("*_t1ce.nii*")).unlink()
    out = CliRunner().invoke(app, ["predict", str(run), str(data), str(tmp_path / "pred"), "--case", case.name])
    assert out.exit_code == 1, out.output
    assert "t1ce" in out.output and "missing.dropout" in out.output and "Traceback" not in out.output
    assert "cannot be used for prediction (nothing was written)" in " ".join(out.output.split())
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())


def test_slab_only_subset_prediction_gives_the_whole_volume_numbers(brats18_phantom, tmp_path, monkeypatch):
    """Under evaluation.scope: sampled_slices a 2-D model's subset metrics come from
    predicting the evaluated slab only; they equal those of whole-volume predictions."""
    import fusionseg.experiments.subsets as subsets

    cfg = _subset_run(tmp_path, brats18_phantom, "slab")
    cfg["sampling"] = {"mode": "central", "central_k": 6, "val_mode": "central"}
    cfg["evaluation"].update(scope="sampled_slices", metrics=["dice", "hd95"])
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    fast = pd.read_csv(run / "fold_0" / "subsets" / "metrics_per_case.csv")
    calls = []
    monkeypatch.setattr(subsets, "evaluated_part", lambda c, prepared, post: calls.append(1) or prepared)
    shutil.rmtree(run / "fold_0" / "subsets")
    out = CliRunner().invoke(app, ["evaluate-subsets", str(run)])
    assert out.exit_code == 0, out.output
    slow = pd.read_csv(run / "fold_0" / "subsets" / "metrics_per_case.csv")
    assert calls and len(slow) == len(fast) == fast["case"].nunique() * 15 * 3
    pd.testing.assert_frame_equal(fast, slow)


def test_a2fseg_attention_report_sums_to_one_over_modalities(brats18_phantom, tmp_path):
    model = {"name": "a2fseg", "kwargs": {"base": 4, "depth": 2}}
    cfg = _subset_run(tmp_path, brats18_phantom, "a2f_att", strategy="a2fseg", model=model)
    cfg["evaluation"]["modality_subsets"] = ["flair"]
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(run / "fold_0" / "subsets" / "attention.csv")
    assert set(frame["modality"]) == set(MODS)
    per_voxel_class = frame.groupby(["case", "class"])["weight"].sum()
    assert per_voxel_class.to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert (frame["voxels"] > 0).all() and (run / "attention.md").exists() and (run / "attention.png").exists()
