"""One training loop for every strategy, on Lightning Fabric.

Fabric handles the device (CPU here, GPU or DDP where present), precision and
checkpoint I/O. The loop knows nothing of a strategy's insides: it calls
``strategy.training_loss(batch)`` to train and ``strategy(batch["image"])`` to validate
(:func:`validation_logits`). Batches are dicts; the loop itself reads only
``batch["image"]`` (its first dimension, to count samples) and, to validate,
``batch["label"]``; every other key (e.g. ``"available"``, a (B, M) bool modality
mask) reaches ``training_loss`` untouched.

A strategy may train in several stages (:class:`~fusionseg.training.stage.Stage`):
each stage is one call of :func:`fit` with its own folder, learning rate, epoch budget
and early-stopping score (validation Dice, or minus the validation loss for stages
without a segmentation output, e.g. fusion pre-training). The optimiser sees only the
parameters that require gradients (frozen networks stay fixed).

Each epoch reads: train (:func:`train_epoch`), validate (:func:`validate_epoch`), then
the callbacks (:mod:`fusionseg.training.callbacks`), which write ``train_log.csv``
(one row per epoch) and TensorBoard scalars, keep ``checkpoints/last.ckpt`` (everything
needed to resume: weights, optimiser, epoch, early-stopping state, history) and
``checkpoints/best.ckpt`` (weights and the metadata ``fusionseg predict`` needs) for the
best validation score, and stop early. Early stopping watches the mean Dice over the
label scheme's regions on the validation samples (voxels pooled over all validation
slices).

Under DDP (a launched ``Fabric(strategy="ddp", ...)`` passed as ``fabric=``) each rank
trains on Fabric's distributed shard of the training set and validates its own
non-overlapping shard of the validation set (cases ``rank, rank + W, ...``); the
validation counts are summed over ranks, so every rank computes the single-process
score and takes the same checkpoint and early-stopping decisions. ``train_loss`` and
the strategy's training logs are each rank's epoch means averaged over the ranks (an
all-reduce mean; every rank runs the same number of steps). Rank 0 writes the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader, Dataset, Subset

from fusionseg.config import TrainConfig
from fusionseg.constants import LabelScheme
from fusionseg.progress import make_progress
from fusionseg.training.callbacks import (
    Callback,
    Checkpoint,
    CSVLogger,
    EarlyStopping,
    FitState,
    TensorBoard,
    write_log,
)
from fusionseg.training.stage import Stage

#: The CSV writer fit() hands to CSVLogger, looked up when fit() runs: replacing
#: ``fusionseg.training.loop._write_log`` (tests/test_kill_resume.py does) replaces it.
_write_log = write_log


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    best_epoch: int
    best_score: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    best_checkpoint: Path | None = None
    stopped_early: bool = False
    seconds: float = 0.0  # training time summed over every invocation (resumes included)


@dataclass
class EpochTraining:
    """One epoch of training on this rank: ``loss`` (mean over the steps), ``means``
    (the strategy's logs, mean over the steps), ``samples`` seen and wall ``seconds``."""

    loss: float
    means: dict[str, float]
    samples: int
    seconds: float


def region_dice_counts(pred: torch.Tensor, target: torch.Tensor, scheme: LabelScheme) -> np.ndarray:
    """Per-region [intersection, |pred|, |target|] voxel counts, shape (R, 3).

    pred, target: int64 class-index maps of equal shape.
    """
    rows = []
    for region in scheme.region_names:
        idx = torch.tensor(scheme.region_class_indices(region), device=pred.device)
        p = torch.isin(pred, idx)
        t = torch.isin(target, idx)
        rows.append([int((p & t).sum()), int(p.sum()), int(t.sum())])
    return np.asarray(rows, dtype=np.int64)


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice per region from (R, 3) counts; both empty -> 1."""
    inter, p, t = counts[:, 0], counts[:, 1], counts[:, 2]
    denom = p + t
    return np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)


def epoch_lr(
    base_lr: float, epoch: int, epochs: int, schedule: str = "constant", step_epochs: int = 10, gamma: float = 0.5
) -> float:
    """Learning rate of 0-based ``epoch`` out of ``epochs``: ``constant`` -> ``base_lr``;
    ``poly`` -> ``base_lr * (1 - epoch / epochs) ** 0.9`` (nnU-Net's schedule, Isensee et
    al. 2021, applied per epoch); ``step`` -> ``base_lr * gamma ** (epoch // step_epochs)``
    (torch ``StepLR`` stepped per epoch; S2: x0.5 every 10 epochs). A function of the
    epoch alone, so resuming needs no state.

    Raises:
        ValueError: unknown schedule.
    """
    if schedule == "constant":
        return float(base_lr)
    if schedule == "poly":
        return float(base_lr) * (1.0 - epoch / max(epochs, 1)) ** 0.9
    if schedule == "step":
        return float(base_lr) * float(gamma) ** (epoch // int(step_epochs))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose 'constant', 'poly' or 'step'.")


def fit(
    strategy: torch.nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    scheme: LabelScheme,
    meta: dict | None = None,
    resume: bool = True,
    progress: bool = True,
    description: str = "train",
    stage: Stage | None = None,
    *,
    fabric: Fabric | None = None,
    callbacks: list[Callback] | None = None,
) -> FitResult:
    """Train ``strategy`` with Adam (learning rate per epoch from ``cfg.lr_schedule``,
    see :func:`epoch_lr`) and early stopping on the validation score.

    Args:
        strategy: module with ``training_loss(batch)`` and ``forward(image)``.
        train_set, val_set: datasets of dicts, at least ``{"image": (C, H, W) float32,
            "label": (H, W) int64}``.
        cfg: training schedule.
        out_dir: folder for ``train_log.csv``, ``tensorboard/``, ``checkpoints/``.
        scheme: label scheme (regions for the validation Dice).
        meta: JSON-able metadata stored in ``best.ckpt`` (model name, modalities, ...).
        resume: continue from ``checkpoints/last.ckpt`` when present.
        progress: show a progress bar.
        stage: the strategy's stage to train (default: its first); its ``lr``,
            ``epochs`` and ``score`` override ``cfg``.
        fabric: an already launched Fabric (e.g. DDP); None builds one from ``cfg``
            (accelerator, devices, precision).
        callbacks: extra callbacks, called after the default ones.
    Returns:
        :class:`FitResult`; the strategy holds the best weights on return.
    """
    run = _start(strategy, train_set, val_set, cfg, Path(out_dir), meta, resume, stage, fabric, callbacks)
    state, epochs, steps = run.state, run.epochs, run.steps
    with make_progress(disable=not progress or not run.state.fabric.is_global_zero) as bar:
        task = bar.add_task(description, total=epochs * steps, completed=state.epoch * steps, info="")
        _notify(run.callbacks, "on_fit_start", state)
        while state.epoch < epochs:
            _notify(run.callbacks, "on_epoch_start", state)
            if state.should_stop:
                break
            epoch = state.epoch  # 0-based index of the epoch about to run
            lr = epoch_lr(run.lr, epoch, epochs, cfg.lr_schedule, cfg.lr_step_epochs, cfg.lr_gamma)
            _start_epoch(state, train_set, epoch, lr)
            show = partial(_show_step, bar, task, epoch)
            trained = train_epoch(state.fabric, state.strategy, state.optimizer, run.train_loader, steps, epoch, show)
            row, score = validate_epoch(state.fabric, state, trained, run.val_loader, scheme, run.stage)
            state.end_epoch(row, score, run.generator.get_state(), run.seconds_before + time.perf_counter() - run.start)
            _notify(run.callbacks, "on_epoch_end", state)
            bar.update(task, info=f"epoch {epoch + 1} val Dice {score:.3f} (best {state.best_score:.3f})")
    return _finish(state, run.checkpoint, run.callbacks)


@dataclass
class _Run:
    """What :func:`fit` sets up before its first epoch."""

    state: FitState
    generator: torch.Generator
    train_loader: DataLoader
    val_loader: DataLoader
    checkpoint: Checkpoint
    callbacks: list[Callback]
    stage: Stage
    epochs: int
    lr: float
    steps: int
    start: float
    seconds_before: float


def _start(
    strategy: torch.nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    cfg: TrainConfig,
    out_dir: Path,
    meta: dict | None,
    resume: bool,
    stage: Stage | None,
    fabric: Fabric | None,
    callbacks: list[Callback] | None,
) -> _Run:
    """Threads, stage, Fabric, seed, loaders, resume from ``last.ckpt``, the callbacks."""
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stage = stage or strategy.stages()[0]
    strategy.set_stage(stage.name)
    epochs, lr = stage.epochs or cfg.epochs, stage.lr or cfg.lr
    if fabric is None:
        fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision)
    fabric.seed_everything(cfg.seed, verbose=False)
    state, generator, train_loader, val_loader = _set_up(fabric, strategy, train_set, val_set, cfg, lr, meta)
    checkpoint = Checkpoint(out_dir / "checkpoints")
    if resume and checkpoint.last.exists():
        _resume(state, checkpoint.last, generator)
    callbacks = [
        TensorBoard(out_dir),
        checkpoint,
        CSVLogger(out_dir / "train_log.csv", write=_write_log),
        EarlyStopping(cfg.patience, cfg.min_epochs),
        *(callbacks or []),
    ]
    steps = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))
    # training time survives resumes
    return _Run(
        state,
        generator,
        train_loader,
        val_loader,
        checkpoint,
        callbacks,
        stage,
        epochs,
        lr,
        steps,
        time.perf_counter(),
        state.seconds,
    )


def _set_up(
    fabric: Fabric,
    strategy: torch.nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    cfg: TrainConfig,
    lr: float,
    meta: dict | None,
) -> tuple[FitState, torch.Generator, DataLoader, DataLoader]:
    """Adam over the trainable parameters, both on Fabric, the loop state and the two loaders.

    The training loader shuffles with its own generator seeded with ``cfg.seed`` (its
    state goes into ``last.ckpt``); under DDP Fabric gives it a DistributedSampler. The
    validation loader (batches of ``2 * cfg.batch_size``, in order) holds this rank's
    cases ``rank, rank + W, ...``: unlike a DistributedSampler it never repeats a case
    to even out the shards, so the counts summed over ranks are the single-process ones.
    """
    optimizer = torch.optim.Adam(strategy.trainable_parameters(), lr=lr, weight_decay=cfg.weight_decay)
    strategy, optimizer = fabric.setup(strategy, optimizer)
    # under DDP, training_loss must go through DDP's forward (gradient all-reduce);
    # on one device this changes nothing
    strategy.mark_forward_method("training_loss")
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = fabric.setup_dataloaders(
        DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            shuffle=True,
            num_workers=cfg.num_workers,
            generator=generator,
            drop_last=len(train_set) > cfg.batch_size,
        )
    )
    if fabric.world_size > 1:
        val_set = Subset(val_set, list(range(fabric.global_rank, len(val_set), fabric.world_size)))
    val_loader = fabric.setup_dataloaders(
        DataLoader(val_set, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers),
        use_distributed_sampler=False,
    )
    return FitState(fabric, strategy, optimizer, meta or {}), generator, train_loader, val_loader


def _resume(state: FitState, path: Path, generator: torch.Generator) -> None:
    """Load weights, optimiser and loop state from ``last.ckpt``; restore the generator."""
    rest = state.fabric.load(path, {"strategy": state.strategy, "optimizer": state.optimizer})
    state.restore(rest)
    if state.rng is not None:
        generator.set_state(state.rng)
    state.fabric.print(f"resumed from {path} at epoch {state.epoch}")


def _notify(callbacks: list[Callback], hook: str, state: FitState) -> None:
    for callback in callbacks:
        getattr(callback, hook)(state)


def _show_step(bar, task, epoch: int, mean_loss: float) -> None:
    bar.update(task, advance=1, info=f"epoch {epoch + 1} loss {mean_loss:.4f}")


def _start_epoch(state: FitState, train_set: Dataset, epoch: int, lr: float) -> None:
    """Set the learning rate of 0-based ``epoch``; tell the training set (if it
    resamples) and the strategy (``on_epoch_start``, e.g. modality-dropout draws)."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)
    state.strategy.on_epoch_start(epoch)


def _finish(state: FitState, checkpoint: Checkpoint, callbacks: list[Callback]) -> FitResult:
    """Load the best weights into the strategy, call ``on_fit_end``, sum up."""
    best = checkpoint.best if checkpoint.best.exists() else None
    if best is not None:
        state.fabric.load(best, {"strategy": state.strategy})
    _notify(callbacks, "on_fit_end", state)
    return FitResult(
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        epochs_run=state.epoch,
        history=state.history,
        best_checkpoint=best,
        stopped_early=state.should_stop,
        seconds=state.seconds,
    )


def train_epoch(
    fabric: Fabric,
    strategy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    steps: int,
    epoch: int,
    on_step: Callable[[float], None] = lambda mean_loss: None,
) -> EpochTraining:
    """At most ``steps`` optimiser steps over ``loader``; ``on_step(mean loss so far)``
    after each. ``epoch`` (0-based) is for the error message only.

    Raises:
        FloatingPointError: a non-finite training loss.
    """
    strategy.train()
    t0 = time.perf_counter()
    losses, seen = [], 0
    logs_sum: dict[str, float] = {}
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss, logs = strategy.training_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss at epoch {epoch}, step {step}: lower train.lr "
                "or check the input normalisation"
            )
        fabric.backward(loss)
        optimizer.step()
        losses.append(float(loss.detach()))
        for k, v in logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + v
        seen += batch["image"].shape[0]
        on_step(float(np.mean(losses)))
    means = {k: v / max(len(losses), 1) for k, v in logs_sum.items()}
    return EpochTraining(float(np.mean(losses)), means, seen, time.perf_counter() - t0)


def validate_epoch(
    fabric: Fabric, state: FitState, trained: EpochTraining, val_loader: DataLoader, scheme: LabelScheme, stage: Stage
) -> tuple[dict, float]:
    """The epoch's log row (a ``train_log.csv`` row) and validation score (higher is better).

    Order: the training means (averaged over ranks under DDP, so that ``train_loss`` and
    the strategy's logs in the row are the mean over all ranks' steps, and every rank's
    ``strategy.on_epoch_end`` sees the same values), then the strategy's epoch hook, then
    validation of the current weights: Dice over ``scheme``'s regions (``stage.score ==
    "dice"``) or minus the validation loss (``"loss"``).
    """
    train_loss, means = _mean_over_ranks(fabric, trained.loss, trained.means)
    epoch = state.epoch + 1
    extra = state.strategy.on_epoch_end(epoch, means)
    network = _validation_network(fabric, state.strategy)
    with fabric.autocast():
        if stage.score == "dice":
            dice = validate(network, val_loader, scheme, fabric)
            score = float(np.mean(dice))
            val_logs = {f"val_dice_{r}": float(d) for r, d in zip(scheme.region_names, dice)}
        else:
            val_loss = validation_loss(network, val_loader, fabric)
            score = -val_loss
            val_logs = {"val_loss": val_loss}
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        **means,
        **extra,
        **val_logs,
        "val_score": score,
        "lr": state.optimizer.param_groups[0]["lr"],
        "train_seconds": round(trained.seconds, 3),
        "train_samples_per_s": round(trained.samples / max(trained.seconds, 1e-9), 3),
    }
    return row, score


