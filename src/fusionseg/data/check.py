"""Dataset validation: every problem names the file and says how to fix it.

:func:`check_case` inspects one case (each file is read once; one case in memory at
a time), :func:`check_dataset` every case, and :func:`check_command` is the
``fusionseg data check`` command (a rich table per case, a summary line, optional
JSON, exit code 1 when any case has an error).

Checks per case: each modality file present and readable (a corrupt file is an
error naming it); images and segmentation of one shape; affines equal within a
tolerance (mm); finite voxel values; no empty (all-zero or constant) image; label
values within the label scheme (with the scheme that would fit, if any); an empty
segmentation is only a warning (cases without tumour exist); two modalities of one
case with identical voxels (one file copied over the other) are a warning.

Checks across cases (:func:`check_dataset`): cases whose image data are identical
(the same scan under two ids, which leaks between train and test when the copies land
in different parts of a split) are a warning on every case of the group. Each case's
images are hashed as they are decoded (:mod:`fusionseg.data.duplicates`), so this
costs no second read.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fusionseg.constants import LABEL_SCHEMES, PET, LabelScheme
from fusionseg.cli_options import ProgressOption, QuietOption
from fusionseg.data.cases import LAYOUTS, Case, Dataset, ImageRef, discover
from fusionseg.data.duplicates import combine_digests, duplicate_groups, volume_digest
from fusionseg.data.io import affines_close, atomic_path, load_nifti, read_array, voxel_spacing
from fusionseg.data.problems import (
    Problem,
    affine_problem,
    fmt_set,
    label_problems,
    nonfinite_problem,
    shape_problem,
)
from fusionseg.errors import DataError
from fusionseg.progress import make_progress


@dataclass
class CaseResult:
    """Outcome of checking one case (one row of the report table)."""

    case_id: str
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    label_values: list[int] | None = None
    problems: list[Problem] = field(default_factory=list)
    #: content hash of the decoded images (every modality, dataset modality order; see
    #: :mod:`fusionseg.data.duplicates`); None when a modality could not be read.
    image_hash: str | None = None
    #: content hash of the decoded segmentation; None without a readable one.
    seg_hash: str | None = None

    @property
    def status(self) -> str:
        """ "error", "warning" or "ok"."""
        severities = {p.severity for p in self.problems}
        return "error" if "error" in severities else "warning" if severities else "ok"

    @property
    def passed(self) -> bool:
        return self.status != "error"


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`."""

    root: str
    format: str
    scheme: str
    modalities: tuple[str, ...]
    cases: list[CaseResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # dataset-level findings
    #: groups of case ids with identical image data (each sorted; see duplicate_groups)
    duplicates: list[list[str]] = field(default_factory=list)

    @property
    def n_passed(self) -> int:
        return sum(c.passed for c in self.cases)

    @property
    def ok(self) -> bool:
        """No errors anywhere (warnings allowed)."""
        return self.n_passed == len(self.cases) and all(p.severity != "error" for p in self.problems)

    @property
    def all_problems(self) -> list[Problem]:
        return [*self.problems, *(p for c in self.cases for p in c.problems)]

    def summary(self) -> str:
        n_warn = sum(p.severity == "warning" for p in self.all_problems)
        n_err = sum(p.severity == "error" for p in self.all_problems)
        return f"{self.n_passed}/{len(self.cases)} cases passed ({n_err} errors, {n_warn} warnings)"

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "format": self.format,
            "scheme": self.scheme,
            "modalities": list(self.modalities),
            "passed": self.n_passed,
            "total": len(self.cases),
            "ok": self.ok,
            "summary": self.summary(),
            "problems": [asdict(p) for p in self.problems],
            "duplicate_groups": [list(g) for g in self.duplicates],
            "cases": [
                {
                    "case_id": c.case_id,
                    "status": c.status,
                    "image_hash": c.image_hash,
                    "shape": list(c.shape) if c.shape else None,
                    "spacing": list(c.spacing) if c.spacing else None,
                    "label_values": c.label_values,
                    "problems": [asdict(p) for p in c.problems],
                }
                for c in self.cases
            ],
        }


# ---------------------------------------------------------------------------
# Per-case inspection
# ---------------------------------------------------------------------------


@dataclass
class _Loaded:
    """One decoded volume of a case."""

    name: str  # modality name or "seg"
    ref: str  # file (and channel) for messages
    data: np.ndarray  # (X, Y, Z), the file's own dtype
    affine: np.ndarray  # (4, 4)
    spacing: tuple[float, float, float]


