"""Cross-modal SSL (S2): config rules, the step lr schedule, the pretext loss, the
transfer on entering the segmentation stage, checkpoints, and train -> report on
phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config, train_via_cli
from fusionseg.config import validate_config
from fusionseg.constants import BRATS2017
from fusionseg.errors import ConfigError
from fusionseg.strategies import build_strategy
from fusionseg.strategies.ssl import PRETEXT_PREFIX, CrossModalSSL
from fusionseg.training.loop import epoch_lr

MODALITIES = ["t1", "t1ce", "t2", "flair"]


def _config(**changes) -> dict:
    cfg = {
        "name": "ssl",
        "strategy": "ssl",
        "data": {"root": "/nonexistent", "modalities": MODALITIES},
        "model": {"name": "resnet50_unet"},
    }
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": "early", "ssl": {}}, "ssl applies to strategy: ssl only"),
        ({"ssl": {"target": "t1"}}, "is also an input"),
        ({"ssl": {"inputs": ["t1", "pd"]}}, "pd is not in data.modalities"),
        ({"model": {"name": "unet"}}, "model must be resnet50_unet"),
        ({"train": {"lr_step_epochs": 5}}, "applies to lr_schedule: step only"),
        ({"ssl": {"epochs": 2, "warmup": 1}}, "warmup"),
    ],
)
def test_settings_that_do_not_apply_are_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_config(**changes))


def test_ssl_gets_its_default_section_and_the_step_schedule_is_torch_steplr():
    cfg = validate_config(_config(train={"lr_schedule": "step", "lr_step_epochs": 10, "lr_gamma": 0.5}))
    assert cfg.ssl.inputs == ["t1", "t1ce"] and cfg.ssl.target == "flair" and cfg.ssl.mask == "brain"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    for epoch in range(25):
        assert epoch_lr(1e-4, epoch, 30, "step", 10, 0.5) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


@pytest.fixture(scope="module")
def strategy() -> CrossModalSSL:
    torch.manual_seed(0)
    cfg = validate_config(_config(data={"root": "/nonexistent", "modalities": ["flair", "t1ce", "t2", "t1"]}))
    return build_strategy(cfg, cfg.data.modalities, BRATS2017)


def test_pretext_loss_is_the_mse_over_brain_voxels(strategy):
    strategy.set_stage("pretext")
    image = torch.randn(2, 4, 64, 64)
    image[:, :, :, :20] = 0.0  # background: zero in every modality
    loss, logs = strategy.training_loss({"image": image, "label": torch.zeros(2, 64, 64, dtype=torch.long)})
    with torch.no_grad():
        predicted = strategy.pretext_net(image[:, [3, 1]])  # t1, t1ce by name
    expected = ((predicted - image[:, 0:1]) ** 2)[..., 20:].mean()  # flair is channel 0 here
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert logs["loss_pretext_mse"] == pytest.approx(float(loss.detach()))
    assert any(p.requires_grad for p in strategy.pretext_net.parameters())
    assert not any(p.requires_grad for p in strategy.seg_net.parameters())


def test_entering_segmentation_transfers_the_pretext_first_conv_by_name(strategy):
    with torch.no_grad():
        for p in strategy.pretext_net.parameters():
            p.mul_(1.01)  # pretext weights differ from any fresh initialisation
    head_before = {k: v.clone() for k, v in strategy.seg_net.segmentation_head.state_dict().items()}
    strategy.set_stage("segmentation")
    report = strategy.transfer_report
    assert report is not None
    source = strategy.pretext_net.encoder.conv1.weight  # (64, 2, 7, 7): t1, t1ce
    target = strategy.seg_net.encoder.conv1.weight  # (64, 4, 7, 7): flair, t1ce, t2, t1
    assert torch.equal(target[:, 3], source[:, 0]) and torch.equal(target[:, 1], source[:, 1])
    assert not torch.equal(target[:, 0], source[:, 0])
    for k, v in strategy.seg_net.segmentation_head.state_dict().items():
        assert torch.equal(v, head_before[k])
    assert torch.equal(
        strategy.seg_net.encoder.layer4[2].conv3.weight, strategy.pretext_net.encoder.layer4[2].conv3.weight
    )
    assert not any(p.requires_grad for p in strategy.pretext_net.parameters())
    # the segmentation stage's checkpoint leaves the pretext network out and loads alone
    state = strategy.state_dict()
    assert state and not any(k.startswith(PRETEXT_PREFIX) for k in state)
    fresh = build_strategy(
        validate_config(_config(data={"root": "/x", "modalities": ["flair", "t1ce", "t2", "t1"]})),
        ["flair", "t1ce", "t2", "t1"],
        BRATS2017,
        with_losses=False,
    )
    fresh.load_state_dict(state)
    fresh.eval(), strategy.eval()
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), strategy(x))


def _tiny_ssl(name: str, data, tmp_path, ssl: dict, **evaluation) -> dict:
    """A seconds-long SSL run on phantom ``data``: ResNet-50 U-Net, 64x64 windows, one
    step per stage; ``ssl`` the section, ``evaluation`` extra evaluation settings."""
    return tiny_config(
        name,
        data,
        tmp_path,
        strategy="ssl",
        model={"name": "resnet50_unet"},
        sampling={"mode": "tumour", "patch_size": [64, 64], "tumour_probability": 0.5},
        train={"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1, "threads": 1},
        ssl=ssl,
        evaluation={"overlays": 0, **evaluation},
    )


def test_ssl_trains_transfers_and_reports_the_pretext_on_phantoms(brats18_phantom, tmp_path):
    cfg = _tiny_ssl("ssl", brats18_phantom, tmp_path, {"epochs": 1}, metrics=["dice", "asd"])
    cfg["data"]["scheme"] = "brats2017_classes"
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    fold = run / "fold_0"
    fit = json.loads((fold / "fit.json").read_text())
    assert [s["stage"] for s in fit["stages"]] == ["pretext", "segmentation"]
    transfer = json.loads((fold / "transfer.json").read_text())
    assert transfer["copied"] and any("segmentation_head" in name for name, _ in transfer["skipped"])
    quality = pd.read_csv(fold / "pretext_quality.csv")
    assert set(quality.columns) >= {"case", "fold", "pretext_mse", "pretext_psnr", "pretext_ssim"}
    assert quality["pretext_ssim"].between(-1, 1).all() and (quality["pretext_mse"] > 0).all()
    assert (fold / "pretext_example.png").stat().st_size > 0
    summary = json.loads((run / "summary.json").read_text())
    assert "conventions" in summary["pretext_quality"] and "0" in summary["pretext_quality"]["per_fold"]
    per_case = pd.read_csv(run / "metrics_per_case.csv")
    assert set(per_case["region"]) == {"WT", "TC", "ET", "NCR", "ED"} and "asd" in per_case
    # the best checkpoint predicts without the pretext network, as the run did
    state = torch.load(fold / "segmentation" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert not any(k.startswith(PRETEXT_PREFIX) for k in state["strategy"])
    from typer.testing import CliRunner

    from fusionseg.cli import app

    case = sorted(per_case["case"])[0]
    out = tmp_path / "predicted"
    result = CliRunner().invoke(
        app, ["predict", str(run), str(brats18_phantom), str(out), "--case", case, "--fold", "0", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    ours = nib.load(next(out.rglob(f"{case}*.nii.gz"))).get_fdata()
    assert np.array_equal(ours, nib.load(run / "predictions" / f"{case}.nii.gz").get_fdata())


def test_pretext_also_trains_on_unlabelled_cases_but_never_on_a_copy_of_a_labelled_one(phantom_dataset, tmp_path):
    """ssl.pretext_cases train+unlabelled: the pretext stage draws from the training
    slices plus every slice of the unlabelled cases; an unlabelled copy of a labelled
    case (it could be a test case) is left out, and never enters the split."""
    import shutil

    source = phantom_dataset("brats2018", n_cases=4, n_test=2)
    data = Path(shutil.copytree(source, tmp_path / "data"))
    labelled = sorted(p for p in data.iterdir() if list(p.glob("*_seg.nii.gz")))
    copy = data / "Copy_1"
    copy.mkdir()
    for f in labelled[0].glob("*.nii.gz"):
        if not f.name.endswith("_seg.nii.gz"):
            shutil.copy(f, copy / f.name.replace(labelled[0].name, "Copy_1"))
    cfg = _tiny_ssl("ssl-u", data, tmp_path, {"epochs": 1, "pretext_cases": "train+unlabelled"})
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    assert "holds the images of labelled case" in result.output and "Copy_1" in result.output
    fit = json.loads((run / "fold_0" / "fit.json").read_text())
    assert fit["pretext_unlabelled_cases"] == 2  # the phantom's two unlabelled cases, not the copy
    assert fit["pretext_slices"] > fit["train_slices"]
    splits = json.loads((run / "splits.json").read_text())
    assert not {"Copy_1"} & {c for f in splits["folds"] for part in ("train", "val", "test") for c in f[part]}
