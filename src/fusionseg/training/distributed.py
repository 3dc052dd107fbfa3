"""One fold's training on several processes: DDP through Lightning Fabric.

``train.distributed: ddp`` with ``train.devices: N`` (``fusionseg train ... --devices N
--strategy ddp``) trains each stage of a fold job on N processes (GPUs, or CPU
processes with the gloo backend) and returns to the calling process, which then
predicts and evaluates as after a single-process fit. Inside :func:`~fusionseg.
training.loop.fit` the validation counts are summed over ranks, every rank takes the
same checkpoint and early-stopping decisions, and rank 0 writes (tests/test_ddp.py).

The processes are started with ``spawn`` (Fabric's ``ddp_spawn``): the strategy and
both datasets are pickled into every process, so each holds its own copy of the
prepared training and validation cases in memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning_fabric import Fabric
from torch.utils.data import Dataset

from fusionseg.config import TrainConfig
from fusionseg.constants import LabelScheme
from fusionseg.training.loop import FitResult, fit


class _FitArgs:
    """fit's arguments but the strategy, in a plain object: Fabric's launcher walks
    dataclasses and collections in the arguments (to un-share modules' memory) and
    refuses frozen ones (Stage, LabelScheme)."""

    def __init__(
        self, train_set: Dataset, val_set: Dataset, cfg: TrainConfig, out_dir: Path, scheme: LabelScheme, kwargs: dict
    ):
        self.train_set, self.val_set, self.cfg, self.out_dir = train_set, val_set, cfg, out_dir
        self.scheme, self.kwargs = scheme, kwargs


def _fit_on_rank(fabric: Fabric, strategy: torch.nn.Module, a: _FitArgs) -> FitResult:
    return fit(strategy, a.train_set, a.val_set, a.cfg, a.out_dir, a.scheme, fabric=fabric, **a.kwargs)


def fit_distributed(
    strategy: torch.nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    scheme: LabelScheme,
    **kwargs,
) -> FitResult:
    """:func:`~fusionseg.training.loop.fit` on ``cfg.devices`` DDP processes.

    Args: as :func:`~fusionseg.training.loop.fit` (``kwargs``: its keyword arguments
        but ``fabric``).
    Returns:
        rank 0's :class:`FitResult`; ``strategy`` (in this process) holds the best
        weights on return, read from the best checkpoint.
    """
    fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy="ddp_spawn", precision=cfg.precision)
    result = fabric.launch(_fit_on_rank, strategy, _FitArgs(train_set, val_set, cfg, Path(out_dir), scheme, kwargs))
    stage = kwargs.get("stage")
    strategy.set_stage(stage.name if stage is not None else strategy.stages()[0].name)
    if result.best_checkpoint is not None:
        state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
        strategy.load_state_dict(state["strategy"])
    return result
