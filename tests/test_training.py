"""The Fabric training loop: logs, checkpoints, early stopping, resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from fusionseg.config import PreprocessConfig, SamplingConfig, TrainConfig
from fusionseg.constants import BRATS2017
from fusionseg.data.cases import discover
from fusionseg.data.preprocess import prepare_case_arrays
from fusionseg.data.sampling import SliceDataset
from fusionseg.losses import build_seg_loss
from fusionseg.models import build_model
from fusionseg.strategies import EarlyFusion
from fusionseg.training.loop import dice_from_counts, epoch_lr, fit, region_dice_counts

MODALITIES = ["t1", "t1ce", "t2", "flair"]


@pytest.fixture(scope="module")
def slice_sets(brats18_phantom):
    ds = discover(brats18_phantom)
    prepared = [prepare_case_arrays(c, ds.scheme, PreprocessConfig()) for c in ds.cases]
    cfg = SamplingConfig(mode="tumour")
    train = SliceDataset(prepared[:3], MODALITIES, cfg, slice_size=(48, 48))
    val = SliceDataset(prepared[3:], MODALITIES, cfg, slice_size=(48, 48), train=False)
    return train, val


def tiny_strategy(seed=0, norm="batch"):
    torch.manual_seed(seed)
    model = build_model("unet2stage", in_channels=4, num_classes=4, channels=(4, 8), bottleneck=8, norm=norm)
    return EarlyFusion(model, MODALITIES, build_seg_loss("dice_ce", num_classes=4))


def test_region_dice_counts_by_hand():
    pred = torch.tensor([[0, 1, 3, 3]])
    target = torch.tensor([[0, 1, 1, 3]])
    counts = region_dice_counts(pred, target, BRATS2017)
    # WT: pred {1,2,3} -> 3 voxels, target 3, overlap 3; TC same; ET: pred 2, target 1, overlap 1
    assert counts.tolist() == [[3, 3, 3], [3, 3, 3], [1, 2, 1]]
    assert np.allclose(dice_from_counts(counts), [1.0, 1.0, 2 / 3])
    assert dice_from_counts(np.zeros((1, 3), int)).tolist() == [1.0]  # both empty


def test_fit_writes_logs_and_checkpoints_and_resumes(slice_sets, tmp_path):
    train, val = slice_sets
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, max_steps_per_epoch=2, patience=5)
    result = fit(tiny_strategy(), train, val, cfg, tmp_path, BRATS2017, meta={"k": 1}, progress=False)
    assert result.epochs_run == 2 and 1 <= result.best_epoch <= 2
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_dice_WT", "val_dice_TC", "val_dice_ET", "val_score"} <= set(rows[0])
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert (tmp_path / "checkpoints" / "best.ckpt").exists()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents*"))
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["meta"] == {"k": 1}
    # resume: raising the epoch budget continues from epoch 2, not from scratch
    cfg3 = cfg.model_copy(update={"epochs": 3})
    again = fit(tiny_strategy(seed=1), train, val, cfg3, tmp_path, BRATS2017, progress=False)
    assert again.epochs_run == 3 and len(again.history) == 3
    assert again.history[:2] == result.history
    # a finished run resumed with the same budget trains nothing more
    done = fit(tiny_strategy(), train, val, cfg3, tmp_path, BRATS2017, progress=False)
    assert len(done.history) == 3


def test_early_stopping_stops_after_patience(slice_sets, tmp_path):
    train, val = slice_sets
    cfg = TrainConfig(epochs=20, batch_size=8, lr=0.0 + 1e-12, max_steps_per_epoch=1, patience=2)
    result = fit(tiny_strategy(norm="none"), train, val, cfg, tmp_path, BRATS2017, progress=False)
    # with a learning rate of ~0 (and no batch-norm statistics) the score never
    # improves after epoch 1
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1


def test_poly_lr_schedule_by_hand_and_in_the_log(slice_sets, tmp_path):
    assert epoch_lr(1e-3, 5, 10, "constant") == 1e-3
    assert epoch_lr(1e-3, 0, 10, "poly") == pytest.approx(1e-3)
    assert epoch_lr(1e-3, 5, 10, "poly") == pytest.approx(1e-3 * 0.5**0.9)
    with pytest.raises(ValueError, match="lr schedule"):
        epoch_lr(1e-3, 0, 10, "cosine")
    train, val = slice_sets
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, lr_schedule="poly", max_steps_per_epoch=1)
    fit(tiny_strategy(), train, val, cfg, tmp_path, BRATS2017, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-2 * (1 - e / 3) ** 0.9 for e in range(3)])
