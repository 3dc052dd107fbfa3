"""Callbacks of the training loop, Lightning style, and the state they see.

:func:`fusionseg.training.loop.fit` calls, on every callback in order:

- ``on_fit_start(state)``: once, after the set-up and any resume;
- ``on_epoch_start(state)``: before each epoch; setting ``state.should_stop`` ends the fit
  before the epoch trains (this is how :class:`EarlyStopping` stops);
- ``on_epoch_end(state)``: after each epoch's training and validation, once
  ``state.row``, ``state.score`` and the best-score bookkeeping are up to date;
- ``on_fit_end(state)``: once, when the fit returns normally (the strategy then holds the
  best weights).

The default callbacks are, in this order, :class:`TensorBoard`, :class:`Checkpoint`,
:class:`CSVLogger` and :class:`EarlyStopping`; a caller's callbacks run after them. Under
DDP every rank calls every hook with the same ``state`` values (the loop all-reduces what
goes into them); the callbacks that write files write on rank 0 only.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from lightning_fabric.loggers import TensorBoardLogger

#: What ``checkpoints/last.ckpt`` holds besides the strategy and optimiser, in this order.
RESUME_KEYS = ("epoch", "best_score", "best_epoch", "bad_epochs", "history", "rng", "seconds")


@dataclass
class FitState:
    """The state of one :func:`~fusionseg.training.loop.fit` call as the callbacks see it.

    Attributes:
        fabric: the Fabric the loop runs on.
        strategy, optimizer: the Fabric-wrapped strategy and optimiser.
        meta: JSON-able metadata for ``best.ckpt``.
        epoch: epochs completed (1-based number of the last one; 0 before the first).
        best_score: best validation score so far (``-inf`` before the first epoch).
        best_epoch: epoch of ``best_score`` (-1 before the first epoch).
        bad_epochs: epochs completed since ``best_epoch``.
        history: one log row per completed epoch (the rows of ``train_log.csv``).
        rng: state of the training DataLoader's generator after the last epoch
            (a uint8 tensor; None before the first).
        seconds: training time so far, summed over every invocation (resumes included).
        row: the last epoch's log row (None before the first epoch of this call).
        score: the last epoch's validation score.
        improved: whether the last epoch improved ``best_score``.
        should_stop: set by a callback in ``on_epoch_start`` to end the fit.
    """

    fabric: Fabric
    strategy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    meta: dict = field(default_factory=dict)
    epoch: int = 0
    best_score: float = float("-inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    rng: torch.Tensor | None = None
    seconds: float = 0.0
    row: dict | None = None
    score: float | None = None
    improved: bool = False
    should_stop: bool = False

    def end_epoch(self, row: dict, score: float, rng: torch.Tensor, seconds: float) -> None:
        """Record a finished epoch: its log ``row`` (``row["epoch"]`` is 1-based), its
        validation ``score`` (higher is better), the generator state and the time so far."""
        self.row, self.score = row, score
        self.history.append(row)
        self.epoch = row["epoch"]
        self.improved = score > self.best_score
        if self.improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
        else:
            self.bad_epochs += 1
        self.rng, self.seconds = rng, seconds

    def checkpoint(self) -> dict[str, Any]:
        """What ``last.ckpt`` holds: everything :meth:`restore` needs to resume."""
        return {
            "strategy": self.strategy,
            "optimizer": self.optimizer,
            **{key: getattr(self, key) for key in RESUME_KEYS},
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Take the resume values of a loaded ``last.ckpt`` (keys absent stay as they are)."""
        for key in RESUME_KEYS:
            if key in saved:
                setattr(self, key, saved[key])


class Callback:
    """Base class: every hook does nothing (see the module docstring for when each runs)."""

    def on_fit_start(self, state: FitState) -> None:
        """Once, after the set-up and any resume."""

    def on_epoch_start(self, state: FitState) -> None:
        """Before each epoch; may set ``state.should_stop``."""

    def on_epoch_end(self, state: FitState) -> None:
        """After each epoch's training and validation."""

    def on_fit_end(self, state: FitState) -> None:
        """Once, when the fit returns normally."""


def atomic_save(fabric: Fabric, path: Path, state: dict) -> None:
    """``fabric.save`` to a temporary name, then rename (rank 0), then a barrier: a reader
    (or a run killed mid-write) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fabric.save(tmp, state)
    if fabric.is_global_zero:
        os.replace(tmp, path)
    fabric.barrier()


def write_log(path: Path, history: list[dict]) -> None:
    """Write ``history`` (one dict per epoch) as CSV, atomically; the columns are the keys
    in order of first appearance."""
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


class Checkpoint(Callback):
    """``<folder>/best.ckpt`` when the score improved (``strategy`` weights, ``meta``,
    ``epoch``, ``val_score``) and ``<folder>/last.ckpt`` after every epoch
    (:meth:`FitState.checkpoint`), each written atomically by rank 0."""

    def __init__(self, folder: Path):
        self.best = Path(folder) / "best.ckpt"
        self.last = Path(folder) / "last.ckpt"

    def on_epoch_end(self, state: FitState) -> None:
        if state.improved:
            atomic_save(
                state.fabric,
                self.best,
                {"strategy": state.strategy, "meta": state.meta, "epoch": state.epoch, "val_score": state.score},
            )
        atomic_save(state.fabric, self.last, state.checkpoint())


class CSVLogger(Callback):
    """``train_log.csv``: the whole history, rewritten after every epoch (rank 0).

    Args:
        path: the CSV file.
        write: the writer, ``write(path, history)`` (default :func:`write_log`).
    """

    def __init__(self, path: Path, write: Callable[[Path, list[dict]], None] = write_log):
        self.path = Path(path)
        self.write = write

    def on_epoch_end(self, state: FitState) -> None:
        if state.fabric.is_global_zero:
            self.write(self.path, state.history)


class TensorBoard(Callback):
    """TensorBoard scalars in ``<folder>/tensorboard/``: every value of the epoch's log
    row but ``epoch``, at step = epoch (1-based). Rank 0 only."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.logger: TensorBoardLogger | None = None

    def on_fit_start(self, state: FitState) -> None:
        if state.fabric.is_global_zero:
            self.logger = TensorBoardLogger(root_dir=str(self.folder), name="tensorboard", version="")

    def on_epoch_end(self, state: FitState) -> None:
        if self.logger is not None:
            self.logger.log_metrics({k: v for k, v in state.row.items() if k != "epoch"}, step=state.epoch)

    def on_fit_end(self, state: FitState) -> None:
        if self.logger is not None:
            self.logger.finalize("success")


class EarlyStopping(Callback):
    """Stop at the start of an epoch once ``patience`` epochs in a row have not improved
    the best validation score and at least ``min_epochs`` epochs have run."""

    def __init__(self, patience: int, min_epochs: int = 1):
        self.patience = patience
        self.min_epochs = min_epochs

    def on_epoch_start(self, state: FitState) -> None:
        if state.bad_epochs >= self.patience and state.epoch >= self.min_epochs:
            state.should_stop = True
