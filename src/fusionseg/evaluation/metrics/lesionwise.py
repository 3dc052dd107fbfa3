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
from fusionseg.evaluation.metrics.surface import (
    Surface,
    _weighted_percentile,
    directed_distances,
    kd_distances,
    labelled_surface,
    nearest_distances,
)


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
    return _analyse(pred, gt, spacing, dilation, volume_threshold_mm3, penalty, full_image, False)[1]


def hd95_and_lesion_wise(pred: np.ndarray, gt: np.ndarray, spacing: Spacing | None = None,
                         dilation: int = 3, volume_threshold_mm3: float = 50.0,
                         penalty: float = HD95_PENALTY_MM) -> tuple[float, LesionWiseResult]:
    """Whole-image HD95 (as :func:`fusionseg.evaluation.metrics.surface.hd95`) and
    :func:`lesion_wise` (with the whole-image Dice / HD95 as ``full_image``), computed
    together: one connected-component labelling and one surface extraction per mask,
    and the whole-image surface distances reused for every lesion whose nearest
    surface element is one of its own (same values as computing each separately).

    Returns:
        (hd95_mm, lesion-wise result).
    """
    return _analyse(pred, gt, spacing, dilation, volume_threshold_mm3, penalty, None, True)


def _exact_frame(spacing: tuple[float, ...]) -> bool:
    """Whether coordinates ``index * spacing`` are exact multiples of one unit (spacing
    with at most 10 significant bits), so that k-d tree distances do not depend on the
    origin of the index frame."""
    for s in spacing:
        m = np.frexp(s)[0] * 1024.0
        if m != np.floor(m):
            return False
    return True


