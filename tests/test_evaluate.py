"""Per-case and folder evaluation: registry, outputs, parallel determinism, errors, CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fusionseg.constants import BRATS2017
from fusionseg.errors import DataError
from fusionseg.evaluation.cli import evaluate_command
from fusionseg.evaluation.evaluate import METRICS, evaluate_case
from fusionseg.evaluation.folder import evaluate_folder

SPACING = (1.0, 1.2, 2.0)


def _case(seed: int, shape=(40, 36, 24)) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic BraTS 2017-convention tumour (ED shell, NCR, ET) and a perturbed prediction."""
    rng = np.random.default_rng(seed)
    x, y, z = np.indices(shape)
    c = np.array(shape) // 2 + rng.integers(-3, 4, 3)
    r = np.sqrt((x - c[0]) ** 2 + ((y - c[1]) * 1.2) ** 2 + ((z - c[2]) * 2.0) ** 2)
    gt = np.zeros(shape, np.uint8)
    gt[r < 12] = 2
    gt[r < 8] = 4
    gt[r < 4] = 1
    pred = np.roll(gt, rng.integers(1, 3), axis=0)
    pred[2:4, 2:4, 2:4] = 4  # a false positive
    if seed % 3 == 0:
        pred[pred == 4] = 1  # ET dropped
    return pred, gt


def _write(path, data):
    affine = np.diag([*SPACING, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))


