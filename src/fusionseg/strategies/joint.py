"""Joint optimisation of fusion and segmentation (S0 architecture C; METHODS.md §3).

L = lambda_f L_fusion + lambda_s L_seg (S0 Eq. 3); the segmentation gradients flow into
the fusion network; both networks use lr ``fusion.lr`` (1e-4). The weights are static,
dynamic (S0 Eq. 6, or MTAN's DWA) or, in the ablation ``seg_only``, L = L_seg (the
fusion loss is not even computed). The weights used in each epoch are logged
(``lambda_f``, ``lambda_s`` in train_log.csv) and the weighting's state is saved in
checkpoints, so a resumed run continues the same schedule.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from fusionseg.losses.weighting import LossWeighting
from fusionseg.models.fusion_seg import FusionSegNet
from fusionseg.strategies.base import Stage, Strategy


class JointFusion(Strategy):
    """S0 C: fusion and segmentation trained together.

    Args:
        net: the fusion + segmentation networks.
        modalities: input channel names.
        weighting: a :class:`LossWeighting` (static or dynamic), or None for the
            ``seg_only`` ablation (L = L_seg).
        fusion_loss, seg_loss: the two losses (None for prediction).
        lr: learning rate of both networks.
    """

    capabilities = frozenset({"fusion_image"})

    def __init__(
        self,
        net: FusionSegNet,
        modalities: Sequence[str],
        weighting: LossWeighting | None,
        fusion_loss: nn.Module | None = None,
        seg_loss: nn.Module | None = None,
        lr: float = 1e-4,
    ):
        self.lr = lr
        losses = {k: v for k, v in {"fusion": fusion_loss, "seg": seg_loss}.items() if v is not None}
        super().__init__(modalities, losses)
        self.net = net
        self.weighting = weighting

    def stages(self) -> list[Stage]:
        return [Stage("joint", lr=self.lr, score="dice")]

    @property
    def required_divisor(self) -> int:
        return self.net.required_divisor

    def forward(self, image: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.network_input(image, available))

    def fuse(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.fuse(image)

    def current_weights(self) -> dict[str, float]:
        """{"fusion": lambda_f, "seg": lambda_s} of the epoch being trained."""
        if self.weighting is None:
            return {"fusion": 0.0, "seg": 1.0}
        return self.weighting.weights(len(self.weighting.history()))

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        image = self.network_input(batch["image"], self.training_available(batch))
        parts = self.net.fuse(image)
        logits = self.net.segment(image, parts["fused"], parts["mask"])
        loss_seg = self.losses["seg"](logits, batch["label"])
        logs = {"loss_seg": float(loss_seg.detach())}
        if self.weighting is None:
            return loss_seg, logs
        w = self.current_weights()
        loss_fusion, terms = self.losses["fusion"](parts["fused"], parts["detail"], parts["salient"])
        logs["loss_fusion"] = float(loss_fusion.detach())
        logs.update({f"fusion_{k}": float(v.detach()) for k, v in terms.items()})
        return w["fusion"] * loss_fusion + w["seg"] * loss_seg, logs

    def on_epoch_end(self, epoch: int, train_means: dict[str, float]) -> dict[str, float]:
        """Record the epoch-mean (unweighted) losses for the dynamic weights; log the
        weights that were used in this epoch."""
        w = self.current_weights()
        if self.weighting is not None:
            self.weighting.record_epoch({"fusion": train_means["loss_fusion"], "seg": train_means["loss_seg"]})
        return {"lambda_f": w["fusion"], "lambda_s": w["seg"]}

    def get_extra_state(self) -> Any:
        return {"weighting": None if self.weighting is None else self.weighting.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        if self.weighting is not None and state and state.get("weighting") is not None:
            self.weighting.load_state_dict(state["weighting"])
