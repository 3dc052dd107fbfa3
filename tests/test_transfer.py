"""S2 pretext -> segmentation weight transfer (fusionseg.models.transfer) and the
``resnet50_unet`` builder (fusionseg.models.resnet_unet).

The nets are full ResNet-50 U-Nets (about 32 M parameters); they are built once per
module and deep-copied per test. Inputs are 2 x C x 64 x 64.
"""

from __future__ import annotations

import copy
import json
import socket

import pytest
import torch
from lightning_fabric import Fabric

from fusionseg.errors import ConfigError, DataError
from fusionseg.models import build_model
from fusionseg.models.resnet_unet import patch_rgb_stem
from fusionseg.models.transfer import (
    FIRST_CONV,
    TransferReport,
    load_pretext_checkpoint,
    transfer_pretext_weights,
)
from fusionseg.strategies.early import EarlyFusion

SOURCE_INPUTS = ["t1", "t1ce"]
TARGET_INPUTS = ["t1", "t1ce", "t2", "flair"]
PERMUTED = ["flair", "t1ce", "t2", "t1"]
N_CLASSES = 4


def _randomised(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A copy of ``state`` where every tensor differs from a fresh init (BN buffers too),
    so that "equals the source" cannot hold by accident; still a working network."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in state.items():
        if value.is_floating_point():
            # scaled by 0.9..1.1 plus 0..0.01: zeros / ones of a fresh init change, variances stay positive
            scale = 0.9 + 0.2 * torch.rand(value.shape, generator=gen)
            out[name] = (value * scale + 0.01 * torch.rand(value.shape, generator=gen)).to(value.dtype)
        else:
            out[name] = torch.full_like(value, 7)
    return out


@pytest.fixture(scope="module")
def pretext_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    net = build_model("resnet50_unet", in_channels=2, num_classes=1)
    return _randomised(net.state_dict(), seed=11)


@pytest.fixture(scope="module")
def template() -> torch.nn.Module:
    torch.manual_seed(2)
    return build_model("resnet50_unet", in_channels=4, num_classes=N_CLASSES)


@pytest.fixture
def target(template) -> torch.nn.Module:
    return copy.deepcopy(template)


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# -- (a) the stem --------------------------------------------------------------------
@pytest.mark.parametrize("inputs", [TARGET_INPUTS, PERMUTED], ids=["standard", "permuted"])
@pytest.mark.parametrize("rule", ["random", "zero", "mean"])
def test_first_conv_copies_pretext_channels_by_name(target, pretext_state, inputs, rule):
    before = _snapshot(target)
    report = transfer_pretext_weights(
        target, pretext_state, source_inputs=["T1", "T1CE"], target_inputs=inputs, other_channels=rule
    )
    src = pretext_state[FIRST_CONV]
    w = target.state_dict()[FIRST_CONV]
    assert w.shape == (64, 4, 7, 7)
    t1, t1ce = inputs.index("t1"), inputs.index("t1ce")
    assert torch.equal(w[:, t1], src[:, 0])
    assert torch.equal(w[:, t1ce], src[:, 1])
    others = [j for j in range(4) if j not in (t1, t1ce)]
    for j in others:
        if rule == "random":
            assert torch.equal(w[:, j], before[FIRST_CONV][:, j])
        elif rule == "zero":
            assert torch.count_nonzero(w[:, j]) == 0
        else:
            torch.testing.assert_close(w[:, j], (src[:, 0] + src[:, 1]) / 2)
    assert FIRST_CONV in report.copied
    fc = report.first_conv
    assert {(r["modality"], r["source_channel"], r["target_channel"]) for r in fc["copied"]} == {
        ("T1", 0, t1),
        ("T1CE", 1, t1ce),
    }
    assert sorted(r["target_channel"] for r in fc["others"]) == others
    assert fc["other_rule"] == rule


def test_random_rule_leaves_other_channels_at_fresh_init_not_source(target, pretext_state):
    before = _snapshot(target)[FIRST_CONV]
    transfer_pretext_weights(target, pretext_state, source_inputs=SOURCE_INPUTS, target_inputs=TARGET_INPUTS)
    w = target.state_dict()[FIRST_CONV]
    assert torch.equal(w[:, 2:], before[:, 2:])
    assert not torch.equal(w[:, :2], before[:, :2])  # the copied channels did change


# -- (b) head and decoder ---------------------------------------------------------------
def test_head_never_written_even_when_shapes_match(target, pretext_state):
    source = dict(pretext_state)
    head = {k: v for k, v in target.state_dict().items() if k.startswith("segmentation_head.")}
    assert head
    for k, v in head.items():  # same shape as the target's head: only the rule keeps it out
        source[k] = torch.full_like(v, 3.0)
    before = _snapshot(target)
    report = transfer_pretext_weights(
        target, source, source_inputs=SOURCE_INPUTS, target_inputs=TARGET_INPUTS, decoder=True
    )
    after = target.state_dict()
    for k in head:
        assert torch.equal(after[k], before[k])
        assert (k, "head never transferred") in report.skipped
        assert k not in report.copied


@pytest.mark.parametrize("decoder", [False, True])
def test_decoder_copied_only_when_asked(target, pretext_state, decoder):
    before = _snapshot(target)
    report = transfer_pretext_weights(
        target, pretext_state, source_inputs=SOURCE_INPUTS, target_inputs=TARGET_INPUTS, decoder=decoder
    )
    after = target.state_dict()
    names = [k for k in after if k.startswith("decoder.")]
    assert names
    for k in names:
        if decoder:
            assert torch.equal(after[k], pretext_state[k]), k
            assert k in report.copied
        else:
            assert torch.equal(after[k], before[k]), k
            assert (k, "decoder transfer off") in report.skipped


# -- (c) the rest of the encoder ------------------------------------------------------
def test_every_other_encoder_tensor_equals_source(target, pretext_state):
    report = transfer_pretext_weights(target, pretext_state, source_inputs=SOURCE_INPUTS, target_inputs=TARGET_INPUTS)
    after = target.state_dict()
    encoder = [k for k in after if k.startswith("encoder.") and k != FIRST_CONV]
    assert any(k.endswith("running_var") for k in encoder) and any(k.endswith("num_batches_tracked") for k in encoder)
    for k in encoder:
        assert torch.equal(after[k], pretext_state[k].to(after[k].dtype)), k
    assert sorted(report.copied) == sorted([FIRST_CONV, *encoder])
    # every name of either side is accounted for exactly once
    listed = report.copied + [name for name, _ in report.skipped]
    assert sorted(listed) == sorted(set(after) | set(pretext_state))


def test_transferred_net_still_runs(target, pretext_state):
    transfer_pretext_weights(target, pretext_state, source_inputs=SOURCE_INPUTS, target_inputs=TARGET_INPUTS)
    target.eval()
    with torch.no_grad():
        y = target(torch.randn(2, 4, 64, 64))
    assert y.shape == (2, N_CLASSES, 64, 64) and torch.isfinite(y).all()


# -- (d) mismatched shapes and one-sided names ----------------------------------------
def test_shape_mismatch_is_reported_and_target_keeps_its_tensor(target, pretext_state):
    name = "encoder.layer1.0.conv1.weight"
    source = dict(pretext_state)
    source[name] = torch.ones(64, 64, 3, 3)
    source["encoder.extra.weight"] = torch.ones(3)
    before = _snapshot(target)
    report = transfer_pretext_weights(target, source, source_inputs=SOURCE_INPUTS, target_inputs=TARGET_INPUTS)
    assert (name, "shape (64, 64, 3, 3) != (64, 64, 1, 1)") in report.skipped
    assert name not in report.copied
    assert torch.equal(target.state_dict()[name], before[name])
    assert ("encoder.extra.weight", "only in source") in report.skipped
    # a neighbour of the mismatched tensor is still copied
    assert torch.equal(target.state_dict()["encoder.layer1.0.conv2.weight"], source["encoder.layer1.0.conv2.weight"])


def test_name_only_in_target_is_listed(target, pretext_state):
    name = "encoder.layer2.0.bn1.running_mean"
    source = {k: v for k, v in pretext_state.items() if k != name}
    before = _snapshot(target)
    report = transfer_pretext_weights(target, source, source_inputs=SOURCE_INPUTS, target_inputs=TARGET_INPUTS)
    assert (name, "only in target (keeps its own values)") in report.skipped
    assert torch.equal(target.state_dict()[name], before[name])


# -- (e) bad names and options ----------------------------------------------------------
def test_unknown_source_input_names_raise_with_both_lists(target, pretext_state):
    before = _snapshot(target)
    with pytest.raises(ValueError) as info:
        transfer_pretext_weights(target, pretext_state, source_inputs=["t1", "pd"], target_inputs=TARGET_INPUTS)
    msg = str(info.value)
    assert "['t1', 'pd']" in msg and str(TARGET_INPUTS) in msg and "pd" in msg
    after = target.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after)  # nothing written


