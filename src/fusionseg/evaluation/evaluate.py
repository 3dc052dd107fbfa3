"""Per-case evaluation with a metric registry.

``evaluate_case`` turns one (prediction, ground truth) pair of raw label maps into one
row per evaluation region (WT/TC/ET, or the PET/CT tumour) and, when lesion-wise
metrics are requested, one row per GT lesion and per false-positive component.
:func:`fusionseg.evaluation.folder.evaluate_folder` does this for every case of a
folder and writes the result files.

Metric names (``METRICS``; select with ``metrics=["dice", "hd95"]``):
    dice, hd95            whole-image Dice, HD95 (BraTS 2023 legacy)
    lesion_dice, lesion_hd95, tp, fn, fp
                          BraTS 2023 lesion-wise scores and lesion counts (computed once
                          per region for all five)
    sensitivity, specificity  voxel-wise
    asd                   symmetric average surface distance (MONAI)
    fpv_ml, fnv_ml        autoPET false-positive / false-negative volume (single-class
                          schemes only)
All values are finite: empty-mask cases have the values stated in docs/EVALUATION.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusionseg.constants import HD95_PENALTY_MM, LabelScheme, get_label_scheme
from fusionseg.evaluation.metrics import kernels
from fusionseg.evaluation.metrics.buffers import zeroed_buffer
from fusionseg.evaluation.metrics.components import clear_rows
from fusionseg.evaluation.metrics.lesionwise import (
    LesionWiseParams,
    LesionWiseResult,
    challenge_params,
    hd95_and_lesion_wise,
    lesion_wise,
)
from fusionseg.evaluation.metrics.overlap import (
    box_slices,
    check_spacing,
    dice_from_counts,
    sensitivity_specificity_from_counts,
    union_bounding_box,
)
from fusionseg.evaluation.metrics.surface import (
    average_surface_distance,
    mask_surface,
    robust_hausdorff_surfaces,
)
from fusionseg.evaluation.metrics.volumes import false_negative_volume, false_positive_volume


# ------------------------------------------------------------------ registry
@dataclass
class RegionPair:
    """Prediction and GT masks of one region, with a per-region cache so that metrics
    sharing work (lesion-wise scores, whole-image counts) compute it once.

    Attributes:
        pred, gt: bool masks (possibly a crop of the case; every voxel outside the crop
            is background in both).
        spacing: voxel size in mm.
        n_total: number of voxels of the full (uncropped) case, for specificity.
        params: lesion-wise parameters.
        need_lesions: lesion-wise metrics will be asked for: whole-image HD95 and the
            lesion-wise analysis are then computed together (shared labelling,
            surfaces and distances; same values).
        known_counts: (|P n G|, |P|, |G|) if already counted (e.g. with the masks).
        extents: row extents of C-ordered 3-D masks, ``((first, last) of pred,
            (first, last) of GT)``, if already found (e.g. with the masks); passed to
            :func:`hd95_and_lesion_wise`.
    """

    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, ...]
    n_total: int
    params: LesionWiseParams
    need_lesions: bool = False
    known_counts: tuple[int, int, int] | None = None
    extents: tuple | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.known_counts is not None:
            self._cache["counts"] = tuple(int(c) for c in self.known_counts)

    def counts(self) -> tuple[int, int, int]:
        """(|P n G|, |P|, |G|)."""
        if "counts" not in self._cache:
            self._cache["counts"] = (
                int(np.count_nonzero(self.pred & self.gt)),
                int(np.count_nonzero(self.pred)),
                int(np.count_nonzero(self.gt)),
            )
        return self._cache["counts"]

    def dice(self) -> float:
        return dice_from_counts(*self.counts())

    def hd95(self) -> float:
        if "hd95" not in self._cache and self.need_lesions:
            self._joint()
        if "hd95" not in self._cache:
            self._cache["hd95"] = robust_hausdorff_surfaces(
                mask_surface(self.pred, self.spacing), mask_surface(self.gt, self.spacing), 95.0, HD95_PENALTY_MM
            )
        return self._cache["hd95"]

    def _joint(self) -> None:
        hd, result = hd95_and_lesion_wise(
            self.pred,
            self.gt,
            self.spacing,
            self.params.dilation,
            self.params.volume_threshold_mm3,
            HD95_PENALTY_MM,
            self.extents,
        )
        self._cache["hd95"] = hd
        self._cache["lesions"] = result

    def lesions(self) -> LesionWiseResult:
        if "lesions" not in self._cache and self.need_lesions and "hd95" not in self._cache:
            self._joint()
        if "lesions" not in self._cache:
            self._cache["lesions"] = lesion_wise(
                self.pred,
                self.gt,
                self.spacing,
                self.params.dilation,
                self.params.volume_threshold_mm3,
                HD95_PENALTY_MM,
                full_image=(self.dice(), self.hd95()),
            )
        return self._cache["lesions"]

    def sens_spec(self) -> tuple[float, float]:
        return sensitivity_specificity_from_counts(*self.counts(), self.n_total)


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: column name, how to compute it from a :class:`RegionPair`,
    whether it needs the lesion-wise analysis, and whether it is PET/CT only."""

    name: str
    compute: Callable[[RegionPair], float]
    description: str
    lesion_wise: bool = False
    single_class_only: bool = False


