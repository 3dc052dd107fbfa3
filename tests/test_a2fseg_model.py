"""A2FSeg (S1; METHODS.md section 4): shapes, missing-modality handling (skipped
branches, bit-identity, per-sample masks), attention weights, the average-only
ablation, errors, gradients and registry construction. Tiny sizes, CPU."""

from __future__ import annotations

import pytest
import torch

import fusionseg.models.a2fseg  # noqa: F401  (registers "a2fseg")
from fusionseg.models.a2fseg import A2FSeg
from fusionseg.models.registry import build_model

torch.set_num_threads(1)

M, K, BASE, DEPTH, SIDE = 4, 3, 4, 2, 16


def _model(spatial_dims: int = 2, in_channels: int = M, **kwargs) -> A2FSeg:
    torch.manual_seed(0)
    return A2FSeg(in_channels, K, spatial_dims, base=BASE, depth=DEPTH, **kwargs)


def _input(batch: int = 2, spatial_dims: int = 2, in_channels: int = M, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_channels, *[SIDE] * spatial_dims, generator=gen)


#: Sample 0 lacks modality 1; nobody has modality 2.
MASK = torch.tensor([[True, False, False, True], [True, True, False, True]])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_of_every_head(spatial_dims):
    in_channels = M if spatial_dims == 2 else 2
    model = _model(spatial_dims, in_channels)
    assert (model.in_channels, model.num_classes, model.spatial_dims) == (in_channels, K, spatial_dims)
    assert model.required_divisor == 2**DEPTH and model.modality_branches is True
    x = _input(2, spatial_dims, in_channels)
    out = model.forward_heads(x)
    spatial = [SIDE] * spatial_dims
    assert out.final.shape == (2, K, *spatial) and out.final.dtype == torch.float32
    assert len(out.average) == DEPTH
    for i, logits in enumerate(out.average):
        assert logits.shape == (2, K, *[SIDE // 2**i] * spatial_dims)
    assert len(out.branches) == in_channels
    for index, logits in out.branches:
        assert torch.equal(index, torch.arange(2)) and index.dtype == torch.long
        assert [t.shape for t in logits] == [(2, K, *[SIDE // 2**i] * spatial_dims) for i in range(DEPTH)]
    assert out.weights.shape == (2, in_channels, BASE, *spatial)
    assert out.available.dtype == torch.bool and out.available.all()
    assert torch.equal(model(x), out.final)


def test_stage_widths_are_capped():
    model = A2FSeg(2, 2, base=8, depth=3, max_channels=24)
    assert model.widths == [8, 16, 24, 24]
    assert model.required_divisor == 8


def _all_tensors(out) -> list[torch.Tensor]:
    tensors = [out.final, *out.average, out.weights]
    for entry in out.branches:
        if entry is not None:
            tensors += [entry[0], *entry[1]]
    return tensors


@pytest.mark.parametrize("missing", ["drop", "zero_features"])
def test_missing_channel_values_never_matter(missing):
    model = _model()
    x = _input()
    outs = []
    for fill in ("zeros", "random", "nan"):
        x_fill = x.clone()
        absent = ~MASK
        values = {"zeros": 0.0, "random": 1e3, "nan": float("nan")}[fill]
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9)) * values
        x_fill[absent] = noise[absent] if fill == "random" else values
        with torch.no_grad():
            outs.append(model.forward_heads(x_fill, MASK, missing=missing))
    ref = _all_tensors(outs[0])
    assert all(torch.isfinite(t).all() for t in ref if t.is_floating_point())
    assert outs[0].branches[2] is None
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(ref, _all_tensors(other), strict=True))


def test_each_sample_depends_only_on_its_own_mask():
    # float64: batch-size-dependent conv kernels differ by ~1e-6 in float32, ~1e-15 here
    model = _model().double()
    x = _input().double()
    mask = torch.tensor([[True, False, True, True], [True, True, True, True]])
    with torch.no_grad():
        both = model.forward_heads(x, mask)
        alone = [model.forward_heads(x[b : b + 1], mask[b : b + 1]) for b in range(2)]
    assert torch.equal(both.branches[1][0], torch.tensor([1]))
    assert alone[0].branches[1] is None
    for b in range(2):
        torch.testing.assert_close(both.final[b : b + 1], alone[b].final, rtol=0, atol=1e-12)
        torch.testing.assert_close(both.weights[b : b + 1], alone[b].weights, rtol=0, atol=1e-12)
    # and sample 0 with its mask differs from sample 0 with every modality
    with torch.no_grad():
        full = model(x[:1])
    assert not torch.allclose(full, alone[0].final)


def test_drop_means_and_softmax_are_over_available_modalities_only():
    """Identical branches and g_m on identical images: with "drop", every masked mean of
    identical features is that feature and the softmax is uniform, so any non-empty mask
    gives the output of one modality; "zero_features" divides by M and differs."""
    model = _model().double()
    for m in range(1, M):
        model.branches[m].load_state_dict(model.branches[0].state_dict())
        model.attention_blocks[m].load_state_dict(model.attention_blocks[0].state_dict())
    x = _input(1).double()[:, :1].expand(1, M, SIDE, SIDE).contiguous()
    one = torch.tensor([[True, False, False, False]])
    with torch.no_grad():
        ref = model(x, one)
        for mask in ([[True] * M], [[False, True, False, True]], [[False, False, True, False]]):
            torch.testing.assert_close(model(x, torch.tensor(mask)), ref, rtol=0, atol=1e-10)
        assert not torch.allclose(model(x, one, missing="zero_features"), ref)


@pytest.mark.parametrize("attention", ["sigmoid", "leaky_relu"])
def test_weights_sum_to_one_over_available_and_vanish_for_absent(attention):
    model = _model(attention=attention)
    with torch.no_grad():
        out = model.forward_heads(_input(), MASK)
    weights = out.weights  # (B, M, C, H, W)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones_like(weights[:, 0]), rtol=0, atol=1e-6)
    absent = ~MASK
    assert (weights[absent] == 0).all()
    assert (weights[MASK] > 0).all()


def test_zero_features_softmax_includes_absent_modalities():
    model = _model()
    with torch.no_grad():
        drop = model.forward_heads(_input(), MASK, missing="drop")
        zero = model.forward_heads(_input(), MASK, missing="zero_features")
    torch.testing.assert_close(zero.weights.sum(dim=1), torch.ones_like(zero.weights[:, 0]), rtol=0, atol=1e-6)
    assert (zero.weights[~MASK] > 0).all()  # g_m([Fbar; 0]) takes part in the softmax
    assert not torch.allclose(drop.final, zero.final)
    # all modalities present: the two conventions coincide
    full = torch.ones_like(MASK)
    with torch.no_grad():
        a = model(_input(), full, missing="drop")
        b = model(_input(), full, missing="zero_features")
    assert torch.equal(a, b)


def test_average_only_ablation_returns_average_decoder_logits():
    full_model = _model()
    avg_model = _model(adaptive=False)
    assert avg_model.attention_blocks is None and avg_model.fusion_head is None
    c = BASE
    g_m = (2 * c * c * 9 + 2 * c) + (c * c * 9 + c)  # conv-IN (no bias), conv with bias
    head = (2 * c * c * 9 + 2 * c) + (c * K + K)
    n_full = sum(p.numel() for p in full_model.parameters())
    n_avg = sum(p.numel() for p in avg_model.parameters())
    assert n_full - n_avg == M * g_m + head
    # the ablation's parameters are exactly the full model's minus g_m and the head
    result = avg_model.load_state_dict(full_model.state_dict(), strict=False)
    assert not result.missing_keys
    assert {k.split(".")[0] for k in result.unexpected_keys} == {"attention_blocks", "fusion_head"}
    x = _input()
    with torch.no_grad():
        out = avg_model.forward_heads(x, MASK)
        ref = full_model.forward_heads(x, MASK)
    assert out.weights is None
    assert torch.equal(out.final, out.average[0])
    assert torch.equal(out.final, ref.average[0])
    assert not torch.allclose(ref.final, ref.average[0])


def test_construction_is_deterministic_under_manual_seed():
    a, b = _model(), _model()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"attention": "softmax"}, "attention must be one of"),
        ({"depth": 0}, "depth must be >= 1"),
        ({"max_channels": 2}, "max_channels must be >= base"),
    ],
)
def test_invalid_constructor_arguments_raise(kwargs, match):
    kwargs = {"spatial_dims": 2, "base": BASE, "depth": DEPTH, **kwargs}
    with pytest.raises(ValueError, match=match):
        A2FSeg(M, K, **kwargs)


