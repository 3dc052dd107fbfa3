"""Cases and dataset discovery for every supported layout.

A :class:`Dataset` is a manifest: which cases exist, which file holds each modality
(addressed by canonical name, see :mod:`fusionseg.constants`), where the label map is
(``None`` for prediction-only cases) and which label scheme applies.

Supported layouts (``format`` names):
- ``brats2018``: BraTS 2018-2021, ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``
- ``brats2023``: BraTS 2023+, ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``
- ``msd``: MSD Task01, 4-D ``imagesTr/<case>.nii.gz`` + ``labelsTr`` + dataset.json
- ``nnunet``: nnU-Net raw, ``imagesTr/<case>_{0000,0001,..}.nii.gz`` + dataset.json
- ``autopet``: ``<case>/{SUV,CTres,SEG}.nii.gz``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fusionseg.constants import LabelScheme


@dataclass(frozen=True)
class ImageRef:
    """One modality's image: a file, and for 4-D files (MSD) the channel index."""

    path: Path
    channel: int | None = None

    def __str__(self) -> str:
        return str(self.path) if self.channel is None else f"{self.path}[channel {self.channel}]"


@dataclass(frozen=True)
class Case:
    """One subject.

    Attributes:
        case_id: identifier (folder name or file stem), unique within a dataset.
        images: canonical modality name -> image reference. Paths are where the file
            is expected; discovery does not require them to exist (validation does).
        label: label-map path, or ``None`` when the case has no segmentation.
    """

    case_id: str
    images: dict[str, ImageRef]
    label: Path | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.images)


@dataclass(frozen=True)
class Dataset:
    """A discovered dataset: root folder, layout, label scheme, modalities, cases."""

    root: Path
    format: str
    scheme: LabelScheme
    modalities: tuple[str, ...]
    cases: tuple[Case, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KeyError(f"case {case_id!r} not found in {self.root}")

    @property
    def labelled(self) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.label is not None)
