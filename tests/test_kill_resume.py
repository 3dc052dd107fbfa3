"""kill -9 in the middle of `train` and `evaluate`, then the same command: the same
bytes as an uninterrupted run (predict: test_predict_reliability.py). The process
kills itself at a chosen point (SIGKILL: no cleanup, no atexit), so the test is exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fusionseg.cli import app

runner = CliRunner()

#: Runs `fusionseg ARGS` and SIGKILLs itself on the N-th call of MODULE.FUNC (argv 1-3).
_KILLED = r"""
import importlib, os, signal, sys
module, func, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
target = importlib.import_module(module)
owner, name = (getattr(target, func.split(".")[0]), func.split(".")[1]) if "." in func else (target, func)
original = getattr(owner, name)
calls = [0]
def dying(*args, **kwargs):
    out = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(owner, name, dying)
from fusionseg.cli import app
sys.argv = ["fusionseg", *sys.argv[4:]]
app()
"""


def _killed(module: str, func: str, n: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same arithmetic as here
    done = subprocess.run(
        [sys.executable, "-c", _KILLED, module, func, str(n), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def _config(data: Path, tmp: Path, name: str) -> Path:
    cfg = tiny_config(
        name, data, tmp, train={"epochs": 4, "batch_size": 8, "max_steps_per_epoch": 2, "patience": 10, "threads": 1}
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_killed_mid_run_resumes_to_the_same_bytes(phantom_dataset, tmp_path):
    data = phantom_dataset("brats2018", n_cases=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = _config(data, tmp_path / "a", "kill")
    assert runner.invoke(app, ["train", str(whole), "--no-progress"]).exit_code == 0
    again = _config(data, tmp_path / "b", "kill")
    # killed right after epoch 2's checkpoint and log were written
    _killed("fusionseg.training.loop", "_write_log", 2, "train", str(again), "--no-progress")
    run_b = tmp_path / "b" / "runs" / "kill"
    assert (run_b / "fold_0" / "checkpoints" / "last.ckpt").exists()
    assert not (run_b / "metrics_per_case.csv").exists()
    result = runner.invoke(app, ["train", str(again), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "resumed" in " ".join(result.output.split())
    run_a = tmp_path / "a" / "runs" / "kill"
    assert (run_b / "metrics_per_case.csv").read_bytes() == (run_a / "metrics_per_case.csv").read_bytes()
    assert (run_b / "fold_0" / "train_log.csv").read_text().count("\n") == (
        run_a / "fold_0" / "train_log.csv"
    ).read_text().count("\n")


def test_evaluate_killed_between_outputs_reruns_to_the_same_bytes(brats18_phantom, tmp_path):
    import shutil

    pred = tmp_path / "pred"
    pred.mkdir()
    for case in sorted(p for p in brats18_phantom.iterdir() if p.is_dir()):
        shutil.copy(case / f"{case.name}_seg.nii.gz", pred / f"{case.name}.nii.gz")
    args = ["evaluate", str(pred), str(brats18_phantom), "--no-progress", "--quiet"]
    assert runner.invoke(app, [*args, "--output", str(tmp_path / "whole")]).exit_code == 0
    # killed right after the first of the output files was renamed into place
    _killed("fusionseg.data.io", "_AtomicPath.__exit__", 1, *args, "--output", str(tmp_path / "again"))
    written = sorted(p.name for p in (tmp_path / "again").iterdir() if not p.name.startswith("."))
    assert len(written) == 1
    assert runner.invoke(app, [*args, "--output", str(tmp_path / "again")]).exit_code == 0
    for name in ("metrics_per_case.csv", "metrics_per_lesion.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
