"""The main job: train a strategy with cross-validation, predict every test case as a
whole volume, evaluate in 3-D, and write the run folder.

Run folder (``<output_dir>/<name>/``):
- ``config.yaml``: the resolved configuration; ``environment.json``: versions, device,
  git sha; ``splits.json``: the case split used (reusable);
- ``fold_<k>/``: ``train_log.csv`` (per epoch), ``tensorboard/``,
  ``checkpoints/{best,last}.ckpt`` (one ``<stage>/`` folder each for multi-stage
  strategies), ``fit.json`` (best epoch, timings, final checkpoint);
- ``predictions/<case>.nii.gz``: each test case's label map (its fold's model), with
  the input's affine and header;
- ``metrics_per_case.csv`` (case x region), ``metrics_per_lesion.csv``,
  ``summary.json`` (mean, median, sd, 95% CI per metric and region, wall time),
  ``results.md`` (the table), ``overlays/<case>.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from fusionseg.config import ExperimentConfig
from fusionseg.constants import scheme_to_dict
from fusionseg.data.cases import Dataset
from fusionseg.data.duplicates import duplicate_groups, prepared_hashes
from fusionseg.data.io import atomic_path, ensure_writable
from fusionseg.data.preprocess import PreparedCase, PreprocessCache
from fusionseg.data.splits import load_splits, make_splits, save_splits
from fusionseg.data.validate import validate_cases
from fusionseg.errors import DataError
from fusionseg.evaluation.folder import build_summary, write_results
from fusionseg.experiments.environment import environment_info, float_changes
from fusionseg.experiments.executors import LocalExecutor
from fusionseg.experiments.identity import check_run_folder, clear_run_folder, write_record
from fusionseg.experiments.jobs import (  # noqa: F401  (re-exported: load_dataset)
    FoldJob,
    FoldResult,
    RunContext,
    quality_file,
    load_dataset,
    unlabelled_cases,
)
from fusionseg.experiments.report import comparison_table, metric_notes, write_overlays
from fusionseg.inference.postprocess import Postprocess
from fusionseg.progress import make_progress
from fusionseg.experiments.subsets import gather_subsets, write_run_subsets
from fusionseg.strategies.registry import describe_strategy

console = Console()


@dataclass
class RunResult:
    run_dir: Path
    per_case: pd.DataFrame
    summary: dict
    subsets: pd.DataFrame | None = None  # case x modality subset x region, with a run column


def _write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str))


def prepare_all(dataset: Dataset, cfg: ExperimentConfig, progress: bool = True) -> dict[str, PreparedCase]:
    """Preprocess (or read from cache) every labelled case. Cases not yet in the cache
    are first checked as ``fusionseg data check`` does (:func:`~fusionseg.data.validate.validate_cases`):
    any error stops here, before any run folder is written.

    Raises:
        DataError: no labelled case, or a case fails the checks.
        OutputError: the cache folder cannot be written.
    """
    cache = PreprocessCache(cfg.preprocess, cfg.data.cache_dir)
    cases = dataset.labelled
    if not cases:
        raise DataError(
            "no case has a segmentation; training needs labelled cases.",
            dataset.root,
            "add <case>_seg files or point data.root at a training set.",
        )
    todo = [c for c in cases if not cache.is_fresh(c, dataset.scheme)]
    if todo:
        ensure_writable(cache.root)
        console.print(f"checking {len(todo)} case(s) not yet in the preprocessing cache")
        validate_cases(todo, dataset, console)
    prepared = {}
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("preprocess", total=len(cases), info=str(cache.root))
        for case in cases:
            prepared[case.case_id] = cache.load(case, dataset.scheme)
            bar.update(task, advance=1)
    return prepared


def duplicate_case_groups(prepared: dict[str, PreparedCase]) -> list[list[str]]:
    """Groups of cases with identical preprocessed images (the same scan under two
    ids); printed as a warning. Splits keep each group in one part (no leakage)."""
    groups = duplicate_groups(prepared_hashes(prepared))
    for group in groups:
        console.print(
            f"[yellow]warning:[/] cases {group} hold identical images; they are kept in "
            "the same part of every split. Remove all copies but one if they are one scan."
        )
    return groups


def resolve_splits(cfg: ExperimentConfig, prepared: dict[str, PreparedCase], run_dir: Path, reuse: bool = True) -> dict:
    """The run's split: ``split.file``, else the run folder's ``splits.json`` (with
    ``reuse``; not for a run folder about to be overwritten), else a
    new split (duplicate cases kept together, :func:`duplicate_case_groups`). Not
    written here (the run folder may not exist yet; :func:`_open_run_folder` saves it).

    Raises:
        ConfigError: unreadable split file or unknown cases.
        DataError: a split file that puts two copies of one scan in different parts.
    """
    case_ids = sorted(prepared)
    existing = run_dir / "splits.json"
    if cfg.split.file is not None:
        splits = load_splits(cfg.split.file, case_ids)
    elif reuse and existing.exists():
        splits = load_splits(existing, case_ids)
    else:
        splits = make_splits(case_ids, cfg.split, groups=duplicate_case_groups(prepared))
    return splits


def _write_environment(path: Path) -> None:
    """Write ``environment.json``. When the folder already holds a run from another
    CPU kind, device or numeric package version (:func:`float_changes`), print a
    warning (its kept folds and a resumed fold's first epochs were computed there, so
    the numbers will not equal one invocation on either machine) and keep the earlier
    records under ``earlier``."""
    info = environment_info()
    if path.exists():  # a resumed run (--overwrite has deleted the folder by now)
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        changes = float_changes(old, info)
        if changes:
            console.print(
                f"[yellow]warning:[/] {path.parent} was started on another machine kind "
                f"({'; '.join(changes)}); folds kept or resumed from there give other floats than "
                "one run here (rerun with --overwrite for numbers from this machine alone)"
            )
            info["earlier"] = [*old.pop("earlier", []), old]
        elif old.get("earlier"):
            info["earlier"] = old["earlier"]
    _write_json(path, info)


def _open_run_folder(
    cfg: ExperimentConfig, overwrite: bool, resume_with_changes: bool, progress: bool
) -> tuple[Dataset, tuple[str, ...], dict[str, PreparedCase], dict]:
    """Everything that can fail on user input, before the run folder is written: the
    output location, the run folder's identity, the dataset, the cases' checks and
    preprocessing, the split. Then (``overwrite``: after deleting the old run) the run
    folder gets config.yaml, environment.json, run.json and splits.json. Returns
    (dataset, modalities, prepared cases, splits)."""
    run_dir = cfg.run_dir()
    ensure_writable(run_dir)
    state = check_run_folder(cfg, overwrite, resume_with_changes)
    dataset, modalities = load_dataset(cfg)
    console.print(
        f"[bold]{cfg.name}[/]: {len(dataset.labelled)} labelled cases "
        f"({dataset.format}, labels {dataset.scheme.name}), modalities {list(modalities)}"
    )
    prepared = prepare_all(dataset, cfg, progress)
    splits = resolve_splits(cfg, prepared, run_dir, reuse=not state.clear)
    if state.clear:
        console.print(f"[yellow]note:[/] --overwrite: deleting {run_dir} (it holds a run with other settings)")
        clear_run_folder(cfg)
    elif state.changes:
        console.print(
            f"[yellow]note:[/] resuming {run_dir} with changed settings "
            f"{[k for k, _, _ in state.changes]} (recorded in run.json)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(cfg.to_yaml())
    _write_environment(run_dir / "environment.json")
    write_record(cfg, state.changes)
    save_splits(splits, run_dir / "splits.json")
    return dataset, modalities, prepared, splits


def fold_jobs(cfg: ExperimentConfig, splits: dict) -> list[FoldJob]:
    """The run's fold jobs (``split.run_folds`` only, when set)."""
    folds = splits["folds"]
    if cfg.split.run_folds is not None:
        folds = [f for f in folds if f["fold"] in cfg.split.run_folds]
    config = cfg.model_dump(mode="json")
    return [FoldJob(config, fold, cfg.preprocess.key()) for fold in folds]


