"""Reports: Markdown tables of per-case metrics (mean ± sd) and overlay figures
(modalities + ground truth + prediction) as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fusionseg.data.io import atomic_path, load_volume  # noqa: E402
from fusionseg.data.sampling import axial_slice  # noqa: E402
from fusionseg.evaluation.aggregate import describe, paired_wilcoxon  # noqa: E402

#: Column titles of the tables (metric column -> heading).
METRIC_TITLES = {
    "dice": "Dice",
    "hd95": "HD95 (mm)",
    "lesion_dice": "LW Dice",
    "lesion_hd95": "LW HD95 (mm)",
    "asd": "ASD (mm)",
    "fpv_ml": "FPV (mL)",
    "fnv_ml": "FNV (mL)",
}


def metric_notes(metrics: Sequence[str]) -> str:
    """One Markdown line defining each of ``metrics`` with its empty-mask rule (the
    descriptions of :data:`fusionseg.evaluation.evaluate.METRICS`), written under every
    table so that a table read alone says what an empty GT or prediction scored."""
    from fusionseg.evaluation.evaluate import METRICS

    known = [m for m in metrics if m in METRICS]
    if not known:
        return ""
    return "Metrics, over cases (mean ± sd): " + "; ".join(f"{m}: {METRICS[m].description}" for m in known) + "."


def mean_sd(values: pd.Series, digits: int) -> str:
    """``mean ± sd`` (ddof 1) over cases; one case has no spread: ``mean (n = 1)``."""
    v = values.astype(float)
    if len(v) < 2:
        return f"{v.mean():.{digits}f} (n = {len(v)})"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def paired_p(reference: pd.DataFrame, other: pd.DataFrame, metric: str, region: str) -> float | None:
    """Two-sided paired Wilcoxon p-value of ``metric`` in ``region`` over the cases both
    runs have (:func:`fusionseg.evaluation.aggregate.paired_wilcoxon`); None when fewer
    than 2 paired cases or all differences are zero."""
    x, y = _paired(reference, other, metric, region)
    if len(x) < 2 or np.allclose(x - y, 0):
        return None
    return paired_wilcoxon(x, y)["p_value"]


def _paired(reference: pd.DataFrame, other: pd.DataFrame, metric: str, region: str) -> tuple[np.ndarray, np.ndarray]:
    a = reference[reference["region"] == region].set_index("case")[metric]
    b = other[other["region"] == region].set_index("case")[metric]
    common = a.index.intersection(b.index)
    return b[common].to_numpy(float), a[common].to_numpy(float)


def table_frame(
    runs: Mapping[str, pd.DataFrame], reference: str | None, metrics: Sequence[str], regions: Sequence[str]
) -> pd.DataFrame:
    """The numbers of :func:`comparison_table` as a tidy frame, one row per run x region
    x metric: ``n``, ``mean``, ``sd`` (ddof 1), ``median``, ``ci95_low`` / ``ci95_high``
    (percentile bootstrap of the mean, :func:`~fusionseg.evaluation.aggregate.describe`)
    and, for runs other than ``reference``, the paired comparison over the cases both
    have: ``n_paired``, ``mean_difference`` (run - reference), ``p_wilcoxon`` (as in
    the table; empty when undefined) and ``n_higher`` / ``n_lower`` / ``n_tied``.
    """
    present = [m for m in metrics if all(m in df.columns for df in runs.values())]
    rows = []
    for name, df in runs.items():
        for m in present:
            for r in regions:
                values = df.loc[df["region"] == r, m].to_numpy(float)
                if not len(values):
                    continue
                row = {"run": name, "region": r, "metric": m, **describe(values)}
                if reference is not None and name != reference:
                    x, y = _paired(runs[reference], df, m, r)
                    diff = x - y
                    row.update(
                        reference=reference,
                        n_paired=int(diff.size),
                        mean_difference=float(diff.mean()) if diff.size else None,
                        p_wilcoxon=paired_p(runs[reference], df, m, r),
                        n_higher=int((diff > 0).sum()),
                        n_lower=int((diff < 0).sum()),
                        n_tied=int((diff == 0).sum()),
                    )
                rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(
    runs: Mapping[str, pd.DataFrame], reference: str | None, metrics: Sequence[str], regions: Sequence[str]
) -> tuple[str, list[dict]]:
    """Markdown table, one row per run and one column per (metric, region): mean ± sd
    over cases; with a ``reference`` run (shown bold) every other cell also gets the
    paired Wilcoxon p against it. Returns the table and the test records.

    Args:
        runs: run name -> tidy per-case DataFrame (columns case, region, metrics...).
        reference: name of the reference run, or None for no tests.
        metrics: metric columns to show (those missing from any run are skipped).
        regions: region order (e.g. WT, TC, ET).
    """
    present = [m for m in metrics if all(m in df.columns for df in runs.values())]
    header = ["run"] + [f"{METRIC_TITLES.get(m, m)} {r}" for m in present for r in regions]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    tests = []
    for name, df in runs.items():
        cells = [f"**{name}**" if name == reference else name]
        for m in present:
            for r in regions:
                sub = df.loc[df["region"] == r, m]
                cell = mean_sd(sub, 3 if "dice" in m else 2) if len(sub) else "–"
                if reference is not None and name != reference:
                    p = paired_p(runs[reference], df, m, r)
                    tests.append({"run": name, "reference": reference, "metric": m, "region": r, "p_wilcoxon": p})
                    cell += " (p –)" if p is None else f" (p {p:.2g})"
                cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), tests


def _overlay(ax, image: np.ndarray, labels: np.ndarray, title: str, num_classes: int) -> None:
    ax.imshow(image.T, cmap="gray", origin="lower")
    masked = np.ma.masked_where(labels.T == 0, labels.T)
    ax.imshow(
        masked, cmap="jet", vmin=0, vmax=max(num_classes - 1, 1), alpha=0.45, origin="lower", interpolation="nearest"
    )
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def write_overlays(
    dataset, prepared, run_dir: Path, modalities: Sequence[str], per_case: pd.DataFrame, n: int
) -> list[Path]:
    """Overlay PNGs for ``n`` test cases (best, median and worst by mean Dice): each
    modality at the axial slice with the most tumour, then ground truth and prediction."""
    scores = per_case.groupby("case")["dice"].mean().sort_values() if "dice" in per_case else None
    if scores is None or scores.empty:
        return []
    order = list(scores.index)
    picks = list(dict.fromkeys([order[-1], order[len(order) // 2], order[0]] + order))[:n]
    out_dir = Path(run_dir) / "overlays"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for case_id in picks:
        p = prepared[case_id]
        pred_full, _ = load_volume(Path(run_dir) / "predictions" / f"{case_id}.nii.gz", dtype=np.int64)
        pred = dataset.scheme.to_classes(p.crop(pred_full))
        gt = np.asarray(p.label)
        axis = p.axial_axis
        other = tuple(a for a in range(3) if a != axis)
        z = int(np.argmax((gt > 0).sum(axis=other)))
        panels = [(m, axial_slice(p.image[p.modalities.index(m)], axis, z)) for m in modalities]
        fig, axes = plt.subplots(1, len(panels) + 2, figsize=(2.4 * (len(panels) + 2), 2.8))
        for ax, (m, img) in zip(axes, panels):
            ax.imshow(img.T, cmap="gray", origin="lower")
            ax.set_title(m.upper(), fontsize=9)
            ax.axis("off")
        base = panels[-1][1]
        _overlay(axes[-2], base, axial_slice(gt, axis, z), "ground truth", dataset.scheme.num_classes)
        dice = scores[case_id]
        _overlay(
            axes[-1], base, axial_slice(pred, axis, z), f"prediction (Dice {dice:.2f})", dataset.scheme.num_classes
        )
        where = f"resampled-grid slice {z}" if p.resampled else f"axial slice {z + p.bbox[axis][0]}"
        fig.suptitle(f"{case_id}, {where}", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{case_id}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        written.append(path)
    return written
