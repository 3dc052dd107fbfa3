"""The checks that every command shares, one function each, and the one error they
raise: ``fusionseg data check`` (:mod:`fusionseg.data.check`), the input checks of
``train`` / ``compare`` / ``predict`` (:mod:`fusionseg.data.validate`) and
``fusionseg evaluate`` (:mod:`fusionseg.evaluation.folder`) report a wrong grid or a
wrong label map with the same words.

A :class:`Problem` names the case, the file, what is wrong and how to fix it;
:func:`raise_problems` turns a list of them into one :class:`~fusionseg.errors.DataError`
(exit code 1) listing each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fusionseg.constants import LabelScheme
from fusionseg.errors import DataError

Severity = Literal["error", "warning"]

#: How many problems an error message lists before "... and N more".
MAX_LISTED = 8

#: Largest difference (mm) between two affines' entries that still counts as one grid.
AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Problem:
    """One finding: which case and file, what is wrong, how to fix it."""

    case_id: str
    file: str
    problem: str
    fix: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"[{self.severity}] {self.case_id}: {self.file}: {self.problem} Fix: {self.fix}"


def shape_problem(
    case_id: str, name: str, file: str, shape: Sequence[int], ref_shape: Sequence[int], reference: str, fix: str
) -> Problem | None:
    """An error when ``shape`` differs from ``ref_shape``.

    Args:
        case_id, file: where (for the message).
        name: what the file holds (a modality, "seg", "prediction").
        shape, ref_shape: voxel grid sizes.
        reference: what ``ref_shape`` belongs to (e.g. "t1, t2, flair, seg").
        fix: how to repair it.
    """
    if tuple(shape) == tuple(ref_shape):
        return None
    return Problem(case_id, file, f"{name} shape {tuple(shape)} differs from {tuple(ref_shape)} of {reference}.", fix)


def affine_problem(
    case_id: str,
    name: str,
    file: str,
    affine: np.ndarray,
    ref_affine: np.ndarray,
    reference: str,
    fix: str,
    affine_tol: float = AFFINE_TOLERANCE_MM,
) -> Problem | None:
    """An error when two (4, 4) affines differ by more than ``affine_tol`` mm in any
    entry (the two grids are then not aligned: overlap and distances would be wrong).

    Args:
        reference: whose affine ``ref_affine`` is (e.g. "flair", "the ground truth").
    """
    diff = float(np.max(np.abs(np.asarray(affine, np.float64) - np.asarray(ref_affine, np.float64))))
    if diff <= affine_tol:
        return None
    return Problem(
        case_id,
        file,
        f"{name} affine differs from {reference}'s by up to {diff:.4g} mm (tolerance {affine_tol:g}).",
        fix,
    )


def fmt_set(values) -> str:
    """``{1,2,4}``: a set of label values for messages."""
    return "{" + ",".join(str(v) for v in sorted(values)) + "}"


def _unique(seg: np.ndarray) -> np.ndarray:
    """Sorted distinct values (bincount for small integer ranges: fast)."""
    if seg.dtype.kind in "iub" and seg.size:
        lo, hi = int(seg.min()), int(seg.max())
        if hi - lo < 65536:
            counts = np.bincount(seg.ravel().astype(np.int64) - lo)
            return np.flatnonzero(counts) + lo
    return np.unique(seg)


def first_index(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True voxel of ``mask`` (for messages)."""
    return tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(mask)[0]), mask.shape))


def nonfinite_problem(case_id: str, name: str, file: str, data: np.ndarray) -> Problem | None:
    """An error when a float volume holds NaN or inf voxels (names the first one)."""
    if data.dtype.kind != "f":
        return None
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if not n_bad:
        return None
    return Problem(
        case_id,
        file,
        f"{name} has {n_bad} non-finite voxel(s) (NaN/inf), first at index {first_index(bad)}.",
        "replace NaN/inf (e.g. with the background value 0) and save the file again.",
    )


def label_problems(
    case_id: str,
    name: str,
    file: str,
    data: np.ndarray,
    scheme: LabelScheme,
    unknown_fix: Callable[[set[int]], str],
    empty_is_warning: bool = True,
) -> tuple[list[Problem], list[int] | None]:
    """The checks of a label map: finite, integer values, every value in ``scheme``;
    an empty map (only 0) is a warning when ``empty_is_warning`` (a GT case without
    tumour), nothing otherwise (an empty prediction is a valid answer).

    Args:
        data: the decoded label map, any numeric dtype.
        unknown_fix: the fix for values outside the scheme, from the values present
            (e.g. which other scheme they fit).
    Returns:
        (problems, the label values present, or None when they cannot be read).
    """
    bad = nonfinite_problem(case_id, name, file, data)
    if bad is not None:
        return [bad], None
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        fix = "save the label map with integer labels (nearest-neighbour resampling; a label map, not probabilities)."
        return [Problem(case_id, file, f"{name} holds non-integer values.", fix)], None
    if data.dtype.kind not in "iubf":
        return [Problem(case_id, file, f"{name} has dtype {data.dtype}, not numbers.", "save integer labels.")], None
    values = [int(x) for x in _unique(data)]
    unknown = sorted(set(values) - set(scheme.values))
    if unknown:
        problem = f"{name} label values {fmt_set(unknown)} not in {scheme.name} {fmt_set(scheme.values)}."
        return [Problem(case_id, file, problem, unknown_fix(set(values)))], values
    if values == [0] and empty_is_warning:
        fix = "nothing to do if the case has no tumour; otherwise check the file."
        return [Problem(case_id, file, f"{name} is empty (no foreground label).", fix, "warning")], values
    return [], values


def raise_problems(errors: Sequence[Problem], where: str | Path | None, what: str, fix: str) -> None:
    """Raise one :class:`DataError` listing ``errors`` (each: case, file, problem, fix;
    at most :data:`MAX_LISTED`, then "... and N more"); nothing when empty.

    Args:
        where: the folder the message is about (dataset root, prediction folder).
        what: the work the files cannot be used for ("training", "evaluation").
        fix: the command's own way forward, ending the message.
    Raises:
        DataError: when ``errors`` is not empty.
    """
    if not errors:
        return
    lines = [f"  - {p.case_id}: {p.file}: {p.problem} Fix: {p.fix}" for p in errors[:MAX_LISTED]]
    more = len(errors) - MAX_LISTED
    if more > 0:
        lines.append(f"  ... and {more} more")
    n_cases = len({p.case_id for p in errors})
    raise DataError(f"{n_cases} case(s) cannot be used for {what}:\n" + "\n".join(lines), where, fix)
