"""fit under DDP (Lightning Fabric, 2 CPU processes, gloo): the validation counts are
summed over ranks, so the logged Dice is the single-process Dice of the same weights,
and every rank takes the same checkpoint and early-stopping decisions even when the
ranks' validation shards score differently on their own.

The DDP part runs in a subprocess (Fabric's ``ddp`` launcher re-runs the script for
rank 1) under a timeout, so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fusionseg.config import TrainConfig
from fusionseg.constants import BRATS2017
from fusionseg.losses import build_seg_loss
from fusionseg.models import build_model
from fusionseg.strategies import EarlyFusion
from fusionseg.training.callbacks import Callback
from fusionseg.training.loop import fit, validate

MODS = ["t1", "t1ce", "t2", "flair"]
CFG = TrainConfig(epochs=5, batch_size=2, lr=5e-2, patience=1, seed=5, threads=1)

#: Rank r validates cases r, r + 2, ...: the odd cases (rank 1's shard) have no tumour.
N_VAL = 6

#: The launched script: the helpers below, on 2 CPU ranks.
_SCRIPT = """
import os, sys
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from lightning_fabric import Fabric
from test_ddp import ddp_main
Fabric(accelerator="cpu", devices=2, strategy="ddp").launch(ddp_main, sys.argv[1])
"""


def _case(g: torch.Generator, tumour: bool) -> dict:
    image = torch.randn(4, 16, 16, generator=g)
    label = torch.zeros(16, 16, dtype=torch.int64)
    if tumour:
        label[image[0] > -0.3] = 2
        label[image[1] > 0.5] = 1
        label[image[2] > 1.0] = 3
    return {"image": image, "label": label}


def train_cases() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [_case(g, tumour=True) for _ in range(16)]


def val_cases() -> list[dict]:
    g = torch.Generator().manual_seed(2)
    return [_case(g, tumour=i % 2 == 0) for i in range(N_VAL)]


def tiny_strategy() -> EarlyFusion:
    torch.manual_seed(0)
    model = build_model("unet2stage", in_channels=4, num_classes=4, channels=(4, 8), bottleneck=8, norm="batch")
    return EarlyFusion(model, MODS, build_seg_loss("dice_ce", num_classes=4))


class _SaveWeightsAfterEpoch1(Callback):
    """Rank 0 keeps the weights the epoch-1 validation saw (batch-norm buffers included)."""

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, state) -> None:
        if state.epoch == 1 and state.fabric.is_global_zero:
            torch.save(state.strategy.state_dict(), self.path)


class _BufferSpread(Callback):
    """Largest difference between the ranks' floating buffers (batch-norm statistics)
    after each epoch's validation: 0 when every rank validated rank 0's weights."""

    def __init__(self):
        self.spread: list[float] = []

    def on_epoch_end(self, state) -> None:
        buffers = [b.flatten() for b in state.strategy.module.buffers() if b.is_floating_point()]
        gathered = state.fabric.all_gather(torch.cat(buffers))
        self.spread.append(float((gathered[0] - gathered[1]).abs().max()))


def ddp_main(fabric, out: str) -> None:
    """One rank: validate the initial weights, fit, write what the test compares."""
    out = Path(out)
    rank, world = fabric.global_rank, fabric.world_size
    strategy = tiny_strategy()
    shard = torch.utils.data.Subset(val_cases(), list(range(rank, N_VAL, world)))
    loader = torch.utils.data.DataLoader(shard, batch_size=2 * CFG.batch_size)
    local = validate(strategy, loader, BRATS2017)  # this rank's shard alone
    initial = validate(strategy, loader, BRATS2017, fabric)  # summed over ranks
    spread = _BufferSpread()
    result = fit(
        strategy,
        train_cases(),
        val_cases(),
        CFG,
        out / "run",
        BRATS2017,
        progress=False,
        fabric=fabric,
        callbacks=[_SaveWeightsAfterEpoch1(out / "epoch1.pt"), spread],
    )
    checksum = sum(float(p.double().sum()) for p in strategy.state_dict().values() if p.is_floating_point())
    report = {
        "local_initial": local.tolist(),
        "initial": initial.tolist(),
        "checksum": checksum,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "buffer_spread": spread.spread,
        "val_scores": [row["val_score"] for row in result.history],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))


def _single_process_dice(state: dict | None = None) -> list[float]:
    """Dice of the initial weights (or ``state``) on all validation cases, in this
    process, with one thread like the ranks."""
    strategy = tiny_strategy()
    if state is not None:
        strategy.load_state_dict(state)
    loader = torch.utils.data.DataLoader(val_cases(), batch_size=2 * CFG.batch_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return validate(strategy, loader, BRATS2017).tolist()
    finally:
        torch.set_num_threads(threads)


def test_ddp_validation_is_the_single_process_one_and_ranks_agree(tmp_path):
    script = tmp_path / "launch.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    # its own process group, so that a timeout ends rank 1 (Fabric's child) as well
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail("the 2-process run did not finish in 120 s (deadlock?):\n" + output[-3000:])
    assert proc.returncode == 0, output[-3000:]
    print(f"2-process DDP run: {time.perf_counter() - t0:.1f} s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # (a) the counts summed over the two shards give the single-process Dice exactly,
    # although each shard alone scores differently
    whole = _single_process_dice()
    for rank in ranks:
        assert max(abs(a - b) for a, b in zip(rank["initial"], whole)) <= 1e-12
    assert ranks[0]["local_initial"] != ranks[1]["local_initial"]
    # ... and so does fit's epoch-1 validation of the trained weights (train_log.csv,
    # rank 0), every rank having validated with rank 0's batch-norm statistics
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").read_text().splitlines()))
    after_epoch1 = _single_process_dice(torch.load(tmp_path / "epoch1.pt", weights_only=True))
    logged = [float(rows[0][f"val_dice_{r}"]) for r in BRATS2017.region_names]
    assert max(abs(a - b) for a, b in zip(logged, after_epoch1)) <= 1e-12
    assert abs(float(rows[0]["val_score"]) - sum(after_epoch1) / len(after_epoch1)) <= 1e-12
    assert ranks[0]["buffer_spread"] == [0.0] * ranks[0]["epochs_run"]

    # (b) the shards differ, yet both ranks took the same decisions and end on the same weights
    for key in ("best_epoch", "epochs_run", "stopped_early", "val_scores", "checksum"):
        assert ranks[0][key] == ranks[1][key], key
    assert len(rows) == ranks[0]["epochs_run"]


def test_train_cli_with_devices_2_strategy_ddp_runs_a_fold_job(phantom_dataset, tmp_path):
    """``fusionseg train --devices 2 --strategy ddp``: each stage trains on 2 CPU
    processes, rank 0 alone writes the log, and the calling process predicts the test
    cases with the best checkpoint's weights (``fusionseg predict`` gives the same maps)."""
    import nibabel as nib
    import numpy as np
    import yaml

    from conftest import tiny_config

    data = phantom_dataset("brats2018", n_cases=4)
    cfg = tiny_config(
        "ddp",
        data,
        tmp_path,
        evaluation={"overlays": 0, "metrics": ["dice"]},
        postprocess={"method": "none"},
        train={"epochs": 8, "batch_size": 4, "max_steps_per_epoch": 4, "lr": 0.01, "patience": 20, "threads": 1},
        model={"kwargs": {"channels": [8, 16], "bottleneck": 16, "norm": "batch"}},
    )
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fs = [sys.executable, "-c", "import sys; from fusionseg.cli import app; sys.argv[0] = 'fusionseg'; app()"]
    done = subprocess.run(
        [*fs, "train", str(tmp_path / "ddp.yaml"), "--devices", "2", "--strategy", "ddp", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    run = tmp_path / "runs" / "ddp"
    with open(run / "fold_0" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))  # rank 0's rows only
    test_cases = json.loads((run / "splits.json").read_text())["folds"][0]["test"]
    out = tmp_path / "pred"
    args = [*fs, "predict", str(run), str(data), str(out), "--fold", "0", "--labels", "model", "--no-progress"]
    done = subprocess.run(
        args + [a for c in test_cases for a in ("--case", c)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for case in test_cases:
        mine = np.asanyarray(nib.load(out / f"{case}.nii.gz").dataobj)
        theirs = np.asanyarray(nib.load(run / "predictions" / f"{case}.nii.gz").dataobj)
        assert mine.any() and np.array_equal(mine, theirs), case
