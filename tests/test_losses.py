"""Segmentation losses: hand-computed values, agreement with torch / MONAI references,
gradients, and errors."""

from __future__ import annotations

import math

import monai
import pytest
import torch
import torch.nn.functional as F

from fusionseg.losses import build_seg_loss, list_seg_losses

S0_WEIGHTS = [0.5, 2.0, 5.0, 4.0]


@pytest.fixture
def two_pixel_case():
    """1 sample, 2 classes, 1x2 image; softmax = (0.25, 0.75) at both pixels; target [1, 0]."""
    logits = torch.zeros(1, 2, 1, 2)
    logits[:, 1] = math.log(3.0)
    target = torch.tensor([[[1, 0]]])
    return logits, target


@pytest.fixture
def random_case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    return logits, target


#: losses over softmax classes (the region loss, tests/test_outputs.py, takes one channel per region)
CLASS_LOSSES = [n for n in list_seg_losses() if n != "region_dice_bce"]


def test_dice_term_on_hand_built_case(two_pixel_case):
    # class 0: g=[0,1], p=[.25,.25] -> 2*.25/(.5+1) = 1/3; class 1: g=[1,0], p=[.75,.75] -> 1.5/2.5 = .6
    logits, target = two_pixel_case
    loss = build_seg_loss("dice_ce", 2, lambda_ce=0.0)
    assert loss(logits, target).item() == pytest.approx(1 - (1 / 3 + 0.6) / 2, abs=1e-5)


def test_weighted_ce_on_hand_built_case(two_pixel_case):
    logits, target = two_pixel_case
    w = [0.5, 2.0]
    expected = (2.0 * -math.log(0.75) + 0.5 * -math.log(0.25)) / (2.0 + 0.5)
    loss = build_seg_loss("dice_ce", 2, class_weights=w, lambda_dice=0.0)
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert loss(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=torch.tensor(w)).item(), rel=1e-6
    )


def test_weighted_ce_term_equals_torch_cross_entropy(random_case):
    logits, target = random_case
    comps = build_seg_loss("dice_ce", 4, class_weights=S0_WEIGHTS).components(logits, target)
    ref = F.cross_entropy(logits, target, weight=torch.tensor(S0_WEIGHTS))
    torch.testing.assert_close(comps["ce"], ref)


def test_perfect_prediction_gives_near_zero_dice_term(random_case):
    _, target = random_case
    logits = 30.0 * F.one_hot(target, 4).permute(0, 3, 1, 2).float()  # (B, K, H, W)
    comps = build_seg_loss("dice_ce", 4, class_weights=S0_WEIGHTS).components(logits, target)
    assert comps["dice"].item() < 1e-4
    assert comps["ce"].item() < 1e-4


def test_lambdas_scale_the_terms(random_case):
    logits, target = random_case
    base = build_seg_loss("dice_ce", 4).components(logits, target)
    scaled = build_seg_loss("dice_ce", 4, lambda_dice=0.5, lambda_ce=0.25)
    comps = scaled.components(logits, target)
    torch.testing.assert_close(comps["dice"], 0.5 * base["dice"])
    torch.testing.assert_close(comps["ce"], 0.25 * base["ce"])
    torch.testing.assert_close(scaled(logits, target), comps["dice"] + comps["ce"])


def test_dice_class_weights_option_equals_monai_dicece(random_case):
    logits, target = random_case
    ours = build_seg_loss("dice_ce", 4, class_weights=S0_WEIGHTS, dice_class_weights=True)(logits, target)
    ref = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor(S0_WEIGHTS))
    torch.testing.assert_close(ours, ref(logits, target[:, None]))


def test_focal_softmax_on_hand_built_case(two_pixel_case):
    # per pixel -(1-p_t)^2 log p_t on the target class, MONAI mean over pixels AND classes
    logits, target = two_pixel_case
    expected = (0.25**2 * -math.log(0.75) + 0.75**2 * -math.log(0.25)) / 4
    assert build_seg_loss("focal", 2)(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_focal_sigmoid_option_equals_monai_dicefocal(random_case):
    logits, target = random_case
    ours = build_seg_loss("dice_focal", 4, use_softmax=False)(logits, target)
    ref = monai.losses.DiceFocalLoss(to_onehot_y=True, softmax=True, gamma=2.0)
    torch.testing.assert_close(ours, ref(logits, target[:, None]))


@pytest.mark.parametrize("name", CLASS_LOSSES)
@pytest.mark.parametrize("spatial", [(8, 8), (4, 4, 4)])
def test_every_loss_is_finite_scalar_with_finite_gradients(name, spatial):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, *spatial, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, *spatial), generator=g)
    value = build_seg_loss(name, 4)(logits, target)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_target_with_channel_dim_is_accepted(name, random_case):
    logits, target = random_case
    loss = build_seg_loss(name, 4)
    torch.testing.assert_close(loss(logits, target[:, None]), loss(logits, target))


@pytest.mark.parametrize("name", CLASS_LOSSES)
@pytest.mark.parametrize("weights", [[0.5, 2.0, 5.0], [0.5, 2.0, 5.0, 4.0, 1.0]])
def test_class_weight_length_mismatch_raises(name, weights):
    with pytest.raises(ValueError, match=rf"class_weights has {len(weights)} value\(s\).*num_classes=4"):
        build_seg_loss(name, 4, class_weights=weights)


def test_negative_class_weight_raises():
    with pytest.raises(ValueError, match=">= 0"):
        build_seg_loss("dice_ce", 2, class_weights=[-1.0, 1.0])


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(KeyError, match="dice_ce, dice_focal, focal"):
        build_seg_loss("dice_bce", 4)


def test_unknown_option_names_loss_and_accepted_options():
    with pytest.raises(TypeError, match=r"'focal'.*\['lambda_ce'\].*gamma"):
        build_seg_loss("focal", 4, lambda_ce=1.0)


def test_bad_inputs_raise_helpful_errors(random_case):
    logits, target = random_case
    loss = build_seg_loss("dice_ce", 4)
    with pytest.raises(ValueError, match=r"K=4"):
        loss(logits[:, :3], target)
    with pytest.raises(ValueError, match=r"target must have shape \(B, \*S\)"):
        loss(logits, target[:, :4])
    with pytest.raises(TypeError, match="integer class indices"):
        loss(logits, target.float())
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        loss(logits, target + 1)
