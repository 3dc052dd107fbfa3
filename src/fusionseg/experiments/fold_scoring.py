"""How a fold's predictions are scored: the ground truth, the evaluation scope, and the
post-processing chosen on the fold's validation cases.

The fold job (:mod:`fusionseg.experiments.jobs`) predicts validation and test cases as
whole volumes; this module decides what of them is evaluated
(``evaluation.scope``: the whole volume or the slab of the sampled slices) and which
post-processing setting the test cases get (``postprocess.method``: none, fixed, or the
candidate with the best mean score on the validation cases, nnU-Net's empirical choice).
The validation score of the chosen setting (:func:`validation_after_inference`) scores
the whole prediction path on validation cases, inference options included, so a study
can choose inference settings (such as test-time mirroring) without its test cases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from fusionseg.config import ExperimentConfig
from fusionseg.data.cases import Case
from fusionseg.data.io import load_nifti, read_array, voxel_spacing
from fusionseg.data.preprocess import PreparedCase
from fusionseg.data.sampling import select_slices
from fusionseg.errors import ConfigError
from fusionseg.inference.inferers import InferOptions, get_inferer
from fusionseg.inference.postprocess import (
    Postprocess,
    candidate_settings,
    choose_postprocess,
    inner_settings,
    nested_regions,
)

if TYPE_CHECKING:  # the fold job's context; jobs.py imports this module
    from fusionseg.experiments.jobs import RunContext

console = Console()


def ground_truth(case: Case) -> tuple[np.ndarray, tuple[float, ...]]:
    """The case's label map (int64, its file's grid) and voxel spacing in mm.

    Raises:
        DataError: the label file is missing or unreadable (named in the message).
    """
    gt_img = load_nifti(case.label)
    return read_array(gt_img, case.label, dtype=np.int64), voxel_spacing(gt_img)


def slab_slices(case: PreparedCase, mode: str, central_k: int) -> range:
    """Axial indices (cropped grid) of the slab spanned by the slices ``mode`` selects
    in ``case`` (``evaluation.scope: sampled_slices``)."""
    chosen = select_slices(case, "all" if mode == "patch" else mode, central_k)
    return range(min(chosen), max(chosen) + 1)


def sampled_slab(case: PreparedCase, mode: str, central_k: int) -> tuple[slice, ...]:
    """Index window (original grid) of :func:`slab_slices`."""
    slab = slab_slices(case, mode, central_k)
    axis, offset = case.axial_axis, case.bbox[case.axial_axis][0]
    window = [slice(None)] * 3
    window[axis] = slice(offset + slab.start, offset + slab.stop)
    return tuple(window)


def in_scope(
    cfg: ExperimentConfig, case: PreparedCase, pred: np.ndarray, gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``gt`` cut to what ``evaluation.scope`` evaluates (the whole volume,
    or the slab of the sampled slices)."""
    if cfg.evaluation.scope != "sampled_slices":
        return pred, gt
    window = sampled_slab(case, cfg.sampling.mode, cfg.sampling.central_k)
    return pred[window], gt[window]


def decide_postprocess(
    cfg: ExperimentConfig, model, fold: dict, context: RunContext, divisor: int
) -> tuple[Postprocess, dict]:
    """The fold's post-processing: none, the config's fixed setting, or the candidate
    that scores best on the fold's validation cases predicted as whole volumes (with
    the evaluation scope of the test cases). Returns (setting, record for fit.json).

    Raises:
        ConfigError: ``method: validation`` without validation cases.
    """
    pc, scheme = cfg.postprocess, context.dataset.scheme
    if pc.method == "none":
        return Postprocess(), {"method": "none", "setting": Postprocess().to_dict()}
    if pc.method == "fixed":
        setting = Postprocess(pc.min_volume_mm3, pc.keep_largest, pc.inner_min_volume_mm3)
        return setting, {"method": "fixed", "setting": setting.to_dict()}
    if not fold["val"]:
        raise ConfigError(
            "postprocess.method: validation needs validation cases; set "
            "split.val_fraction > 0 or use postprocess.method: fixed"
        )
    infer, cases, options = get_inferer(cfg.spatial_dims), [], InferOptions.from_config(cfg)
    for case_id in fold["val"]:
        gt, spacing = ground_truth(context.dataset.case(case_id))
        pred = infer([model], context.prepared[case_id], context.modalities, scheme, divisor, options)
        cases.append((*in_scope(cfg, context.prepared[case_id], pred, gt), spacing))
    params = cfg.evaluation.lesion_params()
    setting, table = choose_postprocess(
        cases,
        scheme,
        candidate_settings(pc.candidates_mm3, pc.try_keep_largest),
        criterion=pc.criterion,
        challenge=params,
    )
    if pc.inner_candidates_mm3 and nested_regions(scheme):
        # second stage, given the whole-tumour setting: nested-region (TC/ET) specks
        setting, inner = choose_postprocess(
            cases, scheme, inner_settings(setting, pc.inner_candidates_mm3), criterion=pc.criterion, challenge=params
        )
        table += inner[1:]
    console.print(f"fold {fold['fold']}: post-processing chosen on {len(cases)} validation cases: {setting.label()}")
    return setting, {
        "method": "validation",
        "criterion": pc.criterion,
        "setting": setting.to_dict(),
        "validation_cases": list(fold["val"]),
        "candidates": table,
    }


def validation_after_inference(record: dict | None) -> tuple[float, str] | None:
    """(score, criterion) of the chosen post-processing on the fold's validation cases
    predicted as whole volumes (``fit.json``'s ``postprocess`` record of
    :func:`decide_postprocess`), or None when the setting was not chosen on validation
    cases (``none`` / ``fixed``, a rule, or a record from before the table existed).

    The chosen setting has the highest score of the table (the second, nested-region
    stage starts from the first stage's choice), so this is the table's maximum: per
    case Dice (``dice``, mean over the scheme's regions and the validation cases) or
    lesion-wise Dice (``lesion_dice``).
    """
    if not record or record.get("method") != "validation" or not record.get("candidates"):
        return None
    criterion = record.get("criterion", "dice")
    scores = [row[f"val_{criterion}"] for row in record["candidates"] if f"val_{criterion}" in row]
    return (float(max(scores)), criterion) if scores else None
