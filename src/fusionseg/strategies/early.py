"""Early fusion (METHODS.md §1; S0 architecture A, S2 baseline): the modalities are
stacked as input channels of one segmentation network trained with one loss."""

from __future__ import annotations

import torch
from torch import nn


class EarlyFusion(nn.Module):
    """Early-fusion strategy.

    Args:
        model: segmentation network, (B, C, H, W) -> logits (B, K, H, W).
        loss: segmentation loss, (logits, target (B, H, W) int64) -> scalar.
    """

    def __init__(self, model: nn.Module, loss: nn.Module):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32 modality stack -> (B, K, H, W) class logits."""
        return self.model(image)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on one batch (``image`` (B, C, H, W), ``label`` (B, H, W))."""
        logits = self(batch["image"])
        loss = self.loss(logits, batch["label"])
        return loss, {"loss_seg": float(loss.detach())}
