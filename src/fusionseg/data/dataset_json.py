"""MSD / nnU-Net ``dataset.json``: the modalities in channel order and the label scheme.

The ``msd`` and ``nnunet`` layouts of :mod:`fusionseg.data.cases` read their channels
and labels from this file; a known scheme of :data:`fusionseg.constants.LABEL_SCHEMES`
is recognised from the label values and names (BraTS 2023 and MSD Task01 share the
values {0, 1, 2, 3} and differ in names), else a scheme is built from the file.
Formats: MSD / nnU-Net v1 (``"modality"``, ``{"0": "background", ...}``) and
nnU-Net v2 (``"channel_names"``, ``{"background": 0, ...}`` or region lists).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fusionseg.constants import LABEL_SCHEMES, LabelScheme, canonical_modality
from fusionseg.errors import DataError


def read_dataset_json(root: Path, key_hint: str) -> dict:
    """``root/dataset.json`` as a mapping.

    Raises:
        DataError: the file is missing (the message says to create it with
            ``key_hint``), not JSON, or not a JSON object.
    """
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(
            "dataset.json not found.", path, f'create it with {key_hint} and "labels" (see the MSD / nnU-Net docs).'
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot parse dataset.json ({exc}).", path, "fix the JSON syntax.") from exc
    if not isinstance(meta, dict):
        raise DataError("dataset.json is not a JSON object.", path, "fix its content.")
    return meta


def channel_modalities(meta: dict, path: Path) -> list[str]:
    """Canonical modality names in channel order from "channel_names" (nnU-Net v2)
    or "modality" (MSD, nnU-Net v1); duplicate names get the channel index appended."""
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DataError(
            'dataset.json has no "channel_names" / "modality" entry.',
            path,
            'add e.g. "channel_names": {"0": "FLAIR", "1": "T1w", ...}.',
        )
    try:
        ordered = sorted((int(k), str(v)) for k, v in channels.items())
    except ValueError:
        raise DataError(
            f"channel keys must be integers, got {list(channels)}.", path, 'use "0", "1", ... as keys.'
        ) from None
    if [k for k, _ in ordered] != list(range(len(ordered))):
        raise DataError(
            f"channel keys {[k for k, _ in ordered]} are not 0..{len(ordered) - 1}.",
            path,
            "number the channels contiguously from 0.",
        )
    names = [canonical_modality(v) for _, v in ordered]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def parse_labels(meta: dict, path: Path) -> tuple[dict[int, str], dict[str, tuple[int, ...]]]:
    """dataset.json "labels" -> (value -> name, region name -> values).

    Accepts MSD / nnU-Net v1 ({"0": "background", "1": "edema"}) and nnU-Net v2
    ({"background": 0, "edema": 1} or region lists {"whole tumor": [1, 2, 3]}).
    """
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DataError(
            'dataset.json has no "labels" entry.', path, 'add e.g. "labels": {"background": 0, "tumour": 1}.'
        )
    labels: dict[int, str] = {}
    regions: dict[str, tuple[int, ...]] = {}
    try:
        if all(str(k).strip().lstrip("-").isdigit() for k in raw):  # v1 / MSD
            labels = {int(k): str(v) for k, v in raw.items()}
        else:  # v2
            for name, value in raw.items():
                if isinstance(value, list):
                    regions[str(name)] = tuple(sorted(int(v) for v in value))
                else:
                    labels[int(value)] = str(name)
    except (TypeError, ValueError):
        raise DataError(
            f'cannot read "labels": {raw}.', path, 'use {"0": "background", ...} (v1) or {"background": 0, ...} (v2).'
        ) from None
    return labels, regions


# Keywords in label names -> a tag; used to tell schemes with equal values apart
# (BraTS 2023 and MSD Task01 both use {0, 1, 2, 3}).
def label_tags(name: str) -> set[str] | None:
    """Tags of a label name; None for an uninformative name ("1", "label_1")."""
    text = re.sub(r"[_\-/]+", " ", name.lower()).strip()
    if not text or re.fullmatch(r"(label|class)?\s*\d*", text):
        return None
    tags: set[str] = set()
    if "background" in text or text == "bg":
        tags.add("bg")
    if re.search(r"\b(ed|edema|oedema)\b|peritumou?ral", text):
        tags.add("ed")
    core = re.search(r"non ?enhanc|\bnet\b|\bncr\b|necro", text)
    if core:
        tags.add("core")
    if re.search(r"(?<!non )(?<!non)enhanc|\bet\b", text.replace("non enhanc", "")):
        tags.add("et")
    if not tags and re.search(r"tumou?r|lesion|cancer|malignan", text):
        tags.add("tumour")
    return tags


def scheme_fits(scheme: LabelScheme, labels: dict[int, str], regions: dict[str, tuple[int, ...]]) -> bool:
    values = {0, *labels, *(v for r in regions.values() for v in r)}
    if values != set(scheme.values):
        return False
    for value, name in labels.items():
        tags, expected = label_tags(name), label_tags(scheme.labels[value])
        if tags is not None and not tags & expected:
            return False
    scheme_regions = {tuple(sorted(v)) for v in scheme.regions.values()}
    return all(r in scheme_regions for r in regions.values())


def scheme_from_labels(
    labels: dict[int, str],
    regions: dict[str, tuple[int, ...]] | None = None,
    name: str = "custom",
    prefer: tuple[str, ...] = (),
) -> LabelScheme:
    """The known label scheme that ``labels``/``regions`` describe, else a new one.

    A known scheme fits when its raw values equal the given ones, no label name
    contradicts it (e.g. "edema" at value 1 rules out BraTS 2023, whose 1 is NCR) and
    every given region's values are one of its regions. Otherwise a scheme is built
    with one region per foreground label plus a "foreground" union region (when
    there are several foreground labels).

    Args:
        labels: raw value -> label name (dataset.json "labels").
        regions: region name -> raw values (nnU-Net v2 region-based "labels").
        name: name of a new scheme.
        prefer: scheme names tried first when several fit.
    """
    regions = regions or {}
    order = [*prefer, *(n for n in LABEL_SCHEMES if n not in prefer)]
    for scheme_name in order:
        if scheme_fits(LABEL_SCHEMES[scheme_name], labels, regions):
            return LABEL_SCHEMES[scheme_name]
    all_labels = {0: "background"}
    all_labels.update({v: n for v, n in labels.items()})
    for values in regions.values():
        for v in values:
            all_labels.setdefault(v, f"label {v}")
    foreground = sorted(v for v in all_labels if v != 0)
    new_regions = dict(regions) if regions else {all_labels[v]: (v,) for v in foreground}
    if len(foreground) > 1 and "foreground" not in new_regions:
        new_regions["foreground"] = tuple(foreground)
    return LabelScheme(
        name=name, description=f"from dataset.json: {all_labels}", labels=all_labels, regions=new_regions
    )


def scheme_from_json(meta: dict, root: Path, prefer: tuple[str, ...]) -> LabelScheme:
    labels, regions = parse_labels(meta, root / "dataset.json")
    name = re.sub(r"\W+", "_", str(meta.get("name") or root.name)).strip("_").lower() or "custom"
    return scheme_from_labels(labels, regions, name=name, prefer=prefer)
