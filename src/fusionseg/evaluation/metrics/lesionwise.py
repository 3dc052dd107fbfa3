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
value by value in tests/test_golden.py). Components are labelled by runs
(:mod:`.components`); all work skips empty rows or is done on bounding-box crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusionseg.constants import HD95_PENALTY_MM
from fusionseg.evaluation.metrics import kernels
from fusionseg.evaluation.metrics.buffers import work_buffer
from fusionseg.evaluation.metrics.components import label_components, link_components, row_extents
from fusionseg.evaluation.metrics.overlap import (
    Spacing,
    as_mask_pair,
    box_slices,
    check_spacing,
    dice_from_counts,
    union_bounding_box,
)
from fusionseg.evaluation.metrics.surface import (
    Surface,
    _weighted_percentile,
    directed_distances,
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


def challenge_params(
    challenge: str | LesionWiseParams, dilation: int | None = None, volume_threshold_mm3: float | None = None
) -> LesionWiseParams:
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
            raise ValueError(f"unknown challenge {challenge!r}; choose one of {sorted(CHALLENGES) + ['custom']}")
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
        lesion_id: GT lesion number or, for FP, the predicted component number. Both
            count from 1 in C order (axis 0 slowest) of their first voxel (for a lesion,
            the first voxel of its dilated region), whatever the arrays' memory order.
        kind: "gt" or "fp".
        volume_mm3: lesion (or FP component) volume.
        dice: lesion Dice (0 for FN and FP).
        hd95: lesion HD95 in mm (penalty for FN and FP).
        matched: numbers of the predicted components matched to this lesion.
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


def lesion_wise(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Spacing | None = None,
    dilation: int = 3,
    volume_threshold_mm3: float = 50.0,
    penalty: float = HD95_PENALTY_MM,
    full_image: tuple[float, float] | None = None,
) -> LesionWiseResult:
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


def hd95_and_lesion_wise(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Spacing | None = None,
    dilation: int = 3,
    volume_threshold_mm3: float = 50.0,
    penalty: float = HD95_PENALTY_MM,
    extents: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[float, LesionWiseResult]:
    """Whole-image HD95 (as :func:`fusionseg.evaluation.metrics.surface.hd95`) and
    :func:`lesion_wise` (with the whole-image Dice / HD95 as ``full_image``), computed
    together: one connected-component labelling and one surface extraction per mask,
    and the whole-image surface distances reused for every lesion whose nearest
    surface element is one of its own (same values as computing each separately).

    Args:
        extents: for C-ordered 3-D masks, their row extents ``((first, last) of pred,
            (first, last) of gt)`` (:func:`.components.row_extents`) if already at hand,
            as the region-mask pass of ``evaluate_case`` gives them. The masks are then
            used as they are, without cropping them to their bounding box: empty rows
            cost nothing.
    Returns:
        (hd95_mm, lesion-wise result).
    Raises:
        ValueError: shape mismatch, bad spacing or parameters, or ``extents`` with
            masks that are not C-ordered 3-D arrays.
    """
    if extents is not None and not (np.ndim(pred) == 3 and pred.flags.c_contiguous and gt.flags.c_contiguous):
        raise ValueError("extents need C-ordered 3-D masks.")
    return _analyse(pred, gt, spacing, dilation, volume_threshold_mm3, penalty, None, True, extents)


def _groups(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Element indices sorted by label (stable) and the start of each label 0..n+1."""
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(n + 2))
    return order, starts


def _members(order: np.ndarray, starts: np.ndarray, labels) -> np.ndarray:
    """Indices (ascending) of the elements whose label is in ``labels``."""
    parts = [order[starts[c] : starts[c + 1]] for c in labels]
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
        first = starts[1 : n + 1]
        # every component has elements, so no segment is empty; the last one (label n)
        # runs to the end
        lo[1:] = np.minimum.reduceat(sorted_index, first, axis=0)
        hi[1:] = np.maximum.reduceat(sorted_index, first, axis=0)
    return lo, hi


def _reused_distances(
    src: Surface,
    sel: np.ndarray,
    dist: np.ndarray,
    nearest: np.ndarray,
    target_lut: np.ndarray,
    tgt: Surface,
    tgt_sel: np.ndarray,
) -> np.ndarray:
    """Directed distances from the elements ``sel`` of ``src`` to the elements
    ``tgt_sel`` of ``tgt``: a whole-surface distance whose nearest element lies in the
    target subset is the subset distance too; the others are recomputed."""
    out = dist[sel]
    redo = np.flatnonzero(~target_lut[nearest[sel]])
    if redo.size:
        source = Surface(src.index[sel[redo]], src.spacing, np.ones(redo.size))
        out[redo] = directed_distances(source, Surface(tgt.index[tgt_sel], src.spacing, tgt.weights[tgt_sel]))
    return out


def _analyse(pred, gt, spacing, dilation, volume_threshold_mm3, penalty, full_image, want_full, extents=None):
    pred, gt = as_mask_pair(pred, gt)
    ndim = pred.ndim
    spacing = check_spacing(spacing, ndim)
    params = LesionWiseParams("custom", dilation, volume_threshold_mm3)
    d = int(params.dilation)
    voxel_mm3 = float(np.prod(spacing))

    if extents is None:  # crop to the foreground (dilation never reaches the crop edge)
        box = union_bounding_box(pred, gt)
        if box is None:
            return 0.0, LesionWiseResult(1.0, 0.0, 0, 0, 0, ())
        crop = box_slices(*box, pred.shape, margin=d + 1)
        p, g = np.ascontiguousarray(pred[crop]), np.ascontiguousarray(gt[crop])
    else:  # C-ordered 3-D masks whose empty rows are known: no crop needed
        p, g = pred, gt
    # 3-D views (a 2-D mask is one plane), uint8 for the compiled passes
    p3, g3 = (p, g) if ndim == 3 else (p[None], g[None])
    p3, g3 = p3.view(np.uint8), g3.view(np.uint8)
    p_ext, g_ext = extents if extents is not None else (row_extents(p3), row_extents(g3))
    if p_ext[1].max(initial=-1) < 0 and g_ext[1].max(initial=-1) < 0:  # nothing anywhere: 0/0
        return 0.0, LesionWiseResult(1.0, 0.0, 0, 0, 0, ())

    # Components (26-conn; 8 in 2-D), then the surface elements of each mask labelled by
    # component. Labels are written, and read, only where the masks are set, so they go
    # to reused buffers that are never cleared.
    pred_lab = work_buffer("pred_labels", p3.shape, np.int32)
    gt_cc = work_buffer("gt_labels", g3.shape, np.int32)
    n_pred, pred_sizes = label_components(p3, *p_ext, pred_lab)
    n_cc, _ = label_components(g3, *g_ext, gt_cc)
    if ndim == 2:
        pred_lab, gt_cc = pred_lab[0], gt_cc[0]
    ps, ps_lab = labelled_surface(pred_lab, spacing, p, p_ext if ndim == 3 else None)
    gs, gs_lab = labelled_surface(gt_cc, spacing, g, g_ext if ndim == 3 else None)
    g_order, g_starts = _groups(gs_lab, n_cc)
    g_lo, g_hi = _element_boxes(gs, g_order, g_starts, n_cc)

    # Whole-image distances (crop frame), with the component of the nearest element.
    whole = None
    if ps.empty and gs.empty:
        full_hd = 0.0
    elif ps.empty or gs.empty:
        full_hd = float(penalty)
    else:
        d_gp, near_gp = nearest_distances(gs, ps, ps_lab)
        d_pg, near_pg = nearest_distances(ps, gs, gs_lab)
        whole = (d_gp, near_gp, d_pg, near_pg)
        full_hd = max(_weighted_percentile(d_gp, gs.weights, 95.0), _weighted_percentile(d_pg, ps.weights, 95.0))

    lesion_of_cc, cc_counts, pairs, n_gt = _form_lesions(
        gt_cc, g.view(np.uint8), n_cc, pred_lab, p.view(np.uint8), n_pred, g_lo, g_hi, d
    )
    if want_full:  # |P n G| = GT voxels inside predicted components, from the same pass
        full_image = (
            dice_from_counts(int(pairs[:, 2].sum()), int(pred_sizes[1:].sum()), int(cc_counts.sum())),
            full_hd,
        )
    # lesion -> matched predicted components, as unique (lesion, component) rows
    pair_lesion = lesion_of_cc[pairs[:, 0]]
    match = (
        np.unique(np.stack([pair_lesion, pairs[:, 1]], axis=1), axis=0)
        if len(pairs)
        else np.zeros((0, 2), dtype=np.int64)
    )
    les_voxels = np.bincount(lesion_of_cc[1:], weights=cc_counts[1:], minlength=n_gt + 1)
    les_inter = np.bincount(pair_lesion, weights=pairs[:, 2], minlength=n_gt + 1)
    les_pred = np.bincount(match[:, 0], weights=pred_sizes[match[:, 1]], minlength=n_gt + 1)
    n_match = np.bincount(match[:, 0], minlength=n_gt + 1)
    match_starts = np.concatenate([[0], np.cumsum(n_match)])
    matched_any = np.zeros(n_pred + 1, dtype=bool)
    matched_any[match[:, 1]] = True
    hd = _lesion_hd95s(n_gt, n_pred, lesion_of_cc, match, whole, gs, gs_lab, ps, ps_lab)

    records: list[LesionRecord] = []
    p_groups = None  # predicted elements by component, for lesions the fast path leaves
    for lesion in range(1, n_gt + 1):
        comps = match[match_starts[lesion] : match_starts[lesion + 1], 1]
        volume = float(les_voxels[lesion]) * voxel_mm3
        if comps.size == 0:
            les_dice, les_hd = 0.0, float(penalty)
        elif full_image is not None and n_gt == 1 and comps.size == n_pred:
            les_dice, les_hd = float(full_image[0]), float(full_image[1])
        else:
            les_dice = dice_from_counts(int(les_inter[lesion]), int(les_pred[lesion]), int(les_voxels[lesion]))
            les_hd = hd[lesion]
            if np.isnan(les_hd):  # not answered by the whole-image distances alone
                ccs = np.flatnonzero(lesion_of_cc == lesion)
                if p_groups is None:
                    p_groups = _groups(ps_lab, n_pred)
                les_hd = _lesion_hd95(ccs, comps, whole, gs, ps, (g_order, g_starts), p_groups, n_cc, n_pred)
        records.append(
            LesionRecord(
                lesion,
                "gt",
                volume,
                les_dice,
                float(les_hd),
                tuple(comps.tolist()),
                volume > params.volume_threshold_mm3,
            )
        )
    fp_ids = np.flatnonzero(~matched_any[1:]) + 1
    for c in fp_ids.tolist():
        records.append(LesionRecord(c, "fp", float(pred_sizes[c]) * voxel_mm3, 0.0, float(penalty), (), True))

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


def _form_lesions(gt_cc, gt_mask, n_cc, pred_lab, pred_mask, n_pred, g_lo, g_hi, d):
    """GT lesions and their matches (steps 2-3 of the module docstring).

    Each GT 26-component is dilated on its own small box; components whose dilations
    overlap or touch form one lesion (as labelling the dilated GT would group them),
    numbered by the first voxel (C order) of their joint dilation. The same compiled
    pass lists the predicted components each dilation touches (the lesion's matches)
    and the component's voxels inside each (the lesion's overlap).

    Args:
        gt_cc, pred_lab: component labels of the GT and prediction (same crop), read
            only where ``gt_mask`` / ``pred_mask`` (uint8) are set.
        g_lo, g_hi: (n_cc + 1, ndim) voxel box of each GT component (``hi`` exclusive).
        d: dilation iterations.
    Returns:
        (lesion_of_cc (n_cc + 1,), cc_counts (n_cc + 1,) voxels per GT component,
        pairs (P, 3) rows (GT component, predicted component, GT voxels inside it),
        number of lesions).
    """
    ndim = gt_cc.ndim
    frame = np.asarray(gt_cc.shape)
    lesion_of_cc = np.zeros(n_cc + 1, dtype=np.int64)
    cc_counts = np.zeros(n_cc + 1, dtype=np.int64)
    if n_cc == 0:
        return lesion_of_cc, cc_counts, np.zeros((0, 3), dtype=np.int64), 0
    box_lo = np.maximum(g_lo[1:] - d, 0)
    box_hi = np.minimum(g_hi[1:] + d, frame)
    zlo, zhi = _interaction_zones(box_lo, box_hi)
    active = np.any(zhi > zlo, axis=1)
    if active.any():
        olo, ohi = zlo[active].min(axis=0), zhi[active].max(axis=0)
        owner = np.zeros(tuple(int(x) for x in ohi - olo), dtype=np.int32)
    else:
        olo, owner = np.zeros(ndim, np.int64), np.zeros((1,) * ndim, np.int32)
    if ndim == 3:
        vol = lambda a: a  # noqa: E731
        lo3, hi3, zlo3, zhi3, olo3 = box_lo, box_hi, zlo, zhi, olo
    else:  # a 2-D case is one plane of a 3-D one (18-nbhd within a plane = 8-nbhd)
        vol = lambda a: a[..., None]  # noqa: E731
        plane = lambda a, v: np.concatenate([a, np.full((len(a), 1), v, np.int64)], axis=1)  # noqa: E731
        lo3, hi3, zlo3, zhi3 = plane(box_lo, 0), plane(box_hi, 1), plane(zlo, 0), plane(zhi, 1)
        olo3 = np.append(olo, 0)
    counts, piece_first, pairs, group = link_components(
        vol(gt_cc), vol(gt_mask), lo3, hi3, d, vol(pred_lab), vol(pred_mask), n_pred, zlo3, zhi3, vol(owner), olo3
    )
    cc_counts[1:] = counts
    key = np.ravel_multi_index(tuple(piece_first[:, :ndim].T), tuple(int(x) for x in frame))
    group_first = np.full(n_cc, np.iinfo(np.int64).max)
    np.minimum.at(group_first, group, key)
    roots = np.flatnonzero(group_first < np.iinfo(np.int64).max)
    number = np.zeros(n_cc, dtype=np.int64)
    number[roots[np.argsort(group_first[roots])]] = np.arange(1, roots.size + 1)
    lesion_of_cc[1:] = number[group]
    pairs = pairs.copy()
    pairs[:, 0] += 1  # component index -> GT component label
    return lesion_of_cc, cc_counts, pairs, int(roots.size)


def _interaction_zones(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each GT component's dilation may overlap or touch another's.

    Args:
        lo, hi: (C, ndim) dilation box of each component (``hi`` exclusive).
    Returns:
        (zlo, zhi): per component, its box clipped to the bounding box of the other
        boxes (grown by one voxel) that meet it; empty (zlo = zhi) when none does.
    """
    n = lo.shape[0]
    zlo, zhi = lo.copy(), lo.copy()  # empty
    if n < 2:
        return zlo, zhi
    if n > 2000:  # pairwise test too large: every component's whole box
        return lo.copy(), hi.copy()
    glo, ghi = lo - 1, hi + 1
    meet = np.all((lo[:, None, :] < ghi[None, :, :]) & (glo[None, :, :] < hi[:, None, :]), axis=2)
    np.fill_diagonal(meet, False)
    some = meet.any(axis=1)
    if some.any():
        big = np.iinfo(np.int64).max
        nlo = np.where(meet[:, :, None], glo[None, :, :], big).min(axis=1)
        nhi = np.where(meet[:, :, None], ghi[None, :, :], -big).max(axis=1)
        zlo[some] = np.maximum(lo, nlo)[some]
        zhi[some] = np.minimum(hi, nhi)[some]
    return zlo, zhi


def _lesion_hd95s(n_gt, n_pred, lesion_of_cc, match, whole, gs, gs_lab, ps, ps_lab) -> np.ndarray:
    """Lesion HD95s that the whole-image distances answer alone, NaN for the others.

    A lesion's directed distances equal the whole-image ones when every element of its
    GT components has its nearest predicted element in a matched component, every
    element of a matched component has its nearest GT element in the lesion, and no
    matched component matches another lesion too (its elements then belong to this
    lesion's comparison only).

    Returns:
        (n_gt + 1,) float64 (index 0 unused).
    """
    out = np.full(n_gt + 1, np.nan)
    if whole is None or n_gt == 0 or len(match) == 0:
        return out
    d_gp, near_gp, d_pg, near_pg = whole
    owner = np.zeros(n_pred + 1, dtype=np.int64)  # lesion a component matches; -1: several
    owner[match[:, 1]] = match[:, 0]
    n_owner = np.bincount(match[:, 1], minlength=n_pred + 1)
    owner[n_owner > 1] = -1
    bad = np.zeros(n_gt + 1, dtype=bool)
    bad[match[n_owner[match[:, 1]] > 1, 0]] = True
    g_lesion = lesion_of_cc[gs_lab]
    bad[g_lesion[owner[near_gp] != g_lesion]] = True  # nearest element outside the matches
    p_lesion = owner[ps_lab]
    on = p_lesion > 0
    bad[p_lesion[on & (lesion_of_cc[near_pg] != p_lesion)]] = True
    g_group = np.where(bad[g_lesion], -1, g_lesion)
    p_group = np.where(on & ~bad[np.maximum(p_lesion, 0)], p_lesion, -1)
    g95 = kernels.grouped_weighted_percentile(d_gp, gs.weights, g_group, n_gt + 1, 95.0)
    p95 = kernels.grouped_weighted_percentile(d_pg, ps.weights, p_group, n_gt + 1, 95.0)
    ok = ~bad
    ok[0] = False
    out[ok] = np.maximum(g95[ok], p95[ok])
    return out


def _lesion_hd95(ccs, comps, whole, gs, ps, g_groups, p_groups, n_cc, n_pred) -> float:
    """HD95 of one lesion (GT components ``ccs``) against the union of its matched
    predicted components ``comps``, reusing the whole-image distances where their
    nearest element is in the comparison. ``g_groups`` / ``p_groups``: :func:`_groups`
    of the GT / predicted surface elements."""
    g_sel = _members(*g_groups, ccs)
    p_sel = _members(*p_groups, comps)
    p_lut = np.zeros(n_pred + 1, dtype=bool)
    p_lut[comps] = True
    g_lut = np.zeros(n_cc + 1, dtype=bool)
    g_lut[ccs] = True
    d_gp, near_gp, d_pg, near_pg = whole
    dist_g = _reused_distances(gs, g_sel, d_gp, near_gp, p_lut, ps, p_sel)
    dist_p = _reused_distances(ps, p_sel, d_pg, near_pg, g_lut, gs, g_sel)
    return max(
        _weighted_percentile(dist_g, gs.weights[g_sel], 95.0), _weighted_percentile(dist_p, ps.weights[p_sel], 95.0)
    )
