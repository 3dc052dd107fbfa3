"""Per-case and folder evaluation with a metric registry.

``evaluate_case`` turns one (prediction, ground truth) pair of raw label maps into one
row per evaluation region (WT/TC/ET, or the PET/CT tumour) and, when lesion-wise
metrics are requested, one row per GT lesion and per false-positive component.
``evaluate_folder`` does this for every case of a folder (optionally in parallel),
and writes ``metrics_per_case.csv``, ``metrics_per_lesion.csv`` and ``summary.json``.

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

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusionseg.constants import HD95_PENALTY_MM, LABEL_SCHEMES, LabelScheme, get_label_scheme
from fusionseg.errors import DataError
from fusionseg.evaluation.aggregate import BOOTSTRAP_SEED, N_BOOTSTRAP, summarize
from fusionseg.evaluation.metrics import kernels
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

PER_CASE_CSV = "metrics_per_case.csv"
PER_LESION_CSV = "metrics_per_lesion.csv"
SUMMARY_JSON = "summary.json"


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
    """

    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, ...]
    n_total: int
    params: LesionWiseParams
    need_lesions: bool = False
    known_counts: tuple[int, int, int] | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.known_counts is not None:
            self._cache["counts"] = tuple(int(c) for c in self.known_counts)

    def counts(self) -> tuple[int, int, int]:
        """(|P n G|, |P|, |G|)."""
        if "counts" not in self._cache:
            self._cache["counts"] = (int(np.count_nonzero(self.pred & self.gt)),
                                     int(np.count_nonzero(self.pred)), int(np.count_nonzero(self.gt)))
        return self._cache["counts"]

    def dice(self) -> float:
        return dice_from_counts(*self.counts())

    def hd95(self) -> float:
        if "hd95" not in self._cache and self.need_lesions:
            self._joint()
        if "hd95" not in self._cache:
            self._cache["hd95"] = robust_hausdorff_surfaces(
                mask_surface(self.pred, self.spacing), mask_surface(self.gt, self.spacing),
                95.0, HD95_PENALTY_MM)
        return self._cache["hd95"]

    def _joint(self) -> None:
        hd, result = hd95_and_lesion_wise(self.pred, self.gt, self.spacing, self.params.dilation,
                                          self.params.volume_threshold_mm3, HD95_PENALTY_MM)
        self._cache["hd95"] = hd
        self._cache["lesions"] = result

    def lesions(self) -> LesionWiseResult:
        if "lesions" not in self._cache and self.need_lesions and "hd95" not in self._cache:
            self._joint()
        if "lesions" not in self._cache:
            self._cache["lesions"] = lesion_wise(
                self.pred, self.gt, self.spacing, self.params.dilation,
                self.params.volume_threshold_mm3, HD95_PENALTY_MM,
                full_image=(self.dice(), self.hd95()))
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
    MetricSpec("hd95", RegionPair.hd95, "whole-image HD95 in mm, BraTS/DeepMind (one empty -> 374)"),
    MetricSpec("lesion_dice", lambda r: r.lesions().dice, "BraTS 2023 lesion-wise Dice", True),
    MetricSpec("lesion_hd95", lambda r: r.lesions().hd95, "BraTS 2023 lesion-wise HD95 in mm", True),
    MetricSpec("tp", lambda r: r.lesions().tp, "true-positive GT lesions (volume > tau)", True),
    MetricSpec("fn", lambda r: r.lesions().fn, "missed GT lesions (volume > tau)", True),
    MetricSpec("fp", lambda r: r.lesions().fp, "predicted components matching no GT lesion", True),
    MetricSpec("sensitivity", lambda r: r.sens_spec()[0], "voxel sensitivity"),
    MetricSpec("specificity", lambda r: r.sens_spec()[1], "voxel specificity"),
    MetricSpec("asd", lambda r: average_surface_distance(r.pred, r.gt, r.spacing),
               "symmetric average surface distance in mm (MONAI)"),
    MetricSpec("fpv_ml", lambda r: false_positive_volume(r.pred, r.gt, r.spacing),
               "false-positive volume in mL (autoPET)", single_class_only=True),
    MetricSpec("fnv_ml", lambda r: false_negative_volume(r.pred, r.gt, r.spacing),
               "false-negative volume in mL (autoPET)", single_class_only=True),
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
        raise ValueError(f"metric(s) {wrong} are defined for single-class (PET/CT) schemes only, "
                         f"not {scheme.name!r}")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------ one case
