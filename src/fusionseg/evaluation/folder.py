"""Folder evaluation: match predictions to ground truth by case id, evaluate every
pair (optionally in parallel processes) with :func:`fusionseg.evaluation.evaluate.evaluate_case`,
and write ``metrics_per_case.csv``, ``metrics_per_lesion.csv`` and ``summary.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from fusionseg.constants import HD95_PENALTY_MM, LABEL_SCHEMES, LabelScheme, describe_labels, get_label_scheme
from fusionseg.data.problems import Problem, affine_problem, label_problems, raise_problems, shape_problem
from fusionseg.errors import DataError
from fusionseg.evaluation.aggregate import BOOTSTRAP_SEED, N_BOOTSTRAP, summarize
from fusionseg.evaluation.evaluate import as_label_map, evaluate_case, present_values, resolve_metrics
from fusionseg.evaluation.metrics.lesionwise import LesionWiseParams, challenge_params

PER_CASE_CSV = "metrics_per_case.csv"
PER_LESION_CSV = "metrics_per_lesion.csv"
SUMMARY_JSON = "summary.json"


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _label_files(folder: Path) -> dict[str, Path]:
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith(".")
    )
    return {_case_id(p): p for p in files}


def _decode(path: Path) -> tuple[np.ndarray, object]:
    """(voxel data in the file's dtype, trailing singleton axes dropped; the image)."""
    from fusionseg.data.io import load_nifti

    img = load_nifti(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise DataError(
            f"cannot decode voxel data ({exc}).", path, "the file is truncated or corrupt: re-export it."
        ) from exc
    return data.reshape(_grid_shape(data.shape)), img


def _read_labels(path: Path):
    """(labels, spacing) of a label map (integer dtype)."""
    from fusionseg.data.io import voxel_spacing

    data, img = _decode(path)
    try:
        data = as_label_map(data, "label map")
    except ValueError as exc:
        raise DataError(str(exc), path, "write integer label maps.") from exc
    return data, voxel_spacing(img)[: data.ndim]


def _infer_scheme(gt_files: Sequence[Path]) -> LabelScheme:
    """Scheme from the label values of GT maps: 4 -> brats2017, 3 -> brats2023,
    only {0, 1} -> petct. Stops at the first decisive file."""
    seen: set[int] = set()
    for path in gt_files:
        data, _ = _read_labels(path)
        seen.update(present_values(data))
        if 4 in seen:
            return LABEL_SCHEMES["brats2017"]
        if 3 in seen:
            return LABEL_SCHEMES["brats2023"]
    if seen <= {0, 1}:
        return LABEL_SCHEMES["petct"]
    raise DataError(
        f"cannot infer the label scheme from the GT label values {sorted(seen)}.",
        gt_files[0].parent if gt_files else None,
        f"pass --scheme (one of {sorted(LABEL_SCHEMES)}).",
    )


def _gt_cases(gt: Path, scheme: LabelScheme | str | None) -> tuple[dict[str, Path], LabelScheme, str]:
    """GT label files by case id, the label scheme and where the scheme came from."""
    if isinstance(scheme, str):
        try:
            scheme = get_label_scheme(scheme)
        except KeyError:
            raise DataError(
                f"unknown label scheme {scheme!r}.", None, f"use one of {', '.join(sorted(LABEL_SCHEMES))}."
            ) from None
    given = "given (--scheme)"
    if not gt.exists():
        raise DataError("GT folder not found.", gt, "give a dataset folder or a folder of <case>.nii.gz label maps.")
    if gt.is_dir() and _label_files(gt):  # a folder of <case>.nii.gz label maps
        files = _label_files(gt)
        if scheme is not None:
            return files, scheme, given
        return files, _infer_scheme(list(files.values())), "inferred from the GT label values"
    from fusionseg.data.cases import discover

    # the scheme (an object, perhaps not a registered one) replaces the layout's
    # default here: discover() takes registered scheme names only
    dataset = discover(gt)
    files = {c.case_id: Path(c.label) for c in dataset.labelled}
    if not files:
        raise DataError("the dataset has no labelled cases.", gt, "point GT at labelled training data.")
    if scheme is not None:
        return files, scheme, given
    return files, dataset.scheme, f"the {dataset.format} dataset layout"


def _prediction_scheme(pred_dir: Path, gt_scheme: LabelScheme, gt_source: str) -> tuple[LabelScheme, str]:
    """The predictions' label scheme and its source: the one ``fusionseg predict``
    recorded in ``label_convention.json`` (it must be the GT's), else assumed to be
    the GT's.

    Raises:
        DataError: the recorded convention differs from the GT's, or is unreadable.
    """
    from fusionseg.data.io import LABEL_CONVENTION_JSON, read_label_convention

    if not pred_dir.is_dir():
        return gt_scheme, "assumed: the ground truth's"
    recorded = read_label_convention(pred_dir)
    if recorded is None:
        return gt_scheme, f"assumed: the ground truth's (no {LABEL_CONVENTION_JSON})"
    if recorded.labels != gt_scheme.labels:
        raise DataError(
            f"the predictions are in the {recorded.name} label convention ({describe_labels(recorded)}; "
            f"{LABEL_CONVENTION_JSON}) but the ground truth is {gt_scheme.name} "
            f"({describe_labels(gt_scheme)}; {gt_source}).",
            pred_dir,
            "predict again with `fusionseg predict --labels dataset` on the ground truth's dataset "
            "folder (writes its convention), or pass --scheme if the ground truth's scheme is wrong.",
        )
    return recorded, f"recorded by fusionseg predict in {LABEL_CONVENTION_JSON}"


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
        raise DataError(
            "no <case>.nii.gz predictions found.", pred_dir, "write one label map per case named <case>.nii.gz."
        )
    extra = sorted(set(preds) - set(gt_files))
    if extra:
        shown = [preds[c].name for c in extra[:10]]
        more = f" and {len(extra) - 10} more" if len(extra) > 10 else ""
        raise DataError(
            f"unmatched cases: predictions without a GT case: {shown}{more} "
            f"(GT case ids look like {sorted(gt_files)[:3]}).",
            pred_dir,
            "name each prediction <case>.nii.gz after its GT case id.",
        )
    unpredicted = sorted(set(gt_files) - set(preds))
    return [(c, preds[c], gt_files[c]) for c in sorted(preds)], unpredicted


#: How to repair a label map whose values are outside the label scheme.
_UNKNOWN_LABELS_FIX = (
    "check the label convention: --scheme names the ground truth's; predictions written by "
    "`fusionseg predict --labels dataset` use the GT dataset's."
)


def check_pairs(pairs: Sequence[tuple[str, Path, Path]], pred_dir: Path) -> None:
    """The grid checks of ``fusionseg data check`` for every (case, prediction, GT)
    pair, from the headers only (no voxel data decoded), before any case is scored:
    each file readable, the prediction's shape and affine those of its GT.

    Raises:
        DataError: listing every failing pair (file, problem, fix).
    """
    from fusionseg.data.io import load_nifti

    errors: list[Problem] = []
    for case_id, pred_path, gt_path in pairs:
        try:
            gt_img, pred_img = load_nifti(gt_path), load_nifti(pred_path)
        except DataError as exc:
            errors.append(Problem(case_id, str(exc.file), exc.message, exc.fix or "re-export the file."))
            continue
        gt_shape = _grid_shape(gt_img.shape)
        problem = shape_problem(
            case_id,
            "prediction",
            str(pred_path),
            _grid_shape(pred_img.shape),
            gt_shape,
            f"the ground truth ({gt_path})",
            "predict on the full, uncropped GT grid.",
        ) or affine_problem(
            case_id,
            "prediction",
            str(pred_path),
            pred_img.affine,
            gt_img.affine,
            f"the ground truth ({gt_path})",
            "write predictions on the GT's grid with its affine (fusionseg predict copies the "
            "input image's header), or resample them onto it.",
        )
        if problem is not None:
            errors.append(problem)
    raise_problems(errors, pred_dir, "evaluation", "repair or re-predict those cases; nothing was scored.")


def _grid_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    return shape[:3] if len(shape) > 3 and all(n == 1 for n in shape[3:]) else shape


def _evaluate_files(
    case_id: str, pred_path: Path, gt_path: Path, scheme: LabelScheme, metrics: list[str], params: LesionWiseParams
) -> tuple[str, list[dict], list[dict]]:
    """Worker: load one pair (grids checked by :func:`check_pairs`), check both label
    maps as ``fusionseg data check`` does, and evaluate it (module level so processes
    can pickle it)."""
    from fusionseg.data.io import voxel_spacing

    (gt_raw, gt_img), (pred_raw, _) = _decode(gt_path), _decode(pred_path)
    errors: list[Problem] = []
    for name, path, raw in (("ground truth", gt_path, gt_raw), ("prediction", pred_path, pred_raw)):
        problems, _ = label_problems(
            case_id, name, str(path), raw, scheme, lambda _: _UNKNOWN_LABELS_FIX, empty_is_warning=False
        )
        errors += problems
    raise_problems(errors, pred_path.parent, "evaluation", "repair or re-predict that case; nothing was written.")
    gt, pred = as_label_map(gt_raw, "ground truth"), as_label_map(pred_raw, "prediction")
    spacing = voxel_spacing(gt_img)[: gt.ndim]
    try:
        rows, lesions = evaluate_case(pred, gt, spacing, scheme, metrics, params)
    except ValueError as exc:
        raise DataError(f"{exc} (GT: {gt_path})", pred_path, _UNKNOWN_LABELS_FIX) from exc
    for r in rows:
        r["case"] = case_id
    for r in lesions:
        r["case"] = case_id
    return case_id, rows, lesions


def evaluate_folder(
    pred_dir: str | Path,
    gt: str | Path,
    output_dir: str | Path | None = None,
    challenge: str | LesionWiseParams = "GLI",
    metrics: Sequence[str] | str | None = None,
    workers: int = 1,
    scheme: LabelScheme | str | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
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
        scheme: label scheme or name of the GT (replaces the dataset layout's); None =
            from the dataset / inferred. Predictions are read in the same convention:
            when ``pred_dir`` holds the ``label_convention.json`` that ``fusionseg
            predict`` writes, it must name the same labels.
        progress: show a rich progress bar.
    Returns:
        (per_case, per_lesion, summary): tidy DataFrames (columns ``case``, ``region``,
        metric columns / lesion columns) and the summary dict written to summary.json
        (its ``conventions`` name the label scheme of GT and predictions and where
        each came from).
    Raises:
        DataError: missing folders, a prediction without a GT case (names the files;
            GT cases without a prediction are skipped and listed in the summary); a
            prediction whose shape or affine differs from its GT's (every pair is checked
            from the headers before any case is scored, :func:`check_pairs`); NaN,
            non-integer or out-of-scheme labels in either map (the label checks of
            ``fusionseg data check``, :func:`fusionseg.data.problems.label_problems`);
            predictions recorded in another label convention than the GT's; an unknown
            scheme name; unreadable files. Nothing is written when one is raised.
        ValueError: unknown metric or challenge.
    """
    pred_dir, gt = Path(pred_dir), Path(gt)
    params = challenge if isinstance(challenge, LesionWiseParams) else challenge_params(challenge)
    gt_files, scheme_obj, gt_source = _gt_cases(gt, scheme)
    _, pred_source = _prediction_scheme(pred_dir, scheme_obj, gt_source)
    names = resolve_metrics(metrics, scheme_obj)
    pairs, unpredicted = _match(pred_dir, gt_files)
    check_pairs(pairs, pred_dir)
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
                futures = [
                    pool.submit(_evaluate_files, c, p, g, scheme_obj, names, params) for c, p, g in pairs[len(here) :]
                ]
                for fut in as_completed(futures):
                    case_id, rows, les = fut.result()
                    results[case_id] = (rows, les)
                    bar.update(task, advance=1, info=case_id)

    region_rows = [r for c in sorted(results) for r in results[c][0]]
    lesion_rows = [r for c in sorted(results) for r in results[c][1]]
    per_case = pd.DataFrame(region_rows, columns=["case", "region", *names])
    lesion_cols = ["case", "region", "lesion_id", "kind", "volume_mm3", "counted", "dice", "hd95", "matched_pred_ids"]
    per_lesion = pd.DataFrame(lesion_rows, columns=lesion_cols)
    summary = build_summary(
        per_case, names, params, scheme_obj, gt_source, pred_source, n_cases=len(results), unpredicted=unpredicted
    )
    if output_dir is not None:
        write_results(Path(output_dir), per_case, per_lesion, summary)
    return per_case, per_lesion, summary


def conventions(
    params: LesionWiseParams, scheme: LabelScheme, names: Sequence[str], gt_source: str, pred_source: str
) -> dict:
    """The evaluation conventions written into every ``summary.json`` (EVALUATION.md):
    lesion-wise parameters, HD95 penalty, empty-mask rules, connectivity, spacing,
    label scheme and where the GT and prediction labels came from, metric names and
    the bootstrap of the confidence intervals."""
    return {
        "challenge": params.challenge,
        "dilation_voxels": params.dilation,
        "volume_threshold_mm3": params.volume_threshold_mm3,
        "hd95_penalty_mm": HD95_PENALTY_MM,
        "hd95": "surface-area weighted, max of the two directed 95th percentiles (BraTS 2023 / DeepMind)",
        "asd": "symmetric, pooled boundary distances of both directions (MONAI)",
        "empty_masks": "Dice 1 / HD95 0 / ASD 0 when both empty; HD95 and ASD 374 when one is empty; "
        "lesion-wise 0/0 -> Dice 1, HD95 0; FPV 0 when the prediction is empty and FNV 0 when the GT is empty "
        "(else the whole predicted / GT volume); Dice of an empty-GT case counts as 1 or 0 (autoPET instead "
        "leaves GT-empty cases out of its mean Dice)",
        "connectivity": "26 (lesion-wise), 18 (fpv/fnv); GT dilation with the 18-neighbourhood",
        "spacing_source": "GT NIfTI header (pixdim)",
        "label_scheme": scheme.name,
        "labels": {str(v): scheme.labels[v] for v in scheme.values},
        "gt_labels": {"scheme": scheme.name, "source": gt_source},
        "prediction_labels": {"scheme": scheme.name, "source": pred_source},
        "regions": {k: list(v) for k, v in scheme.regions.items()},
        "metrics": list(names),
        "bootstrap": {
            "statistic": "mean",
            "resamples": N_BOOTSTRAP,
            "seed": BOOTSTRAP_SEED,
            "method": "percentile, cases resampled with replacement",
        },
    }


def build_summary(
    per_case: pd.DataFrame,
    names: Sequence[str],
    params: LesionWiseParams,
    scheme: LabelScheme,
    gt_source: str,
    pred_source: str,
    n_cases: int,
    unpredicted: Sequence[str] = (),
    **extra,
) -> dict:
    """The one ``summary.json`` schema, written by ``fusionseg evaluate`` and by every
    run and fold: ``n_cases``, ``gt_cases_without_prediction``, ``regions`` (per region
    and metric: n, mean, sd, median, 95 % bootstrap CI; :func:`summarize`),
    ``conventions`` (:func:`conventions`), then ``extra`` keys (runs: name, strategy,
    folds, wall time, ...)."""
    return {
        "n_cases": int(n_cases),
        "gt_cases_without_prediction": list(unpredicted),
        "regions": summarize(per_case, list(names)),
        "conventions": conventions(params, scheme, names, gt_source, pred_source),
        **extra,
    }


def read_lesion_table(path: Path) -> pd.DataFrame:
    """Read a ``metrics_per_lesion.csv`` back as it was written: ``matched_pred_ids``
    (";"-joined component labels, "" when unmatched) stays text. Read plainly, a column
    of single ids and blanks parses as float (1 -> 1.0), and a run gathered from folds
    read back (a resumed run, a study row) would write other bytes than one that kept
    its folds in memory."""
    return pd.read_csv(path, dtype={"matched_pred_ids": str})


def write_results(output_dir: Path, per_case: pd.DataFrame, per_lesion: pd.DataFrame, summary: dict) -> None:
    """Write the three result files atomically into ``output_dir``."""
    from fusionseg.data.io import atomic_path

    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / PER_CASE_CSV) as tmp:
        per_case.to_csv(tmp, index=False)
    with atomic_path(output_dir / PER_LESION_CSV) as tmp:
        per_lesion.to_csv(tmp, index=False)
    with atomic_path(output_dir / SUMMARY_JSON) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + os.linesep)
