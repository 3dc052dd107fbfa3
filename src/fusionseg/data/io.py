"""NIfTI reading and writing (nibabel) with errors that name the file, geometry
helpers (spacing, axial axis) and atomic writes."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from fusionseg.data.cases import ImageRef
from fusionseg.errors import DataError, OutputError


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file (header only; data are read lazily).

    Raises:
        DataError: the file is missing or not a readable NIfTI image.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found.", path, "check the path or restore the file.")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise DataError(
            f"cannot read NIfTI ({exc}).", path, "re-export or re-download the file; it is corrupt or not NIfTI."
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"not a NIfTI image ({type(img).__name__}).", path, "convert it to .nii.gz first.")
    return img


def read_array(img: nib.Nifti1Image, path: str | Path, dtype=np.float32, channel: int | None = None) -> np.ndarray:
    """Read the voxel data of ``img`` (3-D, or one channel of a 4-D image).

    Returns:
        array of shape (X, Y, Z) and the requested dtype (scaling applied).
    Raises:
        DataError: data cannot be decoded, or the dimensionality is wrong.
    """
    try:
        if channel is None:
            data = np.asanyarray(img.dataobj)
        else:
            if img.ndim != 4:
                raise DataError(
                    f"expected a 4-D image to take channel {channel}, got {img.ndim}-D.",
                    path,
                    "check dataset.json channel names against the images.",
                )
            data = np.asanyarray(img.dataobj[..., channel])
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot decode voxel data ({exc}).", path, "the file is truncated or corrupt: re-export or re-download it."
        ) from exc
    data = np.squeeze(data) if data.ndim > 3 else data
    if data.ndim != 3:
        raise DataError(
            f"expected a 3-D volume, got shape {data.shape}.", path, "give one 3-D volume per modality file."
        )
    return np.asarray(data, dtype=dtype)


def read_all_channels(img: nib.Nifti1Image, path: str | Path, dtype=np.float32) -> np.ndarray:
    """Read every channel of a 4-D image at once, (X, Y, Z, C) of ``dtype``.

    One pass over the file: reading channels one by one from a gzipped NIfTI
    decompresses the file from its start for each of them (MSD Task01 keeps the four
    MRI modalities in one 4-D file).

    Raises:
        DataError: data cannot be decoded, or the image is not 4-D.
    """
    if img.ndim != 4:
        raise DataError(
            f"expected a 4-D image with one channel per modality, got {img.ndim}-D.",
            path,
            "check dataset.json channel names against the images.",
        )
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise DataError(
            f"cannot decode voxel data ({exc}).", path, "the file is truncated or corrupt: re-export or re-download it."
        ) from exc
    return np.asarray(data, dtype=dtype)


def load_volume(ref: ImageRef | str | Path, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Load one image volume.

    Args:
        ref: an :class:`ImageRef` (file + optional 4-D channel) or a path.
        dtype: output dtype.
    Returns:
        (array (X, Y, Z), affine (4, 4) float64).
    Raises:
        DataError: missing, corrupt or non-3-D file.
    """
    if not isinstance(ref, ImageRef):
        ref = ImageRef(Path(ref))
    img = load_nifti(ref.path)
    return read_array(img, ref.path, dtype=dtype, channel=ref.channel), img.affine.astype(np.float64)