def _as_label_map(seg: np.ndarray, name: str) -> np.ndarray:
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


def _present_values(seg: np.ndarray) -> list[int]:
    if seg.size == 0:
        return []
    if seg.dtype.kind == "i" and seg.min() < 0:
        return sorted(int(v) for v in np.unique(seg))
    counts = np.bincount(seg.ravel().astype(np.intp, copy=False))
    return [int(v) for v in np.flatnonzero(counts)]


def _region_masks(p_crop: np.ndarray, g_crop: np.ndarray, scheme: LabelScheme
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int, int]]]:
    """Region name -> (prediction mask, GT mask, (|P n G|, |P|, |G|)) of a cropped case,
    in one pass over both label maps (in the prediction's memory order; the masks are
    C-ordered whatever the maps' order).

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
    pm, gm, counts, bad = kernels.region_masks(view(p_crop), view(g_crop), bits, len(names), fortran)
    if bad.any():
        for which, seg in (("pred", p_crop), ("gt", g_crop)):
            unknown = [v for v in _present_values(seg) if v not in scheme.labels]
            if unknown:
                raise ValueError(f"{which} holds label values {unknown} that scheme "
                                 f"{scheme.name!r} does not define (allowed: "
                                 f"{list(scheme.values)}); choose the matching scheme.")
    back = (lambda a: a) if p_crop.ndim == 3 else (lambda a: a[..., 0])
    return {name: (back(pm[r]).view(bool), back(gm[r]).view(bool),
                   tuple(int(c) for c in counts[r])) for r, name in enumerate(names)}


def evaluate_case(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                  scheme: LabelScheme | str, metrics: Sequence[str] | str | None = None,
                  challenge: str | LesionWiseParams = "GLI") -> tuple[list[dict], list[dict]]:
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
    if isinstance(scheme, str):
        scheme = get_label_scheme(scheme)
    params = challenge if isinstance(challenge, LesionWiseParams) else challenge_params(challenge)
    names = resolve_metrics(metrics, scheme)
    pred = _as_label_map(pred, "pred")
    gt = _as_label_map(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}; "
                         "predict on the full, uncropped case grid.")
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
    masks = _region_masks(p_crop, g_crop, scheme)

    need_lesions = any(METRICS[n].lesion_wise for n in names)
    region_rows: list[dict] = []
    lesion_rows: list[dict] = []
    for region, (p_mask, g_mask, counts) in masks.items():
        pair = RegionPair(p_mask, g_mask, spacing, int(pred.size), params, need_lesions, counts)
        row: dict = {"region": region}
        for name in names:
            value = float(METRICS[name].compute(pair))
            if not np.isfinite(value):  # a broken invariant, never expected
                raise RuntimeError(f"metric {name!r} gave {value} for region {region}")
            row[name] = int(value) if name in ("tp", "fn", "fp") else value
        region_rows.append(row)
        if need_lesions:
            for rec in pair.lesions().lesions:
                lesion_rows.append({
                    "region": region, "lesion_id": rec.lesion_id, "kind": rec.kind,
                    "volume_mm3": rec.volume_mm3, "counted": rec.counted,
                    "dice": rec.dice, "hd95": rec.hd95,
                    "matched_pred_ids": ";".join(str(m) for m in rec.matched),
                })
    return region_rows, lesion_rows


# ------------------------------------------------------------------ files
def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _label_files(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith("."))
    return {_case_id(p): p for p in files}


def _read_labels(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    from fusionseg.data.io import load_nifti, voxel_spacing

    img = load_nifti(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise DataError(f"cannot decode voxel data ({exc}).", path,
                        "the file is truncated or corrupt: re-export it.") from exc
    if data.ndim > 3:
        data = np.squeeze(data)
    try:
        data = _as_label_map(data, "label map")
    except ValueError as exc:
        raise DataError(str(exc), path, "write integer label maps.") from exc
    return data, voxel_spacing(img)[: data.ndim]


def _infer_scheme(gt_files: Sequence[Path]) -> LabelScheme:
    """Scheme from the label values of GT maps: 4 -> brats2017, 3 -> brats2023,
    only {0, 1} -> petct. Stops at the first decisive file."""
    seen: set[int] = set()
    for path in gt_files:
        data, _ = _read_labels(path)
        seen.update(_present_values(data))
        if 4 in seen:
            return LABEL_SCHEMES["brats2017"]
        if 3 in seen:
            return LABEL_SCHEMES["brats2023"]
    if seen <= {0, 1}:
        return LABEL_SCHEMES["petct"]
    raise DataError(f"cannot infer the label scheme from the GT label values {sorted(seen)}.",
                    gt_files[0].parent if gt_files else None,
                    f"pass --scheme (one of {sorted(LABEL_SCHEMES)}).")


def _gt_cases(gt: Path, scheme: LabelScheme | str | None) -> tuple[dict[str, Path], LabelScheme]:
    """GT label files by case id and the label scheme."""
    if isinstance(scheme, str):
        scheme = get_label_scheme(scheme)
    if not gt.exists():
        raise DataError("GT folder not found.", gt, "give a dataset folder or a folder of <case>.nii.gz label maps.")
    if gt.is_dir() and _label_files(gt):  # a folder of <case>.nii.gz label maps
        files = _label_files(gt)
        return files, scheme if scheme is not None else _infer_scheme(list(files.values()))
    from fusionseg.data import cases as cases_module

    discover = getattr(cases_module, "discover", None)
    if discover is None:
        raise DataError("dataset discovery (fusionseg.data.cases.discover) is not available.", gt,
                        "give a folder of <case>.nii.gz label maps instead.")
    dataset = discover(gt, scheme=scheme) if scheme is not None else discover(gt)
    files = {c.case_id: Path(c.label) for c in dataset.labelled}
    if not files:
        raise DataError("the dataset has no labelled cases.", gt, "point GT at labelled training data.")
    return files, scheme if scheme is not None else dataset.scheme


def _match(pred_dir: Path, gt_files: dict[str, Path]) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair every prediction with its GT case.

    Returns (pairs, GT case ids without a prediction). Every prediction must have a GT
    case; GT cases without a prediction (e.g. a test split of a full dataset) are not
    evaluated and are listed in summary.json.
    """
    if not pred_dir.is_dir():
        raise DataError("prediction folder not found.", pred_dir, "give the folder holding <case>.nii.gz predictions.")
    preds = _label_files(pred_dir)
    if not preds:
        raise DataError("no <case>.nii.gz predictions found.", pred_dir, "write one label map per case named <case>.nii.gz.")
    extra = sorted(set(preds) - set(gt_files))
    if extra:
        shown = [preds[c].name for c in extra[:10]]
        more = f" and {len(extra) - 10} more" if len(extra) > 10 else ""
        raise DataError(f"unmatched cases: predictions without a GT case: {shown}{more} "
                        f"(GT case ids look like {sorted(gt_files)[:3]}).", pred_dir,
                        "name each prediction <case>.nii.gz after its GT case id.")
    unpredicted = sorted(set(gt_files) - set(preds))
    return [(c, preds[c], gt_files[c]) for c in sorted(preds)], unpredicted


