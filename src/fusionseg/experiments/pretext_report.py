"""Quality of the S2 pretext reconstruction (predicted FLAIR from T1 + T1ce) on test
cases, S2 Table 1, and its figure.

For every selected axial slice of a test case (``sampling.val_mode``: e.g. the tumour
slices) with at least one brain voxel (a non-zero input voxel), the pretext network's
prediction P of the target sequence T (both z-scored over the brain, as preprocessed)
gives, over the brain voxels: MSE (squared z-score units), PSNR (dB) with data range
R = max(T) - min(T) over the slice's brain voxels, and SSIM (Gaussian window 11,
sigma 1.5, data range R) averaged over the brain voxels' SSIM map. The case value is
the mean over its slices. S2 (BraTS 2020 Kaggle slices) does not state its intensity
scaling: its MSE 0.038 / PSNR 29.77 dB / SSIM 0.916 are not on our scale, only the
ranking of folds and the SSIM (scale-free given R) compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fusionseg.data.preprocess import PreparedCase
from fusionseg.data.sampling import pad_to, round_up, select_slices
from fusionseg.evaluation.metrics.image_quality import mse, psnr, ssim, ssim_map
from fusionseg.experiments.fusion_report import stack_slices

#: Columns of ``pretext_quality.csv`` (besides case and fold).
PRETEXT_COLUMNS = ("pretext_mse", "pretext_psnr", "pretext_ssim", "slices")


def pretext_slices(strategy, case: PreparedCase, modalities: Sequence[str], slices: Sequence[int]) -> dict:
    """``strategy.pretext_parts`` of the axial ``slices`` (cropped grid) of a case,
    zero-padded (centred) to the network's divisor and cut back to the slice size."""
    stack = stack_slices(case, modalities, slices).numpy()
    h, w = stack.shape[-2:]
    divisor = strategy.required_divisor
    padded, (top, left) = pad_to(stack, (round_up(h, divisor), round_up(w, divisor)))
    parts = strategy.pretext_parts(torch.from_numpy(padded))
    return {k: v[..., top : top + h, left : left + w] for k, v in parts.items()}


def slice_quality(predicted: np.ndarray, target: np.ndarray, brain: np.ndarray) -> dict[str, float] | None:
    """MSE, PSNR (dB) and SSIM of one (H, W) predicted slice over its ``brain`` voxels
    (module docstring); None when the slice has no brain voxel or a flat target."""
    if not brain.any():
        return None
    span = float(target[brain].max() - target[brain].min())
    if span <= 0:
        return None
    return {
        "pretext_mse": mse(predicted, target, brain),
        "pretext_psnr": psnr(predicted, target, data_range=span, mask=brain),
        "pretext_ssim": ssim(predicted, target, data_range=span, mask=brain),
    }


@torch.no_grad()
def pretext_quality_case(
    strategy, case: PreparedCase, modalities: Sequence[str], mode: str, batch_size: int = 16
) -> dict[str, float]:
    """Mean pretext quality over the ``mode`` slices of a case (module docstring);
    ``strategy`` has ``pretext_parts(image)`` (capability ``pretext_image``)."""
    slices = select_slices(case, mode)
    rows = []
    for start in range(0, len(slices), batch_size):
        parts = pretext_slices(strategy, case, modalities, slices[start : start + batch_size])
        arrays = [parts[k][:, 0].numpy() for k in ("predicted", "target", "mask")]
        for p, t, m in zip(*arrays):
            row = slice_quality(p, t, m)
            if row is not None:
                rows.append(row)
    if not rows:
        return {k: float("nan") for k in PRETEXT_COLUMNS[:-1]} | {"slices": 0}
    out = {k: float(np.mean([r[k] for r in rows if np.isfinite(r[k])])) for k in PRETEXT_COLUMNS[:-1]}
    out["slices"] = len(rows)
    return out


@torch.no_grad()
def save_pretext_figure(strategy, case: PreparedCase, modalities: Sequence[str], path: Path) -> Path:
    """PNG of the case's axial slice with the most tumour: the pretext inputs (e.g. T1,
    T1ce), the true and the predicted target (e.g. FLAIR) and the SSIM map (brain
    voxels), titled with the slice's MSE / PSNR / SSIM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = np.asarray(case.label) if case.label is not None else None
    other = tuple(a for a in range(3) if a != case.axial_axis)
    z = int(np.argmax((label > 0).sum(axis=other))) if label is not None else case.image.shape[1 + case.axial_axis] // 2
    parts = pretext_slices(strategy, case, modalities, [z])
    inputs = parts["inputs"][0].numpy()
    target, predicted = parts["target"][0, 0].numpy(), parts["predicted"][0, 0].numpy()
    brain = parts["mask"][0, 0].numpy()
    quality = slice_quality(predicted, target, brain)
    span = float(target[brain].max() - target[brain].min()) if quality else 1.0
    local = np.where(brain, ssim_map(predicted, target, span), np.nan)
    names = [*strategy.inputs, f"true {strategy.target}", f"predicted {strategy.target}", "SSIM map"]
    panels = [*inputs, target, predicted, local]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, name, img in zip(axes, names, panels):
        shown = ax.imshow(np.rot90(img), cmap="viridis" if name == "SSIM map" else "gray")
        if name == "SSIM map":
            shown.set_clim(0, 1)
            fig.colorbar(shown, ax=ax, fraction=0.046)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    stats = (
        f"MSE {quality['pretext_mse']:.3f}, PSNR {quality['pretext_psnr']:.1f} dB, SSIM {quality['pretext_ssim']:.3f}"
        if quality
        else "no brain voxels"
    )
    fig.suptitle(f"{case.case_id}, axial slice {z} (cropped grid): {stats}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
