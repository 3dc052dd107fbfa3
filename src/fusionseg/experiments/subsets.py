"""Every model scored on modality subsets (S1 Table 1): each test case predicted with
only some of its MRI sequences, the others simulated as absent
(``missing.simulate``: :mod:`fusionseg.strategies.missing`).

Per fold, ``fold_<k>/subsets/`` holds ``metrics_per_case.csv`` (case x subset x
region, the run's metrics) and ``summary.json`` (what the numbers depend on: the
subsets, the simulation, the evaluation and inference settings, the post-processing
the fold chose on its validation cases with every modality). A fold whose record
matches is read back; otherwise its model is loaded from ``best.ckpt`` (or taken from
memory right after training) and the subsets are predicted again. The run's and the
study's tables are built from these frames alone
(:func:`fusionseg.experiments.subset_report.write_subset_tables`).

The crop window and brain mask of a case come from all of its sequences; only the
network input changes with the subset (as the missing-modality papers evaluate).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import pandas as pd
from torch import nn

from fusionseg.config import ExperimentConfig
from fusionseg.constants import scheme_from_dict
from fusionseg.data.io import atomic_path
from fusionseg.data.preprocess import PreparedCase
from fusionseg.evaluation.evaluate import evaluate_case, resolve_metrics
from fusionseg.evaluation.folder import PER_CASE_CSV, SUMMARY_JSON
from fusionseg.experiments.fold_scoring import ground_truth, in_scope, slab_slices
from fusionseg.experiments.subset_report import parse_subsets, subset_name
from fusionseg.inference.inferers import InferOptions, get_inferer
from fusionseg.inference.postprocess import Postprocess
from fusionseg.progress import make_progress
from fusionseg.strategies.missing import WithSubset

SUBSETS_DIR = "subsets"


def subset_inputs(cfg: ExperimentConfig, modalities: Sequence[str], post: Postprocess) -> dict:
    """What a fold's subset metrics depend on after training."""
    from fusionseg.experiments.jobs import evaluation_inputs

    subsets = parse_subsets(cfg.evaluation.modality_subsets, modalities)
    return {
        "subsets": [subset_name(s) for s in subsets],
        "simulate": cfg.missing.simulate,
        "postprocess": post.to_dict(),
        **evaluation_inputs(cfg.postprocess, cfg.evaluation, cfg.inference),
    }


def read_fold_subsets(folder: Path, inputs: dict) -> pd.DataFrame | None:
    """A fold's subset metrics when its record matches ``inputs``, else None."""
    path = folder / SUBSETS_DIR / SUMMARY_JSON
    if not path.exists():
        return None
    try:
        if json.loads(path.read_text()).get("inputs") != json.loads(json.dumps(inputs)):
            return None
        return pd.read_csv(folder / SUBSETS_DIR / PER_CASE_CSV)
    except (OSError, ValueError):
        return None


def evaluated_part(cfg: ExperimentConfig, prepared: PreparedCase, post: Postprocess) -> PreparedCase:
    """The part of a case that must be predicted for its subset metrics: under
    ``evaluation.scope: sampled_slices`` a 2-D model predicts each slice on its own,
    so only the evaluated slab is predicted (the metrics are those of a whole-volume
    prediction cut to the slab) -- unless a post-processing step or resampling would
    see the rest of the volume."""
    if cfg.spatial_dims != 2 or cfg.evaluation.scope != "sampled_slices" or not post.is_identity or prepared.resampled:
        return prepared
    slab, axis = slab_slices(prepared, cfg.sampling.mode, cfg.sampling.central_k), prepared.axial_axis
    window = [slice(None)] * 3
    window[axis] = slice(slab.start, slab.stop)
    bbox = list(prepared.bbox)
    bbox[axis] = (prepared.bbox[axis][0] + slab.start, prepared.bbox[axis][0] + slab.stop)
    label = None if prepared.label is None else prepared.label[tuple(window)]
    image = prepared.image[(slice(None), *window)]
    return replace(prepared, image=image, label=label, bbox=tuple(bbox))


def _score_case(cfg: ExperimentConfig, model: nn.Module, case_id: str, subsets, context, post, divisor, advance):
    """Region rows of one test case predicted once per subset of ``subsets`` (its
    ground truth read and its evaluated part cut once); ``advance()`` after each."""
    scheme, modalities, whole = context.dataset.scheme, context.modalities, context.prepared[case_id]
    prepared = evaluated_part(cfg, whole, post)
    gt, spacing = ground_truth(context.dataset.case(case_id))
    infer, options = get_inferer(cfg.spatial_dims), InferOptions.from_config(cfg)
    params = cfg.evaluation.lesion_params()
    rows = []
    for subset in subsets:
        pred = post(infer([WithSubset(model, subset)], prepared, modalities, scheme, divisor, options), spacing, scheme)
        region_rows, _ = evaluate_case(
            *in_scope(cfg, whole, pred, gt), spacing, scheme, metrics=cfg.evaluation.metrics, challenge=params
        )
        rows += [{"case": case_id, "subset": subset_name(subset), **r} for r in region_rows]
        advance()
    return rows


