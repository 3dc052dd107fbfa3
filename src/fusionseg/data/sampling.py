"""2-D axial samplers over preprocessed cases.

Slice selection (``SamplingConfig.mode``):
- ``central``: the K central axial slices of the original volume (S0 uses slices
  72-81 of 155, i.e. K = 10 around slice 77);
- ``tumour``: every axial slice whose label holds any tumour class;
- ``all``: every axial slice of the cropped (brain) volume;
- ``patch``: like ``all``, then a ``patch_size`` window is cut, centred on a tumour
  pixel with probability ``tumour_probability`` (else at a random position).
For slice modes a ``patch_size`` crops the same way; without it whole slices are
zero-padded (centred) to one common size so they batch.

With ``context`` k (2.5-D) each image also holds the k neighbouring slices on each side
of every modality (:func:`context_planes`).

Items are ``{"image": float32 (C, H, W), "label": int64 (H, W), "available": bool
(C,) (the modalities present), "case": str, "slice": int}``; channels follow the requested
modality names. Training samples are
optionally augmented (``SamplingConfig.augment``: flips, intensity scale and shift,
with MONAI's transforms).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from fusionseg.config import SamplingConfig
from fusionseg.data.preprocess import PreparedCase


def axial_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``volume`` (..., X, Y, Z) at ``index`` along spatial ``axis`` (0-2).

    Returns a view (basic indexing, no copy; ``np.take`` copies at about twice the cost
    on memory-mapped volumes); copy it before writing."""
    key = (Ellipsis,) + tuple(index if a == axis else slice(None) for a in range(3))
    return volume[key]


def context_planes(
    volume: np.ndarray, axis: int, z: int, context: int, channels: Sequence[int] | None = None
) -> np.ndarray:
    """2.5-D input of slice ``z``: for each of ``channels`` (default: all) of a
    (C, X, Y, Z) ``volume``, the slices ``z - context .. z + context`` along spatial
    ``axis``, zeros beyond the volume. Returns float32 ``(len(channels) * (2 * context
    + 1), h, w)``, modality-major (channel 0 at z - context, ..., channel 0 at z +
    context, channel 1 at z - context, ...)."""
    channels = range(volume.shape[0]) if channels is None else channels
    n = volume.shape[1 + axis]
    first = axial_slice(volume, axis, z)
    out = np.zeros((len(channels) * (2 * context + 1), *first.shape[-2:]), dtype=np.float32)
    for k, c in enumerate(channels):
        for j, zz in enumerate(range(z - context, z + context + 1)):
            if 0 <= zz < n:
                out[k * (2 * context + 1) + j] = axial_slice(volume[c], axis, zz)
    return out


