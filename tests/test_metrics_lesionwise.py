"""BraTS 2023 lesion-wise metrics on named geometric fixtures with exact values."""

from __future__ import annotations

import numpy as np
import pytest

from fusionseg.evaluation.metrics.lesionwise import (
    CHALLENGES,
    challenge_params,
    lesion_wise,
)
from fusionseg.evaluation.metrics.surface import hd95

SHAPE = (40, 24, 24)


def _empty():
    return np.zeros(SHAPE, bool)


def _cube(x0, size=4, y0=10, z0=10):
    m = _empty()
    m[x0 : x0 + size, y0 : y0 + size, z0 : z0 + size] = True
    return m


def test_both_empty_is_dice_one_hd_zero():
    r = lesion_wise(_empty(), _empty())
    assert (r.dice, r.hd95, r.tp, r.fn, r.fp) == (1.0, 0.0, 0, 0, 0)
    assert r.lesions == ()


def test_fp_only_scores_zero_and_penalty():
    r = lesion_wise(_cube(5) | _cube(25), _empty())
    assert (r.dice, r.hd95, r.tp, r.fn, r.fp) == (0.0, 374.0, 0, 0, 2)
    assert [rec.kind for rec in r.lesions] == ["fp", "fp"]


def test_missed_lesion_is_fn_with_penalty():
    r = lesion_wise(_empty(), _cube(5))  # 64 voxels > tau = 50
    assert (r.dice, r.hd95, r.tp, r.fn, r.fp) == (0.0, 374.0, 0, 1, 0)


def test_perfect_single_lesion():
    r = lesion_wise(_cube(5), _cube(5))
    assert (r.dice, r.hd95, r.tp, r.fn, r.fp) == (1.0, 0.0, 1, 0, 0)


def test_lesion_at_tau_is_dropped_from_scores_and_counts():
    small = _empty()
    small[5:10, 5:10, 5:7] = True  # 50 voxels = 50 mm^3 = tau: dropped (volume must be > tau)
    missed = lesion_wise(_empty(), small, dilation=3, volume_threshold_mm3=50)
    assert (missed.dice, missed.hd95, missed.tp, missed.fn, missed.fp) == (1.0, 0.0, 0, 0, 0)
    found = lesion_wise(small, small, dilation=3, volume_threshold_mm3=50)
    # the prediction matched a dropped lesion: neither TP nor FP
    assert (found.dice, found.hd95, found.tp, found.fn, found.fp) == (1.0, 0.0, 0, 0, 0)
    assert found.lesions[0].counted is False and found.lesions[0].matched == (1,)
    kept = lesion_wise(_empty(), small, dilation=3, volume_threshold_mm3=49.9)
    assert (kept.tp, kept.fn, kept.dice, kept.hd95) == (0, 1, 0.0, 374.0)


def test_anisotropic_spacing_changes_lesion_volume():
    small = _empty()
    small[5:10, 5:10, 5:7] = True  # 50 voxels
    iso = lesion_wise(_empty(), small, (1.0, 1.0, 1.0))
    aniso = lesion_wise(_empty(), small, (1.0, 1.0, 1.2))  # 60 mm^3 > 50
    assert (iso.fn, iso.dice) == (0, 1.0)
    assert (aniso.fn, aniso.dice, aniso.hd95) == (1, 0.0, 374.0)
    assert aniso.lesions[0].volume_mm3 == pytest.approx(60.0)


def test_two_gt_blobs_merged_by_dilation():
    # cubes at x 5..8 and 13..16: a 4-voxel gap. d=3 merges them (dilated extents
    # overlap), d=1 keeps them apart.
    gt = _cube(5) | _cube(13)
    pred = _cube(5)
    merged = lesion_wise(pred, gt, dilation=3, volume_threshold_mm3=50)
    assert (merged.tp, merged.fn, merged.fp) == (1, 0, 0)
    assert merged.dice == pytest.approx(2 * 64 / (64 + 128))
    assert merged.hd95 == pytest.approx(hd95(pred, gt))
    apart = lesion_wise(pred, gt, dilation=1, volume_threshold_mm3=50)
    assert (apart.tp, apart.fn, apart.fp) == (1, 1, 0)
    assert apart.dice == pytest.approx(0.5)  # (1 + 0) / 2
    assert apart.hd95 == pytest.approx(187.0)  # (0 + 374) / 2


