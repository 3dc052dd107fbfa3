"""A table of bad inputs and misuse across `data check`, `train`, `compare` and
`evaluate` (predict's own table is in test_predict_reliability.py): each gives a
message naming the file or key and the fix, the documented exit code (1 data error,
2 usage error; fusionseg.errors), no traceback, and leaves no output behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import rewrite_nifti, tiny_config
from fusionseg.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "configs" / "s0_table1.yaml"


def _flat(text: str) -> str:
    return " ".join(text.split())


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# -- damage to one case of a writable dataset copy ------------------------------------


def _first_case(root: Path) -> Path:
    return sorted(p for p in root.iterdir() if p.is_dir())[0]


def _file(root: Path, suffix: str) -> Path:
    case = _first_case(root)
    return case / f"{case.name}_{suffix}.nii.gz"


def _missing_t2(root):
    _file(root, "t2").unlink()
    return _file(root, "t2").name


def _corrupt_flair(root):
    path = _file(root, "flair")
    path.write_bytes(path.read_bytes()[:200])
    return path.name


def _nan_t1(root):
    rewrite_nifti(_file(root, "t1"), lambda d: np.where(d > d.mean(), np.nan, d), dtype=np.float32)
    return _file(root, "t1").name


def _zero_t1ce(root):
    rewrite_nifti(_file(root, "t1ce"), lambda d: np.zeros_like(d))
    return _file(root, "t1ce").name


def _shifted_t2(root):
    img = nib.load(_file(root, "t2"))
    affine = img.affine.copy()
    affine[0, 3] += 5.0
    rewrite_nifti(_file(root, "t2"), lambda d: d, affine=affine)
    return _file(root, "t2").name


def _cropped_flair(root):
    rewrite_nifti(_file(root, "flair"), lambda d: d[:-4])
    return _file(root, "flair").name


def _unknown_label(root):
    rewrite_nifti(_file(root, "seg"), lambda d: np.where(d == 2, 7, d))
    return _file(root, "seg").name


DAMAGE = {
    "missing modality file": _missing_t2,
    "truncated file": _corrupt_flair,
    "NaN voxels": _nan_t1,
    "all-zero modality": _zero_t1ce,
    "affine 5 mm off": _shifted_t2,
    "shape mismatch": _cropped_flair,
    "unknown label value": _unknown_label,
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_data_check_names_the_file(kind, brats18_copy):
    named = DAMAGE[kind](brats18_copy)
    result = runner.invoke(app, ["data", "check", str(brats18_copy)])
    assert result.exit_code == 1, result.output
    assert named in _flat(result.output) and "Traceback" not in result.output


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_train_stops_before_any_work(kind, brats18_copy, tmp_path):
    named = DAMAGE[kind](brats18_copy)
    cfg = tiny_config("bad", brats18_copy, tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(path), "--no-progress"])
    text = _flat(result.output)
    assert result.exit_code == 1, result.output
    assert named in text and "Fix:" in text and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # no stub run folder


def test_empty_case_folder_is_named_and_ignored(brats18_copy, tmp_path):
    (brats18_copy / "Brats18_Empty_1").mkdir()
    result = runner.invoke(app, ["data", "check", str(brats18_copy)])
    assert result.exit_code == 0 and "Brats18_Empty_1" in _flat(result.output)
    assert "not part of any case" in _flat(result.output)
    cfg = tiny_config("empty", brats18_copy, tmp_path)
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output  # the other cases train; no traceback


# -- configs and options --------------------------------------------------------------

CONFIG_ERRORS = {
    "strategy typo": ({"strategy": "erly"}, "'early', 'decoupled', 'joint', 'a2fseg', 'threshold' or 'ssl'"),
    "challenge typo": ({"evaluation": {"challenge": "GLLI"}}, "evaluation.challenge"),
    "model name typo": ({"model": {"name": "unett"}}, "unet2stage"),
    "model option typo": ({"model": {"kwargs": {"chanels": [4, 8]}}}, "chanels"),
    "loss name typo": ({"loss": {"name": "dice_cee"}}, "dice_focal"),
    "unknown section key": ({"train": {"epoch": 3}}, "train.epoch"),
    "modality not in dataset": ({"data": {"modalities": ["t1ce", "pd"]}}, "pd"),
    "unknown case id": ({"data": {"cases": ["Brats18_nope"]}}, "Brats18_nope"),
    "too few cases for the split": ({"split": {"kind": "kfold", "folds": 9}}, "too few"),
    "sampling patch without size": ({"sampling": {"mode": "patch"}}, "patch_size"),
}


@pytest.mark.parametrize("kind", sorted(CONFIG_ERRORS))
def test_train_config_errors_are_usage_errors(kind, brats18_phantom, tmp_path):
    change, expected = CONFIG_ERRORS[kind]
    cfg = tiny_config("cfg", brats18_phantom, tmp_path)
    for section, value in change.items():
        cfg[section] = {**cfg.get(section, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(path), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert expected in _flat(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_train_output_under_a_file(brats18_phantom, tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = tiny_config("o", brats18_phantom, tmp_path, output="file/runs")
    path = tmp_path / "o.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2 and "is a file" in _flat(result.output)


def test_train_missing_data_root(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "nowhere")}}))
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 1 and "nowhere" in _flat(result.output) and "Traceback" not in result.output


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--rows", "A,Z"], "not runs of the study"),
        (["--rows", "B"], "must include the reference"),
        (["--protocol", "gpu-huge"], "unknown protocol"),
        (["--set", "train.epoch=3"], "train.epoch"),
        (["--set", "strategy=erly"], "'early', 'decoupled', 'joint', 'a2fseg', 'threshold' or 'ssl'"),
    ],
)
def test_compare_usage_errors(argv, expected, tmp_path):
    result = runner.invoke(app, ["compare", str(STUDY), "--output-dir", str(tmp_path / "out"), *argv])
    assert result.exit_code == 2, result.output
    assert expected in _flat(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_compare_unknown_study_key(tmp_path):
    raw = yaml.safe_load(STUDY.read_text())
    raw["claim"] = raw.pop("claims")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["compare", str(path), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "unknown study key" in _flat(result.output)


# -- evaluate ---------------------------------------------------------------------------


@pytest.fixture
def predictions(brats18_phantom, tmp_path) -> Path:
    """The phantom's ground truth copied as a prediction folder (<case>.nii.gz)."""
    out = tmp_path / "pred"
    out.mkdir()
    for case in sorted(p for p in brats18_phantom.iterdir() if p.is_dir()):
        shutil.copy(case / f"{case.name}_seg.nii.gz", out / f"{case.name}.nii.gz")
    return out


