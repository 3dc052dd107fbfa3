"""Speed of fusionseg's BraTS 2023 metrics (and panoptica's, when it can be installed).

Measures, per case, the wall time of ``evaluate_case`` for the full set: 3 regions
(WT/TC/ET) x whole-image Dice + HD95, lesion-wise Dice + HD95, TP/FN/FP counts,
sensitivity / specificity (BraTS-GLI preset), on:

1. the 16 golden cases (../shared/data/metrics-golden/pred vs ../shared/data/brats18),
   skipped with a reason when absent; NIfTI loading is timed separately;
2. two synthetic 240x240x155 cases: "simple" (one tumour) and "fragmented"
   (~40 GT and ~80 predicted components), to show how time grows with lesion count.

panoptica (PyPI) runs in its own virtual environment (``--panoptica-venv``, default
``.venv-panoptica`` next to the repository's ``.venv``; create it with
``python -m venv .venv-panoptica && .venv-panoptica/bin/pip install panoptica``) on the
same synthetic cases and golden cases; it is skipped, with the reason recorded, when
that environment is missing or fails.

The compiled kernels (numba) are timed warm; their one-off cost is measured apart
(``jit``): the first case in a fresh process with an empty numba cache (compilation)
and with the cache filled (loading).

Usage:  python benchmarks/metrics_speed.py [--repeats 5] [--no-panoptica]
Writes benchmarks/results/metrics_speed.json (with machine and library versions) and
prints, per case that panoptica scored, how many times faster fusionseg is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "metrics_speed.json"
FULL_SET = ["dice", "hd95", "lesion_dice", "lesion_hd95", "tp", "fn", "fp", "sensitivity", "specificity"]
SHAPE = (240, 240, 155)


def _tumour(shape, centre, radius, out, rng=None):
    """Paint a BraTS-2017-convention tumour (ED 2 shell, ET 4 rim, NCR 1 core)."""
    lo = [max(int(c - radius - 1), 0) for c in centre]
    hi = [min(int(c + radius + 2), s) for c, s in zip(centre, shape)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.indices([b - a for a, b in zip(lo, hi)]).astype(np.float32)
    r = np.sqrt(sum((g + a - c) ** 2 for g, a, c in zip(grid, lo, centre)))
    block = out[sl]
    block[r <= radius] = 2
    block[r <= 0.7 * radius] = 4
    block[r <= 0.4 * radius] = 1


def synthetic_cases(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    simple_gt = np.zeros(SHAPE, np.uint8)
    _tumour(SHAPE, (120, 110, 80), 28, simple_gt)
    simple_pred = np.zeros(SHAPE, np.uint8)
    _tumour(SHAPE, (122, 111, 79), 26, simple_pred)
    _tumour(SHAPE, (160, 150, 95), 4, simple_pred)  # one false positive

    frag_gt = np.zeros(SHAPE, np.uint8)
    frag_pred = np.zeros(SHAPE, np.uint8)
    centres = []
    while len(centres) < 40:  # 40 separated GT lesions
        c = rng.uniform([40, 40, 30], [200, 200, 125])
        if all(np.linalg.norm(c - o) > 22 for o in centres):
            centres.append(c)
    for c in centres:
        radius = rng.uniform(3.5, 8.0)
        _tumour(SHAPE, c, radius, frag_gt)
        _tumour(SHAPE, c + rng.integers(-1, 2, 3), radius * rng.uniform(0.8, 1.1), frag_pred)
    n_fp = 0
    while n_fp < 40:  # 40 spurious predicted components
        c = rng.uniform([30, 30, 20], [210, 210, 135])
        if all(np.linalg.norm(c - o) > 14 for o in centres):
            _tumour(SHAPE, c, rng.uniform(2.0, 4.0), frag_pred)
            n_fp += 1
    return {"simple": (simple_pred, simple_gt), "fragmented": (frag_pred, frag_gt)}


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (lookup tables, imports)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_fusionseg(repeats: int) -> dict:
    import cc3d  # noqa: F401  (version below)
    import nibabel as nib

    from fusionseg.constants import BRATS2017
    from fusionseg.evaluation.evaluate import evaluate_case

    out: dict = {"metrics": FULL_SET, "challenge": "GLI"}
    synth = synthetic_cases()
    out["synthetic"] = {}
    for name, (pred, gt) in synth.items():
        rows, _ = evaluate_case(pred, gt, (1, 1, 1), BRATS2017, FULL_SET, "GLI")
        secs = _time(lambda: evaluate_case(pred, gt, (1, 1, 1), BRATS2017, FULL_SET, "GLI"), repeats)
        out["synthetic"][name] = {
            "seconds": secs,
            "components_gt_wt": int(
                __import__("cc3d").connected_components(BRATS2017.region_mask(gt, "WT"), connectivity=26).max()
            ),
            "components_pred_wt": int(
                __import__("cc3d").connected_components(BRATS2017.region_mask(pred, "WT"), connectivity=26).max()
            ),
            "rows": rows,
        }
    out["synthetic"]["fragmented_over_simple"] = (
        out["synthetic"]["fragmented"]["seconds"] / out["synthetic"]["simple"]["seconds"]
    )

    golden = DATA / "metrics-golden"
    if not (golden / "pred").is_dir() or not (DATA / "brats18").is_dir():
        out["golden"] = {"skipped": f"golden data not found under {DATA}"}
        return out
    per_case, load_times = {}, []
    for pred_path in sorted((golden / "pred").glob("*.nii.gz")):
        case = pred_path.name[: -len(".nii.gz")]
        t = time.perf_counter()
        pred = np.asarray(nib.load(str(pred_path)).dataobj)
        img = nib.load(str(DATA / "brats18" / case / f"{case}_seg.nii.gz"))
        gt = np.asarray(img.dataobj)
        load_times.append(time.perf_counter() - t)
        spacing = img.header.get_zooms()[:3]
        per_case[case] = _time(lambda: evaluate_case(pred, gt, spacing, BRATS2017, FULL_SET, "GLI"), repeats)
    legacy = _legacy_seconds(golden / "expected_legacy.csv")
    out["golden"] = {
        "n_cases": len(per_case),
        "median_seconds_per_case": statistics.median(per_case.values()),
        "max_seconds_per_case": max(per_case.values()),
        "median_seconds_nifti_load_pred_and_gt": statistics.median(load_times),
        "seconds_per_case": per_case,
        "legacy_official_median_seconds_per_case": legacy,
    }
    return out


_JIT_SCRIPT = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from metrics_speed import synthetic_cases, FULL_SET
from fusionseg.constants import BRATS2017
from fusionseg.evaluation.evaluate import evaluate_case
pred, gt = synthetic_cases()["simple"]
t = time.perf_counter(); evaluate_case(pred, gt, (1, 1, 1), BRATS2017, FULL_SET, "GLI")
first = time.perf_counter() - t
t = time.perf_counter(); evaluate_case(pred, gt, (1, 1, 1), BRATS2017, FULL_SET, "GLI")
print(first, time.perf_counter() - t)
"""