def _load_case(case: Case, result: CaseResult) -> list[_Loaded]:
    """Read every file of ``case`` once; missing/corrupt files become problems."""
    add = result.problems.append
    by_file: dict[Path, list[tuple[str, ImageRef]]] = {}
    for modality, ref in case.images.items():
        by_file.setdefault(ref.path, []).append((modality, ref))
    loaded: list[_Loaded] = []
    items: list[tuple[Path, list[tuple[str, ImageRef]]]] = list(by_file.items())
    if case.label is not None:
        items.append((case.label, [("seg", ImageRef(case.label))]))
    for path, refs in items:
        names = ", ".join(m for m, _ in refs)
        if not path.exists():
            add(
                Problem(
                    case.case_id,
                    str(path),
                    f"{names} file is missing.",
                    "restore the file (expected at this path and name), or remove the case from the folder.",
                )
            )
            continue
        try:
            img = load_nifti(path)
            spacing = voxel_spacing(img)
            if len(refs) == 1 and refs[0][1].channel is None:
                arrays = [read_array(img, path, dtype=None)]
            else:  # 4-D file (MSD): decode once, slice channels
                arrays = _read_channels(img, path, [r.channel for _, r in refs])
        except DataError as exc:
            add(
                Problem(
                    case.case_id, str(path), f"{names}: {exc.message}", exc.fix or "re-export or re-download the file."
                )
            )
            continue
        for (modality, ref), data in zip(refs, arrays):
            loaded.append(_Loaded(modality, str(ref), data, img.affine.astype(np.float64), spacing))
    return loaded


def _read_channels(img, path: Path, channels: list[int | None]) -> list[np.ndarray]:
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise DataError(
            f"cannot decode voxel data ({exc}).", path, "the file is truncated or corrupt: re-export or re-download it."
        ) from exc
    if data.ndim != 4:
        raise DataError(
            f"expected a 4-D image (X, Y, Z, channels), got shape {data.shape}.",
            path,
            "stack the modalities along the 4th axis, or use the nnunet layout.",
        )
    out = []
    for c in channels:
        if c is None or not 0 <= c < data.shape[3]:
            raise DataError(
                f"channel {c} requested but the image has {data.shape[3]} channels.",
                path,
                "make dataset.json's modality entries match the image channels.",
            )
        out.append(data[..., c])
    return out


def _suggest_scheme(present: set[int], current: LabelScheme) -> str:
    fitting = [s for s in LABEL_SCHEMES.values() if s.name != current.name and present <= set(s.values)]
    hints = []
    for s in fitting:
        layout = {"brats2023": "brats2023", "brats2017": "brats2018", "msd_task01": "msd", "petct": "autopet"}.get(
            s.name
        )
        what = {
            "brats2023": "BraTS 2023+ data",
            "brats2017": "BraTS 2017-2021 data",
            "msd_task01": "MSD Task01 data",
            "petct": "PET/CT data",
        }.get(s.name, s.name)
        files = f" (--format {layout} for its file layout)" if layout in LAYOUTS else ""
        hints.append(f"if this is {what} use --scheme {s.name}{files}")
    values = "{" + ",".join(map(str, current.values)) + "}"
    convert = f"otherwise convert the labels to {current.name} {values}"
    return "; ".join([*hints, convert]) + "."


#: How to repair an image or seg whose shape differs from the rest of its case.
SHAPE_FIX = (
    "resample or re-export it onto the case's common grid "
    "(all modalities and the seg must be co-registered, same shape)."
)


#: How to repair a CT (or any image) off the PET grid of a PET/CT case.
CT_ONTO_PET_FIX = (
    "resample the CT onto the PET grid (trilinear, outside filled with -1024 HU), as autoPET's CTres.nii.gz; "
    "every image and the SEG of a PET/CT case must share the PET's shape and affine."
)

#: Largest PET value taken for SUV; above it a warning says the image looks like Bq/ml.
SUV_PLAUSIBLE_MAX = 100.0


