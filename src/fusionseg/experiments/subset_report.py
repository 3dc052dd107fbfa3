"""Modality-subset reports (the layout of S1 Table 1): a trained model scored on every
non-empty subset of its input MRI sequences, the missing ones simulated.

Input is a tidy per-case frame with columns ``run``, ``case``, ``subset`` (present
modalities joined by "+", e.g. ``"t1ce+flair"``), ``region`` and metric columns
(``fold`` and others are ignored). Rows are the subsets in binary-counting order
(:func:`subset_order`) and a final mean row; columns the presence markers, then one
cell per region and run (region-major): ``mean ± sd [lo, hi]`` over cases, where
[lo, hi] is the 95 % percentile bootstrap CI of the mean
(:func:`fusionseg.evaluation.aggregate.bootstrap_ci`: 2000 resamples of the cases,
seed 0, so deterministic). NaN (or inf) values are never dropped silently: a cell
whose value is not finite for every case of its run and region says
``(n = k of N)``, and the counts are in the CSV and under each table.

The unit is the case: one value per run, case, subset and region (a case scored under
several folds is refused; average the folds per case first).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fusionseg.data.io import atomic_path  # noqa: E402
from fusionseg.evaluation.aggregate import N_BOOTSTRAP, BOOTSTRAP_SEED, describe, paired_wilcoxon  # noqa: E402
from fusionseg.experiments.figures import _save  # noqa: E402
from fusionseg.experiments.report import METRIC_TITLES, mean_sd, metric_notes  # noqa: E402

#: Presence markers of the table (present, absent).
PRESENT, ABSENT = "●", "○"
#: Name of the final row (per-case mean over the subsets).
MEAN_ROW = "mean"
#: Readable modality labels for the figure (others are upper-cased).
LABELS = {"t1": "T1", "t1ce": "T1ce", "t1c": "T1c", "t1gd": "T1Gd", "t2": "T2", "flair": "FLAIR"}
#: Columns the per-case frame must have (besides the metric).
REQUIRED = ("run", "case", "subset", "region")
CI_METHOD = (
    f"[lo, hi]: 95 % percentile bootstrap CI of the mean over cases ({N_BOOTSTRAP} resamples, seed {BOOTSTRAP_SEED})"
)


# --- subsets ----------------------------------------------------------------------


def subset_order(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``modalities`` in binary-counting order.

    Index i = 1 .. 2^M - 1 holds modality j iff bit (M - 1 - j) of i is set, so for
    (t1, t1ce, t2, flair): (flair,), (t2,), (t2, flair), (t1ce,), ..., all four (the
    row order of S1 Table 1). Each tuple keeps the channel order of ``modalities``.

    Raises:
        ValueError: no modalities, a repeated one, or a name that is empty or has "+".
    """
    mods = list(modalities)
    bad = [m for m in mods if not isinstance(m, str) or not m.strip() or "+" in m]
    if not mods or bad or len(set(mods)) != len(mods):
        raise ValueError(f"modalities must be distinct non-empty names without '+', got {mods!r}")
    m = len(mods)
    return [tuple(mods[j] for j in range(m) if (i >> (m - 1 - j)) & 1) for i in range(1, 2**m)]


def subset_name(subset: Sequence[str]) -> str:
    """The subset as written in the per-case frame: names joined by "+" (``"t1ce+flair"``)."""
    return "+".join(subset)


def subset_label(subset: Sequence[str]) -> str:
    """Readable label of a subset for figures, e.g. ``"T1ce+FLAIR"``."""
    return "+".join(LABELS.get(m.lower(), m.upper()) for m in subset)


def _names(item, modalities: Sequence[str]) -> frozenset[str]:
    parts = item.split("+") if isinstance(item, str) else list(item)
    parts = [p for p in parts if not (isinstance(p, str) and not p.strip())]
    lookup = {m.lower(): m for m in modalities}
    names = set()
    for part in parts:
        name = part.strip() if isinstance(part, str) else part
        if not isinstance(name, str) or name.lower() not in lookup:
            raise ValueError(f"unknown modality {name!r} in subset {item!r}; valid modalities: {list(modalities)}")
        names.add(lookup[name.lower()])
    if not names:
        raise ValueError(f"empty subset {item!r}; a subset needs at least one of {list(modalities)}")
    return frozenset(names)


