"""A2FSeg's attention report (S1 Fig. 3): the mean adaptive-fusion weight of each
modality in each tissue class of the ground truth, with every modality present.

For each test case, the slices that contain tumour are run through the model's
``heads`` (A2FSeg: ``weights``, the (B, M, C, *spatial) softmax over the present
modalities); the weight of modality m at a voxel is its mean over the C feature
channels, and a class's value is the mean over the voxels of that class (background
included, within the case's crop window). The weights of the M modalities at a voxel
sum to 1, so 1 / M is "no preference". Per fold: ``fold_<k>/subsets/attention.csv``
(case x class x modality); per run: ``attention.md`` (mean ± sd over cases) and
``attention.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusionseg.data.io import atomic_path
from fusionseg.data.sampling import round_up
from fusionseg.experiments.report import mean_sd

ATTENTION_CSV = "attention.csv"


@torch.no_grad()
def case_attention(model, prepared, modalities, scheme, divisor: int, batch_size: int = 8) -> list[dict]:
    """Rows (case, class, modality, weight, voxels) of one prepared case.

    Raises:
        ValueError: the case has no label (the classes come from the ground truth).
    """
    if prepared.label is None:
        raise ValueError(f"case {prepared.case_id}: the attention report needs its ground truth")
    axis = prepared.axial_axis
    image = np.moveaxis(np.asarray(prepared.select(list(modalities)), dtype=np.float32), 1 + axis, 0)
    label = np.moveaxis(np.asarray(prepared.label), axis, 0)
    slices = [z for z in range(label.shape[0]) if label[z].any()]
    k, m = scheme.num_classes, len(modalities)
    sums, counts = np.zeros((k, m)), np.zeros(k)
    h, w = image.shape[2:]
    ph, pw = round_up(h, divisor), round_up(w, divisor)
    top, left = (ph - h) // 2, (pw - w) // 2  # centred, as the slice-wise inferer pads
    for start in range(0, len(slices), batch_size):
        idx = slices[start : start + batch_size]
        x = torch.zeros((len(idx), m, ph, pw))
        x[:, :, top : top + h, left : left + w] = torch.from_numpy(image[idx])
        weights = model.heads(x).weights.mean(dim=2)[:, :, top : top + h, left : left + w].numpy()  # (b, M, H, W)
        classes = label[idx]
        for c in range(k):
            where = classes == c
            counts[c] += where.sum()
            sums[c] += weights.transpose(1, 0, 2, 3)[:, where].sum(axis=1)
    return [
        {
            "case": prepared.case_id,
            "class": scheme.class_names[c],
            "modality": mod,
            "weight": sums[c, j] / counts[c],
            "voxels": int(counts[c]),
        }
        for c in range(k)
        if counts[c]
        for j, mod in enumerate(modalities)
    ]


def fold_attention(model, fold: dict, context, divisor: int) -> pd.DataFrame:
    """The attention rows of ``fold``'s test cases (with a ``fold`` column)."""
    rows = []
    for case_id in fold["test"]:
        rows += case_attention(model, context.prepared[case_id], context.modalities, context.dataset.scheme, divisor)
    frame = pd.DataFrame(rows, columns=["case", "class", "modality", "weight", "voxels"])
    frame.insert(1, "fold", fold["fold"])
    return frame


def write_attention(frame: pd.DataFrame, out: Path, modalities, title: str = "") -> list[Path]:
    """``attention.md`` (mean ± sd over cases of the mean weight per class and
    modality) and ``attention.png`` (bars) in ``out``."""
    classes = list(dict.fromkeys(frame["class"]))
    header = "| class | " + " | ".join(modalities) + " |"
    lines = [f"# Adaptive-fusion attention{title} (S1 Fig. 3)", "", header, "|" + "---|" * (len(modalities) + 1)]
    for c in classes:
        part = frame[frame["class"] == c]
        cells = [mean_sd(part[part["modality"] == m]["weight"], 3) for m in modalities]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    n = frame["case"].nunique()
    lines += [
        "",
        f"Mean ± sd over {n} test cases of each case's mean weight (softmax over the present modalities, "
        f"averaged over the feature channels) in the voxels of each ground-truth class, every modality present; "
        f"1/{len(modalities)} = {1 / len(modalities):.3f} is no preference.",
    ]
    md = out / "attention.md"
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return [md, _attention_figure(frame, classes, modalities, out / "attention.png")]


def _attention_figure(frame: pd.DataFrame, classes, modalities, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = frame.groupby(["class", "modality"])["weight"].mean()
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(classes), 3.2))
    width = 0.8 / len(modalities)
    for j, m in enumerate(modalities):
        ax.bar(
            [i + j * width for i in range(len(classes))], [means.get((c, m), np.nan) for c in classes], width, label=m
        )
    ax.axhline(1 / len(modalities), color="grey", lw=0.8, ls="--")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))], classes)
    ax.set_ylabel("mean attention weight")
    ax.legend(fontsize=7, ncol=len(modalities))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
