"""LRRNet fusion loss (S0 Eq. 1, METHODS.md section 2) and VGG-16 feature loading:
every term on hand-computable cases, the Gram normalisation, weight sources and errors."""

from __future__ import annotations

import pytest
import torch
import torchvision.models.vgg as tv_vgg

from fusionseg.errors import ConfigError
from fusionseg.losses.fusion import (
    VGG16_FEATURE_LAYERS,
    LRRNetFusionLoss,
    VGGWeightsNotFoundError,
    gram_matrix,
    imagenet_vgg16_cache_path,
    vgg16_features,
)


class IdentityFeatures(torch.nn.Module):
    """Stub extractor: phi1..phi4 = the (B, 3, H, W) input itself, so terms are hand-computable."""

    def forward(self, x):
        return (x, x, x, x)


@pytest.fixture(scope="module")
def random_vgg():
    return vgg16_features("random")


@pytest.fixture(scope="module")
def tv_trunk() -> torch.nn.Sequential:
    """torchvision's own vgg16 ``features`` builder (independent reference), seeded, up to
    conv4_3/relu4_3 (the first 13 entries of configuration "D"; same indices 0..22)."""
    torch.manual_seed(1)
    return tv_vgg.make_layers(tv_vgg.cfgs["D"][:13])


def _reference_taps(trunk: torch.nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for i, layer in enumerate(trunk[:23]):
            x = layer(x)
            if i in VGG16_FEATURE_LAYERS.values():
                outs.append(x.clone())
    return outs


# ----- Gram matrix -------------------------------------------------------------------


def test_gram_matrix_is_normalised_by_c_h_w():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (B=1, C=2, H=1, W=2)
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / (2 * 1 * 2)
    assert torch.allclose(gram_matrix(f), expected)
    ones = torch.ones(2, 3, 4, 5)
    assert torch.allclose(gram_matrix(ones), torch.full((2, 3, 3), 20.0 / 60.0))  # HW / (C H W) = 1/C


# ----- Eq. 1 on hand-computable cases ----------------------------------------------------


def test_each_term_on_constant_images_with_identity_features():
    """F = 0.5, I_d = 0.25, I_s = 1 (x 255), phi = identity on 3 channels, 8 x 8."""
    loss = LRRNetFusionLoss(IdentityFeatures(), normalize_sources=False)
    shape = (1, 1, 8, 8)
    total, terms = loss(torch.full(shape, 0.5), torch.full(shape, 0.25), torch.full(shape, 1.0))
    f, d, s = 127.5, 63.75, 255.0
    pixel = (f - d) ** 2  # 4064.0625
    middle = (0.01 + 0.5) * (f - (3.0 * s + 0.5 * d)) ** 2  # both layers see the same constants
    deep = (f**2 / 3 - s**2 / 3) ** 2  # Gram of a constant c: 64 c^2 / (3 * 64) = c^2 / 3 per entry
    assert terms["pixel"].item() == pytest.approx(pixel, rel=1e-6)
    assert terms["shallow"].item() == pytest.approx(pixel, rel=1e-6)
    assert terms["middle"].item() == pytest.approx(middle, rel=1e-6)
    assert terms["deep"].item() == pytest.approx(deep, rel=1e-6)
    expected_total = 10 * pixel + 1.5 * pixel + middle + 2000 * deep
    assert total.item() == pytest.approx(expected_total, rel=1e-6)


def test_identical_images_zero_terms_with_identity_features():
    img = torch.rand(2, 1, 8, 8)
    img = (img - img.amin((2, 3), keepdim=True)) / (img.amax((2, 3), keepdim=True) - img.amin((2, 3), keepdim=True))
    loss = LRRNetFusionLoss(IdentityFeatures(), w_s=0.25, w_d=0.75)  # w_s + w_d = 1
    total, terms = loss(img, img, img)
    for k in ("pixel", "shallow", "middle", "deep"):
        assert terms[k].item() == pytest.approx(0.0, abs=1e-6), k
    # default weights: the middle target is 3.5 phi, so L_middle = (0.01 + 0.5) * 2.5^2 * mean((255 x)^2)
    _, terms = LRRNetFusionLoss(IdentityFeatures())(img, img, img)
    expected = 0.51 * 2.5**2 * (255.0 * img).square().mean().item()
    assert terms["middle"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["pixel"].item() == 0.0


def test_identical_images_with_vgg_features(random_vgg):
    torch.manual_seed(0)
    img = torch.rand(2, 1, 16, 16)
    _, terms = LRRNetFusionLoss(random_vgg, normalize_sources=False)(img, img, img)
    assert terms["pixel"].item() == 0.0
    assert terms["shallow"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["deep"].item() == pytest.approx(0.0, abs=1e-6)
    feats = random_vgg((255.0 * img).expand(-1, 3, -1, -1))
    expected_middle = 2.5**2 * (0.01 * feats[1].square().mean() + 0.5 * feats[2].square().mean())
    assert terms["middle"].item() == pytest.approx(expected_middle.item(), rel=1e-4)


def test_sources_are_minmax_normalised_by_default():
    """normalize_sources=True: 10 * I_d + 3 is the same target as I_d in [0, 1]."""
    torch.manual_seed(0)
    fused, d, s = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    loss = LRRNetFusionLoss(IdentityFeatures())
    a = loss(fused, d, s)[0]
    b = loss(fused, 10 * d + 3, 0.5 * s - 1)[0]
    assert torch.allclose(a, b, rtol=1e-5)
    # pixel term: MSE(255 F, 255 minmax(I_d))
    dn = (d - d.min()) / (d.max() - d.min())
    assert loss(fused, d, s)[1]["pixel"].item() == pytest.approx(((255 * (fused - dn)) ** 2).mean().item(), rel=1e-5)


def test_gradients_flow_to_fused_only(random_vgg):
    fused = torch.rand(2, 1, 16, 16, requires_grad=True)
    detail = torch.rand(2, 1, 16, 16, requires_grad=True)
    salient = torch.rand(2, 1, 16, 16, requires_grad=True)
    total, _ = LRRNetFusionLoss(random_vgg)(fused, detail, salient)
    total.backward()
    assert fused.grad is not None and torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    assert detail.grad is None and salient.grad is None
    assert all(p.grad is None and not p.requires_grad for p in random_vgg.parameters())


def test_bad_shapes_raise():
    loss = LRRNetFusionLoss(IdentityFeatures())
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=">= 8"):
        loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="gammas"):
        LRRNetFusionLoss(IdentityFeatures(), gammas=(1.0, 2.0))


# ----- VGG-16 sources ---------------------------------------------------------------------


@pytest.fixture
def empty_hub(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_missing_imagenet_weights_error_names_path_and_alternatives(empty_hub):
    expected = empty_hub / "checkpoints" / "vgg16-397923af.pth"
    assert imagenet_vgg16_cache_path() == expected
    with pytest.raises(VGGWeightsNotFoundError) as info:
        vgg16_features("imagenet")
    msg = str(info.value)
    assert str(expected) in msg
    assert "perceptual_features: random" in msg and "local weights file" in msg
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ConfigError)


def test_imagenet_weights_loaded_from_hub_cache(empty_hub, tv_trunk):
    trunk = tv_trunk
    path = empty_hub / "checkpoints" / "vgg16-397923af.pth"
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in trunk.state_dict().items()}, path)
    vgg = vgg16_features("imagenet")
    assert vgg.source == "imagenet" and str(path) in vgg.source_description
    x = 255 * torch.rand(1, 3, 8, 8)
    for ours, ref in zip(vgg(x), _reference_taps(trunk, x)):
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("layout", ["full_model", "features_only"])
def test_local_file_matches_torchvision_features(tmp_path, layout, tv_trunk):
    trunk = tv_trunk
    state = trunk.state_dict()
    if layout == "full_model":
        state = {f"features.{k}": v for k, v in state.items()}
        state["classifier.6.bias"] = torch.zeros(3)  # ignored
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    vgg = vgg16_features(path)
    assert vgg.source == "file" and "vgg16.pth" in vgg.source_description
    x = 255 * torch.rand(1, 1, 16, 16)
    feats = vgg(x)  # single channel repeated to 3
    assert [tuple(f.shape) for f in feats] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    for ours, ref in zip(feats, _reference_taps(trunk, x.repeat(1, 3, 1, 1))):
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-3)


def test_local_file_errors(tmp_path):
    with pytest.raises(VGGWeightsNotFoundError, match="not found"):
        vgg16_features(tmp_path / "absent.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ConfigError, match="missing key"):
        vgg16_features(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="cannot read a state dict"):
        vgg16_features(garbage)


def test_random_features_are_deterministic_frozen_and_labelled(random_vgg):
    again = vgg16_features("random")
    for a, b in zip(random_vgg.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert random_vgg.source == "random" and "random" in random_vgg.source_description
    assert not any(p.requires_grad for p in random_vgg.parameters())
    random_vgg.train()
    assert not random_vgg.training
    loss = LRRNetFusionLoss(random_vgg)
    assert loss.vgg_source == random_vgg.source_description