def bench_jit() -> dict:
    """First-case seconds in fresh processes: empty numba cache (compiles), then filled."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("first_case_seconds_empty_cache", "first_case_seconds_filled_cache"):
            proc = subprocess.run(
                [sys.executable, "-c", _JIT_SCRIPT, str(ROOT / "benchmarks")],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
            )
            if proc.returncode != 0:
                return {"skipped": proc.stderr.strip()[-400:]}
            first, second = (float(x) for x in proc.stdout.split())
            out[label] = first
        out["second_case_seconds"] = second
    return out


def _legacy_seconds(csv: Path) -> float | None:
    try:
        import pandas as pd

        df = pd.read_csv(csv)
        df = df[df["challenge"] == "BraTS-GLI"].drop_duplicates("case")
        return float(df["seconds_all_regions"].median())
    except Exception:
        return None


_PANOPTICA_SCRIPT = r"""
import json, statistics, sys, time
import numpy as np
from panoptica import (ConnectedComponentsInstanceApproximator, InputType, Metric, NaiveThresholdMatching,
                           Panoptica_Evaluator)
from panoptica.utils import SegmentationClassGroups, LabelMergeGroup
data = np.load(sys.argv[1])
groups = SegmentationClassGroups({"ET": LabelMergeGroup([4], False), "TC": LabelMergeGroup([1, 4], False),
                                  "WT": LabelMergeGroup([1, 2, 4], False)})
ev = Panoptica_Evaluator(expected_input=InputType.SEMANTIC,
                         instance_approximator=ConnectedComponentsInstanceApproximator(),
                         instance_matcher=NaiveThresholdMatching(), segmentation_class_groups=groups,
                         instance_metrics=[Metric.DSC, Metric.HD95], global_metrics=[Metric.DSC, Metric.HD95])
res, errors = {}, {}
for key in [k[:-5] for k in data.files if k.endswith("_pred")]:
    pred, gt = data[key + "_pred"].astype(np.uint8), data[key + "_gt"].astype(np.uint8)
    try:
        ev.evaluate(pred, gt, verbose=False)
    except Exception as exc:  # e.g. HD95 with zero TP instances: no edge-case handling
        errors[key] = f"{type(exc).__name__}: {exc}"[:300]
        continue
    ts = []
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter(); ev.evaluate(pred, gt, verbose=False); ts.append(time.perf_counter() - t)
    res[key] = statistics.median(ts)
