"""The fold job: one pure unit of work of an experiment.

A :class:`FoldJob` is (resolved config, fold record, preprocessing-cache key). Running
it (:func:`run_fold_job`, in this process or on a Ray worker) trains the strategy on
the fold's training cases (early stopping on its validation cases), chooses the
post-processing on the validation cases, predicts every test case as a whole volume
and evaluates it. It writes only ``<run>/fold_<k>/`` and its own test cases'
``<run>/predictions/<case>.nii.gz`` / ``<run>/examples/<case>.npz``:

- ``fold_<k>/checkpoints/{best,last}.ckpt`` (``<stage>/checkpoints/`` per stage for
  multi-stage strategies), ``train_log.csv``, ``tensorboard/``;
- ``fold_<k>/fit.json``: per stage best epoch, score, epochs, seconds; the samples;
  the post-processing choice and its validation table;
- ``fold_<k>/metrics_per_case.csv``, ``metrics_per_lesion.csv``, ``summary.json``:
  the fold's test cases, written by the same writer and in the same schema as
  ``fusionseg evaluate`` (:func:`fusionseg.evaluation.folder.write_results`), plus a
  ``fold`` column; ``summary.json`` also records the evaluation inputs, the applied
  post-processing and the fold's seconds; ``fusion_quality.csv`` for strategies that
  make a fused image, ``pretext_quality.csv``, ``pretext_example.png`` and
  ``transfer.json`` for the pretext strategy (S2: its reconstruction on the test
  cases, and what the weight transfer copied and skipped).

The job returns a :class:`FoldResult` holding the same tables in memory, so the
gather step in the same process never reads back what was just written. A finished
fold (its ``summary.json`` records the same evaluation inputs and its predictions
exist) is read back instead of run; an interrupted one resumes from ``last.ckpt``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from lightning_fabric.utilities.seed import seed_everything
from rich.console import Console

from fusionseg.config import EvalConfig, ExperimentConfig, InferenceConfig, PostprocessConfig, validate_config
from fusionseg.data.cases import Case, Dataset, discover
from fusionseg.constants import PET
from fusionseg.data.io import atomic_path, save_label_map
from fusionseg.data.preprocess import PreparedCase, PreprocessCache
from fusionseg.data.samplers import get_sampler
from fusionseg.errors import ConfigError
from fusionseg.evaluation.evaluate import evaluate_case, resolve_metrics
from fusionseg.evaluation.folder import (
    PER_CASE_CSV,
    PER_LESION_CSV,
    SUMMARY_JSON,
    build_summary,
    read_lesion_table,
    write_results,
)
from fusionseg.experiments.fold_scoring import (
    decide_postprocess,
    ground_truth,
    in_scope,
    slab_slices,
    validation_after_inference,
)
from fusionseg.experiments.fusion_report import fusion_quality_case, save_example
from fusionseg.experiments.pretext_report import pretext_quality_case, save_pretext_figure
from fusionseg.inference.inferers import InferOptions, get_inferer
from fusionseg.inference.postprocess import Postprocess
from fusionseg.inference.predict import checkpoint_meta
from fusionseg.strategies import build_strategy
from fusionseg.training.distributed import fit_distributed
from fusionseg.training.loop import fit

console = Console()

LESION_COLUMNS = [
    "case",
    "fold",
    "region",
    "lesion_id",
    "kind",
    "volume_mm3",
    "counted",
    "dice",
    "hd95",
    "matched_pred_ids",
]
FUSION_QUALITY_CSV = "fusion_quality.csv"
PRETEXT_QUALITY_CSV = "pretext_quality.csv"
#: capability -> the file of its image-quality rows
QUALITY_CSV = {"fusion_image": FUSION_QUALITY_CSV, "pretext_image": PRETEXT_QUALITY_CSV}


def quality_file(frame: pd.DataFrame) -> str:
    """The file name of a fold's image-quality rows (pretext rows have pretext_* columns)."""
    return PRETEXT_QUALITY_CSV if "pretext_mse" in frame.columns else FUSION_QUALITY_CSV


