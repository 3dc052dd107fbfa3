"""The training loop's structure: its imports, its callbacks, batches it passes through,
and resuming after an interruption to the same numbers as an uninterrupted run.

(tests/test_training.py covers the logs, checkpoints, early stopping and lr schedule on
phantom data; tests/test_ddp.py the DDP behaviour.)"""

from __future__ import annotations

import ast
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusionseg.training
from fusionseg.config import TrainConfig
from fusionseg.constants import BRATS2017
from fusionseg.losses import build_seg_loss
from fusionseg.models import build_model
from fusionseg.strategies import EarlyFusion
from fusionseg.training.callbacks import Callback, EarlyStopping, FitState
from fusionseg.training.loop import fit

MODS = ["t1", "t1ce", "t2", "flair"]
TRAINING = Path(fusionseg.training.__file__).parent
TIMING = ("train_seconds", "train_samples_per_s")


def cases(n: int, seed: int) -> list[dict]:
    """Synthetic slices: ``image`` (4, 16, 16) float32, ``label`` (16, 16) int64 in 0..3."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        image = torch.randn(4, 16, 16, generator=g)
        label = torch.zeros(16, 16, dtype=torch.int64)
        label[image[0] > 0.5] = 1
        label[image[1] > 1.0] = 2
        label[image[2] > 1.2] = 3
        out.append({"image": image, "label": label})
    return out


def tiny_strategy(cls=EarlyFusion, norm: str = "batch") -> EarlyFusion:
    torch.manual_seed(0)
    model = build_model("unet2stage", in_channels=4, num_classes=4, channels=(4, 8), bottleneck=8, norm=norm)
    return cls(model, MODS, build_seg_loss("dice_ce", num_classes=4))


def cfg(**kw) -> TrainConfig:
    return TrainConfig(
        **{
            "epochs": 3,
            "batch_size": 4,
            "lr": 3e-2,
            "lr_schedule": "poly",
            "weight_decay": 1e-4,
            "patience": 5,
            "seed": 3,
            "threads": 1,
            **kw,
        }
    )


def test_stage_lives_in_training_and_strategies_reexport_it():
    from fusionseg.strategies import Stage as from_package
    from fusionseg.strategies.base import Stage as from_base
    from fusionseg.training.stage import Stage

    assert from_base is from_package is Stage is fusionseg.training.Stage


def test_training_imports_no_strategy_and_no_experiment():
    for path in sorted(TRAINING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not name.startswith(("fusionseg.strategies", "fusionseg.experiments")), (
                    f"{path.name} imports {name}"
                )
    # nor indirectly
    code = (
        "import sys, fusionseg.training, fusionseg.training.loop, fusionseg.training.callbacks; "
        "print(sorted(m for m in sys.modules if m.startswith(('fusionseg.strategies', "
        "'fusionseg.experiments'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_no_function_in_training_or_experiments_is_longer_than_60_lines():
    for path in sorted(TRAINING.glob("*.py")) + sorted((TRAINING.parent / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}:{node.name}"


def _outcome(result, out: Path, strategy) -> dict:
    """Everything of a finished fit but the timings."""
    rows = list(csv.DictReader((out / "train_log.csv").read_text().splitlines()))
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    return {
        "header": (out / "train_log.csv").read_text().splitlines()[0],
        "rows": [{k: v for k, v in r.items() if k not in TIMING} for r in rows],
        "result": (result.best_epoch, result.best_score, result.epochs_run, result.stopped_early),
        "history": [{k: v for k, v in r.items() if k not in TIMING} for r in result.history],
        "best": best,
        "last": {k: v for k, v in last.items() if k not in ("seconds", "history")},
        "weights": strategy.state_dict(),
    }


def _assert_same(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


class _Interrupt(Callback):
    """Raises after ``epoch``'s callbacks before it (checkpoints, log) have run."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, state: FitState) -> None:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one_and_a_repeat(tmp_path):
    runs = {}
    for name in ("whole", "again"):
        s = tiny_strategy()
        result = fit(s, cases(14, 1), cases(6, 2), cfg(), tmp_path / name, BRATS2017, meta={"m": 1}, progress=False)
        runs[name] = _outcome(result, tmp_path / name, s)
    with pytest.raises(KeyboardInterrupt):
        fit(
            tiny_strategy(),
            cases(14, 1),
            cases(6, 2),
            cfg(),
            tmp_path / "cut",
            BRATS2017,
            meta={"m": 1},
            progress=False,
            callbacks=[_Interrupt(1)],
        )
    assert len((tmp_path / "cut" / "train_log.csv").read_text().splitlines()) == 2
    s = tiny_strategy()
    result = fit(s, cases(14, 1), cases(6, 2), cfg(), tmp_path / "cut", BRATS2017, meta={"m": 1}, progress=False)
    runs["cut"] = _outcome(result, tmp_path / "cut", s)
    assert runs["whole"]["result"][2] == 3 and runs["whole"]["best"]["meta"] == {"m": 1}
    _assert_same(runs["whole"], runs["again"], "again")
    _assert_same(runs["whole"], runs["cut"], "cut")


