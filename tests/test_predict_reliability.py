"""`fusionseg predict` / `fusionseg evaluate` on bad input: one message, the right exit
code (1 bad data, 2 bad usage), no traceback and no output file; --skip-existing
finishes an interrupted folder byte for byte; labels in the target folder's
convention."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import rewrite_nifti, tiny_config, train_via_cli
from fusionseg.cli import app
from fusionseg.data.cases import discover

runner = CliRunner()

#: Modalities of the module's model: t1 and t2 are not needed for prediction.
MODALITIES = ["t1ce", "flair"]


@pytest.fixture(scope="module")
def run(phantom_dataset, tmp_path_factory) -> Path:
    """One small model trained on a 6-case BraTS 2018 phantom, on T1ce and FLAIR, long
    enough (seconds) to predict ED and ET (the phantoms' NCR, a few voxels, it misses)."""
    data = phantom_dataset("brats2018", n_cases=6)
    tmp = tmp_path_factory.mktemp("reliability_run")
    cfg = tiny_config(
        "reliable",
        data,
        tmp,
        evaluation={"overlays": 0, "metrics": ["dice"]},
        model={"kwargs": {"channels": [8, 16], "bottleneck": 16, "norm": "batch"}},
        train={"epochs": 8, "batch_size": 8, "max_steps_per_epoch": 10, "lr": 0.01},
    )
    cfg["data"]["modalities"] = MODALITIES
    result, run_dir = train_via_cli(cfg, tmp)
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture
def data(brats18_copy) -> Path:
    """A writable copy of the 4-case BraTS 2018 phantom (case ids sorted)."""
    return brats18_copy


def _predict(run: Path, input: Path, out: Path, *args: str):
    return runner.invoke(app, ["predict", str(run), str(input), str(out), "--no-postprocess", *args])


def _flat(text: str) -> str:
    """Output without whitespace: rich wraps long lines (paths included) at 80 columns."""
    return "".join(text.split())


def _fails_cleanly(result, code: int, out: Path, *expected: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exc_info  # not an uncaught error
    assert "Traceback" not in result.output and "error" in result.output
    for text in expected:
        assert _flat(text) in _flat(result.output), (text, result.output)
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


def _labels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


# --- usage errors: exit code 2 -------------------------------------------------------


def test_unknown_case_names_it_and_lists_valid_ids(run, data, tmp_path):
    ids = [c.case_id for c in discover(data).cases]
    out = tmp_path / "pred"
    result = _predict(run, data, out, "--case", ids[0], "--case", "nope")
    _fails_cleanly(result, 2, out, "'nope'", ids[1])
    assert _flat("Valid case ids") in _flat(result.output)
    close = _predict(run, data, out, "--case", ids[0][:-1] + "x")
    _fails_cleanly(close, 2, out, "Did you mean", ids[0])


def test_existing_outputs_need_overwrite_or_skip_existing(run, data, tmp_path):
    ids = [c.case_id for c in discover(data).cases]
    out = tmp_path / "pred"
    out.mkdir()
    (out / f"{ids[1]}.nii.gz").write_bytes(b"keep me")
    result = _predict(run, data, out)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "--overwrite" in result.output and "--skip-existing" in result.output
    assert sorted(p.name for p in out.iterdir()) == [f"{ids[1]}.nii.gz"]
    assert (out / f"{ids[1]}.nii.gz").read_bytes() == b"keep me"
    both = _predict(run, data, out, "--overwrite", "--skip-existing")
    assert both.exit_code == 2 and _flat("exclude each other") in _flat(both.output)
    assert sorted(p.name for p in out.iterdir()) == [f"{ids[1]}.nii.gz"]


# --- data errors: exit code 1 --------------------------------------------------------


def test_empty_folder_is_reported_about_itself(run, data, tmp_path):
    empty = data / "empty"  # its parent is a valid dataset: no fallback onto it
    empty.mkdir()
    out = tmp_path / "pred"
    _fails_cleanly(_predict(run, empty, out), 1, out, str(empty), "the folder is empty")


def test_folder_mixing_layouts_is_reported_about_itself(run, phantom_dataset, tmp_path):
    mixed = tmp_path / "mixed"
    for layout in ("brats2018", "brats2023"):
        src = phantom_dataset(layout, n_cases=2)
        first = min(p for p in src.iterdir() if p.is_dir())
        shutil.copytree(first, mixed / first.name)
    out = tmp_path / "pred"
    _fails_cleanly(_predict(run, mixed, out), 1, out, str(mixed), "several layouts", "--format")


def test_model_modalities_missing_from_the_dataset(run, phantom_dataset, tmp_path):
    out = tmp_path / "pred"
    _fails_cleanly(
        _predict(run, phantom_dataset("autopet", n_cases=2), out),
        1,
        out,
        "the model needs modalities t1ce, flair",
        "missing t1ce, flair",
    )


def _delete(path: Path) -> None:
    path.unlink()


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _nan(path: Path) -> None:
    rewrite_nifti(path, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a), dtype=np.float32)


def _zero(path: Path) -> None:
    rewrite_nifti(path, np.zeros_like)


def _shape(path: Path) -> None:
    rewrite_nifti(path, lambda a: a[:-2])


def _affine(path: Path) -> None:
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 5.0
    rewrite_nifti(path, lambda a: a, affine=affine)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (_delete, "file is missing"),
        (_corrupt, "cannot"),
        (_nan, "non-finite voxel"),
        (_zero, "image is empty: all zero"),
        (_shape, "shape"),
        (_affine, "affine differs"),
    ],
)
def test_a_bad_case_stops_predict_before_anything_is_written(run, data, tmp_path, damage, problem):
    case = discover(data).cases[-1]  # the last case: the others would be written first
    bad = case.images["flair"].path
    damage(bad)
    out = tmp_path / "pred"
    result = _predict(run, data, out)
    _fails_cleanly(result, 1, out, str(bad), problem, "Fix:", "cannot be used for prediction (nothing was written)")
    assert case.case_id in result.output


