"""Case splits: k-fold cross-validation or one hold-out split, saved as JSON and
reusable, so several experiments (``fusionseg compare``) see the same cases.

File format::

    {"kind": "kfold", "seed": 0, "cases": [...],
     "folds": [{"fold": 0, "train": [...], "val": [...], "test": [...]}, ...],
     "groups": [[...], ...]}

``groups`` (present only when there are any) lists cases that must share a part in
every fold, e.g. the same scan under two ids (:mod:`fusionseg.data.duplicates`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fusionseg.config import SplitConfig
from fusionseg.data.io import atomic_path
from fusionseg.errors import ConfigError, DataError


def _units(ids: list[str], groups: Iterable[Iterable[str]] | None) -> list[list[str]]:
    """Split units: every group of ``groups`` (restricted to ``ids``; overlapping groups
    merged) as one unit, every other case alone; each unit sorted, units sorted by
    their first case. Without groups: ``[[c] for c in ids]``, so splits are unchanged."""
    known = set(ids)
    parent: dict[str, str] = {}

    def root(c: str) -> str:
        while parent.get(c, c) != c:
            c = parent[c]
        return c

    for group in groups or ():
        members = sorted({c for c in group if c in known})
        for other in members[1:]:
            a, b = root(members[0]), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    if not parent:
        return [[c] for c in ids]
    by_root: dict[str, list[str]] = {}
    for c in dict.fromkeys(ids):
        by_root.setdefault(root(c), []).append(c)
    return sorted((sorted(u) for u in by_root.values()), key=lambda u: u[0])


def _take(units: list[list[str]], n: int) -> tuple[list[list[str]], list[list[str]]]:
    """(taken, left): in order, every unit that still fits into ``n`` cases; the first
    unit when none fits. Single cases: the first ``n`` of them."""
    taken, left, room = [], [], n
    for unit in units:
        if len(unit) <= room:
            taken.append(unit)
            room -= len(unit)
        else:
            left.append(unit)
    if not taken and left:
        taken.append(left.pop(0))
    return taken, left


def _flat(units: Iterable[list[str]]) -> list[str]:
    return sorted(c for u in units for c in u)


def make_splits(case_ids: Sequence[str], cfg: SplitConfig, groups: Iterable[Iterable[str]] | None = None) -> dict:
    """Deterministic splits of ``case_ids`` (order-independent: ids are sorted first).

    k-fold: cases are shuffled with ``cfg.seed`` and dealt into ``cfg.folds`` test
    parts; from each fold's remaining cases ``val_fraction`` (at least one) are the
    validation cases used for early stopping. holdout: ``test_fraction`` (at least one)
    of the shuffled cases are the test cases, the next ``val_fraction`` (at least one)
    the validation cases, the rest the training cases. all (the final model): the
    first ``val_fraction`` (at least one) of the shuffled cases are validation cases,
    the rest training cases, no test cases.

    ``groups`` (e.g. cases with identical image data,
    :func:`fusionseg.data.duplicates.duplicate_groups`) are kept together: in every
    fold all cases of a group are in train, or all in val, or all in test. A group is
    shuffled and dealt as one unit (k-fold: each unit, in shuffled order, to the test
    part with the fewest cases); part sizes then follow the fractions as closely as
    whole groups allow; a group that does not fit into the test (or validation) cases
    still to be chosen goes to a later part, so a group larger than the test part
    always trains. Ids of a group that are not in ``case_ids`` are ignored,
    overlapping groups are merged. Without groups (None, empty, or only groups of one
    case) the result is exactly that of the same call without ``groups``.

    Args:
        case_ids: the case ids to split (str).
        cfg: kind, folds, fractions, seed.
        groups: lists of case ids that must stay in one part.
    Returns:
        ``{"kind", "seed", "cases": sorted ids, "folds": [{"fold": k, "train": [...],
        "val": [...], "test": [...]}, ...]}`` with sorted id lists; plus ``"groups"``
        (the merged groups of two or more cases, sorted) when there are any, so
        :func:`load_splits` can verify a saved file.
    Raises:
        ConfigError: too few cases (or groups) for the requested split.
    """
    ids = sorted(case_ids)
    n = len(ids)
    units = _units(ids, groups)
    n_units = len(units)
    together = f" ({n_units} once identical cases are kept together)" if n_units != n else ""
    rng = np.random.default_rng(cfg.seed)
    order = [units[i] for i in rng.permutation(n_units)]
    folds = []
    if cfg.kind == "kfold":
        if n_units < cfg.folds + 1:
            raise ConfigError(
                f"{n} labelled cases{together} are too few for {cfg.folds}-fold CV; "
                "lower split.folds or use split.kind: holdout"
            )
        # Each unit, in shuffled order, to the part with the fewest cases (first on
        # ties): for single cases this is dealing order[k::folds] round-robin. (Not
        # largest-first: that would put the biggest group in fold 0 for every seed.)
        parts: list[list[list[str]]] = [[] for _ in range(cfg.folds)]
        sizes = [0] * cfg.folds
        for unit in order:
            k = sizes.index(min(sizes))
            parts[k].append(unit)
            sizes[k] += len(unit)
        for k, test in enumerate(parts):
            in_test = {u[0] for u in test}
            rest = [u for u in order if u[0] not in in_test]
            n_val = max(1, int(round(cfg.val_fraction * sum(map(len, rest)))))
            val, train = _take(rest, n_val)
            folds.append({"fold": k, "train": _flat(train), "val": _flat(val), "test": _flat(test)})
    elif cfg.kind == "all":
        if n_units < 2:
            raise ConfigError(f"{n} labelled cases{together} are too few for a final model (train and validation)")
        n_val = max(1, int(round(cfg.val_fraction * n)))
        val, train = _take(order, n_val)
        folds.append({"fold": 0, "train": _flat(train), "val": _flat(val), "test": []})
    else:
        if n < 3 or n_units < 3:
            raise ConfigError(f"{n} labelled cases{together} are too few for a train/val/test split")
        n_test = max(1, int(math.floor(cfg.test_fraction * n + 0.5)))
        n_val = max(1, int(round(cfg.val_fraction * n)))
        test, rest = _take(order, n_test)
        val, train = _take(rest, n_val)
        folds.append({"fold": 0, "train": _flat(train), "val": _flat(val), "test": _flat(test)})
    for f in folds:
        if not f["train"]:
            raise ConfigError("a split leaves no training case; add cases or lower the fractions")
    out = {"kind": cfg.kind, "seed": cfg.seed, "cases": ids, "folds": folds}
    grouped = [u for u in units if len(u) > 1]
    if grouped:
        out["groups"] = grouped
    return out


def check_split_groups(splits: dict, groups: Iterable[Iterable[str]], source: str | Path | None = None) -> None:
    """Verify that no group of cases straddles the parts of any fold.

    Args:
        splits: a split dict (:func:`make_splits`, :func:`load_splits`).
        groups: lists of case ids that must share a part (e.g. identical image data,
            :func:`fusionseg.data.duplicates.duplicate_groups`); ids a fold does not
            name are ignored.
        source: the split file, named in the error.
    Raises:
        DataError: a group has cases in two parts (train / val / test) of a fold; the
            message names every such group, fold and part.
    """
    bad = []
    for group in groups:
        members = sorted(set(group))
        for f in splits["folds"]:
            where = {c: part for part in ("train", "val", "test") for c in f[part]}
            parts = {c: where[c] for c in members if c in where}
            if len(set(parts.values())) > 1:
                placed = ", ".join(f"{c} in {p}" for c, p in parts.items())
                bad.append(f"fold {f['fold']}: {placed}")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(
            f"cases with identical image data are in different parts of the split ({shown}); "
            "the same scan in two parts leaks between train and test.",
            source,
            "make a new split that keeps each group in one part (delete the split file, or "
            "drop split.file, and rerun), or remove all copies but one from the dataset.",
        )


def save_splits(splits: dict, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(splits, indent=1))
    return path


def load_splits(
    path: str | Path, available: Sequence[str] | None = None, groups: Iterable[Iterable[str]] | None = None
) -> dict:
    """Read a split file; every case it names must be in ``available`` (if given), and
    no group of ``groups`` nor of the file's own ``"groups"`` entry may straddle the
    parts of a fold (see :func:`check_split_groups`).

    Args:
        path: a file written by :func:`save_splits`.
        available: the dataset's case ids.
        groups: lists of case ids that must share a part (e.g. the duplicate groups
            of the dataset as it is now; a file made before a copy was added does not
            know them).
    Raises:
        ConfigError: unreadable file or unknown case ids.
        DataError: a group straddles train / val / test in some fold.
    """
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
        folds = splits["folds"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: not a fusionseg split file ({exc}).") from exc
    if available is not None:
        known = set(available)
        named = {c for f in folds for part in ("train", "val", "test") for c in f[part]}
        unknown = sorted(named - known)
        if unknown:
            raise ConfigError(f"{path}: cases {unknown[:5]} are not in the dataset; make a new split for this dataset.")
    recorded = splits.get("groups")
    all_groups = [*(recorded if isinstance(recorded, list) else []), *(groups or ())]
    if all_groups:
        check_split_groups(splits, all_groups, path)
    return splits
