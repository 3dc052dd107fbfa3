"""Case splits: k-fold cross-validation or one hold-out split, saved as JSON and
reusable, so several experiments (``fusionseg compare``) see the same cases.

File format::

    {"kind": "kfold", "seed": 0, "cases": [...],
     "folds": [{"fold": 0, "train": [...], "val": [...], "test": [...]}, ...]}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from fusionseg.config import SplitConfig
from fusionseg.data.io import atomic_path
from fusionseg.errors import ConfigError


def make_splits(case_ids: Sequence[str], cfg: SplitConfig) -> dict:
    """Deterministic splits of ``case_ids`` (order-independent: ids are sorted first).

    k-fold: cases are shuffled with ``cfg.seed`` and dealt into ``cfg.folds`` test
    parts; from each fold's remaining cases ``val_fraction`` (at least one) are the
    validation cases used for early stopping.

    Raises:
        ConfigError: too few cases for the requested split.
    """
    ids = sorted(case_ids)
    n = len(ids)
    rng = np.random.default_rng(cfg.seed)
    order = [ids[i] for i in rng.permutation(n)]
    folds = []
    if cfg.kind == "kfold":
        if n < cfg.folds + 1:
            raise ConfigError(f"{n} labelled cases are too few for {cfg.folds}-fold CV; "
                              "lower split.folds or use split.kind: holdout")
        parts = [order[i::cfg.folds] for i in range(cfg.folds)]
        for k, test in enumerate(parts):
            rest = [c for c in order if c not in test]
            n_val = max(1, int(round(cfg.val_fraction * len(rest))))
            folds.append({"fold": k, "train": sorted(rest[n_val:]), "val": sorted(rest[:n_val]),
                          "test": sorted(test)})
    else:
        if n < 3:
            raise ConfigError(f"{n} labelled cases are too few for a train/val/test split")
        n_test = max(1, int(math.floor(cfg.test_fraction * n + 0.5)))
        n_val = max(1, int(round(cfg.val_fraction * n)))
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        folds.append({"fold": 0, "train": sorted(train), "val": sorted(val), "test": sorted(test)})
    for f in folds:
        if not f["train"]:
            raise ConfigError("a split leaves no training case; add cases or lower the fractions")
    return {"kind": cfg.kind, "seed": cfg.seed, "cases": ids, "folds": folds}


def save_splits(splits: dict, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(splits, indent=1))
    return path


def load_splits(path: str | Path, available: Sequence[str] | None = None) -> dict:
    """Read a split file; every case it names must be in ``available`` (if given).

    Raises:
        ConfigError: unreadable file or unknown case ids.
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
            raise ConfigError(f"{path}: cases {unknown[:5]} are not in the dataset; "
                              "make a new split for this dataset.")
    return splits
