"""Connected-component post-processing: removal by volume in mm³, keep-largest, the
choice on validation cases, and the run folder's resume-without-retraining path."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_config, train_via_cli
from fusionseg.cli import app
from fusionseg.constants import BRATS2017
from fusionseg.inference.postprocess import (
    Postprocess,
    candidate_settings,
    choose_postprocess,
    combine_settings,
)


def _scene() -> np.ndarray:
    """A 27-voxel tumour of labels 1/2/4, a 4-voxel ET speck, a 1-voxel ED speck."""
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[2:5, 2:5, 2:5] = 2
    seg[3, 3, 2:5] = 1
    seg[3, 3, 3] = 4
    seg[10:12, 10:12, 10] = 4
    seg[17, 17, 17] = 2
    return seg


def test_removes_whole_tumour_components_under_the_volume_keeping_labels():
    seg = _scene()
    out = Postprocess(min_volume_mm3=5)(seg, (1, 1, 1))
    assert out.dtype == seg.dtype
    assert np.array_equal(out[:6, :6, :6], seg[:6, :6, :6])  # labels of kept voxels unchanged
    assert out[10:12, 10:12, 10].sum() == 0 and out[17, 17, 17] == 0
    # the threshold is a volume: 0.5 mm slices make the 4-voxel speck 2 mm³
    thin = Postprocess(min_volume_mm3=3)(seg, (1, 1, 0.5))
    assert thin[10:12, 10:12, 10].sum() == 0 and thin[2:5, 2:5, 2:5].any()
    assert np.array_equal(Postprocess(min_volume_mm3=2)(seg, (1, 1, 1))[10:12, 10:12, 10], seg[10:12, 10:12, 10])


def test_nested_region_specks_take_the_enclosing_label():
    from fusionseg.constants import PETCT
    from fusionseg.inference.postprocess import nested_regions

    assert nested_regions(BRATS2017) == [("TC", 2), ("ET", 1)]
    assert nested_regions(PETCT) == []
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[2:8, 2:8, 2:8] = 2  # ED
    seg[3:6, 3:6, 3:6] = 1  # NCR core (TC, 27 voxels)
    seg[4, 4, 4] = 4  # a 1-voxel ET inside the core
    seg[7, 7, 2] = 4  # a 1-voxel ET speck in the oedema, apart from the core (a TC speck too)
    out = Postprocess(inner_min_volume_mm3=2)(seg, (1, 1, 1), BRATS2017)
    assert out[7, 7, 2] == 2  # TC speck -> ED
    assert out[4, 4, 4] == 1  # ET speck inside TC -> NCR
    assert np.array_equal(out != 0, seg != 0)  # the whole tumour is untouched
    changed = out != seg
    assert changed.sum() == 2
    assert Postprocess.from_dict(Postprocess(0, False, 2).to_dict()) == Postprocess(0, False, 2)
    assert "nested regions < 2 mm3" in Postprocess(0, False, 2).label()
    with pytest.raises(ValueError, match="label scheme"):
        Postprocess(inner_min_volume_mm3=2)(seg, (1, 1, 1))


def test_keep_largest_identity_and_bad_spacing():
    seg = _scene()
    largest = Postprocess(keep_largest=True)(seg, (1, 1, 1))
    assert np.count_nonzero(largest) == 27 and largest[17, 17, 17] == 0
    same = Postprocess()(seg, (1, 1, 1))
    assert np.array_equal(same, seg) and same is not seg
    empty = np.zeros((4, 4, 4), np.uint8)
    assert not Postprocess(10, True)(empty, (1, 1, 1)).any()
    with pytest.raises(ValueError, match="spacing"):
        Postprocess(5)(seg, (1, 1))
    assert Postprocess().label() == "none" and "keep largest" in Postprocess(5, True).label()


def test_choice_on_validation_cases():
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[2:5, 2:5, 2:5] = 2
    pred = gt.copy()
    pred[10:12, 10:12, 10] = 2  # a false-positive 4-voxel component
    settings = candidate_settings([2, 5, 50])
    assert [s.label() for s in settings] == [
        "none",
        "remove < 2 mm3",
        "remove < 5 mm3",
        "remove < 50 mm3",
        "keep largest",
    ]
    best, rows = choose_postprocess([(pred, gt, (1, 1, 1))], BRATS2017, settings)
    assert best == Postprocess(5.0)  # the mildest setting that removes the FP
    wt_dice_none = 2 * 27 / (31 + 27)
    assert rows[0]["val_dice"] == pytest.approx(np.mean([wt_dice_none, 1.0, 1.0]))
    # a true small lesion in GT: removing it costs Dice, so nothing is removed
    gt2 = pred.copy()
    best2, _ = choose_postprocess([(pred, gt2, (1, 1, 1))], BRATS2017, settings)
    assert best2 == Postprocess()
    best3, rows3 = choose_postprocess([(pred, gt, (1, 1, 1))], BRATS2017, settings, criterion="lesion_dice")
    assert best3 == Postprocess(5.0) and rows3[0]["val_lesion_dice"] < rows3[2]["val_lesion_dice"]
    with pytest.raises(ValueError, match="criterion"):
        choose_postprocess([(pred, gt, (1, 1, 1))], BRATS2017, settings, criterion="hd95")


def test_validation_score_after_inference_is_the_chosen_settings():
    """The score a study compares inference settings by is the chosen setting's row of
    the validation table, for either criterion; settings not chosen on validation
    cases have none."""
    from fusionseg.experiments.fold_scoring import validation_after_inference

    gt = np.zeros((20, 20, 20), np.uint8)
    gt[2:5, 2:5, 2:5] = 2
    pred = gt.copy()
    pred[10:12, 10:12, 10] = 2
    for criterion in ("dice", "lesion_dice"):
        best, rows = choose_postprocess(
            [(pred, gt, (1, 1, 1))], BRATS2017, candidate_settings([2, 5, 50]), criterion=criterion
        )
        record = {"method": "validation", "criterion": criterion, "setting": best.to_dict(), "candidates": rows}
        chosen = next(r[f"val_{criterion}"] for r in rows if r["setting"] == best.label())
        assert validation_after_inference(record) == (chosen, criterion)
        assert chosen > rows[0][f"val_{criterion}"]  # strictly better than none: not a constant
    assert validation_after_inference({"method": "fixed", "setting": Postprocess(5.0).to_dict()}) is None
    assert validation_after_inference({"method": "none"}) is None and validation_after_inference(None) is None


def test_combined_setting_for_an_ensemble():
    s = combine_settings([Postprocess(10), Postprocess(100, True), Postprocess(1000, True)])
    assert s == Postprocess(100.0, True)
    assert combine_settings([]) == Postprocess()


def test_run_chooses_on_validation_then_re_predicts_without_retraining(phantom_dataset, tmp_path):
    data = phantom_dataset("brats2018", n_cases=6)
    cfg = tiny_config(
        "pp",
        data,
        tmp_path,
        split={"kind": "kfold", "folds": 2, "run_folds": [0], "val_fraction": 0.34},
        evaluation={"overlays": 0, "metrics": ["dice", "fp"]},
        postprocess={"method": "validation", "candidates_mm3": [10, 100], "inner_candidates_mm3": [5]},
    )
    runner = CliRunner()
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    fit = json.loads((run / "fold_0" / "fit.json").read_text())
    post = fit["postprocess"]
    assert post["method"] == "validation" and post["validation_cases"]
    names = [c["setting"] for c in post["candidates"]]
    assert names[:4] == ["none", "remove < 10 mm3", "remove < 100 mm3", "keep largest"]
    assert len(names) == 5 and names[4].endswith("nested regions < 5 mm3 relabelled")
    assert all(np.isfinite(c["val_dice"]) for c in post["candidates"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["postprocess"]["per_fold"]["0"] == Postprocess.from_dict(post["setting"]).label()

    # a changed post-processing re-predicts with the trained model, without retraining
    last = run / "fold_0" / "checkpoints" / "last.ckpt"
    stamp = last.stat().st_mtime_ns
    cfg["postprocess"] = {"method": "fixed", "min_volume_mm3": 1e9}
    result, _ = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    assert "predicting again" in " ".join(result.output.split())
    assert last.stat().st_mtime_ns == stamp
    again = json.loads((run / "fold_0" / "fit.json").read_text())
    assert again["seconds"] == fit["seconds"] and again["postprocess"]["method"] == "fixed"
    test_cases = json.loads((run / "splits.json").read_text())["folds"][0]["test"]
    for c in test_cases:  # every component is under 1e9 mm³
        assert not np.asanyarray(nib.load(run / "predictions" / f"{c}.nii.gz").dataobj).any()
    # fusionseg predict applies the fold's recorded setting, or not with --no-postprocess
    args = ["predict", str(run), str(data), str(tmp_path / "p1"), "--fold", "0", "--case", test_cases[0]]
    assert runner.invoke(app, args).exit_code == 0
    assert not np.asanyarray(nib.load(tmp_path / "p1" / f"{test_cases[0]}.nii.gz").dataobj).any()
    args = [
        "predict",
        str(run),
        str(data),
        str(tmp_path / "p2"),
        "--fold",
        "0",
        "--case",
        test_cases[0],
        "--no-postprocess",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "post-processing: none" in " ".join(result.output.split())

    # test-time mirroring switched on: predicted again, and `predict` follows the run
    cfg["postprocess"] = {"method": "none"}
    cfg["inference"] = {"tta": "mirror"}
    result, _ = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0 and "predicting again" in " ".join(result.output.split()), result.output
    assert last.stat().st_mtime_ns == stamp
    args = ["predict", str(run), str(data), str(tmp_path / "p3"), "--fold", "0", "--case", test_cases[0]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "mirroring: on" in " ".join(result.output.split()), result.output
    ours = np.asanyarray(nib.load(tmp_path / "p3" / f"{test_cases[0]}.nii.gz").dataobj)
    assert np.array_equal(ours, np.asanyarray(nib.load(run / "predictions" / f"{test_cases[0]}.nii.gz").dataobj))