def test_files_the_model_does_not_need_do_not_matter(run, data, tmp_path):
    """A missing segmentation, a broken T1 (not a model input): predict goes on."""
    cases = discover(data).cases
    cases[0].label.unlink()
    _zero(cases[1].images["t1"].path)
    cases[2].images["t2"].path.unlink()
    out = tmp_path / "pred"
    result = _predict(run, data, out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c.case_id}.nii.gz" for c in cases]


def test_warnings_are_printed_not_fatal(run, data, tmp_path):
    case = discover(data).cases[0]
    shutil.copy(case.images["t1ce"].path, case.images["flair"].path)  # a warning of data check
    out = tmp_path / "pred"
    result = _predict(run, data, out, "--case", case.case_id)
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and _flat("identical to t1ce") in _flat(result.output)
    assert (out / f"{case.case_id}.nii.gz").exists()


def test_single_case_folder_is_predicted(run, data, tmp_path):
    cases = discover(data).cases
    out_all, out_one = tmp_path / "all", tmp_path / "one"
    assert _predict(run, data, out_all).exit_code == 0
    result = _predict(run, cases[1].images["flair"].path.parent, out_one)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out_one.glob("*.nii.gz")) == [f"{cases[1].case_id}.nii.gz"]
    name = f"{cases[1].case_id}.nii.gz"
    assert (out_one / name).read_bytes() == (out_all / name).read_bytes()


# --- interrupted folders ---------------------------------------------------------------

_KILLED_WRITER = """
import os, signal, sys
import nibabel as nib
real_save, calls = nib.save, []
def save_then_die(img, path):  # the 2nd label map: half written, then kill -9
    calls.append(path)
    real_save(img, path)
    if len(calls) == 2:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
nib.save = save_then_die
from fusionseg.cli import app
sys.argv = ["fusionseg", *sys.argv[1:]]
app()
"""


