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

from fusionseg.errors import FusionsegError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="fusionseg",
    help="Multimodal medical image segmentation (brain-tumour MRI, PET/CT): train, "
         "compare, predict and evaluate fusion strategies under one protocol.\n\n"
         "Start with `fusionseg demo`, then `fusionseg data check YOUR_DATA`, then "
         "`fusionseg train configs/baseline_brats.yaml --set data.root=YOUR_DATA`.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset tools: validate a folder before training on it.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


def friendly_errors(func):
    """Print fusionseg's own errors (bad data, bad config) without a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (FusionsegError, FileExistsError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper


def _register_optional_commands() -> None:
    from fusionseg.data.check import check_command
    from fusionseg.evaluation.cli import evaluate_command

    data_app.command("check")(friendly_errors(check_command))
    app.command("evaluate")(friendly_errors(evaluate_command))


_register_optional_commands()

SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a config value, e.g. --set train.epochs=3 --set data.root=/data/brats "
                  "(repeatable; values parsed as YAML).")]


@app.command()
@friendly_errors
def train(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).", exists=True, dir_okay=False)],
    set_: SetOption = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="Parent folder of the run folder (default: config's output_dir, 'runs').")] = None,
    vgg_weights: Annotated[Optional[Path], typer.Option(help="Local VGG-16 weights (torchvision state dict) for the LRRNet fusion loss (strategies decoupled/joint); sets fusion.perceptual_features.", exists=True, dir_okay=False)] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
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
    current fold resumes from its last checkpoint.
    """
    from fusionseg.config import load_config

    overrides = list(set_ or [])
    if vgg_weights is not None:
        overrides.append(f"fusion.perceptual_features={vgg_weights}")
    cfg = load_config(config, overrides)  # a bad config fails here, before the heavy imports
    from fusionseg.experiments.runner import run_experiment

    if output_dir is not None:
        cfg = cfg.model_copy(update={"output_dir": output_dir})
    result = run_experiment(cfg, progress=progress)
    console.print((result.run_dir / "results.md").read_text(), markup=False)
    console.print(f"run folder: {result.run_dir}")


