"""BraTS 2023 lesion-wise Dice and HD95 (EVALUATION.md; BraTS 2023 S0 Eq. 4-5).

Algorithm, per case and region, with dilation ``d`` (voxels) and volume threshold
``tau`` (mm^3):

1. Connected components of the prediction, 26-connectivity (8 in 2-D).
2. The GT is dilated ``d`` times with the 18-neighbourhood structuring element
   (connectivity 2) and the dilated mask is labelled (26-conn). A GT lesion is the set of
   original GT voxels inside one dilated component (nearby blobs merge).
3. A predicted component matches lesion ``l`` when it touches ``l`` dilated alone by
   ``d``; the dilated component of step 2 *is* that set (every dilated voxel comes from
   a GT voxel of the same component), so it is used directly. A prediction may match
   several lesions. Dice_l and HD95_l compare ``l`` with the union of the whole matched
   components; no match: Dice 0, HD95 = penalty (a false negative).
4. FP = predicted components matched to no GT lesion (no size threshold).
5. Lesions with volume <= tau are left out of numerator and denominator (their matched
   predictions are not FP either):
   LW-Dice = sum Dice_l / (N_l + N_FP); LW-HD95 = (sum HD95_l + penalty N_FP) / (N_l + N_FP);
   0/0 -> Dice 1, HD95 0.
6. TP = kept lesions with a match; FN = kept lesions without one.

This reproduces ``get_LesionWiseResults`` of rachitsaluja/BraTS-2023-Metrics (checked
value by value in tests/test_golden.py). All work is done on bounding-box crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from fusionseg.constants import HD95_PENALTY_MM
from fusionseg.evaluation.metrics.overlap import (
    Spacing,
    as_mask_pair,
    bounding_box,
    box_slices,
    check_spacing,
    dice_from_counts,
)
from fusionseg.evaluation.metrics.surface import mask_surface, robust_hausdorff_surfaces


@dataclass(frozen=True)
class LesionWiseParams:
    """Lesion-wise protocol parameters of one BraTS 2023 challenge.

    Attributes:
        challenge: preset name ("GLI", "SSA", "MEN", "PED", "MET" or "custom").
        dilation: GT dilation iterations d (voxels, 18-neighbourhood).
        volume_threshold_mm3: tau; lesions with volume <= tau are ignored.
    """

    challenge: str
    dilation: int
    volume_threshold_mm3: float

    def __post_init__(self) -> None:
        if int(self.dilation) != self.dilation or self.dilation < 0:
            raise ValueError(f"dilation must be a non-negative integer, got {self.dilation!r}.")
        if not np.isfinite(self.volume_threshold_mm3) or self.volume_threshold_mm3 < 0:
            raise ValueError(f"volume_threshold_mm3 must be >= 0, got {self.volume_threshold_mm3!r}.")


#: BraTS 2023 presets (dilation d, volume threshold tau in mm^3).
CHALLENGES: dict[str, LesionWiseParams] = {
    "GLI": LesionWiseParams("GLI", 3, 50.0),
    "SSA": LesionWiseParams("SSA", 3, 50.0),
    "MEN": LesionWiseParams("MEN", 1, 50.0),
    "PED": LesionWiseParams("PED", 3, 50.0),
    "MET": LesionWiseParams("MET", 1, 2.0),
}


def challenge_params(challenge: str | LesionWiseParams, dilation: int | None = None,
                     volume_threshold_mm3: float | None = None) -> LesionWiseParams:
    """Resolve a challenge preset ("GLI", "BraTS-GLI", case-insensitive) or "custom".

    ``dilation`` / ``volume_threshold_mm3`` override the preset; "custom" needs both.

    Raises:
        ValueError: unknown challenge (the message lists the valid ones) or "custom"
            without both parameters.
    """
    if isinstance(challenge, LesionWiseParams):
        base = challenge
    else:
        key = str(challenge).strip().upper().removeprefix("BRATS-").removeprefix("BRATS")
        if key == "CUSTOM":
            if dilation is None or volume_threshold_mm3 is None:
                raise ValueError("challenge 'custom' needs both dilation and volume_threshold_mm3.")
            return LesionWiseParams("custom", int(dilation), float(volume_threshold_mm3))
        if key not in CHALLENGES:
            raise ValueError(f"unknown challenge {challenge!r}; choose one of "
                             f"{sorted(CHALLENGES) + ['custom']}")
        base = CHALLENGES[key]
    if dilation is None and volume_threshold_mm3 is None:
        return base
    return LesionWiseParams(
        "custom",
        base.dilation if dilation is None else int(dilation),
        base.volume_threshold_mm3 if volume_threshold_mm3 is None else float(volume_threshold_mm3),
    )


@dataclass(frozen=True)
class LesionRecord:
    """One GT lesion (``kind="gt"``) or one unmatched predicted component (``kind="fp"``).

    Attributes:
        lesion_id: GT lesion label (1..) or, for FP, the predicted component label.
        kind: "gt" or "fp".
        volume_mm3: lesion (or FP component) volume.
        dice: lesion Dice (0 for FN and FP).
        hd95: lesion HD95 in mm (penalty for FN and FP).
        matched: labels of the predicted components matched to this lesion.
        counted: whether it enters the lesion-wise scores (GT: volume > tau; FP: always).
    """

    lesion_id: int
    kind: str
    volume_mm3: float
    dice: float
    hd95: float
    matched: tuple[int, ...]
    counted: bool


@dataclass(frozen=True)
class LesionWiseResult:
    """Lesion-wise scores of one case and region (see module docstring)."""

    dice: float
    hd95: float
    tp: int
    fn: int
    fp: int
    lesions: tuple[LesionRecord, ...]


def lesion_wise(pred: np.ndarray, gt: np.ndarray, spacing: Spacing | None = None,
                dilation: int = 3, volume_threshold_mm3: float = 50.0,
                penalty: float = HD95_PENALTY_MM,
                full_image: tuple[float, float] | None = None) -> LesionWiseResult:
    """BraTS 2023 lesion-wise Dice, HD95 and TP/FN/FP lesion counts.

    Args:
        pred, gt: masks of one region, shape (X, Y[, Z]).
        spacing: voxel size in mm per axis (volumes in mm^3, distances in mm).
        dilation: GT dilation d in voxels (GLI/SSA/PED 3, MEN/MET 1).
        volume_threshold_mm3: tau (GLI/SSA/MEN/PED 50, MET 2).
        penalty: HD95 of a missed lesion or an FP component (374 mm).
        full_image: (Dice, HD95) of the whole masks if already computed; reused when a
            single lesion is matched by every predicted component (same comparison).
    Returns:
        :class:`LesionWiseResult`; never NaN.
    Raises:
        ValueError: shape mismatch, bad spacing or parameters.
    """
    pred, gt = as_mask_pair(pred, gt)
    ndim = pred.ndim
    spacing = check_spacing(spacing, ndim)
    params = LesionWiseParams("custom", dilation, volume_threshold_mm3)
    d = int(params.dilation)
    voxel_mm3 = float(np.prod(spacing))
    connectivity = 26 if ndim == 3 else 8

    box = bounding_box(pred | gt)
    if box is None:  # nothing anywhere: 0/0
        return LesionWiseResult(1.0, 0.0, 0, 0, 0, ())
    crop = box_slices(*box, pred.shape, margin=d + 1)  # dilation never reaches the edge
    p, g = pred[crop], gt[crop]

    pred_lab, n_pred = cc3d.connected_components(p, connectivity=connectivity, return_N=True)
    pred_boxes = ndimage.find_objects(pred_lab, max_label=n_pred)

    # GT: dilate each 26-component on its own small box (dilation distributes over
    # union, so OR-ing the pieces gives the dilation of the whole GT), then label the
    # dilated mask: a lesion = the GT components inside one dilated component.
    gt_cc, n_cc = cc3d.connected_components(g, connectivity=connectivity, return_N=True)
    cc_boxes = ndimage.find_objects(gt_cc, max_label=n_cc)
    cc_counts = np.zeros(n_cc + 1, dtype=np.int64)
    structure = ndimage.generate_binary_structure(ndim, 2)
    dilated = np.zeros(g.shape, dtype=bool)
    pieces = []
    for cc in range(1, n_cc + 1):
        box = tuple(slice(max(sl.start - d, 0), min(sl.stop + d, n))
                    for sl, n in zip(cc_boxes[cc - 1], g.shape))
        comp = gt_cc[box] == cc
        cc_counts[cc] = np.count_nonzero(comp)
        piece = ndimage.binary_dilation(comp, structure=structure, iterations=d) if d > 0 else comp
        dilated[box] |= piece
        pieces.append((box, comp, piece))
    dil_lab, n_gt = cc3d.connected_components(dilated, connectivity=connectivity, return_N=True)
    lesion_ccs: list[list[int]] = [[] for _ in range(n_gt + 1)]
    lesion_match: list[set[int]] = [set() for _ in range(n_gt + 1)]
    for cc, (box, comp, piece) in enumerate(pieces, start=1):
        lesion = int(dil_lab[box].ravel()[np.argmax(comp.ravel())])
        lesion_ccs[lesion].append(cc)
        touched = pred_lab[box][piece]
        lesion_match[lesion].update(int(c) for c in np.unique(touched[touched > 0]))

    records: list[LesionRecord] = []
    matched_any = np.zeros(n_pred + 1, dtype=bool)
    for lesion in range(1, n_gt + 1):
        comps = np.asarray(sorted(lesion_match[lesion]), dtype=np.int64)
        ccs = lesion_ccs[lesion]
        matched_any[comps] = True
        volume = float(cc_counts[ccs].sum()) * voxel_mm3
        if comps.size == 0:
            les_dice, les_hd = 0.0, float(penalty)
        elif full_image is not None and n_gt == 1 and comps.size == n_pred:
            les_dice, les_hd = float(full_image[0]), float(full_image[1])
        else:
            les_dice, les_hd = _lesion_pair(gt_cc, n_cc, ccs, [cc_boxes[c - 1] for c in ccs],
                                            pred_lab, n_pred, comps,
                                            [pred_boxes[c - 1] for c in comps], spacing, penalty)
        records.append(LesionRecord(lesion, "gt", volume, les_dice, les_hd,
                                    tuple(int(c) for c in comps),
                                    volume > params.volume_threshold_mm3))
    fp_ids = [c for c in range(1, n_pred + 1) if not matched_any[c]]
    for c in fp_ids:
        size = np.count_nonzero(pred_lab[pred_boxes[c - 1]] == c)
        records.append(LesionRecord(c, "fp", float(size) * voxel_mm3, 0.0,
                                    float(penalty), (), True))

    kept = [r for r in records if r.kind == "gt" and r.counted]
    tp = sum(1 for r in kept if r.matched)
    fn = len(kept) - tp
    denominator = len(kept) + len(fp_ids)
    if denominator == 0:
        lw_dice, lw_hd = 1.0, 0.0
    else:
        lw_dice = sum(r.dice for r in kept) / denominator
        lw_hd = (sum(r.hd95 for r in kept) + penalty * len(fp_ids)) / denominator
    return LesionWiseResult(float(lw_dice), float(lw_hd), tp, fn, len(fp_ids), tuple(records))


def _lesion_pair(gt_cc: np.ndarray, n_cc: int, ccs: list[int], gt_boxes: list,
                 pred_lab: np.ndarray, n_pred: int, comps: np.ndarray, pred_boxes: list,
                 spacing: tuple[float, ...], penalty: float) -> tuple[float, float]:
    """Dice and HD95 of one GT lesion (GT components ``ccs``) against the union of its
    matched predicted components ``comps``, computed on the bounding box of both."""
    boxes = list(gt_boxes) + list(pred_boxes)
    crop = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
                 for a in range(gt_cc.ndim))
    gt_lut = np.zeros(n_cc + 1, dtype=bool)
    gt_lut[ccs] = True
    lesion_mask = gt_lut[gt_cc[crop]]
    pred_lut = np.zeros(n_pred + 1, dtype=bool)
    pred_lut[comps] = True
    union = pred_lut[pred_lab[crop]]
    n_l, n_u = int(np.count_nonzero(lesion_mask)), int(np.count_nonzero(union))
    les_dice = dice_from_counts(int(np.count_nonzero(lesion_mask & union)), n_u, n_l)
    les_hd = robust_hausdorff_surfaces(mask_surface(union, spacing),
                                       mask_surface(lesion_mask, spacing), 95.0, penalty)
    return les_dice, les_hd