@dataclass(frozen=True)
class FoldJob:
    """One (config, fold) unit of work; picklable (plain data only).

    Attributes:
        config: the resolved experiment config (``ExperimentConfig.model_dump(mode="json")``),
            ``output_dir`` and ``split.file`` included.
        fold: the split's fold record: ``fold`` (int), ``train`` / ``val`` / ``test`` case ids.
        cache_key: the preprocessing-cache key the driver prepared the cases under
            (``PreprocessConfig.key()``); the job only reads the cache.
    """

    config: dict
    fold: dict
    cache_key: str

    @property
    def label(self) -> str:
        return f"{self.config['name']} fold {self.fold['fold']}"


@dataclass
class FoldResult:
    """What a fold job produced (also on disk under ``fold_<k>/``)."""

    run: str
    fold: int
    per_case: pd.DataFrame
    per_lesion: pd.DataFrame
    quality: pd.DataFrame | None
    postprocess: dict
    seconds: float
    reused: bool = False
    subsets: pd.DataFrame | None = None  # case x modality subset x region (evaluation.modality_subsets)
    attention: pd.DataFrame | None = None  # case x class x modality attention weight (A2FSeg, with subsets)
    #: the last training stage's best validation Dice (the score early stopping
    #: watched, on the fold's validation cases); None for a rule (nothing trained)
    validation: float | None = None
    #: the chosen post-processing's score on the validation cases predicted as whole
    #: volumes with the run's inference settings (``postprocess.criterion``); None
    #: unless ``postprocess.method: validation``
    validation_inference: float | None = None


@dataclass
class RunContext:
    """A run's dataset, input modalities and prepared cases, shared by its fold jobs
    in one process (a remote job builds its own from the config); ``unlabelled``: the
    dataset's unlabelled cases when a pretext stage trains on them too
    (``ssl.pretext_cases: train+unlabelled``), else empty."""

    dataset: Dataset
    modalities: tuple[str, ...]
    prepared: dict[str, PreparedCase]
    unlabelled: dict[str, PreparedCase] = field(default_factory=dict)


