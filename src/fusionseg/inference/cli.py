"""``fusionseg predict``: label maps for new cases, every input checked before any work.

Registered by the main CLI as ``app.command("predict")(friendly_errors(predict_command))``.

Before anything is written the command resolves INPUT (a dataset folder, or one case
folder of one), the ``--case`` ids, the existing outputs and the label convention to
write, and checks every case to predict with the checks of ``fusionseg data check``
(:func:`fusionseg.data.check.check_case`, through the shared
:func:`fusionseg.data.validate.validate_cases`) on the modalities the model needs. Every user
error is raised as a fusionseg error with the file and the fix, which
``friendly_errors`` prints as one message: :class:`~fusionseg.errors.DataError`
(exit code 1) for bad data (missing, unreadable or inconsistent files, an unusable
INPUT folder), :class:`~fusionseg.errors.FusionsegError` / ``FileExistsError`` (exit
code 2) for bad usage (unknown case id, existing outputs without ``--overwrite`` /
``--skip-existing``, incompatible options, a model that is not a trained run).
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fusionseg.cli_options import ProgressOption, QuietOption
from rich.console import Console
from rich.text import Text

from fusionseg.data.io import ensure_writable
from fusionseg.errors import DataError, FusionsegError, OutputError

if TYPE_CHECKING:
    from fusionseg.constants import LabelScheme
    from fusionseg.data.cases import Case, Dataset
    from fusionseg.data.problems import Problem


class LabelConvention(str, Enum):
    """Label convention of the written maps: the input dataset's or the model's."""

    dataset = "dataset"
    model = "model"


def _is_label_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".nii.gz", ".nii")) and not path.name.startswith(".")


def _file_case_id(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def resolve_input(folder: Path, format: str | None = None) -> tuple[Dataset, tuple[Case, ...]]:
    """The dataset ``folder`` holds and all its cases or, when ``folder`` is one case
    folder (e.g. ``BraTS2021_00000/`` with its four images), its parent's dataset and
    that case only.

    Raises:
        DataError: about ``folder`` itself: missing, empty, no supported layout,
            several layouts, not the ``format`` layout.
    """
    from fusionseg.data.cases import discover

    try:
        dataset = discover(folder, format=format)
    except DataError:
        found = _as_case_folder(folder, format)
        if found is None:
            raise
        return found
    if not dataset.cases:
        raise DataError("no cases found.", folder, "point to the folder that holds the cases.")
    return dataset, dataset.cases


def _as_case_folder(folder: Path, format: str | None) -> tuple[Dataset, tuple[Case, ...]] | None:
    """(parent's dataset, (the case,)) when ``folder`` holds image files and is a case
    of the dataset its parent folder holds (in the ``format`` layout, or in any that
    recognises the parent), else None."""
    from fusionseg.data.cases import LAYOUTS, discover

    if not folder.is_dir() or not any(_is_label_file(p) for p in folder.iterdir()):
        return None
    folder = folder.resolve()
    names = [format] if format else [n for n, lay in LAYOUTS.items() if lay.detect(folder.parent) > 0]
    hits = []
    for name in names:
        try:
            dataset = discover(folder.parent, format=name)
        except DataError:
            continue
        hits += [(dataset, c) for c in dataset.cases if any(ref.path.parent == folder for ref in c.images.values())]
    if len(hits) > 1:
        raise DataError(
            f"the case folder fits several layouts ({', '.join(d.format for d, _ in hits)}).",
            folder,
            "choose one with --format.",
        )
    return (hits[0][0], (hits[0][1],)) if hits else None


def select_cases(available: Sequence[Case], ids: Sequence[str] | None, where: Path) -> list[Case]:
    """The cases named by ``ids`` (in that order, repeats dropped); all when none.

    Raises:
        FusionsegError: an id is not among ``available`` (names it, lists valid ids
            and close matches).
    """
    if not ids:
        return list(available)
    by_id = {c.case_id: c for c in available}
    wanted = list(dict.fromkeys(ids))
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        valid = sorted(by_id)
        shown = ", ".join(valid[:5]) + (f", ... ({len(valid)} in all)" if len(valid) > 5 else "")
        close = sorted({m for u in unknown for m in difflib.get_close_matches(u, valid, n=3)})
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise FusionsegError(
            f"--case: no case {', '.join(repr(u) for u in unknown)} in {where}. Valid case ids: {shown}.{hint}"
        )
    return [by_id[i] for i in wanted]


def require_modalities(dataset: Dataset, modalities: Sequence[str]) -> None:
    """Raises DataError (naming both lists) unless ``dataset`` has every modality."""
    missing = [m for m in modalities if m not in dataset.modalities]
    if missing:
        raise DataError(
            f"the model needs modalities {', '.join(modalities)}; this {dataset.format} "
            f"dataset has {', '.join(dataset.modalities)} (missing {', '.join(missing)}).",
            dataset.root,
            "predict with a model trained on this dataset's modalities.",
        )


def check_inputs(
    cases: Sequence[Case],
    dataset: Dataset,
    modalities: Sequence[str],
    console: Console | None = None,
    absent: dict[str, list[str]] | None = None,
    hint: str = "",
) -> list[Problem]:
    """Check every case as ``fusionseg data check`` does, on ``modalities`` only
    (segmentations and other modalities are not needed for prediction and not read),
    through the validation path the other commands share
    (:func:`fusionseg.data.validate.validate_cases`, which prints warnings on ``console``).
    ``absent``: per case id, the sequences it lacks that the model may do without
    (they are not checked); ``hint``: added to the fix.

    Returns:
        the warning-level problems.
    Raises:
        DataError: the dataset lacks one of ``modalities``, or a case has an
            error-level problem (missing or unreadable file, shape or affine mismatch
            between modalities, NaN/inf voxels, an empty image); the message lists
            the problems with their files and fixes.
    """
    from fusionseg.data.cases import Case
    from fusionseg.data.validate import validate_cases

    require_modalities(dataset, modalities)
    absent = absent or {}
    needed = [
        Case(c.case_id, {m: c.images[m] for m in modalities if m not in absent.get(c.case_id, ())}, None) for c in cases
    ]
    view = replace(dataset, cases=tuple(needed), skipped=())  # no labels: no seg checks
    return validate_cases(
        needed, view, console, what="prediction (nothing was written)", fix="or leave them out with --case" + hint
    )


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise FusionsegError(f"--device {device!r}: {exc}. Use e.g. cpu or cuda.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FusionsegError(f"--device {device}: CUDA is not available on this machine; use --device cpu.")


def _folder_convention(output: Path, target: LabelScheme, rewritten: set[str], err: Console) -> bool:
    """Whether ``output``'s label_convention.json may be (re)written for ``target``:
    label maps this run keeps must be in that convention.

    Raises:
        OutputError: they are recorded in another convention.
        DataError: the recorded convention cannot be read.
    """
    from fusionseg.constants import describe_labels
    from fusionseg.data.io import LABEL_CONVENTION_JSON, read_label_convention

    if not output.is_dir():
        return True
    kept = [p for p in output.iterdir() if _is_label_file(p) and _file_case_id(p) not in rewritten]
    if not kept:
        return True
    recorded = read_label_convention(output)
    if recorded is None:
        err.print(
            Text(
                f"warning: {output} already holds {len(kept)} label map(s) (e.g. {kept[0].name}) "
                f"without a {LABEL_CONVENTION_JSON}: their label convention is unknown, so none "
                f"is written; check that they use {target.name} ({describe_labels(target)})."
            ),
            soft_wrap=True,
        )
        return False
    if recorded.labels != target.labels:
        raise OutputError(
            f"{output}: its {len(kept)} label map(s) are in the {recorded.name} convention "
            f"({describe_labels(recorded)}; {LABEL_CONVENTION_JSON}) but this run would write "
            f"{target.name} ({describe_labels(target)}). Use the --labels choice of the earlier run, "
            "another output folder, or --overwrite with every case."
        )
    return True


def _convention_line(
    target: LabelScheme, model: LabelScheme, dataset: LabelScheme, choice: LabelConvention, mapping: dict[int, int]
) -> str:
    from fusionseg.constants import describe_labels

    text = f"labels: written in the {target.name} convention ({describe_labels(target)})"
    if model.labels == dataset.labels:
        return text + ", the dataset's and the model's"
    if choice is LabelConvention.dataset:
        moved = ", ".join(f"{k} {model.labels[k]} -> {v}" for k, v in mapping.items() if k != v)
        return (
            text + f", the dataset's; the model predicts {model.name} ({describe_labels(model)}), "
            f"mapped by label name{': ' + moved if moved else ''}"
        )
    return text + f", the model's (--labels model); the dataset's own is {dataset.name} ({describe_labels(dataset)})"


def predict_command(
    model: Annotated[
        Path,
        typer.Argument(help="Run folder of `fusionseg train` (ensembles its folds) or a best.ckpt file.", exists=True),
    ],
    input: Annotated[
        Path,
        typer.Argument(
            help="A dataset folder (any supported layout) or one case folder.", exists=True, file_okay=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Argument(
            help="Folder for <case>.nii.gz label maps (and label_convention.json, the convention they are in)."
        ),
    ],
    fold: Annotated[int | None, typer.Option(help="Use only this fold's model (default: average all folds).")] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="Dataset layout of INPUT (default: autodetect).")
    ] = None,
    cases: Annotated[list[str] | None, typer.Option("--case", help="Predict only this case id (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            help="Keep existing output files and predict only the cases without one (finishes an interrupted folder)."
        ),
    ] = False,
    labels: Annotated[
        LabelConvention,
        typer.Option(
            "--labels",
            case_sensitive=False,
            help="Label convention written: 'dataset' = INPUT's own (e.g. BraTS 2023: ET = 3; the model's labels mapped by name: NCR/NET, ED, ET), 'model' = the training data's (e.g. BraTS 2018: ET = 4).",
        ),
    ] = LabelConvention.dataset,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Slices per forward pass.")] = 16,
    postprocess: Annotated[
        bool,
        typer.Option(
            help="Apply the connected-component post-processing the run chose (fit.json; the folds' median setting for an ensemble)."
        ),
    ] = True,
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta",
            help="Test-time mirroring: average the 4 in-plane flips of each slice (4x slower). Default: as the run predicted its test cases (config inference.tta).",
        ),
    ] = None,
    progress: ProgressOption = True,
    quiet: QuietOption = False,
):
    """Predict label maps for new cases.

    Each case is preprocessed exactly as in training, predicted slice-wise (2-D models)
    and written as OUTPUT/<case>.nii.gz with the input image's exact affine and header,
    by default in INPUT's own label convention (--labels dataset: a BraTS 2018 model on
    a BraTS 2023 folder writes 0/1/2/3; --labels model writes the training data's, e.g.
    0/1/2/4); the convention is printed and recorded in OUTPUT/label_convention.json,
    which `fusionseg evaluate` reads. Cases need only the modalities the model was
    trained on; segmentations are not needed. Before anything is written every case is
    checked as `fusionseg data check` does (files present and readable, same shape and
    affine, finite, not empty); a problem stops the command with the file and the fix.
    Existing files are never replaced without --overwrite; --skip-existing keeps them
    and predicts the rest. Each file is written atomically (an interrupted run leaves
    no partial file). Small whole-tumour components are removed as the run's
    post-processing decided (see config `postprocess`); --no-postprocess gives the
    network's raw arg-max.

    Exit code 0 on success, 1 for bad input data, 2 for bad usage.
    """
    _predict(
        model,
        input,
        output,
        fold=fold,
        format=format,
        case_ids=cases,
        overwrite=overwrite,
        skip_existing=skip_existing,
        labels=labels,
        device=device,
        batch_size=batch_size,
        postprocess=postprocess,
        tta=tta,
        progress=progress and not quiet,
        err=Console(stderr=True, highlight=False),
    )


def _predict(
    model: Path,
    input: Path,
    output: Path,
    *,
    fold: int | None,
    format: str | None,
    case_ids: list[str] | None,
    overwrite: bool,
    skip_existing: bool,
    labels: LabelConvention,
    device: str,
    batch_size: int,
    postprocess: bool,
    tta: bool | None,
    progress: bool,
    err: Console,
) -> None:
    from fusionseg.data.cases import LAYOUTS

    console = Console(highlight=False)
    if overwrite and skip_existing:
        raise FusionsegError(
            "--overwrite and --skip-existing exclude each other (replace existing "
            "outputs, or keep them and predict the rest): choose one."
        )
    if format is not None and format not in LAYOUTS:
        raise FusionsegError(
            f"--format: unknown layout {format!r}; choose one of {', '.join(LAYOUTS)} (or omit it to autodetect)."
        )
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: exists and is not a folder; give a folder for the label maps.")
    ensure_writable(output)
    dataset, available = resolve_input(input, format)
    selected = select_cases(available, case_ids, input)
    _check_device(device)
    from fusionseg.inference.predict import label_mapping, load_predictor

    predictor = load_predictor(model, fold=fold, device=device, postprocess=postprocess, tta=tta)
    require_modalities(dataset, predictor.modalities)
    target = dataset.scheme if labels is LabelConvention.dataset else predictor.scheme
    mapping = label_mapping(predictor.scheme, target)

    existing = [c.case_id for c in selected if (output / f"{c.case_id}.nii.gz").exists()]
    if existing and not (overwrite or skip_existing):
        raise OutputError(
            f"{output}: {len(existing)} output file(s) exist (e.g. {existing[0]}.nii.gz); "
            "pass --overwrite to replace them, or --skip-existing to keep them and "
            "predict the other cases."
        )
    todo = [c for c in selected if c.case_id not in existing] if skip_existing else selected
    record = _folder_convention(output, target, {c.case_id for c in todo}, err)
    absent, hint = _absent_sequences(predictor, todo, err)
    check_inputs(todo, dataset, predictor.modalities, console=err, absent=absent, hint=hint)  # warnings printed

    skipped = f", {len(existing)} skipped (output exists)" if skip_existing and existing else ""
    console.print(
        Text(
            f"{len(todo)} case(s) to predict{skipped}, {_what_predicts(predictor)}, "
            f"modalities {', '.join(predictor.modalities)}, "
            f"post-processing: {predictor.postprocess.label()}, "
            f"test-time mirroring: {'on' if predictor.mirror else 'off'}"
        ),
        soft_wrap=True,
    )
    console.print(Text(_convention_line(target, predictor.scheme, dataset.scheme, labels, mapping)), soft_wrap=True)
    if not todo:
        console.print(Text(f"nothing to predict: every selected case has its output in {output}"), soft_wrap=True)
        return
    from fusionseg.data.io import write_label_convention
    from fusionseg.progress import make_progress

    output.mkdir(parents=True, exist_ok=True)
    if record:
        write_label_convention(
            output,
            target,
            convention=labels.value,
            model_scheme=predictor.scheme.name,
            dataset_scheme=dataset.scheme.name,
        )
    start = time.perf_counter()
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("predict", total=len(todo), info="")
        for case in todo:
            predictor.write_case(
                case, output / f"{case.case_id}.nii.gz", overwrite=overwrite, batch_size=batch_size, labels=target
            )
            bar.update(task, advance=1, info=case.case_id)
    console.print(Text(f"{len(todo)} label map(s) written to {output} ({target.name} labels)"), soft_wrap=True)
    console.print(Text(cost_line((time.perf_counter() - start) / len(todo), predictor)), soft_wrap=True)


def _absent_sequences(predictor, cases: Sequence[Case], err: Console) -> tuple[dict[str, list[str]], str]:
    """(per case id the model's sequences it lacks and may do without, each noted in
    the log; the fix to add to the input check's message). A model that cannot do
    without them, or a case with none of them, is left to the input check, which
    names the missing files."""
    absent = {c.case_id: predictor.absent(c) for c in cases}
    lacking = [c for c in cases if absent[c.case_id]]
    if not predictor.missing_ok:
        hint = (
            "; a model built for absent sequences (strategy a2fseg) or trained with modality dropout "
            "(`--set missing.dropout=alternate`) predicts without them"
            if lacking
            else ""
        )
        return {}, hint
    tolerated = {c.case_id: absent[c.case_id] for c in lacking if len(absent[c.case_id]) < len(predictor.modalities)}
    for case_id, missing in tolerated.items():
        present = [m for m in predictor.modalities if m not in missing]
        err.print(
            Text(
                f"note: case {case_id} lacks {', '.join(missing)}: predicted from {', '.join(present)} "
                f"(absent sequences simulated as {predictor.simulate}; {predictor.missing_ok})"
            ),
            soft_wrap=True,
        )
    return tolerated, ""


def _what_predicts(predictor) -> str:
    """The networks (count and checkpoint files) or the PET rule of a predictor."""
    if not predictor.models:
        rule = predictor.rule
        cut = f"SUV >= {rule['value']}" if rule["rule"] == "suv" else f"SUV >= {rule['value']:.0%} of SUVmax"
        return f"rule: {cut} (no network; {predictor.sources[0].parent.parent})"
    return f"model(s): {len(predictor.models)} ({', '.join(str(p) for p in predictor.sources)})"


def cost_line(seconds_per_case: float, predictor) -> str:
    """What a case cost (read, preprocess, predict, write) and, for an ensemble or
    with mirroring, the cheaper path: one model (--fold K) and no flips (--no-tta);
    its cost is estimated as the forward passes' share (one per model and flip)."""
    if not predictor.models:
        return f"{seconds_per_case:.1f} s per case (a threshold rule, no network)"
    n_models = len(predictor.models)
    flips = (4 if predictor.spatial_dims == 2 else 8) if predictor.mirror else 1
    line = f"{seconds_per_case:.1f} s per case ({n_models} model(s) x {flips} mirroring pass(es))"
    if n_models * flips > 1:
        line += (
            f"; cheaper: --fold 0 --no-tta runs 1 model x 1 pass, about "
            f"{seconds_per_case / (n_models * flips):.1f} s per case plus reading and writing"
        )
    return line
