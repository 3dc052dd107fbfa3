"""``fusionseg demo``: phantoms -> data check -> train -> predict -> evaluate, small
enough for a few minutes on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

from fusionseg.config import validate_config
from fusionseg.data.phantom import write_phantom_dataset
from fusionseg.experiments.runner import RunResult, run_experiment


def demo_config(data_root: Path, output_dir: Path, epochs: int) -> dict:
    """The demo's experiment config (a raw mapping, validated by the caller)."""
    return {
        "name": "demo",
        "data": {"root": str(data_root), "cache_dir": str(output_dir / "cache")},
        "sampling": {"mode": "tumour"},
        "model": {"name": "unet2stage", "kwargs": {"channels": [16, 32], "bottleneck": 64, "norm": "batch"}},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "patience": 3, "threads": 2},
        "split": {"kind": "holdout", "test_fraction": 0.3, "val_fraction": 0.2},
        "evaluation": {"overlays": 2},
        "output_dir": str(output_dir / "runs"),
    }


def run_demo(
    output_dir: str | Path, n_cases: int = 10, epochs: int = 6, progress: bool = True, seed: int = 0
) -> RunResult:
    """Write ``n_cases`` phantoms under ``output_dir/data`` and run the baseline."""
    output_dir = Path(output_dir)
    data_root = output_dir / "data"
    if not data_root.exists():
        write_phantom_dataset(data_root, n_cases=n_cases, layout="brats2018", seed=seed)
    cfg = validate_config(demo_config(data_root, output_dir, epochs), source="demo")
    return run_experiment(cfg, progress=progress)
