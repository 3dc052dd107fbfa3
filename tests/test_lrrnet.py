"""LRRNet fusion network (METHODS.md section 2): parameter count by hand, the LISTA
recursion against a hand-written reference, normalisation, registry and input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusionseg.models import build_model, list_models
from fusionseg.models.lrrnet import LRRNet, minmax_normalize, soft_threshold


def _tiny(**kwargs) -> LRRNet:
    torch.manual_seed(0)
    opts = {"n": 4, "blocks": 2, **kwargs}
    return build_model("lrrnet", in_channels=2, num_classes=1, spatial_dims=2, **opts)


def _conv(cin: int, cout: int, k: int = 3) -> int:  # weights + bias
    return cin * cout * k * k + cout


def _expected_params(n: int, blocks: int, k: int = 3) -> int:
    encoder = (
        _conv(1, 2 * n, k)  # W0: 1 -> 2n
        + blocks * (_conv(2 * n, 1, k) + _conv(1, 2 * n, k))  # Wd_k: 2n -> 1, Wt_k: 1 -> 2n
        + 2 * n  # theta, one threshold per channel
        + 1  # lambda_z
    )
    decoder = 4 * _conv(n, 1, k) + 2 * _conv(2, 1, k)  # D_Lx, D_Sx, D_Ly, D_Sy; low and high mixers
    return 2 * encoder + decoder


def test_parameter_count_paper_sizes_matches_hand_computation():
    """n = 128, K = 4 blocks, 3x3 convolutions: 49,204 (about 49.2k, METHODS.md section 2)."""
    encoder = 2560 + 4 * (2305 + 2560) + 256 + 1  # W0 + 4 x (Wd + Wt) + theta + lambda_z
    decoder = 4 * 1153 + 2 * 19
    assert encoder == 22_277 and decoder == 4_650
    assert _expected_params(128, 4) == 2 * encoder + decoder == 49_204
    model = build_model("lrrnet", in_channels=2, num_classes=1, spatial_dims=2, n=128, blocks=4)
    assert sum(p.numel() for p in model.parameters()) == 49_204


@pytest.mark.parametrize(("n", "blocks", "k", "fusion"), [(4, 2, 3, "cat"), (3, 0, 1, "cat"), (4, 1, 5, "cat")])
def test_parameter_count_other_sizes(n, blocks, k, fusion):
    model = _tiny(n=n, blocks=blocks, kernel_size=k, fusion=fusion)
    assert sum(p.numel() for p in model.parameters()) == _expected_params(n, blocks, k)


def test_add_decoder_uses_one_channel_mixers():
    model = _tiny(fusion="add")
    assert sum(p.numel() for p in model.parameters()) == _expected_params(4, 2) - 2 * (_conv(2, 1) - _conv(1, 1))


def test_registered_and_registry_attributes():
    assert "lrrnet" in list_models()
    model = _tiny()
    assert (model.in_channels, model.num_classes, model.spatial_dims, model.required_divisor) == (2, 1, 2, 1)


def test_forward_backward_finite_and_every_parameter_gets_a_gradient():
    model = _tiny()
    x = torch.rand(2, 1, 32, 32)
    y = torch.rand(2, 1, 32, 32)
    fused = model(x, y)
    assert fused.shape == (2, 1, 32, 32) and fused.dtype == torch.float32
    assert torch.isfinite(fused).all()
    fused.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_output_is_minmax_normalised_per_slice():
    model = _tiny()
    fused = model(torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16))
    flat = fused.flatten(1)
    assert torch.allclose(flat.amin(1), torch.zeros(3)) and torch.allclose(flat.amax(1), torch.ones(3))


def test_stacked_call_equals_two_argument_call():
    model = _tiny()
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    assert torch.equal(model(torch.cat([x, y], dim=1)), model(x, y))


def test_input_normalisation_is_per_slice_and_scale_invariant():
    model = _tiny()
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    ref = model(x, y)
    scaled = model(100.0 * x + 7.0, 0.01 * y - 3.0)  # affine changes vanish after min-max
    assert torch.allclose(ref, scaled, atol=1e-4)  # float32 rounding of the affine map
    # each sample normalised on its own: a batch of 2 equals two batches of 1
    assert torch.allclose(ref[1:], model(x[1:], y[1:]), atol=1e-6)


def test_constant_inputs_give_finite_output():
    model = _tiny()
    parts = model.forward_parts(torch.full((2, 1, 16, 16), 5.0), torch.zeros(2, 1, 16, 16))
    assert torch.equal(parts["x_in"], torch.zeros(2, 1, 16, 16))  # constant slice -> 0, no 0/0
    assert torch.isfinite(parts["fused"]).all()
    assert parts["fused"].min() >= 0 and parts["fused"].max() <= 1


def test_constant_inputs_paper_sizes_finite():
    torch.manual_seed(0)
    model = build_model("lrrnet", in_channels=2, num_classes=1, n=128, blocks=4)
    with torch.no_grad():
        fused = model(torch.ones(1, 1, 8, 8), torch.ones(1, 1, 8, 8))
    assert torch.isfinite(fused).all()


def test_forward_parts_shapes_and_fused_is_low_plus_high():
    model = _tiny(normalize_output=False)
    parts = model.forward_parts(torch.rand(2, 1, 12, 10), torch.rand(2, 1, 12, 10))
    for key in ("fused", "fused_raw", "low", "high", "x_low", "x_high", "y_low", "y_high"):
        assert parts[key].shape == (2, 1, 12, 10), key
    for key in ("lowrank_x", "sparse_x", "lowrank_y", "sparse_y"):
        assert parts[key].shape == (2, 4, 12, 10), key
    assert torch.equal(parts["fused"], parts["low"] + parts["high"])


def _ref_conv(x: torch.Tensor, seq: torch.nn.Sequential) -> torch.Tensor:
    conv = seq[1]
    p = conv.kernel_size[0] // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), conv.weight, conv.bias)


def test_lista_encoder_matches_the_recursion_by_hand():
    """Z0 = eta(W0 x); Z_{k+1} = eta(lambda_z Z_k + Wt_k (x - Wd_k Z_k)); L, S = halves."""
    model = _tiny(n=3, blocks=2)
    enc = model.encoder_x
    x = torch.rand(2, 1, 9, 7)

    def eta(r):  # soft threshold with per-channel theta
        th = enc.theta.view(1, -1, 1, 1)
        return torch.where(r > th, r - th, torch.where(r < -th, r + th, torch.zeros_like(r)))

    z = eta(_ref_conv(x, enc.w0))
    for block in enc.blocks:
        z = eta(enc.lambda_z * z + _ref_conv(x - _ref_conv(z, block.wd), block.wt))
    low, sparse = enc(x)
    assert torch.allclose(low, z[:, :3], atol=1e-6) and torch.allclose(sparse, z[:, 3:], atol=1e-6)


def test_theta_and_lambda_z_shapes_init_and_not_shared_between_encoders():
    model = _tiny(n=5)
    for enc in (model.encoder_x, model.encoder_y):
        assert enc.theta.shape == (10,) and enc.lambda_z.shape == ()
        assert enc.theta.requires_grad and enc.lambda_z.requires_grad
        assert ((enc.theta.detach() >= 0) & (enc.theta.detach() < 1)).all() and 0 <= float(enc.lambda_z.detach()) < 1
    ids_x = {id(p) for p in model.encoder_x.parameters()}
    assert ids_x.isdisjoint(id(p) for p in model.encoder_y.parameters())


def test_soft_threshold_hand_values():
    r = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0]).view(1, 5, 1, 1)
    theta = torch.tensor([1.0, 1.0, 1.0, 0.25, 0.0])
    assert soft_threshold(r, theta).flatten().tolist() == [-2.0, 0.0, 0.0, 0.25, 3.0]


def test_minmax_normalize_hand_values_and_constant_slice():
    x = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])  # (2, 1, 2, 2)
    out = minmax_normalize(x)
    assert out[0].flatten().tolist() == [0.0, 0.25, 0.5, 1.0]
    assert out[1].flatten().tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 3}, "in_channels must be 2"),
        ({"num_classes": 4}, "num_classes must be 1"),
        ({"spatial_dims": 3}, "spatial_dims must be 2"),
        ({"kernel_size": 2}, "kernel_size must be odd"),
        ({"fusion": "max"}, "fusion must be one of"),
        ({"n": 0}, "n must be >= 1"),
    ],
)
def test_invalid_constructor_arguments_raise(kwargs, match):
    args = {"in_channels": 2, "num_classes": 1, "spatial_dims": 2, "n": 4, "blocks": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_model("lrrnet", **args)


def test_bad_inputs_raise_with_the_shape_to_use():
    model = _tiny()
    with pytest.raises(ValueError, match=r"expected 2 input channels"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*x\[None\]"):
        model(torch.rand(1, 8, 8), torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        model(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 6))
    with pytest.raises(TypeError, match="floating point"):
        model(torch.zeros(1, 2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="H, W >= 2"):
        model(torch.rand(1, 1, 1, 8), torch.rand(1, 1, 1, 8))
