"""The ``fusionseg`` command line (typer).

fusionseg data check DIR          validate a dataset folder
fusionseg train CONFIG            cross-validate one experiment config
fusionseg compare CONFIG...       several configs on the same data and splits
fusionseg predict RUN INPUT OUT   label maps for new cases
fusionseg evaluate PRED GT        metrics of a folder of predictions
fusionseg demo                    phantoms -> train -> evaluate in minutes
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fusionseg.cli_options import ProgressOption, QuietOption
from fusionseg.errors import FusionsegError, exit_code

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="fusionseg",
    help="Multimodal medical image segmentation (brain-tumour MRI, PET/CT): train, "
    "compare, predict and evaluate fusion strategies under one protocol.\n\n"
    "Start with `fusionseg demo`, then `fusionseg data check YOUR_DATA`, then "
    "`fusionseg train configs/baseline_brats18_cpu.yaml --set data.root=YOUR_DATA`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset tools: validate a folder before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def friendly_errors(func):
    """Print fusionseg's own errors (bad data, bad config) and operating-system errors
    (a file that cannot be read or written) as one message without a traceback, and
    exit with the code of :func:`fusionseg.errors.exit_code` (1 data, 2 usage)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (FusionsegError, OSError) as exc:
            err_console.print(f"[bold red]error:[/] {_describe(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code(exc)) from None

    return wrapper


def _describe(exc: BaseException) -> str:
    """One-line text of an error; OS errors name the file and what to check."""
    from rich.markup import escape

    if isinstance(exc, OSError) and not isinstance(exc, FileExistsError) and exc.filename:
        text = (
            f"{exc.filename}: {exc.strerror or exc}. Check that the path exists and that "
            "you may read (inputs) or write (outputs) it, and that the disk is not full."
        )
    else:
        text = str(exc)
    return escape(text)


def _register_optional_commands() -> None:
    from fusionseg.data.check import check_command
    from fusionseg.data.kaggle_cli import convert_kaggle_h5_command, verify_kaggle_h5_command
    from fusionseg.evaluation.cli import evaluate_command
    from fusionseg.experiments.subsets_cli import evaluate_subsets_command
    from fusionseg.inference.cli import predict_command

    data_app.command("check")(friendly_errors(check_command))
    data_app.command("convert-kaggle-h5")(friendly_errors(convert_kaggle_h5_command))
    data_app.command("verify-kaggle-h5")(friendly_errors(verify_kaggle_h5_command))
    app.command("evaluate")(friendly_errors(evaluate_command))
    app.command("evaluate-subsets")(friendly_errors(evaluate_subsets_command))
    app.command("predict")(friendly_errors(predict_command))


_register_optional_commands()

ExecutorOption = Annotated[
    str,
    typer.Option(
        "--executor",
        help="Where fold jobs run: local (this process, one after another; default) or ray (one Ray task per run x fold; pip install 'fusionseg[ray]'). See docs/architecture.md for a Slurm or cloud cluster.",
    ),
]
AddressOption = Annotated[
    Optional[str],
    typer.Option(
        "--address",
        help="Ray cluster address (e.g. auto, ray://head:10001); default: start a local Ray instance with this machine's CPUs.",
    ),
]
CpusOption = Annotated[
    Optional[int],
    typer.Option(
        "--cpus",
        min=1,
        help="CPUs per fold job; also sets train.threads (the torch thread count changes float rounding, so local and ray runs with the same --cpus give the same numbers). Default: the config's train.threads (ray: 1).",
    ),
]
GpusOption = Annotated[float, typer.Option("--gpus", min=0, help="GPUs per fold job (ray).")]
DevicesOption = Annotated[
    Optional[int],
    typer.Option(
        "--devices",
        min=1,
        help="Devices (GPUs, or CPU processes) per training stage; sets train.devices. With --strategy ddp: one DDP process each.",
    ),
]
DistributedOption = Annotated[
    Optional[str],
    typer.Option(
        "--strategy",
        help="Distributed training strategy (Lightning Fabric), not the fusion strategy of the config: ddp trains each stage on --devices processes (validation counts all-reduced, rank 0 writes); none: one process. Sets train.distributed.",
    ),
]


def _device_overrides(devices: int | None, distributed: str | None) -> list[str]:
    """--devices / --strategy as config overrides (train.devices, train.distributed)."""
    return ([f"train.devices={devices}"] if devices is not None else []) + (
        [f"train.distributed={distributed}"] if distributed is not None else []
    )


OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="A run folder of the same name that holds a run with other settings is "
        "deleted and trained again (default: stop and name the changed settings).",
    ),
]
ResumeChangesOption = Annotated[
    bool,
    typer.Option(
        "--resume-with-changes",
        help="Resume a run folder whose settings differ anyway, keeping its "
        "trained folds; the change is recorded in run.json.",
    ),
]

SetOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help="Override a config value, e.g. --set train.epochs=3 --set data.root=/data/brats "
        "(repeatable; values parsed as YAML).",
    ),
]