#: How each kind of image-quality row was measured (written with its summary).
QUALITY_CONVENTIONS = {
    "fusion_quality.csv": "per test case, mean over its slices of: PSNR (dB, data range 1) and SSIM (Gaussian 11, "
    "sigma 1.5) of F vs each [0,1]-scaled source on the whole slice; MI(F,Id)+MI(F,Is) (bits, 256 bins); Qabf",
    "pretext_quality.csv": "per test case, mean over its slices of the pretext prediction vs the true target "
    "sequence on brain voxels (z-scored): MSE, PSNR (dB, data range max - min of the target over the slice's "
    "brain) and SSIM (Gaussian 11, sigma 1.5, same data range) averaged over the brain's SSIM map",
}


def _quality_summary(frame: pd.DataFrame) -> dict:
    """Mean / sd / n over test cases of each image-quality column, per-fold means, and
    how they were measured."""
    columns = [c for c in frame.columns if c not in ("case", "fold", "slices")]

    def stats(df: pd.DataFrame) -> dict:
        return {
            c: {"mean": float(df[c].mean()), "sd": float(df[c].std(ddof=1)) if len(df) > 1 else 0.0, "n": len(df)}
            for c in columns
        }

    out = stats(frame)
    out["per_fold"] = {str(k): {c: v["mean"] for c, v in stats(g).items()} for k, g in frame.groupby("fold")}
    out["conventions"] = QUALITY_CONVENTIONS[quality_file(frame)]
    return out


