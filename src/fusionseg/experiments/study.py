"""A study: the runs that one comparison makes, read from a study YAML.

Input is either several experiment YAMLs, or one *study* YAML that expands into runs::

    study: s0_table1             # comparison name
    reference: A                 # Wilcoxon tests are against this run
    base: {...}                  # an experiment config shared by every run (or the path
                                 # of one, e.g. baseline_brats18_cpu.yaml, next to the study)
    protocols:                   # named overrides chosen with --protocol
      cpu-small: {...}
      paper: {...}
    runs:                        # each: a name + overrides of base
      - {name: A, strategy: early}
      - {name: B, strategy: decoupled}
    tables:                      # tables to write (rows = runs)
      - {name: table1, title: "...", metrics: [dice, lesion_dice], regions: [ET, TC, WT]}
    claims:                      # optional: the source paper's claims, as tests
      - {id: S0-C2, text: "...", tests: [{run: B, than: A, metric: dice, region: WT, expect: higher}]}

``rows`` (``fusionseg compare --rows A,B``) runs a subset of a study's runs; the
reference run must be among them.

Overrides merge recursively in the order base <- protocol <- run <- ``--set``.

The comparison itself (running the rows, writing the tables) is
:mod:`fusionseg.experiments.compare`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from fusionseg.config import ExperimentConfig, apply_override, drop_inapplicable, load_config, validate_config
from fusionseg.errors import ConfigError
from fusionseg.experiments.claims import Claim

DEFAULT_TABLES = [
    {"name": "overlap", "title": "Dice and lesion-wise Dice", "metrics": ["dice", "lesion_dice"]},
    {"name": "distance", "title": "HD95 and lesion-wise HD95 (mm)", "metrics": ["hd95", "lesion_hd95"]},
]


@dataclass
class Study:
    """Runs to compare: their configs, the reference run and the tables to write."""

    name: str
    configs: list[ExperimentConfig]
    reference: str
    tables: list[dict] = field(default_factory=lambda: copy.deepcopy(DEFAULT_TABLES))
    protocol: str | None = None
    claims: list[Claim] = field(default_factory=list)
    #: (run, against) pairs tested with each other instead of against the reference
    #: (e.g. S2's SSL row against the random-init row of the same loss): pairs.md
    pairs: list[tuple[str, str]] = field(default_factory=list)


#: Top-level keys of a study YAML.
STUDY_KEYS = {"study", "reference", "base", "protocols", "runs", "tables", "claims", "pairs"}


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; ``override`` wins (lists and scalars are replaced)."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def is_study(path: Path) -> bool:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "runs" in raw


def select_rows(runs: list[dict], rows: Sequence[str] | None, reference: str, source: str) -> list[dict]:
    """The study's run entries named in ``rows`` (in the study's order); all when None.

    Raises:
        ConfigError: a name that is no run of the study, or ``rows`` without the reference.
    """
    if not rows:
        return runs
    names = [r.get("name") for r in runs]
    unknown = [r for r in rows if r not in names]
    if unknown:
        raise ConfigError(f"{source}: --rows names {unknown} that are not runs of the study; choose among {names}")
    if reference not in rows:
        raise ConfigError(
            f"{source}: --rows must include the reference run {reference!r} (every row is tested against it)"
        )
    return [r for r in runs if r.get("name") in set(rows)]


def load_study(
    path: str | Path,
    protocol: str | None = None,
    overrides: Sequence[str] | None = None,
    rows: Sequence[str] | None = None,
) -> Study:
    """Expand a study YAML into validated experiment configs (only the runs named in
    ``rows``, when given; see :func:`select_rows`). A run's config is the base, then
    the protocol's settings, then the run entry, then the entry's own settings for the
    protocol (``protocols: {NAME: {...}}`` inside a run entry).

    Raises:
        ConfigError: unknown top-level key or protocol, duplicate run names, invalid
            run configs or claims, unknown ``rows``.
    """
    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    unknown = sorted(set(raw) - STUDY_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown study key(s) {unknown}; a study has {sorted(STUDY_KEYS)}")
    protocols = raw.get("protocols") or {}
    if protocol is None and protocols:
        protocol = next(iter(protocols))
    if protocol is not None and protocol not in protocols:
        raise ConfigError(f"{path}: unknown protocol {protocol!r}; choose one of {sorted(protocols)}")
    base = deep_merge(_base_section(path, raw.get("base")), protocols.get(protocol) or {})
    if any("name" not in run for run in raw["runs"]):
        raise ConfigError(f"{path}: every entry of runs needs a name")
    reference = raw.get("reference", raw["runs"][0]["name"])
    configs = []
    for entry in select_rows(raw["runs"], rows, reference, str(path)):
        # a run's own settings per protocol (e.g. its network's size) come last
        run = deep_merge(
            {k: v for k, v in entry.items() if k != "protocols"}, (entry.get("protocols") or {}).get(protocol) or {}
        )
        merged = deep_merge(_replaced_components(base, run), run)
        for item in overrides or []:
            apply_override(merged, item)
        configs.append(validate_config(drop_inapplicable(merged, run), source=f"{path} run {run['name']}"))
    names = [c.name for c in configs]
    if reference not in names:
        raise ConfigError(f"{path}: reference {reference!r} is not a run name ({names})")
    name = raw.get("study", path.stem) + (f"_{protocol}" if protocol else "")
    try:
        claims = [Claim.model_validate(c) for c in raw.get("claims") or []]
    except ValueError as exc:
        raise ConfigError(f"{path}: invalid claims: {exc}") from exc
    pairs = _study_pairs(raw.get("pairs") or [], [r["name"] for r in raw["runs"]], names, path)
    tables = raw.get("tables") or copy.deepcopy(DEFAULT_TABLES)
    return Study(name, configs, reference, tables, protocol, claims, pairs)


def _study_pairs(raw, declared: list[str], running: list[str], path: Path) -> list[tuple[str, str]]:
    """A study's ``pairs`` ([[run, against], ...]) whose two rows both run now.

    Raises:
        ConfigError: a pair that is not two row names.
    """
    pairs = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in declared for p in pair)):
            raise ConfigError(f"{path}: pairs: {pair!r} is not [run, against] of two row names ({declared})")
        if all(p in running for p in pair):
            pairs.append((pair[0], pair[1]))
    return pairs


def _replaced_components(base: dict, run: dict) -> dict:
    """``base`` without the ``loss`` / ``model`` section that ``run`` replaces by naming
    another component: the kwargs of one loss or network do not apply to another."""
    out = dict(base)
    for key in ("loss", "model"):
        mine, theirs = run.get(key), base.get(key)
        if (
            isinstance(mine, dict)
            and isinstance(theirs, dict)
            and "name" in mine
            and mine["name"] != theirs.get("name")
        ):
            del out[key]
    return out


def _base_section(study: Path, base) -> dict:
    """A study's ``base``: the mapping itself, or (a string) an experiment YAML, looked
    up next to the study file, then from the current directory; its ``name`` is
    dropped (every row names itself).

    Raises:
        ConfigError: the file is missing or is not a mapping.
    """
    if not isinstance(base, str):
        return base or {}
    candidates = [study.parent / base, Path(base)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ConfigError(f"{study}: base {base!r} not found (looked in {study.parent} and the current folder)")
    data = yaml.safe_load(found.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{found}: a study's base file must hold one experiment config (a mapping)")
    data.pop("name", None)
    return data


def load_study_or_configs(
    paths: Sequence[Path],
    protocol: str | None,
    overrides: Sequence[str] | None,
    name: str | None,
    rows: Sequence[str] | None = None,
) -> Study:
    """One study YAML, or several experiment YAMLs (the first is the reference)."""
    if len(paths) == 1 and is_study(paths[0]):
        study = load_study(paths[0], protocol, overrides, rows)
    else:
        if protocol is not None or rows:
            raise ConfigError("--protocol and --rows apply to a study YAML (one with a 'runs' list)")
        configs = [load_config(p, list(overrides or [])) for p in paths]
        study = Study("comparison", configs, configs[0].name)
    if name:
        study.name = name
    return study
