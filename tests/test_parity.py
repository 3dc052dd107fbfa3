"""Train/predict parity: ``fusionseg predict`` with a fold's model gives the run's own
test predictions voxel for voxel, for a run on every modality and a run on a subset
(S0's [t1ce, flair]), on data where the other modalities cover a larger region (so a
brain mask taken from all four would differ from the subset's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import rewrite_nifti, tiny_config, train_via_cli
from fusionseg.cli import app


def _t1_covers_the_background(folder: Path) -> None:
    """T1 and T2 non-zero outside the brain: their foreground is the whole grid."""
    for path in list(folder.rglob("*_t1.nii.gz")) + list(folder.rglob("*_t2.nii.gz")):
        rewrite_nifti(path, lambda a: np.where(a == 0, 7, a))


@pytest.mark.parametrize("modalities", [None, ["t1ce", "flair"]], ids=["four", "t1ce+flair"])
def test_predict_equals_the_runs_test_predictions(modalities, phantom_dataset, tmp_path):
    data = Path(shutil.copytree(phantom_dataset("brats2018", n_cases=4), tmp_path / "data"))
    _t1_covers_the_background(data)
    cfg = tiny_config(
        "parity",
        data,
        tmp_path,
        evaluation={"overlays": 0, "metrics": ["dice"]},
        postprocess={"method": "none"},
        train={"epochs": 12, "batch_size": 8, "max_steps_per_epoch": 4, "lr": 0.01, "patience": 20},
        model={"kwargs": {"channels": [8, 16], "bottleneck": 16, "norm": "batch"}},
    )
    if modalities:
        cfg["data"]["modalities"] = modalities
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    test_cases = json.loads((run / "splits.json").read_text())["folds"][0]["test"]
    out = tmp_path / "pred"
    args = ["predict", str(run), str(data), str(out), "--fold", "0", "--labels", "model", "--no-progress"]
    for case in test_cases:
        args += ["--case", case]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for case in test_cases:
        mine = np.asanyarray(nib.load(out / f"{case}.nii.gz").dataobj)
        theirs = np.asanyarray(nib.load(run / "predictions" / f"{case}.nii.gz").dataobj)
        assert mine.any(), case  # the tiny model predicts some tumour, so equality means something
        assert np.array_equal(mine, theirs), (case, int((mine != theirs).sum()))