@app.command()
@friendly_errors
def train(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).", exists=True, dir_okay=False)],
    set_: SetOption = None,
    output_dir: Annotated[
        Optional[Path], typer.Option(help="Parent folder of the run folder (default: config's output_dir, 'runs').")
    ] = None,
    vgg_weights: Annotated[
        Optional[Path],
        typer.Option(
            help="Local VGG-16 weights (torchvision state dict) for the LRRNet fusion loss (strategies decoupled/joint); sets fusion.perceptual_features.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    overwrite: OverwriteOption = False,
    resume_with_changes: ResumeChangesOption = False,
    progress: ProgressOption = True,
    quiet: QuietOption = False,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    cpus: CpusOption = None,
    gpus: GpusOption = 0.0,
    devices: DevicesOption = None,
    distributed: DistributedOption = None,
    final: Annotated[
        bool,
        typer.Option(
            "--final",
            help="Train the final model for new data: every labelled case but a validation share "
            "(split.val_fraction, for early stopping and post-processing); no test cases, so no test "
            "metrics (cross-validate first). The run folder is <name>-final.",
        ),
    ] = False,
):
    """Train and cross-validate one experiment config.

    Discovers the dataset (data.root), preprocesses every case once (cached), splits
    the cases (k-fold by default, split file saved and reused), trains the strategy on
    2-D axial slices of each fold with early stopping on validation Dice, predicts every
    test case as a whole volume, evaluates it in 3-D (Dice, HD95, lesion-wise) and
    writes the run folder <output_dir>/<name>/: config.yaml, environment.json,
    splits.json, fold_*/ (train_log.csv, tensorboard/, checkpoints/best.ckpt and
    last.ckpt), predictions/, metrics_per_case.csv, metrics_per_lesion.csv,
    summary.json, results.md, overlays/*.png.

    Interrupted? Run the same command again: finished folds are read back and the
    current fold resumes from its last checkpoint. Every case is checked as `fusionseg
    data check` does before any work (once: cached cases were checked when cached).
    A run folder that holds a run with other settings is never silently reused: the
    command stops and names the changed keys (then: a new name, --overwrite or
    --resume-with-changes); changed evaluation / postprocess / inference settings
    re-evaluate the trained folds without retraining.
    """
    from fusionseg.config import load_config

    overrides = list(set_ or []) + _device_overrides(devices, distributed)
    if vgg_weights is not None:
        overrides.append(f"fusion.perceptual_features={vgg_weights}")
    if final:
        overrides.append("split.kind=all")
    cfg = load_config(config, overrides)  # a bad config fails here, before the heavy imports
    if final:
        cfg = _final_config(cfg)
    from fusionseg.experiments.runner import run_experiment

    if output_dir is not None:
        cfg = cfg.model_copy(update={"output_dir": output_dir})
    from fusionseg.experiments.executors import build_executor

    result = run_experiment(
        cfg,
        progress=progress and not quiet,
        overwrite=overwrite,
        resume_with_changes=resume_with_changes,
        executor=build_executor(executor, address, cpus, gpus),
    )
    _print_run(result, quiet)


def _final_config(cfg):
    """``cfg`` for ``train --final``: split.kind all, run named ``<name>-final``.

    Raises:
        ConfigError: the config reuses a split file or picks folds (a final model has
            one split of its own).
    """
    from fusionseg.errors import ConfigError

    if cfg.split.file is not None or cfg.split.run_folds not in (None, [0]):
        raise ConfigError(
            "--final makes its own split (every case but a validation share): drop split.file / run_folds"
        )
    return cfg.model_copy(update={"name": f"{cfg.name}-final"})


@app.command()
@friendly_errors
def compare(
    configs: Annotated[
        list[Path],
        typer.Argument(
            help="One study YAML (with a 'runs' list, e.g. configs/s0_table1.yaml) or several experiment YAMLs on the same dataset.",
            exists=True,
            dir_okay=False,
        ),
    ],
    protocol: Annotated[
        Optional[str],
        typer.Option(
            help="Study protocol, e.g. cpu-small (2 CPU cores) or paper (the source paper's settings, for a GPU). Default: the study's first."
        ),
    ] = None,
    name: Annotated[
        Optional[str],
        typer.Option(help="Name of the comparison folder (default: the study name + protocol, or 'comparison')."),
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Parent folder of the comparison folder.")] = Path("runs"),
    vgg_weights: Annotated[
        Optional[Path],
        typer.Option(
            help="Local VGG-16 weights (torchvision state dict) for the LRRNet fusion loss; sets fusion.perceptual_features.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    rows: Annotated[
        Optional[list[str]],
        typer.Option(
            "--rows",
            help="Run only these rows of a study (comma-separated and/or repeated, e.g. --rows A,B,C-dynamic); the reference row must be among them.",
        ),
    ] = None,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
    resume_with_changes: ResumeChangesOption = False,
    progress: ProgressOption = True,
    quiet: QuietOption = False,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    cpus: CpusOption = None,
    gpus: GpusOption = 0.0,
    devices: DevicesOption = None,
    distributed: DistributedOption = None,
):
    """Run several experiments on the same data and the same case splits, then tabulate.

    Every run becomes a run folder under <output_dir>/<name>/<run name>/ (as `fusionseg
    train` writes it; interrupted comparisons resume). The reference run (a study's
    `reference`, else the first config) anchors the paired Wilcoxon tests.
    comparison.md holds every table (mean ± sd per run, metric and region, with p
    against the reference), fused-image quality for fusion runs, the source paper's
    claims with a verdict each (when the study lists claims; also claims.md/.csv), and
    links the figures examples.png (inputs, fused images, every run's prediction, ground
    truth), paired_dice.png (per-case Dice of each run against the reference) and
    lambdas.png (dynamic loss weights per epoch). Each table is also written as
    <table>.md and <table>.csv (one row per run x region x metric, for plotting);
    comparison.csv has every per-case row.

    Examples (S0 Tables 1 and 2 on 2 CPU cores; then 5-fold CV of a subset of rows):
        fusionseg compare configs/s0_table1.yaml --protocol cpu-small
        fusionseg compare configs/s0_table1.yaml --protocol cpu-small-cv --rows A,B,C-dynamic
    --set applies to every run (e.g. --set data.root=/data/BraTS).
    """
    from fusionseg.experiments.compare import run_comparison
    from fusionseg.experiments.study import load_study_or_configs

    overrides = list(set_ or []) + _device_overrides(devices, distributed)
    if vgg_weights is not None:
        overrides.append(f"fusion.perceptual_features={vgg_weights}")
    selected = [r.strip() for item in rows or [] for r in item.split(",") if r.strip()]
    study = load_study_or_configs(configs, protocol, overrides, name, selected or None)
    from fusionseg.experiments.executors import build_executor

    out = run_comparison(
        study,
        output_dir,
        progress=progress and not quiet,
        overwrite=overwrite,
        resume_with_changes=resume_with_changes,
        executor=build_executor(executor, address, cpus, gpus),
    )
    if not quiet:
        console.print(out["table"], markup=False)
    console.print(f"comparison folder: {out['dir']}")


@app.command()
@friendly_errors
def demo(
    output_dir: Annotated[Path, typer.Option(help="Folder for the phantom data and the run.")] = Path("fusionseg-demo"),
    cases: Annotated[int, typer.Option(help="Number of synthetic cases.")] = 10,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 6,
    progress: ProgressOption = True,
    quiet: QuietOption = False,
):
    """A complete run on synthetic data, in a few minutes on 2 CPU cores.

    Writes CASES multimodal brain-tumour phantoms (T1, T1ce, T2, FLAIR; NCR/ED/ET) in
    the BraTS 2018 layout, checks them, trains the baseline early-fusion U-Net on
    tumour-containing axial slices with a train/val/test split, predicts the test
    cases as whole volumes, evaluates them (Dice, HD95, lesion-wise) and prints the
    table. Everything lands in OUTPUT_DIR (run folder: OUTPUT_DIR/runs/demo).
    """
    from fusionseg.experiments.demo import run_demo

    result = run_demo(output_dir, n_cases=cases, epochs=epochs, progress=progress and not quiet)
    _print_run(result, quiet)


def _print_run(result, quiet: bool) -> None:
    """A finished run's table (unless ``quiet``) and folder; a final model (no test
    cases) says where its test metrics are and how to predict with it."""
    if result.per_case.empty:
        console.print(
            f"final model: no test cases, so no test metrics (the cross-validation run has them). "
            f"Predict new cases with: fusionseg predict {result.run_dir} DATA OUTPUT"
        )
    elif not quiet:
        console.print(terminal_table(result.per_case, result.summary), markup=False)
    console.print(f"run folder: {result.run_dir}")


def terminal_table(per_case, summary: dict) -> str:
    """The run's result for an 80-column terminal: one row per region, mean ± sd of
    Dice, HD95, lesion-wise Dice and HD95 (the full table is in results.md)."""
    metrics = [
        ("dice", "Dice", 3),
        ("hd95", "HD95 mm", 1),
        ("lesion_dice", "LW Dice", 3),
        ("lesion_hd95", "LW HD95 mm", 1),
    ]
    metrics = [m for m in metrics if m[0] in per_case.columns]
    lines = [
        f"{summary['name']}: mean ± sd over {summary['n_cases']} test cases",
        f"{'region':<7}" + "".join(f"{title:>17}" for _, title, _ in metrics),
    ]
    for region in dict.fromkeys(per_case["region"]):
        sub = per_case[per_case["region"] == region]
        cells = []
        for col, _, digits in metrics:
            v = sub[col].astype(float)
            sd = v.std(ddof=1) if len(v) > 1 else 0.0
            cells.append(f"{v.mean():.{digits}f} ± {sd:.{digits}f}".rjust(17))
        lines.append(f"{region:<7}" + "".join(cells))
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
