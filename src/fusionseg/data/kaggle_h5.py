"""Reader of the Kaggle "BraTS 2020 HDF5 slice" release.

The Kaggle dataset ``awsaf49/brats2020-training-data`` (folder
``BraTS2020_training_data/content/data/``) stores every axial slice of the 369 BraTS
2020 training cases as one file ``volume_<N>_slice_<M>.h5`` (N = volume 1..369, M =
slice 0..154) with two datasets:

- ``image``: float, (H, W, 4) - the four MRI sequences as channels (240 x 240);
- ``mask``: (H, W, 3) - three binary tumour masks, one per sub-region.

Beside them there is often a ``meta_data.csv`` / ``name_mapping.csv`` /
``BraTS20 Training Metadata.csv``; this module does not read them (they are
optional and their paths point to the Kaggle notebook's mount).

This module scans such a folder (:func:`scan_kaggle_h5`) and reads one volume with full
validation (:func:`read_volume`). :mod:`fusionseg.data.kaggle_convert` converts volumes
into the BraTS 2018-2021 NIfTI layout that :func:`fusionseg.data.cases.discover`
recognises as ``brats2018``: ``<out>/BraTS20_Training_<NNN>/BraTS20_Training_<NNN>_
{t1,t1ce,t2,flair,seg}.nii.gz`` with labels 0, 1 NCR/NET, 2 ED, 4 ET (scheme
``brats2017``). Since the channel order of ``image`` cannot be checked without the
NIfTI release, :mod:`fusionseg.data.kaggle_verify` measures it against a NIfTI copy of
the same case.

Channel orders and where they come from
---------------------------------------
The release ships no documentation of its channel order, and no public code found
(search of public GitHub code and pages, 2025) checks it against the NIfTI release.
What public code that reads these files states:

``mask`` = (NCR/NET, ED, ET), i.e. BraTS labels (1, 2, 4)  - confidence: moderate-high.
    Every source that names the channels agrees: a manifest builder for this release
    documents the metadata columns ``label0_pxl_cnt``/``label1_pxl_cnt``/
    ``label2_pxl_cnt`` as "mask channel 0 (BraTS label 1) ... channel 2 (BraTS label
    4)"; a widely copied Kaggle notebook labels the mask channels "Necrotic (NEC)",
    "Edema (ED)", "Tumour (ET)"; ``BadrEssabri/UnetTumorSegment`` (dataset.py) takes
    ``mask[:, :, 0]`` as "NCR/NET - label 1"; several loaders map channel c to class
    c + 1 of (NCR, ED, ET). It is also the order of the raw label values 1 < 2 < 4.

``image`` = (FLAIR, T1, T1ce, T2)  - confidence: LOW, the sources disagree.
    For (FLAIR, T1, T1ce, T2): a MATLAB viewer for these files maps
    {'T2-FLAIR', 'T1', 'T1Gd', 'T2'} to channels 1..4; a feature-extraction project
    on these files uses ``{0: "flair", 1: "t1", 2: "t1ce", 3: "t2"}``; an H5-to-DICOM
    converter for them writes channels as ['FLAIR', 'T1', 'T1CE', 'T2']; a diffusion
    baseline states "image channel 0 (FLAIR)". It is also the alphabetical order of
    the BraTS file names (``_flair``, ``_t1``, ``_t1ce``, ``_t2``; ``_seg`` skipped),
    which a converter iterating ``sorted(glob(...))`` produces, and the MSD Task01
    order. For (T1, T1ce, T2, FLAIR): the display code of one popular Kaggle notebook
    (copied into many repositories, e.g. "T1-weighted (T1)", "T1-weighted post
    contrast (T1c)", "T2-weighted (T2)", "Fluid Attenuated Inversion Recovery
    (FLAIR)") and projects derived from it; one of them writes that it assumed this
    order "matching the majority of public notebooks" without having checked it.
    Neither side shows a measurement. :data:`IMAGE_CHANNELS` takes the first order;
    pass ``image_channels=`` to every function to override it, and check it with
    :func:`~fusionseg.data.kaggle_verify.verify_channel_order` on one case of which you have both releases.

Other assumptions (not documented by the release either):

- volume N is BraTS 2020 training subject ``BraTS20_Training_<NNN>`` (N zero-padded
  to 3 digits); the converted case is named so, but a low correlation in
  :func:`~fusionseg.data.kaggle_verify.verify_channel_order` for every channel would show the mapping is wrong;
- slice M is the NIfTI's axial index z = M, and a slice's first array axis is the
  NIfTI's first axis (X), its second the second (Y): ``image[:, :, c]`` of slice M
  is ``sequence[:, :, M]`` (:func:`~fusionseg.data.kaggle_verify.match_channels` also reports the in-plane flip /
  transpose that fits best, should this be wrong);
- geometry: the release stores none. The converted NIfTIs get :data:`AFFINE`, the
  identity: 1 mm isotropic voxels (BraTS volumes are resampled to 1 mm^3), origin at
  voxel (0, 0, 0), axis codes RAS, so axis 2 (the stacked slices) is the axial axis
  for :func:`fusionseg.data.io.axial_axis`. It is not the original BraTS affine: do
  not overlay the output on the NIfTI release in world coordinates.

Overlapping mask channels
-------------------------
A voxel has one label in a BraTS label map, but nothing stops the three binary masks
from overlapping (the real release appears to have exclusive channels; overlaps are
counted and reported). The rule: **ET (4) over NCR/NET (1) over ED (2)**
(:data:`LABEL_PRIORITY`). It follows the BraTS nesting ET within TC within WT (TC =
labels 1, 4; WT = 1, 2, 4): a voxel flagged as ET lies in ET, TC and WT; flagged as
NCR in TC and WT; flagged as ED in WT only. The chosen label therefore keeps the voxel
in every region that any of its flags puts it in, and no region loses a voxel.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusionseg.constants import BRATS2017, FLAIR, MRI_MODALITIES, T1, T1CE, T2
from fusionseg.data.cases import BRATS2018_SUFFIXES
from fusionseg.errors import ConfigError, DataError

#: Sequence (canonical modality name) of each channel of the H5 ``image`` dataset, in
#: channel order. Low confidence, see the module docstring; override with
#: ``image_channels=`` and check with :func:`~fusionseg.data.kaggle_verify.verify_channel_order`.
IMAGE_CHANNELS: tuple[str, ...] = (FLAIR, T1, T1CE, T2)

#: Tumour sub-region of each channel of the H5 ``mask`` dataset, in channel order
#: (names as in :data:`fusionseg.constants.BRATS2017`; module docstring for the source).
MASK_CHANNELS: tuple[str, ...] = ("NCR", "ED", "ET")

#: Raw BraTS 2018-2020 label value of each sub-region (scheme ``brats2017``).
LABEL_VALUES: dict[str, int] = {name: value for value, name in BRATS2017.labels.items() if value != 0}

#: Overlapping mask channels: the first region listed wins (module docstring).
LABEL_PRIORITY: tuple[str, ...] = ("ET", "NCR", "ED")

#: Voxel-to-world matrix of the written NIfTIs: 1 mm isotropic, origin at voxel 0.
AFFINE: np.ndarray = np.eye(4)

#: File names of the release: ``volume_<N>_slice_<M>.h5``.
SLICE_FILE = re.compile(r"^volume_(?P<volume>\d+)_slice_(?P<slice>\d+)\.h5$")

#: Case id of converted volume N (BraTS 2020 training naming).
CASE_ID_FORMAT = "BraTS20_Training_{:03d}"

#: Canonical modality -> BraTS 2018-2021 file suffix (``t1ce`` etc.).
_FILE_SUFFIX: dict[str, str] = {modality: suffix for suffix, modality in BRATS2018_SUFFIXES.items()}


def case_id(volume: int) -> str:
    """Case id of volume ``volume``: ``BraTS20_Training_<NNN>`` (3 digits, more if needed)."""
    return CASE_ID_FORMAT.format(int(volume))


def _check_orders(image_channels: Sequence[str], mask_channels: Sequence[str]) -> None:
    if sorted(image_channels) != sorted(MRI_MODALITIES):
        raise ConfigError(
            f"image_channels {tuple(image_channels)} must name each of {MRI_MODALITIES} once, in channel order."
        )
    if sorted(mask_channels) != sorted(LABEL_VALUES):
        raise ConfigError(
            f"mask_channels {tuple(mask_channels)} must name each of {tuple(LABEL_VALUES)} once, in channel order."
        )


def _ranges(numbers: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    numbers = sorted(numbers)
    parts = []
    for _, group in itertools.groupby(enumerate(numbers), key=lambda item: item[1] - item[0]):
        run = [n for _, n in group]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class KaggleScan(Mapping):
    """What :func:`scan_kaggle_h5` found: a mapping volume number -> slice files.

    ``scan[n]`` is the list of volume ``n``'s files indexed by slice number (entry
    ``m`` is ``volume_<n>_slice_<m>.h5``); a missing slice is ``None`` (only with
    ``allow_gaps=True``). Volumes iterate in increasing number.

    Attributes:
        folder: the scanned folder.
        volumes: volume number -> slice files (as above).
        depth: slices per volume (length of every list).
        ignored: files in ``folder`` that are not slice files (CSV tables etc.).
        gaps: volume number -> missing slice numbers (empty without gaps).
    """

    folder: Path
    volumes: dict[int, list[Path | None]]
    depth: int
    ignored: tuple[Path, ...] = ()
    gaps: dict[int, list[int]] = field(default_factory=dict)

    def __getitem__(self, volume: int) -> list[Path | None]:
        return self.volumes[volume]

    def __iter__(self) -> Iterator[int]:
        return iter(self.volumes)

    def __len__(self) -> int:
        return len(self.volumes)

    @property
    def n_files(self) -> int:
        """Number of slice files found."""
        return sum(p is not None for files in self.volumes.values() for p in files)


def _find_slice_folder_hint(folder: Path) -> str:
    """A subfolder of ``folder`` (up to 3 levels down) holding slice files, as a hint."""
    candidates = [folder / "content" / "data", folder / "BraTS2020_training_data" / "content" / "data"]
    candidates += [p for p in sorted(folder.iterdir()) if p.is_dir()][:50]
    for candidate in candidates:
        if candidate.is_dir() and any(SLICE_FILE.match(p.name) for p in candidate.iterdir()):
            return f" {candidate} holds slice files: give that folder instead."
    return ""


def scan_kaggle_h5(folder: str | Path, *, allow_gaps: bool = False, depth: int | None = None) -> KaggleScan:
    """Find the ``volume_<N>_slice_<M>.h5`` files in ``folder`` (not recursive).

    Slices are grouped by volume N (one volume = one patient, so any split of the
    result is by patient) and ordered by slice number M (numerically: slice 10 after
    slice 9). Other files are ignored and listed in :attr:`KaggleScan.ignored`;
    hidden files (``.*``) are skipped silently. No file is opened here
    (:func:`read_volume` validates the contents).

    Args:
        folder: the folder holding the slice files (in the Kaggle download:
            ``BraTS2020_training_data/content/data``).
        allow_gaps: accept volumes with missing slices; they are listed in
            :attr:`KaggleScan.gaps` and their entries are ``None`` (read as zeros).
        depth: slices per volume (the release has 155: 0..154). None: one more than
            the largest slice number in the folder, so a volume missing its last
            slices is caught when another volume has them.
    Returns:
        a :class:`KaggleScan` (a mapping volume -> list of slice paths).
    Raises:
        DataError: the folder is missing or holds no slice files; two files name the
            same slice (``slice_1`` and ``slice_01``); a slice number is >= ``depth``;
            a volume misses slices (message names the volume and the slice numbers)
            and ``allow_gaps`` is False.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            "folder not found.", folder, "give the folder holding the volume_<N>_slice_<M>.h5 files of the release."
        )
    found: dict[int, dict[int, Path]] = {}
    ignored: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        match = SLICE_FILE.match(path.name)
        if match is None or not path.is_file():
            if path.is_file():
                ignored.append(path)
            continue
        volume, index = int(match["volume"]), int(match["slice"])
        slices = found.setdefault(volume, {})
        if index in slices:
            raise DataError(
                f"two files hold slice {index} of volume {volume}: {slices[index].name} and {path.name}.",
                folder,
                "delete or rename one of them.",
            )
        slices[index] = path
    if not found:
        raise DataError(
            f"no volume_<N>_slice_<M>.h5 files found ({len(ignored)} other files).",
            folder,
            "give the folder of the Kaggle release that holds the .h5 slices "
            "(BraTS2020_training_data/content/data)." + _find_slice_folder_hint(folder),
        )
    largest = max(max(slices) for slices in found.values())
    if depth is None:
        depth = largest + 1
    elif largest >= depth:
        volume = next(v for v, s in sorted(found.items()) if max(s) >= depth)
        raise DataError(
            f"volume {volume} has slice {max(found[volume])}, beyond the expected {depth} slices (0..{depth - 1}).",
            found[volume][max(found[volume])],
            "pass the right depth, or remove the stray file.",
        )
    gaps = {v: sorted(set(range(depth)) - set(s)) for v, s in sorted(found.items())}
    gaps = {v: missing for v, missing in gaps.items() if missing}
    if gaps and not allow_gaps:
        listed = "; ".join(f"volume {v}: slices {_ranges(missing)}" for v, missing in list(gaps.items())[:10])
        more = f"; and {len(gaps) - 10} more volumes" if len(gaps) > 10 else ""
        raise DataError(
            f"{len(gaps)} volume(s) miss slices (expected 0..{depth - 1}): {listed}{more}.",
            folder,
            "re-download or re-extract the missing files, leave those volumes out (volumes=...), "
            "or accept zero-filled slices with allow_gaps=True.",
        )
    volumes = {v: [s.get(m) for m in range(depth)] for v, s in sorted(found.items())}
    return KaggleScan(folder=folder, volumes=volumes, depth=depth, ignored=tuple(ignored), gaps=gaps)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

