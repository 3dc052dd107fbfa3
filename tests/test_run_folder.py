"""A run folder cannot disagree with its results: rerunning with changed settings
stops before any work (or --overwrite / --resume-with-changes), inputs are checked
before the run folder is written, outputs get the umask's permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fusionseg.cli import app
from fusionseg.experiments.identity import changed_settings, identity_hash, identity_settings
from fusionseg.config import validate_config

runner = CliRunner()


def _train(cfg: dict, folder: Path, *flags: str):
    path = Path(folder) / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(path), "--no-progress", *flags])
    return result, Path(cfg["output_dir"]) / cfg["name"]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def trained(phantom_dataset, tmp_path_factory):
    """One tiny trained run folder (module-scoped; tests copy what they change)."""
    tmp = tmp_path_factory.mktemp("run_folder")
    data = phantom_dataset("brats2018", n_cases=4)
    cfg = tiny_config("rf", data, tmp)
    result, run = _train(cfg, tmp)
    assert result.exit_code == 0, result.output
    return cfg, run, tmp


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_changed_settings_stop_before_any_work_and_name_the_keys(trained):
    cfg, run, tmp = trained
    before = _snapshot(run)
    changed = {
        **cfg,
        "model": {"kwargs": {"channels": [4, 8], "bottleneck": 16, "norm": "batch"}},
        "train": {**cfg["train"], "lr": 0.01},
    }
    result, _ = _train(changed, tmp)
    text = _flat(result.output)
    assert result.exit_code == 2, result.output
    assert "model.kwargs" in text and "train.lr" in text and "0.001 -> 0.01" in text
    assert "--overwrite" in text and "--resume-with-changes" in text and "new name" in text
    assert "Traceback" not in result.output
    assert _snapshot(run) == before  # nothing was touched


def test_result_free_and_evaluation_only_changes_do_not_stop(trained):
    cfg, run, tmp = trained
    same = {**cfg, "train": {**cfg["train"], "threads": 1}}
    result, _ = _train(same, tmp)
    assert result.exit_code == 0, result.output
    assert "finished earlier" in _flat(result.output)
    re_eval = {**same, "postprocess": {"method": "fixed", "min_volume_mm3": 10.0}}
    result, _ = _train(re_eval, tmp)
    assert result.exit_code == 0, result.output
    assert "predicting again" in _flat(result.output)


def test_a_run_kept_from_another_cpu_kind_warns_and_keeps_the_earlier_record(trained):
    cfg, run, tmp = trained
    env_path = run / "environment.json"
    mine = json.loads(env_path.read_text())
    other = {**mine, "cpu_model": "Some Other CPU (family 6, model 85)", "cpu_capability": "AVX512"}
    env_path.write_text(json.dumps(other))
    result, _ = _train(cfg, tmp)
    text = _flat(result.output)
    assert result.exit_code == 0, result.output
    assert "another machine kind" in text and f"AVX512 -> {mine['cpu_capability']}" in text
    written = json.loads(env_path.read_text())
    assert written["cpu_capability"] == mine["cpu_capability"]
    assert written["earlier"] == [other]
    result, _ = _train(cfg, tmp)  # same machine again: no warning, the history stays
    assert "another machine kind" not in _flat(result.output)
    assert json.loads(env_path.read_text())["earlier"] == [other]


def test_resume_with_changes_records_and_overwrite_retrains(phantom_dataset, tmp_path):
    data = phantom_dataset("brats2018", n_cases=4)
    cfg = tiny_config("rf2", data, tmp_path)
    assert _train(cfg, tmp_path)[0].exit_code == 0
    changed = {**cfg, "train": {**cfg["train"], "lr": 0.01}}
    result, run = _train(changed, tmp_path, "--resume-with-changes")
    assert result.exit_code == 0, result.output
    record = json.loads((run / "run.json").read_text())
    assert record["changes"][-1]["settings"] == [{"key": "train.lr", "old": 0.001, "new": 0.01}]
    assert record["identity"] == identity_hash(validate_config(changed))
    fit_before = (run / "fold_0" / "fit.json").stat().st_mtime_ns
    result, run = _train({**changed, "train": {**cfg["train"], "lr": 0.002}}, tmp_path, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "deleting" in _flat(result.output)
    record = json.loads((run / "run.json").read_text())
    assert record["changes"] == []  # a fresh run
    assert (run / "fold_0" / "fit.json").stat().st_mtime_ns != fit_before


def test_identity_ignores_result_free_and_evaluation_settings():
    base = validate_config({"name": "a", "data": {"root": "x"}})
    other = validate_config(
        {
            "name": "b",
            "data": {"root": "x", "cache_dir": "/c"},
            "output_dir": "o",
            "train": {"threads": 1, "num_workers": 2},
            "evaluation": {"challenge": "MEN"},
            "postprocess": {"method": "fixed"},
            "inference": {"tta": "mirror"},
        }
    )
    assert identity_hash(base) == identity_hash(other)
    assert "model.kwargs" in identity_settings(base.model_dump(mode="json"))
    kw = validate_config({"name": "a", "data": {"root": "x"}, "model": {"kwargs": {"norm": "batch"}}})
    assert [k for k, _, _ in changed_settings(base.model_dump(mode="json"), kw.model_dump(mode="json"))] == [
        "model.kwargs"
    ]


def test_bad_inputs_leave_no_run_folder(brats18_copy, tmp_path):
    case = sorted(p for p in brats18_copy.iterdir() if p.is_dir())[0]
    (case / f"{case.name}_t2.nii.gz").unlink()
    cfg = tiny_config("bad", brats18_copy, tmp_path)
    result, run = _train(cfg, tmp_path)
    assert result.exit_code == 1, result.output
    text = _flat(result.output)
    assert f"{case.name}_t2.nii.gz" in text and "Fix:" in text and "data check" in text
    assert "Traceback" not in result.output and not run.exists()
    (tmp_path / "afile").write_text("x")
    cfg = tiny_config("bad2", brats18_copy, tmp_path, output="afile/runs")
    result, run = _train(cfg, tmp_path)
    assert result.exit_code == 2 and "is a file" in _flat(result.output) and not run.exists()


def test_read_only_output_is_found_before_work(brats18_phantom, tmp_path, monkeypatch):
    # root may write anywhere, so the read-only disk is simulated by os.access
    import fusionseg.data.io as identity

    real = os.access
    monkeypatch.setattr(identity.os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real(p, mode))
    (tmp_path / "ro").mkdir()
    cfg = tiny_config("ro", brats18_phantom, tmp_path, output="ro/runs")
    result, run = _train(cfg, tmp_path)
    assert result.exit_code == 2 and "not writable" in _flat(result.output), result.output
    assert not run.exists() and not (tmp_path / "ro" / "runs").exists()


def test_outputs_follow_the_umask(trained):
    _, run, _ = trained
    for name in ("config.yaml", "summary.json", "metrics_per_case.csv", "splits.json", "run.json"):
        mode = stat.S_IMODE((run / name).stat().st_mode)
        umask = os.umask(0o022)
        os.umask(umask)
        assert mode == 0o666 & ~umask, (name, oct(mode))
    prediction = next((run / "predictions").glob("*.nii.gz"))
    assert stat.S_IMODE(prediction.stat().st_mode) == 0o666 & ~umask
