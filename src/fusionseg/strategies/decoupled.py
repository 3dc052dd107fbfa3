"""Decoupled image-level fusion (S0 architecture B; METHODS.md §3).

Stage ``fusion``: train the fusion network (LRRNet) on (T1CE, FLAIR) slices with the
fusion loss L_fusion only (Adam, lr ``fusion.lr`` = 1e-4; early stopping on the
validation fusion loss). Stage ``segmentation``: freeze it and train the U-Net on
[T1CE, FLAIR, z-scored F] with L_seg (lr ``train.lr`` = 1e-3; early stopping on
validation Dice).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fusionseg.models.fusion_seg import FusionSegNet
from fusionseg.strategies.base import Stage, Strategy


class DecoupledFusion(Strategy):
    """S0 B: fusion pre-trained and frozen, then segmentation.

    Args:
        net: the fusion + segmentation networks.
        modalities: input channel names.
        fusion_loss: (fused, detail, salient) -> (loss, terms); None for prediction.
        seg_loss: (logits, target) -> loss; None for prediction.
        fusion_lr, fusion_epochs: the fusion stage's learning rate and epoch budget.
    """

    capabilities = frozenset({"fusion_image"})

    def __init__(
        self,
        net: FusionSegNet,
        modalities: Sequence[str],
        fusion_loss: nn.Module | None = None,
        seg_loss: nn.Module | None = None,
        fusion_lr: float = 1e-4,
        fusion_epochs: int | None = None,
    ):
        self.fusion_lr, self.fusion_epochs = fusion_lr, fusion_epochs
        losses = {k: v for k, v in {"fusion": fusion_loss, "seg": seg_loss}.items() if v is not None}
        super().__init__(modalities, losses)
        self.net = net
        self.set_stage(self.stage)

    def stages(self) -> list[Stage]:
        return [
            Stage("fusion", lr=self.fusion_lr, epochs=self.fusion_epochs, score="loss"),
            Stage("segmentation", score="dice"),
        ]

    def set_stage(self, name: str) -> None:
        super().set_stage(name)
        fusion_stage = name == "fusion"
        self.net.fusion_net.requires_grad_(fusion_stage)
        self.net.seg_net.requires_grad_(not fusion_stage)

    @property
    def required_divisor(self) -> int:
        return self.net.required_divisor

    def forward(self, image: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.network_input(image, available))

    def fuse(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.fuse(image)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        image = self.network_input(batch["image"], self.training_available(batch))
        if self.stage == "fusion":
            parts = self.net.fuse(image)
            loss, terms = self.losses["fusion"](parts["fused"], parts["detail"], parts["salient"])
            return loss, {
                "loss_fusion": float(loss.detach()),
                **{f"fusion_{k}": float(v.detach()) for k, v in terms.items()},
            }
        with torch.no_grad():
            parts = self.net.fuse(image)
        logits = self.net.segment(image, parts["fused"], parts["mask"])
        loss = self.losses["seg"](logits, batch["label"])
        return loss, {"loss_seg": float(loss.detach())}