def _inspect_case(case: Case, dataset: Dataset, affine_tol: float = 1e-3) -> CaseResult:
    result = CaseResult(case.case_id)
    add = result.problems.append
    cid = case.case_id
    scheme = dataset.scheme
    loaded = _load_case(case, result)

    if case.label is None and dataset.labelled:
        folder = next(iter(case.images.values())).path.parent
        add(
            Problem(
                cid,
                str(folder),
                "no segmentation file found (other cases have one); the case can be used for prediction only.",
                "add the seg file if the case is meant for training or evaluation.",
                "warning",
            )
        )
    if not loaded:
        return result

    # Shapes: the most common shape is the reference; odd files are named.
    # Reference grid: PET's in a PET/CT case (CT is resampled onto it, as autoPET's
    # CTres); otherwise the most common shape and the affine most files agree with
    # (first one on ties).
    pet = next((v for v in loaded if v.name == PET), None)
    shapes = Counter(v.data.shape for v in loaded)
    ref_shape = pet.data.shape if pet is not None else shapes.most_common(1)[0][0]
    same_shape = [v for v in loaded if v.data.shape == ref_shape]
    reference = pet or max(
        same_shape, key=lambda v: sum(affines_close(v.affine, o.affine, affine_tol) for o in same_shape)
    )
    result.shape, result.spacing = tuple(ref_shape), reference.spacing
    for v in loaded:
        others = ", ".join(o.name for o in loaded if o.data.shape == ref_shape)
        onto_pet = v.name != PET and pet is not None  # PET/CT: the PET grid is the reference
        problem = shape_problem(
            cid, v.name, v.ref, v.data.shape, ref_shape, others, CT_ONTO_PET_FIX if onto_pet else SHAPE_FIX
        )
        if problem is None:
            fix = (
                "resample it onto the reference grid; if the voxels are already aligned, "
                f"copy the header (affine) from {reference.ref}."
            )
            problem = affine_problem(
                cid,
                v.name,
                v.ref,
                v.affine,
                reference.affine,
                reference.name,
                CT_ONTO_PET_FIX if onto_pet else fix,
                affine_tol,
            )
        if problem is not None:
            add(problem)

    invalid: set[str] = set()  # non-finite or empty: already an error
    for v in loaded:
        bad = nonfinite_problem(cid, v.name, v.ref, v.data)
        if bad is not None:
            invalid.add(v.name)
            add(bad)
            continue
        if v.name == "seg":
            continue
        lo, hi = (float(v.data.min()), float(v.data.max())) if v.data.size else (0.0, 0.0)
        if v.name == PET and hi > SUV_PLAUSIBLE_MAX:
            add(
                Problem(
                    cid,
                    v.ref,
                    f"pet values reach {hi:.4g}: this looks like activity concentration (Bq/ml), not SUV "
                    f"(tumour SUV rarely exceeds {SUV_PLAUSIBLE_MAX:g}).",
                    "convert the PET to SUV (body weight: activity x weight / injected dose, decay-corrected) "
                    "as autoPET's SUV.nii.gz; preprocessing clips SUV to preprocess.suv_range.",
                    "warning",
                )
            )
        if lo == hi:
            invalid.add(v.name)
            what = "all zero" if hi == 0 else f"constant ({lo:g})"
            add(
                Problem(
                    cid,
                    v.ref,
                    f"{v.name} image is empty: {what}.",
                    "re-export the image: it holds no data (wrong file or failed conversion).",
                )
            )

    _hash_images(case, dataset, loaded, invalid, result)

    seg = next((v for v in loaded if v.name == "seg"), None)
    if seg is not None and "seg" not in invalid:
        problems, result.label_values = label_problems(
            cid, "segmentation", seg.ref, seg.data, scheme, lambda values: _suggest_scheme(values, scheme)
        )
        result.problems.extend(problems)
    return result


def _hash_images(case: Case, dataset: Dataset, loaded: list[_Loaded], invalid: set[str], result: CaseResult) -> None:
    """Content hashes of the decoded volumes (no second read): ``result.image_hash``
    over every modality in the dataset's modality order (None when one is missing or
    unreadable), ``result.seg_hash``; and a warning for each modality whose voxels
    equal those of an earlier modality of the case."""
    digests = {v.name: volume_digest(v.data) for v in loaded}
    order = [
        *(m for m in dataset.modalities if m in case.images),
        *(m for m in case.images if m not in dataset.modalities),
    ]
    if order and all(m in digests for m in order):
        result.image_hash = combine_digests(digests[m] for m in order)
    result.seg_hash = digests.get("seg")
    refs = {v.name: v.ref for v in loaded}
    # Same voxels in two modalities: a file copied over another (t1 saved as t2). Only a
    # warning: every file is readable and trainable, but the model then sees one
    # contrast twice and the other not at all. Images already reported as empty or
    # non-finite are left out (constant images are trivially alike).
    valid = {m: digests[m] for m in order if m in digests and m not in invalid}
    for group in duplicate_groups(valid):
        first, *copies = sorted(group, key=order.index)
        for m in copies:
            result.problems.append(
                Problem(
                    case.case_id,
                    refs[m],
                    f"{m} image is identical to {first} voxel for voxel ({refs[first]}); one file "
                    "was probably copied over the other.",
                    f"re-export {m} from its own scan: as it is, the model sees {first} twice and no {m}.",
                    "warning",
                )
            )