def uses_unlabelled(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg``'s pretext stage also trains on the dataset's unlabelled cases."""
    return cfg.ssl is not None and cfg.ssl.pretext_cases == "train+unlabelled"


def unlabelled_cases(
    cfg: ExperimentConfig, dataset: Dataset, prepared: dict[str, PreparedCase], check: bool = False
) -> dict[str, PreparedCase]:
    """The unlabelled cases a pretext stage may train on (empty unless
    :func:`uses_unlabelled`), preprocessed as the labelled ones (cache). A case whose
    images equal a labelled case's (the same scan under another id: possibly a test
    case) is left out with a warning, so no test case reaches training. ``check``:
    run ``data check``'s checks on those not yet cached (the driver, before dispatch).

    Raises:
        DataError: a case fails the checks.
    """
    if not uses_unlabelled(cfg):
        return {}
    from fusionseg.data.duplicates import prepared_hashes
    from fusionseg.data.validate import validate_cases

    cache = PreprocessCache(cfg.preprocess, cfg.data.cache_dir)
    cases = [c for c in dataset.cases if c.label is None]
    todo = [c for c in cases if not cache.is_fresh(c, dataset.scheme)]
    if check and todo:
        validate_cases(todo, dataset, console, what="pretext training")
    found = {c.case_id: cache.load(c, dataset.scheme) for c in cases}
    labelled = {h: cid for cid, h in prepared_hashes(prepared).items() if h is not None}
    out = {}
    for cid, digest in prepared_hashes(found).items():
        if digest in labelled:
            if check:
                console.print(
                    f"[yellow]warning:[/] unlabelled case {cid} holds the images of labelled case "
                    f"{labelled[digest]}; it is left out of the pretext stage"
                )
            continue
        out[cid] = found[cid]
    if check and not out:
        console.print(
            "[yellow]note:[/] ssl.pretext_cases train+unlabelled: the dataset has no (other) unlabelled "
            "case, so the pretext stage trains on the training cases alone"
        )
    return out


def load_dataset(cfg: ExperimentConfig) -> tuple[Dataset, tuple[str, ...]]:
    """Discover the dataset and resolve the input modalities (channel order). The
    returned dataset's cases hold only those modalities, so that training preprocesses
    (brain mask, crop, normalisation) from the same images as ``fusionseg predict``,
    which needs only the model's modalities (e.g. S0's [t1ce, flair]).

    Raises:
        ConfigError: ``data.cases`` or ``data.modalities`` name what the dataset lacks.
        DataError: the folder is missing or in no supported layout.
    """
    dataset = discover(cfg.data.root, format=cfg.data.format, scheme=cfg.data.scheme)
    if cfg.data.cases:
        unknown = sorted(set(cfg.data.cases) - {c.case_id for c in dataset.cases})
        if unknown:
            raise ConfigError(f"data.cases names cases not in {cfg.data.root}: {unknown[:5]}")
        dataset = Dataset(
            dataset.root,
            dataset.format,
            dataset.scheme,
            dataset.modalities,
            tuple(c for c in dataset.cases if c.case_id in set(cfg.data.cases)),
        )
    modalities = tuple(cfg.data.modalities or dataset.modalities)
    missing = [m for m in modalities if m not in dataset.modalities]
    if missing:
        raise ConfigError(f"data.modalities {missing} are not in {cfg.data.root} (it has {list(dataset.modalities)})")
    cases = tuple(
        Case(c.case_id, {m: c.images[m] for m in modalities if m in c.images}, c.label) for c in dataset.cases
    )
    return Dataset(dataset.root, dataset.format, dataset.scheme, modalities, cases, dataset.skipped), modalities


def run_context(cfg: ExperimentConfig) -> RunContext:
    """The context of a job run away from the driver: the dataset discovered again and
    every labelled case read from the preprocessing cache (prepared before dispatch)."""
    dataset, modalities = load_dataset(cfg)
    cache = PreprocessCache(cfg.preprocess, cfg.data.cache_dir)
    prepared = {c.case_id: cache.load(c, dataset.scheme) for c in dataset.labelled}
    return RunContext(dataset, modalities, prepared, unlabelled_cases(cfg, dataset, prepared))


def evaluation_inputs(postprocess: PostprocessConfig, evaluation: EvalConfig, inference: InferenceConfig) -> dict:
    """What a fold's test results depend on after training; a fold whose recorded
    inputs differ is predicted and evaluated again (without retraining)."""
    return {
        "postprocess": postprocess.model_dump(mode="json"),
        "evaluation": evaluation.model_dump(mode="json", exclude={"overlays", "modality_subsets"}),
        "inference": inference.model_dump(mode="json"),
    }


def _recorded_inputs(data: dict, cfg: ExperimentConfig) -> dict:
    """The inputs a finished fold recorded, with defaults for settings added since."""
    recorded = data.get("inputs", {})
    defaults = evaluation_inputs(PostprocessConfig(), EvalConfig(), InferenceConfig())
    return {key: {**value, **recorded.get(key, {})} for key, value in defaults.items()}


def fold_dir(cfg: ExperimentConfig, k: int) -> Path:
    return cfg.run_dir() / f"fold_{k}"


def read_fold_result(cfg: ExperimentConfig, fold: dict) -> FoldResult | None:
    """A finished fold's results from its artifacts, or None when the fold has not
    finished, its test predictions are missing, or it recorded other evaluation inputs
    (then it is predicted again)."""
    folder = fold_dir(cfg, fold["fold"])
    path = folder / SUMMARY_JSON
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    mine = evaluation_inputs(cfg.postprocess, cfg.evaluation, cfg.inference)
    if _recorded_inputs(data, cfg) != mine:
        console.print(
            f"fold {fold['fold']}: evaluation, inference or post-processing settings changed; "
            "predicting again with the trained model"
        )
        return None
    if not all((cfg.run_dir() / "predictions" / f"{c}.nii.gz").exists() for c in fold["test"]):
        return None
    quality = [folder / name for name in QUALITY_CSV.values() if (folder / name).exists()]
    scores = fit_validation(folder)
    return FoldResult(
        cfg.name,
        fold["fold"],
        pd.read_csv(folder / PER_CASE_CSV),
        read_lesion_table(folder / PER_LESION_CSV),
        pd.read_csv(quality[0]) if quality else None,
        data["postprocess"],
        float(data["seconds"]),
        reused=True,
        validation=scores[0],
        validation_inference=scores[1],
    )


def fit_validation(folder: Path) -> tuple[float | None, float | None]:
    """(the last stage's best validation score, the chosen post-processing's score on
    the validation cases predicted as whole volumes) recorded in ``folder/fit.json``;
    None for what it lacks (a rule fold has neither)."""
    path = folder / "fit.json"
    if not path.exists():
        return None, None
    record = json.loads(path.read_text())
    score = (record.get("stages") or [{}])[-1].get("best_val_score")
    after = validation_after_inference(record.get("postprocess"))
    return (None if score is None else float(score)), (None if after is None else after[0])


def run_fold_job(job: FoldJob, progress: bool = True, context: RunContext | None = None) -> FoldResult:
    """Run one fold job (see module docstring); finished folds are read back.

    Args:
        job: the unit of work.
        progress: progress bars (off on remote workers).
        context: the run's dataset and prepared cases when the caller has them (local
            executor); None builds them from the config and the cache.
    Raises:
        ConfigError: the job's cache key is not the config's preprocessing key.
    """
    cfg = validate_config(job.config, source=f"job {job.label}")
    if cfg.preprocess.key() != job.cache_key:
        raise ConfigError(
            f"job {job.label}: preprocessing key {cfg.preprocess.key()} is not the "
            f"key {job.cache_key} the cases were prepared with"
        )
    done = read_fold_result(cfg, job.fold)
    if done is None:
        return train_and_test(cfg, job.fold, context or run_context(cfg), progress)
    console.print(f"{job.label}: finished earlier, results read back")
    if cfg.evaluation.modality_subsets:
        from fusionseg.experiments.subsets import fold_subsets

        done.subsets, done.attention = fold_subsets(cfg, job.fold, context or run_context(cfg))
    return done


def _train_stages(
    cfg: ExperimentConfig, strategy, samples, fold_path: Path, scheme, meta: dict, progress: bool
) -> list[dict]:
    """Fit every stage of ``strategy`` in order; their records for fit.json."""
    stages = strategy.stages()
    fits = []
    for stage in stages:
        stage_dir = fold_path if len(stages) == 1 else fold_path / stage.name
        train = fit_distributed if cfg.train.distributed == "ddp" else fit
        result = train(
            strategy,
            samples.for_stage(stage.data),
            samples.val,
            cfg.train,
            stage_dir,
            scheme,
            meta=meta,
            progress=progress,
            description=f"fold {fold_path.name[5:]} {stage.name}",
            stage=stage,
        )
        fits.append(
            {
                "stage": stage.name,
                "best_epoch": result.best_epoch,
                "best_val_score": result.best_score,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "seconds": round(result.seconds, 1),
                "checkpoint": str(result.best_checkpoint.relative_to(cfg.run_dir())),
            }
        )
    return fits


def train_and_test(cfg: ExperimentConfig, fold: dict, context: RunContext, progress: bool = True) -> FoldResult:
    """Train one fold, choose its post-processing, predict and evaluate its test cases,
    write ``fold_<k>/``; see the module docstring. A rule (``strategy: threshold``)
    has nothing to train: :func:`rule_fold`."""
    if cfg.threshold is not None:
        return rule_fold(cfg, fold, context)
    k, scheme, modalities = fold["fold"], context.dataset.scheme, context.modalities
    # torch seeds its default generator at random per process: seed before the weights
    # are initialised, or the same config trains a different network each time
    seed_everything(cfg.train.seed, verbose=False)
    strategy = build_strategy(cfg, modalities, scheme)
    divisor = strategy.required_divisor
    samples = get_sampler(cfg.spatial_dims)(cfg, *_sampler_inputs(cfg, fold, context), modalities, divisor)
    fits = _train_stages(
        cfg, strategy, samples, fold_dir(cfg, k), scheme, checkpoint_meta(cfg, modalities, scheme, divisor), progress
    )
    model = strategy.eval().cpu()
    after_training = time.perf_counter()
    post, post_info = decide_postprocess(cfg, model, fold, context, divisor)
    with atomic_path(fold_dir(cfg, k) / "fit.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "fold": k,
                    "stages": fits,
                    "checkpoint": fits[-1]["checkpoint"],
                    **samples.info,
                    "seconds": round(sum(f["seconds"] for f in fits), 1),
                    "postprocess": post_info,
                    "inference": cfg.inference.model_dump(mode="json"),
                },
                indent=1,
                default=str,
            )
        )
    if getattr(model, "transfer_report", None) is not None:
        with atomic_path(fold_dir(cfg, k) / "transfer.json") as tmp:
            tmp.write_text(json.dumps(model.transfer_report.to_dict(), indent=1, default=str))
    rows, lesions, quality = test_fold(cfg, model, fold, context, post, divisor)
    seconds = round(sum(f["seconds"] for f in fits) + time.perf_counter() - after_training, 1)
    result = write_fold_result(cfg, fold, scheme, rows, lesions, quality, post, seconds)
    result.validation = float(fits[-1]["best_val_score"])
    after = validation_after_inference(post_info)
    result.validation_inference = None if after is None else after[0]
    if cfg.evaluation.modality_subsets:
        from fusionseg.experiments.subsets import fold_subsets

        result.subsets, result.attention = fold_subsets(cfg, fold, context, model, post)
    return result


def _sampler_inputs(cfg: ExperimentConfig, fold: dict, context: RunContext) -> tuple[dict, dict]:
    """(fold record, prepared cases) for the sampler: with a pretext stage on
    unlabelled cases, the fold also lists them (``unlabelled``) and they are prepared."""
    if not uses_unlabelled(cfg):
        return fold, context.prepared
    return {**fold, "unlabelled": sorted(context.unlabelled)}, {**context.prepared, **context.unlabelled}


def rule_fold(cfg: ExperimentConfig, fold: dict, context: RunContext) -> FoldResult:
    """A fold of a PET rule (:mod:`fusionseg.inference.rules`): every test case's SUV
    image read from its file and thresholded, post-processed as configured (none or
    fixed), written and evaluated exactly as a trained model's predictions."""
    from fusionseg.inference.rules import rule_labels

    start, k, scheme = time.perf_counter(), fold["fold"], context.dataset.scheme
    post, post_info = decide_postprocess(cfg, None, fold, context, 1)  # none or fixed: no model involved
    rows, lesions = [], []
    for case_id in fold["test"]:
        case, prepared = context.dataset.case(case_id), context.prepared[case_id]
        gt, spacing = ground_truth(case)
        pred = post(rule_labels(case, cfg.threshold, scheme), spacing, scheme)
        save_label_map(pred, case.images[PET].path, cfg.run_dir() / "predictions" / f"{case_id}.nii.gz", overwrite=True)
        region_rows, case_lesions = evaluate_case(
            *in_scope(cfg, prepared, pred, gt),
            spacing,
            scheme,
            metrics=cfg.evaluation.metrics,
            challenge=cfg.evaluation.lesion_params(),
        )
        rows += [{"case": case_id, "fold": k, **r} for r in region_rows]
        lesions += [{"case": case_id, "fold": k, **r} for r in case_lesions]
    with atomic_path(fold_dir(cfg, k) / "fit.json") as tmp:
        record = {"fold": k, "rule": cfg.threshold.model_dump(mode="json"), "stages": [], "checkpoint": None}
        tmp.write_text(json.dumps({**record, "postprocess": post_info}, indent=1))
    seconds = round(time.perf_counter() - start, 1)
    return write_fold_result(cfg, fold, scheme, rows, lesions, [], post, seconds)


