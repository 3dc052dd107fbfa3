"""Validation: each problem names its file and a fix; the command's table, summary,
JSON and exit code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import SHARED_DATA, rewrite_nifti
from fusionseg.data.cases import discover
from fusionseg.data.check import check_case, check_command, check_dataset

app = typer.Typer()
app.command()(check_command)
runner = CliRunner()


def _file(root: Path, case_id: str, suffix: str) -> Path:
    return root / case_id / f"{case_id}_{suffix}.nii.gz"


def _problems(root: Path, case_id: str):
    ds = discover(root)
    return check_case(ds.case(case_id), ds)


def _only_error(problems, path: Path):
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1, problems
    assert errors[0].file == str(path)
    assert errors[0].fix
    return errors[0]


C0 = "Brats18_Phantom_000"


def test_clean_phantom_dataset_passes(brats18_phantom):
    report = check_dataset(discover(brats18_phantom), progress=False)
    assert report.ok and report.n_passed == 4
    assert report.all_problems == []
    assert report.cases[0].label_values == [0, 1, 2, 4]
    assert report.cases[0].shape == (48, 48, 32) and report.cases[0].spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("layout", ["brats2023", "msd", "nnunet", "autopet"])
def test_clean_phantoms_of_every_layout_pass(phantom_dataset, layout):
    report = check_dataset(discover(phantom_dataset(layout)), progress=False)
    assert report.ok and report.n_passed == len(report.cases) == 2, report.all_problems


def test_missing_modality_file(brats18_copy):
    path = _file(brats18_copy, C0, "t2")
    path.unlink()
    p = _only_error(_problems(brats18_copy, C0), path)
    assert "t2 file is missing" in p.problem and "restore" in p.fix


def test_nan_voxel_counted_with_first_index(brats18_copy):
    path = _file(brats18_copy, C0, "flair")

    def add_nan(d):
        d = d.astype(np.float32)
        d[10, 20, 5] = np.nan
        d[30, 1, 2] = np.inf
        return d

    rewrite_nifti(path, add_nan, dtype=np.float32)
    p = _only_error(_problems(brats18_copy, C0), path)
    assert "2 non-finite voxel(s)" in p.problem and "first at index (10, 20, 5)" in p.problem
    assert "NaN" in p.fix


def test_brats2023_label_in_brats2017_case_suggests_scheme(brats18_copy):
    path = _file(brats18_copy, C0, "seg")
    rewrite_nifti(path, lambda d: np.where(d == 4, 3, d))
    p = _only_error(_problems(brats18_copy, C0), path)
    assert p.problem == "segmentation label values {3} not in brats2017 {0,1,2,4}."
    assert "if this is BraTS 2023+ data use --scheme brats2023" in p.fix
    assert "convert the labels" in p.fix


def test_shape_mismatch_names_odd_file_and_shapes(brats18_copy):
    path = _file(brats18_copy, C0, "t1ce")
    rewrite_nifti(path, lambda d: d[:, :, :31])
    p = _only_error(_problems(brats18_copy, C0), path)
    assert p.problem == "t1ce shape (48, 48, 31) differs from (48, 48, 32) of t1, t2, flair, seg."


def test_affine_mismatch(brats18_copy):
    path = _file(brats18_copy, C0, "t1")
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 2.5
    rewrite_nifti(path, lambda d: d, affine=shifted)
    p = _only_error(_problems(brats18_copy, C0), path)
    assert "affine differs" in p.problem and "2.5 mm" in p.problem
    assert "resample" in p.fix


def test_affine_within_tolerance_passes(brats18_copy):
    path = _file(brats18_copy, C0, "t1")
    shifted = np.eye(4)
    shifted[0, 3] = 1e-4
    rewrite_nifti(path, lambda d: d, affine=shifted)
    assert _problems(brats18_copy, C0) == []


def test_corrupt_file_named(brats18_copy):
    path = _file(brats18_copy, C0, "t1")
    path.write_bytes(path.read_bytes()[:200])  # truncated gzip
    p = _only_error(_problems(brats18_copy, C0), path)
    assert p.problem.startswith("t1: ") and "corrupt" in p.fix


def test_empty_image_is_error(brats18_copy):
    path = _file(brats18_copy, C0, "flair")
    rewrite_nifti(path, np.zeros_like)
    p = _only_error(_problems(brats18_copy, C0), path)
    assert p.problem == "flair image is empty: all zero."


def test_empty_seg_is_warning_only(brats18_copy):
    path = _file(brats18_copy, C0, "seg")
    rewrite_nifti(path, np.zeros_like)
    (p,) = _problems(brats18_copy, C0)
    assert p.severity == "warning" and p.file == str(path) and "empty" in p.problem


def test_case_without_seg_among_labelled_is_warning(brats18_copy):
    _file(brats18_copy, C0, "seg").unlink()
    (p,) = _problems(brats18_copy, C0)
    assert p.severity == "warning" and p.file == str(brats18_copy / C0)


def test_msd_channel_beyond_image_is_error(phantom_dataset, tmp_path):
    root = Path(shutil.copytree(phantom_dataset("msd"), tmp_path / "msd"))
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"]["4"] = "PD"
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = discover(root)
    (p,) = check_case(ds.cases[0], ds)
    assert "channel 4 requested but the image has 4 channels" in p.problem


def test_scratch_copy_scenario_reports_every_problem(brats18_copy, tmp_path):
    """The acceptance scenario: deleted modality, NaN voxel, BraTS 2023 label,
    different shape - one per case, each reported with file and fix."""
    cases = [f"Brats18_Phantom_{i:03d}" for i in range(4)]
    _file(brats18_copy, cases[0], "t2").unlink()
    rewrite_nifti(
        _file(brats18_copy, cases[1], "flair"),
        lambda d: np.where(np.arange(d.size).reshape(d.shape) == 1000, np.nan, d),
        dtype=np.float32,
    )
    rewrite_nifti(_file(brats18_copy, cases[2], "seg"), lambda d: np.where(d == 4, 3, d))
    rewrite_nifti(_file(brats18_copy, cases[3], "t1"), lambda d: d[:40])
    out = tmp_path / "report.json"

    result = runner.invoke(app, [str(brats18_copy), "--json-out", str(out)])

    assert result.exit_code == 1, result.output
    assert "label scheme: brats2017" in result.output
    assert "0/4 cases passed" in result.output
    report = json.loads(out.read_text())
    assert report["passed"] == 0 and report["total"] == 4 and report["format"] == "brats2018"
    found = {c["case_id"]: c["problems"] for c in report["cases"]}
    expected = {
        cases[0]: ("t2", "t2 file is missing"),
        cases[1]: ("flair", "1 non-finite voxel(s)"),
        cases[2]: ("seg", "label values {3} not in brats2017"),
        cases[3]: ("t1", "t1 shape (40, 48, 32) differs"),
    }
    for case_id, (suffix, text) in expected.items():
        (problem,) = found[case_id]
        assert problem["file"] == str(_file(brats18_copy, case_id, suffix))
        assert text in problem["problem"] and problem["fix"]
        assert problem["file"] in result.output  # the listing names the file


def test_command_clean_dataset_exit_0(brats18_phantom):
    result = runner.invoke(app, [str(brats18_phantom)])
    assert result.exit_code == 0, result.output
    assert "format: brats2018" in result.output and "label scheme: brats2017" in result.output
    assert "4/4 cases passed" in result.output


def test_command_unreadable_folder_is_a_data_error_exit_1(tmp_path):
    from fusionseg.cli import app as main_app

    result = CliRunner().invoke(main_app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "no supported dataset layout" in result.output


def test_command_help_teaches_formats_and_schemes():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for word in ("--format", "brats2023", "autopet", "--scheme", "msd_task01", "--json-out"):
        assert word in result.output


# --- integration: real data in ../shared/data ---------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("name, n_cases, scheme", [("brats18", 16, "brats2017"), ("sts-petct", 26, "petct")])
def test_real_data_passes_check(name, n_cases, scheme):
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"real data not available: {root} is absent (see shared/data/README.md)")
    result = runner.invoke(app, [str(root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"label scheme: {scheme}" in result.output
    assert f"{n_cases}/{n_cases} cases passed" in result.output


# -- PET/CT ---------------------------------------------------------------------------


@pytest.fixture
def petct_copy(phantom_dataset, tmp_path) -> Path:
    return Path(shutil.copytree(phantom_dataset("autopet", n_cases=2), tmp_path / "petct"))


def _petct_case(root: Path) -> Path:
    return sorted(p for p in root.iterdir() if p.is_dir())[0]


@pytest.mark.parametrize("damage", ["shape", "affine"])
def test_ct_off_the_pet_grid_says_resample_ct_onto_pet(petct_copy, damage):
    case = _petct_case(petct_copy)
    ct = case / "CTres.nii.gz"
    if damage == "shape":
        rewrite_nifti(ct, lambda d: d[:, :, :-2])
    else:
        affine = nib.load(ct).affine.copy()
        affine[0, 3] += 4.0
        rewrite_nifti(ct, lambda d: d, affine=affine)
    problems = check_case(discover(petct_copy).case(case.name), discover(petct_copy))
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1 and errors[0].file.endswith("CTres.nii.gz"), problems
    assert "resample the CT onto the PET grid" in errors[0].fix
    assert ("shape" if damage == "shape" else "affine differs from pet") in errors[0].problem


def test_pet_in_bq_per_ml_is_a_warning_naming_the_file(petct_copy):
    case = _petct_case(petct_copy)
    rewrite_nifti(case / "SUV.nii.gz", lambda d: d * 5000.0)
    problems = check_case(discover(petct_copy).case(case.name), discover(petct_copy))
    assert [p.severity for p in problems] == ["warning"], problems
    assert problems[0].file.endswith("SUV.nii.gz") and "Bq/ml" in problems[0].problem
