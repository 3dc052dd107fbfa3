"""Image-level fusion followed by segmentation (S0 architectures B and C).

A fusion network (LRRNet) turns the detail source I_d (T1CE) and the salient source
I_s (FLAIR) into one fused image F; the segmentation network (S0's 2-stage U-Net)
sees ``[seg inputs..., z-scored F]`` (S0: [T1CE, FLAIR, F]). How the two networks are
trained (decoupled or jointly) is the strategy's business, not this module's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def brain_mask(*images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels where any source is non-zero (preprocessed MRI has
    background exactly 0)."""
    mask = images[0] != 0
    for img in images[1:]:
        mask = mask | (img != 0)
    return mask


def unit_range(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Min-max scale each (B, 1, H, W) slice to [0, 1] over ``mask``; 0 outside."""
    big = torch.finfo(x.dtype).max
    lo = torch.where(mask, x, torch.full_like(x, big)).amin(dim=(1, 2, 3), keepdim=True)
    hi = torch.where(mask, x, torch.full_like(x, -big)).amax(dim=(1, 2, 3), keepdim=True)
    has = mask.flatten(1).any(dim=1).view(-1, 1, 1, 1)
    lo = torch.where(has, lo, torch.zeros_like(lo))
    hi = torch.where(has, hi, torch.ones_like(hi))
    return ((x - lo) / (hi - lo).clamp_min(eps)).clamp(0, 1) * mask


def masked_zscore(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Z-score each (B, 1, H, W) slice over ``mask`` (as the MRI channels are); 0 outside."""
    m = mask.to(x.dtype)
    n = m.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
    mean = (x * m).sum(dim=(1, 2, 3), keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(dim=(1, 2, 3), keepdim=True) / n
    return (x - mean) / (var.sqrt() + eps) * m


class FusionSegNet(nn.Module):
    """Fusion network + segmentation network on [seg inputs, F].

    Args:
        fusion_net: (B, 1, H, W), (B, 1, H, W) -> fused (B, 1, H, W) in [0, 1].
        seg_net: (B, len(seg_channels) + 1, H, W) -> logits (B, K, H, W).
        modalities: names of the input channels of ``image``.
        detail, salient: modality names of I_d and I_s.
        seg_inputs: modalities passed to ``seg_net`` before F.
    Raises:
        ValueError: a named modality is not among ``modalities``.
    """

    def __init__(
        self,
        fusion_net: nn.Module,
        seg_net: nn.Module,
        modalities: Sequence[str],
        detail: str,
        salient: str,
        seg_inputs: Sequence[str],
    ):
        super().__init__()
        names = list(modalities)
        for m in (detail, salient, *seg_inputs):
            if m not in names:
                raise ValueError(f"fusion needs modality {m!r} in data.modalities (have {names})")
        self.fusion_net = fusion_net
        self.seg_net = seg_net
        self.detail_index = names.index(detail)
        self.salient_index = names.index(salient)
        self.seg_indices = [names.index(m) for m in seg_inputs]

    @property
    def required_divisor(self) -> int:
        return int(getattr(self.seg_net, "required_divisor", 1))

    def sources(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(I_d, I_s, brain mask), sources in [0, 1] per slice, each (B, 1, H, W)."""
        d = image[:, self.detail_index : self.detail_index + 1]
        s = image[:, self.salient_index : self.salient_index + 1]
        mask = brain_mask(d, s)
        return unit_range(d, mask), unit_range(s, mask), mask

    def fuse(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fused image and its sources: ``fused``, ``detail``, ``salient`` (B, 1, H, W)
        in [0, 1] and ``mask``."""
        detail, salient, mask = self.sources(image)
        fused = self.fusion_net(detail, salient)
        return {"fused": fused, "detail": detail, "salient": salient, "mask": mask}

    def segment(self, image: torch.Tensor, fused: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits of the segmentation net on [seg inputs, z-scored F]."""
        x = torch.cat([image[:, self.seg_indices], masked_zscore(fused, mask)], dim=1)
        return self.seg_net(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) modality stack -> (B, K, H, W) logits."""
        parts = self.fuse(image)
        return self.segment(image, parts["fused"], parts["mask"])
