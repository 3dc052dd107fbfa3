"""One training loop for every strategy, on Lightning Fabric.

Fabric handles the device (CPU here, GPU or DDP where present), precision and
checkpoint I/O. The loop knows nothing of a strategy's insides: it calls
``strategy.training_loss(batch)`` to train and ``strategy(image)`` to validate.

A strategy may train in several stages (:class:`~fusionseg.training.stage.Stage`):
each stage is one call of :func:`fit` with its own folder, learning rate, epoch budget
and early-stopping score (validation Dice, or minus the validation loss for stages
without a segmentation output, e.g. fusion pre-training). The optimiser sees only the
parameters that require gradients (frozen networks stay fixed).

Per epoch it writes ``train_log.csv`` (one row per epoch) and TensorBoard scalars;
it keeps ``checkpoints/last.ckpt`` (everything needed to resume: weights, optimiser,
epoch, early-stopping state, history) and ``checkpoints/best.ckpt`` (weights and the
metadata ``fusionseg predict`` needs) for the best validation score. Early stopping
watches the mean Dice over the label scheme's regions on the validation samples
(voxels pooled over all validation slices).
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning_fabric import Fabric
from lightning_fabric.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from fusionseg.config import TrainConfig
from fusionseg.constants import LabelScheme
from fusionseg.progress import make_progress
from fusionseg.training.stage import Stage


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


def _atomic_save(fabric: Fabric, path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fabric.save(tmp, state)
    if fabric.is_global_zero:
        os.replace(tmp, path)
    fabric.barrier()


def _write_log(path: Path, history: list[dict]) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def epoch_lr(base_lr: float, epoch: int, epochs: int, schedule: str = "constant") -> float:
    """Learning rate of 0-based ``epoch`` out of ``epochs``: ``constant`` -> ``base_lr``;
    ``poly`` -> ``base_lr * (1 - epoch / epochs) ** 0.9`` (nnU-Net's schedule, Isensee et
    al. 2021, applied per epoch). A function of the epoch alone, so resuming needs no state.

    Raises:
        ValueError: unknown schedule.
    """
    if schedule == "constant":
        return float(base_lr)
    if schedule == "poly":
        return float(base_lr) * (1.0 - epoch / max(epochs, 1)) ** 0.9
    raise ValueError(f"unknown lr schedule {schedule!r}; choose 'constant' or 'poly'.")


def fit(strategy: torch.nn.Module, train_set: Dataset, val_set: Dataset, cfg: TrainConfig,
        out_dir: str | Path, scheme: LabelScheme, meta: dict | None = None,
        resume: bool = True, progress: bool = True, description: str = "train",
        stage: Stage | None = None) -> FitResult:
    """Train ``strategy`` with Adam (learning rate per epoch from ``cfg.lr_schedule``,
    see :func:`epoch_lr`) and early stopping on validation Dice.

    Args:
        strategy: module with ``training_loss(batch)`` and ``forward(image)``.
        train_set, val_set: datasets of ``{"image": (C, H, W), "label": (H, W)}``.
        cfg: training schedule.
        out_dir: folder for ``train_log.csv``, ``tensorboard/``, ``checkpoints/``.
        scheme: label scheme (regions for the validation Dice).
        meta: JSON-able metadata stored in ``best.ckpt`` (model name, modalities, ...).
        resume: continue from ``checkpoints/last.ckpt`` when present.
        progress: show a progress bar.
        stage: the strategy's stage to train (default: its first); its ``lr``,
            ``epochs`` and ``score`` override ``cfg``.
    Returns:
        :class:`FitResult`; the strategy holds the best weights on return.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stage = stage or strategy.stages()[0]
    strategy.set_stage(stage.name)
    epochs = stage.epochs or cfg.epochs
    lr = stage.lr or cfg.lr
    logger = TensorBoardLogger(root_dir=str(out_dir), name="tensorboard", version="")
    fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision,
                    loggers=[logger])
    fabric.seed_everything(cfg.seed, verbose=False)
    optimizer = torch.optim.Adam(strategy.trainable_parameters(), lr=lr, weight_decay=cfg.weight_decay)
    strategy, optimizer = fabric.setup(strategy, optimizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = fabric.setup_dataloaders(DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
        generator=generator, drop_last=len(train_set) > cfg.batch_size))
    val_loader = fabric.setup_dataloaders(DataLoader(
        val_set, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers))

    state = {"strategy": strategy, "optimizer": optimizer, "epoch": 0, "best_score": float("-inf"),
             "best_epoch": -1, "bad_epochs": 0, "history": [], "rng": None,
             "seconds": 0.0}
    last = ckpt_dir / "last.ckpt"
    best = ckpt_dir / "best.ckpt"
    if resume and last.exists():
        rest = fabric.load(last, {"strategy": strategy, "optimizer": optimizer})
        state.update({k: v for k, v in rest.items() if k not in ("strategy", "optimizer")})
        generator.set_state(state["rng"]) if state["rng"] is not None else None
        fabric.print(f"resumed from {last} at epoch {state['epoch']}")
    steps_per_epoch = len(train_loader) if cfg.max_steps_per_epoch is None \
        else min(len(train_loader), cfg.max_steps_per_epoch)
    start, seconds_before = time.perf_counter(), state["seconds"]  # training time survives resumes
    stopped = False
    with make_progress(disable=not progress or not fabric.is_global_zero) as bar:
        task = bar.add_task(description, total=epochs * steps_per_epoch,
                            completed=state["epoch"] * steps_per_epoch, info="")
        while state["epoch"] < epochs:
            if state["bad_epochs"] >= cfg.patience and state["epoch"] >= cfg.min_epochs:
                stopped = True
                break
            epoch = state["epoch"]
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr(lr, epoch, epochs, cfg.lr_schedule)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            strategy.train()
            t0 = time.perf_counter()
            losses, seen = [], 0
            logs_sum: dict[str, float] = {}
            for step, batch in enumerate(train_loader):
                if step >= steps_per_epoch:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss, logs = strategy.training_loss(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite training loss at epoch {epoch}, step {step}: lower train.lr "
                        "or check the input normalisation")
                fabric.backward(loss)
                optimizer.step()
                losses.append(float(loss.detach()))
                for k, v in logs.items():
                    logs_sum[k] = logs_sum.get(k, 0.0) + v
                seen += batch["image"].shape[0]
                bar.update(task, advance=1, info=f"epoch {epoch + 1} loss {np.mean(losses):.4f}")
            train_seconds = time.perf_counter() - t0
            means = {k: v / max(len(losses), 1) for k, v in logs_sum.items()}
            extra = strategy.on_epoch_end(epoch + 1, means)
            if stage.score == "dice":
                val_dice = validate(strategy, val_loader, scheme)
                score = float(np.mean(val_dice))
                val_logs = {f"val_dice_{r}": float(d) for r, d in zip(scheme.region_names, val_dice)}
            else:
                val_loss = validation_loss(strategy, val_loader)
                score = -val_loss
                val_logs = {"val_loss": val_loss}
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **means, **extra,
                   **val_logs, "val_score": score, "lr": optimizer.param_groups[0]["lr"],
                   "train_seconds": round(train_seconds, 3),
                   "train_samples_per_s": round(seen / max(train_seconds, 1e-9), 3)}
            fabric.log_dict({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            state["history"].append(row)
            state["epoch"] = epoch + 1
            if score > state["best_score"]:
                state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
                _atomic_save(fabric, best, {"strategy": strategy, "meta": meta or {},
                                            "epoch": epoch + 1, "val_score": score})
            else:
                state["bad_epochs"] += 1
            state["rng"] = generator.get_state()
            state["seconds"] = seconds_before + time.perf_counter() - start
            _atomic_save(fabric, last, state)
            if fabric.is_global_zero:
                _write_log(out_dir / "train_log.csv", state["history"])
            bar.update(task, info=f"epoch {epoch + 1} val Dice {score:.3f} (best {state['best_score']:.3f})")
    logger.finalize("success")
    if best.exists():
        fabric.load(best, {"strategy": strategy})
    return FitResult(best_epoch=state["best_epoch"], best_score=state["best_score"],
                     epochs_run=state["epoch"], history=state["history"],
                     best_checkpoint=best if best.exists() else None, stopped_early=stopped,
                     seconds=state["seconds"])


@torch.no_grad()
def validation_loss(strategy: torch.nn.Module, loader: DataLoader) -> float:
    """Mean training loss of the current stage over the validation samples."""
    strategy.eval()
    total, n = 0.0, 0
    for batch in loader:
        loss, _ = strategy.training_loss(batch)
        total += float(loss) * batch["image"].shape[0]
        n += batch["image"].shape[0]
    return total / max(n, 1)


@torch.no_grad()
def validate(strategy: torch.nn.Module, loader: DataLoader, scheme: LabelScheme) -> np.ndarray:
    """Region Dice (R,) over all validation samples, voxels pooled."""
    strategy.eval()
    counts = np.zeros((len(scheme.region_names), 3), dtype=np.int64)
    for batch in loader:
        pred = strategy(batch["image"]).argmax(dim=1)
        counts += region_dice_counts(pred, batch["label"], scheme)
    return dice_from_counts(counts)
