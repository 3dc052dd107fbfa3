"""PET/CT lesion volumes: false-positive and false-negative volume in mL (autoPET).

Source: autoPET challenge evaluation (Gatidis et al., 2022), as stated in EVALUATION.md:
connected components with 18-connectivity (6 in-plane + 12 edge neighbours; 8 in 2-D);
FPV = total volume of predicted components with no voxel overlapping the GT;
FNV = total volume of GT components with no voxel overlapping the prediction.
Volume in mL = voxel count x voxel volume (mm^3) / 1000.
"""

from __future__ import annotations

import cc3d
import numpy as np

from fusionseg.evaluation.metrics.overlap import Spacing, as_mask_pair, check_spacing


def _unmatched_volume_voxels(mask: np.ndarray, other: np.ndarray) -> int:
    """Voxels of the components of ``mask`` that do not touch ``other``."""
    if not mask.any():
        return 0
    connectivity = 18 if mask.ndim == 3 else 8
    labels, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    hit = np.zeros(n + 1, dtype=bool)
    hit[np.unique(labels[other & mask])] = True
    hit[0] = True
    return int(sizes[~hit].sum())


def false_positive_volume(pred: np.ndarray, gt: np.ndarray, spacing: Spacing | None = None) -> float:
    """FPV in mL: volume of predicted components that overlap no GT voxel.

    Args:
        pred, gt: masks, shape (X, Y[, Z]).
        spacing: voxel size in mm per axis.
    Returns:
        FPV in mL (0.0 when the prediction is empty).
    Raises:
        ValueError: shape mismatch or bad spacing.
    """
    pred, gt = as_mask_pair(pred, gt)
    spacing = check_spacing(spacing, pred.ndim)
    return _unmatched_volume_voxels(pred, gt) * float(np.prod(spacing)) / 1000.0


def false_negative_volume(pred: np.ndarray, gt: np.ndarray, spacing: Spacing | None = None) -> float:
    """FNV in mL: volume of GT components that overlap no predicted voxel.

    Args:
        pred, gt: masks, shape (X, Y[, Z]).
        spacing: voxel size in mm per axis.
    Returns:
        FNV in mL (0.0 when the GT is empty).
    Raises:
        ValueError: shape mismatch or bad spacing.
    """
    pred, gt = as_mask_pair(pred, gt)
    spacing = check_spacing(spacing, pred.ndim)
    return _unmatched_volume_voxels(gt, pred) * float(np.prod(spacing)) / 1000.0
