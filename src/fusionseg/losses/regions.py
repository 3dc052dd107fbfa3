"""Region-based segmentation loss: soft Dice + binary cross-entropy per nested region.

For ``output.kind: regions`` (:mod:`fusionseg.outputs`): the network gives one sigmoid
logit per region (BraTS: WT, TC, ET) and the class-index target is turned into one
0/1 mask per region inside the loss. ``L = lambda_dice * (1 - Dice) + lambda_bce * BCE``
with MONAI's ``DiceLoss(sigmoid=True)`` over the region channels (no background
channel: every channel is a region) and ``torch``'s ``binary_cross_entropy_with_logits``
(mean over voxels and regions).

Source: nnU-Net's region-based BraTS training (Isensee et al., "nnU-Net for brain
tumor segmentation", BrainLes 2020, section 2.3: "Dice + BCE", sigmoid per region;
nnU-Net v2 ``DC_and_BCE_loss``, weights 1 / 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from fusionseg.outputs import region_masks

from .segmentation import SegLoss, _non_negative, register_seg_loss

__all__ = ["RegionDiceBCELoss"]


@register_seg_loss("region_dice_bce")
class RegionDiceBCELoss(SegLoss):
    """Soft Dice + BCE per region (see module docstring).

    Args:
        num_classes: K, classes of the label scheme (the target's value range).
        members: the class indices of each region, largest region first (from
            :func:`fusionseg.outputs.output_head`; not a config option).
        lambda_dice: weight of the Dice term (>= 0), default 1.
        lambda_bce: weight of the BCE term (>= 0), default 1.
        batch_dice: pool intersections / unions over the batch before dividing.
        smooth: Dice smoothing added to numerator and denominator.

    Raises:
        ValueError: no regions, a region without classes or with a class outside
            ``[1, K)``, negative lambdas; in ``forward``, shape or value mismatches.
        TypeError: in ``forward``, non-float logits or non-integer target.
    """

    name = "region_dice_bce"

    def __init__(
        self,
        num_classes: int,
        members: Sequence[Sequence[int]] = (),
        lambda_dice: float = 1.0,
        lambda_bce: float = 1.0,
        batch_dice: bool = False,
        smooth: float = 1e-5,
    ):
        super().__init__(num_classes)
        members = tuple(tuple(int(c) for c in m) for m in members)
        if not members or any(not m or min(m) < 1 or max(m) >= self.num_classes for m in members):
            raise ValueError(
                f"{self.name}: members must list, per region, class indices in [1, {self.num_classes}); got "
                f"{members}. Use output.kind: regions, which fills them from the label scheme."
            )
        self.members = members
        self.num_outputs = len(members)
        self.lambda_dice = _non_negative(lambda_dice, "lambda_dice", self.name)
        self.lambda_bce = _non_negative(lambda_bce, "lambda_bce", self.name)
        self.dice = DiceLoss(
            sigmoid=True, include_background=True, batch=batch_dice, smooth_nr=smooth, smooth_dr=smooth
        )

    @classmethod
    def option_names(cls) -> list[str]:
        """Config options (``members`` comes from the label scheme, not the config)."""
        return [n for n in super().option_names() if n != "members"]

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"dice": lambda_dice * Dice loss, "bce": lambda_bce * BCE}`` (scalars)."""
        masks = region_masks(self._check(logits, target)[:, 0], self.members).to(logits.dtype)
        return {
            "dice": self.lambda_dice * self.dice(logits, masks),
            "bce": self.lambda_bce * F.binary_cross_entropy_with_logits(logits, masks),
        }
