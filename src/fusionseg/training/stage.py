"""A training stage: the unit :func:`fusionseg.training.loop.fit` trains.

Defined here, not with the strategies, so that the training package depends on no
strategy (strategies import it from here; ``fusionseg.strategies.Stage`` still works).
This module imports nothing heavy: importing a strategy does not load Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Stage:
    """One training stage of a strategy.

    Attributes:
        name: stage name; its checkpoints go to ``fold_K/<name>/`` when a strategy has
            more than one stage.
        lr: learning rate (None = ``train.lr``).
        epochs: epoch budget (None = ``train.epochs``).
        score: what early stopping watches: ``"dice"`` (validation Dice over the
            label scheme's regions) or ``"loss"`` (minus the validation loss).
        data: which training samples of the fold the stage draws from: ``"train"``
            (the fold's training samples) or the name of another set the sampler
            built (``"pretext"``: the training slices plus unlabelled cases, for a
            self-supervised stage); validation samples are always the fold's.
    """

    name: str = "train"
    lr: float | None = None
    epochs: int | None = None
    score: Literal["dice", "loss"] = "dice"
    data: str = "train"