@dataclass
class RunPlan:
    """A run whose folder is open and whose fold jobs are ready to dispatch."""

    cfg: ExperimentConfig
    context: RunContext
    jobs: list[FoldJob]


def plan_run(
    cfg: ExperimentConfig, overwrite: bool = False, resume_with_changes: bool = False, progress: bool = True
) -> RunPlan:
    """Check the inputs, preprocess every case (once, before any dispatch), open the
    run folder and make its fold jobs (:func:`_open_run_folder`)."""
    dataset, modalities, prepared, splits = _open_run_folder(cfg, overwrite, resume_with_changes, progress)
    unlabelled = unlabelled_cases(cfg, dataset, prepared, check=True)
    return RunPlan(cfg, RunContext(dataset, modalities, prepared, unlabelled), fold_jobs(cfg, splits))


def _run_summary(plan: RunPlan, per_case: pd.DataFrame, results: list[FoldResult], wall: float) -> dict:
    cfg, dataset = plan.cfg, plan.context.dataset
    names = [c for c in per_case.columns if c not in ("case", "region", "fold")]
    return build_summary(
        per_case,
        names,
        cfg.evaluation.lesion_params(),
        dataset.scheme,
        f"dataset folder {cfg.data.root}",
        "the run's fold predictions",
        n_cases=per_case["case"].nunique(),
        name=cfg.name,
        strategy=cfg.strategy,
        model=cfg.model.name,
        modalities=list(plan.context.modalities),
        label_scheme=scheme_to_dict(dataset.scheme),
        dataset=str(cfg.data.root),
        format=dataset.format,
        folds=[r.fold for r in results],
        challenge=cfg.evaluation.challenge,
        evaluation_scope=cfg.evaluation.scope,
        wall_seconds=round(wall, 1),
        fold_seconds_total=round(sum(r.seconds for r in results), 1),
        **describe_strategy(cfg),
        postprocess={
            "method": cfg.postprocess.method,
            "per_fold": {str(r.fold): Postprocess.from_dict(r.postprocess).label() for r in results},
        },
        **_validation_summary(results, cfg.postprocess.criterion),
    )


def _validation_summary(results: list[FoldResult], criterion: str = "dice") -> dict:
    """``{"validation": ...}`` of a trained run (empty for a rule): per fold and mean of
    the best validation Dice of the last training stage (the early-stopping score) and,
    with ``postprocess.method: validation``, of the chosen post-processing's
    ``criterion`` on the validation cases predicted as whole volumes with the run's
    inference settings (``after_inference``). The scores to choose settings by, never
    the test cases."""
    scores = {str(r.fold): r.validation for r in results if r.validation is not None}
    if not scores:
        return {}
    out = {
        "score": "best validation Dice of the last training stage (mean over the label scheme's regions)",
        **_fold_scores(scores),
    }
    after = {str(r.fold): r.validation_inference for r in results if r.validation_inference is not None}
    if after:
        out["after_inference"] = {
            "score": f"validation {criterion} of the chosen post-processing, whole-volume inference "
            "(mean over the validation cases and the label scheme's regions)",
            **_fold_scores(after),
        }
    return {"validation": out}