def _centre(h: int, w: int, size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) offsets that centre an h x w slice in ``size``; ValueError if larger."""
    if h > size[0] or w > size[1]:
        raise ValueError(f"slice {h}x{w} larger than pad size {size}")
    return (size[0] - h) // 2, (size[1] - w) // 2


def _padded(view: np.ndarray, channels: Sequence[int] | None, size: tuple[int, int], dtype) -> np.ndarray:
    """``view`` (selected ``channels`` of a (C, h, w) view, or an (h, w) view when
    ``channels`` is None) copied once into a zero array of in-plane ``size``, centred
    as :func:`pad_to` centres."""
    h, w = view.shape[-2:]
    top, left = _centre(h, w, size)
    if channels is None:
        out = np.zeros(size, dtype=dtype)
        out[top : top + h, left : left + w] = view
    else:
        out = np.zeros((len(channels), *size), dtype=dtype)
        for k, c in enumerate(channels):
            out[k, top : top + h, left : left + w] = view[c]
    return out


def inplane_shape(case: PreparedCase) -> tuple[int, int]:
    shape = case.image.shape[1:]
    return tuple(s for a, s in enumerate(shape) if a != case.axial_axis)


def select_slices(case: PreparedCase, mode: str, central_k: int = 10) -> list[int]:
    """Indices (in the cropped volume) of the axial slices ``mode`` selects."""
    axis = case.axial_axis
    n = case.image.shape[1 + axis]
    if mode == "all" or mode == "patch":
        return list(range(n))
    if mode == "central":
        depth = case.original_shape[axis]
        start = depth // 2 - central_k // 2
        offset = case.bbox[axis][0]
        return [z - offset for z in range(start, start + central_k) if 0 <= z - offset < n]
    if mode == "tumour":
        if case.label is None:
            raise ValueError(f"case {case.case_id} has no label: cannot select tumour slices")
        other = tuple(a for a in range(3) if a != axis)
        present = np.asarray(case.label).any(axis=other)
        return [int(z) for z in np.flatnonzero(present)]
    raise ValueError(f"unknown sampling mode {mode!r}")


def round_up(value: int, divisor: int) -> int:
    return int(math.ceil(value / divisor) * divisor)


def pad_to(array: np.ndarray, size: tuple[int, int], value=0) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pad the last two axes of ``array`` centred to ``size``; returns the padded
    array and the (top, left) offsets. Raises ValueError if ``array`` is larger."""
    h, w = array.shape[-2:]
    top, left = _centre(h, w, size)
    pad = [(0, 0)] * (array.ndim - 2) + [(top, size[0] - h - top), (left, size[1] - w - left)]
    return np.pad(array, pad, constant_values=value), (top, left)


def common_slice_size(cases: Sequence[PreparedCase], divisor: int) -> tuple[int, int]:
    """Smallest (H, W), multiple of ``divisor``, that holds every case's slices."""
    h = max(inplane_shape(c)[0] for c in cases)
    w = max(inplane_shape(c)[1] for c in cases)
    return round_up(h, divisor), round_up(w, divisor)