def _groups(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Element indices sorted by label (stable) and the start of each label 0..n+1."""
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(n + 2))
    return order, starts


def _members(order: np.ndarray, starts: np.ndarray, labels) -> np.ndarray:
    """Indices (ascending) of the elements whose label is in ``labels``."""
    parts = [order[starts[c]:starts[c + 1]] for c in labels]
    if len(parts) == 1:
        return parts[0]
    return np.sort(np.concatenate(parts))


def _element_boxes(surface: Surface, order: np.ndarray, starts: np.ndarray, n: int):
    """Voxel bounding box (lo, hi exclusive) of each labelled component 1..n from its
    surface elements: a component spanning voxels lo..hi has elements at vertices
    lo..hi+1 on every axis."""
    ndim = surface.index.shape[1]
    lo = np.zeros((n + 1, ndim), dtype=np.int64)
    hi = np.zeros((n + 1, ndim), dtype=np.int64)
    if n:
        sorted_index = surface.index[order]
        first = starts[1:n + 1]
        # every component has elements, so no segment is empty; the last one (label n)
        # runs to the end
        lo[1:] = np.minimum.reduceat(sorted_index, first, axis=0)
        hi[1:] = np.maximum.reduceat(sorted_index, first, axis=0)
    return lo, hi


def _reused_distances(src: Surface, sel: np.ndarray, dist: np.ndarray, nearest: np.ndarray,
                      far: np.ndarray, target_lut: np.ndarray, tgt: Surface, tgt_sel: np.ndarray,
                      offset: np.ndarray | None) -> np.ndarray:
    """Directed distances from the elements ``sel`` of ``src`` to the elements
    ``tgt_sel`` of ``tgt``, in the frame shifted by ``offset`` (None: frame-independent).

    A whole-surface distance whose nearest element lies in the target subset is the
    subset distance too; the others are recomputed."""
    out = dist[sel]
    keep = target_lut[nearest[sel]]
    spacing = np.asarray(src.spacing)
    sub_target = Surface(tgt.index[tgt_sel] if offset is None else tgt.index[tgt_sel] - offset,
                         src.spacing, tgt.weights[tgt_sel])
    redo = np.flatnonzero(~keep)
    if redo.size:
        idx = src.index[sel[redo]]
        source = Surface(idx if offset is None else idx - offset, src.spacing, np.ones(redo.size))
        out[redo] = directed_distances(source, sub_target)
    if offset is not None:
        again = np.flatnonzero(keep & far[sel])
        if again.size:
            out[again] = kd_distances((src.index[sel[again]] - offset) * spacing, sub_target)
    return out


def _analyse(pred, gt, spacing, dilation, volume_threshold_mm3, penalty, full_image, want_full):
    pred, gt = as_mask_pair(pred, gt)
    ndim = pred.ndim
    spacing = check_spacing(spacing, ndim)
    params = LesionWiseParams("custom", dilation, volume_threshold_mm3)
    d = int(params.dilation)
    voxel_mm3 = float(np.prod(spacing))
    connectivity = 26 if ndim == 3 else 8

    box = bounding_box(pred | gt)
    if box is None:  # nothing anywhere: 0/0
        return 0.0, LesionWiseResult(1.0, 0.0, 0, 0, 0, ())
    crop = box_slices(*box, pred.shape, margin=d + 1)  # dilation never reaches the edge
    origin = np.asarray([sl.start for sl in crop], dtype=np.int64)
    p, g = pred[crop], gt[crop]
    exact = _exact_frame(spacing)

    pred_lab, n_pred = cc3d.connected_components(p, connectivity=connectivity, return_N=True)
    gt_cc, n_cc = cc3d.connected_components(g, connectivity=connectivity, return_N=True)
    # Surface elements of each mask, labelled by component (crop frame).
    ps, ps_lab = labelled_surface(pred_lab, spacing, p)
    gs, gs_lab = labelled_surface(gt_cc, spacing, g)
    p_order, p_starts = _groups(ps_lab, n_pred)
    g_order, g_starts = _groups(gs_lab, n_cc)
    p_lo, p_hi = _element_boxes(ps, p_order, p_starts, n_pred)
    g_lo, g_hi = _element_boxes(gs, g_order, g_starts, n_cc)
    pred_sizes = np.bincount(pred_lab[p], minlength=n_pred + 1) if n_pred else np.zeros(1, np.int64)

    # Whole-image distances (crop frame), with the component of the nearest element.
    whole = None
    if ps.empty and gs.empty:
        full_hd = 0.0
    elif ps.empty or gs.empty:
        full_hd = float(penalty)
    else:
        d_gp, near_gp, far_gp = nearest_distances(gs, ps, ps_lab)
        d_pg, near_pg, far_pg = nearest_distances(ps, gs, gs_lab)
        far_g = np.zeros(d_gp.size, dtype=bool)
        far_g[far_gp] = True
        far_p = np.zeros(d_pg.size, dtype=bool)
        far_p[far_pg] = True
        whole = (d_gp, near_gp, far_g, d_pg, near_pg, far_p)
        w_gp, w_pg = d_gp, d_pg
        if want_full and not exact and origin.any():  # k-d distances in the caller's frame
            w_gp, w_pg = d_gp.copy(), d_pg.copy()
            sp = np.asarray(spacing)
            ps_in = Surface(ps.index + origin, spacing, ps.weights)
            gs_in = Surface(gs.index + origin, spacing, gs.weights)
            if far_gp.size:
                w_gp[far_gp] = kd_distances(gs_in.index[far_gp] * sp, ps_in)
            if far_pg.size:
                w_pg[far_pg] = kd_distances(ps_in.index[far_pg] * sp, gs_in)
        full_hd = max(_weighted_percentile(w_gp, gs.weights, 95.0),
                      _weighted_percentile(w_pg, ps.weights, 95.0))
    if want_full:
        n_inter = int(np.count_nonzero(p & g))
        full_image = (dice_from_counts(n_inter, int(pred_sizes[1:].sum()),
                                       int(np.count_nonzero(g))), full_hd)

    # GT: dilate each 26-component on its own small box (dilation distributes over
    # union, so OR-ing the pieces gives the dilation of the whole GT), then label the
    # dilated mask: a lesion = the GT components inside one dilated component.
    cc_counts = np.zeros(n_cc + 1, dtype=np.int64)
    structure = ndimage.generate_binary_structure(ndim, 2)
    pieces = []
    if n_cc:
        dlo = np.maximum(g_lo[1:].min(axis=0) - d, 0)
        dhi = np.minimum(g_hi[1:].max(axis=0) + d, np.asarray(g.shape))
        dilated = np.zeros(tuple(int(x) for x in dhi - dlo), dtype=bool)
    for cc in range(1, n_cc + 1):
        box = tuple(slice(max(int(a) - d, 0), min(int(b) + d, n))
                    for a, b, n in zip(g_lo[cc], g_hi[cc], g.shape))
        comp = gt_cc[box] == cc
        cc_counts[cc] = np.count_nonzero(comp)
        piece = ndimage.binary_dilation(comp, structure=structure, iterations=d) if d > 0 else comp
        local = tuple(slice(sl.start - int(o), sl.stop - int(o)) for sl, o in zip(box, dlo))
        dilated[local] |= piece
        pieces.append((box, local, comp, piece))
    if n_cc:
        dil_lab, n_gt = cc3d.connected_components(dilated, connectivity=connectivity, return_N=True)
    else:
        n_gt = 0
    lesion_ccs: list[list[int]] = [[] for _ in range(n_gt + 1)]
    lesion_match: list[set[int]] = [set() for _ in range(n_gt + 1)]
    overlap: list[dict[int, int]] = [{} for _ in range(n_cc + 1)]
    for cc, (box, local, comp, piece) in enumerate(pieces, start=1):
        lesion = int(dil_lab[local].ravel()[np.argmax(comp.ravel())])
        lesion_ccs[lesion].append(cc)
        labs = pred_lab[box]
        touched = labs[piece]
        lesion_match[lesion].update(int(c) for c in np.unique(touched[touched > 0]))
        inside = labs[comp]
        inside = inside[inside > 0]
        if inside.size:
            ids, cnt = np.unique(inside, return_counts=True)
            overlap[cc] = dict(zip(ids.tolist(), cnt.tolist()))

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
            comp_set = set(comps.tolist())
            inter = sum(n for cc in ccs for c, n in overlap[cc].items() if c in comp_set)
            les_dice = dice_from_counts(int(inter), int(pred_sizes[comps].sum()),
                                        int(cc_counts[ccs].sum()))
            # HD95 of the lesion against its matched union, in the frame of their joint
            # bounding box (as a separate computation on that box would use).
            offset = None
            if not exact:
                offset = np.minimum(g_lo[ccs].min(axis=0), p_lo[comps].min(axis=0))
            g_sel = _members(g_order, g_starts, ccs)
            p_sel = _members(p_order, p_starts, comps)
            p_lut = np.zeros(n_pred + 1, dtype=bool)
            p_lut[comps] = True
            g_lut = np.zeros(n_cc + 1, dtype=bool)
            g_lut[ccs] = True
            d_gp, near_gp, far_g, d_pg, near_pg, far_p = whole
            dist_g = _reused_distances(gs, g_sel, d_gp, near_gp, far_g, p_lut, ps, p_sel, offset)
            dist_p = _reused_distances(ps, p_sel, d_pg, near_pg, far_p, g_lut, gs, g_sel, offset)
            les_hd = max(_weighted_percentile(dist_g, gs.weights[g_sel], 95.0),
                         _weighted_percentile(dist_p, ps.weights[p_sel], 95.0))
        records.append(LesionRecord(lesion, "gt", volume, les_dice, les_hd,
                                    tuple(int(c) for c in comps),
                                    volume > params.volume_threshold_mm3))
    fp_ids = [c for c in range(1, n_pred + 1) if not matched_any[c]]
    for c in fp_ids:
        records.append(LesionRecord(c, "fp", float(pred_sizes[c]) * voxel_mm3, 0.0,
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
    return full_hd, LesionWiseResult(float(lw_dice), float(lw_hd), tp, fn, len(fp_ids), tuple(records))