def test_bad_rule_and_wrong_source_width_raise(target, pretext_state):
    with pytest.raises(ValueError, match="other_channels"):
        transfer_pretext_weights(
            target, pretext_state, source_inputs=SOURCE_INPUTS, target_inputs=TARGET_INPUTS, other_channels="copy"
        )
    with pytest.raises(ValueError, match=r"\(O, 3, kh, kw\)"):
        transfer_pretext_weights(target, pretext_state, source_inputs=["t1", "t1ce", "t2"], target_inputs=TARGET_INPUTS)
    with pytest.raises(ValueError, match="repeated"):
        transfer_pretext_weights(target, pretext_state, source_inputs=["t1", "T1"], target_inputs=TARGET_INPUTS)


def test_report_serialises(target, pretext_state):
    source = dict(pretext_state)
    source["encoder.layer1.0.conv1.weight"] = torch.ones(64, 64, 3, 3)
    report = transfer_pretext_weights(target, source, source_inputs=SOURCE_INPUTS, target_inputs=PERMUTED)
    assert isinstance(report, TransferReport)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["n_copied"] == len(report.copied) and d["first_conv"]["other_rule"] == "random"
    md = report.to_markdown()
    assert "| t1 | 0 | 3 | copied |" in md and "| flair | - | 0 |" in md
    assert "`encoder.layer1.0.conv1.weight` | shape (64, 64, 3, 3) != (64, 64, 1, 1) |" in md


