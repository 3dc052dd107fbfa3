"""``fusionseg evaluate-subsets RUN_DIR``: score a finished run's folds on modality
subsets (:mod:`fusionseg.experiments.subsets`) without retraining."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from fusionseg.errors import ConfigError, FusionsegError


def _run_config(run_dir: Path, subsets: str, simulate: str | None, data_root: Path | None):
    """The run's saved config pointed at ``run_dir`` with the subsets (and simulation,
    data root) asked for."""
    from fusionseg.config import load_saved_config, validate_config

    path = run_dir / "config.yaml"
    if not path.exists():
        raise FusionsegError(f"{run_dir}: no config.yaml; pass a run folder written by `fusionseg train` or `compare`.")
    raw = load_saved_config(path).model_dump(mode="json")
    raw.update(name=run_dir.name, output_dir=str(run_dir.parent))
    raw["evaluation"]["modality_subsets"] = "all" if subsets == "all" else [s for s in subsets.split(",") if s]
    if simulate is not None:
        raw["missing"]["simulate"] = simulate
    if data_root is not None:
        raw["data"]["root"] = str(data_root)
    if raw["strategy"] == "threshold":
        raise ConfigError(f"{run_dir}: a PET rule run reads the SUV image only; it has no modality subsets.")
    return validate_config(raw, source=str(path))


def evaluate_subsets_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (with fold_*/fit.json and config.yaml).")],
    subsets: Annotated[
        str,
        typer.Option(
            "--subsets",
            help="all (every non-empty subset of the run's modalities: 15 for T1, T1ce, T2, FLAIR) or a "
            "comma-separated list such as t1ce+flair,flair.",
        ),
    ] = "all",
    simulate: Annotated[
        Optional[str],
        typer.Option(
            "--simulate",
            help="How an absent modality is shown to the model: zero, mean, drop_branch or zero_features "
            "(branch models). Default: the run's missing.simulate.",
        ),
    ] = None,
    data_root: Annotated[
        Optional[Path], typer.Option("--data-root", help="The dataset folder, if it moved since training.")
    ] = None,
) -> None:
    """Score every test case of a finished run with only some of its MRI sequences.

    Each fold's model predicts its test cases once per modality subset, the absent
    sequences simulated as --simulate says; results go to fold_K/subsets/ (read back
    when rerun with the same settings) and the run folder gets modality_subsets.md
    (S1 Table 1 layout: one row per subset, mean ± sd [95 % CI] per region),
    modality_subsets.csv, modality_subsets.png and metrics_per_case_subsets.csv.

    Example: fusionseg evaluate-subsets runs/baseline_brats18_cpu --subsets all
    """
    from fusionseg.data.splits import load_splits
    from fusionseg.experiments.jobs import RunContext, load_dataset
    from fusionseg.experiments.runner import prepare_all
    from fusionseg.experiments.subsets import fold_subsets, write_run_subsets

    console, start = Console(highlight=False), time.perf_counter()
    cfg = _run_config(Path(run_dir), subsets, simulate, data_root)
    dataset, modalities = load_dataset(cfg)
    context = RunContext(dataset, modalities, prepare_all(dataset, cfg))
    split_file = cfg.split.file or cfg.run_dir() / "splits.json"
    folds = [f for f in load_splits(split_file)["folds"] if (cfg.run_dir() / f"fold_{f['fold']}" / "fit.json").exists()]
    if not folds:
        raise FusionsegError(f"{run_dir}: no trained fold (fold_*/fit.json); train the run first.")
    import pandas as pd

    parts = [fold_subsets(cfg, fold, context) for fold in folds]
    frame = pd.concat([p[0] for p in parts], ignore_index=True).assign(run=cfg.name)
    attention = [p[1] for p in parts if p[1] is not None]
    attention = pd.concat(attention, ignore_index=True).assign(run=cfg.name) if attention else None
    paths = write_run_subsets(cfg, frame, modalities, dataset.scheme, cfg.run_dir(), attention)
    console.print(
        Text(
            f"{frame['subset'].nunique()} modality subsets x {frame['case'].nunique()} test cases of "
            f"{len(folds)} fold(s), absent sequences simulated as {cfg.missing.simulate}: "
            f"{', '.join(str(p) for p in paths)} ({time.perf_counter() - start:.0f} s)"
        ),
        soft_wrap=True,
    )
