"""Connected-component post-processing of predicted label maps, and its choice on
validation cases.

Whole-volume predictions of a 2-D network often carry small, scattered false-positive
components. Each one costs little Dice but, under the BraTS 2023 lesion-wise
convention, adds a false-positive lesion (lesion-wise Dice 0, HD95 374 mm). The
post-processing here removes tumour components of the *whole tumour* (every non-zero
label, 26-connectivity) that are smaller than a volume in mm³, or keeps only the
largest one; voxels removed become background. The setting is chosen per fold on the
fold's validation cases, never on its test cases (the practice of nnU-Net's
``determine_postprocessing``, Isensee et al., Nature Methods 2021), or fixed in the
config.

Components are found with connected-components-3d (``cc3d.dust`` and
``cc3d.largest_k``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cc3d
import numpy as np

from fusionseg.constants import LabelScheme
from fusionseg.evaluation.evaluate import evaluate_case
from fusionseg.evaluation.metrics.overlap import dice


@dataclass(frozen=True)
class Postprocess:
    """One post-processing setting.

    Attributes:
        min_volume_mm3: whole-tumour components smaller than this (mm³) are removed;
            0 removes nothing.
        keep_largest: keep only the largest whole-tumour component (applied after the
            volume threshold).
    """

    min_volume_mm3: float = 0.0
    keep_largest: bool = False

    @property
    def is_identity(self) -> bool:
        return self.min_volume_mm3 <= 0 and not self.keep_largest

    def label(self) -> str:
        if self.is_identity:
            return "none"
        parts = [f"remove < {self.min_volume_mm3:g} mm3"] if self.min_volume_mm3 > 0 else []
        if self.keep_largest:
            parts.append("keep largest")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Postprocess:
        if not data:
            return cls()
        return cls(float(data.get("min_volume_mm3", 0.0)), bool(data.get("keep_largest", False)))

    def __call__(self, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Apply to a label map.

        Args:
            labels: integer label map (X, Y[, Z]), background 0.
            spacing: voxel size in mm per axis.
        Returns:
            A new label map of the same shape and dtype; removed voxels are 0.
        Raises:
            ValueError: ``spacing`` does not match the dimensionality.
        """
        labels = np.asarray(labels)
        if len(spacing) != labels.ndim:
            raise ValueError(f"spacing {tuple(spacing)} does not match a {labels.ndim}-D label map")
        if self.is_identity:
            return labels.copy()
        foreground = np.ascontiguousarray(labels != 0)
        connectivity = 26 if labels.ndim == 3 else 8
        keep = foreground
        if self.min_volume_mm3 > 0:
            voxel_mm3 = float(np.prod(spacing))
            threshold = int(np.ceil(self.min_volume_mm3 / voxel_mm3 - 1e-9))
            keep = cc3d.dust(keep, threshold=threshold, connectivity=connectivity, binary_image=True)
        if self.keep_largest and keep.any():
            keep = cc3d.largest_k(keep, k=1, connectivity=connectivity, binary_image=True) != 0
        return np.where(keep, labels, 0).astype(labels.dtype, copy=False)


def candidate_settings(volumes_mm3: Sequence[float], try_keep_largest: bool = True) -> list[Postprocess]:
    """The settings compared on validation cases: no post-processing, each volume
    threshold, and (optionally) keep-largest."""
    out = [Postprocess()]
    out += [Postprocess(float(v)) for v in sorted(set(volumes_mm3)) if v > 0]
    if try_keep_largest:
        out.append(Postprocess(0.0, True))
    return out


def choose_postprocess(cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
                       scheme: LabelScheme, candidates: Sequence[Postprocess],
                       criterion: str = "dice", challenge: str = "GLI") -> tuple[Postprocess, list[dict]]:
    """Pick the setting with the best mean validation score.

    Args:
        cases: (pred, gt, spacing) per validation case; raw label maps of one grid.
        scheme: label scheme (regions).
        candidates: settings to compare; the first is the fallback on ties.
        criterion: ``dice`` (mean whole-image Dice over regions and cases) or
            ``lesion_dice`` (mean BraTS 2023 lesion-wise Dice, ``challenge`` preset).
    Returns:
        (best setting, one row per candidate with its score). Ties (within 1e-9) keep
        the earlier, i.e. the milder, candidate.
    Raises:
        ValueError: no cases, no candidates or an unknown criterion.
    """
    if not cases or not candidates:
        raise ValueError("choose_postprocess needs at least one validation case and one candidate")
    if criterion not in ("dice", "lesion_dice"):
        raise ValueError(f"unknown post-processing criterion {criterion!r} (dice, lesion_dice)")
    rows = []
    best, best_score = candidates[0], -np.inf
    for setting in candidates:
        scores = []
        for pred, gt, spacing in cases:
            processed = setting(pred, spacing)
            if criterion == "dice":
                scores += [dice(scheme.region_mask(processed, r), scheme.region_mask(gt, r))
                           for r in scheme.region_names]
            else:
                region_rows, _ = evaluate_case(processed, gt, spacing, scheme, metrics=["lesion_dice"],
                                               challenge=challenge)
                scores += [r["lesion_dice"] for r in region_rows]
        score = float(np.mean(scores))
        rows.append({"setting": setting.label(), **setting.to_dict(), f"val_{criterion}": score})
        if score > best_score + 1e-9:
            best, best_score = setting, score
    return best, rows


def combine_settings(settings: Sequence[Postprocess]) -> Postprocess:
    """One setting for an ensemble of folds: the median volume threshold, and
    keep-largest when most folds chose it."""
    if not settings:
        return Postprocess()
    volumes = [s.min_volume_mm3 for s in settings]
    largest = sum(s.keep_largest for s in settings) * 2 > len(settings)
    return Postprocess(float(np.median(volumes)), largest)
