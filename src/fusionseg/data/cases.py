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

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fusionseg.constants import (
    BRATS2017,
    BRATS2023,
    CT,
    FLAIR,
    LABEL_SCHEMES,
    MSD_TASK01,
    PET,
    PETCT,
    T1,
    T1CE,
    T2,
    LabelScheme,
    get_label_scheme,
)
from fusionseg.data.dataset_json import channel_modalities, read_dataset_json, scheme_from_json
from fusionseg.errors import DataError


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
    """A discovered dataset: root folder, layout (``format``), label scheme, modality
    names in channel order, cases sorted by id (see :func:`discover`)."""

    root: Path
    format: str
    scheme: LabelScheme
    modalities: tuple[str, ...]
    cases: tuple[Case, ...] = field(default_factory=tuple)
    #: entries under ``root`` that belong to no case (reported by validation).
    skipped: tuple[Path, ...] = field(default_factory=tuple)

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


# ---------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

#: Raw file suffix -> canonical modality, per BraTS convention (order = channel order).
BRATS2018_SUFFIXES: dict[str, str] = {"t1": T1, "t1ce": T1CE, "t2": T2, "flair": FLAIR}
BRATS2023_SUFFIXES: dict[str, str] = {"t1n": T1, "t1c": T1CE, "t2w": T2, "t2f": FLAIR}
#: autoPET file stem -> canonical modality.
AUTOPET_FILES: dict[str, str] = {"SUV": PET, "CTres": CT}
AUTOPET_SEG = "SEG"

_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class _Found:
    """What a layout reader returns: cases, default label scheme, modality order,
    and folder entries that are not part of any case."""

    cases: list[Case]
    scheme: LabelScheme
    modalities: tuple[str, ...]
    skipped: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Layout:
    """A dataset layout: how to recognise it and how to read it.

    Attributes:
        name: ``format`` name (``--format`` on the command line).
        pattern: the file pattern, shown in help texts and errors.
        detect: root -> number of cases the layout sees there (0 = not this layout).
        read: root -> :class:`_Found`.
    """

    name: str
    pattern: str
    detect: Callable[[Path], int]
    read: Callable[[Path], _Found]


LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Add a layout to the registry (name must be new)."""
    if layout.name in LAYOUTS:
        raise ValueError(f"layout {layout.name!r} is already registered")
    LAYOUTS[layout.name] = layout
    return layout


def list_formats() -> list[str]:
    """Lines ``"<name>: <pattern>"`` for every registered layout (for help texts)."""
    return [f"{lay.name}: {lay.pattern}" for lay in LAYOUTS.values()]


def _is_hidden(path: Path) -> bool:
    # "._x.nii.gz" are macOS resource forks (shipped inside MSD Task01's tar).
    return path.name.startswith(".")


def _nifti_stem(path: Path) -> str | None:
    """File name without .nii/.nii.gz, or None when not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _nifti(base: Path) -> Path:
    """``base`` + .nii.gz, or + .nii when only that exists (the expected path if neither)."""
    gz, plain = base.with_name(base.name + ".nii.gz"), base.with_name(base.name + ".nii")
    if not gz.exists() and plain.exists():
        return plain
    return gz


def _niftis(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not _is_hidden(p) and _nifti_stem(p) is not None)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))


def _find_case_dirs(
    root: Path, is_case: Callable[[Path], bool], nested_id: Callable[[Path, Path], str]
) -> tuple[list[tuple[str, Path]], list[Path]]:
    """Case folders directly under ``root``, or one level deeper (BraTS 2018 ships
    ``HGG/`` and ``LGG/``; autoPET ships ``<patient>/<study>/``).

    Returns:
        ([(case_id, folder)], [skipped entries]).
    """
    found: list[tuple[str, Path]] = []
    skipped: list[Path] = []
    for child in _subdirs(root):
        if is_case(child):
            found.append((child.name, child))
            continue
        inner = [(nested_id(child, sub), sub) for sub in _subdirs(child) if is_case(sub)]
        if inner:
            found.extend(inner)
        else:
            skipped.append(child)
    skipped.extend(p for p in root.iterdir() if p.is_file() and not _is_hidden(p))
    ids = [cid for cid, _ in found]
    dupes = sorted({cid for cid in ids if ids.count(cid) > 1})
    if dupes:
        raise DataError(f"case ids occur more than once: {dupes}.", root, "give every case folder a unique name.")
    return sorted(found), sorted(skipped)


# --- BraTS (2018-2021 and 2023+) ------------------------------------------------


def _brats_file(folder: Path, sep: str, suffix: str) -> Path:
    """``<folder>/<folder>{sep}{suffix}.nii.gz``; if that is absent but exactly one
    file in the folder ends with ``{sep}{suffix}.nii[.gz]``, that file."""
    expected = _nifti(folder / f"{folder.name}{sep}{suffix}")
    if expected.exists():
        return expected
    matches = [p for p in _niftis(folder) if _nifti_stem(p).endswith(f"{sep}{suffix}")]
    return matches[0] if len(matches) == 1 else expected


