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

Optionally (``inner_min_volume_mm3``) the same clean-up is applied inside the whole
tumour to the nested regions of the label scheme (BraTS: TC inside WT, ET inside TC):
a nested-region component smaller than the volume is relabelled to the one label
that the enclosing region adds (a TC speck becomes ED, an ET speck NCR), so the
enclosing region is unchanged while the speck stops counting as a false-positive
TC/ET lesion. This threshold is chosen on validation after the whole-tumour setting.

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
        inner_min_volume_mm3: components of nested regions (TC, ET) smaller than this
            (mm³) are relabelled to the enclosing region's own label (module
            docstring); 0 relabels nothing. Needs the label scheme.
    """

    min_volume_mm3: float = 0.0
    keep_largest: bool = False
    inner_min_volume_mm3: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.min_volume_mm3 <= 0 and not self.keep_largest and self.inner_min_volume_mm3 <= 0

    def label(self) -> str:
        if self.is_identity:
            return "none"
        parts = [f"remove < {self.min_volume_mm3:g} mm3"] if self.min_volume_mm3 > 0 else []
        if self.keep_largest:
            parts.append("keep largest")
        if self.inner_min_volume_mm3 > 0:
            parts.append(f"nested regions < {self.inner_min_volume_mm3:g} mm3 relabelled")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Postprocess:
        if not data:
            return cls()
        return cls(
            float(data.get("min_volume_mm3", 0.0)),
            bool(data.get("keep_largest", False)),
            float(data.get("inner_min_volume_mm3", 0.0)),
        )

    def __call__(self, labels: np.ndarray, spacing: Sequence[float], scheme: LabelScheme | None = None) -> np.ndarray:
        """Apply to a label map.

        Args:
            labels: integer label map (X, Y[, Z]) in the scheme's raw values, background 0.
            spacing: voxel size in mm per axis.
            scheme: label scheme, needed when ``inner_min_volume_mm3 > 0``.
        Returns:
            A new label map of the same shape and dtype; removed voxels are 0,
            relabelled nested-region specks carry the enclosing region's label.
        Raises:
            ValueError: ``spacing`` does not match the dimensionality, or nested-region
                clean-up without a scheme.
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
            keep = cc3d.dust(
                keep, threshold=_voxels(self.min_volume_mm3, spacing), connectivity=connectivity, binary_image=True
            )
        if self.keep_largest and keep.any():
            keep = cc3d.largest_k(keep, k=1, connectivity=connectivity, binary_image=True) != 0
        out = np.where(keep, labels, 0).astype(labels.dtype, copy=False)
        if self.inner_min_volume_mm3 > 0:
            if scheme is None:
                raise ValueError("nested-region clean-up (inner_min_volume_mm3) needs the label scheme")
            threshold = _voxels(self.inner_min_volume_mm3, spacing)
            for region, fill in nested_regions(scheme):
                mask = np.ascontiguousarray(np.isin(out, scheme.regions[region]))
                kept = cc3d.dust(mask, threshold=threshold, connectivity=connectivity, binary_image=True)
                out[mask & ~kept] = fill
        return out


def _voxels(volume_mm3: float, spacing: Sequence[float]) -> int:
    """Smallest whole number of voxels of ``spacing`` (mm) whose volume reaches
    ``volume_mm3``: components with fewer voxels are under the volume."""
    return int(np.ceil(volume_mm3 / float(np.prod(spacing)) - 1e-9))


def nested_regions(scheme: LabelScheme) -> list[tuple[str, int]]:
    """Regions nested in a larger one, outermost first, each with the single raw label
    that its smallest enclosing region adds (BraTS 2017: [("TC", 2), ("ET", 1)]).
    Regions whose enclosing region adds several labels are left out."""
    sets = {name: set(values) for name, values in scheme.regions.items()}
    out = []
    for name in sorted(sets, key=lambda n: -len(sets[n])):
        parents = [p for p in sets if sets[p] > sets[name]]
        if not parents:
            continue
        parent = min(parents, key=lambda p: len(sets[p]))
        extra = sets[parent] - sets[name]
        if len(extra) == 1:
            out.append((name, int(next(iter(extra)))))
    return out


def candidate_settings(volumes_mm3: Sequence[float], try_keep_largest: bool = True) -> list[Postprocess]:
    """The settings compared on validation cases: no post-processing, each volume
    threshold, and (optionally) keep-largest."""
    out = [Postprocess()]
    out += [Postprocess(float(v)) for v in sorted(set(volumes_mm3)) if v > 0]
    if try_keep_largest:
        out.append(Postprocess(0.0, True))
    return out


def inner_settings(base: Postprocess, volumes_mm3: Sequence[float]) -> list[Postprocess]:
    """``base`` alone, then ``base`` with each nested-region threshold."""
    return [base] + [
        Postprocess(base.min_volume_mm3, base.keep_largest, float(v)) for v in sorted(set(volumes_mm3)) if v > 0
    ]


def choose_postprocess(
    cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    scheme: LabelScheme,
    candidates: Sequence[Postprocess],
    criterion: str = "dice",
    challenge: str = "GLI",
) -> tuple[Postprocess, list[dict]]:
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
            processed = setting(pred, spacing, scheme)
            if criterion == "dice":
                scores += [
                    dice(scheme.region_mask(processed, r), scheme.region_mask(gt, r)) for r in scheme.region_names
                ]
            else:
                region_rows, _ = evaluate_case(
                    processed, gt, spacing, scheme, metrics=["lesion_dice"], challenge=challenge
                )
                scores += [r["lesion_dice"] for r in region_rows]
        score = float(np.mean(scores))
        rows.append({"setting": setting.label(), **setting.to_dict(), f"val_{criterion}": score})
        if score > best_score + 1e-9:
            best, best_score = setting, score
    return best, rows


def combine_settings(settings: Sequence[Postprocess]) -> Postprocess:
    """One setting for an ensemble of folds: the median volume thresholds, and
    keep-largest when most folds chose it."""
    if not settings:
        return Postprocess()
    volumes = [s.min_volume_mm3 for s in settings]
    largest = sum(s.keep_largest for s in settings) * 2 > len(settings)
    return Postprocess(float(np.median(volumes)), largest, float(np.median([s.inner_min_volume_mm3 for s in settings])))
