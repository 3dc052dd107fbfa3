"""The 3-D sampler (``spatial_dims: 3``): random 3-D patches of the fold's training
cases and whole validation cases.

Training: each epoch draws ``sampling.patches_per_case`` patches of
``sampling.patch_size`` from every training case (MONAI's ``SpatialPadd`` zero-pads a
case smaller than the patch, then ``RandCropByPosNegLabeld`` centres the patch on a
tumour voxel with probability ``sampling.tumour_probability``, else on a background
voxel), optionally augmented (``sampling.augment``: ``RandFlipd`` on each axis and
channel-wise ``RandScaleIntensityd`` / ``RandShiftIntensityd`` by +-10 %, each with
p = 0.5). Every random choice draws from one ``RandomState`` re-seeded from (seed,
epoch, sample index), so a patch depends only on those (not on loading order or
worker). The deterministic part, the padded case and the foreground / background
voxel indices that the crop draws its centre from (MONAI's ``map_binary_to_indices``,
passed through ``fg_indices_key`` / ``bg_indices_key``), is computed once per case and
kept while it fits :data:`CASE_CACHE_BYTES`; the patches are the same as with MONAI
padding and indexing on every call (tests/test_3d.py), only cheaper
(benchmarks/train_throughput.py).

Validation: every validation case whole, zero-padded at the far end of each axis to
one size (the largest case, rounded up to the network's divisor) so that cases batch.

Items: ``{"image": float32 (C, X, Y, Z), "label": int64 (X, Y, Z), "available": bool
(C,), "case": str}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from fusionseg.config import SamplingConfig
from fusionseg.data.preprocess import PreparedCase
from fusionseg.data.samplers import FoldSamples, register_sampler
from fusionseg.data.sampling import round_up
from fusionseg.errors import ConfigError

#: Patches per training case and epoch when ``sampling.patches_per_case`` is not set.
DEFAULT_PATCHES_PER_CASE = 4

#: Bytes of padded training cases and their crop-centre indices that one
#: :class:`PatchDataset` keeps in memory; cases beyond it are padded again on each call.
CASE_CACHE_BYTES = 1 << 30


def _channels(cases: Sequence[PreparedCase], modalities: Sequence[str]) -> list[list[int]]:
    out = []
    for case in cases:
        missing = [m for m in modalities if m not in case.modalities]
        if missing:
            raise KeyError(f"case {case.case_id} lacks modalities {missing}")
        out.append([case.modalities.index(m) for m in modalities])
    return out


class _Seeded:
    """MONAI transforms drawing from one shared ``RandomState``, re-seeded per call
    (as :class:`fusionseg.data.sampling._Augmentation`), without MetaTensor tracking."""

    def __init__(self, transforms: list):
        from monai.transforms import Compose

        self.compose = Compose(transforms)
        self.state = np.random.RandomState(0)
        for t in self.compose.transforms:
            if hasattr(t, "set_random_state"):
                t.set_random_state(state=self.state)

    def __call__(self, data: dict, seed: int):
        from monai.data import get_track_meta, set_track_meta

        self.state.seed(seed)
        before = get_track_meta()
        set_track_meta(False)
        try:
            return self.compose(data)
        finally:
            set_track_meta(before)


class PatchDataset(TorchDataset):
    """Random 3-D training patches (module docstring).

    Args:
        cases: preprocessed labelled cases (arrays may be memory-mapped).
        modalities: input channels, by name, in order.
        cfg: sampling configuration (``patch_size`` of 3 sizes, ``tumour_probability``,
            ``augment``, ``patches_per_case``).
        seed: base seed of the patch positions and augmentations.
    Raises:
        KeyError: a case lacks one of ``modalities``.
        ValueError: a case has no label, or ``patch_size`` is not 3-D.
    """

    def __init__(self, cases: Sequence[PreparedCase], modalities: Sequence[str], cfg: SamplingConfig, seed: int = 0):
        from monai.transforms import (
            RandCropByPosNegLabeld,
            RandFlipd,
            RandScaleIntensityd,
            RandShiftIntensityd,
            SpatialPadd,
        )

        if cfg.patch_size is None or len(cfg.patch_size) != 3:
            raise ValueError(f"3-D patches need a 3-D sampling.patch_size, got {cfg.patch_size}")
        self.cases = list(cases)
        for case in self.cases:
            if case.label is None:
                raise ValueError(f"case {case.case_id} has no label: it cannot be a training case")
        self.modalities = tuple(modalities)
        self.channels = _channels(self.cases, self.modalities)
        self.patch_size = tuple(int(s) for s in cfg.patch_size)
        self.per_case = cfg.patches_per_case or DEFAULT_PATCHES_PER_CASE
        self.seed, self.epoch = seed, 0
        self.cache_bytes = CASE_CACHE_BYTES
        self._cache: dict[int, dict] = {}
        self._cached_bytes = 0
        keys = ["image", "label"]
        p = float(cfg.tumour_probability)
        self._pad = SpatialPadd(keys, spatial_size=self.patch_size)
        transforms = [
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=self.patch_size,
                pos=p,
                neg=1.0 - p,
                num_samples=1,
                fg_indices_key="fg_indices",
                bg_indices_key="bg_indices",
            ),
        ]
        if cfg.augment:
            transforms += [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)]
            transforms += [
                RandScaleIntensityd("image", factors=0.1, prob=0.5, channel_wise=True),
                RandShiftIntensityd("image", offsets=0.1, prob=0.5, channel_wise=True),
            ]
        self._transforms = _Seeded(transforms)

    def set_epoch(self, epoch: int) -> None:
        """Draw other patches each epoch (reproducibly)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cases) * self.per_case

    def padded_case(self, ci: int) -> dict:
        """Case ``ci`` ready to crop: ``image`` float32 (C, X', Y', Z') and ``label`` uint8
        (1, X', Y', Z') zero-padded to at least the patch size (MONAI ``SpatialPadd``),
        and ``fg_indices`` / ``bg_indices``, its flat tumour / background voxel indices
        (int64, MONAI ``map_binary_to_indices``). Deterministic, so kept in memory while
        :attr:`cache_bytes` allows and computed again on each call beyond it."""
        if ci in self._cache:
            return self._cache[ci]
        from monai.transforms.utils import map_binary_to_indices

        case = self.cases[ci]
        data = self._pad(
            {
                "image": torch.from_numpy(np.asarray(case.image, dtype=np.float32)[self.channels[ci]]),  # copy
                "label": torch.from_numpy(np.array(case.label, dtype=np.uint8)[None]),  # copy
            }
        )
        # on a bool label: MONAI's any() keeps uint8, whose ~ would make every voxel background
        data["fg_indices"], data["bg_indices"] = map_binary_to_indices(data["label"].bool())
        size = sum(v.numel() * v.element_size() for v in data.values())
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[ci] = data
            self._cached_bytes += size
        return data

    def __getitem__(self, i: int) -> dict:
        ci = i // self.per_case
        seed = int(np.random.default_rng((self.seed, self.epoch, i)).integers(2**31))
        out = self._transforms(dict(self.padded_case(ci)), seed)
        out = out[0] if isinstance(out, list) else out
        return {  # copies: a patch never shares memory with the cached case
            "image": torch.tensor(np.asarray(out["image"]), dtype=torch.float32),
            "label": torch.tensor(np.asarray(out["label"])[0], dtype=torch.int64),
            "available": torch.ones(len(self.modalities), dtype=torch.bool),
            "case": self.cases[ci].case_id,
        }