# -- checkpoints --------------------------------------------------------------------------
def test_load_fusionseg_checkpoint_strips_strategy_prefix(tmp_path, pretext_state):
    torch.manual_seed(3)
    net = build_model("resnet50_unet", in_channels=2, num_classes=1)
    net.load_state_dict(pretext_state)
    path = tmp_path / "best.ckpt"
    Fabric(accelerator="cpu", devices=1).save(path, {"strategy": EarlyFusion(net, SOURCE_INPUTS), "epoch": 1})
    assert next(iter(torch.load(path, weights_only=True)["strategy"])).startswith("model.")
    state = load_pretext_checkpoint(path)
    assert set(state) == set(pretext_state)
    assert all(torch.equal(state[k], pretext_state[k]) for k in state)


@pytest.mark.parametrize("prefix", ["", "network.", "module._orig_mod.", "net.seg_net."])
def test_load_plain_and_prefixed_state_dicts(tmp_path, pretext_state, prefix):
    path = tmp_path / "weights.pt"
    payload = {prefix + k: v for k, v in pretext_state.items()}
    payload["fusion_net.conv.weight"] = torch.ones(2)  # another network of the strategy: dropped
    torch.save({"state_dict": payload} if prefix == "network." else payload, path)
    state = load_pretext_checkpoint(path)
    assert set(state) == set(pretext_state)


