"""Region-based outputs (``output.kind: regions``): the region chain, decoding, the
Dice + BCE region loss, the config rules and a run trained and predicted end to end."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from typer.testing import CliRunner

from conftest import tiny_config, train_via_cli
from fusionseg.cli import app
from fusionseg.config import ExperimentConfig
from fusionseg.constants import BRATS2017, BRATS2017_CLASSES, MSD_TASK01, PETCT
from fusionseg.errors import ConfigError
from fusionseg.losses import check_seg_loss_options
from fusionseg.losses.regions import RegionDiceBCELoss
from fusionseg.outputs import CLASS_OUTPUT, output_head, region_chain
from fusionseg.strategies import build_strategy


def test_brats_chain_members_and_paint_order():
    head = output_head("regions", BRATS2017)  # classes 0 bg, 1 NCR, 2 ED, 3 ET (raw 4)
    assert head.regions == ("WT", "TC", "ET")
    assert head.members == ((1, 2, 3), (1, 3), (3,))
    assert head.paint == (2, 1, 3)  # WT paints ED, then TC paints NCR, then ET
    assert head.channels(4) == 3 and CLASS_OUTPUT.channels(4) == 4
    # the five-region S2 scheme finds the same chain; MSD's TC is NET + ET
    assert region_chain(BRATS2017_CLASSES) == ("WT", "TC", "ET")
    assert output_head("regions", MSD_TASK01).paint == (1, 2, 3)
    assert output_head("regions", PETCT).members == ((1,),)


@pytest.mark.parametrize("names", [["TC", "ET"], ["WT", "ET"], ["WT", "TC"], ["WT", "XX"]])
def test_a_broken_chain_is_a_config_error(names):
    with pytest.raises(ConfigError, match="output.kind regions"):
        region_chain(BRATS2017, names)


def test_regions_decode_as_nnunet_paints_them():
    head = output_head("regions", BRATS2017)
    p = np.zeros((3, 2, 4), dtype=np.float32)  # (R, H, W)
    p[0] = [[0.9, 0.9, 0.9, 0.1], [0.9, 0.2, 0.6, 0.4]]  # WT
    p[1] = [[0.1, 0.8, 0.8, 0.9], [0.2, 0.1, 0.7, 0.3]]  # TC
    p[2] = [[0.1, 0.1, 0.7, 0.1], [0.3, 0.9, 0.2, 0.3]]  # ET
    expected = np.zeros((2, 4), dtype=np.uint8)
    for channel, value in enumerate(head.paint):  # nnU-Net: seg[p_r > 0.5] = class, largest region first
        expected[p[channel] > 0.5] = value
    assert np.array_equal(head.classes(p, dim=0), expected)
    assert expected.tolist() == [[2, 1, 3, 1], [2, 3, 1, 0]]
    as_tensor = head.classes(torch.from_numpy(p)[None], dim=1)[0]
    assert isinstance(as_tensor, torch.Tensor) and np.array_equal(as_tensor.numpy(), expected)
    logits = torch.logit(torch.from_numpy(p)[None].clamp(1e-4, 1 - 1e-4))
    assert np.array_equal(head.classes_from_logits(logits)[0].numpy(), expected)


@pytest.mark.parametrize("spatial", [(8, 8), (4, 4, 4)])
def test_region_loss_is_monai_dice_plus_bce_on_region_masks(spatial):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, *spatial, requires_grad=True)
    target = torch.randint(0, 4, (2, *spatial))
    head = output_head("regions", BRATS2017)
    loss = RegionDiceBCELoss(4, members=head.members, lambda_dice=1.0, lambda_bce=0.5)
    masks = head.region_targets(target)
    assert masks[:, 0].sum() == (target > 0).sum() and masks[:, 2].sum() == (target == 3).sum()
    expected = DiceLoss(sigmoid=True)(logits, masks) + 0.5 * F.binary_cross_entropy_with_logits(logits, masks)
    value = loss(logits, target)
    assert torch.allclose(value, expected, atol=1e-6)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="K=3"):
        loss(logits[:, :2], target)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        loss(logits, target + 1)


def test_members_is_not_a_config_option():
    with pytest.raises(TypeError, match="members"):
        check_seg_loss_options("region_dice_bce", {"members": [[1]]})
    with pytest.raises(ValueError, match="members must list"):
        RegionDiceBCELoss(4)


def _cfg(**sections) -> dict:
    return {"name": "r", "data": {"root": "/nonexistent"}, **sections}


def test_config_ties_region_outputs_to_the_region_loss():
    ok = ExperimentConfig.model_validate(
        _cfg(output={"kind": "regions"}, loss={"name": "region_dice_bce", "kwargs": {}})
    )
    assert ok.output.kind == "regions"
    with pytest.raises(ValueError, match="needs loss.name: region_dice_bce"):
        ExperimentConfig.model_validate(_cfg(output={"kind": "regions"}))
    with pytest.raises(ValueError, match="needs output.kind: regions"):
        ExperimentConfig.model_validate(_cfg(loss={"name": "region_dice_bce", "kwargs": {}}))
    with pytest.raises(ValueError, match="output.threshold applies to output.kind: regions only"):
        ExperimentConfig.model_validate(_cfg(output={"threshold": 0.4}))


def test_strategy_has_one_sigmoid_channel_per_region():
    cfg = ExperimentConfig.model_validate(
        _cfg(
            output={"kind": "regions"},
            loss={"name": "region_dice_bce", "kwargs": {}},
            model={"kwargs": {"channels": [4, 8], "bottleneck": 8}},
        )
    )
    strategy = build_strategy(cfg, ["t1", "t1ce", "t2", "flair"], BRATS2017)
    assert strategy.head.regions == ("WT", "TC", "ET")
    batch = {"image": torch.randn(2, 4, 16, 16), "label": torch.randint(0, 4, (2, 16, 16))}
    assert strategy(batch["image"]).shape == (2, 3, 16, 16)
    loss, terms = strategy.training_loss(batch)
    assert torch.isfinite(loss) and loss.requires_grad


def test_region_run_trains_validates_and_predicts(brats18_phantom, tmp_path):
    cfg = tiny_config("regions", brats18_phantom, tmp_path, loss={"name": "region_dice_bce", "kwargs": {}})
    cfg["output"] = {"kind": "regions"}  # (tiny_config's own ``output`` names the runs folder)
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    assert (run / "fold_0" / "metrics_per_case.csv").exists()
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(run), str(brats18_phantom), str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == 4
    values = set(np.unique(np.asarray(nib.load(written[0]).dataobj)).tolist())
    assert values <= {0, 1, 2, 4}