_SPECS = [
    MetricSpec("dice", RegionPair.dice, "whole-image Dice (both empty -> 1)"),
    MetricSpec("hd95", RegionPair.hd95, "whole-image HD95 in mm, BraTS/DeepMind (both empty -> 0, one empty -> 374)"),
    MetricSpec(
        "lesion_dice",
        lambda r: r.lesions().dice,
        "BraTS 2023 lesion-wise Dice (no GT and no predicted lesion -> 1)",
        True,
    ),
    MetricSpec(
        "lesion_hd95",
        lambda r: r.lesions().hd95,
        "BraTS 2023 lesion-wise HD95 in mm (no GT and no predicted lesion -> 0; each unmatched lesion 374)",
        True,
    ),
    MetricSpec("tp", lambda r: r.lesions().tp, "true-positive GT lesions (volume > tau)", True),
    MetricSpec("fn", lambda r: r.lesions().fn, "missed GT lesions (volume > tau)", True),
    MetricSpec("fp", lambda r: r.lesions().fp, "predicted components matching no GT lesion", True),
    MetricSpec("sensitivity", lambda r: r.sens_spec()[0], "voxel sensitivity"),
    MetricSpec("specificity", lambda r: r.sens_spec()[1], "voxel specificity"),
    MetricSpec(
        "asd",
        lambda r: average_surface_distance(r.pred, r.gt, r.spacing),
        "symmetric average surface distance in mm (MONAI; both empty -> 0, one empty -> 374)",
    ),
    MetricSpec(
        "fpv_ml",
        lambda r: false_positive_volume(r.pred, r.gt, r.spacing),
        "false-positive volume in mL, predicted 18-connected components touching no"
        " GT voxel (autoPET; empty prediction -> 0, empty GT -> all predicted volume)",
        single_class_only=True,
    ),
    MetricSpec(
        "fnv_ml",
        lambda r: false_negative_volume(r.pred, r.gt, r.spacing),
        "false-negative volume in mL, GT 18-connected components touching no"
        " predicted voxel (autoPET; empty GT -> 0, empty prediction -> all GT volume)",
        single_class_only=True,
    ),
]

#: Metric registry: name -> spec.
METRICS: dict[str, MetricSpec] = {s.name: s for s in _SPECS}


def _single_class(scheme: LabelScheme) -> bool:
    return scheme.num_classes == 2


def resolve_metrics(metrics: Sequence[str] | str | None, scheme: LabelScheme) -> list[str]:
    """Validate metric names (comma-separated string or list); None -> every metric that
    applies to ``scheme`` (fpv_ml / fnv_ml only for single-class schemes).

    Raises:
        ValueError: unknown name (lists the valid ones) or a single-class metric with a
            multi-class scheme.
    """
    if metrics is None:
        return [n for n, s in METRICS.items() if not s.single_class_only or _single_class(scheme)]
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",")]
    names = [m.strip().lower() for m in metrics if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or metrics!r}; choose from {list(METRICS)}")
    wrong = [m for m in names if METRICS[m].single_class_only and not _single_class(scheme)]
    if wrong:
        raise ValueError(f"metric(s) {wrong} are defined for single-class (PET/CT) schemes only, not {scheme.name!r}")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------ one case
