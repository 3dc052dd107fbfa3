"""Converting the Kaggle "BraTS 2020 HDF5 slice" release into the BraTS 2018-2021 NIfTI
layout (:func:`convert_kaggle_h5`); the release and its reader: :mod:`fusionseg.data.kaggle_h5`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from fusionseg.constants import MRI_MODALITIES
from fusionseg.errors import DataError, OutputError

from fusionseg.data.kaggle_h5 import (
    _FILE_SUFFIX,
    AFFINE,
    IMAGE_CHANNELS,
    MASK_CHANNELS,
    _check_orders,
    _ranges,
    _read_volume,
    case_id,
    count_overlaps,
    masks_to_labels,
    scan_kaggle_h5,
)


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
