"""A run folder's identity: the settings its results depend on.

A run folder holds the results of one resolved config. Rerunning ``fusionseg train``
(or ``compare``) into it resumes it only when the settings the trained folds depend on
are unchanged. The settings fall into three groups:

- :data:`RESULT_FREE`: neither the training nor the evaluation depends on them (the
  run's name and parent folder, the cache folder, CPU threads, data-loader workers);
- :data:`EVALUATION_ONLY` (``evaluation``, ``postprocess``, ``inference``): the trained
  folds stay valid; changed ones are re-predicted and re-evaluated (the runner compares
  them per fold);
- everything else: a change makes the folder's checkpoints, split and metrics belong to
  another experiment. :func:`check_run_folder` then stops, naming the keys, unless the
  user chose ``--overwrite`` (start again) or ``--resume-with-changes`` (keep what is
  trained; the change is recorded in ``run.json``).

``run.json`` records the identity hash (:func:`identity_hash`) and every accepted change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
import json
import shutil

import yaml

from fusionseg.config import ExperimentConfig
from fusionseg.data.io import atomic_path
from fusionseg.errors import OutputError

#: Dotted keys (or section prefixes) that do not change any result.
RESULT_FREE = ("name", "output_dir", "data.cache_dir", "train.threads", "train.num_workers")
#: Sections whose change re-evaluates the trained folds instead of retraining.
EVALUATION_ONLY = ("evaluation", "postprocess", "inference")
#: The run folder's record.
RECORD = "run.json"


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``. Lists, and free-form option mappings
    (``kwargs``), stay whole values, so an option added there is a changed value."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "kwargs":
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def identity_settings(config: dict) -> dict[str, object]:
    """The flattened settings of a resolved config (``model_dump(mode="json")``) that
    the trained folds depend on."""
    return {k: v for k, v in flatten(config).items() if not _under(k, RESULT_FREE) and not _under(k, EVALUATION_ONLY)}


def identity_hash(cfg: ExperimentConfig) -> str:
    """sha256 (first 16 hex digits) of :func:`identity_settings` of ``cfg``."""
    payload = json.dumps(identity_settings(cfg.model_dump(mode="json")), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def changed_settings(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old value, new value) for every identity setting that differs between two
    resolved configs (``model_dump(mode="json")``). A key on one side only is a setting
    that this version of fusionseg added or removed, not a change of the experiment."""
    a, b = identity_settings(old), identity_settings(new)
    return [(k, a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k]]


def _show(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class RunFolderState:
    """What :func:`check_run_folder` found: ``changes`` accepted with
    ``--resume-with-changes``, and whether the old run must be deleted first
    (``clear``: ``--overwrite`` of a run with other settings)."""

    changes: list[tuple[str, object, object]] = field(default_factory=list)
    clear: bool = False


def check_run_folder(
    cfg: ExperimentConfig, overwrite: bool = False, resume_with_changes: bool = False
) -> RunFolderState:
    """Stop before any work when ``cfg.run_dir()`` holds another experiment.

    A new folder, or one whose identity settings equal ``cfg``'s, resumes as usual
    (finished folds read back). One with other settings: with ``overwrite`` it is to be
    deleted and trained again (``clear``; done by :func:`clear_run_folder` once the
    inputs are validated), with ``resume_with_changes`` it is resumed and the change
    recorded, otherwise this raises.

    Raises:
        OutputError: the run folder is a file, or a non-empty folder that is not a run
            folder, or its config differs in settings the results depend on and neither
            flag is given; the message names each key with both values and the ways forward.
    """
    run_dir = cfg.run_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(
            f"{run_dir} is a file; the run folder must be a folder. Fix: choose another "
            "--output-dir or name, or remove the file."
        )
    config_path = run_dir / "config.yaml"
    if not run_dir.exists():
        return RunFolderState()
    if not config_path.exists():
        if any(run_dir.iterdir()):
            raise OutputError(
                f"{run_dir} exists and is not a fusionseg run folder (no config.yaml). "
                "Fix: choose another --output-dir or name."
            )
        return RunFolderState()
    try:
        old = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise OutputError(
            f"{config_path} cannot be read ({exc}). Fix: remove that run folder, or choose another name."
        ) from exc
    changes = changed_settings(old, cfg.model_dump(mode="json"))
    if not changes:
        return RunFolderState()
    if overwrite:
        return RunFolderState(clear=True)
    if resume_with_changes:
        return RunFolderState(changes=changes)
    listed = "\n".join(f"  - {k}: {_show(a)} -> {_show(b)}" for k, a, b in changes)
    raise OutputError(
        f"{run_dir} holds a run with other settings; its checkpoints, split and metrics belong to "
        f"those:\n{listed}\nWays forward: give this run a new name (`--set name=NEW`, or rename the "
        "YAML), or pass --overwrite to delete that run and train it again, or --resume-with-changes to "
        "keep its trained folds anyway (the change is recorded in run.json). Changes to evaluation, "
        "postprocess and inference alone need neither: they re-evaluate the trained folds."
    )


def clear_run_folder(cfg: ExperimentConfig) -> None:
    """Delete ``cfg.run_dir()`` (``--overwrite``; only a folder with a config.yaml)."""
    run_dir = cfg.run_dir()
    if run_dir.is_dir() and (run_dir / "config.yaml").exists():
        shutil.rmtree(run_dir)


def write_record(cfg: ExperimentConfig, changes: list[tuple[str, object, object]]) -> dict:
    """Write ``run.json``: the identity hash and every change accepted with
    ``--resume-with-changes`` (appended to the history)."""
    path = cfg.run_dir() / RECORD
    record = json.loads(path.read_text()) if path.exists() else {"changes": []}
    if changes:
        record["changes"].append(
            {
                "from_identity": record.get("identity"),
                "settings": [{"key": k, "old": a, "new": b} for k, a, b in changes],
            }
        )
    record["identity"] = identity_hash(cfg)
    record["identity_covers"] = "every setting except " + ", ".join(RESULT_FREE + EVALUATION_ONLY)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    return record