def _evaluate_files(case_id: str, pred_path: Path, gt_path: Path, scheme: LabelScheme,
                    metrics: list[str], params: LesionWiseParams) -> tuple[str, list[dict], list[dict]]:
    """Worker: load one pair and evaluate it (module level so processes can pickle it)."""
    gt, spacing = _read_labels(gt_path)
    pred, _ = _read_labels(pred_path)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from the GT shape {gt.shape} ({gt_path}).",
                        pred_path, "predict on the full, uncropped GT grid.")
    try:
        rows, lesions = evaluate_case(pred, gt, spacing, scheme, metrics, params)
    except ValueError as exc:
        raise DataError(f"{exc} (GT: {gt_path})", pred_path, "check the label convention (--scheme).") from exc
    for r in rows:
        r["case"] = case_id
    for r in lesions:
        r["case"] = case_id
    return case_id, rows, lesions


def evaluate_folder(pred_dir: str | Path, gt: str | Path, output_dir: str | Path | None = None,
                    challenge: str | LesionWiseParams = "GLI", metrics: Sequence[str] | str | None = None,
                    workers: int = 1, scheme: LabelScheme | str | None = None,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Evaluate every prediction of a folder against its ground truth.

    Args:
        pred_dir: folder of ``<case>.nii.gz`` predicted label maps (dataset convention).
        gt: a dataset folder in a supported layout (found with
            ``fusionseg.data.cases.discover``) or a folder of ``<case>.nii.gz`` GT label
            maps (then ``scheme`` is given or inferred from label values: 4 present ->
            brats2017, 3 -> brats2023, only {0,1} -> petct).
        output_dir: where to write metrics_per_case.csv, metrics_per_lesion.csv and
            summary.json (atomically); None writes nothing.
        challenge: lesion-wise preset or :class:`LesionWiseParams`.
        metrics: metric names (see :data:`METRICS`); None = all that apply.
        workers: processes (cases run in parallel when > 1; results are identical).
        scheme: label scheme or name; None = from the dataset / inferred.
        progress: show a rich progress bar.
    Returns:
        (per_case, per_lesion, summary): tidy DataFrames (columns ``case``, ``region``,
        metric columns / lesion columns) and the summary dict written to summary.json.
    Raises:
        DataError: missing folders, a prediction without a GT case (names the files;
            GT cases without a prediction are skipped and listed in the summary), shape mismatch,
            labels outside the scheme, unreadable files.
        ValueError: unknown metric or challenge.
    """
    pred_dir, gt = Path(pred_dir), Path(gt)
    params = challenge if isinstance(challenge, LesionWiseParams) else challenge_params(challenge)
    gt_files, scheme_obj = _gt_cases(gt, scheme)
    names = resolve_metrics(metrics, scheme_obj)
    pairs, unpredicted = _match(pred_dir, gt_files)
    workers = max(1, int(workers))

    results: dict[str, tuple[list[dict], list[dict]]] = {}
    from fusionseg.progress import make_progress

    with make_progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluate", total=len(pairs), info="")
        # With several workers the first case still runs here: it compiles the metric
        # kernels once and fills numba's on-disk cache, which the workers then load.
        here = pairs if workers == 1 else pairs[:1]
        for case_id, p, g in here:
            _, rows, les = _evaluate_files(case_id, p, g, scheme_obj, names, params)
            results[case_id] = (rows, les)
            bar.update(task, advance=1, info=case_id)
        if len(pairs) > len(here):
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_evaluate_files, c, p, g, scheme_obj, names, params)
                           for c, p, g in pairs[len(here):]]
                for fut in as_completed(futures):
                    case_id, rows, les = fut.result()
                    results[case_id] = (rows, les)
                    bar.update(task, advance=1, info=case_id)

    region_rows = [r for c in sorted(results) for r in results[c][0]]
    lesion_rows = [r for c in sorted(results) for r in results[c][1]]
    per_case = pd.DataFrame(region_rows, columns=["case", "region", *names])
    lesion_cols = ["case", "region", "lesion_id", "kind", "volume_mm3", "counted", "dice", "hd95",
                   "matched_pred_ids"]
    per_lesion = pd.DataFrame(lesion_rows, columns=lesion_cols)
    summary = {
        "n_cases": len(results),
        "gt_cases_without_prediction": unpredicted,
        "regions": summarize(per_case, names),
        "conventions": {
            "challenge": params.challenge,
            "dilation_voxels": params.dilation,
            "volume_threshold_mm3": params.volume_threshold_mm3,
            "hd95_penalty_mm": HD95_PENALTY_MM,
            "hd95": "surface-area weighted, max of the two directed 95th percentiles (BraTS 2023 / DeepMind)",
            "asd": "symmetric, pooled boundary distances of both directions (MONAI)",
            "empty_masks": "Dice 1 / HD95 0 / ASD 0 when both empty; HD95 and ASD 374 when one is empty; "
                           "lesion-wise 0/0 -> Dice 1, HD95 0",
            "connectivity": "26 (lesion-wise), 18 (fpv/fnv); GT dilation with the 18-neighbourhood",
            "spacing_source": "GT NIfTI header (pixdim)",
            "label_scheme": scheme_obj.name,
            "regions": {k: list(v) for k, v in scheme_obj.regions.items()},
            "metrics": names,
            "bootstrap": {"statistic": "mean", "resamples": N_BOOTSTRAP, "seed": BOOTSTRAP_SEED,
                          "method": "percentile, cases resampled with replacement"},
        },
    }
    if output_dir is not None:
        write_results(Path(output_dir), per_case, per_lesion, summary)
    return per_case, per_lesion, summary


def write_results(output_dir: Path, per_case: pd.DataFrame, per_lesion: pd.DataFrame,
                  summary: dict) -> None:
    """Write the three result files atomically into ``output_dir``."""
    from fusionseg.data.io import atomic_path

    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / PER_CASE_CSV) as tmp:
        per_case.to_csv(tmp, index=False)
    with atomic_path(output_dir / PER_LESION_CSV) as tmp:
        per_lesion.to_csv(tmp, index=False)
    with atomic_path(output_dir / SUMMARY_JSON) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + os.linesep)
