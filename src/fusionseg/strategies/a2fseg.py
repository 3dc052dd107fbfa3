"""A2FSeg (S1; Wang & Hong, MICCAI 2023; METHODS.md §4): feature-level fusion with one
branch per modality, average fusion and adaptive (attention) fusion, built for
missing modalities.

The network is :class:`fusionseg.models.a2fseg.A2FSeg`. The loss (S1 Eq. 4-5) is the
configured segmentation loss (Dice + CE by default) on every head: the final
(adaptive-fusion) output, the average-fusion decoder's deep-supervision heads and
each present branch's deep-supervision heads, on targets down-sampled (nearest) to
each head's resolution, summed over the heads as the reference code
(Zirui0623/A2FSeg) does. Deep-supervision weights are 1 / 2^i from the finest head
(i = 0), the coarsest head weighted 0, normalised to sum to 1 (nnU-Net); the final
head takes the finest head's weight, as in that code. A branch's loss counts only the
samples that have its modality.

Missing modalities reach the network as ``missing.simulate`` says: ``drop_branch``
(default; absent branches are not run), ``zero_features`` (not run, their features
count as zeros) or, as for any model, ``zero`` / ``mean`` filled inputs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.strategies.base import Strategy
from fusionseg.strategies.missing import INPUT_SIMULATIONS

#: missing.simulate -> the model's ``missing`` argument.
_BRANCH_MODES = {"drop_branch": "drop", "zero_features": "zero_features"}


def deep_supervision_weights(n: int) -> list[float]:
    """1 / 2^i for the heads finest (i = 0) to coarsest, the coarsest 0 (when n > 1),
    normalised to sum 1 (nnU-Net's deep supervision)."""
    w = [1.0 / 2**i for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def _target_at(label: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``label`` (B, *spatial) int64 down-sampled (nearest) to ``shape``."""
    if tuple(label.shape[1:]) == tuple(shape):
        return label
    return F.interpolate(label[:, None].float(), size=tuple(shape), mode="nearest")[:, 0].long()


class A2FSegStrategy(Strategy):
    """A2FSeg's training and prediction (see module docstring).

    Args:
        model: an :class:`~fusionseg.models.a2fseg.A2FSeg` (``forward_heads``).
        modalities: names of its input channels (one branch each).
        seg_loss: (logits, target int64) -> scalar, applied to every head; None when
            built only for prediction.
    """

    capabilities = frozenset({"modality_branches", "attention_weights"})

    def __init__(self, model: nn.Module, modalities: Sequence[str], seg_loss: nn.Module | None = None):
        super().__init__(modalities, {"seg": seg_loss} if seg_loss is not None else None)
        self.model = model
        if not model.adaptive:  # average fusion only: no attention weights to report
            self.capabilities = frozenset({"modality_branches"})

    @property
    def required_divisor(self) -> int:
        return int(self.model.required_divisor)

    def _inputs(self, image: torch.Tensor, available: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """(network input, keyword arguments of the model) for ``simulate``."""
        if self.simulate in INPUT_SIMULATIONS:
            return self.network_input(image, available), {}
        return image, {"available": available, "missing": _BRANCH_MODES[self.simulate]}

    def forward(self, image: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, *spatial) float32 -> (B, K, *spatial) logits of the final head."""
        x, kwargs = self._inputs(image, available)
        return self.model(x, **kwargs)

    def heads(self, image: torch.Tensor, available: torch.Tensor | None = None):
        """Every head's logits and the attention weights (``A2FSegOutput``)."""
        x, kwargs = self._inputs(image, available)
        return self.model.forward_heads(x, **kwargs)

    def _supervised(self, logits: Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        weights = deep_supervision_weights(len(logits))
        return sum(w * self.losses["seg"](z, _target_at(label, z.shape[2:])) for w, z in zip(weights, logits) if w)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """S1 Eq. 4-5 on one batch (``image`` (B, M, *spatial), ``label`` (B,
        *spatial), ``available``), with the modalities that modality dropout keeps."""
        out, label = self.heads(batch["image"], self.training_available(batch)), batch["label"]
        final = self.losses["seg"](out.final, label)
        average = self._supervised(out.average, label)
        branch_losses = [
            self._supervised(logits, label[index.to(label.device)])
            for entry in out.branches
            if entry is not None
            for index, logits in [entry]
        ]
        branches = sum(branch_losses)
        w_final = deep_supervision_weights(len(out.average))[0] if self.model.adaptive else 0.0
        total = w_final * final + average + branches
        logs = {"loss_final": float(final.detach()), "loss_average": float(average.detach())}
        logs["loss_branches"] = float(branches.detach()) if branch_losses else 0.0
        return total, logs
