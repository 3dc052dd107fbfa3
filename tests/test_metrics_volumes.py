"""autoPET false-positive / false-negative volumes (18-connectivity, mL)."""

from __future__ import annotations

import numpy as np
import pytest

from fusionseg.evaluation.metrics.volumes import false_negative_volume, false_positive_volume


def _fixture():
    gt = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(gt)
    gt[2:5, 2:5, 2:5] = True  # detected lesion (27 voxels)
    pred[3:6, 3:6, 3:6] = True  # overlapping prediction
    gt[12:14, 12:14, 12:14] = True  # missed lesion: 8 voxels
    pred[15:17, 2:4, 2:4] = True  # false positive: 8 voxels
    return pred, gt


def test_fpv_fnv_hand_values_anisotropic():
    pred, gt = _fixture()
    spacing = (2.0, 1.0, 1.5)  # 3 mm^3 per voxel
    assert false_positive_volume(pred, gt, spacing) == pytest.approx(8 * 3 / 1000)
    assert false_negative_volume(pred, gt, spacing) == pytest.approx(8 * 3 / 1000)


def test_corner_touching_voxel_is_a_separate_component_under_18_connectivity():
    pred, gt = _fixture()
    pred[6, 6, 6] = True  # touches the overlapping prediction by a corner only (26-, not 18-conn)
    assert false_positive_volume(pred, gt) == pytest.approx(9 / 1000)


def test_fpv_fnv_empty_masks():
    z = np.zeros((5, 5, 5), bool)
    one = z.copy()
    one[1, 1, 1] = True
    assert false_positive_volume(z, z) == 0.0
    assert false_negative_volume(z, z) == 0.0
    assert false_positive_volume(one, z) == pytest.approx(0.001)
    assert false_negative_volume(z, one) == pytest.approx(0.001)
