"""Training throughput of the full pipeline against a bare loop.

Measures, on real cases (``--setting``):
- cold-cache time: preprocessing N cases from NIfTI into an empty cache;
- warm-cache time: reading the same cases back from the cache;
- training samples/s of the full pipeline: `fusionseg.training.loop.fit` (Fabric,
  DataLoader over the memory-mapped cache, the setting's sampler, progress logging,
  checkpointing at the end of the epoch excluded from the timed window);
- training samples/s of a bare loop: the same model, loss, optimiser and batch size
  over batches pre-loaded as tensors (no Fabric, no DataLoader, no sampling).
Settings: ``2d`` (configs/baseline_brats18_cpu.yaml on ../shared/data/brats18, axial
slices), ``3d-petct`` (configs/petct_baselines.yaml, cpu protocol, 3-D patches of the
STS PET/CT cases), ``3d-brats`` (configs/brats_3d.yaml, cpu-smoke network and 64^3
patches of four-modality BraTS cases).
Both loops run the same number of optimiser steps; each is repeated and the best
(least disturbed) repetition is kept. Results are written with machine info to
benchmarks/results/train_throughput.json (2d) or train_throughput_<setting>.json.

    python benchmarks/train_throughput.py [--setting 2d] [--cases 4] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from fusionseg.config import SamplingConfig, TrainConfig, load_config
from fusionseg.data.cases import discover
from fusionseg.data.preprocess import PreprocessCache
from fusionseg.data.samplers.patches3d import PatchDataset, WholeCaseDataset, common_volume_size
from fusionseg.data.sampling import SliceDataset, common_slice_size
from fusionseg.experiments.study import load_study
from fusionseg.experiments.environment import environment_info
from fusionseg.strategies import build_strategy
from fusionseg.training.loop import fit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
#: setting -> (config, study protocol or None for an experiment YAML, default data)
SETTINGS = {
    "2d": (ROOT / "configs" / "baseline_brats18_cpu.yaml", None, DATA / "brats18"),
    "3d-petct": (ROOT / "configs" / "petct_baselines.yaml", "cpu", DATA / "sts-petct"),
    "3d-brats": (ROOT / "configs" / "brats_3d.yaml", "cpu-smoke", DATA / "brats18"),
}


def setting_config(setting: str, data: Path, overrides: list[str]):
    path, protocol, _ = SETTINGS[setting]
    items = [f"data.root={data}", *overrides]
    return load_config(path, items) if protocol is None else load_study(path, protocol, items).configs[0]


def datasets(cfg, prepared, divisor: int, samples: int):
    """The setting's training dataset and a one-case validation set; 3-D: enough
    patches per case for ``samples`` patches per epoch (2-D: every tumour slice)."""
    if cfg.spatial_dims == 3:
        per_case = max(cfg.sampling.patches_per_case or 1, -(-samples // len(prepared)))
        sampling = cfg.sampling.model_copy(update={"patches_per_case": per_case})
        train = PatchDataset(prepared, cfg.data.modalities, sampling, seed=0)
        return train, WholeCaseDataset(prepared[:1], cfg.data.modalities, common_volume_size(prepared[:1], divisor))
    size = common_slice_size(prepared, 16)
    train = SliceDataset(prepared, cfg.data.modalities, cfg.sampling, size, seed=0)
    val = SliceDataset(
        prepared[:1], cfg.data.modalities, SamplingConfig(mode="central", central_k=2), size, train=False
    )
    return train, val


def build(cfg, scheme, seed=0):
    torch.manual_seed(seed)
    return build_strategy(cfg, cfg.data.modalities, scheme)


def bare_loop(strategy, batches, lr) -> float:
    """Samples/s of a plain loop over pre-loaded batches."""
    opt = torch.optim.Adam(strategy.parameters(), lr=lr)
    strategy.train()
    start = time.perf_counter()
    n = 0
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        loss, _ = strategy.training_loss(batch)
        loss.backward()
        opt.step()
        n += batch["image"].shape[0]
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="2d")
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: the setting's)")
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps per timed loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="config override as for fusionseg train, e.g. --set train.num_workers=1",
    )
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/train_throughput[_SETTING].json")
    args = ap.parse_args(argv)
    data = args.data or SETTINGS[args.setting][2]
    suffix = "" if args.setting == "2d" else f"_{args.setting}"
    out = args.out or ROOT / "benchmarks" / "results" / f"train_throughput{suffix}.json"
    if not data.is_dir():
        print(f"skipped: real data not found at {data} (pass --data)")
        return 0
    cfg = setting_config(args.setting, data, args.overrides)
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    ds = discover(data)
    cases = list(ds.labelled)[: args.cases]
    tmp = Path(tempfile.mkdtemp(prefix="fusionseg-bench-"))
    try:
        cache = PreprocessCache(cfg.preprocess, tmp / "cache")
        t0 = time.perf_counter()
        prepared = [cache.load(c, ds.scheme) for c in cases]
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepared = [cache.load(c, ds.scheme) for c in cases]
        warm = time.perf_counter() - t0
        train, val = datasets(cfg, prepared, build(cfg, ds.scheme).required_divisor, args.steps * cfg.train.batch_size)
        bs = cfg.train.batch_size
        # the bare loop sees the same kind of samples, materialised up front as tensors
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(len(train), generator=g).tolist()
        items = [train[i % len(train)] for i in (order * (1 + args.steps * bs // len(order)))[: args.steps * bs]]
        batches = [
            {
                "image": torch.stack([it["image"] for it in items[i : i + bs]]),
                "label": torch.stack([it["label"] for it in items[i : i + bs]]),
            }
            for i in range(0, len(items), bs)
        ]
        full, bare = [], []
        unit = "patches" if cfg.spatial_dims == 3 else "slices"
        for r in range(args.repeats):
            tcfg = TrainConfig(**{**cfg.train.model_dump(), "epochs": 1, "max_steps_per_epoch": args.steps})
            result = fit(
                build(cfg, ds.scheme, r), train, val, tcfg, tmp / f"fit{r}", ds.scheme, progress=False, resume=False
            )
            full.append(result.history[0]["train_samples_per_s"])
            bare.append(bare_loop(build(cfg, ds.scheme, r), batches, cfg.train.lr))
            print(f"repeat {r}: pipeline {full[-1]:.2f} {unit}/s, bare {bare[-1]:.2f} {unit}/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best_full, best_bare = max(full), max(bare)
    result = {
        "benchmark": "train_throughput",
        "setting": args.setting,
        "unit": unit,
        "data": str(data),
        "cases": [c.case_id for c in cases],
        "config": str(SETTINGS[args.setting][0].relative_to(ROOT)),
        "protocol": SETTINGS[args.setting][1],
        "overrides": args.overrides,
        "model": cfg.model.model_dump(),
        "num_workers": cfg.train.num_workers,
        "threads": cfg.train.threads,
        "batch_size": cfg.train.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "sampling": cfg.sampling.model_dump(mode="json"),
        "cold_cache_seconds": round(cold, 2),
        "cold_cache_seconds_per_case": round(cold / len(cases), 2),
        "warm_cache_seconds": round(warm, 4),
        "pipeline_samples_per_s": [round(x, 3) for x in full],
        "bare_samples_per_s": [round(x, 3) for x in bare],
        "ratio_best": round(best_full / best_bare, 3),
        "target_ratio": 0.9,
        "machine": environment_info(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