def parse_subsets(value: str | Sequence[str | Sequence[str]], modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Subsets chosen by name.

    Args:
        value: ``"all"`` (every subset), a comma-separated string of subset names
            (``"flair,t1ce+flair"``), or a list of names (``"t1ce+flair"``) or of lists
            of modality names (``["t1ce", "flair"]``). Names match case-insensitively.
        modalities: the run's modalities in channel order.
    Returns:
        The subsets as tuples in :func:`subset_order` order, duplicates removed.
    Raises:
        ValueError: an unknown modality or an empty subset (the message names it and
            the valid modalities), or bad ``modalities``.
    """
    order = subset_order(modalities)
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return order
        value = value.split(",")
    chosen = {_names(item, modalities) for item in value}
    if not chosen:
        raise ValueError(f"no subsets given; pass 'all' or names built from {list(modalities)}")
    return [s for s in order if frozenset(s) in chosen]


# --- per-case data ----------------------------------------------------------------


def _check_columns(per_case: pd.DataFrame, metric: str) -> None:
    missing = [c for c in (*REQUIRED, metric) if c not in per_case.columns]
    if missing:
        raise ValueError(f"per-case frame lacks column(s) {missing} (columns: {list(per_case.columns)})")


def _check_present(kind: str, wanted: Sequence[str], available: Sequence[str]) -> None:
    absent = [w for w in wanted if w not in set(available)]
    if absent:
        raise ValueError(f"{kind}(s) {absent} not in the per-case data (available: {list(available)})")


def _prepare(
    per_case: pd.DataFrame, metric: str, regions: Sequence[str], runs: Sequence[str] | None, canon: Callable
) -> tuple[pd.DataFrame, list[str]]:
    """Rows of ``runs`` x ``regions`` as (run, region, case, key, value), ``key`` the
    canonical subset name; returns it and the run order."""
    _check_columns(per_case, metric)
    available = [str(r) for r in pd.unique(per_case["run"])]
    runs = available if runs is None else list(runs)
    _check_present("run", runs, available)
    _check_present("region", regions, [str(r) for r in pd.unique(per_case["region"])])
    df = per_case[per_case["run"].isin(runs) & per_case["region"].isin(regions)]
    frame = pd.DataFrame(
        {
            "run": df["run"].astype(str).to_numpy(),
            "region": df["region"].astype(str).to_numpy(),
            "case": df["case"].astype(str).to_numpy(),
            "key": [canon(s) for s in df["subset"]],
            "value": pd.to_numeric(df[metric], errors="coerce").to_numpy(float),
        }
    )
    dup = frame.duplicated(["run", "region", "case", "key"], keep=False)
    if dup.any():
        first = frame[dup].iloc[0]
        raise ValueError(
            f"{int(dup.sum())} rows repeat a (run, region, case, subset), e.g. {first['run']} {first['region']} "
            f"{first['case']} {first['key']} (several folds?); keep one value per case (average the folds first)."
        )
    return frame, runs


def _matrix(frame: pd.DataFrame, run: str, region: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """case x subset values (NaN kept) and presence (row exists) of one run and region."""
    sub = frame[(frame["run"] == run) & (frame["region"] == region)]
    values = sub.pivot(index="case", columns="key", values="value")
    present = sub.assign(one=1.0).pivot(index="case", columns="key", values="one").notna()
    return values, present


def _stats(values: np.ndarray, n_cases: int) -> dict:
    """mean, sd, lo, hi (bootstrap CI) over the finite ``values`` of the present cases;
    n (finite), n_nan (NaN or inf), n_missing (cases without a value), n_cases."""
    finite = values[np.isfinite(values)]
    out = dict.fromkeys(("mean", "sd", "lo", "hi"), np.nan)
    if finite.size:
        d = describe(finite)
        out.update(mean=d["mean"], sd=d["sd"], lo=d["ci95_low"], hi=d["ci95_high"])
    n_nan, n_missing = int(values.size - finite.size), n_cases - int(values.size)
    return {**out, "n": int(finite.size), "n_nan": n_nan, "n_missing": n_missing, "n_cases": n_cases}


def _subset_mean(values: pd.DataFrame, present: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """Per case, the mean over ``keys`` (NaN if one is NaN), for the cases having all."""
    complete = present.reindex(columns=list(keys), fill_value=False).all(axis=1)
    return values.loc[complete].reindex(columns=list(keys)).mean(axis=1, skipna=False)


def _cells(frame: pd.DataFrame, run: str, region: str, keys: Sequence[str]):
    """(key, finite values, stats) per subset in ``keys`` and for the mean row: the
    per-case mean over ``keys`` of the cases that have all of them (NaN propagates)."""
    values, present = _matrix(frame, run, region)
    n_cases = len(values.index)
    for key in keys:
        col = values[key][present[key]].to_numpy(float) if key in values else np.empty(0)
        yield key, col[np.isfinite(col)], _stats(col, n_cases)
    per_case = _subset_mean(values, present, keys).to_numpy(float)
    yield MEAN_ROW, per_case[np.isfinite(per_case)], _stats(per_case, n_cases)


def _table_keys(frame: pd.DataFrame, modalities: Sequence[str]) -> list[str]:
    seen = set(frame["key"])
    return [k for k in map(subset_name, subset_order(modalities)) if k in seen]


def _canon_for(modalities: Sequence[str]) -> Callable[[str], str]:
    order = {frozenset(s): subset_name(s) for s in subset_order(modalities)}
    return lambda s: order[_names(s, modalities)]


# --- tables -----------------------------------------------------------------------


def subset_means(
    per_case: pd.DataFrame,
    modalities: Sequence[str],
    regions: Sequence[str],
    metric: str = "dice",
    runs: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The numbers of :func:`subset_table` as a long frame (the CSV).

    Returns:
        One row per subset (then ``"mean"``) x region x run (in that nesting order)
        with columns subset (name, e.g. ``"t1ce+flair"``), run, region, metric,
        mean, sd (ddof 1; 0 for one case), lo, hi (95 % percentile bootstrap CI of the
        mean), n (cases with a finite value), n_nan (NaN or inf values, excluded),
        n_missing (cases of that run and region without the subset, or, in the mean
        row, without some subset) and n_cases (cases of that run and region).
    Raises:
        ValueError: missing columns, unknown run / region / modality, or repeated rows.
    """
    frame, runs = _prepare(per_case, metric, regions, runs, _canon_for(modalities))
    keys = _table_keys(frame, modalities)
    rows = []
    for region, run in itertools.product(regions, runs):
        for key, _, stats in _cells(frame, run, region, keys):
            rows.append({"subset": key, "run": run, "region": region, "metric": metric, **stats})
    order = {k: i for i, k in enumerate([*keys, MEAN_ROW])}
    out = pd.DataFrame(rows)
    return out.sort_values("subset", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def _format_cell(finite: np.ndarray, stats: dict, digits: int) -> str:
    total = stats["n_cases"]
    note = "" if stats["n"] == total else f" (n = {stats['n']} of {total})"
    if stats["n"] == 0:
        return f"–{note}"
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}" + (note or " (n = 1)")
    d = max(digits - 1, 0)
    return f"{mean_sd(pd.Series(finite), digits)} [{stats['lo']:.{d}f}, {stats['hi']:.{d}f}]{note}"


def subset_table(
    per_case: pd.DataFrame,
    modalities: Sequence[str],
    regions: Sequence[str],
    metric: str = "dice",
    runs: Sequence[str] | None = None,
    digits: int = 3,
) -> pd.DataFrame:
    """S1 Table 1 layout of ``metric``: one row per subset present in the data
    (:func:`subset_order` order, index = subset name) and a final ``"mean"`` row.

    Columns: one presence marker per modality (header the modality name, cell "●"
    present / "○" absent, empty in the mean row), then ``"<region> <run>"`` for every
    region and run (region-major) with ``mean ± sd [lo, hi]`` over cases; [lo, hi] is
    the 95 % percentile bootstrap CI of the mean (``bootstrap_ci``, 2000 resamples,
    seed 0: deterministic), at ``digits - 1`` decimals. When not every case of the run
    and region has a finite value the cell ends ``(n = k of N)``: NaN values and cases
    without the subset are excluded and counted (see :func:`subset_means`). The mean
    row averages, per case, the metric over all the table's subsets (cases lacking
    one, or with a NaN in one, are excluded and counted), then over cases.

    Runs default to their order in the data. Raises ValueError as :func:`subset_means`.
    """
    frame, runs = _prepare(per_case, metric, regions, runs, _canon_for(modalities))
    keys = _table_keys(frame, modalities)
    table = pd.DataFrame(index=pd.Index([*keys, MEAN_ROW], name="subset"))
    for m in modalities:
        table[m] = [(PRESENT if m in k.split("+") else ABSENT) for k in keys] + [""]
    for region, run in itertools.product(regions, runs):
        table[f"{region} {run}"] = [_format_cell(f, s, digits) for _, f, s in _cells(frame, run, region, keys)]
    return table


def _markdown(table: pd.DataFrame, modalities: Sequence[str]) -> str:
    header = list(table.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        cells = [str(v) for v in row]
        if name == MEAN_ROW and modalities:
            cells[0] = f"**{MEAN_ROW}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _exclusions(means: pd.DataFrame) -> str:
    """One line counting what the cells exclude (subset rows, then the mean row)."""
    rows, mean = means[means["subset"] != MEAN_ROW], means[means["subset"] == MEAN_ROW]
    parts = []
    for col, what in (("n_nan", "NaN (or inf) values"), ("n_missing", "cases without a subset")):
        hit = rows[rows[col] > 0]
        where = ", ".join(f"{r.run} {r.region} {r.subset}: {getattr(r, col)}" for r in hit.itertuples())
        parts.append(f"{int(hit[col].sum())} {what}" + (f" ({where})" if where else ""))
    hit = mean[mean["n"] < mean["n_cases"]]
    where = ", ".join(f"{r.run} {r.region}: {r.n_cases - r.n}" for r in hit.itertuples()) or "none"
    return (
        "Excluded from the cells, each counted in its (n = k of N): " + "; ".join(parts) + ". "
        f"The mean row also excludes every case with a NaN in, or lacking, any subset ({where})."
    )


def _conventions(conventions: Mapping[str, str] | None) -> list[str]:
    lines = ["Conventions:"]
    lines += [f"- {k}: {v}" for k, v in (conventions or {}).items()] or ["- (none given)"]
    return lines


def _markdown_section(per_case, modalities, regions, metric, runs, conventions) -> tuple[list[str], pd.DataFrame]:
    table = subset_table(per_case, modalities, regions, metric, runs, 3 if "dice" in metric else 2)
    means = subset_means(per_case, modalities, regions, metric, runs)
    title = METRIC_TITLES.get(metric, metric)
    lines = [f"## {title} per available-modality subset", "", _markdown(table, modalities), ""]
    lines += [f"Cells: mean ± sd {CI_METHOD}; mean row: per-case mean over the {len(table) - 1} subsets."]
    lines += [_exclusions(means), *filter(None, [metric_notes([metric])]), "", *_conventions(conventions), ""]
    return lines, means


def _heatmap(means: pd.DataFrame, regions: Sequence[str], runs: Sequence[str], metric: str, path: Path) -> Path:
    keys = list(dict.fromkeys(means["subset"]))
    cols = list(itertools.product(regions, runs))
    grid = means.set_index(["subset", "region", "run"])["mean"]
    data = np.array([[grid.get((k, r, run), np.nan) for r, run in cols] for k in keys], dtype=float)
    fig, ax = plt.subplots(figsize=(2.0 + 0.9 * len(cols), 1.2 + 0.38 * len(keys)))
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        text = "–" if not np.isfinite(v) else f"{v:.2f}"
        colour = "white" if np.isfinite(v) and v < 0.6 else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(cols)), [f"{r}\n{run}" for r, run in cols], fontsize=7)
    ax.set_yticks(range(len(keys)), [k if k == MEAN_ROW else subset_label(k.split("+")) for k in keys], fontsize=7)
    ax.axhline(len(keys) - 1.5, color="white", lw=2)
    fig.colorbar(im, ax=ax, fraction=0.04, label=f"mean {METRIC_TITLES.get(metric, metric)}")
    ax.set_title(f"mean {METRIC_TITLES.get(metric, metric)} per available-modality subset", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def write_subset_tables(
    per_case: pd.DataFrame,
    modalities: Sequence[str],
    regions: Sequence[str],
    out_dir: str | Path,
    metrics: Sequence[str] = ("dice",),
    conventions: Mapping[str, str] | None = None,
    runs: Sequence[str] | None = None,
) -> list[Path]:
    """Write, each atomically (:func:`fusionseg.data.io.atomic_path`), into ``out_dir``:

    - ``modality_subsets.md``: per metric a titled :func:`subset_table`, then the CI
      method, the NaN / missing counts, the metric's empty-mask rule and a
      "Conventions:" block with every ``key: value`` of ``conventions`` verbatim (e.g.
      the missing-modality simulation, empty-mask rule, post-processing);
    - ``modality_subsets.csv``: :func:`subset_means` of every metric, stacked;
    - ``modality_subsets.png``: heat map of the first Dice-like metric (name contains
      "dice"; none, no figure): rows the subsets ("T1ce+FLAIR") and the mean row,
      columns (region, run), colour the mean in [0, 1], each cell annotated (2 decimals).

    Returns:
        The paths written (md, csv, then png when drawn).
    Raises:
        ValueError: as :func:`subset_means` (nothing is written then), or no metrics.
    """
    if not metrics:
        raise ValueError("no metrics given; pass e.g. metrics=('dice',)")
    out_dir = Path(out_dir)
    lines, frames = [f"# Modality subsets ({', '.join(metrics)})", ""], []
    for metric in metrics:
        section, means = _markdown_section(per_case, modalities, regions, metric, runs, conventions)
        lines += section
        frames.append(means)
    written = [out_dir / "modality_subsets.md", out_dir / "modality_subsets.csv"]
    with atomic_path(written[0]) as tmp:
        tmp.write_text("\n".join(lines))
    with atomic_path(written[1]) as tmp:
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    fig_metric = next((m for m in metrics if "dice" in m), None)
    if fig_metric is not None:
        means = frames[list(metrics).index(fig_metric)]
        order = list(dict.fromkeys(means["run"]))
        written.append(_heatmap(means, regions, order, fig_metric, out_dir / "modality_subsets.png"))
    return written


# --- paired tests -----------------------------------------------------------------


def _set_key(subset: str | Sequence[str]) -> str:
    parts = subset.split("+") if isinstance(subset, str) else list(subset)
    names = sorted({p.strip() for p in parts if p.strip()})
    if not names:
        raise ValueError(f"empty subset {subset!r}")
    return "+".join(names)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else np.nan


def _paired_row(x: pd.Series, y: pd.Series, n_cases: int) -> dict:
    """Paired summary of per-case ``x`` and ``y`` (NaN allowed; absent cases missing):
    means over the cases finite in both, their difference x - y, n, n_nan (cases with a
    non-finite value), n_incomplete (cases missing from either), Wilcoxon p (NaN below 2)."""
    common = x.index.intersection(y.index)
    a, b = x[common].to_numpy(float), y[common].to_numpy(float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    p = paired_wilcoxon(a, b)["p_value"] if a.size >= 2 else np.nan
    return {
        "mean_a": _mean(a),
        "mean_b": _mean(b),
        "mean_difference": _mean(a - b),
        "n": int(a.size),
        "n_nan": int((~ok).sum()),
        "n_incomplete": n_cases - len(common),
        "p_wilcoxon": p,
    }


def paired_subset_test(
    per_case: pd.DataFrame, run_a: str, run_b: str, regions: Sequence[str], metric: str = "dice"
) -> pd.DataFrame:
    """Run A against run B on the per-case mean over the modality subsets.

    Per region, each case's ``metric`` is averaged over every subset (the two runs must
    have the same subsets); cases that have every subset in both runs, with finite
    values, are paired.

    Returns:
        One row per region: region, run_a, run_b, n_subsets, mean_a, mean_b,
        mean_difference (a - b), n (paired cases), n_nan (cases excluded for a NaN or
        inf), n_incomplete (cases excluded for lacking a subset in either run) and
        p_wilcoxon (two-sided, :func:`~fusionseg.evaluation.aggregate.paired_wilcoxon`;
        NaN with fewer than 2 pairs, 1 when every difference is 0).
    Raises:
        ValueError: a run, region or metric column is not in the data, or the runs
            were scored on different subsets in a region.
    """
    frame, _ = _prepare(per_case, metric, regions, [run_a, run_b], _set_key)
    rows = []
    for region in regions:
        sub = frame[frame["region"] == region]
        ka, kb = (set(sub.loc[sub["run"] == r, "key"]) for r in (run_a, run_b))
        if ka != kb:
            raise ValueError(
                f"{region}: the runs have different subsets ({run_a} only: {sorted(ka - kb)}, "
                f"{run_b} only: {sorted(kb - ka)}); score both on the same subsets."
            )
        x, y = (_subset_mean(*_matrix(frame, r, region), sorted(ka)) for r in (run_a, run_b))
        row = _paired_row(x, y, sub["case"].nunique())
        rows.append({"region": region, "run_a": run_a, "run_b": run_b, "n_subsets": len(ka), **row})
    return pd.DataFrame(rows)


def missing_one_loss(
    per_case: pd.DataFrame, run: str, full: Sequence[str], without: str, regions: Sequence[str], metric: str = "dice"
) -> pd.DataFrame:
    """What losing one modality costs ``run``: ``full`` against ``full`` minus ``without``.

    Returns:
        One row per region: region, run, full and reduced (subset names), mean_full,
        mean_without, mean_loss (full - without, per case, then averaged), n (cases with
        finite values in both), n_nan, n_incomplete (cases lacking one of the two
        subsets) and p_wilcoxon (two-sided paired Wilcoxon; NaN below 2 pairs).
    Raises:
        ValueError: ``without`` not in ``full``, ``full`` has nothing else, or the run,
            a region, the metric or one of the two subsets is not in the data.
    """
    names = [str(m).strip() for m in full]
    if without not in names or len(set(names)) < 2 or len(set(names)) != len(names):
        raise ValueError(f"without={without!r} must be one of full={list(full)}, which needs another modality")
    reduced = [m for m in names if m != without]
    keys = {_set_key(names): subset_name(names), _set_key(reduced): subset_name(reduced)}
    frame, _ = _prepare(per_case, metric, regions, [run], _set_key)
    rename = {"mean_a": "mean_full", "mean_b": "mean_without", "mean_difference": "mean_loss"}
    rows = []
    for region in regions:
        sub = frame[(frame["region"] == region) & (frame["run"] == run)]
        have = [keys.get(k, k) for k in sorted(set(sub["key"]))]
        _check_present(f"{run} {region} subset", list(keys.values()), have)
        x, y = (sub[sub["key"] == k].set_index("case")["value"] for k in keys)
        row = {rename.get(k, k): v for k, v in _paired_row(x, y, sub["case"].nunique()).items()}
        rows.append({"region": region, "run": run, "full": subset_name(names), "reduced": subset_name(reduced), **row})
    return pd.DataFrame(rows)