@pytest.fixture
def folders(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for i in range(4):
        pred, gt = _case(i)
        _write(pred_dir / f"case_{i:03d}.nii.gz", pred)
        _write(gt_dir / f"case_{i:03d}.nii.gz", gt)
    return pred_dir, gt_dir


def test_evaluate_case_rows_have_every_metric_and_are_finite():
    pred, gt = _case(1)
    rows, lesions = evaluate_case(pred, gt, SPACING, BRATS2017)
    assert [r["region"] for r in rows] == ["WT", "TC", "ET"]
    expected = [m for m, s in METRICS.items() if not s.single_class_only]
    for row in rows:
        assert list(row)[1:] == expected
        assert all(np.isfinite(v) for k, v in row.items() if k != "region")
    assert lesions and {
        "region",
        "lesion_id",
        "kind",
        "volume_mm3",
        "dice",
        "hd95",
        "matched_pred_ids",
        "counted",
    } <= set(lesions[0])
    assert any(rec["kind"] == "fp" for rec in lesions)


def test_evaluate_case_same_numbers_for_any_dtype_byte_order_and_memory_order():
    """Label maps as NIfTI files hold them (big-endian int16, F-ordered) or as floats give
    the numbers, and the lesion / component numbering, of native uint8 C-ordered maps."""
    pred, gt = _case(2)
    pred[30:32, 2:4, 2:4] = 2  # two more false positives, first in F order but not in C order
    pred[2:4, 30:32, 20:22] = 2
    ref, ref_lesions = evaluate_case(pred, gt, SPACING, BRATS2017)
    for conv in (
        lambda a: a.astype(">i2"),
        np.asfortranarray,
        lambda a: a.astype(np.float32),
        lambda a: np.asfortranarray(a.astype("<i4")),
    ):
        rows, lesions = evaluate_case(conv(pred), conv(gt), SPACING, BRATS2017)
        assert rows == ref
        assert lesions == ref_lesions  # lesion and component numbers too (C order of first voxel)


def test_evaluate_case_metric_selection_and_unknown_metric():
    pred, gt = _case(2)
    rows, lesions = evaluate_case(pred, gt, SPACING, "brats2017", metrics="dice,hd95")
    assert list(rows[0]) == ["region", "dice", "hd95"]
    assert lesions == []
    with pytest.raises(ValueError, match="choose from"):
        evaluate_case(pred, gt, SPACING, "brats2017", metrics=["dice", "nope"])
    with pytest.raises(ValueError, match="single-class"):
        evaluate_case(pred, gt, SPACING, "brats2017", metrics=["fpv_ml"])


def test_evaluate_case_empty_prediction_uses_penalties():
    _, gt = _case(4)
    rows, _ = evaluate_case(np.zeros_like(gt), gt, SPACING, "brats2017", challenge="MEN")
    for row in rows:
        assert (row["dice"], row["hd95"], row["lesion_dice"], row["lesion_hd95"]) == (0.0, 374.0, 0.0, 374.0)
        assert (row["tp"], row["fp"], row["sensitivity"], row["asd"]) == (0, 0, 0.0, 374.0)


def test_evaluate_case_both_empty_and_petct_volumes():
    z = np.zeros((10, 10, 10), np.uint8)
    rows, _ = evaluate_case(z, z, (1, 1, 1), "petct")
    assert rows == [
        {
            "region": "tumour",
            "dice": 1.0,
            "hd95": 0.0,
            "lesion_dice": 1.0,
            "lesion_hd95": 0.0,
            "tp": 0,
            "fn": 0,
            "fp": 0,
            "sensitivity": 1.0,
            "specificity": 1.0,
            "asd": 0.0,
            "fpv_ml": 0.0,
            "fnv_ml": 0.0,
        }
    ]


def test_evaluate_case_rejects_labels_outside_scheme():
    pred, gt = _case(1)
    with pytest.raises(ValueError, match="label values"):
        evaluate_case(pred, gt, SPACING, "brats2023")


def _edge_fixtures() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(pred, gt) 0/1 label maps for each empty-mask and lesion-matching edge case."""
    shape = (24, 22, 20)
    z = np.zeros(shape, np.uint8)

    def blob(c, r):
        x = np.indices(shape)
        return (np.sqrt(sum((g - ci) ** 2 for g, ci in zip(x, c))) <= r).astype(np.uint8)

    big, small = blob((8, 8, 8), 4), blob((18, 16, 14), 1)  # small: 7 voxels, under tau
    return {
        "both empty": (z, z),
        "pred empty": (z, big),
        "gt empty": (big, z),
        "FP only": (blob((18, 16, 14), 2), big * 0),
        "lesion at or under tau": (big, big | small),
        "merged by dilation": (blob((8, 8, 8), 5), blob((8, 8, 4), 2) | blob((8, 8, 11), 2)),
        "one prediction, two lesions": (blob((8, 8, 10), 6), blob((8, 8, 4), 2) | blob((8, 8, 16), 2)),
    }


def test_edge_fixtures_give_no_nan_or_inf_anywhere():
    """Every metric (PET/CT scheme: all 13) and every lesion-row value is finite on each
    edge case, with isotropic and anisotropic spacing, for every challenge."""
    checked = 0
    for name, (pred, gt) in _edge_fixtures().items():
        for spacing in [(1.0, 1.0, 1.0), (0.5, 1.2, 3.0)]:
            for challenge in ("GLI", "MEN", "MET"):
                rows, lesions = evaluate_case(pred, gt, spacing, "petct", None, challenge)
                values = [v for r in rows for k, v in r.items() if k != "region"]
                values += [r[k] for r in lesions for k in ("volume_mm3", "dice", "hd95")]
                assert np.isfinite(values).all(), (name, spacing, challenge)
                checked += len(values)
    assert checked > 500


def test_evaluate_case_equals_the_metric_functions_on_each_region_mask():
    """evaluate_case (row extents from the region-mask pass, no per-region crop) gives the
    values and lesion records of the public metric functions (bounding-box crop path) on
    each region's masks, for a case with many lesions and false positives, in C and F
    order."""
    from fusionseg.evaluation.metrics.lesionwise import lesion_wise
    from fusionseg.evaluation.metrics.overlap import dice
    from fusionseg.evaluation.metrics.surface import hd95

    rng = np.random.default_rng(11)
    shape = (64, 56, 40)
    grid = np.indices(shape)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for _ in range(10):
        c = rng.uniform(6, np.asarray(shape) - 6)
        r = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c)))
        radius = rng.uniform(2, 6)
        gt[r <= radius] = 2
        gt[r <= 0.6 * radius] = 4
        r = np.sqrt(sum((g - ci - s) ** 2 for g, ci, s in zip(grid, c, rng.integers(-2, 3, 3))))
        pred[r <= radius * rng.uniform(0.7, 1.2)] = 2
        pred[r <= 0.5 * radius] = 1
    for _ in range(5):
        c = rng.uniform(2, np.asarray(shape) - 2)
        pred[np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c))) <= rng.uniform(0.8, 2.5)] = 4
    for order in (np.ascontiguousarray, np.asfortranarray):
        rows, lesion_rows = evaluate_case(
            order(pred), order(gt), SPACING, BRATS2017, ["dice", "hd95", "lesion_dice", "lesion_hd95", "tp", "fn", "fp"]
        )
        for row in rows:
            p_mask, g_mask = BRATS2017.region_mask(pred, row["region"]), BRATS2017.region_mask(gt, row["region"])
            ref = lesion_wise(
                p_mask, g_mask, SPACING, 3, 50.0, full_image=(dice(p_mask, g_mask), hd95(p_mask, g_mask, SPACING))
            )
            assert row["dice"] == dice(p_mask, g_mask)
            assert row["hd95"] == hd95(p_mask, g_mask, SPACING)
            assert (row["lesion_dice"], row["lesion_hd95"], row["tp"], row["fn"], row["fp"]) == (
                ref.dice,
                ref.hd95,
                ref.tp,
                ref.fn,
                ref.fp,
            )
            mine = [
                (r["lesion_id"], r["kind"], r["volume_mm3"], r["dice"], r["hd95"], r["matched_pred_ids"])
                for r in lesion_rows
                if r["region"] == row["region"]
            ]
            assert mine == [
                (r.lesion_id, r.kind, r.volume_mm3, r.dice, r.hd95, ";".join(str(m) for m in r.matched))
                for r in ref.lesions
            ]
        assert sum(r["fp"] for r in rows) > 0 and sum(r["tp"] for r in rows) > 5


def test_evaluate_case_reused_buffers_carry_nothing_between_cases():
    """The region masks and component labels live in buffers reused from case to case:
    a case gives the same rows whatever was evaluated before it (larger, smaller, or
    stopped by an error half-way), and the mask buffers are all zeros in between."""
    from fusionseg.evaluation.metrics import buffers

    pred, gt = _case(5)
    ref = evaluate_case(pred, gt, SPACING, BRATS2017)
    big_pred, big_gt = _case(6, shape=(60, 50, 40))
    bad = big_pred.copy()
    bad[-3, -3, -3] = 3  # undefined in BraTS 2017: raises after masks were written
    with pytest.raises(ValueError, match="label values"):
        evaluate_case(bad, big_gt, SPACING, BRATS2017)
    for name in ("pred_masks", "gt_masks"):
        assert not buffers.zeroed_buffer(name, (3, 60, 50, 40), np.uint8).any()
    evaluate_case(big_pred, big_gt, SPACING, BRATS2017)
    buffers.work_buffer("pred_labels", (60, 50, 40), np.int32)[:] = 77  # junk labels
    buffers.work_buffer("gt_labels", (60, 50, 40), np.int32)[:] = -5
    assert evaluate_case(pred, gt, SPACING, BRATS2017) == ref
    for name in ("pred_masks", "gt_masks"):
        assert not buffers.zeroed_buffer(name, (3, 60, 50, 40), np.uint8).any()


def test_evaluate_folder_writes_outputs_and_workers_give_identical_results(folders, tmp_path):
    pred_dir, gt_dir = folders
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    pc1, pl1, s1 = evaluate_folder(pred_dir, gt_dir, out1, workers=1, progress=False)
    pc2, pl2, s2 = evaluate_folder(pred_dir, gt_dir, out2, workers=2, progress=False)
    pd.testing.assert_frame_equal(pc1, pc2)
    pd.testing.assert_frame_equal(pl1, pl2)
    assert s1 == s2
    assert list(pc1.columns[:2]) == ["case", "region"] and len(pc1) == 4 * 3
    assert np.isfinite(pc1.drop(columns=["case", "region"]).to_numpy(float)).all()
    summary = json.loads((out1 / "summary.json").read_text())
    assert summary["conventions"]["label_scheme"] == "brats2017"  # inferred from label 4
    assert summary["conventions"]["dilation_voxels"] == 3
    stats = summary["regions"]["WT"]["dice"]
    assert set(stats) == {"mean", "median", "sd", "ci95_low", "ci95_high", "n"} and stats["n"] == 4
    assert stats["ci95_low"] <= stats["mean"] <= stats["ci95_high"]
    assert (out1 / "metrics_per_case.csv").read_text() == (out2 / "metrics_per_case.csv").read_text()
    assert (out1 / "metrics_per_lesion.csv").exists()
    # spacing comes from the GT header: the FP block is 8 voxels * 2.4 mm^3
    fp = pl1[(pl1.kind == "fp") & (pl1.region == "WT")]
    assert np.allclose(fp.volume_mm3, 8 * 2.4)


def test_evaluate_folder_unmatched_cases_name_the_files(folders):
    pred_dir, gt_dir = folders
    (pred_dir / "case_000.nii.gz").rename(pred_dir / "other.nii.gz")
    with pytest.raises(DataError, match="other.nii.gz"):
        evaluate_folder(pred_dir, gt_dir, progress=False)


def test_evaluate_folder_gt_cases_without_prediction_are_listed(folders):
    pred_dir, gt_dir = folders
    (pred_dir / "case_000.nii.gz").unlink()
    per_case, _, summary = evaluate_folder(pred_dir, gt_dir, progress=False, metrics="dice")
    assert sorted(per_case["case"].unique()) == ["case_001", "case_002", "case_003"]
    assert summary["gt_cases_without_prediction"] == ["case_000"]


def test_evaluate_folder_shape_mismatch(folders):
    pred_dir, gt_dir = folders
    _write(pred_dir / "case_001.nii.gz", np.zeros((5, 5, 5), np.uint8))
    with pytest.raises(DataError, match="shape"):
        evaluate_folder(pred_dir, gt_dir, progress=False, metrics="dice")


def test_cli_runs_and_prints_summary(folders, tmp_path):
    pred_dir, gt_dir = folders
    app = typer.Typer()
    app.command("evaluate")(evaluate_command)
    app.command("noop")(lambda: None)  # keep subcommand mode
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(pred_dir),
            str(gt_dir),
            "--challenge",
            "MEN",
            "--output",
            str(out),
            "--metrics",
            "dice,hd95,lesion_dice",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "lesion_dice" in result.output and (out / "summary.json").exists()
    assert json.loads((out / "summary.json").read_text())["conventions"]["challenge"] == "MEN"
    help_text = runner.invoke(app, ["evaluate", "--help"]).output
    assert "summary.json" in help_text and "374" in help_text
    from fusionseg.cli import app as fusionseg_app

    # an unknown metric is a usage error (exit 2) with the valid choices
    bad = runner.invoke(fusionseg_app, ["evaluate", str(pred_dir), str(gt_dir), "--metrics", "nope"])
    assert bad.exit_code == 2 and "choose from" in bad.output and "Traceback" not in bad.output


def test_cli_custom_dilation_and_volume_threshold(folders, tmp_path):
    """--challenge custom with --dilation / --volume-threshold (or either one overriding a
    preset) scores with those parameters and records them."""
    pred_dir, gt_dir = folders
    app = typer.Typer()
    app.command("evaluate")(evaluate_command)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    out = tmp_path / "custom"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(pred_dir),
            str(gt_dir),
            "-c",
            "custom",
            "--dilation",
            "0",
            "--volume-threshold",
            "1e7",
            "-o",
            str(out),
            "-m",
            "lesion_dice,tp",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    conv = json.loads((out / "summary.json").read_text())["conventions"]
    assert (conv["challenge"], conv["dilation_voxels"], conv["volume_threshold_mm3"]) == ("custom", 0, 1e7)
    per_case = pd.read_csv(out / "metrics_per_case.csv")
    preset, _, _ = evaluate_folder(pred_dir, gt_dir, progress=False, metrics="lesion_dice,tp")
    assert not per_case["lesion_dice"].equals(preset["lesion_dice"])  # the parameters took effect
    missing = runner.invoke(app, ["evaluate", str(pred_dir), str(gt_dir), "-c", "custom", "--dilation", "2"])
    assert missing.exit_code != 0 and "volume-threshold" in missing.output


def test_first_evaluation_announces_compilation_once(monkeypatch, capsys):
    import fusionseg.evaluation.evaluate as ev

    monkeypatch.setattr(ev, "_ANNOUNCED", False)
    monkeypatch.setattr(ev, "kernels_cached", lambda: False)
    ev.announce_compilation()
    ev.announce_compilation()
    err = capsys.readouterr().err
    assert err.count("compiling the evaluation kernels") == 1
    monkeypatch.setattr(ev, "_ANNOUNCED", False)
    monkeypatch.setattr(ev, "kernels_cached", lambda: True)
    ev.announce_compilation()
    assert capsys.readouterr().err == ""


def test_a_lesion_table_read_back_writes_the_same_bytes(tmp_path):
    """A run gathered from folds read back from disk (a resumed run, a study row) writes
    the metrics_per_lesion.csv bytes of one that kept its folds in memory: single matched
    ids and blanks stay text, not floats (found on 2026-12-07: 1 became 1.0)."""
    from fusionseg.evaluation.folder import PER_LESION_CSV, read_lesion_table, write_results

    lesions = pd.DataFrame(
        {
            "case": ["a", "a", "b"],
            "region": ["WT", "WT", "ET"],
            "lesion_id": [1, 2, 1],
            "kind": ["gt", "fp", "gt"],
            "matched_pred_ids": ["1", "", "2"],  # single ids only: what parses as float
        }
    )
    per_case = pd.DataFrame({"case": ["a"], "region": ["WT"], "dice": [0.5]})
    write_results(tmp_path / "memory", per_case, lesions, {})
    again = read_lesion_table(tmp_path / "memory" / PER_LESION_CSV)
    write_results(tmp_path / "disk", per_case, again, {})
    first, second = ((tmp_path / d / PER_LESION_CSV).read_bytes() for d in ("memory", "disk"))
    assert first == second and b",1\n" in first
    plain = pd.read_csv(tmp_path / "memory" / PER_LESION_CSV)  # the reader this replaced
    assert plain["matched_pred_ids"].dtype.kind == "f"  # the trap itself
