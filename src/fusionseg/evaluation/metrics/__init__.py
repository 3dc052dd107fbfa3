"""Segmentation and image-quality metrics, one family per module, each metric one pure
function over numpy arrays (2-D or 3-D, anisotropic spacing in mm).

- :mod:`.overlap`: Dice, voxel sensitivity / specificity.
- :mod:`.surface`: HD95 (BraTS / DeepMind surface-area weighted), symmetric ASD (MONAI).
- :mod:`.lesionwise`: BraTS 2023 lesion-wise Dice / HD95 and TP/FN/FP lesion counts.
- :mod:`.volumes`: autoPET false-positive / false-negative volumes (mL).
- :mod:`.image_quality`: MSE, PSNR, SSIM.

Conventions for empty masks are documented on each function (docs/EVALUATION.md).

The engine under them (compiled with numba): :mod:`.kernels` (surface elements, grid
look-ups, region masks, weighted percentiles), :mod:`.components` (connected
components by runs; GT components grouped into lesions by dilation), :mod:`.kdtree`
(far surface distances) and :mod:`.buffers` (work buffers reused from case to case).
"""

from __future__ import annotations

from fusionseg.evaluation.metrics.image_quality import mse, psnr, ssim
from fusionseg.evaluation.metrics.lesionwise import (
    CHALLENGES,
    LesionRecord,
    LesionWiseParams,
    LesionWiseResult,
    challenge_params,
    lesion_wise,
)
from fusionseg.evaluation.metrics.overlap import dice, sensitivity_specificity
from fusionseg.evaluation.metrics.surface import average_surface_distance, hd95, robust_hausdorff
from fusionseg.evaluation.metrics.volumes import false_negative_volume, false_positive_volume

__all__ = [
    "CHALLENGES",
    "LesionRecord",
    "LesionWiseParams",
    "LesionWiseResult",
    "average_surface_distance",
    "challenge_params",
    "dice",
    "false_negative_volume",
    "false_positive_volume",
    "hd95",
    "lesion_wise",
    "mse",
    "psnr",
    "robust_hausdorff",
    "sensitivity_specificity",
    "ssim",
]
