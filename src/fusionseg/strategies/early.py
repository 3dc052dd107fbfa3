"""Early fusion (METHODS.md §1; S0 architecture A, S2 baseline): the modalities are
stacked as input channels of one segmentation network trained with one loss."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fusionseg.strategies.base import Strategy


class EarlyFusion(Strategy):
    """Early-fusion strategy.

    Args:
        model: segmentation network, (B, C, H, W) -> logits (B, K, H, W).
        modalities: names of the C input channels.
        seg_loss: (logits, target (B, H, W) int64) -> scalar; None when built only for
            prediction.
    """

    def __init__(self, model: nn.Module, modalities: Sequence[str], seg_loss: nn.Module | None = None):
        super().__init__(modalities, {"seg": seg_loss} if seg_loss is not None else None)
        self.model = model

    @property
    def required_divisor(self) -> int:
        return int(getattr(self.model, "required_divisor", 1))

    def forward(self, image: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, *spatial) float32 modality stack -> (B, K, *spatial) class logits;
        absent modalities (``available`` False) as :meth:`Strategy.network_input`."""
        return self.model(self.network_input(image, available))

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Segmentation loss on one batch (``image`` (B, C, *spatial), ``label`` (B,
        *spatial)), with the modalities that modality dropout keeps."""
        loss = self.losses["seg"](self(batch["image"], self.training_available(batch)), batch["label"])
        return loss, {"loss_seg": float(loss.detach())}