def check_case(case: Case, dataset: Dataset, affine_tol: float = 1e-3) -> list[Problem]:
    """Validate one case of ``dataset``.

    Each file is read once (a 4-D MSD file once for all its channels).

    Args:
        case: the case (from :func:`fusionseg.data.cases.discover`).
        dataset: its dataset (label scheme, whether other cases are labelled).
        affine_tol: largest allowed difference between affine entries, mm.
    Returns:
        problems found (empty when the case is fine); severity "error" for missing,
        corrupt, mis-shaped, mis-registered, non-finite or empty images and unknown
        labels, "warning" for an empty or absent segmentation and for two modalities
        with identical voxels. Identical images across cases need the whole dataset:
        see :func:`check_dataset`.
    """
    return _inspect_case(case, dataset, affine_tol).problems


def check_dataset(
    dataset: Dataset, progress: bool = True, affine_tol: float = 1e-3, console: Console | None = None
) -> CheckReport:
    """Validate every case of ``dataset``, one case in memory at a time.

    Besides the per-case checks of :func:`check_case`, cases whose image data are
    identical (every modality equal in shape, dtype and voxel values; hashed while
    each case is decoded, see :mod:`fusionseg.data.duplicates`) get a warning naming
    the other cases of their group, and the groups are in ``report.duplicates``.

    Args:
        dataset: from :func:`fusionseg.data.cases.discover`.
        progress: show a transient progress bar.
        affine_tol: see :func:`check_case`.
        console: where the progress bar is drawn (default: stderr).
    Returns:
        a :class:`CheckReport`.
    """
    report = CheckReport(str(dataset.root), dataset.format, dataset.scheme.name, dataset.modalities)
    for path in dataset.skipped:
        report.problems.append(
            Problem(
                "-",
                str(path),
                "not part of any case; ignored.",
                "move it out of the dataset folder if it is not needed.",
                "warning",
            )
        )
    if not dataset.cases:
        report.problems.append(
            Problem("-", str(dataset.root), "no cases found.", "point to the folder that holds the cases.")
        )
    with make_progress(disable=not progress, transient=True, console=console or Console(stderr=True)) as bar:
        task = bar.add_task("check", total=len(dataset.cases), info="")
        for case in dataset.cases:
            report.cases.append(_inspect_case(case, dataset, affine_tol))
            bar.update(task, advance=1, info=case.case_id)
    _report_duplicates(dataset, report)
    return report


def _case_location(case: Case, shared_folders: set[Path]) -> str:
    """The case's folder when it holds only this case (BraTS, autoPET), else its first
    image file (MSD / nnU-Net keep every case in imagesTr/)."""
    first = next(iter(case.images.values())).path
    return str(first) if first.parent in shared_folders else str(first.parent)


def _report_duplicates(dataset: Dataset, report: CheckReport) -> None:
    """Cases with identical image hashes: a warning on each case of every group.

    Warning, not error: errors in this module mark files that are wrong for any use
    (unreadable, mis-shaped, mis-registered, non-finite, empty, unknown labels) and make
    ``data check`` exit 1. Each copy of a duplicated scan is a valid case that
    preprocesses and trains; the harm is leakage when the copies land in different
    parts of a split, which is a matter for the split (:func:`fusionseg.data.splits.
    make_splits` keeps groups it is given in one part), and which copy to keep needs a
    person - as for an empty segmentation, also a warning. Errors would also make
    ``data check`` fail on a dataset that trains correctly once the groups are kept
    together.
    """
    groups = duplicate_groups({c.case_id: c.image_hash for c in report.cases})
    report.duplicates = groups
    if not groups:
        return
    cases = {c.case_id: c for c in dataset.cases}
    results = {r.case_id: r for r in report.cases}
    parents = Counter(next(iter(c.images.values())).path.parent for c in dataset.cases if c.images)
    shared = {folder for folder, n in parents.items() if n > 1}
    for group in groups:
        segs = [results[cid].seg_hash for cid in group]
        if None in segs:
            seg_note = ""
        elif len(set(segs)) == 1:
            seg_note = "; the segmentations are identical too"
        else:
            seg_note = "; their segmentations differ (check which one is right)"
        for cid in group:
            others = [o for o in group if o != cid]
            noun = "case" if len(others) == 1 else "cases"
            results[cid].problems.append(
                Problem(
                    cid,
                    _case_location(cases[cid], shared),
                    f"identical image data to {noun} {', '.join(others)} (every modality, voxel for "
                    f"voxel{seg_note}); the same scan under two ids leaks between train and test.",
                    "remove all copies but one (keep the one whose segmentation you trust), or keep "
                    "them all in one part (train, val or test) of every split.",
                    "warning",
                )
            )


