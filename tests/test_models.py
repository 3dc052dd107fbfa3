"""Models: a shared tester over every registered model (timm-style), registry
behaviour, input checks, and a hand-computed parameter count."""

from __future__ import annotations

import pytest
import torch

from fusionseg.models import TwoStageUNet, build_model, list_models, register_model
from fusionseg.models import registry as registry_module

#: Tiny widths per model so the shared tester runs in milliseconds on CPU.
TINY_KWARGS: dict[str, dict] = {
    "unet2stage": {"channels": (4, 8), "bottleneck": 8},
    "monai_unet": {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1},
    "a2fseg": {"base": 4, "depth": 2},
    "resnet50_unet": {"decoder_channels": (16, 8, 8, 4, 4)},  # the ResNet-50 encoder is fixed
}
#: Models that support spatial_dims=3 (checked on a 16^3 volume).
SUPPORTS_3D = {"unet2stage", "monai_unet", "a2fseg"}

IN_CH, N_CLS = 3, 4


def _tiny(name: str, spatial_dims: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, IN_CH, N_CLS, spatial_dims=spatial_dims, **TINY_KWARGS.get(name, {}))


def _side(model: torch.nn.Module, base: int) -> int:
    d = int(getattr(model, "required_divisor", 1))
    return max(base, d) // d * d


def _forward_backward(model: torch.nn.Module, spatial_dims: int, base: int) -> None:
    side = _side(model, base)
    x = torch.randn(2, IN_CH, *([side] * spatial_dims), requires_grad=True)
    y = model(x)
    assert y.shape == (2, N_CLS, *([side] * spatial_dims))
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    # deep-supervision heads (A2FSeg) do not feed the final output: they learn from their own losses
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and ".heads." not in n]
    assert grads and all(g is not None for g in grads), "every parameter should receive a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", list_models("segmentation"))
def test_forward_backward_2d_shape_and_finite(name):
    model = _tiny(name, 2)
    assert model.in_channels == IN_CH and model.num_classes == N_CLS and model.spatial_dims == 2
    _forward_backward(model, 2, 32)


@pytest.mark.parametrize("name", sorted(SUPPORTS_3D & set(list_models("segmentation"))))
def test_forward_backward_3d_shape_and_finite(name):
    _forward_backward(_tiny(name, 3), 3, 16)


@pytest.mark.parametrize("name", list_models("segmentation"))
def test_wrong_channel_count_raises_with_expected_shape(name):
    model = _tiny(name)
    side = _side(model, 32)
    with pytest.raises(ValueError, match=rf"expected {IN_CH} input channels"):
        model(torch.randn(1, IN_CH + 1, side, side))


@pytest.mark.parametrize("name", list_models("segmentation"))
def test_wrong_ndim_raises_and_suggests_batch_dim(name):
    model = _tiny(name)
    side = _side(model, 32)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*x\[None\]"):
        model(torch.randn(IN_CH, side, side))


@pytest.mark.parametrize("name", list_models("segmentation"))
def test_non_divisible_size_raises_with_padded_shape(name):
    model = _tiny(name)
    d = model.required_divisor
    side = _side(model, 32)
    with pytest.raises(ValueError, match=rf"multiple of {d}.*\(1, {IN_CH}, {side}, {side}\)"):
        model(torch.randn(1, IN_CH, side - 1, side))


@pytest.mark.parametrize("name", list_models("segmentation"))
def test_integer_input_raises_type_error(name):
    model = _tiny(name)
    side = _side(model, 32)
    with pytest.raises(TypeError, match="floating point"):
        model(torch.zeros(1, IN_CH, side, side, dtype=torch.long))


def test_required_divisors():
    assert TwoStageUNet.required_divisor == 4
    assert build_model("monai_unet", 1, 2, channels=(4, 8, 16, 32), strides=(2, 2, 2)).required_divisor == 8
    assert build_model("monai_unet", 1, 2, channels=(4, 8, 16), strides=(2, 3)).required_divisor == 6


def test_two_stage_unet_parameter_count_matches_hand_computation():
    """Defaults (64, 128, bottleneck 256, no norm), 4 in-channels, 4 classes, 2-D."""

    def conv(cin, cout, k):  # weights + bias
        return cin * cout * k * k + cout

    expected = (
        conv(4, 64, 3)
        + conv(64, 64, 3)  # enc1: 2368 + 36928
        + conv(64, 128, 3)
        + conv(128, 128, 3)  # enc2: 73856 + 147584
        + conv(128, 256, 3)
        + conv(256, 256, 3)  # bottleneck: 295168 + 590080
        + conv(256, 128, 2)  # up2 (transposed 2x2): 131200
        + conv(256, 128, 3)
        + conv(128, 128, 3)  # dec2 on [up; skip]: 295040 + 147584
        + conv(128, 64, 2)  # up1: 32832
        + conv(128, 64, 3)
        + conv(64, 64, 3)  # dec1: 73792 + 36928
        + conv(64, 4, 1)  # head: 260
    )
    assert expected == 1_863_620
    model = build_model("unet2stage", in_channels=4, num_classes=4)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_two_stage_unet_norm_options_run(norm):
    model = build_model("unet2stage", 2, 3, channels=(4, 8), bottleneck=8, norm=norm)
    assert model(torch.randn(2, 2, 32, 32)).shape == (2, 3, 32, 32)
    # a norm layer after every conv; convs then carry no bias
    n_norm = sum(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in model.modules())
    assert n_norm == 10


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(KeyError, match="monai_unet, resnet50_unet, unet2stage"):
        build_model("unet3stage", 4, 4)


def test_unknown_kwarg_names_model_and_accepted_arguments():
    with pytest.raises(TypeError, match=r"'unet2stage'.*\['widths'\].*'channels', 'bottleneck', 'norm'"):
        build_model("unet2stage", 4, 4, widths=(8, 16))


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("unet2stage", {"channels": (8, 16, 32)}, "exactly 2 encoder stages"),
        ("unet2stage", {"norm": "group"}, "norm must be one of"),
        ("unet2stage", {"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ("monai_unet", {"channels": (4, 8, 16), "strides": (2, 2, 2)}, r"len\(strides\) == len\(channels\) - 1"),
    ],
)
def test_invalid_constructor_arguments_raise(name, kwargs, match):
    kwargs = dict(kwargs)
    spatial_dims = kwargs.pop("spatial_dims", 2)
    with pytest.raises(ValueError, match=match):
        build_model(name, 4, 4, spatial_dims=spatial_dims, **kwargs)


def test_register_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("unet2stage")(TwoStageUNet)


def test_register_builder_without_core_arguments_raises(monkeypatch):
    monkeypatch.setattr(registry_module, "_MODEL_REGISTRY", dict(registry_module._MODEL_REGISTRY))

    def bad_builder(channels=3):
        return torch.nn.Identity()

    with pytest.raises(TypeError, match="in_channels"):
        register_model("bad_builder_for_test")(bad_builder)
    assert "bad_builder_for_test" not in list_models()