def score_subsets(cfg: ExperimentConfig, model: nn.Module, fold: dict, context, post: Postprocess, divisor: int):
    """Per case x subset x region metrics of ``fold``'s test cases (a DataFrame with
    ``case``, ``fold``, ``subset``, ``region`` and the run's metrics)."""
    subsets = parse_subsets(cfg.evaluation.modality_subsets, context.modalities)
    rows = []
    with make_progress() as bar:
        task = bar.add_task(f"fold {fold['fold']} modality subsets", total=len(fold["test"]) * len(subsets), info="")
        for case_id in fold["test"]:
            rows += _score_case(cfg, model, case_id, subsets, context, post, divisor, lambda: bar.advance(task))
    names = resolve_metrics(cfg.evaluation.metrics, context.dataset.scheme)
    frame = pd.DataFrame(rows, columns=["case", "subset", "region", *names])
    frame.insert(1, "fold", fold["fold"])
    return frame


def write_fold_subsets(folder: Path, frame: pd.DataFrame, inputs: dict) -> None:
    """``fold_<k>/subsets/metrics_per_case.csv`` and its ``summary.json``, atomically."""
    out = folder / SUBSETS_DIR
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / PER_CASE_CSV) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(out / SUMMARY_JSON) as tmp:
        tmp.write_text(json.dumps({"inputs": inputs, "n_cases": int(frame["case"].nunique())}, indent=1) + "\n")


def fold_subsets(
    cfg: ExperimentConfig, fold: dict, context, model: nn.Module | None = None, post: Postprocess | None = None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The fold's subset metrics and, for a model with attention weights (A2FSeg), its
    attention report (:mod:`fusionseg.experiments.attention`): read back, or computed
    with ``model`` (None: the fold's ``best.ckpt``) and ``post`` (None: the
    post-processing in its fit.json)."""
    from fusionseg.experiments.attention import ATTENTION_CSV, fold_attention
    from fusionseg.experiments.jobs import fold_dir

    folder = fold_dir(cfg, fold["fold"])
    fit = json.loads((folder / "fit.json").read_text())
    if post is None:
        post = Postprocess.from_dict(fit.get("postprocess", {}).get("setting"))
    inputs = subset_inputs(cfg, context.modalities, post)
    frame, attention_path = read_fold_subsets(folder, inputs), folder / SUBSETS_DIR / ATTENTION_CSV
    wants = cfg.strategy == "a2fseg" and cfg.model.kwargs.get("adaptive", True)
    attention = pd.read_csv(attention_path) if wants and frame is not None and attention_path.exists() else None
    if frame is not None and (attention is not None or not wants):
        return frame, attention
    model, divisor = _fold_model(cfg, fit, model)
    if frame is None:
        frame = score_subsets(cfg, model, fold, context, post, divisor)
        write_fold_subsets(folder, frame, inputs)
    if wants:
        attention = fold_attention(model, fold, context, divisor)
        with atomic_path(attention_path) as tmp:
            attention.to_csv(tmp, index=False)
    return frame, attention


def _fold_model(cfg: ExperimentConfig, fit: dict, model: nn.Module | None) -> tuple[nn.Module, int]:
    """(the fold's model, in eval mode, absent modalities simulated as the config
    says; its size divisor): ``model`` itself, or rebuilt from the fold's best.ckpt."""
    from fusionseg.inference.predict import model_from_checkpoint

    if model is None:
        model, meta = model_from_checkpoint(cfg.run_dir() / fit["checkpoint"])
        divisor = int(meta["divisor"])
    else:
        divisor = model.required_divisor
    model.configure_missing(cfg.missing.simulate, "none", cfg.missing.mask_channels)
    return model.eval(), divisor


def subset_conventions(cfg: ExperimentConfig, scheme) -> dict[str, str]:
    """The lines written under every subset table: the simulation, the empty-mask
    rules, the post-processing."""
    from fusionseg.experiments.report import metric_notes

    simulate = {
        "zero": "absent input channels set to 0 (z-scored intensity 0 = the brain's mean)",
        "mean": "absent input channels set to the voxel-wise mean of the present channels",
        "drop_branch": "absent modalities' branches skipped; fusion over the present branches only",
        "zero_features": "absent modalities' branches skipped; their features count as zeros in the fusion",
    }[cfg.missing.simulate]
    notes = {
        "missing modality simulated": f"{cfg.missing.simulate}: {simulate}",
        "modality-dropout training": cfg.missing.dropout,
        "crop and brain mask": "from every sequence of the case; only the network input changes with the subset",
        "metrics": metric_notes(resolve_metrics(cfg.evaluation.metrics, scheme)) or "as the run's",
        "post-processing": (
            "each fold's setting chosen on its validation cases with every modality"
            if cfg.postprocess.method == "validation"
            else f"{cfg.postprocess.method} (as the run's test predictions)"
        ),
    }
    return notes


def gather_subsets(results, run: str, key: str = "subsets") -> pd.DataFrame | None:
    """The folds' subset frames (``key="attention"``: attention reports) of one run as
    one frame with a ``run`` column (None when the run has none)."""
    frames = [getattr(r, key) for r in sorted(results, key=lambda r: r.fold) if getattr(r, key) is not None]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).assign(run=run)


