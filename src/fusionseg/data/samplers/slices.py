"""The 2-D sampler (``spatial_dims: 2``): axial slices of the fold's cases
(:class:`~fusionseg.data.sampling.SliceDataset`), whole slices zero-padded to one size
common to every case of the dataset (a multiple of the network's divisor, at least 16)."""

from __future__ import annotations

from fusionseg.data.samplers import FoldSamples, register_sampler
from fusionseg.data.sampling import SliceDataset, common_slice_size


@register_sampler(2)
def slice_samples(cfg, fold: dict, prepared: dict, modalities, divisor: int) -> FoldSamples:
    """Training slices (``sampling.mode``, augmented with ``sampling.augment``) and
    validation slices (``sampling.val_mode``) of one fold."""
    size = common_slice_size(list(prepared.values()), max(divisor, 16))
    train = SliceDataset(
        [prepared[c] for c in fold["train"]], modalities, cfg.sampling, size, train=True, seed=cfg.train.seed
    )
    val = SliceDataset(
        [prepared[c] for c in fold["val"]], modalities, cfg.sampling, size, mode=cfg.sampling.val_mode, train=False
    )
    return FoldSamples(train, val, {"train_slices": len(train), "val_slices": len(val), "slice_size": list(size)})