def as_label_map(seg: np.ndarray, name: str) -> np.ndarray:
    """``seg`` as an integer label map in native byte order (bool -> uint8; integral
    floats -> int64).

    Raises:
        ValueError: non-integer values (``name`` says which map) or a non-numeric dtype.
    """
    seg = np.asarray(seg)
    if seg.dtype.kind == "b":
        return seg.astype(np.uint8)
    if seg.dtype.kind == "f":
        rounded = np.rint(seg)
        if not np.array_equal(rounded, seg):
            raise ValueError(f"{name} holds non-integer values; give a label map, not probabilities.")
        seg = rounded.astype(np.int64)
    if seg.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer label map, got dtype {seg.dtype}.")
    if not seg.dtype.isnative:  # e.g. big-endian NIfTI data: the compiled kernels need native
        seg = seg.astype(seg.dtype.newbyteorder("="))
    return seg


def present_values(seg: np.ndarray) -> list[int]:
    """Sorted label values present in an integer label map."""
    if seg.size == 0:
        return []
    if seg.dtype.kind == "i" and seg.min() < 0:
        return sorted(int(v) for v in np.unique(seg))
    counts = np.bincount(seg.ravel().astype(np.intp, copy=False))
    return [int(v) for v in np.flatnonzero(counts)]


@contextmanager
def _region_masks(
    p_crop: np.ndarray, g_crop: np.ndarray, scheme: LabelScheme
) -> Iterator[dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int, int], tuple | None]]]:
    """Region name -> (prediction mask, GT mask, (|P n G|, |P|, |G|), extents) of a
    cropped case, in one pass over both label maps (in the prediction's memory order;
    the masks are C-ordered whatever the maps' order). ``extents`` (3-D only, else None)
    are the masks' row extents ``((first, last) of pred, (first, last) of GT)``, which
    let the lesion-wise analysis skip empty rows.

    A context manager: the masks live in reused zeroed buffers
    (:mod:`.metrics.buffers`) and are valid inside the ``with`` block only; on leaving
    it, exactly the rows written are cleared again.

    Raises:
        ValueError: a label value the scheme does not define (named, with the allowed ones).
    """
    names = list(scheme.regions)
    top = max(max(scheme.values), 0)
    bits = np.full(top + 1, -1, dtype=np.int64)
    bits[list(v for v in scheme.values if v >= 0)] = 0
    for r, name in enumerate(names):
        for v in scheme.regions[name]:
            bits[v] |= 1 << r
    fortran = p_crop.ndim == 3 and p_crop.strides[0] < p_crop.strides[-1]  # e.g. NIfTI arrays
    view = (lambda a: a.T) if fortran else (lambda a: a if a.ndim == 3 else a[..., None])
    shape = view(p_crop).shape[::-1] if fortran else view(p_crop).shape
    n = len(names)
    pm = zeroed_buffer("pred_masks", (n,) + shape, np.uint8)
    gm = zeroed_buffer("gt_masks", (n,) + shape, np.uint8)
    first = np.full((2, n) + shape[:2], shape[2], dtype=np.int64)  # (pred / GT, region, X, Y)
    last = np.full((2, n) + shape[:2], -1, dtype=np.int64)
    try:
        counts, bad = kernels.region_masks(view(p_crop), view(g_crop), bits, fortran, pm, gm, first, last)
        if bad.any():
            for which, seg in (("pred", p_crop), ("gt", g_crop)):
                unknown = [v for v in present_values(seg) if v not in scheme.labels]
                if unknown:
                    raise ValueError(
                        f"{which} holds label values {unknown} that scheme "
                        f"{scheme.name!r} does not define (allowed: "
                        f"{list(scheme.values)}); choose the matching scheme."
                    )
        three_d = p_crop.ndim == 3
        back = (lambda a: a) if three_d else (lambda a: a[..., 0])
        yield {
            name: (
                back(pm[r]).view(bool),
                back(gm[r]).view(bool),
                tuple(int(c) for c in counts[r]),
                ((first[0, r], last[0, r]), (first[1, r], last[1, r])) if three_d else None,
            )
            for r, name in enumerate(names)
        }
    finally:  # every 1 written lies within its row's recorded extent
        clear_rows(pm, first[0], last[0])
        clear_rows(gm, first[1], last[1])


_ANNOUNCED = False