def test_one_prediction_touching_two_lesions_matches_both():
    gt = _cube(5) | _cube(25)  # 16-voxel gap: separate lesions for d=3
    pred = _empty()
    pred[5:29, 10:14, 10:14] = True  # one bar covering both: 24*16 = 384 voxels
    r = lesion_wise(pred, gt, dilation=3, volume_threshold_mm3=50)
    assert (r.tp, r.fn, r.fp) == (2, 0, 0)
    expected = 2 * 64 / (64 + 384)  # each lesion against the whole bar
    assert r.dice == pytest.approx(expected)
    assert [rec.matched for rec in r.lesions] == [(1,), (1,)]
    for lesion_mask in (_cube(5), _cube(25)):
        assert any(rec.hd95 == pytest.approx(hd95(pred, lesion_mask)) for rec in r.lesions)


def test_far_prediction_is_fp_near_one_matches_through_dilation():
    gt = _cube(5)
    near = _empty()
    near[11, 10:14, 10:14] = True  # 2 voxels beyond the lesion: inside the d=3 dilation
    far = _cube(30, size=2)
    r = lesion_wise(near | far, gt, dilation=3, volume_threshold_mm3=50)
    assert (r.tp, r.fn, r.fp) == (1, 0, 1)
    assert r.dice == pytest.approx((0.0 + 0.0) / 2)  # matched but no overlap: Dice 0
    assert r.hd95 == pytest.approx((hd95(near, gt) + 374.0) / 2)
    r1 = lesion_wise(near | far, gt, dilation=1, volume_threshold_mm3=50)
    assert (r1.tp, r1.fn, r1.fp) == (0, 1, 2)


def test_2d_masks_are_supported():
    gt = np.zeros((30, 30), bool)
    gt[5:15, 5:15] = True
    r = lesion_wise(gt, gt, (1.0, 1.0), dilation=1, volume_threshold_mm3=2)
    assert (r.dice, r.hd95, r.tp) == (1.0, 0.0, 1)


def test_challenge_presets_and_custom():
    assert {k: (v.dilation, v.volume_threshold_mm3) for k, v in CHALLENGES.items()} == {
        "GLI": (3, 50.0),
        "SSA": (3, 50.0),
        "MEN": (1, 50.0),
        "PED": (3, 50.0),
        "MET": (1, 2.0),
    }
    assert challenge_params("BraTS-MET").dilation == 1
    custom = challenge_params("custom", dilation=2, volume_threshold_mm3=10)
    assert (custom.dilation, custom.volume_threshold_mm3) == (2, 10.0)
    with pytest.raises(ValueError, match="GLI"):
        challenge_params("XYZ")


def test_joint_hd95_and_lesion_wise_equal_separate_computations_bit_for_bit():
    """The shared computation (one labelling, reused surface distances) gives exactly
    the values of the separate reference computations, also with a spacing whose
    coordinates are not exact (distances come from integer offsets, frame-independent)."""
    import numpy as np

    from fusionseg.evaluation.metrics.lesionwise import hd95_and_lesion_wise, lesion_wise
    from fusionseg.evaluation.metrics.overlap import dice
    from fusionseg.evaluation.metrics.surface import hd95

    rng = np.random.default_rng(3)
    shape = (70, 64, 48)
    grid = np.indices(shape)
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for _ in range(6):
        c = rng.uniform(8, np.asarray(shape) - 8)
        r = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c)))
        gt |= r <= rng.uniform(2.5, 6)
        pred |= np.sqrt(sum((g - ci - rng.integers(-2, 3)) ** 2 for g, ci in zip(grid, c))) <= rng.uniform(2, 6)
    for _ in range(4):  # false positives, some far away
        c = rng.uniform(4, np.asarray(shape) - 4)
        pred |= np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c))) <= rng.uniform(1, 3)
    for spacing in [(1.0, 1.0, 1.0), (0.9375, 0.9375, 1.5), (0.8984375123, 0.91, 1.2345678)]:
        for d in (1, 3):
            hd, joint = hd95_and_lesion_wise(pred, gt, spacing, d, 20.0)
            assert hd == hd95(pred, gt, spacing)
            assert joint == lesion_wise(
                pred, gt, spacing, d, 20.0, full_image=(dice(pred, gt), hd95(pred, gt, spacing))
            )


