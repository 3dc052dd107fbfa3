"""Whole-case inference time: fusionseg's inferers against a bare MONAI call.

For each setting, one model (seeded random weights: time and agreement do not depend
on training) predicts real cases twice:
- ours: the inferer that ``fusionseg train`` and ``fusionseg predict`` call
  (:func:`fusionseg.inference.inferers.get_inferer`): channel selection from the
  preprocessing cache, windows, class probabilities, arg-max, label values of the
  scheme, un-cropping onto the original grid;
- bare: ``monai.inferers.sliding_window_inference`` on the same preprocessed tensor
  with the same model, window, overlap, blending and batch, then arg-max (un-cropped
  outside the timed window, to compare the label maps).
Test-time mirroring is off in both (the bare call has none; mirroring multiplies
either path's time by the number of flips, 4 in 2-D and 8 in 3-D).

Settings:
- ``2d``: configs/baseline_brats18_cpu.yaml on BraTS cases, slice-wise (the bare call
  takes the axial slices as a batch, one window per slice, constant blending);
- ``3d-petct``: configs/petct_baselines.yaml (cpu protocol) on STS PET/CT cases;
- ``3d-brats``: configs/brats_3d.yaml (cpu-smoke protocol network and window) on BraTS
  cases, four modalities.
Each timing is the best of ``--repeats`` (the least disturbed), the two paths
alternating which runs first; the label maps are compared voxel for voxel. Results with machine info go to
benchmarks/results/inference_speed.json.

    python benchmarks/inference_speed.py [--settings 2d,3d-petct,3d-brats] [--cases 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusionseg.data.cases import discover
from fusionseg.data.preprocess import PreprocessCache
from fusionseg.data.sampling import round_up
from fusionseg.experiments.study import load_study
from fusionseg.experiments.environment import environment_info
from fusionseg.config import load_config
from fusionseg.inference.inferers import InferOptions, get_inferer
from fusionseg.strategies import build_strategy

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETTINGS = {
    "2d": (ROOT / "configs" / "baseline_brats18_cpu.yaml", None, DATA / "brats18"),
    "3d-petct": (ROOT / "configs" / "petct_baselines.yaml", "cpu", DATA / "sts-petct"),
    "3d-brats": (ROOT / "configs" / "brats_3d.yaml", "cpu-smoke", DATA / "brats18"),
}


def setting_config(name: str, data: Path):
    path, protocol, _ = SETTINGS[name]
    if protocol is None:
        return load_config(path, [f"data.root={data}"])
    return load_study(path, protocol, [f"data.root={data}"]).configs[0]


def _softmax(model):
    return lambda x: torch.softmax(model(x).float(), dim=1)


@torch.no_grad()
def bare_2d(model, case, modalities, divisor, batch_size) -> np.ndarray:
    """Class map (X, Y, Z) of the cropped volume: axial slices as one batch through
    ``sliding_window_inference`` with one window per (padded) slice."""
    from monai.inferers import sliding_window_inference

    image = case.select(list(modalities))
    stack = torch.from_numpy(np.array(np.moveaxis(image, 1 + case.axial_axis, 0), dtype=np.float32))  # (Z, C, H, W)
    roi = tuple(round_up(s, divisor) for s in stack.shape[2:])
    probs = sliding_window_inference(stack, roi, batch_size, _softmax(model), overlap=0.0, mode="constant")
    classes = torch.as_tensor(probs).argmax(dim=1).numpy()  # (Z, H, W)
    return np.moveaxis(classes, 0, case.axial_axis)


@torch.no_grad()
def bare_3d(model, case, modalities, options: InferOptions) -> np.ndarray:
    """Class map (X, Y, Z) of the cropped volume from one ``sliding_window_inference``."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(case.select(list(modalities)), dtype=np.float32))[None]
    probs = sliding_window_inference(
        x, options.roi_size, options.sw_batch_size, _softmax(model), overlap=options.overlap, mode=options.blend
    )
    return torch.as_tensor(probs)[0].argmax(dim=0).numpy()


