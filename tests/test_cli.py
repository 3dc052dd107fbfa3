"""CLI smoke tests: every command teaches with --help; train -> predict -> evaluate on
phantoms reproduces the run's own numbers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_config, train_via_cli
from fusionseg.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "command", [[], ["data"], ["data", "check"], ["train"], ["compare"], ["predict"], ["evaluate"], ["demo"]]
)
def test_help_of_every_command(command):
    result = runner.invoke(app, command + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output) > 200


COMMANDS = [["data", "check"], ["train"], ["compare"], ["predict"], ["evaluate"], ["demo"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_the_same_flags_for_the_same_things(command):
    """Progress bars and quiet output have one flag each on every command; outputs are
    chosen with --output-dir wherever they are an option."""
    text = runner.invoke(app, command + ["--help"], env={"COLUMNS": "200"}).output
    assert "--progress" in text and "--no-progress" in text
    assert "--quiet" in text and "-q" in text
    if command not in (["data", "check"], ["predict"]):  # predict: OUTPUT is an argument
        assert "--output-dir" in text


def test_quiet_data_check_prints_problems_but_no_table(brats18_phantom):
    loud = runner.invoke(app, ["data", "check", str(brats18_phantom), "--no-progress"])
    quiet = runner.invoke(app, ["data", "check", str(brats18_phantom), "--quiet"])
    assert loud.exit_code == quiet.exit_code == 0
    assert "spacing (mm)" in loud.output and "spacing (mm)" not in quiet.output
    assert "4/4 cases passed" in quiet.output


def test_train_predict_evaluate_roundtrip(phantom_dataset, tmp_path):
    data = phantom_dataset("brats2018", n_cases=6)
    cfg = tiny_config("tiny", data, tmp_path, evaluation={"overlays": 1, "metrics": ["dice", "hd95"]})
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    for name in (
        "config.yaml",
        "environment.json",
        "splits.json",
        "metrics_per_case.csv",
        "summary.json",
        "results.md",
        "fold_0/train_log.csv",
        "fold_0/checkpoints/best.ckpt",
        "fold_0/checkpoints/last.ckpt",
    ):
        assert (run / name).exists(), name
    assert list((run / "overlays").glob("*.png"))
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and "git_sha" in env
    assert isinstance(env["cpu_capability"], str) and env["cpu_capability"] and "cpu_model" in env
    test_cases = json.loads((run / "splits.json").read_text())["folds"][0]["test"]

    out = tmp_path / "pred"
    args = ["predict", str(run), str(data), str(out), "--fold", "0"]
    for c in test_cases:
        args += ["--case", c]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for c in test_cases:  # identical to the run's own prediction, same header
        mine = nib.load(out / f"{c}.nii.gz")
        theirs = nib.load(run / "predictions" / f"{c}.nii.gz")
        assert np.array_equal(np.asanyarray(mine.dataobj), np.asanyarray(theirs.dataobj))
        assert np.array_equal(mine.affine, theirs.affine)
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "--overwrite" in again.output

    result = runner.invoke(
        app, ["evaluate", str(out), str(data), "--output", str(tmp_path / "ev"), "--metrics", "dice,hd95"]
    )
    assert result.exit_code == 0, result.output
    ours = pd.read_csv(tmp_path / "ev" / "metrics_per_case.csv").set_index(["case", "region"]).sort_index()
    run_rows = pd.read_csv(run / "metrics_per_case.csv").set_index(["case", "region"]).sort_index()
    for metric in ("dice", "hd95"):
        assert np.allclose(ours[metric], run_rows.loc[ours.index, metric], atol=1e-9)


def test_bad_config_gives_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {root: x}\ntrain: {epoch: 3}\n")
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert "train.epoch" in result.output


def test_same_config_trains_the_same_network(phantom_dataset, tmp_path):
    # torch seeds its default generator at random per process, and a second run in the
    # same process starts from a consumed state: both must still give the same weights
    import torch

    data = phantom_dataset("brats2018", n_cases=5)
    logs = []
    for out in ("a", "b"):
        torch.manual_seed(len(out) + len(logs))  # a different global state each time
        cfg = tiny_config(
            "seeded",
            data,
            tmp_path,
            output=out,
            train={"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2},
            split={"kind": "kfold", "folds": 2, "run_folds": [0], "val_fraction": 0.34},
            evaluation={"overlays": 0, "metrics": ["dice"]},
        )
        result, run = train_via_cli(cfg, tmp_path)
        assert result.exit_code == 0, result.output
        logs.append(pd.read_csv(run / "fold_0" / "train_log.csv")[["train_loss", "val_score"]])
    pd.testing.assert_frame_equal(logs[0], logs[1])


def test_compare_rows_unknown_or_without_reference_is_a_message():
    study = Path(__file__).resolve().parents[1] / "configs" / "s0_table1.yaml"
    result = runner.invoke(app, ["compare", str(study), "--rows", "A,C-dinamic"])
    assert result.exit_code == 2 and "C-dinamic" in result.output and "choose among" in result.output
    result = runner.invoke(app, ["compare", str(study), "--rows", "B", "--rows", "C-dynamic"])
    assert result.exit_code == 2 and "must include the reference run 'A'" in " ".join(result.output.split())
