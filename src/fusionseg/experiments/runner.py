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
from lightning_fabric.utilities.seed import seed_everything
from rich.console import Console

from fusionseg.config import EvalConfig, ExperimentConfig, InferenceConfig, PostprocessConfig
from fusionseg.constants import scheme_to_dict
from fusionseg.data.cases import Dataset, discover
from fusionseg.data.duplicates import duplicate_groups, prepared_hashes
from fusionseg.data.io import atomic_path, ensure_writable, load_nifti, read_array, save_label_map, voxel_spacing
from fusionseg.data.preprocess import PreparedCase, PreprocessCache
from fusionseg.data.sampling import SliceDataset, common_slice_size, select_slices
from fusionseg.data.splits import load_splits, make_splits, save_splits
from fusionseg.errors import ConfigError, DataError
from fusionseg.evaluation.aggregate import summarize
from fusionseg.evaluation.evaluate import evaluate_case
from fusionseg.data.validate import validate_cases
from fusionseg.experiments.environment import environment_info
from fusionseg.experiments.identity import check_run_folder, clear_run_folder, write_record
from fusionseg.experiments.fusion_report import fusion_quality_case, save_example
from fusionseg.experiments.report import comparison_table, write_overlays
from fusionseg.inference.postprocess import (
    Postprocess,
    candidate_settings,
    choose_postprocess,
    inner_settings,
    nested_regions,
)
from fusionseg.inference.predict import checkpoint_meta, predict_prepared
from fusionseg.progress import make_progress
from fusionseg.strategies import build_strategy
from fusionseg.strategies.registry import describe_strategy
from fusionseg.training.loop import fit

console = Console()


@dataclass
class RunResult:
    run_dir: Path
    per_case: pd.DataFrame
    summary: dict


def _write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str))


def load_dataset(cfg: ExperimentConfig) -> tuple[Dataset, tuple[str, ...]]:
    """Discover the dataset and resolve the input modalities (channel order)."""
    dataset = discover(cfg.data.root, format=cfg.data.format, scheme=cfg.data.scheme)
    if cfg.data.cases:
        unknown = sorted(set(cfg.data.cases) - {c.case_id for c in dataset.cases})
        if unknown:
            raise ConfigError(f"data.cases names cases not in {cfg.data.root}: {unknown[:5]}")
        dataset = Dataset(dataset.root, dataset.format, dataset.scheme, dataset.modalities,
                          tuple(c for c in dataset.cases if c.case_id in set(cfg.data.cases)))
    modalities = tuple(cfg.data.modalities or dataset.modalities)
    missing = [m for m in modalities if m not in dataset.modalities]
    if missing:
        raise ConfigError(f"data.modalities {missing} are not in {cfg.data.root} "
                          f"(it has {list(dataset.modalities)})")
    return dataset, modalities


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
        raise DataError("no case has a segmentation; training needs labelled cases.", dataset.root,
                        "add <case>_seg files or point data.root at a training set.")
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
        console.print(f"[yellow]warning:[/] cases {group} hold identical images; they are kept in "
                      "the same part of every split. Remove all copies but one if they are one scan.")
    return groups


def resolve_splits(cfg: ExperimentConfig, prepared: dict[str, PreparedCase], run_dir: Path,
                   reuse: bool = True) -> dict:
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


def _inputs(postprocess: PostprocessConfig, evaluation: EvalConfig, inference: InferenceConfig) -> dict:
    return {"postprocess": postprocess.model_dump(mode="json"),
            "evaluation": evaluation.model_dump(mode="json", exclude={"overlays"}),
            "inference": inference.model_dump(mode="json")}


def _evaluation_inputs(cfg: ExperimentConfig) -> dict:
    """What a fold's test results depend on after training; a resumed run whose
    evaluation, inference or post-processing settings changed re-predicts (without
    retraining)."""
    return _inputs(cfg.postprocess, cfg.evaluation, cfg.inference)


def _recorded_inputs(data: dict, cfg: ExperimentConfig) -> dict:
    """The inputs a finished fold recorded, with defaults for settings added since.
    Folds written before ``inputs`` was recorded are taken to have used this config's
    evaluation settings (and defaults for the rest: no post-processing)."""
    recorded = data.get("inputs", {"evaluation": _evaluation_inputs(cfg)["evaluation"]})
    defaults = _inputs(PostprocessConfig(), EvalConfig(), InferenceConfig())
    return {key: {**value, **recorded.get(key, {})} for key, value in defaults.items()}