def _brats_is_case(sep: str, suffixes: dict[str, str]) -> Callable[[Path], bool]:
    ends = tuple(f"{sep}{s}" for s in (*suffixes, "seg"))

    def is_case(folder: Path) -> bool:
        return any(_nifti_stem(p).endswith(ends) for p in _niftis(folder))

    return is_case


def _brats_detect(sep: str, suffixes: dict[str, str]) -> Callable[[Path], int]:
    is_case = _brats_is_case(sep, suffixes)

    def detect(root: Path) -> int:
        return len(_find_case_dirs(root, is_case, lambda parent, sub: sub.name)[0])

    return detect


def _brats_read(sep: str, suffixes: dict[str, str], scheme: LabelScheme) -> Callable[[Path], _Found]:
    is_case = _brats_is_case(sep, suffixes)

    def read(root: Path) -> _Found:
        dirs, skipped = _find_case_dirs(root, is_case, lambda parent, sub: sub.name)
        cases = []
        for case_id, folder in dirs:
            images = {mod: ImageRef(_brats_file(folder, sep, suffix)) for suffix, mod in suffixes.items()}
            seg = _brats_file(folder, sep, "seg")
            cases.append(Case(case_id, images, seg if seg.exists() else None))
        return _Found(cases, scheme, tuple(suffixes.values()), tuple(skipped))

    return read


# --- autoPET ------------------------------------------------------------------


def _autopet_is_case(folder: Path) -> bool:
    stems = {_nifti_stem(p) for p in _niftis(folder)}
    return bool(stems & {*AUTOPET_FILES, AUTOPET_SEG})


def _autopet_id(parent: Path, sub: Path) -> str:
    return f"{parent.name}_{sub.name}"  # autoPET: <patient>/<study date>/


def _autopet_detect(root: Path) -> int:
    return len(_find_case_dirs(root, _autopet_is_case, _autopet_id)[0])


def _autopet_read(root: Path) -> _Found:
    dirs, skipped = _find_case_dirs(root, _autopet_is_case, _autopet_id)
    cases = []
    for case_id, folder in dirs:
        images = {mod: ImageRef(_nifti(folder / stem)) for stem, mod in AUTOPET_FILES.items()}
        seg = _nifti(folder / AUTOPET_SEG)
        cases.append(Case(case_id, images, seg if seg.exists() else None))
    return _Found(cases, PETCT, tuple(AUTOPET_FILES.values()), tuple(skipped))


# --- MSD and nnU-Net raw (imagesTr / labelsTr / dataset.json) --------------------


def _split_dirs(root: Path) -> list[Path]:
    return [root / name for name in ("imagesTr", "imagesTs") if (root / name).is_dir()]


def _msd_detect(root: Path) -> int:
    # MSD: one 4-D file per case, no _0000 channel suffix.
    stems = [_nifti_stem(p) for d in _split_dirs(root) for p in _niftis(d)]
    if not stems or any(_NNUNET_CHANNEL.match(s) for s in stems):
        return 0
    return len(stems)


def _nnunet_detect(root: Path) -> int:
    stems = [_nifti_stem(p) for d in _split_dirs(root) for p in _niftis(d)]
    if not stems or not all(_NNUNET_CHANNEL.match(s) for s in stems):
        return 0
    return len({_NNUNET_CHANNEL.match(s)["case"] for s in stems})


def _msd_read(root: Path) -> _Found:
    meta = read_dataset_json(root, '"modality"')
    modalities = channel_modalities(meta, root / "dataset.json")
    scheme = scheme_from_json(meta, root, prefer=(MSD_TASK01.name,))
    cases: dict[str, Case] = {}
    for split in _split_dirs(root):
        labels_dir = root / split.name.replace("images", "labels")
        for path in _niftis(split):
            case_id = _nifti_stem(path)
            if case_id in cases:
                raise DataError(
                    f"case {case_id!r} is in both imagesTr and imagesTs.", path, "remove or rename one of them."
                )
            images = {mod: ImageRef(path, channel=i) for i, mod in enumerate(modalities)}
            label = _nifti(labels_dir / case_id)
            cases[case_id] = Case(case_id, images, label if label.exists() else None)
    return _Found([cases[k] for k in sorted(cases)], scheme, tuple(modalities))


def _nnunet_read(root: Path) -> _Found:
    meta = read_dataset_json(root, '"channel_names"')
    modalities = channel_modalities(meta, root / "dataset.json")
    scheme = scheme_from_json(meta, root, prefer=())
    cases: dict[str, Case] = {}
    for split in _split_dirs(root):
        labels_dir = root / split.name.replace("images", "labels")
        ids = sorted({_NNUNET_CHANNEL.match(_nifti_stem(p))["case"] for p in _niftis(split)})
        for case_id in ids:
            if case_id in cases:
                raise DataError(
                    f"case {case_id!r} is in both imagesTr and imagesTs.", split, "remove or rename one of them."
                )
            images = {mod: ImageRef(_nifti(split / f"{case_id}_{i:04d}")) for i, mod in enumerate(modalities)}
            label = _nifti(labels_dir / case_id)
            cases[case_id] = Case(case_id, images, label if label.exists() else None)
    return _Found([cases[k] for k in sorted(cases)], scheme, tuple(modalities))


