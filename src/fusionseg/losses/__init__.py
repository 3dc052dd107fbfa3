"""Losses: segmentation (Dice+CE, Dice+Focal, Focal; region Dice+BCE), built by name through a registry."""

from __future__ import annotations

from .segmentation import (
    DiceCESegLoss,
    DiceFocalSegLoss,
    FocalSegLoss,
    SegLoss,
    build_seg_loss,
    check_seg_loss_options,
    list_seg_losses,
    register_seg_loss,
)
from .regions import RegionDiceBCELoss

__all__ = [
    "DiceCESegLoss",
    "DiceFocalSegLoss",
    "FocalSegLoss",
    "RegionDiceBCELoss",
    "SegLoss",
    "build_seg_loss",
    "check_seg_loss_options",
    "list_seg_losses",
    "register_seg_loss",
]