class _Augmentation:
    """Training augmentation (``SamplingConfig.augment``) of channel-first 2-D samples:
    MONAI's RandFlipd on both in-plane axes, RandScaleIntensityd and RandShiftIntensityd
    (channel-wise, +-10 %), each with probability 0.5.

    Every transform draws from one shared ``RandomState`` that is re-seeded in place for
    each sample, so a sample's augmentation depends only on its seed (reproducible
    whatever the loading order or worker); building new RandomStates per sample, as
    ``Compose.set_random_state`` does, cost more than the transforms themselves. MONAI
    runs without MetaTensor bookkeeping (``set_track_meta(False)``): the samples carry
    no affine to track.
    """

    def __init__(self):
        from monai.transforms import Compose, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

        keys = ["image", "label"]
        self.transforms = Compose(
            [
                RandFlipd(keys, prob=0.5, spatial_axis=0),
                RandFlipd(keys, prob=0.5, spatial_axis=1),
                RandScaleIntensityd("image", factors=0.1, prob=0.5, channel_wise=True),
                RandShiftIntensityd("image", offsets=0.1, prob=0.5, channel_wise=True),
            ]
        )
        self.state = np.random.RandomState(0)
        for t in self.transforms.transforms:
            t.set_random_state(state=self.state)

    def __call__(self, image: np.ndarray, label: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Augment float32 (C, H, W) ``image`` and int64 (H, W) ``label`` together."""
        from monai.data import get_track_meta, set_track_meta

        self.state.seed(seed)
        before = get_track_meta()
        set_track_meta(False)
        try:
            out = self.transforms({"image": image, "label": label[None]})
        finally:
            set_track_meta(before)
        return np.asarray(out["image"]), np.asarray(out["label"])[0]


class SliceDataset(TorchDataset):
    """Axial 2-D samples from preprocessed cases (see module docstring).

    Args:
        cases: preprocessed cases (arrays may be memory-mapped).
        modalities: input channels, by name, in order.
        cfg: sampling configuration.
        slice_size: common (H, W) for whole-slice batching; ignored with a patch size.
        mode: overrides ``cfg.mode`` (e.g. ``cfg.val_mode`` for validation).
        train: random patch positions when True; deterministic (tumour-centred)
            windows when False.
        seed: base seed for patch positions.

    With ``cfg.context`` k > 0 every item's image holds ``C * (2k + 1)`` channels
    (:func:`context_planes`); ``available`` stays one flag per modality.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        modalities: Sequence[str],
        cfg: SamplingConfig,
        slice_size: tuple[int, int] | None = None,
        mode: str | None = None,
        train: bool = True,
        seed: int = 0,
    ):
        self.cases = list(cases)
        self.modalities = tuple(modalities)
        self.cfg = cfg
        self.mode = mode or cfg.mode
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.patch_size = tuple(cfg.patch_size) if cfg.patch_size else None
        self.slice_size = tuple(slice_size) if slice_size else None
        if self.patch_size is None and self.slice_size is None:
            raise ValueError("SliceDataset needs slice_size (whole slices) or cfg.patch_size")
        self.channels = []
        for case in self.cases:
            missing = [m for m in self.modalities if m not in case.modalities]
            if missing:
                raise KeyError(f"case {case.case_id} lacks modalities {missing}")
            self.channels.append([case.modalities.index(m) for m in self.modalities])
        self.index: list[tuple[int, int]] = [
            (ci, z) for ci, case in enumerate(self.cases) for z in select_slices(case, self.mode, cfg.central_k)
        ]
        if not self.index:
            raise ValueError(f"sampling mode {self.mode!r} selects no slice from {len(self.cases)} case(s)")
        self._augment = _Augmentation() if (train and cfg.augment) else None

    def set_epoch(self, epoch: int) -> None:
        """Vary random patch positions per epoch (reproducibly)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def _window(self, label: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        ph, pw = self.patch_size
        h, w = label.shape
        if (not self.train or rng.random() < self.cfg.tumour_probability) and label.any():
            ys, xs = np.nonzero(label)
            k = rng.integers(len(ys)) if self.train else len(ys) // 2
            cy, cx = int(ys[k]), int(xs[k])
        else:
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top = min(max(cy - ph // 2, 0), max(h - ph, 0))
        left = min(max(cx - pw // 2, 0), max(w - pw, 0))
        return top, left

    def __getitem__(self, i: int) -> dict:
        ci, z = self.index[i]
        case = self.cases[ci]
        channels = self.channels[ci]
        if self.cfg.context:  # 2.5-D: (C * (2k + 1), h, w), already a copy
            view = context_planes(case.image, case.axial_axis, z, self.cfg.context, channels)
            channels = range(view.shape[0])
        else:
            view = axial_slice(case.image, case.axial_axis, z)  # (C_all, h, w), no copy yet
        h, w = view.shape[-2:]
        if self.patch_size is not None:
            size = (max(self.patch_size[0], h), max(self.patch_size[1], w))
        else:
            size = self.slice_size
        image = _padded(view, channels, size, np.float32)  # (C, H, W)
        if case.label is not None:
            label = _padded(axial_slice(case.label, case.axial_axis, z), None, size, np.int64)
        else:
            label = np.zeros(size, dtype=np.int64)
        if self.patch_size is not None:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            ph, pw = self.patch_size
            top, left = self._window(label, rng)
            image = image[:, top : top + ph, left : left + pw]
            label = label[top : top + ph, left : left + pw]
        if self._augment is not None:
            seed = int(np.random.default_rng((self.seed, self.epoch, i, 1)).integers(2**31))
            image, label = self._augment(np.ascontiguousarray(image), np.ascontiguousarray(label), seed)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
            # which input modalities are present (all, here); missing-modality training
            # and per-modality branches read this mask
            "available": torch.ones(len(self.modalities), dtype=torch.bool),
            "case": case.case_id,
            "slice": z,
        }