def write_run_subsets(
    cfg: ExperimentConfig, frame: pd.DataFrame, modalities, scheme, out: Path, attention: pd.DataFrame | None = None
) -> list[Path]:
    """``modality_subsets.md`` / ``.csv`` / ``.png`` and ``metrics_per_case_subsets.csv``
    of one run in ``out``; with ``attention``, also ``attention.csv`` / ``.md`` / ``.png``."""
    from fusionseg.experiments.attention import ATTENTION_CSV, write_attention
    from fusionseg.experiments.subset_report import write_subset_tables

    with atomic_path(out / "metrics_per_case_subsets.csv") as tmp:
        frame.to_csv(tmp, index=False)
    metrics = [m for m in ("dice", "lesion_dice", "hd95") if m in frame.columns]
    paths = write_subset_tables(
        frame, modalities, scheme.region_names, out, metrics=metrics, conventions=subset_conventions(cfg, scheme)
    )
    if attention is not None:
        with atomic_path(out / ATTENTION_CSV) as tmp:
            attention.to_csv(tmp, index=False)
        paths += write_attention(attention, out, modalities, f" of {cfg.name}")
    return paths


def _study_conventions(configs: dict, scheme) -> dict[str, str]:
    """The conventions of several runs: one line per key, per run where they differ."""
    per_run = {name: subset_conventions(cfg, scheme) for name, cfg in configs.items()}
    merged = {}
    for key in next(iter(per_run.values())):
        values = {name: notes[key] for name, notes in per_run.items()}
        distinct = set(values.values())
        merged[key] = distinct.pop() if len(distinct) == 1 else "; ".join(f"{n}: {v}" for n, v in values.items())
    return merged


def _tests_markdown(table: pd.DataFrame) -> str:
    """The paired tests as a Markdown table (3 decimals, p with 2 significant digits)."""
    cols = [c for c in table.columns if c not in ("n_nan", "n_incomplete", "n_subsets")]

    def cell(col, v):
        if isinstance(v, float):
            return f"{v:.2g}" if col.startswith("p_") else f"{v:.3f}"
        return str(v)

    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(cell(c, r[c]) for c in cols) + " |" for _, r in table.iterrows()]
    return "\n".join(rows)


def write_study_subsets(reference: str, configs: dict, results: dict, out: Path) -> list[str]:
    """A study's modality-subset tables (every run that scored subsets) in ``out``, the
    paired test of each run against ``reference`` on the per-case mean over subsets,
    and each run's loss without FLAIR / T1ce; returns comparison.md lines."""
    from fusionseg.experiments.subset_report import missing_one_loss, paired_subset_test, write_subset_tables

    frames = {n: r.subsets for n, r in results.items() if r.subsets is not None}
    if not frames:
        return []
    summary = results[next(iter(frames))].summary
    modalities, scheme = summary["modalities"], scheme_from_dict(summary["label_scheme"])
    regions, frame = scheme.region_names, pd.concat(list(frames.values()), ignore_index=True)
    with atomic_path(out / "metrics_per_case_subsets.csv") as tmp:
        frame.to_csv(tmp, index=False)
    notes = _study_conventions({n: configs[n] for n in frames}, scheme)
    write_subset_tables(frame, modalities, regions, out, conventions=notes)
    others = [n for n in frames if n != reference] if reference in frames else []
    paired = [paired_subset_test(frame, n, reference, regions) for n in others]
    losses = [
        missing_one_loss(frame, run, tuple(modalities), m, regions)
        for run in frames
        for m in ("flair", "t1ce")
        if m in modalities and len(modalities) > 1
    ]
    lines = ["## Modality subsets", "", "Tables per subset: `modality_subsets.md`, figure `modality_subsets.png`.", ""]
    for title, name, parts in (
        (f"Each run against {reference}, per-case mean Dice over the subsets", "paired", paired),
        ("Loss when one sequence is missing (all sequences minus one)", "missing_one", losses),
    ):
        if parts:
            table = pd.concat(parts, ignore_index=True)
            with atomic_path(out / f"modality_subsets_{name}.csv") as tmp:
                table.to_csv(tmp, index=False)
            lines += [f"### {title} (paired Wilcoxon over cases)", "", _tests_markdown(table), ""]
    return lines
