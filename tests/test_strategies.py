"""Fusion strategies (S0 B and C): stages, frozen networks, loss weights, resume,
rebuilding for prediction without the losses."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from fusionseg.config import PreprocessConfig, SamplingConfig, TrainConfig, validate_config
from fusionseg.constants import BRATS2017
from fusionseg.data.cases import discover
from fusionseg.data.preprocess import prepare_case_arrays
from fusionseg.data.sampling import SliceDataset
from fusionseg.models.fusion_seg import masked_zscore, unit_range
from fusionseg.strategies import DecoupledFusion, JointFusion, build_strategy
from fusionseg.training.loop import fit

MODS = ["t1ce", "flair"]


def config(strategy, weighting="static", **fusion):
    section = {
        "perceptual_features": "random",
        "model": {"name": "lrrnet", "kwargs": {"n": 4, "blocks": 1}},
        **({"epochs": 1} if strategy == "decoupled" else {"weighting": weighting}),
        **fusion,
    }
    return validate_config(
        {
            "name": "x",
            "strategy": strategy,
            "data": {"root": "x", "modalities": MODS},
            "model": {"kwargs": {"channels": [4, 8], "bottleneck": 8, "norm": "batch"}},
            "fusion": section,
        }
    )


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 2, 16, 16, generator=g)
    image[:, :, :3] = 0  # background rows
    return {"image": image, "label": torch.randint(0, 4, (2, 16, 16), generator=g)}


def test_unit_range_and_masked_zscore_by_hand():
    x = torch.tensor([[[[0.0, 2.0], [4.0, 0.0]]]])
    mask = x != 0
    assert torch.allclose(unit_range(x, mask), torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]]))
    z = masked_zscore(x, mask)
    assert torch.allclose(z, torch.tensor([[[[0.0, -1.0], [1.0, 0.0]]]]), atol=1e-4)


def test_decoupled_trains_fusion_then_segmentation_with_the_other_frozen():
    s = build_strategy(config("decoupled"), MODS, BRATS2017)
    assert isinstance(s, DecoupledFusion)
    assert [st.name for st in s.stages()] == ["fusion", "segmentation"]
    assert s.stages()[0].score == "loss" and s.stages()[0].lr == 1e-4
    s.set_stage("fusion")
    fusion_params = set(map(id, s.net.fusion_net.parameters()))
    assert {id(p) for p in s.trainable_parameters()} == fusion_params
    loss, logs = s.training_loss(batch())
    assert {"loss_fusion", "fusion_pixel", "fusion_deep"} <= set(logs)
    s.set_stage("segmentation")
    assert not (set(map(id, s.trainable_parameters())) & fusion_params)
    loss, logs = s.training_loss(batch())
    loss.backward()
    assert all(p.grad is None for p in s.net.fusion_net.parameters())
    assert set(logs) == {"loss_seg"}


def test_joint_static_loss_is_the_weighted_sum():
    s = build_strategy(config("joint", "static", lambda_f=0.25, lambda_s=2.0), MODS, BRATS2017)
    torch.manual_seed(0)
    s.eval()  # no batch-norm updates: the three forward passes see the same network
    loss, logs = s.training_loss(batch())
    assert loss.item() == pytest.approx(0.25 * logs["loss_fusion"] + 2.0 * logs["loss_seg"], rel=1e-5)
    assert s.on_epoch_end(1, logs) == {"lambda_f": 0.25, "lambda_s": 2.0}


def test_seg_only_ablation_needs_no_fusion_loss():
    s = build_strategy(config("joint", "seg_only"), MODS, BRATS2017)
    assert "fusion" not in s.losses
    loss, logs = s.training_loss(batch())
    loss.backward()
    assert set(logs) == {"loss_seg"}
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.net.fusion_net.parameters())


def test_prediction_rebuild_needs_no_vgg(monkeypatch):
    import fusionseg.strategies.registry as reg

    def no_vgg(*a, **k):
        raise AssertionError("VGG must not be loaded for prediction")

    monkeypatch.setattr(reg, "vgg16_features", no_vgg)
    s = build_strategy(config("joint", "dynamic"), MODS, BRATS2017, with_losses=False)
    assert s(batch()["image"]).shape == (2, 4, 16, 16)


@pytest.fixture(scope="module")
def slice_sets(brats18_phantom):
    ds = discover(brats18_phantom)
    prepared = [prepare_case_arrays(c, ds.scheme, PreprocessConfig()) for c in ds.cases]
    cfg = SamplingConfig(mode="tumour")
    return (
        SliceDataset(prepared[:3], MODS, cfg, slice_size=(48, 48)),
        SliceDataset(prepared[3:], MODS, cfg, slice_size=(48, 48), train=False),
    )


def test_dynamic_weights_follow_eq6_in_the_log_and_survive_resume(slice_sets, tmp_path):
    train, val = slice_sets
    cfg = TrainConfig(epochs=3, batch_size=8, max_steps_per_epoch=1, patience=10)
    s = build_strategy(config("joint", "dynamic"), MODS, BRATS2017)
    fit(s, train, val, cfg, tmp_path, BRATS2017, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    lam = [float(r["lambda_f"]) for r in rows]
    assert lam[:2] == [0.5, 0.5]
    # epoch 3 uses r_k = L_k(2) / L_k(1) of the logged epoch-mean losses (S0 Eq. 6, T = 1)
    rf = float(rows[1]["loss_fusion"]) / float(rows[0]["loss_fusion"])
    rs = float(rows[1]["loss_seg"]) / float(rows[0]["loss_seg"])
    assert lam[2] == pytest.approx(math.exp(rf) / (math.exp(rf) + math.exp(rs)), rel=1e-6)
    assert float(rows[2]["lambda_s"]) == pytest.approx(1 - lam[2], rel=1e-6)
    # resume with one more epoch: the weighting history comes back from the checkpoint
    s2 = build_strategy(config("joint", "dynamic"), MODS, BRATS2017)
    fit(s2, train, val, cfg.model_copy(update={"epochs": 4}), tmp_path, BRATS2017, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert len(rows) == 4 and isinstance(s2, JointFusion)
    rf = float(rows[2]["loss_fusion"]) / float(rows[1]["loss_fusion"])
    rs = float(rows[2]["loss_seg"]) / float(rows[1]["loss_seg"])
    # without the restored history epoch 4 would fall back to 0.5
    assert float(rows[3]["lambda_f"]) == pytest.approx(math.exp(rf) / (math.exp(rf) + math.exp(rs)), rel=1e-6)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert len(last["strategy"]["_extra_state"]["weighting"]["loss_history"]) == 4