class WholeCaseDataset(TorchDataset):
    """Whole cases zero-padded at the far end of each axis to ``size`` (module
    docstring); the padding is background in the label."""

    def __init__(self, cases: Sequence[PreparedCase], modalities: Sequence[str], size: Sequence[int]):
        self.cases = list(cases)
        self.modalities = tuple(modalities)
        self.channels = _channels(self.cases, self.modalities)
        self.size = tuple(int(s) for s in size)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict:
        case = self.cases[i]
        x, y, z = case.image.shape[1:]
        image = np.zeros((len(self.modalities), *self.size), dtype=np.float32)
        image[:, :x, :y, :z] = np.asarray(case.image)[self.channels[i]]
        label = np.zeros(self.size, dtype=np.int64)
        if case.label is not None:
            label[:x, :y, :z] = np.asarray(case.label)
        return {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(label),
            "available": torch.ones(len(self.modalities), dtype=torch.bool),
            "case": case.case_id,
        }


def common_volume_size(cases: Sequence[PreparedCase], divisor: int) -> tuple[int, int, int]:
    """Smallest (X, Y, Z), each a multiple of ``divisor``, that holds every case."""
    return tuple(round_up(max(c.image.shape[1 + a] for c in cases), divisor) for a in range(3))


@register_sampler(3)
def patch_samples(cfg, fold: dict, prepared: dict, modalities, divisor: int) -> FoldSamples:
    """3-D training patches and whole validation cases of one fold."""
    bad = [s for s in cfg.sampling.patch_size or () if s % divisor]
    if bad:
        raise ConfigError(
            f"sampling.patch_size {list(cfg.sampling.patch_size)}: every size must be a multiple of {divisor} "
            f"(the network's downsampling factor), e.g. {[round_up(s, divisor) for s in cfg.sampling.patch_size]}."
        )
    train = PatchDataset([prepared[c] for c in fold["train"]], modalities, cfg.sampling, seed=cfg.train.seed)
    val_cases = [prepared[c] for c in fold["val"]]
    size = common_volume_size(val_cases, divisor)
    val = WholeCaseDataset(val_cases, modalities, size)
    info = {"train_patches_per_epoch": len(train), "patch_size": list(train.patch_size), "val_cases": len(val)}
    return FoldSamples(train, val, {**info, "val_volume_size": list(size)})
