"""Dice, sensitivity, specificity: hand-computed values and empty-mask conventions."""

from __future__ import annotations

import numpy as np
import pytest

from fusionseg.evaluation.metrics.overlap import dice, sensitivity_specificity


def test_dice_both_empty_is_one():
    z = np.zeros((4, 4, 4), bool)
    assert dice(z, z) == 1.0


def test_dice_one_empty_is_zero():
    z = np.zeros((4, 4, 4), bool)
    g = z.copy()
    g[1, 1, 1] = True
    assert dice(z, g) == 0.0
    assert dice(g, z) == 0.0


def test_dice_hand_value_2d():
    p = np.zeros((5, 5), bool)
    g = np.zeros((5, 5), bool)
    p[0:2, 0:3] = True  # 6 voxels
    g[1:3, 0:3] = True  # 6 voxels, 3 shared
    assert dice(p, g) == pytest.approx(2 * 3 / 12)


def test_dice_accepts_label_maps_and_rejects_shape_mismatch():
    assert dice(np.array([[0, 2], [0, 0]]), np.array([[0, 1], [0, 0]])) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_sensitivity_specificity_hand_values():
    p = np.zeros(10, bool)[None, :]
    g = np.zeros(10, bool)[None, :]
    p[0, :4] = True  # TP 3 (0..2), FP 1 (3)
    g[0, :3] = True
    g[0, 9] = True  # FN 1
    sens, spec = sensitivity_specificity(p, g)
    assert sens == pytest.approx(3 / 4)
    assert spec == pytest.approx(5 / 6)  # TN = 10 - |P u G| = 5


def test_sensitivity_conventions_for_empty_masks():
    z = np.zeros((3, 3), bool)
    one = z.copy()
    one[0, 0] = True
    assert sensitivity_specificity(z, z) == (1.0, 1.0)
    assert sensitivity_specificity(one, z) == (0.0, pytest.approx(8 / 9))  # GT empty: sens 0
    assert sensitivity_specificity(z, one) == (0.0, 1.0)
