"""Whole-case prediction: label convention, exact affine and header, no overwrite."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from fusionseg.config import PreprocessConfig
from fusionseg.constants import BRATS2017
from fusionseg.data.cases import discover
from fusionseg.data.preprocess import prepare_case_arrays
from fusionseg.inference.predict import MIRRORS, Predictor, class_probabilities, predict_probabilities


class ThresholdNet(nn.Module):
    """Predicts class 3 (ET) where channel 0 > 0.5, class 0 elsewhere."""

    required_divisor = 4

    def forward(self, x):
        et = (x[:, :1] > 0.5).float() * 20
        zeros = torch.zeros_like(et)
        return torch.cat([10 - et, zeros, zeros, et - 10 + 1e-3], dim=1)


def test_slicewise_probabilities_keep_geometry():
    image = np.zeros((1, 6, 7, 5), np.float32)
    image[0, 2, 3, 1] = 1.0
    for axis in range(3):
        probs = predict_probabilities([ThresholdNet()], image, axis, divisor=4, batch_size=2)
        assert probs.shape == (4, 6, 7, 5)
        assert np.allclose(probs.sum(axis=0), 1, atol=1e-5)
        assert probs.argmax(0)[2, 3, 1] == 3 and probs.argmax(0).sum() == 3


def test_test_time_mirroring_averages_the_four_flips():
    torch.manual_seed(0)
    net = nn.Conv2d(2, 3, kernel_size=3, padding=1)  # not mirror-symmetric
    x = torch.randn(2, 2, 8, 6)
    with torch.no_grad():
        plain = class_probabilities(net, x)
        tta = class_probabilities(net, x, mirror=True)
        by_hand = (
            sum(
                torch.softmax(net(x.flip(d) if d else x), 1).flip(d) if d else torch.softmax(net(x), 1) for d in MIRRORS
            )
            / 4
        )
        assert torch.allclose(tta, by_hand, atol=1e-6)
        assert not torch.allclose(tta, plain, atol=1e-3)
        # the average over the mirror group is mirror-equivariant; the plain output is not
        assert torch.allclose(class_probabilities(net, x.flip(3), mirror=True), tta.flip(3), atol=1e-6)
        assert not torch.allclose(class_probabilities(net, x.flip(3)), plain.flip(3), atol=1e-3)


def test_written_prediction_has_input_affine_header_and_raw_labels(brats18_phantom, tmp_path):
    ds = discover(brats18_phantom)
    case = ds.cases[0]
    predictor = Predictor([ThresholdNet()], ("t1ce",), BRATS2017, PreprocessConfig(), 4, [])
    out = predictor.write_case(case, tmp_path / f"{case.case_id}.nii.gz")
    ref = nib.load(case.images["t1ce"].path)
    got = nib.load(out)
    assert np.array_equal(got.affine, ref.affine)
    assert got.shape == ref.shape
    assert got.header.get_zooms() == ref.header.get_zooms()
    assert np.array_equal(got.header.get_qform(), ref.header.get_qform())
    assert got.header["qform_code"] == ref.header["qform_code"]
    assert got.header["sform_code"] == ref.header["sform_code"]
    labels = np.asanyarray(got.dataobj)
    assert set(np.unique(labels)) <= {0, 4}  # class 3 written as raw ET label 4
    prepared = prepare_case_arrays(case, ds.scheme, PreprocessConfig())
    expected = prepared.uncrop((prepared.select(["t1ce"])[0] > 0.5).astype(np.uint8) * 4)
    assert np.array_equal(labels, expected)
    with pytest.raises(FileExistsError, match="--overwrite"):
        predictor.write_case(case, out)
    predictor.write_case(case, out, overwrite=True)
