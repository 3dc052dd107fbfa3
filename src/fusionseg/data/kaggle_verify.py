"""Measuring the image channel order of the Kaggle "BraTS 2020 HDF5 slice" release
against a NIfTI copy of the same cases (:func:`match_channels`, :func:`verify_channel_order`);
why it is needed: :mod:`fusionseg.data.kaggle_h5`."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionseg.data.cases import BRATS2018_SUFFIXES
from fusionseg.errors import DataError

from fusionseg.data.kaggle_h5 import IMAGE_CHANNELS, _ranges, _read_volume, scan_kaggle_h5


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
