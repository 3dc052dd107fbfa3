"""Comparison figures: example predictions of every run with the fused images (as in
S0 Fig. 4) and the per-epoch dynamic loss weights."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fusionseg.data.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _grey(ax, img, title):
    ax.imshow(np.asarray(img).T, cmap="gray", origin="lower")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _labels(ax, base, labels, title, num_classes):
    _grey(ax, base, title)
    lab = np.asarray(labels).T
    ax.imshow(
        np.ma.masked_where(lab == 0, lab),
        cmap="jet",
        vmin=0,
        vmax=max(num_classes - 1, 1),
        alpha=0.45,
        origin="lower",
        interpolation="nearest",
    )


def example_figure(
    run_dirs: Mapping[str, Path], per_case: Mapping[str, pd.DataFrame], path: Path, reference: str, num_classes: int
) -> Path | None:
    """S0 Fig. 4-style panel for one test case (median Dice of the reference run):
    T1CE, FLAIR, ground truth, the fused image of every fusion run, then every run's
    prediction. Returns None when no case has an example in every run."""
    common = None
    for run_dir in run_dirs.values():
        cases = {p.stem for p in (Path(run_dir) / "examples").glob("*.npz")}
        common = cases if common is None else common & cases
    if not common:
        return None
    ref = per_case[reference]
    scores = ref[ref["case"].isin(common)].groupby("case")["dice"].mean().sort_values()
    case = scores.index[len(scores) // 2]
    data = {n: np.load(Path(d) / "examples" / f"{case}.npz") for n, d in run_dirs.items()}
    first = next(iter(data.values()))
    mods = [str(m) for m in first["modalities"]]
    base = first["image"][mods.index("flair") if "flair" in mods else -1]
    top = [(m.upper(), first["image"][i]) for i, m in enumerate(mods)]
    top += [(f"fused ({n})", d["fused"]) for n, d in data.items() if "fused" in d.files]
    ncols = max(len(top) + 1, len(data))
    fig, axes = plt.subplots(2, ncols, figsize=(2.1 * ncols, 4.6))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img) in zip(axes[0], top):
        _grey(ax, img, title)
    _labels(axes[0][len(top)], base, first["label"], "ground truth", num_classes)
    for ax, (name, d) in zip(axes[1], data.items()):
        dice = per_case[name]
        dice = dice[dice["case"] == case]["dice"].mean()
        _labels(ax, base, d["prediction"], f"{name} (Dice {dice:.2f})", num_classes)
    fig.suptitle(f"{case}, axial slice {int(first['slice'])}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def lambda_figure(run_dirs: Mapping[str, Path], path: Path) -> Path | None:
    """lambda_f and lambda_s per epoch (every fold) of the runs that log them."""
    curves = {}
    for name, run_dir in run_dirs.items():
        for log in sorted(Path(run_dir).glob("fold_*/**/train_log.csv")):
            df = pd.read_csv(log)
            if "lambda_f" in df and df["lambda_f"].nunique() > 1:
                fold = next(p for p in log.relative_to(run_dir).parts if p.startswith("fold_"))
                curves[(name, fold)] = df
    if not curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for (name, fold), df in curves.items():
        axes[0].plot(df["epoch"], df["lambda_f"], marker="o", ms=3, label=f"{name} {fold}")
        axes[1].plot(df["epoch"], df["lambda_s"], marker="o", ms=3, label=f"{name} {fold}")
    for ax, title in zip(axes, ("lambda_f (fusion)", "lambda_s (segmentation)")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def paired_figure(
    per_case: Mapping[str, pd.DataFrame], reference: str, path: Path, regions, metric: str = "dice"
) -> Path | None:
    """Per-case ``metric`` of every run against ``reference``, as paired dots: one
    panel per region, one pair of columns per run (reference left, run right), one
    line per case joining its two values, green where the run is higher, red where
    lower, grey where tied; the title of each pair gives higher / lower case counts.
    Returns None when there is no other run or no such metric."""
    others = [n for n in per_case if n != reference]
    regions = list(dict.fromkeys(regions))
    if not others or any(metric not in df.columns for df in per_case.values()):
        return None
    ref = per_case[reference]
    fig, axes = plt.subplots(
        len(regions), 1, figsize=(max(6.0, 1.3 * len(others) + 1.5), 2.6 * len(regions)), squeeze=False
    )
    for ax, region in zip(axes[:, 0], regions):
        a = ref[ref["region"] == region].set_index("case")[metric]
        ticks, labels = [], []
        for i, name in enumerate(others):
            df = per_case[name]
            b = df[df["region"] == region].set_index("case")[metric]
            common = a.index.intersection(b.index)
            x0, x1 = 3 * i, 3 * i + 1
            for case in common:
                d = b[case] - a[case]
                colour = "tab:green" if d > 0 else "tab:red" if d < 0 else "0.6"
                ax.plot([x0, x1], [a[case], b[case]], color=colour, alpha=0.6, lw=1)
            ax.scatter([x0] * len(common), a[common], s=10, color="0.3", zorder=3)
            ax.scatter([x1] * len(common), b[common], s=10, color="tab:blue", zorder=3)
            up, down = int((b[common] > a[common]).sum()), int((b[common] < a[common]).sum())
            ticks += [x0 + 0.5]
            labels += [f"{reference} → {name}\n↑{up} ↓{down} of {len(common)}"]
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel(f"{metric} {region}", fontsize=8)
        ax.set_ylim(-0.03, 1.03) if "dice" in metric else None
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"per-case {metric} of every run against {reference} (one line per test case)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
