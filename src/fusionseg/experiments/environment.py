"""What a run was computed on: versions, device, git sha (saved with every run)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = (
    "fusionseg",
    "torch",
    "torchvision",
    "monai",
    "numpy",
    "scipy",
    "nibabel",
    "lightning-fabric",
    "connected-components-3d",
    "pydantic",
    "pandas",
)


def git_sha(path: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        sha = out.stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str | None:
    """The CPU as the kernel names it (Linux ``/proc/cpuinfo``: model name, family and
    model number), else :func:`platform.processor`; None when neither says.

    Recorded because the same command, packages and seed give other floats on another
    CPU generation (torch picks its kernels by the CPU's vector extensions), so two
    runs can only be expected to agree byte for byte on the same kind of CPU."""
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
        if "model name" in fields:
            family = f" (family {fields['cpu family']}, model {fields['model']})" if "cpu family" in fields else ""
            return fields["model name"] + family
    except (OSError, KeyError):
        pass
    return platform.processor() or None


def environment_info() -> dict:
    """Versions of Python and key packages, platform, CPU (model, count, the vector
    extension torch's CPU kernels use), torch device, git sha."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda if cuda else None,
        "git_sha": git_sha(),
        "packages": versions,
        "command": " ".join(sys.argv),
    }


#: What can change a run's floats when it resumes (or keeps folds) on another machine.
FLOAT_KEYS = ("cpu_model", "cpu_capability", "device", "cuda")
FLOAT_PACKAGES = ("torch", "monai", "numpy")


def float_changes(old: dict, new: dict) -> list[str]:
    """What differs between two :func:`environment_info` records in a way that changes
    floats: the CPU model or vector extension, the device, the CUDA, torch, MONAI or
    NumPy version. Returns one ``"key: old -> new"`` line per difference (empty: same).
    A key missing from ``old`` (a record written before it was kept) is not reported."""

    def pick(record: dict) -> dict:
        packages = record.get("packages") or {}
        return {
            **{k: record[k] for k in FLOAT_KEYS if k in record},
            **{k: packages[k] for k in FLOAT_PACKAGES if k in packages},
        }

    before, now = pick(old), pick(new)
    return [f"{key}: {value} -> {now.get(key)}" for key, value in before.items() if value != now.get(key)]