register_layout(
    Layout(
        "brats2018",
        "<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz (BraTS 2018-2021)",
        _brats_detect("_", BRATS2018_SUFFIXES),
        _brats_read("_", BRATS2018_SUFFIXES, BRATS2017),
    )
)
register_layout(
    Layout(
        "brats2023",
        "<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz (BraTS 2023+)",
        _brats_detect("-", BRATS2023_SUFFIXES),
        _brats_read("-", BRATS2023_SUFFIXES, BRATS2023),
    )
)
register_layout(
    Layout(
        "msd",
        "imagesTr/<case>.nii.gz (4-D) + labelsTr/<case>.nii.gz + dataset.json (MSD Task01)",
        _msd_detect,
        _msd_read,
    )
)
register_layout(
    Layout(
        "nnunet",
        "imagesTr/<case>_{0000,0001,..}.nii.gz + labelsTr/<case>.nii.gz + dataset.json",
        _nnunet_detect,
        _nnunet_read,
    )
)
register_layout(Layout("autopet", "<case>/{SUV,CTres,SEG}.nii.gz (autoPET, PET/CT)", _autopet_detect, _autopet_read))


def _describe(root: Path, limit: int = 8) -> str:
    """Short listing of a folder's content for error messages."""
    entries = sorted(p for p in root.iterdir() if not _is_hidden(p))
    if not entries:
        return "the folder is empty"
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    text = f"found {', '.join(shown)}{more}"
    first_dir = next((p for p in entries if p.is_dir()), None)
    if first_dir is not None:
        inner = sorted(p.name for p in first_dir.iterdir() if not _is_hidden(p))[:limit]
        text += f"; {first_dir.name}/ holds {', '.join(inner) if inner else 'nothing'}"
    return text


def detect_format(root: str | Path) -> str:
    """Name of the layout of ``root`` (see :func:`list_formats`).

    Raises:
        DataError: no layout matches (lists the supported ones and what was found),
            or several match equally well.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found.", root, "give the folder that holds the cases.")
    counts = {name: lay.detect(root) for name, lay in LAYOUTS.items()}
    matches = sorted((n for n, c in counts.items() if c > 0), key=lambda n: -counts[n])
    if not matches:
        hint = ""
        for sub in _subdirs(root)[:20]:
            inner = [n for n, lay in LAYOUTS.items() if lay.detect(sub) > 0]
            if inner:
                hint = f" The subfolder {sub.name}/ looks like {' or '.join(inner)}: point to it instead."
                break
        raise DataError(
            f"no supported dataset layout recognised ({_describe(root)}).",
            root,
            "arrange the files in one of the supported layouts - " + "; ".join(list_formats()) + "." + hint,
        )
    if len(matches) > 1:
        found = ", ".join(f"{n} ({counts[n]} cases)" for n in matches)
        raise DataError(
            f"the folder matches several layouts: {found}.",
            root,
            f"point to the folder of one dataset, or choose with --format ({' or '.join(matches)}).",
        )
    return matches[0]


def discover(root: str | Path, format: str | None = None, scheme: str | None = None) -> Dataset:
    """Find every case under ``root`` and build the manifest.

    Args:
        root: dataset folder.
        format: layout name (one of :data:`LAYOUTS`, see :func:`list_formats`);
            autodetected when None.
        scheme: label-scheme name overriding the layout's default
            (see :data:`fusionseg.constants.LABEL_SCHEMES`).
    Returns:
        a :class:`Dataset` with cases sorted by id. Expected image paths are recorded
        even when the file is missing (:mod:`fusionseg.data.check` reports them);
        a case without a segmentation file gets ``label=None``.
    Raises:
        DataError: the folder is missing, matches no layout, does not match the
            requested ``format``, or ``format``/``scheme`` is unknown.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found.", root, "give the folder that holds the cases.")
    if format is None:
        format = detect_format(root)
    elif format not in LAYOUTS:
        raise DataError(
            f"unknown format {format!r}.", root, f"use one of: {', '.join(LAYOUTS)} (or omit --format to autodetect)."
        )
    layout = LAYOUTS[format]
    if layout.detect(root) == 0:
        others = [n for n, lay in LAYOUTS.items() if n != format and lay.detect(root) > 0]
        looks = f" It looks like {others[0]}: use --format {others[0]}." if others else ""
        raise DataError(
            f"the folder does not match the {format} layout {layout.pattern} ({_describe(root)}).",
            root,
            f"check the folder and --format.{looks}",
        )
    found = layout.read(root)
    label_scheme = found.scheme
    if scheme is not None:
        try:
            label_scheme = get_label_scheme(scheme)
        except KeyError:
            raise DataError(
                f"unknown label scheme {scheme!r}.", root, f"use one of: {', '.join(LABEL_SCHEMES)}."
            ) from None
    return Dataset(
        root=root,
        format=format,
        scheme=label_scheme,
        modalities=found.modalities,
        cases=tuple(sorted(found.cases, key=lambda c: c.case_id)),
        skipped=found.skipped,
    )
