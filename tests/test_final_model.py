"""The final model for new data: ``split.kind: all`` / ``fusionseg train --final``."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fusionseg.cli import app
from fusionseg.config import SplitConfig
from fusionseg.data.splits import make_splits


def test_split_all_trains_on_every_case_but_the_validation_share():
    ids = [f"c{i:02d}" for i in range(10)]
    splits = make_splits(ids, SplitConfig(kind="all", val_fraction=0.2, seed=3))
    (fold,) = splits["folds"]
    assert fold["test"] == [] and len(fold["val"]) == 2
    assert sorted(fold["train"] + fold["val"]) == ids and not set(fold["train"]) & set(fold["val"])


def test_train_final_then_predict(brats18_phantom, tmp_path):
    """--final trains one model on all cases (no test metrics, says so), in
    <name>-final next to a cross-validation run; predict uses it and states the cost."""
    cfg = tiny_config("fm", brats18_phantom, tmp_path)
    cfg["split"] = {"kind": "kfold", "folds": 2, "val_fraction": 0.25}
    path = tmp_path / "fm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(path), "--final", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "no test metrics" in result.output
    run = tmp_path / "runs" / "fm-final"
    assert (run / "fold_0" / "checkpoints" / "best.ckpt").exists() and not (run / "fold_1").exists()
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(run), str(brats18_phantom), str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.nii.gz"))) == 4
    assert "s per case (1 model(s)" in result.output


def test_final_refuses_a_saved_split(brats18_phantom, tmp_path):
    cfg = tiny_config("fm2", brats18_phantom, tmp_path)
    cfg["split"] = {"kind": "kfold", "folds": 2, "file": str(tmp_path / "splits.json")}
    path = tmp_path / "fm2.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(path), "--final", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "--final makes its own split" in result.output
