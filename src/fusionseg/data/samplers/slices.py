"""The 2-D sampler (``spatial_dims: 2``): axial slices of the fold's cases
(:class:`~fusionseg.data.sampling.SliceDataset`), whole slices zero-padded to one size
common to every case of the dataset (a multiple of the network's divisor, at least 16)."""

from __future__ import annotations

from torch.utils.data import ConcatDataset

from fusionseg.data.samplers import FoldSamples, register_sampler
from fusionseg.data.sampling import SliceDataset, common_slice_size


@register_sampler(2)
def slice_samples(cfg, fold: dict, prepared: dict, modalities, divisor: int) -> FoldSamples:
    """Training slices (``sampling.mode``, augmented with ``sampling.augment``) and
    validation slices (``sampling.val_mode``) of one fold; when the fold lists
    ``unlabelled`` cases (a pretext stage on them too), the set ``pretext``: the
    training slices plus every brain slice of those cases (``mode: all``; no tumour to
    centre a patch on, so patch positions are random)."""
    size = common_slice_size(list(prepared.values()), max(divisor, 16))
    train = SliceDataset(
        [prepared[c] for c in fold["train"]], modalities, cfg.sampling, size, train=True, seed=cfg.train.seed
    )
    val = SliceDataset(
        [prepared[c] for c in fold["val"]], modalities, cfg.sampling, size, mode=cfg.sampling.val_mode, train=False
    )
    info = {"train_slices": len(train), "val_slices": len(val), "slice_size": list(size)}
    extra = {}
    if "unlabelled" in fold:
        extra["pretext"] = train
        if fold["unlabelled"]:
            more = SliceDataset(
                [prepared[c] for c in fold["unlabelled"]],
                modalities,
                cfg.sampling,
                size,
                mode="all",
                train=True,
                seed=cfg.train.seed + 1,
            )
            extra["pretext"] = ConcatDataset([train, more])
        info.update(pretext_unlabelled_cases=len(fold["unlabelled"]), pretext_slices=len(extra["pretext"]))
    return FoldSamples(train, val, info, extra)