from importlib.metadata import version
print(json.dumps({"seconds": res, "failed": errors, "version": version("panoptica")}))
"""


def bench_panoptica(venv: Path, repeats: int, max_golden: int | None = None) -> dict:
    python = venv / "bin" / "python"
    if not python.exists():
        return {
            "skipped": f"no panoptica environment at {venv}; create it with "
            f"'python -m venv {venv} && {venv}/bin/pip install panoptica'"
        }
    import nibabel as nib

    arrays = {}
    for name, (pred, gt) in synthetic_cases().items():
        arrays[f"{name}_pred"], arrays[f"{name}_gt"] = pred, gt
    golden = DATA / "metrics-golden" / "pred"
    if golden.is_dir():
        for pred_path in sorted(golden.glob("*.nii.gz"))[:max_golden]:
            case = pred_path.name[: -len(".nii.gz")]
            arrays[f"{case}_pred"] = np.asarray(nib.load(str(pred_path)).dataobj)
            arrays[f"{case}_gt"] = np.asarray(nib.load(str(DATA / "brats18" / case / f"{case}_seg.nii.gz")).dataobj)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "cases.npz"
        np.savez(npz, **arrays)
        script = Path(tmp) / "bench_panoptica.py"
        script.write_text(_PANOPTICA_SCRIPT)
        try:
            proc = subprocess.run(
                [str(python), str(script), str(npz), str(repeats)], capture_output=True, text=True, timeout=1800
            )
        except subprocess.TimeoutExpired:
            return {"skipped": "panoptica run exceeded 30 minutes"}
    if proc.returncode != 0:
        return {"skipped": "panoptica failed: " + proc.stderr.strip()[-800:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["note"] = (
        "panoptica protocol (connected components + naive threshold matching), not BraTS "
        "2023 lesion-wise, asked for the same quantities as ours: Dice and HD95 per "
        "matched instance and globally, plus its TP/FP/FN counts; timed per case, 3 regions; "
        + ("every golden case" if max_golden is None else f"golden cases: the first {max_golden}")
    )
    return result


def _speedups(ours: dict, panoptica: dict) -> dict:
    """panoptica seconds / fusionseg seconds for every case both timed."""
    if "seconds" not in panoptica:
        return {}
    mine = {k: v["seconds"] for k, v in ours.get("synthetic", {}).items() if isinstance(v, dict)}
    mine.update(ours.get("golden", {}).get("seconds_per_case", {}))
    per_case = {k: panoptica["seconds"][k] / mine[k] for k in panoptica["seconds"] if k in mine}
    if not per_case:
        return {}
    return {"per_case": per_case, "min": min(per_case.values()), "median": statistics.median(per_case.values())}


def machine_info() -> dict:
    import cc3d  # noqa: F401
    import scipy
    import skimage

    def version(mod: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(mod)
        except Exception:
            return "unknown"

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "connected-components-3d": version("connected-components-3d"),
        "numba": version("numba"),
        "fusionseg": version("fusionseg"),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median taken)")
    parser.add_argument(
        "--panoptica-golden",
        type=int,
        default=None,
        help="score only the first N golden cases with panoptica (default: all)",
    )
    parser.add_argument("--no-panoptica", action="store_true", help="skip panoptica")
    parser.add_argument("--panoptica-venv", type=Path, default=ROOT / ".venv-panoptica")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    result = {"machine": machine_info(), "fusionseg": bench_fusionseg(args.repeats), "jit": bench_jit()}
    result["panoptica"] = (
        {"skipped": "--no-panoptica"}
        if args.no_panoptica
        else bench_panoptica(args.panoptica_venv, args.repeats, args.panoptica_golden)
    )
    result["speedup_over_panoptica"] = _speedups(result["fusionseg"], result["panoptica"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=float) + "\n")
    fs = result["fusionseg"]
    print(
        f"golden: median {fs['golden'].get('median_seconds_per_case', 'n/a')} s/case "
        f"(max {fs['golden'].get('max_seconds_per_case', 'n/a')})"
    )
    print(
        f"synthetic: simple {fs['synthetic']['simple']['seconds']:.3f} s, fragmented "
        f"{fs['synthetic']['fragmented']['seconds']:.3f} s "
        f"(x{fs['synthetic']['fragmented_over_simple']:.2f})"
    )
    print("panoptica:", json.dumps({k: v for k, v in result["panoptica"].items() if k != "seconds"})[:400])
    print("jit:", json.dumps(result["jit"]))
    for case, x in result["speedup_over_panoptica"].get("per_case", {}).items():
        print(f"  {case:24s} panoptica / fusionseg = {x:.1f}")
    if "min" in result["speedup_over_panoptica"]:
        print(f"speed-up over panoptica: min {result['speedup_over_panoptica']['min']:.1f}x")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