_CORRUPT_FIX = (
    "the file is truncated or corrupt: re-download or re-extract it (or delete it and convert with allow_gaps=True)."
)


def _read_dataset(handle, name: str, path: Path, channels: int, what: str) -> np.ndarray:
    if name not in handle or not hasattr(handle[name], "shape"):
        raise DataError(
            f"no {name!r} dataset (found {sorted(handle.keys())}).",
            path,
            f"each slice file needs datasets 'image' (H, W, 4) and 'mask' (H, W, 3); {_CORRUPT_FIX}",
        )
    dataset = handle[name]
    if len(dataset.shape) != 3 or dataset.shape[2] != channels:
        raise DataError(
            f"{name!r} has shape {tuple(dataset.shape)}, expected (H, W, {channels}) ({what}).",
            path,
            "this is not a slice of the Kaggle BraTS 2020 release, or it is damaged: replace it.",
        )
    if not (np.issubdtype(dataset.dtype, np.number) or np.issubdtype(dataset.dtype, np.bool_)):
        raise DataError(f"{name!r} has non-numeric dtype {dataset.dtype}.", path, "replace the file.")
    return np.asarray(dataset[()])


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading the Kaggle HDF5 release needs h5py: pip install h5py") from None
    return h5py


def read_slice(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one slice file.

    Returns:
        (image (H, W, 4) float32 in the file's channel order (:data:`IMAGE_CHANNELS`),
        mask (H, W, 3) bool in :data:`MASK_CHANNELS` order).
    Raises:
        DataError: the file cannot be opened as HDF5 or its data cannot be decoded
            (corrupt, truncated); a dataset is missing, has the wrong shape or a
            non-numeric dtype; image and mask differ in H, W; a value is NaN or
            infinite; a mask value is not 0 or 1. The message names the file.
    """
    h5py = _h5py()
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            image = _read_dataset(handle, "image", path, 4, "four MRI sequences")
            mask = _read_dataset(handle, "mask", path, len(MASK_CHANNELS), "three tumour masks")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError("file not found (deleted since the scan?).", path, "restore the file and rerun.") from None
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError... for damaged files
        raise DataError(f"cannot read as HDF5 ({exc}).", path, _CORRUPT_FIX) from exc
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"'image' is {image.shape[0]} x {image.shape[1]} but 'mask' is {mask.shape[0]} x {mask.shape[1]}.",
            path,
            "image and mask of a slice must cover the same pixels: replace the file.",
        )
    bad = int(np.count_nonzero(~np.isfinite(image))) if np.issubdtype(image.dtype, np.floating) else 0
    if bad:
        raise DataError(
            f"'image' holds {bad} NaN or infinite values.", path, "replace the file with an intact copy of the release."
        )
    if np.issubdtype(mask.dtype, np.floating) and not np.isfinite(mask).all():
        raise DataError("'mask' holds NaN or infinite values.", path, "replace the file with an intact copy.")
    if not np.isin(mask, (0, 1)).all():
        odd = [v.item() for v in np.unique(mask[~np.isin(mask, (0, 1))])[:5]]
        raise DataError(
            f"'mask' holds values other than 0 and 1 (e.g. {odd}); expected three binary masks.",
            path,
            "replace the file with an intact copy of the release.",
        )
    return image.astype(np.float32, copy=False), mask.astype(bool)


def masks_to_labels(mask: np.ndarray, mask_channels: Sequence[str] = MASK_CHANNELS) -> np.ndarray:
    """Binary sub-region masks -> one BraTS label map.

    Args:
        mask: (..., 3) array, nonzero = in the region; channel ``c`` is region
            ``mask_channels[c]``.
        mask_channels: region of each channel (default :data:`MASK_CHANNELS`).
    Returns:
        uint8 array of shape ``mask.shape[:-1]``: 0 background, 1 NCR/NET, 2 ED,
        4 ET; where masks overlap ET wins over NCR over ED (:data:`LABEL_PRIORITY`).
    """
    mask = np.asarray(mask)
    labels = np.zeros(mask.shape[:-1], np.uint8)
    for region in reversed(LABEL_PRIORITY):  # lowest priority first, overwritten by higher
        labels[mask[..., list(mask_channels).index(region)] != 0] = LABEL_VALUES[region]
    return labels


def count_overlaps(mask: np.ndarray) -> int:
    """Number of voxels / pixels of ``mask`` (..., 3) that are in more than one region."""
    return int(np.count_nonzero(np.count_nonzero(np.asarray(mask), axis=-1) > 1))


def _read_volume(files: Sequence[Path | str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z, 4) float32, mask (X, Y, Z, 3) bool); None entries are zeros."""
    present = [Path(p) for p in files if p is not None]
    if not present:
        raise DataError("no slice file to read (every slice of the volume is missing).", None, "check the folder.")
    image = mask = None
    reference = present[0]
    for index, path in enumerate(files):
        if path is None:
            continue
        slice_image, slice_mask = read_slice(path)
        if image is None:
            height, width = slice_image.shape[:2]
            image = np.zeros((height, width, len(files), slice_image.shape[2]), np.float32)
            mask = np.zeros((height, width, len(files), slice_mask.shape[2]), bool)
            reference = Path(path)
        elif slice_image.shape[:2] != image.shape[:2]:
            raise DataError(
                f"slice is {slice_image.shape[0]} x {slice_image.shape[1]} but {reference.name} of the same "
                f"volume is {image.shape[0]} x {image.shape[1]}.",
                path,
                "all slices of a volume must have the same size: replace the odd file.",
            )
        image[:, :, index] = slice_image
        mask[:, :, index] = slice_mask
    return image, mask


def read_volume(
    files: Sequence[Path | str | None], mask_channels: Sequence[str] = MASK_CHANNELS
) -> tuple[np.ndarray, np.ndarray]:
    """Read one volume from its slice files (e.g. ``scan[n]`` of :func:`scan_kaggle_h5`).

    Slice ``files[z]`` becomes plane ``[:, :, z]``: the arrays are (X, Y, Z) like the
    NIfTI release (240, 240, 155), with X, Y the slice's first and second axis.

    Args:
        files: slice files in slice order; a ``None`` entry (a gap) is read as zeros.
        mask_channels: region of each mask channel (default :data:`MASK_CHANNELS`).
    Returns:
        (image, label): image (X, Y, Z, 4) float32, channels in the file's order
        (:data:`IMAGE_CHANNELS` says which sequence each is; intensities as stored,
        arbitrary units); label (X, Y, Z) uint8 BraTS labels 0/1/2/4
        (:func:`masks_to_labels`; overlaps resolved ET > NCR > ED).
    Raises:
        DataError: a file fails :func:`read_slice`'s checks, slices of the volume
            differ in size, or every entry is None. The message names the file.
    """
    if sorted(mask_channels) != sorted(LABEL_VALUES):
        raise ConfigError(f"mask_channels {tuple(mask_channels)} must name each of {tuple(LABEL_VALUES)} once.")
    image, mask = _read_volume(files)
    return image, masks_to_labels(mask, mask_channels)