def _first_pred(pred: Path) -> Path:
    return sorted(pred.glob("*.nii.gz"))[0]


def _pred_shifted(pred):
    img = nib.load(_first_pred(pred))
    affine = img.affine.copy()
    affine[1, 3] += 5.0
    rewrite_nifti(_first_pred(pred), lambda d: d, affine=affine)
    return "affine differs"


def _pred_cropped(pred):
    rewrite_nifti(_first_pred(pred), lambda d: d[:, :-2])
    return "shape"


def _pred_unknown_label(pred):
    rewrite_nifti(_first_pred(pred), lambda d: np.where(d == 2, 9, d))
    return "9"


def _pred_float(pred):
    rewrite_nifti(_first_pred(pred), lambda d: d + 0.5, dtype=np.float32)
    return _first_pred(pred).name


def _pred_nan(pred):
    rewrite_nifti(_first_pred(pred), lambda d: np.where(d == 1, np.nan, d), dtype=np.float32)
    return "non-finite voxel"


def _pred_truncated(pred):
    path = _first_pred(pred)
    path.write_bytes(path.read_bytes()[:200])
    return path.name


def _pred_unmatched(pred):
    shutil.copy(_first_pred(pred), pred / "nobody.nii.gz")
    return "nobody.nii.gz"


EVAL_DATA = {
    "pred affine 5 mm off GT": _pred_shifted,
    "pred shape": _pred_cropped,
    "pred unknown label": _pred_unknown_label,
    "pred not integer labels": _pred_float,
    "pred without GT case": _pred_unmatched,
    "pred NaN voxels": _pred_nan,
    "pred truncated file": _pred_truncated,
}


@pytest.mark.parametrize("kind", sorted(EVAL_DATA))
def test_evaluate_data_errors(kind, predictions, brats18_phantom, tmp_path):
    expected = EVAL_DATA[kind](predictions)
    out = tmp_path / "ev"
    result = runner.invoke(
        app, ["evaluate", str(predictions), str(brats18_phantom), "--output", str(out), "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    assert expected in _flat(result.output) and "Traceback" not in result.output
    assert not _files(out) - {"."}, _files(out)


def test_evaluate_checks_every_grid_before_scoring_any_case(predictions, brats18_phantom, tmp_path, monkeypatch):
    """Shape and affine of every pair are checked from the headers first: a bad last
    case stops the command before the first case is scored, and every bad pair is listed."""
    import fusionseg.evaluation.folder as folder

    files = sorted(predictions.glob("*.nii.gz"))
    for path in (files[0], files[-1]):
        img = nib.load(path)
        affine = img.affine.copy()
        affine[2, 3] += 5.0
        rewrite_nifti(path, lambda d: d, affine=affine)
    scored = []
    monkeypatch.setattr(folder, "evaluate_case", lambda *a, **k: scored.append(a) or ([], []))
    out = tmp_path / "ev"
    result = runner.invoke(app, ["evaluate", str(predictions), str(brats18_phantom), "--output", str(out)])
    text = _flat(result.output)
    assert result.exit_code == 1, result.output
    assert "2 case(s) cannot be used for evaluation" in text
    assert files[0].name in text and files[-1].name in text and "affine differs" in text
    assert scored == [] and not out.exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--challenge", "GLLI"], "--challenge"),
        (["--challenge", "custom"], "--dilation"),
        (["--scheme", "brats2099"], "--scheme"),
        (["--metrics", "dice,hd99"], "hd99"),
    ],
)
def test_evaluate_usage_errors(argv, expected, predictions, brats18_phantom, tmp_path):
    out = tmp_path / "ev"
    result = runner.invoke(
        app, ["evaluate", str(predictions), str(brats18_phantom), "--output", str(out), "--no-progress", *argv]
    )
    assert result.exit_code == 2, result.output
    assert expected in _flat(result.output) and "Traceback" not in result.output
    assert not out.exists()


def test_evaluate_output_under_a_file(predictions, brats18_phantom, tmp_path):
    (tmp_path / "file").write_text("x")
    result = runner.invoke(
        app, ["evaluate", str(predictions), str(brats18_phantom), "--output", str(tmp_path / "file" / "ev")]
    )
    assert result.exit_code == 2 and "is a file" in _flat(result.output)
