"""Build a strategy from an experiment config (one builder per strategy name)."""

from __future__ import annotations

from typing import Callable, Sequence

from fusionseg.config import ExperimentConfig
from fusionseg.constants import LabelScheme
from fusionseg.errors import ConfigError
from fusionseg.losses import build_seg_loss
from fusionseg.models import build_model
from fusionseg.strategies.base import Strategy
from fusionseg.strategies.early import EarlyFusion


def _early(cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme, with_losses: bool) -> Strategy:
    model = build_model(cfg.model.name, in_channels=len(modalities), num_classes=scheme.num_classes,
                        spatial_dims=cfg.spatial_dims, **cfg.model.kwargs)
    loss = build_seg_loss(cfg.loss.name, num_classes=scheme.num_classes, **cfg.loss.kwargs) \
        if with_losses else None
    return EarlyFusion(model, modalities, loss)


STRATEGIES: dict[str, Callable[..., Strategy]] = {"early": _early}


def build_strategy(cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme,
                   with_losses: bool = True) -> Strategy:
    """The strategy ``cfg.strategy`` with its networks (and losses unless
    ``with_losses`` is False, as for prediction).

    Raises:
        ConfigError: unknown strategy name.
    """
    try:
        builder = STRATEGIES[cfg.strategy]
    except KeyError:
        raise ConfigError(f"unknown strategy {cfg.strategy!r}; choose one of {sorted(STRATEGIES)}") from None
    return builder(cfg, modalities, scheme, with_losses)