@app.command()
@friendly_errors
def compare(
    configs: Annotated[list[Path], typer.Argument(help="One study YAML (with a 'runs' list, e.g. configs/s0_table1.yaml) or several experiment YAMLs on the same dataset.", exists=True, dir_okay=False)],
    protocol: Annotated[Optional[str], typer.Option(help="Study protocol, e.g. cpu-small (2 CPU cores) or paper (the source paper's settings, for a GPU). Default: the study's first.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name of the comparison folder (default: the study name + protocol, or 'comparison').")] = None,
    output_dir: Annotated[Path, typer.Option(help="Parent folder of the comparison folder.")] = Path("runs"),
    vgg_weights: Annotated[Optional[Path], typer.Option(help="Local VGG-16 weights (torchvision state dict) for the LRRNet fusion loss; sets fusion.perceptual_features.", exists=True, dir_okay=False)] = None,
    rows: Annotated[Optional[list[str]], typer.Option("--rows", help="Run only these rows of a study (comma-separated and/or repeated, e.g. --rows A,B,C-dynamic); the reference row must be among them.")] = None,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
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
    from fusionseg.experiments.compare import load_study_or_configs, run_comparison

    overrides = list(set_ or [])
    if vgg_weights is not None:
        overrides.append(f"fusion.perceptual_features={vgg_weights}")
    selected = [r.strip() for item in rows or [] for r in item.split(",") if r.strip()]
    study = load_study_or_configs(configs, protocol, overrides, name, selected or None)
    out = run_comparison(study, output_dir, progress=progress)
    console.print(out["table"], markup=False)
    console.print(f"comparison folder: {out['dir']}")


@app.command()
@friendly_errors
def predict(
    model: Annotated[Path, typer.Argument(help="Run folder of `fusionseg train` (ensembles its folds) or a best.ckpt file.", exists=True)],
    input: Annotated[Path, typer.Argument(help="A dataset folder (any supported layout) or one case folder.", exists=True)],
    output: Annotated[Path, typer.Argument(help="Folder for <case>.nii.gz label maps.")],
    fold: Annotated[Optional[int], typer.Option(help="Use only this fold's model (default: average all folds).")] = None,
    format: Annotated[Optional[str], typer.Option("--format", help="Dataset layout of INPUT (default: autodetect).")] = None,
    cases: Annotated[Optional[list[str]], typer.Option("--case", help="Predict only this case id (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 16,
    postprocess: Annotated[bool, typer.Option(help="Apply the connected-component post-processing the run chose (fit.json; the folds' median setting for an ensemble).")] = True,
    tta: Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Test-time mirroring: average the 4 in-plane flips of each slice (4x slower). Default: as the run predicted its test cases (config inference.tta).")] = None,
):
    """Predict label maps for new cases.

    Each case is preprocessed exactly as in training, predicted slice-wise (2-D models)
    and written as OUTPUT/<case>.nii.gz in the dataset's own label convention (e.g.
    BraTS 2018: 0/1/2/4), with the input image's exact affine and header. Cases need
    only the modalities the model was trained on; segmentations are not needed.
    Existing files are never replaced without --overwrite. Small whole-tumour
    components are removed as the run's post-processing decided (see config
    `postprocess`); --no-postprocess gives the network's raw arg-max.
    """
    from fusionseg.data.cases import discover
    from fusionseg.errors import DataError
    from fusionseg.inference.predict import load_predictor
    from fusionseg.progress import make_progress

    predictor = load_predictor(model, fold=fold, device=device, postprocess=postprocess, tta=tta)
    try:
        dataset = discover(input, format=format)
        selected = list(dataset.cases)
    except DataError:
        dataset = discover(input.parent, format=format)
        selected = [dataset.case(input.name)]
    if cases:
        selected = [dataset.case(c) for c in cases]
    output.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        clash = [c.case_id for c in selected if (output / f"{c.case_id}.nii.gz").exists()]
        if clash:
            raise FusionsegError(f"{output}: {len(clash)} output file(s) exist (e.g. {clash[0]}.nii.gz); "
                                 "pass --overwrite to replace them.")
    console.print(f"{len(selected)} case(s), model(s): {len(predictor.models)} "
                  f"({', '.join(str(p) for p in predictor.sources)}), modalities {list(predictor.modalities)}, "
                  f"post-processing: {predictor.postprocess.label()}, "
                  f"test-time mirroring: {'on' if predictor.mirror else 'off'}")
    with make_progress() as bar:
        task = bar.add_task("predict", total=len(selected), info="")
        for case in selected:
            predictor.write_case(case, output / f"{case.case_id}.nii.gz", overwrite=overwrite,
                                 batch_size=batch_size)
            bar.update(task, advance=1, info=case.case_id)
    console.print(f"label maps written to {output}")


@app.command()
@friendly_errors
def demo(
    output_dir: Annotated[Path, typer.Option(help="Folder for the phantom data and the run.")] = Path("fusionseg-demo"),
    cases: Annotated[int, typer.Option(help="Number of synthetic cases.")] = 10,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 6,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
):
    """A complete run on synthetic data, in a few minutes on 2 CPU cores.

    Writes CASES multimodal brain-tumour phantoms (T1, T1ce, T2, FLAIR; NCR/ED/ET) in
    the BraTS 2018 layout, checks them, trains the baseline early-fusion U-Net on
    tumour-containing axial slices with a train/val/test split, predicts the test
    cases as whole volumes, evaluates them (Dice, HD95, lesion-wise) and prints the
    table. Everything lands in OUTPUT_DIR (run folder: OUTPUT_DIR/runs/demo).
    """
    from fusionseg.experiments.demo import run_demo

    result = run_demo(output_dir, n_cases=cases, epochs=epochs, progress=progress)
    console.print((result.run_dir / "results.md").read_text(), markup=False)
    console.print(f"run folder: {result.run_dir}")


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