def test_lesion_hd95_from_whole_image_distances_equals_the_per_lesion_computation(monkeypatch):
    """Lesion HD95s read off the whole-image distances (all lesions at once) equal the
    per-lesion computation bit for bit, for every challenge dilation."""
    import fusionseg.evaluation.metrics.lesionwise as lw

    rng = np.random.default_rng(5)
    shape = (80, 70, 50)
    grid = np.indices(shape)
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for _ in range(12):
        c = rng.uniform(6, np.asarray(shape) - 6)
        gt |= np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c))) <= rng.uniform(1.5, 5)
        shift = rng.integers(-3, 4, 3)
        pred |= np.sqrt(sum((g - ci - s) ** 2 for g, ci, s in zip(grid, c, shift))) <= rng.uniform(1.5, 5)
    for _ in range(6):
        c = rng.uniform(2, np.asarray(shape) - 2)
        pred |= np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c))) <= rng.uniform(0.8, 3)
    fast = lw._lesion_hd95s
    answered = []
    monkeypatch.setattr(lw, "_lesion_hd95s", lambda *a: answered.append(fast(*a)) or answered[-1])
    results = [lw.lesion_wise(pred, gt, (1.0, 1.0, 1.0), d, 10.0) for d in (0, 1, 3)]
    assert sum(int(np.isfinite(v).sum()) for v in answered) > 10  # most lesions take the fast path
    monkeypatch.setattr(lw, "_lesion_hd95s", lambda n_gt, *a: np.full(n_gt + 1, np.nan))
    general = [lw.lesion_wise(pred, gt, (1.0, 1.0, 1.0), d, 10.0) for d in (0, 1, 3)]
    for a, b in zip(results, general):
        assert repr(a) == repr(b)


@pytest.mark.parametrize("d", [1, 3])
def test_lesions_and_matches_equal_labelling_the_dilated_gt(d):
    """Lesion grouping, numbering, volumes and matches equal the reference recipe:
    label the GT dilated d times (18-nbhd, 26-connectivity, C order) and take the
    predicted components (26-connectivity) touching each dilated component."""
    import cc3d
    from scipy import ndimage

    rng = np.random.default_rng(d)
    shape = (60, 50, 40)
    grid = np.indices(shape)
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for _ in range(25):  # crowded: many dilations meet, some only touch
        c = rng.uniform(3, np.asarray(shape) - 3)
        gt |= np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c))) <= rng.uniform(0.5, 3)
        c = c + rng.integers(-4, 5, 3)
        pred |= np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c))) <= rng.uniform(0.5, 3)
    dilated = ndimage.binary_dilation(gt, ndimage.generate_binary_structure(3, 2), iterations=d)
    dil_lab, n_gt = cc3d.connected_components(np.ascontiguousarray(dilated), connectivity=26, return_N=True)
    pred_lab = cc3d.connected_components(np.ascontiguousarray(pred), connectivity=26)
    expected = []
    for lesion in range(1, n_gt + 1):
        inside = dil_lab == lesion
        matched = tuple(int(c) for c in np.unique(pred_lab[inside]) if c)
        expected.append((lesion, float(np.count_nonzero(gt & inside)), matched))
    result = lesion_wise(pred, gt, (1.0, 1.0, 1.0), d, 0.0)
    got = [(r.lesion_id, r.volume_mm3, r.matched) for r in result.lesions if r.kind == "gt"]
    assert n_gt > 5 and got == expected
