"""HD95 (BraTS / DeepMind) and symmetric ASD (MONAI): hand values, empty masks, and
agreement with the reference packages on random shapes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from fusionseg.constants import HD95_PENALTY_MM
from fusionseg.evaluation.metrics.surface import (
    _code_to_measure,
    _corners,
    average_surface_distance,
    hd95,
    robust_hausdorff,
)


def _blobs(rng, shape, threshold=0.52):
    return ndimage.gaussian_filter(rng.random(shape), 2) > threshold


def _two_voxels(shape=(8, 3, 3)):
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[0, 1, 1] = True
    b[3, 1, 1] = True
    return a, b


def test_hd95_both_empty_is_zero_and_one_empty_is_penalty():
    z = np.zeros((5, 5, 5), bool)
    m = z.copy()
    m[2, 2, 2] = True
    assert hd95(z, z) == 0.0
    assert hd95(m, z) == HD95_PENALTY_MM == 374.0
    assert hd95(z, m, penalty=100.0) == 100.0


def test_hd95_identical_masks_is_zero():
    m = np.zeros((6, 6, 6), bool)
    m[1:4, 2:5, 1:3] = True
    assert hd95(m, m, (0.5, 2.0, 3.0)) == 0.0


def test_hd95_two_single_voxels_anisotropic_hand_value():
    # Corners of voxel x=0 lie at x in {0, 1}; of voxel x=3 at {3, 4}: directed
    # distances are 2 (half of the equally weighted corners) and 3 -> the 95th
    # percentile is 3 voxels = 6 mm with 2 mm spacing along axis 0.
    a, b = _two_voxels()
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert robust_hausdorff(a, b, (2.0, 1.0, 1.0), percent=40) == pytest.approx(4.0)


def test_hd95_2d_hand_value():
    a = np.zeros((6, 6), bool)
    b = np.zeros((6, 6), bool)
    a[1, 1] = True
    b[1, 4] = True  # 3 pixels along axis 1, spacing 0.5 mm
    assert hd95(a, b, (1.0, 0.5)) == pytest.approx(1.5)


def test_neighbourhood_tables_match_surface_distance_package():
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    for spacing in [(1.0, 1.0, 1.0), (0.7, 1.3, 3.0)]:
        ours = _code_to_measure(spacing)
        ref = lookup.create_table_neighbour_code_to_surface_area(spacing)
        # the package's bit b is corner (i, j, k) with weight 2**(7 - (4i + 2j + k))
        for code in range(256):
            ref_code = sum(
                1 << (7 - (4 * i + 2 * j + k)) for bit, (i, j, k) in enumerate(_corners(3)) if code >> bit & 1
            )
            assert ours[code] == pytest.approx(ref[ref_code], abs=1e-9)
    ours2 = _code_to_measure((0.8, 1.7))
    ref2 = lookup.create_table_neighbour_code_to_contour_length((0.8, 1.7))
    for code in range(16):
        ref_code = sum(1 << (3 - (2 * i + j)) for bit, (i, j) in enumerate(_corners(2)) if code >> bit & 1)
        assert ours2[code] == pytest.approx(ref2[ref_code], abs=1e-9)


@pytest.mark.parametrize("ndim", [2, 3])
def test_hd95_matches_surface_distance_package_on_random_shapes(ndim):
    sd = pytest.importorskip("surface_distance")
    rng = np.random.default_rng(7)
    shape = (28, 24, 20) if ndim == 3 else (40, 34)
    checked = 0
    for trial in range(12):
        spacing = tuple(rng.uniform(0.5, 3.0, ndim)) if trial % 2 else (1.0,) * ndim
        gt, pred = _blobs(rng, shape), _blobs(rng, shape)
        if not gt.any() or not pred.any():
            continue
        dists = sd.compute_surface_distances(gt, pred, spacing)
        for percent in (95, 100):
            ref = sd.compute_robust_hausdorff(dists, percent)
            assert robust_hausdorff(pred, gt, spacing, percent) == pytest.approx(ref, abs=1e-9)
        checked += 1
    assert checked >= 8


def test_asd_empty_conventions_and_hand_value():
    z = np.zeros((8, 3, 3), bool)
    a, b = _two_voxels()
    assert average_surface_distance(z, z) == 0.0
    assert average_surface_distance(a, z) == 374.0
    assert average_surface_distance(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)


def test_asd_matches_monai_symmetric_on_random_shapes():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(3)
    for trial in range(6):
        shape = (26, 22, 18)
        spacing = tuple(rng.uniform(0.6, 2.5, 3)) if trial % 2 else (1.0, 1.0, 1.0)
        gt, pred = _blobs(rng, shape), _blobs(rng, shape)
        if not gt.any() or not pred.any():
            continue
        ref = monai_metrics.compute_average_surface_distance(
            torch.from_numpy(pred[None, None].astype(np.float32)),
            torch.from_numpy(gt[None, None].astype(np.float32)),
            include_background=True,
            symmetric=True,
            spacing=list(spacing),
        ).item()
        assert average_surface_distance(pred, gt, spacing) == pytest.approx(ref, rel=1e-5)