def test_skip_existing_after_kill_9_gives_the_uninterrupted_folder(run, phantom_dataset, tmp_path):
    data = phantom_dataset("brats2018", n_cases=6)
    ids = [c.case_id for c in discover(data).cases]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert _predict(run, data, whole).exit_code == 0

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same arithmetic as here
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, "predict", str(run), str(data), str(resumed), "--no-postprocess"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    finished = sorted(p.name for p in resumed.glob("*.nii.gz") if not p.name.startswith("."))
    assert finished == [f"{ids[0]}.nii.gz"]  # the half-written 2nd file never got its name

    again = _predict(run, data, resumed)
    assert again.exit_code == 2 and "--skip-existing" in again.output
    result = _predict(run, data, resumed, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert _flat("1 skipped (output exists)") in _flat(result.output)
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted([f"{c}.nii.gz" for c in ids] + ["label_convention.json"])
    visible = sorted(p.name for p in resumed.iterdir() if not p.name.startswith("."))
    assert visible == names
    for name in names:
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name
    done = _predict(run, data, resumed, "--skip-existing")
    assert done.exit_code == 0 and _flat("nothing to predict") in _flat(done.output)


def test_skip_existing_refuses_to_mix_label_conventions(run, phantom_dataset, tmp_path):
    data23 = phantom_dataset("brats2023", n_cases=2)
    first = discover(data23).cases[0].case_id
    out = tmp_path / "pred"
    assert _predict(run, data23, out, "--case", first, "--labels", "model").exit_code == 0
    result = _predict(run, data23, out, "--skip-existing")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "brats2017" in result.output and "brats2023" in result.output
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{first}.nii.gz"]


# --- label conventions ---------------------------------------------------------------


def test_labels_are_written_in_the_target_folders_convention(run, phantom_dataset, tmp_path):
    """Trained on BraTS 2018 (ET = 4), predicting BraTS 2023 (ET = 3)."""
    data23 = phantom_dataset("brats2023", n_cases=2)
    ids = [c.case_id for c in discover(data23).cases]
    as_dataset, as_model = tmp_path / "dataset", tmp_path / "model"
    result = _predict(run, data23, as_dataset)
    assert result.exit_code == 0, result.output
    assert _flat("written in the brats2023 convention") in _flat(result.output), result.output
    assert _flat("4 ET -> 3") in _flat(result.output)
    result = _predict(run, data23, as_model, "--labels", "model")
    assert result.exit_code == 0, result.output
    assert _flat("written in the brats2017 convention") in _flat(result.output)
    ours = np.concatenate([_labels(as_dataset / f"{c}.nii.gz").ravel() for c in ids])
    theirs = np.concatenate([_labels(as_model / f"{c}.nii.gz").ravel() for c in ids])
    assert set(np.unique(ours)) <= {0, 1, 2, 3} and 3 in ours and 2 in ours
    assert set(np.unique(theirs)) <= {0, 1, 2, 4} and 4 in theirs
    assert np.array_equal(ours, np.where(theirs == 4, 3, theirs))
    recorded = json.loads((as_dataset / "label_convention.json").read_text())
    assert recorded["label_scheme"]["name"] == "brats2023" and recorded["convention"] == "dataset"
    assert json.loads((as_model / "label_convention.json").read_text())["label_scheme"]["name"] == "brats2017"


def test_evaluate_states_and_checks_the_label_conventions(run, phantom_dataset, tmp_path):
    data23 = phantom_dataset("brats2023", n_cases=2)
    as_dataset, as_model = tmp_path / "dataset", tmp_path / "model"
    assert _predict(run, data23, as_dataset).exit_code == 0
    assert _predict(run, data23, as_model, "--labels", "model").exit_code == 0
    for extra in ([], ["--scheme", "brats2023"]):  # --scheme with a dataset folder: no TypeError
        out = tmp_path / f"ev{len(extra)}"
        result = runner.invoke(app, ["evaluate", str(as_dataset), str(data23), "-m", "dice", "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
        flat = _flat(result.output)
        assert _flat("labels compared: predictions brats2023 {0,1,2,3}") in flat, result.output
        assert _flat("vs ground truth brats2023 {0,1,2,3}") in flat
        conv = json.loads((out / "summary.json").read_text())["conventions"]
        assert conv["prediction_labels"]["scheme"] == conv["gt_labels"]["scheme"] == "brats2023"
        assert "label_convention.json" in conv["prediction_labels"]["source"]
        assert conv["gt_labels"]["source"] == ("given (--scheme)" if extra else "the brats2023 dataset layout")
    mismatch = runner.invoke(
        app, ["evaluate", str(as_model), str(data23), "-m", "dice", "-o", str(tmp_path / "ev_bad")]
    )
    assert mismatch.exit_code == 1 and "Traceback" not in mismatch.output, mismatch.output
    assert "brats2017" in mismatch.output and _flat("--labels dataset") in _flat(mismatch.output)
    unknown = runner.invoke(app, ["evaluate", str(as_dataset), str(data23), "--scheme", "brats2099"])
    assert unknown.exit_code == 2 and "brats2099" in unknown.output and "Traceback" not in unknown.output


class FourClassNet(nn.Module):
    """Class k where channel 0 (z-scored T1ce) lies in the k-th of four intensity bands:
    every class occurs on a phantom."""

    required_divisor = 4

    def forward(self, x):
        edges = torch.tensor([-0.5, 0.0, 0.5], dtype=x.dtype)
        k = torch.bucketize(x[:, 0].contiguous(), edges)
        return torch.nn.functional.one_hot(k, 4).permute(0, 3, 1, 2).to(x.dtype) * 10


def test_every_label_maps_by_name(phantom_dataset, tmp_path):
    """All four classes of a BraTS 2017 model written as BraTS 2023 (ET 4 -> 3) and MSD
    Task01 (NCR 1 -> NET 2, ED 2 -> 1, ET 4 -> 3); an unmappable scheme is an error."""
    from fusionseg.config import PreprocessConfig
    from fusionseg.constants import BRATS2017, BRATS2023, MSD_TASK01, PETCT
    from fusionseg.errors import FusionsegError
    from fusionseg.inference.predict import Predictor, label_mapping

    case = discover(phantom_dataset("brats2023", n_cases=2)).cases[0]
    predictor = Predictor([FourClassNet()], ("t1ce",), BRATS2017, PreprocessConfig(), 4, [])
    model = _labels(predictor.write_case(case, tmp_path / "model.nii.gz"))
    as23 = _labels(predictor.write_case(case, tmp_path / "b23.nii.gz", labels=BRATS2023))
    msd = _labels(predictor.write_case(case, tmp_path / "msd.nii.gz", labels=MSD_TASK01))
    assert set(np.unique(model)) == {0, 1, 2, 4}
    assert set(np.unique(as23)) == {0, 1, 2, 3}
    assert np.array_equal(as23, np.where(model == 4, 3, model))
    assert np.array_equal(msd, np.select([model == 1, model == 2, model == 4], [2, 1, 3], 0))
    for out, scheme in ((as23, BRATS2023), (msd, MSD_TASK01)):  # the same regions
        for region in ("WT", "TC", "ET"):
            assert np.array_equal(scheme.region_mask(out, region), BRATS2017.region_mask(model, region))
    with pytest.raises(FusionsegError, match="--labels model"):
        label_mapping(BRATS2017, PETCT)
