"""Slice and patch samplers and case splits."""

from __future__ import annotations

import numpy as np
import pytest

from fusionseg.config import SamplingConfig, SplitConfig
from fusionseg.data.preprocess import PreparedCase
from fusionseg.data.sampling import SliceDataset, common_slice_size, pad_to, select_slices
from fusionseg.data.splits import load_splits, make_splits, save_splits
from fusionseg.errors import ConfigError


def make_case(depth=20, tumour=(8, 11), original_depth=155, offset=70) -> PreparedCase:
    image = np.zeros((2, 12, 10, depth), np.float32)
    image[0] = 1.0
    image[1] = 2.0
    label = np.zeros((12, 10, depth), np.uint8)
    label[4:6, 3:5, tumour[0] : tumour[1]] = 2
    return PreparedCase(
        "c",
        ("t1ce", "flair"),
        image,
        label,
        ((0, 12), (0, 10), (offset, offset + depth)),
        (12, 10, original_depth),
        np.eye(4),
        (1.0, 1.0, 1.0),
        2,
    )


def test_select_slices_modes():
    case = make_case()
    assert select_slices(case, "tumour") == [8, 9, 10]
    assert select_slices(case, "all") == list(range(20))
    # central 10 of 155: original slices 72..81 -> cropped 2..11
    assert select_slices(case, "central", 10) == list(range(2, 12))


def test_slice_items_are_padded_and_channels_follow_names():
    case = make_case()
    ds = SliceDataset([case], ["flair", "t1ce"], SamplingConfig(mode="tumour"), slice_size=(16, 16))
    item = ds[0]
    assert item["image"].shape == (2, 16, 16) and item["label"].shape == (16, 16)
    assert float(item["image"][0].max()) == 2.0 and float(item["image"][1].max()) == 1.0
    assert int(item["label"].sum()) == 2 * 4  # 4 tumour pixels of class 2


def test_patches_are_centred_on_tumour_when_probability_is_one():
    case = make_case()
    cfg = SamplingConfig(mode="patch", patch_size=(4, 4), tumour_probability=1.0)
    ds = SliceDataset([case], ["t1ce"], cfg)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 4, 4)
        if ds.index[i][1] in (8, 9, 10):
            assert item["label"].any()


def test_common_size_and_pad():
    case = make_case()
    assert common_slice_size([case], 16) == (16, 16)
    arr, (top, left) = pad_to(np.ones((2, 3, 5)), (8, 8))
    assert arr.shape == (2, 8, 8) and arr.sum() == 30 and (top, left) == (2, 1)
    with pytest.raises(ValueError):
        pad_to(np.ones((9, 2)), (8, 8))


def test_kfold_splits_are_disjoint_complete_and_reproducible(tmp_path):
    ids = [f"case{i:02d}" for i in range(16)]
    s1 = make_splits(ids, SplitConfig(folds=5, seed=3))
    s2 = make_splits(list(reversed(ids)), SplitConfig(folds=5, seed=3))
    assert s1 == s2
    tests = [c for f in s1["folds"] for c in f["test"]]
    assert sorted(tests) == ids  # every case tested exactly once
    for f in s1["folds"]:
        assert not set(f["train"]) & set(f["test"]) and not set(f["val"]) & set(f["test"])
        assert not set(f["train"]) & set(f["val"]) and len(f["val"]) >= 1
        assert len(f["train"]) + len(f["val"]) + len(f["test"]) == 16
    path = save_splits(s1, tmp_path / "splits.json")
    assert load_splits(path, ids) == s1
    with pytest.raises(ConfigError, match="not in the dataset"):
        load_splits(path, ids[:3])
    with pytest.raises(ConfigError, match="too few"):
        make_splits(ids[:4], SplitConfig(folds=5))


def test_sampled_slab_spans_the_selected_slices_in_the_original_grid():
    from fusionseg.experiments.fold_scoring import sampled_slab

    case = make_case()  # cropped z from 70, original depth 155
    assert sampled_slab(case, "central", 10) == (slice(None), slice(None), slice(72, 82))
    assert sampled_slab(case, "tumour", 10) == (slice(None), slice(None), slice(78, 81))


def test_example_slice_is_taken_from_the_evaluated_slab(tmp_path):
    from fusionseg.constants import BRATS2017
    from fusionseg.experiments.fusion_report import save_example
    from fusionseg.experiments.fold_scoring import slab_slices

    case = make_case(tumour=(12, 16))  # most tumour: cropped slices 12-15, outside 2-11
    case.label[4:6, 3:5, 13] = 0
    case.label[:, :, 11] = 0
    case.label[4, 3, 11] = 1  # a little tumour on the slab's last slice
    prediction = np.zeros(case.original_shape, np.uint8)
    save_example(object(), case, ["t1ce"], prediction, BRATS2017, tmp_path / "all.npz")
    slab = slab_slices(case, "central", 10)
    assert list(slab) == list(range(2, 12))
    save_example(object(), case, ["t1ce"], prediction, BRATS2017, tmp_path / "slab.npz", slices=slab)
    assert int(np.load(tmp_path / "all.npz")["slice"]) in (70 + 12, 70 + 14, 70 + 15)
    assert int(np.load(tmp_path / "slab.npz")["slice"]) == 70 + 11


def test_augmentation_moves_image_and_label_together_reproducibly():
    case = make_case()
    case.image[0, 4:6, 3:5, :] = 5.0  # a bright marker exactly where the tumour is
    cfg = SamplingConfig(mode="tumour", augment=True)
    ds = SliceDataset([case], ["t1ce"], cfg, slice_size=(16, 16), seed=3)
    flipped = changed = False
    for epoch in range(6):
        ds.set_epoch(epoch)
        a, b = ds[0], ds[0]
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
        image, label = a["image"][0].numpy(), a["label"].numpy()
        marker = image > image[label == 0].max()  # brighter than every non-tumour pixel
        assert np.array_equal(marker, label > 0) and int((label > 0).sum()) == 4
        flipped |= not np.array_equal(label, _padded_label(case))
        changed |= not np.isclose(image[label > 0].max(), 5.0)
    assert flipped and changed  # some epoch flipped and some rescaled / shifted
    val = SliceDataset([case], ["t1ce"], cfg, slice_size=(16, 16), train=False)
    assert np.array_equal(val[0]["label"].numpy(), _padded_label(case))


def _padded_label(case) -> np.ndarray:
    return pad_to(case.label[..., 8].astype(np.int64), (16, 16))[0]
