"""Modalities by name, label schemes and evaluation regions as data.

Nothing else in fusionseg hard-codes a label value: regions (WT/TC/ET, or the single
PET/CT tumour class) and the mapping between a dataset's raw label values and the
contiguous class indices a network predicts come from a :class:`LabelScheme`.

Sources: BraTS 2017-2021 and 2023 label conventions (Menze et al. 2015; Bakas et al.
2018; BraTS 2023 challenge), MSD Task01 BrainTumour dataset.json, autoPET.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Canonical modality names. Every dataset layout maps its own file names onto these.
T1, T1CE, T2, FLAIR = "t1", "t1ce", "t2", "flair"
PET, CT = "pet", "ct"
MRI_MODALITIES: tuple[str, ...] = (T1, T1CE, T2, FLAIR)
PETCT_MODALITIES: tuple[str, ...] = (PET, CT)

#: Aliases seen in dataset.json files and file names -> canonical modality name.
MODALITY_ALIASES: dict[str, str] = {
    "t1": T1,
    "t1n": T1,
    "t1w": T1,
    "native": T1,
    "t1ce": T1CE,
    "t1c": T1CE,
    "t1gd": T1CE,
    "t1-gd": T1CE,
    "t1_gd": T1CE,
    "t1ce_gd": T1CE,
    "t1post": T1CE,
    "t2": T2,
    "t2w": T2,
    "flair": FLAIR,
    "t2f": FLAIR,
    "t2-flair": FLAIR,
    "t2flair": FLAIR,
    "pet": PET,
    "suv": PET,
    "fdg": PET,
    "ct": CT,
    "ctres": CT,
}


def canonical_modality(name: str) -> str:
    """Map a modality name as a dataset spells it to fusionseg's canonical name.

    Unknown names are returned lower-cased (so custom modalities still work).
    """
    key = name.strip().lower()
    return MODALITY_ALIASES.get(key, key)


@dataclass(frozen=True)
class LabelScheme:
    """A dataset's label convention.

    Attributes:
        name: registry key, e.g. ``"brats2017"``.
        description: human-readable description.
        labels: raw label value -> name; must contain 0 (background). The sorted raw
            values define the network's class indices: class ``i`` is the ``i``-th
            smallest raw value.
        regions: evaluation region name -> tuple of raw label values it unites.
    """

    name: str
    description: str
    labels: dict[int, str]
    regions: dict[str, tuple[int, ...]]

    @property
    def values(self) -> tuple[int, ...]:
        """Raw label values, sorted; index = class index."""
        return tuple(sorted(self.labels))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.labels[v] for v in self.values)

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(self.regions)

    def unknown_values(self, seg: np.ndarray) -> list[int]:
        """Raw values present in ``seg`` that the scheme does not define."""
        present = np.unique(seg)
        return [int(v) for v in present if int(v) not in self.labels or v != int(v)]

    def lookup_table(self) -> np.ndarray:
        """uint8 table mapping raw value -> class index (255 = unknown)."""
        lut = np.full(max(self.values) + 1, 255, dtype=np.uint8)
        for index, value in enumerate(self.values):
            lut[value] = index
        return lut

    def to_classes(self, seg: np.ndarray) -> np.ndarray:
        """Raw label map -> class-index map (uint8, same shape).

        Raises:
            ValueError: if ``seg`` holds a value outside the scheme.
        """
        unknown = self.unknown_values(seg)
        if unknown:
            raise ValueError(f"label values {unknown} are not in scheme {self.name!r} (allowed: {list(self.values)})")
        return self.lookup_table()[np.asarray(seg).astype(np.int64)]

    def from_classes(self, classes: np.ndarray, dtype: np.dtype | type = np.uint8) -> np.ndarray:
        """Class-index map -> raw label map in this scheme's convention."""
        values = np.asarray(self.values, dtype=dtype)
        return values[np.asarray(classes, dtype=np.int64)]

    def region_mask(self, seg: np.ndarray, region: str) -> np.ndarray:
        """Boolean mask of ``region`` (e.g. "WT") in a raw label map."""
        try:
            values = self.regions[region]
        except KeyError:
            raise KeyError(
                f"region {region!r} is not defined in scheme {self.name!r}; choose one of {list(self.regions)}"
            ) from None
        return np.isin(seg, values)

    def region_class_indices(self, region: str) -> tuple[int, ...]:
        """Class indices (network output channels) that make up ``region``."""
        return tuple(self.values.index(v) for v in self.regions[region])


