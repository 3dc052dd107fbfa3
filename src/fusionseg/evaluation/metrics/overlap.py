"""Voxel-overlap metrics (Dice, sensitivity, specificity) and the mask helpers every
metric family shares (input checks, spacing, bounding boxes).

All metrics take boolean masks of shape (X, Y) or (X, Y, Z) (any array that converts
to bool: label maps are "non-zero = inside"), are pure functions, and never return NaN:
each empty-mask case has an explicit, documented value.

Source: BraTS 2023 metrics code (rachitsaluja/BraTS-2023-Metrics), whose conventions
EVALUATION.md adopts: Dice of two empty masks is 1; sensitivity of two empty masks is 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fusionseg.evaluation.metrics import kernels

Spacing = Sequence[float]


# --------------------------------------------------------------------------- helpers
def as_mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a (prediction, ground truth) pair to boolean arrays.

    Raises:
        ValueError: shapes differ, or the arrays are not 2-D or 3-D.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}; "
            "resample the prediction onto the ground-truth grid."
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2-D (X, Y) or 3-D (X, Y, Z), got shape {pred.shape}.")
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def check_spacing(spacing: Spacing | None, ndim: int) -> tuple[float, ...]:
    """Voxel spacing in mm as a tuple of ``ndim`` positive floats (None -> all 1 mm).

    Raises:
        ValueError: wrong length or a non-positive value.
    """
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in np.atleast_1d(spacing))
    if len(spacing) == 1:
        spacing = spacing * ndim
    if len(spacing) != ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing must hold {ndim} positive voxel sizes in mm (one per array axis), "
            f"got {spacing}; read it from the NIfTI header (header.get_zooms())."
        )
    return spacing


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive bounding box ``(lo, hi)`` (index arrays) of a boolean mask; None if empty."""
    ndim = mask.ndim
    # Two passes over the volume: the projection along the axis slowest in memory
    # (cheap to reduce) gives the other axes' projections from a small array.
    first = ndim - 1 if mask.flags.f_contiguous and not mask.flags.c_contiguous else 0
    rest = [a for a in range(ndim) if a != first]
    reduced = np.any(mask, axis=first)
    projections = [None] * ndim
    for i, axis in enumerate(rest):
        projections[axis] = np.any(reduced, axis=tuple(j for j in range(ndim - 1) if j != i))
    projections[first] = np.any(mask, axis=tuple(rest))
    lo, hi = [], []
    for proj in projections:
        nz = np.flatnonzero(proj)
        if nz.size == 0:
            return None
        lo.append(nz[0])
        hi.append(nz[-1])
    return np.asarray(lo), np.asarray(hi)


def union_bounding_box(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive bounding box ``(lo, hi)`` of the voxels non-zero in ``a`` or ``b``
    (same shape; bool or integer); None if there are none.

    3-D arrays of one dtype are read in one compiled pass in memory order (C or F),
    without a temporary union mask; others go through :func:`bounding_box`.
    """
    if a.ndim == 3 and a.dtype == b.dtype and a.dtype.kind in "biu":
        if a.dtype.kind == "b":
            a, b = a.view(np.uint8), b.view(np.uint8)
        fortran = all(x.flags.f_contiguous and not x.flags.c_contiguous for x in (a, b))
        box = kernels.nonzero_box(a.T, b.T) if fortran else kernels.nonzero_box(a, b)
        if box[0] > box[3]:
            return None
        return (box[2::-1], box[:2:-1]) if fortran else (box[:3], box[3:])
    return bounding_box((a != 0) | (b != 0))


def box_slices(lo: np.ndarray, hi: np.ndarray, shape: Sequence[int], margin: int = 0) -> tuple[slice, ...]:
    """Slices of the box ``[lo - margin, hi + margin]`` clipped to ``shape``."""
    return tuple(slice(max(int(a) - margin, 0), min(int(b) + margin + 1, n)) for a, b, n in zip(lo, hi, shape))


# --------------------------------------------------------------------------- metrics
def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient 2|P n G| / (|P| + |G|).

    Args:
        pred, gt: masks, shape (X, Y[, Z]), bool or label (non-zero = inside).
    Returns:
        Dice in [0, 1]; both empty -> 1.0 (BraTS 2023 convention).
    Raises:
        ValueError: shape mismatch.
    """
    pred, gt = as_mask_pair(pred, gt)
    return dice_from_counts(int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred)), int(np.count_nonzero(gt)))


def dice_from_counts(intersection: int, n_pred: int, n_gt: int) -> float:
    """Dice from voxel counts; both empty -> 1.0."""
    total = n_pred + n_gt
    return 1.0 if total == 0 else 2.0 * intersection / total


def sensitivity_specificity_from_counts(intersection: int, n_pred: int, n_gt: int, n_total: int) -> tuple[float, float]:
    """Voxel sensitivity TP/(TP+FN) and specificity TN/(TN+FP) from counts.

    Conventions (those of the BraTS 2023 legacy code, which takes them from GaNDLF):
    both masks empty -> sensitivity 1; GT empty but prediction not -> sensitivity 0;
    no GT-negative voxels at all -> specificity 0.
    """
    tp = intersection
    fn = n_gt - tp
    fp = n_pred - tp
    tn = n_total - (n_pred + n_gt - tp)
    if n_pred == 0 and n_gt == 0:
        sens = 1.0
    else:
        sens = tp / (tp + fn) if tp + fn > 0 else 0.0
    spec = tn / (tn + fp) if tn + fp > 0 else 0.0
    return float(sens), float(spec)


def sensitivity_specificity(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Voxel-wise sensitivity and specificity over the whole array.

    Args:
        pred, gt: masks, shape (X, Y[, Z]).
    Returns:
        (sensitivity, specificity), each in [0, 1]; empty-mask conventions as in
        :func:`sensitivity_specificity_from_counts`.
    Raises:
        ValueError: shape mismatch.
    """
    pred, gt = as_mask_pair(pred, gt)
    return sensitivity_specificity_from_counts(
        int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred)), int(np.count_nonzero(gt)), int(pred.size)
    )
