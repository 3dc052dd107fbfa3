"""YAML <-> :class:`ExperimentConfig`: reading a config file with ``--set`` overrides,
validation errors one line per problem, and saved run configs of earlier versions."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from fusionseg.config.experiment import ExperimentConfig
from fusionseg.config.fusion import _FUSION_TAGS, FUSION_KEYS, WEIGHTING_KEYS, fusion_keys
from fusionseg.config.strategies import RULE_FREE_SECTIONS
from fusionseg.errors import ConfigError


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML.

    Relative paths inside the file (data.root, output_dir, ...) are taken relative
    to the current directory. ``overrides`` are ``dotted.key=value`` strings whose
    values are parsed as YAML (e.g. ``train.epochs=3``).

    Raises:
        ConfigError: unreadable file or invalid values (every problem listed).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections.")
    raw.setdefault("name", path.stem)
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


def apply_override(raw: dict, item: str) -> None:
    """Set ``dotted.key=value`` in a raw config mapping (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def validate_config(raw: dict, source: str = "config") -> ExperimentConfig:
    """Validate a raw config mapping (as read from YAML).

    Raises:
        ConfigError: every problem, one line each, naming its dotted key.
    """
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: invalid configuration:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in _without_union_tags(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "literal_error":
                msg += f" (got {err['input']!r})"
            for part in msg.split("\n"):  # a validator's message may hold several problems
                same = where and (part == where or part.startswith((where + ".", where + " ", where + ":")))
                lines.append(f"  - {where}: {part}" if where and not same else f"  - {part}")
        raise ConfigError("\n".join(lines)) from exc


#: Tags of the discriminated unions, by the key that holds the union; they are the
#: union member's name, not a key the user wrote, so error locations leave them out.
_UNION_TAGS = {"fusion": _FUSION_TAGS, "challenge": {"preset", "settings"}}


def _without_union_tags(loc: tuple) -> list:
    return [
        p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], str) and p in _UNION_TAGS.get(loc[i - 1], ()))
    ]


def drop_inapplicable(raw: dict, written: dict | None = None) -> dict:
    """A copy of the raw config mapping ``raw`` without the fusion settings that do not
    apply to its strategy (and weighting): the whole ``fusion`` section under early,
    ``epochs`` under joint, the weighting keys under decoupled and those of the other
    weightings under joint; under ``threshold`` (a rule) the network, training and
    inference sections, ``spatial_dims`` and a post-processing chosen on validation
    predictions (``method: validation``), and the ``threshold`` section elsewhere, the
    ``ssl`` section under any strategy but ssl.
    Settings in ``written`` (the part of ``raw`` its author wrote for this config) are
    kept, so validation reports them; unknown keys are kept (typos stay errors).

    Used for settings shared by several configs (a study's base, protocol and
    ``--set``, each applying to the runs it fits; the run entry is ``written``) and for
    saved run configs (:func:`validate_saved_config`), never for a user's own config.
    """
    out = dict(raw)
    fusion = raw.get("fusion")
    strategy = raw.get("strategy", "early")
    if strategy == "threshold":  # a rule: the network, training and fusion settings do not apply
        for key in (*RULE_FREE_SECTIONS, "spatial_dims", "fusion", "missing"):
            if key not in (written or {}):
                out.pop(key, None)
        post = out.get("postprocess")
        if isinstance(post, dict) and post.get("method") == "validation" and "postprocess" not in (written or {}):
            out.pop("postprocess")  # chosen on validation predictions of a model: a rule has none
        return out
    if strategy != "threshold" and "threshold" in out and "threshold" not in (written or {}):
        del out["threshold"]
    if strategy != "ssl" and "ssl" in out and "ssl" not in (written or {}):
        del out["ssl"]  # a pretext section shared by a study's rows applies to its ssl rows only
    if isinstance(fusion, dict) and strategy == "a2fseg" and "fusion" not in (written or {}):
        del out["fusion"]  # feature-level fusion: no image-fusion network
        return out
    if not isinstance(fusion, dict) or strategy not in ("early", "decoupled", "joint"):
        return out
    weighting = fusion.get("weighting", "static")
    if strategy == "joint" and weighting not in WEIGHTING_KEYS:
        return out  # the weighting itself is invalid: validation reports it
    mine = (written or {}).get("fusion")
    if strategy == "early" and mine is not None:
        return out
    mine = mine if isinstance(mine, dict) else {}
    takes = fusion_keys(strategy, weighting)
    kept = {k: v for k, v in fusion.items() if k in takes or k in mine or k not in FUSION_KEYS}
    if strategy == "early" and not kept:
        del out["fusion"]
    else:
        out["fusion"] = kept
    return out


def validate_saved_config(raw: dict, source: str = "saved config") -> ExperimentConfig:
    """Validate a resolved config saved with a run (``config.yaml``, a checkpoint's
    metadata). Earlier versions saved every fusion setting under every strategy (a full
    ``fusion`` section even for early, ``epochs`` for joint, the weighting keys for
    decoupled); those that do not apply are dropped first (:func:`drop_inapplicable`).

    Raises:
        ConfigError: as :func:`validate_config`.
    """
    return validate_config(drop_inapplicable(raw), source=source)


def load_saved_config(path: str | Path) -> ExperimentConfig:
    """Read a run folder's ``config.yaml`` (also one written by an earlier version; see
    :func:`validate_saved_config`).

    Raises:
        ConfigError: unreadable file or invalid values.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}).") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections.")
    return validate_saved_config(raw, source=str(path))