def _fold_scores(scores: dict[str, float]) -> dict:
    values = np.array(list(scores.values()), dtype=float)
    return {
        "per_fold": {k: round(v, 6) for k, v in scores.items()},
        "mean": round(float(values.mean()), 6),
        "sd": round(float(values.std(ddof=1)), 6) if len(values) > 1 else 0.0,
    }


def gather_run(plan: RunPlan, results: list[FoldResult], wall: float) -> RunResult:
    """Build the run's tables and figures from its fold results alone:
    metrics_per_case.csv / metrics_per_lesion.csv / summary.json (evaluate's schema),
    fusion_quality.csv, results.md and overlays."""
    cfg, run_dir = plan.cfg, plan.cfg.run_dir()
    results = sorted(results, key=lambda r: r.fold)
    per_case = pd.concat([r.per_case for r in results], ignore_index=True)
    per_lesion = pd.concat([r.per_lesion for r in results], ignore_index=True)
    summary = _run_summary(plan, per_case, results, wall)
    quality = [r.quality for r in results if r.quality is not None]
    if quality:
        frame = pd.concat(quality, ignore_index=True)
        name = quality_file(frame)
        with atomic_path(run_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
        summary[name.removesuffix(".csv")] = _quality_summary(frame)
    write_results(run_dir, per_case, per_lesion, summary)
    scheme = plan.context.dataset.scheme
    metrics = cfg.evaluation.metrics or ("dice", "hd95", "lesion_dice", "lesion_hd95")
    table, _ = comparison_table({cfg.name: per_case}, None, metrics, scheme.region_names)
    with atomic_path(run_dir / "results.md") as tmp:
        tmp.write_text(
            f"# {cfg.name}\n\n{table}\n\nMean ± sd over {summary['n_cases']} test cases; "
            f"wall time {wall / 60:.1f} min (this invocation; all folds together: "
            f"{summary['fold_seconds_total'] / 60:.1f} min over every invocation).\n\n"
            f"{metric_notes(metrics)}\n"
        )
    if cfg.evaluation.overlays:
        write_overlays(
            plan.context.dataset,
            plan.context.prepared,
            run_dir,
            plan.context.modalities,
            per_case,
            cfg.evaluation.overlays,
        )
    subsets, attention = gather_subsets(results, cfg.name), gather_subsets(results, cfg.name, "attention")
    if subsets is not None:
        write_run_subsets(cfg, subsets, plan.context.modalities, scheme, run_dir, attention)
    return RunResult(run_dir, per_case, summary, subsets)


def run_experiment(
    cfg: ExperimentConfig,
    progress: bool = True,
    overwrite: bool = False,
    resume_with_changes: bool = False,
    executor=None,
) -> RunResult:
    """Run the whole experiment (resumable: finished folds are read back): plan, run
    the fold jobs with ``executor`` (default: local, in this process), gather.

    Args:
        overwrite: a run folder of this name with other settings is deleted (after the
            inputs have been checked) and trained again.
        resume_with_changes: resume a run folder whose settings differ from ``cfg``
            (:func:`~fusionseg.experiments.identity.check_run_folder`).
        executor: :class:`~fusionseg.experiments.executors.LocalExecutor` or
            :class:`~fusionseg.experiments.executors.RayExecutor`.
    Raises:
        OutputError: the run folder holds another experiment or cannot be written.
        DataError, ConfigError: bad inputs, found before the run folder is written.
    """
    start = time.perf_counter()
    plan = plan_run(cfg, overwrite, resume_with_changes, progress)
    results = (executor or LocalExecutor()).run(plan.jobs, {cfg.name: plan.context}, progress)
    return gather_run(plan, results, time.perf_counter() - start)
