"""Quality of fused images (S0 B/C) on test cases, and the example slices that the
comparison figures draw.

Fused-image quality (EVALUATION.md, image quality): for every selected axial slice of
a test case the fused image F and its sources I_d (T1CE) and I_s (FLAIR), all scaled to
[0, 1] per slice, give PSNR (dB, data range 1) and SSIM (Gaussian window 11, sigma 1.5)
of F against each source on the whole slice, fusion mutual information MI(F, I_d) +
MI(F, I_s) (bits, 256 bins) and Q^{AB/F}; the case value is the mean over its slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fusionseg.data.preprocess import PreparedCase
from fusionseg.data.sampling import axial_slice, select_slices
from fusionseg.evaluation.metrics.fusion_quality import fusion_mutual_information, qabf
from fusionseg.evaluation.metrics.image_quality import psnr, ssim


def stack_slices(case: PreparedCase, modalities: Sequence[str], slices: Sequence[int]) -> torch.Tensor:
    """(len(slices), C, H, W) float32 axial ``slices`` (cropped grid) of ``modalities``."""
    image = case.select(list(modalities))
    return torch.from_numpy(np.stack([np.array(axial_slice(image, case.axial_axis, z)) for z in slices]))


@torch.no_grad()
def fusion_quality_case(
    strategy, case: PreparedCase, modalities: Sequence[str], mode: str, batch_size: int = 16
) -> dict[str, float]:
    """Mean fused-image quality over the ``mode`` slices of a case (see module docstring)."""
    slices = select_slices(case, mode)
    rows = []
    for start in range(0, len(slices), batch_size):
        parts = strategy.fuse(stack_slices(case, modalities, slices[start : start + batch_size]))
        for f, d, s in zip(parts["fused"][:, 0].numpy(), parts["detail"][:, 0].numpy(), parts["salient"][:, 0].numpy()):
            rows.append(
                {
                    "psnr_detail": psnr(f, d, data_range=1.0),
                    "ssim_detail": ssim(f, d, data_range=1.0),
                    "psnr_salient": psnr(f, s, data_range=1.0),
                    "ssim_salient": ssim(f, s, data_range=1.0),
                    "mi": fusion_mutual_information(f, d, s),
                    "qabf": qabf(f, d, s),
                }
            )
    out = {k: float(np.mean([r[k] for r in rows if np.isfinite(r[k])])) for k in rows[0]}
    out["slices"] = len(rows)
    return out


@torch.no_grad()
def save_example(
    strategy,
    case: PreparedCase,
    modalities: Sequence[str],
    prediction: np.ndarray,
    scheme,
    path: Path,
    slices: Sequence[int] | None = None,
) -> None:
    """Save the axial slice with the most tumour (among ``slices``, cropped-grid
    indices, when given, e.g. the evaluated slab): every modality, ground truth,
    prediction (class indices) and, for fusion strategies, the fused image and its
    [0, 1] sources, as ``.npz`` (read by the comparison figures)."""
    label = np.asarray(case.label)
    other = tuple(a for a in range(3) if a != case.axial_axis)
    per_slice = (label > 0).sum(axis=other)
    if slices:
        allowed = np.asarray(sorted(slices))
        z = int(allowed[np.argmax(per_slice[allowed])])
    else:
        z = int(np.argmax(per_slice))
    pred = scheme.to_classes(case.crop(prediction))
    data = {
        "slice": z + case.bbox[case.axial_axis][0],
        "modalities": np.array(list(modalities)),
        "image": np.array(axial_slice(case.select(list(modalities)), case.axial_axis, z)),
        "label": axial_slice(label, case.axial_axis, z),
        "prediction": axial_slice(pred, case.axial_axis, z),
    }
    if "fusion_image" in getattr(strategy, "capabilities", frozenset()):
        parts = strategy.fuse(stack_slices(case, modalities, [z]))
        data.update(
            fused=parts["fused"][0, 0].numpy(),
            detail=parts["detail"][0, 0].numpy(),
            salient=parts["salient"][0, 0].numpy(),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