def test_load_rejects_files_without_resnet50_unet(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(DataError, match="nope.ckpt"):
        load_pretext_checkpoint(missing)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.ckpt.*cannot read"):
        load_pretext_checkpoint(junk)
    other = tmp_path / "unet2stage.ckpt"
    torch.save({"strategy": {"model.enc1.0.weight": torch.ones(1)}}, other)
    with pytest.raises(DataError, match="unet2stage.ckpt.*no ResNet U-Net"):
        load_pretext_checkpoint(other)
    import segmentation_models_pytorch as smp

    r18 = tmp_path / "r18.ckpt"
    torch.save(smp.Unet("resnet18", encoder_weights=None, in_channels=2, classes=1).state_dict(), r18)
    with pytest.raises(DataError, match=r"r18.ckpt.*ResNet-50 U-Net.*\(2, 2, 2, 2\)"):
        load_pretext_checkpoint(r18)


# -- (f) the builder --------------------------------------------------------------------
def test_builder_output_and_attributes(template):
    y = template(torch.randn(2, 4, 64, 64))
    assert y.shape == (2, N_CLASSES, 64, 64) and y.dtype == torch.float32
    assert template.required_divisor == 32
    assert (template.in_channels, template.num_classes, template.spatial_dims) == (4, N_CLASSES, 2)
    assert template.encoder_weights is None
    with pytest.raises(ValueError, match="multiple of 32"):
        template(torch.randn(1, 4, 48, 64))
    keys = template.state_dict()
    assert FIRST_CONV in keys and "segmentation_head.0.weight" in keys
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder", "segmentation_head"}


def test_builder_rejects_3d_and_bad_depth():
    with pytest.raises(ValueError, match="spatial_dims"):
        build_model("resnet50_unet", 4, 4, spatial_dims=3)
    with pytest.raises(ValueError, match="decoder_channels"):
        build_model("resnet50_unet", 4, 4, encoder_depth=4)


@pytest.fixture
def no_network(monkeypatch):
    """Fail any download attempt: sockets, torch.hub and smp's Hugging Face download."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    import segmentation_models_pytorch.encoders as smp_encoders

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(smp_encoders, "hf_hub_download", refuse)


@pytest.mark.parametrize("name", ["imagenet", "ImageNet", "ssl"])
def test_builder_refuses_hub_weights_without_downloading(no_network, name):
    with pytest.raises(ConfigError, match="never downloads"):
        build_model("resnet50_unet", 4, 4, encoder_weights=name)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    import torchvision

    torch.manual_seed(4)
    state = _randomised(torchvision.models.resnet50(weights=None).state_dict(), seed=12)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("in_channels", [3, 4, 1, 2])
def test_builder_loads_local_resnet50_file(no_network, resnet50_file, in_channels):
    path, state = resnet50_file
    net = build_model("resnet50_unet", in_channels, 2, encoder_weights=str(path))
    enc = net.encoder.state_dict()
    assert not any(k.startswith("fc.") for k in enc)
    for k, v in enc.items():
        if k != "conv1.weight":
            assert torch.equal(v, state[k]), k
    rgb = state["conv1.weight"]
    stem = enc["conv1.weight"]
    assert stem.shape == (64, in_channels, 7, 7)
    if in_channels == 3:
        assert torch.equal(stem, rgb)
    elif in_channels == 1:
        torch.testing.assert_close(stem[:, 0], rgb.sum(dim=1))
    else:
        for i in range(in_channels):
            torch.testing.assert_close(stem[:, i], rgb[:, i % 3] * 3 / in_channels)
    assert net.encoder_weights == str(path)
    assert net(torch.randn(2, in_channels, 64, 64)).shape == (2, 2, 64, 64)


def test_patch_rgb_stem_rule():
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    assert torch.equal(patch_rgb_stem(w, 3), w)
    assert patch_rgb_stem(w, 1).flatten().tolist() == [3.0, 12.0]
    assert patch_rgb_stem(w, 6)[0].flatten().tolist() == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]


def test_builder_rejects_bad_weight_files(no_network, tmp_path):
    import torchvision

    with pytest.raises(ConfigError, match="missing.pth.*not found"):
        build_model("resnet50_unet", 4, 4, encoder_weights=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(ConfigError, match="junk.pth.*cannot read"):
        build_model("resnet50_unet", 4, 4, encoder_weights=str(junk))
    r18 = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r18)
    with pytest.raises(ConfigError, match="r18.pth.*do not fit"):
        build_model("resnet50_unet", 4, 4, encoder_weights=str(r18))