def _mean_over_ranks(fabric: Fabric, loss: float, means: dict[str, float]) -> tuple[float, dict[str, float]]:
    """(loss, means) averaged over ranks (every rank runs the same number of steps); on
    one process, unchanged."""
    if fabric.world_size == 1:
        return loss, means
    values = fabric.all_reduce(torch.tensor([loss, *means.values()], dtype=torch.float64), reduce_op="mean").tolist()
    return values[0], dict(zip(means, values[1:]))


def _validation_network(fabric: Fabric, strategy: torch.nn.Module) -> torch.nn.Module:
    """The strategy itself, without Fabric's or DDP's wrapper (the caller enters
    ``fabric.autocast()``, which is what Fabric's wrapper adds on one device).

    DDP's forward broadcasts rank 0's buffers in its first call after training: a
    collective that ranks with unequal numbers of validation batches would not match.
    So validation bypasses it and broadcasts the buffers (e.g. batch-norm statistics)
    from rank 0 once here: every rank then validates exactly the weights rank 0 saves.
    """
    network = strategy.module
    if fabric.world_size > 1:
        for buffer in network.buffers():
            torch.distributed.broadcast(buffer, src=0)
    return network


def validation_logits(network: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The one place validation runs the network: (B, K, H, W) logits of ``batch``
    (today from ``batch["image"]``, (B, C, H, W), alone)."""
    return network(batch["image"])


def _sum_over_ranks(fabric: Fabric | None, values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over ranks (unchanged on one process or without a Fabric)."""
    if fabric is None or fabric.world_size == 1:
        return values
    return fabric.all_reduce(values, reduce_op="sum").cpu()


@torch.no_grad()
def validation_loss(network: torch.nn.Module, loader: DataLoader, fabric: Fabric | None = None) -> float:
    """Mean training loss of the current stage over the validation samples; with a
    multi-process ``fabric``, over every rank's samples (sum of loss * n and of n)."""
    network.eval()
    total, n = 0.0, 0
    for batch in loader:
        loss, _ = network.training_loss(batch)
        total += float(loss) * batch["image"].shape[0]
        n += batch["image"].shape[0]
    total, n = _sum_over_ranks(fabric, torch.tensor([total, n], dtype=torch.float64)).tolist()
    return total / max(n, 1)


@torch.no_grad()
def validate(
    network: torch.nn.Module, loader: DataLoader, scheme: LabelScheme, fabric: Fabric | None = None
) -> np.ndarray:
    """Region Dice (R,) over all validation samples, voxels pooled. With a multi-process
    ``fabric``, each rank passes its shard and the (R, 3) counts are summed over ranks
    before the Dice, so every rank returns the single-process value."""
    network.eval()
    counts = np.zeros((len(scheme.region_names), 3), dtype=np.int64)
    for batch in loader:
        pred = network.head.classes_from_logits(validation_logits(network, batch))
        counts += region_dice_counts(pred, batch["label"], scheme)
    counts = _sum_over_ranks(fabric, torch.from_numpy(counts)).numpy()
    return dice_from_counts(counts)
