"""2.5-D input (``sampling.context``): neighbouring slices as channels, the same in
training items and in whole-case prediction, and the config rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config, train_via_cli
from fusionseg.config import ExperimentConfig, SamplingConfig
from fusionseg.constants import BRATS2017
from fusionseg.data.preprocess import PreparedCase
from fusionseg.data.sampling import SliceDataset, context_planes
from fusionseg.inference.predict import predict_probabilities
from fusionseg.strategies import build_strategy


def _case(depth: int = 6) -> PreparedCase:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 8, 8, depth)).astype(np.float32)
    label = np.zeros((8, 8, depth), np.uint8)
    label[2:4, 2:4, 1:5] = 1
    bbox = ((0, 8), (0, 8), (0, depth))
    return PreparedCase("c", ("t1ce", "flair"), image, label, bbox, (8, 8, depth), np.eye(4), (1.0, 1.0, 1.0), 2)


def test_context_planes_are_modality_major_with_zeros_beyond_the_volume():
    case = _case()
    planes = context_planes(case.image, 2, 0, 1)  # slice 0: z - 1 is outside
    assert planes.shape == (6, 8, 8)
    assert not planes[0].any() and not planes[3].any()
    assert np.array_equal(planes[1], case.image[0, :, :, 0]) and np.array_equal(planes[2], case.image[0, :, :, 1])
    assert np.array_equal(planes[4], case.image[1, :, :, 0]) and np.array_equal(planes[5], case.image[1, :, :, 1])
    # one channel chosen by index, along another axis
    assert np.array_equal(context_planes(case.image, 0, 3, 2, [1])[2], case.image[1, 3])


def test_items_carry_the_plain_slice_in_the_middle_channel():
    case = _case()
    plain = SliceDataset([case], ["flair", "t1ce"], SamplingConfig(mode="tumour"), slice_size=(8, 8))
    wide = SliceDataset([case], ["flair", "t1ce"], SamplingConfig(mode="tumour", context=2), slice_size=(8, 8))
    a, b = plain[1], wide[1]
    assert b["image"].shape == (10, 8, 8) and b["available"].shape == (2,)
    assert torch.equal(b["image"][2], a["image"][0]) and torch.equal(b["image"][7], a["image"][1])
    assert torch.equal(a["label"], b["label"])


class Recorder(nn.Module):
    """Keeps every input batch; predicts background."""

    required_divisor = 1

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 4, *x.shape[2:])


def test_prediction_feeds_each_slice_as_training_does():
    case = _case()
    net = Recorder()
    predict_probabilities([net], case.image, 2, divisor=1, batch_size=4, context=1)
    seen = torch.cat(net.seen)
    assert seen.shape == (6, 6, 8, 8)
    items = SliceDataset([case], ["t1ce", "flair"], SamplingConfig(mode="all", context=1), slice_size=(8, 8))
    for z in range(6):
        assert torch.equal(seen[z], items[z]["image"])


def _cfg(**sections) -> dict:
    return {"name": "c", "data": {"root": "/nonexistent"}, **sections}


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"strategy": "joint"}, "applies to strategy early only"),
        ({"missing": {"dropout": "alternate"}}, "does not combine with missing-modality"),
        (
            {"spatial_dims": 3, "sampling": {"mode": "patch", "patch_size": [8, 8, 8], "context": 1}},
            "applies to spatial_dims 2 only",
        ),
    ],
)
def test_context_where_it_does_not_apply_is_an_error(sections, message):
    raw = _cfg(**{"sampling": {"context": 1}, **sections})
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.model_validate(raw)


def test_early_fusion_network_takes_every_slice_of_every_modality():
    cfg = ExperimentConfig.model_validate(
        _cfg(sampling={"context": 2}, model={"kwargs": {"channels": [4, 8], "bottleneck": 8}})
    )
    strategy = build_strategy(cfg, ["t1", "t1ce", "t2", "flair"], BRATS2017)
    assert strategy(torch.randn(1, 20, 16, 16)).shape == (1, 4, 16, 16)


def test_a_2p5d_run_trains_and_predicts(brats18_phantom, tmp_path):
    cfg = tiny_config("ctx", brats18_phantom, tmp_path, sampling={"mode": "tumour", "context": 1})
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    assert (run / "fold_0" / "metrics_per_case.csv").exists()
