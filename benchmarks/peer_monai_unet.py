"""A plain MONAI 2-D U-Net script, as a user would write it in an afternoon, trained and
tested on exactly the cross-validation folds of a finished fusionseg run, side by side.

The peer (issue 13): MONAI ``UNet`` (2-D, channels 32-64-128-256, strides 2, 2 residual
units, batch norm), ``DiceCELoss`` (softmax, one-hot), Adam lr 1e-3, batch 16, 20
epochs over every axial slice with tumour of each fold's training and validation
cases (no early stopping, no augmentation), per-volume z-score of each modality over
its non-zero voxels, centre crop 192 x 192 in-plane. Test cases are predicted slice by
slice on the same crop (voxels outside it are background), labels mapped back to the
dataset's values. Only the scoring is fusionseg's (:func:`fusionseg.evaluation.evaluate.
evaluate_case`, BraTS 2023 GLI lesion-wise settings), so both sides are scored by one
function on the same GT.

Output (``--out``, default benchmarks/results/peer_monai_unet.{json,md}): per region
(WT, TC, ET) and metric (Dice, HD95, lesion-wise Dice) fusionseg's and the peer's mean
± sd over the same test cases, the paired Wilcoxon p, both wall times and machine info;
the peer's per-case rows as CSV (``--peer-csv`` sets them beside another run on the same
folds without training the peer again).

    python benchmarks/peer_monai_unet.py runs/baseline_brats18_cpu [--data DIR] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from fusionseg.data.cases import discover
from fusionseg.evaluation.evaluate import evaluate_case
from fusionseg.experiments.environment import environment_info
from fusionseg.experiments.report import mean_sd, paired_p

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("t1", "t1ce", "t2", "flair")
METRICS = ("dice", "hd95", "lesion_dice")
CROP = 192


def load_case(case) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...]]:
    """(4, X, Y, Z) per-volume z-scored float32, raw label map or None, spacing (mm)."""
    vols = []
    for m in MODALITIES:
        img = nib.load(case.images[m].path)
        v = np.asarray(img.dataobj, dtype=np.float32)
        brain = v != 0
        if brain.any():
            v = np.where(brain, (v - v[brain].mean()) / (v[brain].std() + 1e-8), 0).astype(np.float32)
        vols.append(v)
    seg = None if case.label is None else np.asarray(nib.load(case.label).dataobj).astype(np.int64)
    return np.stack(vols), seg, tuple(float(s) for s in img.header.get_zooms()[:3])


def crop_window(shape: tuple[int, int]) -> tuple[slice, slice]:
    """Centre crop of CROP x CROP in-plane (the whole axis when it is shorter)."""
    out = []
    for n in shape:
        start = max(0, (n - CROP) // 2)
        out.append(slice(start, start + min(CROP, n)))
    return tuple(out)


def training_slices(cases, scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Every axial slice (last axis) with tumour: images (N, 4, h, w), classes (N, 1, h, w)."""
    xs, ys = [], []
    for case in cases:
        image, seg, _ = load_case(case)
        wx, wy = crop_window(image.shape[1:3])
        classes = scheme.to_classes(seg)
        for z in np.flatnonzero(classes.any(axis=(0, 1))):
            xs.append(image[:, wx, wy, z])
            ys.append(classes[wx, wy, z][None])
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


def train_peer(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> torch.nn.Module:
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    model = UNet(2, 4, 4, channels=(32, 64, 128, 256), strides=(2, 2, 2), num_res_units=2, norm="batch")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(16):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict_peer(model, case, scheme) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    image, seg, spacing = load_case(case)
    wx, wy = crop_window(image.shape[1:3])
    classes = np.zeros(image.shape[1:], dtype=np.uint8)
    stack = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image[:, wx, wy, :], 3, 0)))  # (Z, 4, h, w)
    h, w = stack.shape[2:]
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8  # the UNet needs multiples of 8
    for start in range(0, len(stack), 16):
        chunk = torch.nn.functional.pad(stack[start : start + 16], (0, pw - w, 0, ph - h))
        out = model(chunk).argmax(dim=1)[:, :h, :w].numpy().astype(np.uint8)  # (b, h, w)
        classes[wx, wy, start : start + len(out)] = np.moveaxis(out, 0, 2)
    return scheme.from_classes(classes), seg, spacing


def side_by_side(ours: pd.DataFrame, peer: pd.DataFrame, regions) -> tuple[str, list[dict]]:
    lines = ["| region | metric | fusionseg | peer (MONAI script) | paired p | n |", "|---|---|---|---|---|---|"]
    rows = []
    for r in regions:
        for m in METRICS:
            a, b = ours.loc[ours["region"] == r, m], peer.loc[peer["region"] == r, m]
            p = paired_p(ours, peer, m, r)
            digits = 3 if "dice" in m else 2
            ps = "–" if p is None else f"{p:.2g}"
            lines.append(f"| {r} | {m} | {mean_sd(a, digits)} | {mean_sd(b, digits)} | {ps} | {len(b)} |")
            rows.append({"region": r, "metric": m, "ours": float(a.mean()), "peer": float(b.mean()), "p_wilcoxon": p})
    return "\n".join(lines), rows