def interleaved_times(ours, bare, repeats: int):
    """Wall times of ``repeats`` calls of each of two functions, alternating which goes
    first (so neither profits from running second), after one untimed warm-up call of
    each (first-call allocations and MONAI imports are not the path's cost). Returns
    (ours times, bare times, ours output, bare output)."""
    out_ours, out_bare = ours(), bare()
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    for r in range(repeats):
        for name, fn in (("ours", ours), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("ours", ours)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times["ours"], times["bare"], out_ours, out_bare


def run_setting(name: str, n_cases: int, repeats: int, cache_dir: Path) -> dict:
    data = SETTINGS[name][2]
    if not data.is_dir():
        return {"setting": name, "skipped": f"real data not found at {data}"}
    cfg = setting_config(name, data)
    ds = discover(data)
    cache = PreprocessCache(cfg.preprocess, cache_dir)
    torch.manual_seed(0)
    model = build_strategy(cfg, cfg.data.modalities, ds.scheme).eval()
    divisor = model.required_divisor
    options = InferOptions.from_config(cfg, mirror=False)  # the bare call has no test-time mirroring
    infer = get_inferer(cfg.spatial_dims)
    rows = []
    for case in list(ds.labelled)[:n_cases]:
        prepared = cache.load(case, ds.scheme)
        ours_fn = lambda: infer([model], prepared, cfg.data.modalities, ds.scheme, divisor, options)  # noqa: E731
        if cfg.spatial_dims == 2:
            bare_fn = lambda: bare_2d(model, prepared, cfg.data.modalities, divisor, options.batch_size)  # noqa: E731
        else:
            bare_fn = lambda: bare_3d(model, prepared, cfg.data.modalities, options)  # noqa: E731
        ours_all, bare_all, ours, classes = interleaved_times(ours_fn, bare_fn, repeats)
        ours_s, bare_s = min(ours_all), min(bare_all)
        bare = prepared.uncrop(ds.scheme.from_classes(classes.astype(np.uint8), dtype=ours.dtype))
        rows.append(
            {
                "case": case.case_id,
                "cropped_shape": list(prepared.image.shape[1:]),
                "ours_seconds": round(ours_s, 4),
                "bare_seconds": round(bare_s, 4),
                "ours_all": [round(t, 4) for t in ours_all],
                "bare_all": [round(t, 4) for t in bare_all],
                "ratio": round(ours_s / bare_s, 3),
                "voxels_differing": int((ours != bare).sum()),
                "identical": bool(np.array_equal(ours, bare)),
            }
        )
        print(f"{name} {case.case_id}: ours {ours_s:.3f} s, bare {bare_s:.3f} s, identical {rows[-1]['identical']}")
    ours_total, bare_total = sum(r["ours_seconds"] for r in rows), sum(r["bare_seconds"] for r in rows)
    return {
        "setting": name,
        "config": str(SETTINGS[name][0].relative_to(ROOT)),
        "protocol": SETTINGS[name][1],
        "data": str(data),
        "spatial_dims": cfg.spatial_dims,
        "model": cfg.model.model_dump(),
        "modalities": list(cfg.data.modalities),
        "options": {k: v for k, v in vars(options).items()},
        "threads": torch.get_num_threads(),
        "cases": rows,
        "ratio_total": round(ours_total / bare_total, 3),
        "target_ratio_max": 1.1,
        "all_identical": all(r["identical"] for r in rows),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="2d,3d-petct,3d-brats", help=f"comma-separated, of {sorted(SETTINGS)}")
    ap.add_argument("--cases", type=int, default=2, help="cases per setting")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inference_speed.json")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        ap.error(f"unknown setting(s) {unknown}; choose from {sorted(SETTINGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fusionseg-bench-"))
    try:
        results = [run_setting(n, args.cases, args.repeats, tmp / n) for n in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    payload = {"benchmark": "inference_speed", "settings": results, "machine": environment_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, default=str))
    print(json.dumps([{k: r.get(k) for k in ("setting", "ratio_total", "all_identical", "skipped")} for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