# ---------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------

_STATUS_STYLE = {"ok": "green", "warning": "yellow", "error": "bold red"}


def print_report(report: CheckReport, console: Console, table: bool = True) -> None:
    """The per-case table (with ``table``), every problem with file and fix, and the
    summary line."""
    if table:
        _print_case_table(report, console)
    problems = report.all_problems
    if problems:
        console.print(Text("Problems:", style="bold"))
        for p in problems:
            console.print(
                Text(f"  {p.severity.upper()} {p.case_id}: {p.file}: {p.problem}", style=_STATUS_STYLE[p.severity]),
                soft_wrap=True,
            )
            console.print(Text(f"    fix: {p.fix}"), soft_wrap=True)
    console.print(Text(report.summary(), style="bold green" if report.ok else "bold red"), soft_wrap=True)


def _print_case_table(report: CheckReport, console: Console) -> None:
    table = Table(title=f"{report.root}", show_lines=False)
    for column in ("case", "status", "shape", "spacing (mm)", "labels"):
        table.add_column(column, no_wrap=True)
    table.add_column("problems", overflow="fold", min_width=12)
    for c in report.cases:
        table.add_row(
            c.case_id,
            Text(c.status, style=_STATUS_STYLE[c.status]),
            "x".join(map(str, c.shape)) if c.shape else "-",
            "x".join(f"{s:g}" for s in c.spacing) if c.spacing else "-",
            fmt_set(c.label_values) if c.label_values is not None else "-",
            Text("; ".join(p.problem for p in c.problems) or "-"),
        )
    console.print(table)


_FORMAT_HELP = (
    "Dataset layout; autodetected when omitted. One of: "
    + "; ".join(f"{n} ({lay.pattern})" for n, lay in LAYOUTS.items())
    + "."
)
_SCHEME_HELP = (
    "Label scheme overriding the layout's default. One of: "
    + "; ".join(f"{s.name} ({s.description})" for s in LABEL_SCHEMES.values())
    + "."
)


def check_command(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Dataset folder, e.g. the folder holding the BraTS case folders.", file_okay=False, dir_okay=True
        ),
    ],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help=_FORMAT_HELP)] = None,
    scheme: Annotated[Optional[str], typer.Option("--scheme", "-s", help=_SCHEME_HELP)] = None,
    json_out: Annotated[
        Optional[Path],
        typer.Option("--json-out", "--json", help="Also write the report as JSON to this file.", dir_okay=False),
    ] = None,
    quiet: QuietOption = False,
    progress: ProgressOption = True,
) -> None:
    """Check a dataset before training: every case's files present and readable,
    shapes and affines consistent, values finite, images not empty, labels within the
    label scheme, no two cases (or two modalities of a case) with identical image data.
    Prints a table per case and every problem with its file and fix.

    Exit code 0 when every case passes (warnings allowed), 1 when any case has an
    error or the folder cannot be read as a dataset (a data error, as on every
    command), 2 for an unknown --format or --scheme.
    """
    console = Console(highlight=False)
    dataset = discover(directory, format=format, scheme=scheme)  # DataError: exit 1 (fusionseg.cli)
    console.print(Text(f"dataset: {dataset.root}", style="bold"), soft_wrap=True)
    console.print(
        Text(f"format: {dataset.format}   label scheme: {dataset.scheme.name} ({dataset.scheme.description})"),
        soft_wrap=True,
    )
    regions = ", ".join(f"{r}={fmt_set(v)}" for r, v in dataset.scheme.regions.items())
    console.print(
        Text(
            f"modalities: {', '.join(dataset.modalities)}   regions: {regions}   "
            f"cases: {len(dataset)} ({len(dataset.labelled)} with segmentation)"
        ),
        soft_wrap=True,
    )
    report = check_dataset(dataset, progress=progress and not quiet and console.is_terminal)
    print_report(report, console, table=not quiet)
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        console.print(Text(f"report written to {json_out}"), soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
