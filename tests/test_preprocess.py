"""Preprocessing: crop, normalisation, cache reuse and invalidation."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from fusionseg.config import PreprocessConfig
from fusionseg.constants import BRATS2017
from fusionseg.data.cases import discover
from fusionseg.data.preprocess import PreprocessCache, foreground_bbox, normalise, prepare_case_arrays
from fusionseg.errors import DataError


def test_foreground_bbox_is_tight_and_half_open():
    mask = np.zeros((10, 12, 8), bool)
    mask[2:5, 3:9, 1:2] = True
    assert foreground_bbox(mask) == ((2, 5), (3, 9), (1, 2))
    assert foreground_bbox(mask, margin=3) == ((0, 8), (0, 12), (0, 5))


def test_mri_normalisation_clips_then_zscores_inside_brain():
    vol = np.zeros((4, 4, 4), np.float32)
    brain = np.zeros_like(vol, bool)
    brain[1:3, 1:3, 1:3] = True
    vol[brain] = [1, 2, 3, 4, 5, 6, 7, 1000]
    out = normalise(vol, "flair", brain, PreprocessConfig(clip_percentile=60))
    inside = out[brain]
    assert abs(inside.mean()) < 1e-6 and abs(inside.std() - 1) < 1e-5
    assert np.all(out[~brain] == 0)
    # values above the 60th percentile (5.2) are clipped to it: the top three coincide
    top = np.sort(inside)
    assert np.allclose(top[-3:], top[-1]) and top[-4] < top[-1]


def test_pet_and_ct_windows():
    brain = np.ones((2, 2, 2), bool)
    suv = np.array([-1, 0, 7.5, 30] * 2, np.float32).reshape(2, 2, 2)
    assert np.allclose(normalise(suv, "pet", brain, PreprocessConfig()).ravel()[:4], [0, 0, 0.5, 1])
    hu = np.array([-1024, -100, 75, 400] * 2, np.float32).reshape(2, 2, 2)
    assert np.allclose(normalise(hu, "ct", brain, PreprocessConfig()).ravel()[:4], [0, 0, 0.5, 1])


def test_prepared_case_crops_and_maps_labels(brats18_phantom):
    ds = discover(brats18_phantom)
    case = ds.cases[0]
    p = prepare_case_arrays(case, ds.scheme, PreprocessConfig())
    assert p.image.shape[0] == 4 and p.image.dtype == np.float32
    assert p.label.shape == p.image.shape[1:]
    assert set(np.unique(p.label)) <= {0, 1, 2, 3}  # class indices, ET 4 -> 3
    # uncrop puts the crop back exactly where the raw labels are
    import nibabel as nib

    raw = np.asanyarray(nib.load(case.label).dataobj)
    restored = BRATS2017.from_classes(p.uncrop(p.label))
    assert np.array_equal(restored, raw)


def test_cache_is_reused_and_refreshed_when_source_changes(brats18_copy, tmp_path):
    ds = discover(brats18_copy)
    case = ds.cases[0]
    cache = PreprocessCache(PreprocessConfig(), tmp_path / "cache")
    first = cache.load(case, ds.scheme)
    meta = cache.root / case.case_id / "+".join(case.modalities) / "meta.json"
    stamp = meta.stat().st_mtime_ns
    second = cache.load(case, ds.scheme)
    assert meta.stat().st_mtime_ns == stamp  # read back, not rewritten
    assert isinstance(second.image, np.memmap)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    # touching a source file invalidates the entry
    later = time.time() + 5
    os.utime(case.images["flair"].path, (later, later))
    cache.load(case, ds.scheme)
    assert meta.stat().st_mtime_ns != stamp
    # a different config uses a different folder
    assert PreprocessCache(PreprocessConfig(clip_percentile=99.0), tmp_path / "cache").root != cache.root


def test_nan_voxel_is_an_error_naming_the_file(brats18_copy):
    from conftest import rewrite_nifti

    ds = discover(brats18_copy)
    case = ds.cases[1]
    path = case.images["t2"].path

    def put_nan(a):
        a = a.astype(np.float32)
        a[5, 5, 5] = np.nan
        return a

    rewrite_nifti(path, put_nan, dtype=np.float32)
    with pytest.raises(DataError, match="NaN") as info:
        prepare_case_arrays(case, ds.scheme, PreprocessConfig())
    assert str(path) in str(info.value)


def test_msd_4d_file_read_once_gives_the_per_channel_arrays(phantom_dataset, monkeypatch):
    import fusionseg.data.preprocess as pre
    from fusionseg.data.io import load_volume

    ds = discover(phantom_dataset("msd", n_cases=1))
    case = ds.cases[0]
    assert len({ref.path for ref in case.images.values()}) == 1  # one 4-D file
    calls = []
    real = pre.read_all_channels
    monkeypatch.setattr(pre, "read_all_channels", lambda img, path: calls.append(path) or real(img, path))
    prepared = prepare_case_arrays(case, ds.scheme, PreprocessConfig(crop="none"))
    assert len(calls) == 1
    cfg = PreprocessConfig(crop="none")
    brain = np.zeros(prepared.original_shape, bool)
    vols = {m: load_volume(case.images[m])[0] for m in case.modalities}  # channel by channel
    for v in vols.values():
        brain |= v != 0
    for i, m in enumerate(case.modalities):
        assert np.array_equal(prepared.image[i], normalise(vols[m], m, brain, cfg).astype(np.float32)), m