def train_and_test_peer(ds, splits, epochs: int, seed: int, work: Path) -> tuple[pd.DataFrame, float]:
    """The peer trained on each fold's training + validation cases and scored on its test
    cases: per-case rows (case, fold, region, metrics) and the wall time (s, summed over
    folds). Each finished fold is kept as ``work/fold_K.csv`` + ``.json`` (its seconds and
    settings), so an interrupted run goes on from the next fold; a fold kept with other
    settings is trained again."""
    work.mkdir(parents=True, exist_ok=True)
    frames, seconds = [], 0.0
    for fold in splits["folds"]:
        k = fold["fold"]
        done, info = work / f"fold_{k}.csv", work / f"fold_{k}.json"
        settings = {"epochs": epochs, "seed": seed, "train": fold["train"] + fold["val"], "test": fold["test"]}
        kept = json.loads(info.read_text()) if done.exists() and info.exists() else {}
        if kept.get("settings") == settings:
            frames.append(pd.read_csv(done))
            seconds += kept["seconds"]
            print(f"fold {k}: kept from {done}", flush=True)
            continue
        t0, rows = time.perf_counter(), []
        x, y = training_slices([ds.case(c) for c in settings["train"]], ds.scheme)
        model = train_peer(x, y, epochs, seed)
        for case_id in fold["test"]:
            pred, gt, spacing = predict_peer(model, ds.case(case_id), ds.scheme)
            region_rows, _ = evaluate_case(pred, gt, spacing, ds.scheme, metrics=list(METRICS), challenge="GLI")
            rows += [{"case": case_id, "fold": k, **r} for r in region_rows]
        fold_seconds = time.perf_counter() - t0
        pd.DataFrame(rows).to_csv(done.with_suffix(".tmp"), index=False)
        done.with_suffix(".tmp").replace(done)
        info.write_text(json.dumps({"settings": settings, "seconds": round(fold_seconds, 1)}))
        frames.append(pd.read_csv(done))
        seconds += fold_seconds
        print(f"fold {k}: {len(x)} training slices, {fold_seconds:.0f} s", flush=True)
    return pd.concat(frames, ignore_index=True), seconds


def read_peer_info(peer_csv: Path) -> dict | None:
    """The peer's epochs, threads and wall time for an earlier run's CSV: from the
    ``.peer.json`` that the training run wrote beside it, else from the benchmark's
    ``.json`` result (which repeats them); None when neither holds them."""
    keys = ("epochs", "threads", "peer_wall_seconds")
    for path in (peer_csv.with_suffix(".peer.json"), peer_csv.with_suffix(".json")):
        if path.exists():
            info = json.loads(path.read_text())
            if all(k in info for k in keys):
                return {k: info[k] for k in keys}
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "run", type=Path, help="a fusionseg run folder: its splits.json gives the folds, its metrics the other side"
    )
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default: the run config's data.root)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peer_monai_unet")
    ap.add_argument(
        "--peer-csv",
        type=Path,
        default=None,
        help="reuse the peer's per-case rows (and the wall time in the .json beside them) of an earlier run "
        "on the same folds instead of training it again; e.g. to set it beside another fusionseg run",
    )
    args = ap.parse_args(argv)
    import yaml

    config = yaml.safe_load((args.run / "config.yaml").read_text())
    data = args.data or Path(config["data"]["root"])
    if not data.is_dir():
        print(f"skipped: real data not found at {data} (pass --data)")
        return 0
    torch.set_num_threads(args.threads)
    ds = discover(data)
    splits = json.loads((args.run / "splits.json").read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.peer_csv is None:
        work = args.out.parent / f"{args.out.name}_folds"
        peer, peer_wall = train_and_test_peer(ds, splits, args.epochs, args.seed, work)
        peer.to_csv(args.out.with_suffix(".csv"), index=False)
        peer_info = {"epochs": args.epochs, "threads": args.threads, "peer_wall_seconds": round(peer_wall, 1)}
        args.out.with_suffix(".peer.json").write_text(json.dumps(peer_info, indent=1))
    else:
        peer = pd.read_csv(args.peer_csv)
        peer_info = read_peer_info(args.peer_csv)
        if peer_info is None:
            print(
                f"error: no {args.peer_csv.with_suffix('.peer.json')} or {args.peer_csv.with_suffix('.json')} "
                "with the peer's epochs, threads and wall time beside it; train the peer again"
            )
            return 2
        want = {c for f in splits["folds"] for c in f["test"]}
        if set(peer["case"]) != want:
            print(f"error: {args.peer_csv} holds other test cases than {args.run}/splits.json; train the peer again")
            return 2
    if not (args.run / "metrics_per_case.csv").exists():
        print(
            f"the peer is done ({args.out.with_suffix('.csv')}); {args.run} has no metrics yet: run again with "
            f"--peer-csv {args.out.with_suffix('.csv')} once it has finished"
        )
        return 0
    ours = pd.read_csv(args.run / "metrics_per_case.csv")
    ours_summary = json.loads((args.run / "summary.json").read_text())
    ours = ours[ours["case"].isin(peer["case"])]
    table, records = side_by_side(ours, peer, ds.scheme.region_names)
    ours_wall = ours_summary.get("fold_seconds_total") or ours_summary.get("wall_seconds")
    peer_wall = peer_info["peer_wall_seconds"]
    text = (
        f"# fusionseg vs a plain MONAI script on the folds of {args.run}\n\n{table}\n\n"
        f"Wall time: fusionseg {ours_wall / 60:.1f} min (all folds, from its summary.json), "
        f"peer {peer_wall / 60:.1f} min ({peer_info['epochs']} epochs, {peer_info['threads']} threads).\n"
    )
    args.out.with_suffix(".md").write_text(text)
    payload = {
        "benchmark": "peer_monai_unet",
        "run": str(args.run),
        "data": str(data),
        **peer_info,
        "rows": records,
        "ours_wall_seconds": ours_wall,
        "machine": environment_info(),
    }
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
