"""``fusionseg evaluate``: score a folder of predictions against ground truth.

Registered by the main CLI as ``app.command("evaluate")(evaluate_command)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusionseg.cli_options import ProgressOption, QuietOption
from fusionseg.constants import HD95_PENALTY_MM, LABEL_SCHEMES
from fusionseg.data.io import ensure_writable
from fusionseg.errors import ConfigError
from fusionseg.evaluation.metrics.lesionwise import CHALLENGES, challenge_params


def evaluate_command(
    pred_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder of predicted label maps, one <case>.nii.gz per case, in the dataset's "
            "label convention (e.g. {0,1,2,4} for BraTS 2018-2021, {0,1,2,3} for BraTS 2023).",
            show_default=False,
        ),
    ],
    gt: Annotated[
        Path,
        typer.Argument(
            help="Ground truth: a dataset folder (BraTS 2018-2021, BraTS 2023, MSD Task01, nnU-Net raw, "
            "autoPET layouts) or a folder of <case>.nii.gz label maps (e.g. labelsTr/).",
            show_default=False,
        ),
    ],
    challenge: Annotated[
        str,
        typer.Option(
            "--challenge",
            "-c",
            help="Lesion-wise protocol of BraTS 2023: GLI (d=3, tau=50 mm^3), SSA (3, 50), MEN (1, 50), "
            "PED (3, 50), MET (1, 2), or custom (give --dilation and --volume-threshold).",
        ),
    ] = "GLI",
    dilation: Annotated[
        int | None,
        typer.Option(
            "--dilation", min=0, help="Custom GT dilation d in voxels (18-neighbourhood); overrides the preset's."
        ),
    ] = None,
    volume_threshold: Annotated[
        float | None,
        typer.Option(
            "--volume-threshold",
            min=0.0,
            help="Custom lesion volume threshold tau in mm^3 (lesions <= tau are ignored); overrides the preset's.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            "--output",
            "-o",
            help="Folder for metrics_per_case.csv, metrics_per_lesion.csv and summary.json "
            "(default: <PRED_DIR>/evaluation). --output is the same option.",
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            "-m",
            help="Comma-separated metric names (default: all that apply): dice, hd95, lesion_dice, "
            "lesion_hd95, tp, fn, fp, sensitivity, specificity, asd, and for PET/CT fpv_ml, fnv_ml.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", "-w", min=1, help="Cases evaluated in parallel (processes). Results do not depend on it."
        ),
    ] = 1,
    scheme: Annotated[
        str | None,
        typer.Option(
            "--scheme",
            "-s",
            help=f"Label scheme ({', '.join(sorted(LABEL_SCHEMES))}). Default: from the dataset layout, or "
            "inferred from the GT label values (4 -> brats2017, 3 -> brats2023, only 0/1 -> petct).",
        ),
    ] = None,
    quiet: QuietOption = False,
    progress: ProgressOption = True,
) -> None:
    """Evaluate predictions with the BraTS 2023 metrics (whole-image and lesion-wise).

    For every case and region (WT/TC/ET from the label scheme, or the PET/CT tumour)
    it computes: Dice (both empty -> 1); HD95 in mm from header spacing, surface-area
    weighted, the larger of the two directed 95th percentiles (BraTS 2023 / DeepMind;
    both empty -> 0, one empty -> 374 mm); lesion-wise Dice and HD95 (26-connected
    components, GT lesions merged by dilation d, lesions of volume <= tau ignored, each
    unmatched prediction a false positive scored Dice 0 / HD95 374) with TP/FN/FP lesion
    counts; voxel sensitivity and specificity; symmetric ASD (MONAI); and for PET/CT the
    false-positive / false-negative volumes in mL. No metric is ever NaN.

    Predictions are read in the ground truth's label convention (from the dataset
    layout, --scheme, or the GT label values); the output names it for both sides. A
    label_convention.json in PRED_DIR (written by `fusionseg predict`) must record that
    same convention, else the command stops (re-predict with `--labels dataset`).

    Writes metrics_per_case.csv (one row per case and region), metrics_per_lesion.csv
    (one row per GT lesion and per false-positive component) and summary.json (mean,
    median, sd, 95% bootstrap CI and n per region and metric, plus the conventions used).
    """
    from rich.console import Console
    from rich.table import Table

    from fusionseg.evaluation.folder import evaluate_folder

    console = Console()
    name = challenge.strip().upper().removeprefix("BRATS-")
    if name not in CHALLENGES and name != "CUSTOM":
        raise typer.BadParameter(f"choose one of {', '.join(CHALLENGES)} or custom", param_hint="--challenge")
    if name == "CUSTOM" and (dilation is None or volume_threshold is None):
        raise typer.BadParameter("custom needs both --dilation and --volume-threshold", param_hint="--challenge")
    if scheme is not None and scheme not in LABEL_SCHEMES:
        raise typer.BadParameter(
            f"unknown label scheme {scheme!r}; choose one of {', '.join(sorted(LABEL_SCHEMES))}", param_hint="--scheme"
        )
    params = challenge_params(name, dilation, volume_threshold)
    out_dir = output if output is not None else pred_dir / "evaluation"
    ensure_writable(out_dir)
    try:
        per_case, _, summary = evaluate_folder(
            pred_dir,
            gt,
            output_dir=out_dir,
            challenge=params,
            metrics=metrics,
            workers=workers,
            scheme=scheme,
            progress=progress and not quiet,
        )
    except (ValueError, KeyError) as exc:  # an option value the evaluation cannot use
        raise ConfigError(str(exc.args[0] if exc.args else exc)) from exc
    if quiet:
        console.print(f"results in {out_dir}")
        return
    conv = summary["conventions"]
    table = Table(
        title=f"{summary['n_cases']} cases, BraTS-{conv['challenge']} "
        f"(d={conv['dilation_voxels']}, tau={conv['volume_threshold_mm3']:g} mm^3, "
        f"penalty {HD95_PENALTY_MM:g} mm): mean [95% CI]"
    )
    table.add_column("metric")
    regions = list(summary["regions"])
    for region in regions:
        table.add_column(region, justify="right")
    for name in conv["metrics"]:
        cells = []
        for region in regions:
            s = summary["regions"][region][name]
            cells.append(f"{s['mean']:.4g} [{s['ci95_low']:.4g}, {s['ci95_high']:.4g}]")
        table.add_row(name, *cells)
    console.print(table)
    gt_labels, pred_labels = conv["gt_labels"], conv["prediction_labels"]
    values = "{" + ",".join(conv["labels"]) + "}"
    console.print(
        f"labels compared: predictions {pred_labels['scheme']} {values} "
        f"({pred_labels['source']}) vs ground truth {gt_labels['scheme']} {values} "
        f"({gt_labels['source']}): " + ", ".join(f"{v} {n}" for v, n in conv["labels"].items()),
        markup=False,
        soft_wrap=True,
    )
    console.print(f"results in {out_dir}")