def voxel_spacing(img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes, from the header."""
    return tuple(float(z) for z in img.header.get_zooms()[:3])


def axial_axis(affine: np.ndarray) -> int:
    """Array axis that runs inferior-superior (the axis to slice for axial slices)."""
    codes = nib.aff2axcodes(affine)
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            return axis
    return 2


def affines_close(a: np.ndarray, b: np.ndarray, atol: float = 1e-3) -> bool:
    """Whether two affines agree within ``atol`` (mm) element-wise."""
    return bool(np.allclose(a, b, atol=atol, rtol=0))


def current_umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: This host in temporary names (its first label, characters other than letters,
#: digits and "_" replaced): ``.<final name>.~<host>-<pid>.<random>``.
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"
_TEMP_NAME = re.compile(r"^\..*\.~(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.")
_swept: set[str] = set()


def temp_prefix(name: str) -> str:
    """Prefix of a temporary file or folder written beside ``name``: hidden (every
    reader skips dot files) and tagged with this host and process, so that
    :func:`sweep_stale_temps` can tell a dead writer's leftovers from a live one's."""
    return f".{name}.~{_HOST}-{os.getpid()}."


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def sweep_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporaries (:func:`temp_prefix`) that processes of this host left
    in ``folder`` when they were killed mid-write (kill -9, out of memory, power).

    Runs once per folder and process (the first atomic write there). Temporaries of
    running processes, and of other hosts (a shared file system), are kept.

    Returns:
        The paths deleted.
    """
    folder = Path(folder)
    key = os.path.abspath(folder)
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or m["host"] != _HOST or _process_alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def atomic_path(final: Path):
    """Context manager yielding a temporary path beside ``final``; renamed onto
    ``final`` only if the block succeeds, removed otherwise (no half-written files).
    The file gets the permissions a plain ``open`` would give (0666 less the umask),
    so collaborators can read results where the umask allows it. A writer killed
    mid-write leaves its hidden temporary behind; the next write into the folder
    deletes it (:func:`sweep_stale_temps`)."""
    return _AtomicPath(Path(final))


class _AtomicPath:
    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(self.final.parent)
        suffix = "".join(self.final.suffixes) or ".tmp"
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(self.final.name), suffix=suffix, dir=self.final.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            if self.tmp.exists():  # mkstemp makes it 0600: give it the umask's permissions
                os.chmod(self.tmp, 0o666 & ~current_umask())
            os.replace(self.tmp, self.final)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def save_label_map(labels: np.ndarray, reference: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write a label map with the reference image's exact affine and header.

    Args:
        labels: integer array (X, Y, Z), shape equal to the reference's.
        reference: NIfTI whose affine and header are copied (e.g. the case's FLAIR).
        out: output path (.nii.gz).
        overwrite: replace an existing file.
    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        DataError: shape mismatch with the reference.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it.")
    ref = load_nifti(reference)
    if tuple(labels.shape) != tuple(ref.shape[:3]):
        raise DataError(
            f"label map shape {labels.shape} differs from the reference {ref.shape[:3]}.",
            reference,
            "predict on the full, uncropped case grid.",
        )
    header = ref.header.copy()
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.int16
    header.set_data_dtype(dtype)
    header["scl_slope"] = 1.0
    header["scl_inter"] = 0.0
    img = type(ref)(labels.astype(dtype), ref.affine, header)
    img.set_qform(*ref.get_qform(coded=True))
    img.set_sform(*ref.get_sform(coded=True))
    with atomic_path(out) as tmp:
        nib.save(img, str(tmp))
    return out


#: Written by ``fusionseg predict`` beside its label maps: the label convention they
#: are in, so ``fusionseg evaluate`` can state (and check) what it compares.
LABEL_CONVENTION_JSON = "label_convention.json"


def write_label_convention(folder: str | Path, scheme, **info) -> Path:
    """Write ``<folder>/label_convention.json`` (atomically): the label scheme of the
    label maps in ``folder`` (:func:`fusionseg.constants.scheme_to_dict`) and ``info``
    (JSON-able; e.g. which convention was chosen and why)."""
    import json

    from fusionseg.constants import scheme_to_dict

    path = Path(folder) / LABEL_CONVENTION_JSON
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"label_scheme": scheme_to_dict(scheme), **info}, indent=2) + "\n")
    return path


def read_label_convention(folder: str | Path):
    """The label scheme recorded in ``<folder>/label_convention.json``; None when the
    folder has no such file.

    Raises:
        DataError: the file exists but cannot be read.
    """
    import json

    from fusionseg.constants import scheme_from_dict

    path = Path(folder) / LABEL_CONVENTION_JSON
    if not path.is_file():
        return None
    try:
        return scheme_from_dict(json.loads(path.read_text())["label_scheme"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"cannot read the label convention ({exc!r}).",
            path,
            "delete the file (the label maps are then assumed to be in the ground "
            "truth's convention) or re-run fusionseg predict.",
        ) from exc


def ensure_writable(folder: Path) -> None:
    """Check, before any work, that ``folder`` can be created or written: its nearest
    existing ancestor must be a writable folder (nothing is created here).

    Raises:
        OutputError: an ancestor is a file, or the location is not writable.
    """
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{folder}: cannot create it, {probe} is a file. Fix: choose another --output-dir.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"{folder}: {probe} is not writable (read-only disk or no permission). Fix: choose another --output-dir."
        )