BRATS2017 = LabelScheme(
    name="brats2017",
    description="BraTS 2017-2021: 0 background, 1 NCR/NET, 2 ED, 4 ET",
    labels={0: "background", 1: "NCR", 2: "ED", 4: "ET"},
    regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
)
#: BRATS2017 with each tumour class also scored as a region (S2 reports NCR/NET, ED and
#: ET Dice / ASD per class; ET is both a class and a BraTS region). The validation Dice
#: that early stopping watches is then the mean over all five.
BRATS2017_CLASSES = LabelScheme(
    name="brats2017_classes",
    description="BraTS 2017-2021 labels (0 background, 1 NCR/NET, 2 ED, 4 ET), regions WT/TC/ET and classes NCR, ED",
    labels={0: "background", 1: "NCR", 2: "ED", 4: "ET"},
    regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,), "NCR": (1,), "ED": (2,)},
)
BRATS2023 = LabelScheme(
    name="brats2023",
    description="BraTS 2023+ (GLI, MEN, MET, PED, SSA): 0 background, 1 NCR, 2 ED, 3 ET",
    labels={0: "background", 1: "NCR", 2: "ED", 3: "ET"},
    regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
)
MSD_TASK01 = LabelScheme(
    name="msd_task01",
    description="MSD Task01 BrainTumour: 0 background, 1 edema, 2 non-enhancing tumour, 3 enhancing tumour",
    labels={0: "background", 1: "ED", 2: "NET", 3: "ET"},
    regions={"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
)
PETCT = LabelScheme(
    name="petct",
    description="PET/CT (autoPET, STS): 0 background, 1 tumour",
    labels={0: "background", 1: "tumour"},
    regions={"tumour": (1,)},
)

LABEL_SCHEMES: dict[str, LabelScheme] = {
    s.name: s for s in (BRATS2017, BRATS2017_CLASSES, BRATS2023, MSD_TASK01, PETCT)
}


def get_label_scheme(name: str) -> LabelScheme:
    """Look up a label scheme by name; unknown names list the valid ones."""
    try:
        return LABEL_SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown label scheme {name!r}; choose one of {sorted(LABEL_SCHEMES)}") from None


def scheme_to_dict(scheme: LabelScheme) -> dict:
    """JSON-able form of a label scheme (stored in checkpoints and run summaries)."""
    return {
        "name": scheme.name,
        "description": scheme.description,
        "labels": {str(k): v for k, v in scheme.labels.items()},
        "regions": {k: list(v) for k, v in scheme.regions.items()},
    }


def describe_labels(scheme: LabelScheme) -> str:
    """A scheme's raw values and names, e.g. ``"0 background, 1 NCR, 2 ED, 4 ET"``."""
    return ", ".join(f"{v} {scheme.labels[v]}" for v in scheme.values)


def scheme_from_dict(data: dict | str) -> LabelScheme:
    """Inverse of :func:`scheme_to_dict` (a bare name looks up the registry)."""
    if isinstance(data, str):
        return get_label_scheme(data)
    return LabelScheme(
        name=data["name"],
        description=data.get("description", ""),
        labels={int(k): v for k, v in data["labels"].items()},
        regions={k: tuple(int(x) for x in v) for k, v in data["regions"].items()},
    )


#: Penalty distance (mm) for HD95 / lesion-wise HD95 when exactly one mask is empty
#: (BraTS 2023 convention; EVALUATION.md).
HD95_PENALTY_MM = 374.0