class _Record(Callback):
    def __init__(self):
        self.events: list[tuple] = []

    def on_fit_start(self, state):
        self.events.append(("fit_start", state.epoch))

    def on_epoch_start(self, state):
        self.events.append(("epoch_start", state.epoch, state.should_stop))

    def on_epoch_end(self, state):
        assert state.row is state.history[-1] and state.row["val_score"] == state.score
        self.events.append(("epoch_end", state.epoch, state.improved, state.bad_epochs))

    def on_fit_end(self, state):
        self.events.append(("fit_end", state.epoch))


class _MaskedFusion(EarlyFusion):
    """Checks that every training batch keeps its extra keys: ``available`` (B, M) bool
    and ``target`` (B,) float."""

    seen: list[tuple] = []

    def training_loss(self, batch):
        assert batch["available"].dtype == torch.bool
        self.seen.append((tuple(batch["available"].shape), tuple(batch["target"].shape)))
        return super().training_loss(batch)


def test_callback_hooks_in_order_and_extra_batch_keys_pass_through(tmp_path):
    train = [
        {**c, "available": torch.tensor([True, False, True, True]), "target": torch.tensor(0.5)} for c in cases(8, 1)
    ]
    record = _Record()
    s = tiny_strategy(_MaskedFusion, norm="none")
    # lr ~ 0 and no batch-norm statistics: no improvement after epoch 1, so early stopping
    # at the start of epoch 4
    result = fit(
        s,
        train,
        cases(4, 2),
        cfg(lr=1e-12, epochs=6, patience=2, lr_schedule="constant"),
        tmp_path,
        BRATS2017,
        progress=False,
        callbacks=[record],
    )
    assert s.seen and set(s.seen) == {((4, 4), (4,))}
    kinds = [e[0] for e in record.events]
    assert kinds == ["fit_start", *["epoch_start", "epoch_end"] * 3, "epoch_start", "fit_end"]
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert [e for e in record.events if e[0] == "epoch_end"] == [
        ("epoch_end", 1, True, 0),
        ("epoch_end", 2, False, 1),
        ("epoch_end", 3, False, 2),
    ]
    assert record.events[-2] == ("epoch_start", 3, True)  # stopped before epoch 4 trains


def test_early_stopping_rule():
    stop = EarlyStopping(patience=2, min_epochs=3)
    for epoch, bad, expected in [(2, 2, False), (3, 1, False), (3, 2, True), (5, 7, True)]:
        state = FitState(fabric=None, strategy=None, optimizer=None, epoch=epoch, bad_epochs=bad)
        stop.on_epoch_start(state)
        assert state.should_stop is expected, (epoch, bad)


class _NanLoss(EarlyFusion):
    def training_loss(self, batch):
        loss, logs = super().training_loss(batch)
        return loss * float("nan"), logs


def test_non_finite_training_loss_raises(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite training loss at epoch 0, step 0"):
        fit(tiny_strategy(_NanLoss), cases(8, 1), cases(4, 2), cfg(), tmp_path, BRATS2017, progress=False)
