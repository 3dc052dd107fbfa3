"""MSE, PSNR, SSIM on hand-checkable images, with and without a mask."""

from __future__ import annotations

import numpy as np
import pytest

from fusionseg.evaluation.metrics.image_quality import mse, psnr, ssim


def test_mse_psnr_constant_offset():
    ref = np.random.default_rng(0).random((16, 16, 16))
    img = ref + 1.0
    assert mse(img, ref) == pytest.approx(1.0)
    assert psnr(img, ref, data_range=10.0) == pytest.approx(20.0)


def test_mse_inside_mask_only():
    ref = np.zeros((8, 8))
    img = np.zeros((8, 8))
    img[0, 0] = 2.0
    mask = np.zeros((8, 8), bool)
    mask[:2, :2] = True
    assert mse(img, ref, mask) == pytest.approx(4.0 / 4)
    assert mse(img, ref) == pytest.approx(4.0 / 64)


def test_ssim_identical_is_one_and_noise_lowers_it():
    rng = np.random.default_rng(1)
    ref = rng.random((24, 24, 24))
    assert ssim(ref, ref, data_range=1.0) == pytest.approx(1.0)
    noisy = ref + rng.normal(0, 0.3, ref.shape)
    mask = np.zeros(ref.shape, bool)
    mask[4:20, 4:20, 4:20] = True
    assert ssim(noisy, ref, data_range=1.0) < 0.9
    assert ssim(noisy, ref, data_range=1.0, mask=mask) < 0.9


def test_bad_arguments_raise():
    a = np.zeros((8, 8))
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, a, data_range=0)
    with pytest.raises(ValueError, match="empty"):
        mse(a, a, np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        mse(a, np.zeros((8, 9)))