def test_fold(
    cfg: ExperimentConfig, model, fold: dict, context: RunContext, post: Postprocess, divisor: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """Predict, write and evaluate every test case of ``fold``; returns (region rows,
    lesion rows, fused-image quality rows)."""
    k, scheme, modalities = fold["fold"], context.dataset.scheme, context.modalities
    infer, params = get_inferer(cfg.spatial_dims), cfg.evaluation.lesion_params()
    options = InferOptions.from_config(cfg)
    capabilities = getattr(model, "capabilities", frozenset())
    makes_fused, makes_pretext = "fusion_image" in capabilities, "pretext_image" in capabilities
    if makes_pretext and fold["test"]:
        first = fold["test"][0]
        save_pretext_figure(model, context.prepared[first], modalities, fold_dir(cfg, k) / "pretext_example.png")
    rows, lesions, quality = [], [], []
    for case_id in fold["test"]:
        case, prepared = context.dataset.case(case_id), context.prepared[case_id]
        gt, spacing = ground_truth(case)
        pred = post(infer([model], prepared, modalities, scheme, divisor, options), spacing, scheme)
        save_label_map(
            pred, case.images[modalities[0]].path, cfg.run_dir() / "predictions" / f"{case_id}.nii.gz", overwrite=True
        )
        slab = (
            slab_slices(prepared, cfg.sampling.mode, cfg.sampling.central_k)
            if cfg.evaluation.scope == "sampled_slices"
            else None
        )
        save_example(
            model, prepared, modalities, pred, scheme, cfg.run_dir() / "examples" / f"{case_id}.npz", slices=slab
        )
        if makes_fused or makes_pretext:
            measure = fusion_quality_case if makes_fused else pretext_quality_case
            quality.append({"case": case_id, "fold": k, **measure(model, prepared, modalities, cfg.sampling.val_mode)})
        region_rows, case_lesions = evaluate_case(
            *in_scope(cfg, prepared, pred, gt), spacing, scheme, metrics=cfg.evaluation.metrics, challenge=params
        )
        rows += [{"case": case_id, "fold": k, **r} for r in region_rows]
        lesions += [{"case": case_id, "fold": k, **r} for r in case_lesions]
    return rows, lesions, quality


def write_fold_result(
    cfg: ExperimentConfig,
    fold: dict,
    scheme,
    rows: list[dict],
    lesions: list[dict],
    quality: list[dict],
    post: Postprocess,
    seconds: float,
) -> FoldResult:
    """Write the fold's test metrics (evaluate's writer and schema) and return them."""
    folder = fold_dir(cfg, fold["fold"])
    names = resolve_metrics(cfg.evaluation.metrics, scheme)
    per_case = pd.DataFrame(rows, columns=["case", "fold", "region", *names])
    per_lesion = pd.DataFrame(lesions, columns=LESION_COLUMNS)
    summary = build_summary(
        per_case,
        names,
        cfg.evaluation.lesion_params(),
        scheme,
        "dataset folder",
        "fold predictions",
        n_cases=per_case["case"].nunique(),
        fold=fold["fold"],
        inputs=evaluation_inputs(cfg.postprocess, cfg.evaluation, cfg.inference),
        postprocess=post.to_dict(),
        seconds=seconds,
    )
    frame = pd.DataFrame(quality) if quality else None
    if frame is not None:
        with atomic_path(folder / quality_file(frame)) as tmp:
            frame.to_csv(tmp, index=False)
    write_results(folder, per_case, per_lesion, summary)
    return FoldResult(cfg.name, fold["fold"], per_case, per_lesion, frame, post.to_dict(), seconds)