def kernels_cached() -> bool:
    """Whether numba has compiled the evaluation kernels before (its cache index files,
    ``*.nbi``, beside the metric modules or under ``NUMBA_CACHE_DIR``)."""
    places = [Path(kernels.__file__).parent / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        places.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    return any(next(p.rglob("kernels.*.nbi"), None) is not None for p in places if p.is_dir())


def announce_compilation() -> None:
    """On the first evaluation in a process, say on stderr that the compiled kernels
    are being built when numba has no cache of them yet (about 15 s, once per install)."""
    global _ANNOUNCED
    if _ANNOUNCED:
        return
    _ANNOUNCED = True
    if not kernels_cached():
        print("compiling the evaluation kernels (once per installation, about 15 s) ...", file=sys.stderr, flush=True)


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    scheme: LabelScheme | str,
    metrics: Sequence[str] | str | None = None,
    challenge: str | LesionWiseParams = "GLI",
) -> tuple[list[dict], list[dict]]:
    """Evaluate one case on every region of its label scheme.

    Args:
        pred, gt: raw label maps in the dataset's convention (e.g. {0,1,2,4} for
            BraTS 2017-2021), same shape (X, Y[, Z]), integer (or integral float).
        spacing: voxel size in mm per axis (from the GT header).
        scheme: :class:`LabelScheme` or its name; defines the regions.
        metrics: names from :data:`METRICS` (list or comma-separated); None = all that
            apply to the scheme.
        challenge: lesion-wise preset ("GLI", "SSA", "MEN", "PED", "MET") or
            :class:`LesionWiseParams` (custom d, tau).
    Returns:
        (region_rows, lesion_rows). ``region_rows``: one dict per region with key
        ``region`` and one key per metric, all finite. ``lesion_rows`` (only when a
        lesion-wise metric is requested): one dict per GT lesion and per FP component
        with keys region, lesion_id, kind ("gt"/"fp"), volume_mm3, counted, dice, hd95,
        matched_pred_ids (";"-joined labels of the matched predicted components).
    Raises:
        ValueError: shape mismatch, label values outside the scheme, bad spacing,
            unknown metric or challenge.
    """
    announce_compilation()
    if isinstance(scheme, str):
        scheme = get_label_scheme(scheme)
    params = challenge if isinstance(challenge, LesionWiseParams) else challenge_params(challenge)
    names = resolve_metrics(metrics, scheme)
    pred = as_label_map(pred, "pred")
    gt = as_label_map(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred shape {pred.shape} differs from gt shape {gt.shape}; predict on the full, uncropped case grid."
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"label maps must be 2-D or 3-D, got shape {pred.shape}.")
    spacing = check_spacing(spacing, pred.ndim)

    # Crop once to the foreground of both maps (+ margin so that GT dilation and the
    # padded surface extraction see exactly what they would on the full grid).
    box = union_bounding_box(pred, gt)
    if box is None:
        crop = tuple(slice(0, 0) for _ in pred.shape)
    else:
        crop = box_slices(*box, pred.shape, margin=params.dilation + 1)
    p_crop, g_crop = pred[crop], gt[crop]
    need_lesions = any(METRICS[n].lesion_wise for n in names)
    region_rows: list[dict] = []
    lesion_rows: list[dict] = []
    with _region_masks(p_crop, g_crop, scheme) as masks:
        for region, (p_mask, g_mask, counts, extents) in masks.items():
            pair = RegionPair(p_mask, g_mask, spacing, int(pred.size), params, need_lesions, counts, extents)
            region_rows.append(_region_row(region, pair, names))
            if need_lesions:
                lesion_rows.extend(_lesion_rows(region, pair))
    return region_rows, lesion_rows


def _region_row(region: str, pair: RegionPair, names: list[str]) -> dict:
    """One region's row: ``region`` and each metric of ``names``.

    Raises:
        RuntimeError: a metric gave a non-finite value (a broken invariant, never expected).
    """
    row: dict = {"region": region}
    for name in names:
        value = float(METRICS[name].compute(pair))
        if not np.isfinite(value):
            raise RuntimeError(f"metric {name!r} gave {value} for region {region}")
        row[name] = int(value) if name in ("tp", "fn", "fp") else value
    return row


def _lesion_rows(region: str, pair: RegionPair) -> list[dict]:
    """One row per GT lesion and per FP component of a region."""
    return [
        {
            "region": region,
            "lesion_id": rec.lesion_id,
            "kind": rec.kind,
            "volume_mm3": rec.volume_mm3,
            "counted": rec.counted,
            "dice": rec.dice,
            "hd95": rec.hd95,
            "matched_pred_ids": ";".join(str(m) for m in rec.matched),
        }
        for rec in pair.lesions().lesions
    ]
