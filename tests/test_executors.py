"""Executors (experiments/executors.py): the local and the Ray executor run the same fold
jobs to the same bytes when each job has the same CPUs (torch threads)."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

import pytest
import yaml

from fusionseg.errors import ConfigError
from fusionseg.experiments.compare import run_comparison
from fusionseg.experiments.study import load_study
from fusionseg.experiments.executors import LocalExecutor, RayExecutor, build_executor, with_threads
from fusionseg.experiments.jobs import FoldJob


def tiny_study(data, tmp_path) -> dict:
    return {
        "study": "tiny",
        "reference": "A",
        "base": {
            "data": {"root": str(data), "modalities": ["t1ce", "flair"], "cache_dir": str(tmp_path / "cache")},
            "model": {"kwargs": {"channels": [4, 8], "bottleneck": 8, "norm": "batch"}},
            "train": {"epochs": 2, "batch_size": 8, "max_steps_per_epoch": 1},
            "split": {"kind": "kfold", "folds": 2, "val_fraction": 0.25},
            "evaluation": {"overlays": 0},
        },
        "runs": [
            {"name": "A", "strategy": "early"},
            {
                "name": "B",
                "strategy": "decoupled",
                "fusion": {
                    "perceptual_features": "random",
                    "epochs": 1,
                    "model": {"name": "lrrnet", "kwargs": {"n": 4, "blocks": 1}},
                },
            },
        ],
        "tables": [{"name": "table1", "metrics": ["dice", "lesion_dice"], "regions": ["ET", "TC", "WT"]}],
    }


def test_cpus_set_the_jobs_torch_threads_and_nothing_else():
    job = FoldJob({"name": "x", "train": {"threads": 2, "epochs": 3}}, fold=1, cache_key="k")
    assert with_threads(job, None) is job
    one = with_threads(job, 1)
    assert one.config["train"] == {"threads": 1, "epochs": 3} and job.config["train"]["threads"] == 2
    assert (one.fold, one.cache_key, one.config["name"]) == (1, "k", "x")


def test_unknown_executor_lists_the_choices():
    assert isinstance(build_executor("local", cpus=2), LocalExecutor)
    assert isinstance(build_executor("ray", cpus=2), RayExecutor)
    with pytest.raises(ConfigError, match="choose local or ray"):
        build_executor("slurm")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install 'fusionseg[ray]')")
def test_ray_executor_gives_the_local_executors_bytes(phantom_dataset, tmp_path):
    import ray

    data = phantom_dataset("brats2018", n_cases=4)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study(data, tmp_path)))
    local = run_comparison(load_study(path), tmp_path / "local", progress=False, executor=LocalExecutor(cpus=1))
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        remote = run_comparison(load_study(path), tmp_path / "ray", progress=False, executor=RayExecutor(cpus=1))
    finally:
        ray.shutdown()
    assert filecmp.cmp(local["dir"] / "table1.md", remote["dir"] / "table1.md", shallow=False)
    for row in ("A", "B"):
        for fold in (0, 1):
            for name in ("metrics_per_case.csv", "metrics_per_lesion.csv"):
                a, b = (r["dir"] / row / f"fold_{fold}" / name for r in (local, remote))
                assert filecmp.cmp(a, b, shallow=False), (row, fold, name)


def test_cpus_leave_pet_rule_jobs_valid():
    """--cpus sets train.threads of network jobs only: a rule job (strategy:
    threshold) takes no train settings, and a study-wide post-processing chosen on
    validation predictions is dropped for it (it has no model to predict them)."""
    from fusionseg.config import validate_config
    from fusionseg.experiments.study import load_study

    study = load_study(
        Path(__file__).resolve().parents[1] / "configs" / "petct_baselines.yaml",
        "cpu",
        ["postprocess.method=validation"],
    )
    for cfg in study.configs:
        job = with_threads(FoldJob(cfg.model_dump(mode="json"), fold=0, cache_key="k"), 1)
        again = validate_config(job.config)
        if cfg.strategy == "threshold":
            assert again.postprocess.method == "none" and job.config["train"] == cfg.model_dump(mode="json")["train"]
        else:
            assert again.train.threads == 1 and again.postprocess.method == "validation"
