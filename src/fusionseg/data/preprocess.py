"""Preprocessing computed once per (case, preprocessing config) and cached.

Steps (DESIGN.md): load every modality and the label map, crop to the foreground
(brain) bounding box, normalise each modality by its kind, optionally resample to
``target_spacing`` (:meth:`PreparedCase.to_box` takes predictions back), and store arrays as
``.npy`` (read back with ``np.load(mmap_mode="r")``). The cache folder is keyed by
the hash of :class:`~fusionseg.config.PreprocessConfig` and each case records a
fingerprint of its source files (path, size, mtime): a re-run reads the cache,
not NIfTI, and a changed source file is re-processed.

Normalisation by modality name:
- MRI (t1, t1ce, t2, flair and any other name): clip at the ``clip_percentile`` of
  brain voxels, z-score over brain voxels, background 0.
- PET (SUV): clip to ``suv_range`` and scale to [0, 1].
- CT (HU): clip to ``hu_window`` and scale to [0, 1].
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionseg.config import PreprocessConfig
from fusionseg.constants import CT, PET, LabelScheme
from fusionseg.data.cases import Case
from fusionseg.data.io import (
    axial_axis,
    current_umask,
    load_nifti,
    read_all_channels,
    read_array,
    sweep_stale_temps,
    temp_prefix,
    voxel_spacing,
)
from fusionseg.errors import DataError

#: Cache format; 2: arrays stored with the axial axis first (one contiguous read per
#: axial slice); 3: one entry per (case, input modalities), since the brain mask, crop
#: and normalisation follow the modalities a run uses.
CACHE_VERSION = 3


def default_cache_dir() -> Path:
    env = os.environ.get("FUSIONSEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fusionseg"


@dataclass
class PreparedCase:
    """A preprocessed case.

    Attributes:
        case_id: the case identifier.
        modalities: channel order of ``image``.
        image: float32 (C, X, Y, Z) normalised, cropped to ``bbox`` (may be a memmap).
        label: uint8 (X, Y, Z) class indices of the label scheme, cropped; None if the
            case has no label.
        bbox: ((x0, x1), (y0, y1), (z0, z1)) crop window in the original grid.
        original_shape: (X, Y, Z) of the source grid.
        affine: 4x4 source affine.
        spacing: voxel size in mm.
        axial_axis: array axis running inferior-superior (slice axis).
    """

    case_id: str
    modalities: tuple[str, ...]
    image: np.ndarray
    label: np.ndarray | None
    bbox: tuple[tuple[int, int], ...]
    original_shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    axial_axis: int

    def select(self, modalities: list[str] | tuple[str, ...]) -> np.ndarray:
        """Channels of ``image`` for the named modalities, in that order (a view
        when the order is unchanged)."""
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise KeyError(f"case {self.case_id}: modalities {missing} not available (have {list(self.modalities)})")
        idx = [self.modalities.index(m) for m in modalities]
        if idx == list(range(len(self.modalities))):
            return self.image
        return self.image[idx]

    def uncrop(self, volume: np.ndarray, fill=0) -> np.ndarray:
        """Place a cropped (X', Y', Z') array (on the crop window's source grid, see
        :meth:`to_box`) back into the original grid."""
        out = np.full(self.original_shape, fill, dtype=volume.dtype)
        out[tuple(slice(a, b) for a, b in self.bbox)] = volume
        return out

    @property
    def box_shape(self) -> tuple[int, int, int]:
        """(X', Y', Z') of the crop window on the source grid."""
        return tuple(int(b - a) for a, b in self.bbox)

    @property
    def resampled(self) -> bool:
        """True when ``image`` is on a resampled grid (``preprocess.target_spacing``)."""
        return tuple(self.image.shape[1:]) != self.box_shape

    def to_box(self, probabilities):
        """(K, *working grid) class probabilities (numpy or torch) -> (K, X', Y', Z') on
        the crop window's source grid, trilinear (unchanged when not resampled)."""
        if not self.resampled:
            return probabilities
        return resize(probabilities, self.box_shape, "trilinear")

    def crop(self, volume: np.ndarray) -> np.ndarray:
        """An original-grid (X, Y, Z) label map on this case's working grid: cropped
        to ``bbox`` and, when resampled, nearest-neighbour resized to ``image``."""
        box = volume[tuple(slice(a, b) for a, b in self.bbox)]
        return resize(box[None], self.image.shape[1:], "nearest-exact")[0] if self.resampled else box


def resampled_shape(shape, spacing, target) -> tuple[int, ...]:
    """Grid size that covers ``shape`` voxels of ``spacing`` mm at ``target`` mm."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resize(volume, shape, mode: str):
    """(C, *spatial) array (numpy or torch, returned as the same kind and dtype) resized
    to (C, *shape) by ``torch.nn.functional.interpolate`` (``trilinear`` for
    intensities and probabilities, ``nearest-exact`` for labels; align_corners False:
    voxel centres map by the physical extent)."""
    import torch
    import torch.nn.functional as F

    is_numpy = isinstance(volume, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(volume)) if is_numpy else volume
    if not t.dtype.is_floating_point and not mode.startswith("nearest"):
        raise ValueError(f"resize: an integer array ({t.dtype}) takes a nearest mode, not {mode!r}")
    kwargs = {"align_corners": False} if mode in ("linear", "bilinear", "trilinear") else {}
    out = F.interpolate(t[None].float(), size=tuple(int(s) for s in shape), mode=mode, **kwargs)[0].to(t.dtype)
    return out.numpy() if is_numpy else out


def foreground_bbox(mask: np.ndarray, margin: int = 0) -> tuple[tuple[int, int], ...]:
    """Bounding box (half-open, per axis) of a boolean mask, grown by ``margin``."""
    if not mask.any():
        return tuple((0, s) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def normalise(volume: np.ndarray, modality: str, brain: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Normalise one modality volume (float32 in, float32 out, same shape)."""
    if modality == PET:
        lo, hi = cfg.suv_range
        return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if modality == CT:
        lo, hi = cfg.hu_window
        return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    out = np.zeros_like(volume, dtype=np.float32)
    values = volume[brain]
    if values.size == 0:
        return out
    top = np.percentile(values, cfg.clip_percentile)
    values = np.minimum(values, top)
    mean, std = float(values.mean()), float(values.std())
    out[brain] = (values - mean) / (std if std > 1e-8 else 1.0)
    return out


def _fingerprint(case: Case) -> dict:
    files = [ref.path for ref in case.images.values()] + ([case.label] if case.label else [])
    info = {}
    for f in files:
        st = Path(f).stat()
        info[str(Path(f).resolve())] = [st.st_size, int(st.st_mtime_ns)]
    return info


def prepare_case_arrays(
    case: Case, scheme: LabelScheme, cfg: PreprocessConfig, modalities: tuple[str, ...] | None = None
) -> PreparedCase:
    """Load and preprocess one case in memory (no cache).

    Raises:
        DataError: missing/corrupt file, shape mismatch, NaN voxels, unknown labels,
            empty brain; each names the file and the fix.
    """
    modalities = tuple(modalities or case.modalities)
    arrays, affine, spacing, shape, first = [], None, None, None, None
    four_d: dict[Path, np.ndarray] = {}
    for m in modalities:
        if m not in case.images:
            raise DataError(
                f"case {case.case_id} has no {m!r} image.",
                case.images and next(iter(case.images.values())).path.parent,
                f"provide the {m} file or drop {m!r} from data.modalities.",
            )
        ref = case.images[m]
        img = load_nifti(ref.path)
        if ref.channel is not None:
            # modalities stored as channels of one 4-D file (MSD): decompress it once
            if ref.path not in four_d:
                four_d[ref.path] = read_all_channels(img, ref.path)
            if not 0 <= ref.channel < four_d[ref.path].shape[3]:
                raise DataError(
                    f"has {four_d[ref.path].shape[3]} channels, no channel {ref.channel}.",
                    ref.path,
                    "check dataset.json channel names against the images.",
                )
            vol = four_d[ref.path][..., ref.channel]
        else:
            vol = read_array(img, ref.path, channel=ref.channel)
        if shape is None:
            shape, affine, spacing, first = vol.shape, img.affine.astype(np.float64), voxel_spacing(img), ref
        elif vol.shape != shape:
            raise DataError(
                f"shape {vol.shape} differs from {shape} of {first}.",
                ref.path,
                "resample all modalities of a case to one grid.",
            )
        if not np.isfinite(vol).all():
            bad = int((~np.isfinite(vol)).sum())
            raise DataError(
                f"{bad} NaN/inf voxel(s).", ref.path, "replace non-finite voxels (e.g. with 0) or re-export the image."
            )
        arrays.append(vol)
    label = None
    if case.label is not None:
        img = load_nifti(case.label)
        seg = read_array(img, case.label, dtype=np.int64)
        if seg.shape != shape:
            raise DataError(
                f"label shape {seg.shape} differs from image shape {shape}.",
                case.label,
                "resample the segmentation onto the image grid.",
            )
        unknown = scheme.unknown_values(seg)
        if unknown:
            raise DataError(
                f"label values {unknown} are not in scheme {scheme.name!r} {list(scheme.values)}.",
                case.label,
                "pick the right --format/--scheme or convert the labels.",
            )
        label = scheme.to_classes(seg)
    stack = np.stack(arrays)  # (C, X, Y, Z)
    if all(m in (PET, CT) for m in modalities):
        brain = np.ones(shape, dtype=bool)
    else:
        brain = np.any(stack[[i for i, m in enumerate(modalities) if m not in (PET, CT)]] != 0, axis=0)
        if not brain.any():
            raise DataError(
                "all images are zero: no brain voxels.", first.path, "check the case's image files; they hold no data."
            )
    bbox = foreground_bbox(brain, cfg.crop_margin) if cfg.crop == "foreground" else tuple((0, s) for s in shape)
    window = tuple(slice(a, b) for a, b in bbox)
    brain_c = brain[window]
    image = np.stack([normalise(stack[i][window], m, brain_c, cfg) for i, m in enumerate(modalities)])
    label = None if label is None else np.ascontiguousarray(label[window]).astype(np.uint8)
    if cfg.target_spacing is not None:
        grid = resampled_shape(image.shape[1:], spacing, cfg.target_spacing)
        image = resize(image, grid, "trilinear")
        label = None if label is None else resize(label[None], grid, "nearest-exact")[0]
    return PreparedCase(
        case_id=case.case_id,
        modalities=modalities,
        image=image.astype(np.float32),
        label=label,
        bbox=bbox,
        original_shape=tuple(int(s) for s in shape),
        affine=affine,
        spacing=spacing,
        axial_axis=axial_axis(affine),
    )


class PreprocessCache:
    """On-disk cache of :class:`PreparedCase` arrays.

    Layout: ``<root>/v<CACHE_VERSION>-<config key>/<case id>/<modalities joined by
    +>/{image.npy, label.npy, meta.json}`` (the brain mask comes from the case's
    modalities, so a run on [t1ce, flair] has entries of its own); the arrays are
    stored with the axial axis first and read back (memory-mapped) as (C, X, Y, Z) /
    (X, Y, Z) views. Every case folder is written to a temporary folder and renamed,
    so an interrupted run leaves nothing half-written.
    """

    def __init__(self, cfg: PreprocessConfig, root: Path | None = None):
        self.cfg = cfg
        self.root = Path(root or default_cache_dir()) / f"v{CACHE_VERSION}-{cfg.key()}"

    def _case_dir(self, case: Case) -> Path:
        return self.root / case.case_id / "+".join(case.modalities)

    def _fresh_meta(self, case: Case, scheme: LabelScheme) -> dict | None:
        """The cached metadata of ``case`` if its entry matches the source files, the
        label scheme and the modalities; None otherwise."""
        meta_path = self._case_dir(case) / "meta.json"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            fingerprint = _fingerprint(case)
        except (OSError, ValueError):
            return None
        if (
            meta.get("fingerprint") == fingerprint
            and meta.get("scheme") == scheme.name
            and tuple(meta.get("modalities", ())) == case.modalities
        ):
            return meta
        return None

    def is_fresh(self, case: Case, scheme: LabelScheme) -> bool:
        """Whether :meth:`load` reads ``case`` from the cache (no preprocessing)."""
        return self._fresh_meta(case, scheme) is not None

    def load(self, case: Case, scheme: LabelScheme) -> PreparedCase:
        """The cached case if fresh, otherwise preprocess and store it first."""
        folder = self._case_dir(case)
        meta = self._fresh_meta(case, scheme)
        if meta is not None:
            return self._read(folder, meta)
        prepared = prepare_case_arrays(case, scheme, self.cfg)
        self._write(folder, prepared, _fingerprint(case), scheme)
        return self._read(folder, json.loads((folder / "meta.json").read_text()))

    def _write(self, folder: Path, p: PreparedCase, fingerprint: dict, scheme: LabelScheme) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(folder.parent)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(folder.name), dir=folder.parent))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        try:
            # axial axis first on disk: a 2-D training slice is then one contiguous read
            # instead of one cache line per voxel (about 10x less memory traffic)
            np.save(tmp / "image.npy", np.ascontiguousarray(np.moveaxis(p.image, 1 + p.axial_axis, 0)))
            if p.label is not None:
                np.save(tmp / "label.npy", np.ascontiguousarray(np.moveaxis(p.label, p.axial_axis, 0)))
            meta = {
                "case_id": p.case_id,
                "modalities": list(p.modalities),
                "bbox": [list(b) for b in p.bbox],
                "original_shape": list(p.original_shape),
                "affine": p.affine.tolist(),
                "spacing": list(p.spacing),
                "axial_axis": p.axial_axis,
                "has_label": p.label is not None,
                "fingerprint": fingerprint,
                "scheme": scheme.name,
                "config": self.cfg.model_dump(mode="json"),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            self._publish(tmp, folder, meta)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _publish(tmp: Path, folder: Path, meta: dict) -> None:
        """Move the finished ``tmp`` folder to ``folder``. Safe when several processes
        (e.g. Ray workers) write the same case at once: an entry another process has
        just published with the same fingerprint is kept (``tmp`` is discarded); a stale
        entry is first moved aside (one rename), then deleted."""
        for _ in range(3):
            try:
                os.replace(tmp, folder)  # atomic; fails if ``folder`` exists and is not empty
                return
            except OSError:
                if not folder.exists():
                    continue
            try:
                current = json.loads((folder / "meta.json").read_text())
            except (OSError, ValueError):
                current = {}
            if (
                current.get("fingerprint") == meta["fingerprint"]
                and current.get("config") == meta["config"]
                and current.get("scheme") == meta["scheme"]
            ):
                shutil.rmtree(tmp, ignore_errors=True)  # the same entry, published by another writer
                return
            stale = Path(tempfile.mkdtemp(prefix=temp_prefix(f"{folder.name}.stale"), dir=folder.parent))
            try:
                os.replace(folder, stale / "old")
            except OSError:
                pass  # another writer moved it first
            shutil.rmtree(stale, ignore_errors=True)
        raise OSError(f"could not publish the cache entry {folder} (other writers kept replacing it)")

    @staticmethod
    def _read(folder: Path, meta: dict) -> PreparedCase:
        axis = int(meta["axial_axis"])
        # stored axial-first; exposed as the usual (C, X, Y, Z) / (X, Y, Z) views
        image = np.moveaxis(np.load(folder / "image.npy", mmap_mode="r"), 0, 1 + axis)
        label = np.moveaxis(np.load(folder / "label.npy", mmap_mode="r"), 0, axis) if meta["has_label"] else None
        return PreparedCase(
            case_id=meta["case_id"],
            modalities=tuple(meta["modalities"]),
            image=image,
            label=label,
            bbox=tuple(tuple(b) for b in meta["bbox"]),
            original_shape=tuple(meta["original_shape"]),
            affine=np.asarray(meta["affine"]),
            spacing=tuple(meta["spacing"]),
            axial_axis=int(meta["axial_axis"]),
        )
