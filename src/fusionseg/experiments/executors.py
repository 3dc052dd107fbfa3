"""Executors run fold jobs (:mod:`fusionseg.experiments.jobs`).

- ``local`` (default): in this process, one job after another; no Ray needed.
- ``ray``: one Ray task per (config, fold) with ``cpus`` / ``gpus`` per job, on a
  local Ray instance (all of this machine's CPUs) or an existing cluster
  (``address``, e.g. ``auto`` or ``ray://head:10001``; start one on Slurm or a cloud
  with Ray's own launchers, see docs/architecture.md). Ray sets OMP_NUM_THREADS=1 in
  workers: each job sets torch's threads to its CPUs (``train.threads``). A task
  whose worker dies is retried (``retries``) and resumes from its ``last.ckpt``.

Results depend on the torch thread count (float summation order): a job's threads
are ``train.threads`` of its config; ``cpus`` sets both, so ``--executor local --cpus
1`` and ``--executor ray --cpus 1`` give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from fusionseg.errors import ConfigError
from fusionseg.experiments.jobs import FoldJob, FoldResult, RunContext, run_fold_job


def with_threads(job: FoldJob, cpus: int | None) -> FoldJob:
    """``job`` with ``train.threads = cpus`` (unchanged when ``cpus`` is None, and for a
    PET rule, ``strategy: threshold``, which runs no network and takes no train
    settings)."""
    if cpus is None or job.config.get("strategy") == "threshold":
        return job
    config = {**job.config, "train": {**job.config["train"], "threads": int(cpus)}}
    return FoldJob(config, job.fold, job.cache_key)


@dataclass
class LocalExecutor:
    """Run jobs in this process, in order."""

    cpus: int | None = None

    def run(
        self, jobs: Sequence[FoldJob], contexts: dict[str, RunContext] | None = None, progress: bool = True
    ) -> list[FoldResult]:
        contexts = contexts or {}
        return [run_fold_job(with_threads(job, self.cpus), progress, contexts.get(job.config["name"])) for job in jobs]


def _remote_job(job: FoldJob) -> FoldResult:
    import torch

    torch.set_num_threads(int(job.config["train"]["threads"] or 1))
    return run_fold_job(job, progress=False)


@dataclass
class RayExecutor:
    """Run jobs as Ray tasks (see module docstring)."""

    address: str | None = None
    cpus: int = 1
    gpus: float = 0.0
    retries: int = 3

    def run(self, jobs: Sequence[FoldJob], contexts=None, progress: bool = True) -> list[FoldResult]:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs the ray package: pip install 'fusionseg[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True, configure_logging=False)
        task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries)(_remote_job)
        refs = {task.remote(with_threads(job, self.cpus)): i for i, job in enumerate(jobs)}
        results: list[FoldResult | None] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = refs[ready[0]]
            results[i] = ray.get(ready[0])
            print(f"{jobs[i].label}: done ({len(jobs) - len(pending)}/{len(jobs)})", flush=True)
        return results


def build_executor(name: str = "local", address: str | None = None, cpus: int | None = None, gpus: float = 0.0):
    """The executor ``name`` (``local`` or ``ray``).

    Raises:
        ConfigError: unknown name.
    """
    if name == "local":
        return LocalExecutor(cpus)
    if name == "ray":
        return RayExecutor(address, cpus or 1, gpus)
    raise ConfigError(f"unknown executor {name!r}; choose local or ray")
