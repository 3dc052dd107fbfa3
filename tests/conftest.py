"""Shared fixtures: small synthetic phantom datasets written once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fusionseg.data.phantom import write_phantom_dataset

#: Phantom grid used by the tests: small, so the suite stays fast.
SHAPE = (48, 48, 32)

#: Real data for integration tests (absent on most machines).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory):
    """Factory: ``phantom_dataset(layout, n_cases=2, n_test=0)`` -> folder, written
    once per session per argument set. Treat the result as read-only."""
    cache: dict[tuple, Path] = {}

    def make(layout: str, n_cases: int = 2, n_test: int = 0) -> Path:
        key = (layout, n_cases, n_test)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{layout}_{n_cases}_{n_test}")
            cache[key] = write_phantom_dataset(out / "data", n_cases, layout, shape=SHAPE, seed=7, n_test=n_test)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def brats18_phantom(phantom_dataset) -> Path:
    """Four phantom cases in BraTS 2018 layout (read-only)."""
    return phantom_dataset("brats2018", n_cases=4)


@pytest.fixture
def brats18_copy(brats18_phantom, tmp_path) -> Path:
    """A writable copy of :func:`brats18_phantom` for tests that damage files."""
    return Path(shutil.copytree(brats18_phantom, tmp_path / "brats18"))


def rewrite_nifti(path: Path, edit, dtype=None, affine=None) -> None:
    """Replace ``path`` by ``edit(data)`` keeping its header (optionally a new dtype
    or affine)."""
    img = nib.load(path)
    data = edit(np.asanyarray(img.dataobj).copy())
    header = img.header.copy()
    if dtype is not None:
        header.set_data_dtype(dtype)
        data = data.astype(dtype)
    new = nib.Nifti1Image(data, img.affine if affine is None else affine, header)
    if affine is not None:
        new.set_qform(affine, code=1)
        new.set_sform(affine, code=1)
    nib.save(new, path)


def tiny_config(name: str, data: Path, tmp_path: Path, output: str = "runs", **sections) -> dict:
    """A seconds-long experiment config on phantom ``data``: a 4-8 channel 2-stage U-Net,
    1 epoch of 2 steps, fold 0 of 2; ``sections`` replace whole config sections."""
    cfg = {
        "name": name,
        "data": {"root": str(data), "cache_dir": str(tmp_path / "cache")},
        "model": {"kwargs": {"channels": [4, 8], "bottleneck": 8, "norm": "batch"}},
        "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2},
        "split": {"kind": "kfold", "folds": 2, "run_folds": [0]},
        "output_dir": str(tmp_path / output),
    }
    cfg.update(sections)
    return cfg


def train_via_cli(cfg: dict, folder: Path):
    """Write ``cfg`` as ``<folder>/<name>.yaml`` and run ``fusionseg train`` on it.
    Returns (the CliRunner result, the run folder)."""
    import yaml
    from typer.testing import CliRunner

    from fusionseg.cli import app

    path = Path(folder) / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(path), "--no-progress"])
    return result, Path(cfg["output_dir"]) / cfg["name"]
