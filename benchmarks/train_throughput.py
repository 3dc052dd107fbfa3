"""Training throughput of the full pipeline against a bare loop.

Measures, on real BraTS cases (../shared/data/brats18 by default):
- cold-cache time: preprocessing N cases from NIfTI into an empty cache;
- warm-cache time: reading the same cases back from the cache;
- training slices/s of the full pipeline: `fusionseg.training.loop.fit` (Fabric,
  DataLoader over the memory-mapped cache, SliceDataset sampling, progress logging,
  checkpointing at the end of the epoch excluded from the timed window);
- training slices/s of a bare loop: the same model, loss, optimiser and batch size
  over batches pre-loaded as tensors (no Fabric, no DataLoader, no sampling).
Both loops run the same number of optimiser steps; each is repeated and the best
(least disturbed) repetition is kept. Results are written with machine info to
benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py [--data DIR] [--cases 4] [--steps 40]
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
from fusionseg.data.sampling import SliceDataset, common_slice_size
from fusionseg.experiments.environment import environment_info
from fusionseg.strategies import build_strategy
from fusionseg.training.loop import fit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "brats18"
CONFIG = ROOT / "configs" / "baseline_brats18_cpu.yaml"


def build(cfg, scheme, seed=0):
    torch.manual_seed(seed)
    return build_strategy(cfg, cfg.data.modalities, scheme)


def bare_loop(strategy, batches, lr) -> float:
    """Slices/s of a plain loop over pre-loaded batches."""
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
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
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
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: real data not found at {args.data} (pass --data)")
        return 0
    cfg = load_config(CONFIG, [f"data.root={args.data}", *args.overrides])
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    ds = discover(args.data)
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
        size = common_slice_size(prepared, 16)
        train = SliceDataset(prepared, cfg.data.modalities, cfg.sampling, size, seed=0)
        val = SliceDataset(
            prepared[:1], cfg.data.modalities, SamplingConfig(mode="central", central_k=2), size, train=False
        )
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
        for r in range(args.repeats):
            tcfg = TrainConfig(**{**cfg.train.model_dump(), "epochs": 1, "max_steps_per_epoch": args.steps})
            result = fit(
                build(cfg, ds.scheme, r), train, val, tcfg, tmp / f"fit{r}", ds.scheme, progress=False, resume=False
            )
            full.append(result.history[0]["train_samples_per_s"])
            bare.append(bare_loop(build(cfg, ds.scheme, r), batches, cfg.train.lr))
            print(f"repeat {r}: pipeline {full[-1]:.2f} slices/s, bare {bare[-1]:.2f} slices/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best_full, best_bare = max(full), max(bare)
    result = {
        "benchmark": "train_throughput",
        "data": str(args.data),
        "cases": [c.case_id for c in cases],
        "config": str(CONFIG.relative_to(ROOT)),
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
        "pipeline_slices_per_s": [round(x, 3) for x in full],
        "bare_slices_per_s": [round(x, 3) for x in bare],
        "ratio_best": round(best_full / best_bare, 3),
        "target_ratio": 0.9,
        "machine": environment_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