def test_invalid_forward_arguments_raise():
    model = _model()
    x = _input()
    no_modality = torch.tensor([[True, False, False, False], [False, False, False, False]])
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] have no available modality"):
        model(x, no_modality)
    with pytest.raises(ValueError, match=rf"expected {M} input channels"):
        model(_input(in_channels=M - 1))
    with pytest.raises(ValueError, match="missing must be one of"):
        model(x, missing="zeros")
    with pytest.raises(ValueError, match=r"available must have shape \(B, M\)=\(2, 4\)"):
        model(x, MASK[:, :3])
    with pytest.raises(ValueError, match="multiple of 4"):
        model(x[..., :-2])
    with pytest.raises(TypeError, match="bool tensor"):
        model(x, MASK.float())


@pytest.mark.parametrize("missing", ["drop", "zero_features"])
def test_backward_reaches_present_branches_only(missing):
    model = _model()
    x = _input().requires_grad_(True)
    out = model.forward_heads(x, MASK, missing=missing)
    loss = out.final.square().mean() + sum(t.square().mean() for t in out.average)
    loss = loss + sum(t.square().mean() for entry in out.branches if entry is not None for t in entry[1])
    loss.backward()
    assert all(p.grad is None for p in model.branches[2].parameters())
    for m in (0, 1, 3):
        grads = [p.grad for p in model.branches[m].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    g_absent = [p.grad for p in model.attention_blocks[2].parameters()]
    if missing == "drop":
        assert all(g is None for g in g_absent)
    else:  # g_2 ran on [Fbar; 0]
        assert all(g is not None for g in g_absent)
    assert (x.grad[~MASK] == 0).all() and (x.grad[MASK].abs().sum() > 0)


def test_built_through_registry():
    model = build_model("a2fseg", in_channels=4, num_classes=4, spatial_dims=2, base=4, depth=2)
    assert isinstance(model, A2FSeg) and model.required_divisor == 4
    assert model(torch.randn(1, 4, 8, 8)).shape == (1, 4, 8, 8)
