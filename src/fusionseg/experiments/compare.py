"""Compare several experiment configs on the same data and the same case splits.

Each config runs into ``<output>/<compare name>/<config name>/``; the split file is
made once (``splits.json`` in the comparison folder) and every run uses it. The
comparison writes ``comparison.md`` (mean ± sd per run, metric and region, plus the
paired Wilcoxon signed-rank p-value of each run against the first, the reference),
``comparison.csv`` (all per-case rows with a ``run`` column) and ``comparison.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from fusionseg.config import ExperimentConfig
from fusionseg.data.io import atomic_path
from fusionseg.data.splits import load_splits, make_splits, save_splits
from fusionseg.errors import ConfigError
from fusionseg.experiments.report import markdown_table
from fusionseg.experiments.runner import load_dataset, run_experiment


def paired_wilcoxon(reference: pd.DataFrame, other: pd.DataFrame, metric: str, region: str) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value over cases present in both runs
    (None when fewer than 2 paired cases or all differences are zero)."""
    a = reference[reference["region"] == region].set_index("case")[metric]
    b = other[other["region"] == region].set_index("case")[metric]
    common = a.index.intersection(b.index)
    if len(common) < 2:
        return None
    diff = (b[common] - a[common]).to_numpy(dtype=float)
    if np.allclose(diff, 0):
        return None
    return float(wilcoxon(diff).pvalue)


def run_comparison(configs: Sequence[ExperimentConfig], name: str, output_dir: Path,
                   progress: bool = True) -> dict:
    """Run every config with one shared split and write the comparison files.

    Raises:
        ConfigError: configs disagree on the dataset, or two share a name.
    """
    if not configs:
        raise ConfigError("give at least one config")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"config names must differ (they name the run folders): {names}")
    roots = {str(Path(c.data.root).resolve()) for c in configs}
    if len(roots) != 1:
        raise ConfigError(f"all configs of a comparison must use the same data.root; got {sorted(roots)}")
    out = Path(output_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    split_path = out / "splits.json"
    first = configs[0]
    if configs[0].split.file is not None:
        split_path = Path(configs[0].split.file)
    if not split_path.exists():
        dataset, _ = load_dataset(first)
        save_splits(make_splits([c.case_id for c in dataset.labelled], first.split), split_path)
    load_splits(split_path)
    results = {}
    for cfg in configs:
        cfg = cfg.model_copy(update={"output_dir": out,
                                     "split": cfg.split.model_copy(update={"file": split_path})})
        results[cfg.name] = run_experiment(cfg, progress=progress)
    runs = {n: r.per_case for n, r in results.items()}
    regions = results[names[0]].summary["label_scheme"]["regions"].keys()
    table = markdown_table(runs, list(regions))
    tests = []
    ref = runs[names[0]]
    for n in names[1:]:
        for metric in ("dice", "hd95", "lesion_dice", "lesion_hd95"):
            if metric in ref.columns and metric in runs[n].columns:
                for r in regions:
                    tests.append({"run": n, "reference": names[0], "metric": metric, "region": r,
                                  "p_wilcoxon": paired_wilcoxon(ref, runs[n], metric, r)})
    lines = [f"# Comparison {name}", "", table, "",
             f"Mean ± sd over test cases; splits in `{split_path}`."]
    if tests:
        lines += ["", f"Paired Wilcoxon signed-rank p-values against `{names[0]}`:", "",
                  "| run | metric | " + " | ".join(regions) + " |",
                  "|---|---|" + "---|" * len(list(regions))]
        for n in names[1:]:
            for metric in ("dice", "hd95", "lesion_dice", "lesion_hd95"):
                ps = [t["p_wilcoxon"] for t in tests if t["run"] == n and t["metric"] == metric]
                if ps:
                    lines.append(f"| {n} | {metric} | " + " | ".join(
                        "–" if p is None else f"{p:.3g}" for p in ps) + " |")
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    all_rows = pd.concat([df.assign(run=n) for n, df in runs.items()], ignore_index=True)
    with atomic_path(out / "comparison.csv") as tmp:
        all_rows.to_csv(tmp, index=False)
    payload = {"name": name, "runs": {n: r.summary for n, r in results.items()}, "wilcoxon": tests,
               "splits": str(split_path)}
    with atomic_path(out / "comparison.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=1, default=str))
    return {"dir": out, "table": "\n".join(lines), "results": results}
