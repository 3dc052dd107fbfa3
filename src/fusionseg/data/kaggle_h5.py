"""Reader and converter for the Kaggle "BraTS 2020 HDF5 slice" release.

The Kaggle dataset ``awsaf49/brats2020-training-data`` (folder
``BraTS2020_training_data/content/data/``) stores every axial slice of the 369 BraTS
2020 training cases as one file ``volume_<N>_slice_<M>.h5`` (N = volume 1..369, M =
slice 0..154) with two datasets:

- ``image``: float, (H, W, 4) - the four MRI sequences as channels (240 x 240);
- ``mask``: (H, W, 3) - three binary tumour masks, one per sub-region.

Beside them there is often a ``meta_data.csv`` / ``name_mapping.csv`` /
``BraTS20 Training Metadata.csv``; this module does not read them (they are
optional and their paths point to the Kaggle notebook's mount).

This module scans such a folder (:func:`scan_kaggle_h5`), reads one volume with full
validation (:func:`read_volume`), and converts volumes into the BraTS 2018-2021 NIfTI
layout that :func:`fusionseg.data.cases.discover` recognises as ``brats2018``
(:func:`convert_kaggle_h5`): ``<out>/BraTS20_Training_<NNN>/BraTS20_Training_<NNN>_
{t1,t1ce,t2,flair,seg}.nii.gz`` with labels 0, 1 NCR/NET, 2 ED, 4 ET (scheme
``brats2017``). Since the channel order of ``image`` cannot be checked without the
NIfTI release, :func:`match_channels` / :func:`verify_channel_order` measure it
against a NIfTI copy of the same case.

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
    :func:`verify_channel_order` on one case of which you have both releases.

Other assumptions (not documented by the release either):

- volume N is BraTS 2020 training subject ``BraTS20_Training_<NNN>`` (N zero-padded
  to 3 digits); the converted case is named so, but a low correlation in
  :func:`verify_channel_order` for every channel would show the mapping is wrong;
- slice M is the NIfTI's axial index z = M, and a slice's first array axis is the
  NIfTI's first axis (X), its second the second (Y): ``image[:, :, c]`` of slice M
  is ``sequence[:, :, M]`` (:func:`match_channels` also reports the in-plane flip /
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
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from fusionseg.constants import BRATS2017, FLAIR, MRI_MODALITIES, T1, T1CE, T2
from fusionseg.data.cases import BRATS2018_SUFFIXES
from fusionseg.errors import ConfigError, DataError, OutputError

#: Sequence (canonical modality name) of each channel of the H5 ``image`` dataset, in
#: channel order. Low confidence, see the module docstring; override with
#: ``image_channels=`` and check with :func:`verify_channel_order`.
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


# ---------------------------------------------------------------------------
# Converting
# ---------------------------------------------------------------------------


def _case_files(folder: Path, cid: str) -> dict[str, Path]:
    """Modality/"seg" -> the file written for case ``cid`` in ``folder``."""
    files = {modality: folder / f"{cid}_{_FILE_SUFFIX[modality]}.nii.gz" for modality in MRI_MODALITIES}
    files["seg"] = folder / f"{cid}_seg.nii.gz"
    return files


def _nifti(data: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm")
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    return img


def _write_case(dst: Path, cid: str, image: np.ndarray, labels: np.ndarray, image_channels, overwrite: bool) -> None:
    """Write one case into a hidden temporary folder in ``dst``, then rename it into
    place (an interrupted write leaves no ``<dst>/<cid>``, only a hidden temporary that
    :func:`fusionseg.data.io.sweep_stale_temps` deletes later)."""
    from fusionseg.data.io import current_umask, temp_prefix

    final = dst / cid
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(cid), dir=dst))
    try:
        files = _case_files(tmp, cid)
        for channel, modality in enumerate(image_channels):
            nib.save(_nifti(np.ascontiguousarray(image[..., channel])), str(files[modality]))
        nib.save(_nifti(labels), str(files["seg"]))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        if final.exists() and overwrite:
            # Move the old case aside (hidden), the new one in, then delete the old.
            trash = Path(tempfile.mkdtemp(prefix=temp_prefix(cid), dir=dst))
            os.rename(final, trash / cid)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(trash / cid, final)
                raise
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class ConversionReport:
    """What :func:`convert_kaggle_h5` did.

    Attributes:
        root: the output folder (a ``brats2018`` dataset for
            :func:`fusionseg.data.cases.discover`).
        case_ids: every requested case, in volume order (converted or skipped).
        converted: cases written by this call.
        skipped: cases already complete in ``root`` (not rewritten).
        ignored: files in the source folder that are not slice files.
        gaps: case id -> slice numbers that were missing and written as zeros.
        overlaps: case id -> voxels where mask channels overlapped (resolved by
            :data:`LABEL_PRIORITY`); cases without overlap are absent.
        image_channels: the channel order the images were read with.
    """

    root: Path
    case_ids: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    gaps: dict[str, list[int]] = field(default_factory=dict)
    overlaps: dict[str, int] = field(default_factory=dict)
    image_channels: tuple[str, ...] = IMAGE_CHANNELS

    def lines(self) -> list[str]:
        """Human-readable summary, one line per fact."""
        out = [
            f"{self.root}: {len(self.converted)} case(s) converted, {len(self.skipped)} already present (skipped).",
            f"image channels read as {', '.join(self.image_channels)} (unverified; see verify_channel_order).",
        ]
        if self.ignored:
            names = ", ".join(p.name for p in self.ignored[:5]) + (" ..." if len(self.ignored) > 5 else "")
            out.append(f"{len(self.ignored)} file(s) in the source are not slices and were ignored: {names}")
        for cid, missing in self.gaps.items():
            out.append(f"{cid}: slices {_ranges(missing)} missing, written as zeros.")
        for cid, n in self.overlaps.items():
            out.append(f"{cid}: {n} voxel(s) in several mask channels, labelled by priority ET > NCR > ED.")
        return out


def convert_kaggle_h5(
    src: str | Path,
    dst: str | Path,
    *,
    volumes: Iterable[int] | None = None,
    overwrite: bool = False,
    allow_gaps: bool = False,
    depth: int | None = None,
    image_channels: Sequence[str] = IMAGE_CHANNELS,
    mask_channels: Sequence[str] = MASK_CHANNELS,
    progress: bool = True,
) -> ConversionReport:
    """Convert the Kaggle BraTS 2020 HDF5 slices into BraTS-layout NIfTI cases.

    Each volume N becomes ``<dst>/BraTS20_Training_<NNN>/BraTS20_Training_<NNN>_
    {t1,t1ce,t2,flair,seg}.nii.gz``: images float32 (X, Y, Z) = (240, 240, 155) for
    the release, intensities as stored; seg uint8 with BraTS 2018-2020 labels 0, 1
    NCR/NET, 2 ED, 4 ET; affine :data:`AFFINE` (1 mm isotropic, see the module
    docstring). ``fusionseg.data.cases.discover(dst)`` finds them as format
    ``brats2018``, scheme ``brats2017``.

    Every case is written to a hidden temporary folder in ``dst`` and renamed into
    place, so an interrupted conversion leaves no half-written case; rerunning skips
    the complete ones (their slices are not read again).

    Args:
        src: folder of the ``volume_<N>_slice_<M>.h5`` files (:func:`scan_kaggle_h5`).
        dst: output folder (created).
        volumes: volume numbers to convert; None = all found.
        overwrite: rewrite cases that already exist in ``dst``.
        allow_gaps: write missing slices as zeros instead of failing (reported).
        depth: slices per volume (:func:`scan_kaggle_h5`); None = inferred.
        image_channels: sequence of each image channel (:data:`IMAGE_CHANNELS`).
        mask_channels: region of each mask channel (:data:`MASK_CHANNELS`).
        progress: show a progress bar (on stderr).
    Returns:
        a :class:`ConversionReport` (``.case_ids``, ``.converted``, ``.skipped``,
        ``.gaps``, ``.overlaps``, ``.ignored``; ``.lines()`` for printing).
    Raises:
        DataError: see :func:`scan_kaggle_h5` and :func:`read_volume` (missing,
            corrupt or malformed files, gaps); a requested volume is not in ``src``.
        OutputError: ``dst`` cannot be created or written, or a case folder in
            ``dst`` exists but is incomplete (not written by this function) and
            ``overwrite`` is False.
        ConfigError: ``image_channels`` / ``mask_channels`` are not permutations of
            the four sequences / three regions.
    """
    from rich.console import Console

    from fusionseg.data.io import ensure_writable, sweep_stale_temps
    from fusionseg.progress import make_progress

    _check_orders(image_channels, mask_channels)
    src, dst = Path(src), Path(dst)
    scan = scan_kaggle_h5(src, allow_gaps=allow_gaps, depth=depth)
    if volumes is None:
        selected = list(scan)
    else:
        selected = sorted({int(v) for v in volumes})
        unknown = [v for v in selected if v not in scan]
        if unknown:
            raise DataError(
                f"volume(s) {_ranges(unknown)} not found; the folder has volumes {_ranges(scan)}.",
                src,
                "choose volumes that exist in the folder.",
            )
    ensure_writable(dst)
    dst.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(dst)
    report = ConversionReport(root=dst, ignored=list(scan.ignored), image_channels=tuple(image_channels))
    with make_progress(disable=not progress, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("Kaggle H5 -> NIfTI", total=len(selected), info="")
        for volume in selected:
            cid = case_id(volume)
            report.case_ids.append(cid)
            bar.update(task, info=cid)
            final = dst / cid
            if final.exists() and not overwrite:
                missing = [p.name for p in _case_files(final, cid).values() if not p.is_file()]
                if missing:
                    raise OutputError(
                        f"{final}: the case folder exists but lacks {', '.join(missing)} (not written by this "
                        "converter, or damaged). Fix: delete the folder, or pass overwrite=True to replace it."
                    )
                report.skipped.append(cid)
                bar.advance(task)
                continue
            image, mask = _read_volume(scan[volume])
            overlap = count_overlaps(mask)
            if overlap:
                report.overlaps[cid] = overlap
            if volume in scan.gaps:
                report.gaps[cid] = list(scan.gaps[volume])
            _write_case(dst, cid, image, masks_to_labels(mask, mask_channels), image_channels, overwrite)
            report.converted.append(cid)
            bar.advance(task)
    return report


# ---------------------------------------------------------------------------
# Verifying the channel order against the NIfTI release
# ---------------------------------------------------------------------------

#: In-plane / slice-order transforms of the H5 volume tried by :func:`match_channels`:
#: name -> (swap X and Y, flip X, flip Y, flip Z), applied in that order.
TRANSFORMS: dict[str, tuple[bool, bool, bool, bool]] = {}
for _swap, _fx, _fy, _fz in itertools.product((False, True), repeat=4):
    _parts = [name for name, on in zip(("transpose", "flip_x", "flip_y", "flip_z"), (_swap, _fx, _fy, _fz)) if on]
    TRANSFORMS["+".join(_parts) or "identity"] = (_swap, _fx, _fy, _fz)
del _swap, _fx, _fy, _fz, _parts


def _transform(volume: np.ndarray, name: str) -> np.ndarray:
    swap, fx, fy, fz = TRANSFORMS[name]
    if swap:
        volume = volume.swapaxes(0, 1)
    if fx:
        volume = volume[::-1]
    if fy:
        volume = volume[:, ::-1]
    if fz:
        volume = volume[:, :, ::-1]
    return volume


def _zscore(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    std = values.std()
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


@dataclass(frozen=True)
class ChannelMatch:
    """Result of :func:`match_channels`.

    Attributes:
        expected: the sequence each H5 channel is assumed to be (row labels).
        sequences: the NIfTI sequences compared with (column labels).
        correlation: (n_channels, n_sequences) Pearson r of H5 channel i with NIfTI
            sequence j under :attr:`transform`, over the brain (voxels where any
            NIfTI sequence is nonzero); 0 where a channel is constant there.
        assignment: the NIfTI sequence matched to each H5 channel (one-to-one, the
            largest summed r; None where there are fewer sequences than channels).
        transform: the transform of the H5 volume (:data:`TRANSFORMS`) under which
            the assignment fits best; "identity" if the release's axes are as assumed.
        score: mean r of the assignment.
        runner_up: mean r of the best *different* assignment (its margin below
            ``score`` says how clear the result is).
        n_voxels: number of brain voxels compared.
    """

    expected: tuple[str, ...]
    sequences: tuple[str, ...]
    correlation: np.ndarray
    assignment: tuple[str | None, ...]
    transform: str
    score: float
    runner_up: float
    n_voxels: int

    @property
    def matches_expected(self) -> bool:
        """Whether every H5 channel matched the sequence it is assumed to be, with
        the axes as assumed (transform "identity")."""
        return self.transform == "identity" and all(
            a == e for a, e in zip(self.assignment, self.expected) if e in self.sequences
        )

    @property
    def order(self) -> tuple[str | None, ...]:
        """The measured channel order: pass it as ``image_channels=`` if it differs."""
        return self.assignment

    def lines(self) -> list[str]:
        """A printable report: the correlation table and the verdict."""
        width = max(8, *(len(s) for s in self.sequences))
        out = [f"Pearson r of each H5 image channel with each NIfTI sequence ({self.n_voxels} brain voxels):"]
        out.append("channel (assumed)   " + "".join(f"{s:>{width + 2}}" for s in self.sequences) + "   best")
        for i, row in enumerate(self.correlation):
            label = f"{i} ({self.expected[i]})" if i < len(self.expected) else str(i)
            cells = "".join(f"{r:>{width + 2}.3f}" for r in row)
            out.append(f"{label:<20}{cells}   {self.assignment[i]}")
        out.append(f"best transform of the H5 axes: {self.transform}")
        out.append(f"mean r of the best assignment {self.score:.3f}, of the runner-up {self.runner_up:.3f}")
        if self.matches_expected:
            out.append(f"OK: the channel order {', '.join(self.expected)} is confirmed.")
        else:
            out.append(
                f"MISMATCH: measured order {', '.join(str(a) for a in self.assignment)} (axes: {self.transform}); "
                f"assumed {', '.join(self.expected)}. Pass image_channels={tuple(self.assignment)!r}"
                + (" and check the axis transform." if self.transform != "identity" else ".")
            )
        if self.score < 0.5:
            out.append("Warning: low correlations - the H5 volume and the NIfTI case may not be the same patient.")
        return out


def match_channels(
    h5_volume_image: np.ndarray,
    nifti_images: Mapping[str, np.ndarray],
    *,
    expected: Sequence[str] = IMAGE_CHANNELS,
    search_transforms: bool = True,
) -> ChannelMatch:
    """Which NIfTI sequence is each channel of an H5 volume? Measures it.

    Computes the Pearson correlation of every H5 channel with every NIfTI sequence
    over the brain (voxels where any NIfTI sequence is nonzero; Pearson r ignores the
    intensity scaling / normalisation of either release) and picks the one-to-one
    assignment with the largest summed r. With ``search_transforms`` the H5 volume is
    also tried transposed in-plane and flipped along each axis (:data:`TRANSFORMS`);
    the transform with the best assignment is reported.

    Args:
        h5_volume_image: (X, Y, Z, C) H5 volume (:func:`read_volume`'s image).
        nifti_images: sequence name -> (X, Y, Z) NIfTI volume of the same case
            (e.g. ``{"t1": ..., "t1ce": ..., "t2": ..., "flair": ...}``).
        expected: assumed sequence of each H5 channel (default :data:`IMAGE_CHANNELS`).
        search_transforms: also try the axis transforms (else identity only).
    Returns:
        a :class:`ChannelMatch` (``.assignment``, ``.matches_expected``, ``.lines()``).
    Raises:
        DataError: no NIfTI image, shapes that no transform reconciles, an empty brain
            mask, or more than 8 channels/sequences.
    """
    image = np.asarray(h5_volume_image)
    if image.ndim != 4:
        raise DataError(
            f"the H5 volume must be (X, Y, Z, C), got shape {image.shape}.", None, "pass read_volume's image."
        )
    if not nifti_images:
        raise DataError("no NIfTI image to compare with.", None, "pass at least one sequence.")
    names = tuple(nifti_images)
    arrays = [np.asarray(nifti_images[n]) for n in names]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays) or len(shape) != 3:
        raise DataError(
            f"the NIfTI images differ in shape or are not 3-D: {[a.shape for a in arrays]}.",
            None,
            "pass the four 3-D sequences of one case.",
        )
    n_channels, n_sequences = image.shape[3], len(names)
    if max(n_channels, n_sequences) > 8:
        raise DataError("more than 8 channels or sequences to match.", None, "pass at most 8 of each.")
    brain = np.zeros(shape, bool)
    for a in arrays:
        brain |= a != 0
    n_voxels = int(brain.sum())
    if n_voxels < 2:
        raise DataError("the NIfTI images are zero everywhere.", None, "pass the case's NIfTI images.")
    reference = np.stack([_zscore(a[brain]) for a in arrays])  # (S, V)

    candidates = list(TRANSFORMS) if search_transforms else ["identity"]
    if n_channels <= n_sequences:
        permutations = list(itertools.permutations(range(n_sequences), n_channels))  # channel -> sequence
    else:
        permutations = [  # sequence -> channel, turned into channel -> sequence (None = unmatched)
            tuple(p.index(c) if c in p else None for c in range(n_channels))
            for p in itertools.permutations(range(n_channels), n_sequences)
        ]

    best = None
    for name in candidates:
        moved = _transform(image, name)
        if moved.shape[:3] != shape:
            continue
        values = np.stack([_zscore(moved[..., c][brain]) for c in range(n_channels)])  # (C, V)
        corr = values @ reference.T / n_voxels
        scores = sorted(
            (sum(corr[c, s] for c, s in enumerate(p) if s is not None) / min(n_channels, n_sequences), p)
            for p in permutations
        )
        score, perm = scores[-1]
        runner_up = scores[-2][0] if len(scores) > 1 else float("nan")
        if best is None or score > best[0] + 1e-9:
            best = (score, perm, runner_up, name, corr)
    if best is None:
        raise DataError(
            f"the H5 volume is {image.shape[:3]} but the NIfTI images are {shape}, under every axis transform.",
            None,
            "compare the same case of both releases.",
        )
    score, perm, runner_up, name, corr = best
    return ChannelMatch(
        expected=tuple(expected),
        sequences=names,
        correlation=corr,
        assignment=tuple(names[s] if s is not None else None for s in perm),
        transform=name,
        score=float(score),
        runner_up=float(runner_up),
        n_voxels=n_voxels,
    )


def _nifti_sequence(folder: Path, suffix: str) -> Path | None:
    exact = [folder / f"{folder.name}_{suffix}{ext}" for ext in (".nii.gz", ".nii")]
    for path in exact:
        if path.is_file():
            return path
    matches = [
        p for p in sorted(folder.iterdir()) if p.is_file() and re.search(rf"_{re.escape(suffix)}\.nii(\.gz)?$", p.name)
    ]
    return matches[0] if len(matches) == 1 else None


def verify_channel_order(
    h5_folder: str | Path,
    nifti_case: str | Path,
    *,
    volume: int | None = None,
    expected: Sequence[str] = IMAGE_CHANNELS,
    search_transforms: bool = True,
) -> ChannelMatch:
    """Check :data:`IMAGE_CHANNELS` on one case present in both releases.

    Reads volume ``volume`` of the H5 release and the NIfTI case folder (BraTS 2018-
    2021 names: ``<case>/<case>_{t1,t1ce,t2,flair}.nii[.gz]``, e.g. from the Kaggle
    dataset ``awsaf49/brats20-dataset-training-validation`` or the official release)
    and runs :func:`match_channels`. Print ``result.lines()``.

    Args:
        h5_folder: folder of the ``volume_<N>_slice_<M>.h5`` files.
        nifti_case: the case folder, e.g. ``.../BraTS20_Training_001``.
        volume: H5 volume number; None = the number at the end of the case folder's
            name (``BraTS20_Training_001`` -> 1).
        expected: assumed channel order (default :data:`IMAGE_CHANNELS`).
        search_transforms: also try transposed / flipped H5 axes.
    Returns:
        a :class:`ChannelMatch`.
    Raises:
        DataError: the volume or a NIfTI file is missing or unreadable, or the
            volume number cannot be read from the folder name.
    """
    from fusionseg.data.io import load_volume

    nifti_case = Path(nifti_case)
    if not nifti_case.is_dir():
        raise DataError("NIfTI case folder not found.", nifti_case, "give a folder like .../BraTS20_Training_001.")
    if volume is None:
        match = re.search(r"(\d+)$", nifti_case.name)
        if match is None:
            raise DataError(
                "cannot tell the H5 volume number from the folder name.", nifti_case, "pass volume=<N> explicitly."
            )
        volume = int(match[1])
    scan = scan_kaggle_h5(h5_folder, allow_gaps=True)
    if volume not in scan:
        raise DataError(
            f"volume {volume} not found (the folder has volumes {_ranges(scan)}).",
            h5_folder,
            "pass the volume that shows the same patient as the NIfTI case.",
        )
    image, _ = _read_volume(scan[volume])
    nifti: dict[str, np.ndarray] = {}
    for suffix, modality in BRATS2018_SUFFIXES.items():
        path = _nifti_sequence(nifti_case, suffix)
        if path is None:
            raise DataError(
                f"no {nifti_case.name}_{suffix}.nii[.gz] in the case folder.",
                nifti_case,
                "give a BraTS 2018-2021 case folder with the four sequences.",
            )
        nifti[modality] = load_volume(path)[0]
    return match_channels(image, nifti, expected=expected, search_transforms=search_transforms)