def _in_scope(cfg: ExperimentConfig, case: PreparedCase, pred: np.ndarray,
              gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``gt`` cut to what ``evaluation.scope`` evaluates (the whole volume,
    or the slab of the sampled slices)."""
    if cfg.evaluation.scope != "sampled_slices":
        return pred, gt
    window = sampled_slab(case, cfg.sampling.mode, cfg.sampling.central_k)
    return pred[window], gt[window]


def _ground_truth(case) -> tuple[np.ndarray, tuple[float, ...]]:
    gt_img = load_nifti(case.label)
    return read_array(gt_img, case.label, dtype=np.int64), voxel_spacing(gt_img)


def decide_postprocess(cfg: ExperimentConfig, model, fold: dict, prepared: dict[str, PreparedCase],
                       dataset: Dataset, modalities: tuple[str, ...],
                       divisor: int) -> tuple[Postprocess, dict]:
    """The fold's post-processing: none, the config's fixed setting, or the candidate
    that scores best on the fold's validation cases predicted as whole volumes (with
    the evaluation scope of the test cases). Returns (setting, record for fit.json)."""
    pc = cfg.postprocess
    if pc.method == "none":
        return Postprocess(), {"method": "none", "setting": Postprocess().to_dict()}
    if pc.method == "fixed":
        setting = Postprocess(pc.min_volume_mm3, pc.keep_largest, pc.inner_min_volume_mm3)
        return setting, {"method": "fixed", "setting": setting.to_dict()}
    if not fold["val"]:
        raise ConfigError("postprocess.method: validation needs validation cases; set "
                          "split.val_fraction > 0 or use postprocess.method: fixed")
    cases = []
    for case_id in fold["val"]:
        gt, spacing = _ground_truth(dataset.case(case_id))
        pred = predict_prepared([model], prepared[case_id], modalities, dataset.scheme, divisor,
                                mirror=cfg.inference.mirror)
        cases.append((*_in_scope(cfg, prepared[case_id], pred, gt), spacing))
    setting, table = choose_postprocess(cases, dataset.scheme,
                                        candidate_settings(pc.candidates_mm3, pc.try_keep_largest),
                                        criterion=pc.criterion, challenge=cfg.evaluation.challenge)
    if pc.inner_candidates_mm3 and nested_regions(dataset.scheme):
        # second stage, given the whole-tumour setting: nested-region (TC/ET) specks
        setting, inner = choose_postprocess(cases, dataset.scheme,
                                            inner_settings(setting, pc.inner_candidates_mm3),
                                            criterion=pc.criterion, challenge=cfg.evaluation.challenge)
        table += inner[1:]
    console.print(f"fold {fold['fold']}: post-processing chosen on {len(cases)} validation cases: "
                  f"{setting.label()}")
    return setting, {"method": "validation", "criterion": pc.criterion, "setting": setting.to_dict(),
                     "validation_cases": list(fold["val"]), "candidates": table}


def run_fold(cfg: ExperimentConfig, fold: dict, prepared: dict[str, PreparedCase], dataset: Dataset,
             modalities: tuple[str, ...], run_dir: Path, progress: bool = True) -> list[dict]:
    """Train one fold, predict and evaluate its test cases; returns per-case rows."""
    k = fold["fold"]
    fold_dir = run_dir / f"fold_{k}"
    scheme = dataset.scheme
    # torch seeds its default generator at random per process: seed before the weights
    # are initialised, or the same config trains a different network each time
    seed_everything(cfg.train.seed, verbose=False)
    strategy = build_strategy(cfg, modalities, scheme)
    divisor = strategy.required_divisor
    size = common_slice_size(list(prepared.values()), max(divisor, 16))
    train = SliceDataset([prepared[c] for c in fold["train"]], modalities, cfg.sampling, size,
                         train=True, seed=cfg.train.seed)
    val = SliceDataset([prepared[c] for c in fold["val"]], modalities, cfg.sampling, size,
                       mode=cfg.sampling.val_mode, train=False)
    meta = checkpoint_meta(cfg, modalities, scheme, divisor)
    stages = strategy.stages()
    fits = []
    for stage in stages:
        stage_dir = fold_dir if len(stages) == 1 else fold_dir / stage.name
        result = fit(strategy, train, val, cfg.train, stage_dir, scheme, meta=meta, progress=progress,
                     description=f"fold {k} {stage.name}", stage=stage)
        fits.append({"stage": stage.name, "best_epoch": result.best_epoch,
                     "best_val_score": result.best_score, "epochs_run": result.epochs_run,
                     "stopped_early": result.stopped_early, "seconds": round(result.seconds, 1),
                     "checkpoint": str(result.best_checkpoint.relative_to(run_dir))})
    model = strategy.eval().cpu()
    after_training = time.perf_counter()
    post, post_info = decide_postprocess(cfg, model, fold, prepared, dataset, modalities, divisor)
    _write_json(fold_dir / "fit.json", {
        "fold": k, "stages": fits, "checkpoint": fits[-1]["checkpoint"],
        "train_slices": len(train), "val_slices": len(val), "slice_size": list(size),
        "seconds": round(sum(f["seconds"] for f in fits), 1), "postprocess": post_info,
        "inference": cfg.inference.model_dump(mode="json")})
    rows: list[dict] = []
    lesion_rows: list[dict] = []
    quality: list[dict] = []
    pred_dir = run_dir / "predictions"
    for case_id in fold["test"]:
        case = dataset.case(case_id)
        gt, spacing = _ground_truth(case)
        pred = post(predict_prepared([model], prepared[case_id], modalities, scheme, divisor,
                                     mirror=cfg.inference.mirror), spacing, scheme)
        ref = case.images[modalities[0]].path
        save_label_map(pred, ref, pred_dir / f"{case_id}.nii.gz", overwrite=True)
        slab = (slab_slices(prepared[case_id], cfg.sampling.mode, cfg.sampling.central_k)
                if cfg.evaluation.scope == "sampled_slices" else None)
        save_example(model, prepared[case_id], modalities, pred, scheme,
                     run_dir / "examples" / f"{case_id}.npz", slices=slab)
        if hasattr(model, "fuse"):
            quality.append({"case": case_id, "fold": k, **fusion_quality_case(
                model, prepared[case_id], modalities, cfg.sampling.val_mode)})
        pred, gt = _in_scope(cfg, prepared[case_id], pred, gt)
        region_rows, lesions = evaluate_case(pred, gt, spacing, scheme,
                                             metrics=cfg.evaluation.metrics,
                                             challenge=cfg.evaluation.challenge)
        rows += [{"case": case_id, "fold": k, **r} for r in region_rows]
        lesion_rows += [{"case": case_id, "fold": k, **r} for r in lesions]
    _write_json(fold_dir / "test_metrics.json", {
        "rows": rows, "lesions": lesion_rows, "fusion_quality": quality,
        "postprocess": post.to_dict(), "inputs": _evaluation_inputs(cfg),
        # training time of every invocation (resumes included) + this prediction and evaluation
        "seconds": round(sum(f["seconds"] for f in fits) + time.perf_counter() - after_training, 1)})
    return rows


def _open_run_folder(cfg: ExperimentConfig, overwrite: bool, resume_with_changes: bool,
                     progress: bool) -> tuple[Dataset, tuple[str, ...], dict[str, PreparedCase], dict]:
    """Everything that can fail on user input, before the run folder is written: the
    output location, the run folder's identity, the dataset, the cases' checks and
    preprocessing, the split. Then (``overwrite``: after deleting the old run) the run
    folder gets config.yaml, environment.json, run.json and splits.json. Returns
    (dataset, modalities, prepared cases, splits)."""
    run_dir = cfg.run_dir()
    ensure_writable(run_dir)
    state = check_run_folder(cfg, overwrite, resume_with_changes)
    dataset, modalities = load_dataset(cfg)
    console.print(f"[bold]{cfg.name}[/]: {len(dataset.labelled)} labelled cases "
                  f"({dataset.format}, labels {dataset.scheme.name}), modalities {list(modalities)}")
    prepared = prepare_all(dataset, cfg, progress)
    splits = resolve_splits(cfg, prepared, run_dir, reuse=not state.clear)
    if state.clear:
        console.print(f"[yellow]note:[/] --overwrite: deleting {run_dir} (it holds a run with other settings)")
        clear_run_folder(cfg)
    elif state.changes:
        console.print(f"[yellow]note:[/] resuming {run_dir} with changed settings "
                      f"{[k for k, _, _ in state.changes]} (recorded in run.json)")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(cfg.to_yaml())
    _write_json(run_dir / "environment.json", environment_info())
    write_record(cfg, state.changes)
    save_splits(splits, run_dir / "splits.json")
    return dataset, modalities, prepared, splits


def _run_folds(cfg: ExperimentConfig, folds: list[dict], prepared: dict[str, PreparedCase],
               dataset: Dataset, modalities: tuple[str, ...], progress: bool) -> dict:
    """Train (or read back) every fold; returns the gathered per-fold records."""
    run_dir = cfg.run_dir()
    out: dict = {"rows": [], "lesions": [], "quality": [], "post": {}, "seconds": 0.0}
    for fold in folds:
        done = run_dir / f"fold_{fold['fold']}" / "test_metrics.json"
        data = json.loads(done.read_text()) if done.exists() else None
        if data is not None and _recorded_inputs(data, cfg) != _evaluation_inputs(cfg):
            console.print(f"fold {fold['fold']}: evaluation, inference or post-processing settings changed; "
                          "predicting again with the trained model")
            data = None
        if data is not None and all((run_dir / "predictions" / f"{c}.nii.gz").exists() for c in fold["test"]):
            console.print(f"fold {fold['fold']}: finished earlier, results read back")
        else:
            run_fold(cfg, fold, prepared, dataset, modalities, run_dir, progress)
            data = json.loads(done.read_text())
        out["rows"] += data["rows"]
        out["lesions"] += data["lesions"]
        out["quality"] += data.get("fusion_quality", [])
        out["post"][fold["fold"]] = data.get("postprocess", Postprocess().to_dict())
        out["seconds"] += float(data.get("seconds", 0.0))
    return out


def _fusion_quality_summary(quality: list[dict]) -> dict:
    qdf = pd.DataFrame(quality)
    out = {c: {"mean": float(qdf[c].mean()), "sd": float(qdf[c].std(ddof=1)) if len(qdf) > 1 else 0.0,
               "n": int(len(qdf))} for c in qdf.columns if c not in ("case", "fold", "slices")}
    out["conventions"] = (
        "per test case, mean over its slices of: PSNR (dB, data range 1) and SSIM (Gaussian 11, "
        "sigma 1.5) of F vs each [0,1]-scaled source on the whole slice; MI(F,Id)+MI(F,Is) "
        "(bits, 256 bins); Qabf")
    return out


def run_experiment(cfg: ExperimentConfig, progress: bool = True, overwrite: bool = False,
                   resume_with_changes: bool = False) -> RunResult:
    """Run the whole experiment (resumable: finished folds are read back).

    Args:
        overwrite: a run folder of this name with other settings is deleted (after the
            inputs have been checked) and trained again.
        resume_with_changes: resume a run folder whose settings differ from ``cfg``
            (:func:`~fusionseg.experiments.identity.check_run_folder`).
    Raises:
        OutputError: the run folder holds another experiment or cannot be written.
        DataError, ConfigError: bad inputs, found before the run folder is written.
    """
    start = time.perf_counter()
    run_dir = cfg.run_dir()
    dataset, modalities, prepared, splits = _open_run_folder(cfg, overwrite, resume_with_changes, progress)
    folds = splits["folds"]
    if cfg.split.run_folds is not None:
        folds = [f for f in folds if f["fold"] in cfg.split.run_folds]
    done = _run_folds(cfg, folds, prepared, dataset, modalities, progress)
    per_case = pd.DataFrame(done["rows"])
    wall = time.perf_counter() - start
    summary = {
        "name": cfg.name, "strategy": cfg.strategy, "model": cfg.model.name,
        "modalities": list(modalities), "label_scheme": scheme_to_dict(dataset.scheme),
        "dataset": str(cfg.data.root), "format": dataset.format,
        "folds": [f["fold"] for f in folds], "n_cases": int(per_case["case"].nunique()),
        "challenge": cfg.evaluation.challenge, "evaluation_scope": cfg.evaluation.scope,
        "wall_seconds": round(wall, 1),
        "fold_seconds_total": round(done["seconds"], 1),
        **describe_strategy(cfg),
        "postprocess": {"method": cfg.postprocess.method,
                        "per_fold": {str(k): Postprocess.from_dict(v).label() for k, v in done["post"].items()}},
        "metrics": summarize(per_case, metrics=[c for c in per_case.columns
                                                if c not in ("case", "region", "fold")]),
    }
    with atomic_path(run_dir / "metrics_per_case.csv") as tmp:
        per_case.to_csv(tmp, index=False)
    with atomic_path(run_dir / "metrics_per_lesion.csv") as tmp:
        pd.DataFrame(done["lesions"]).to_csv(tmp, index=False)
    if done["quality"]:
        with atomic_path(run_dir / "fusion_quality.csv") as tmp:
            pd.DataFrame(done["quality"]).to_csv(tmp, index=False)
        summary["fusion_quality"] = _fusion_quality_summary(done["quality"])
    _write_json(run_dir / "summary.json", summary)
    table, _ = comparison_table({cfg.name: per_case}, None, ("dice", "hd95", "lesion_dice", "lesion_hd95"),
                                dataset.scheme.region_names)
    with atomic_path(run_dir / "results.md") as tmp:
        tmp.write_text(f"# {cfg.name}\n\n{table}\n\nMean ± sd over {summary['n_cases']} test cases; "
                       f"wall time {wall / 60:.1f} min (this invocation; all folds together: "
                       f"{done['seconds'] / 60:.1f} min over every invocation).\n")
    if cfg.evaluation.overlays:
        write_overlays(dataset, prepared, run_dir, modalities, per_case, cfg.evaluation.overlays)
    return RunResult(run_dir, per_case, summary)
