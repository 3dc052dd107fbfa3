"""Integration on real BraTS 2018 cases from ../shared/data/brats18 (skipped when the
folder is absent): train a tiny model a few steps on 2 cases and predict one whole
case, then check geometry and labels of the written NIfTI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import train_via_cli

BRATS18 = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats18"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not BRATS18.is_dir(), reason=f"real BraTS 2018 cases not found at {BRATS18}"),
]


def test_train_on_two_real_cases_and_predict_a_whole_case(tmp_path):
    cases = sorted(p.name for p in BRATS18.iterdir() if p.is_dir())[:4]
    cfg = {
        "name": "real_tiny",
        "data": {"root": str(BRATS18), "cases": cases, "cache_dir": str(tmp_path / "cache")},
        "sampling": {"mode": "tumour", "patch_size": [96, 96]},
        "model": {"kwargs": {"channels": [8, 16], "bottleneck": 16, "norm": "batch"}},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 3},
        "split": {"kind": "holdout", "test_fraction": 0.25, "val_fraction": 0.25},
        "evaluation": {"overlays": 0},
        "output_dir": str(tmp_path / "runs"),
    }
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    preds = list((run / "predictions").glob("*.nii.gz"))
    assert len(preds) == 1  # one whole test case (2 cases trained, 1 validated)
    case = preds[0].name.replace(".nii.gz", "")
    ref = nib.load(BRATS18 / case / f"{case}_t1.nii.gz")
    got = nib.load(preds[0])
    assert got.shape == ref.shape == (240, 240, 155)
    assert np.array_equal(got.affine, ref.affine)
    assert set(np.unique(np.asanyarray(got.dataobj))) <= {0, 1, 2, 4}


def _burn(stop):
    """Busy loop (another job on the machine) until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1000003


def test_two_threads_give_the_same_bytes_whatever_the_load(tmp_path):
    """The same command at train.threads 2 twice, the second time beside two busy
    processes: byte-identical metrics files (issue: results must not depend on the
    machine's load)."""
    import multiprocessing as mp

    cases = sorted(p.name for p in BRATS18.iterdir() if p.is_dir())[:4]

    def run(name):
        cfg = {
            "name": name,
            "data": {"root": str(BRATS18), "cases": cases, "cache_dir": str(tmp_path / "cache")},
            "sampling": {"mode": "tumour", "patch_size": [96, 96]},
            "model": {"kwargs": {"channels": [8, 16], "bottleneck": 16, "norm": "batch"}},
            "train": {"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 3, "threads": 2},
            "split": {"kind": "holdout", "test_fraction": 0.25, "val_fraction": 0.25},
            "evaluation": {"overlays": 0},
            "output_dir": str(tmp_path / name),
        }
        result, folder = train_via_cli(cfg, tmp_path)
        assert result.exit_code == 0, result.output
        return folder

    quiet = run("quiet")
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(2)]
    for p in burners:
        p.start()
    try:
        loaded = run("loaded")
    finally:
        stop.set()
        for p in burners:
            p.join(timeout=10)
    for name in ("metrics_per_case.csv", "metrics_per_lesion.csv"):
        assert (quiet / name).read_bytes() == (loaded / name).read_bytes(), name
    train_log = [(f / "fold_0" / "train_log.csv").read_text().splitlines() for f in (quiet, loaded)]
    strip = [[",".join(line.split(",")[:-2]) for line in log] for log in train_log]  # timing columns differ
    assert strip[0] == strip[1]
