"""Fusion metrics (entropy, MI, Qabf) on named fixtures with exact, hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusionseg.evaluation.metrics.fusion_quality import (
    QABF_CONSTANTS,
    entropy,
    fusion_mutual_information,
    mutual_information,
    qabf,
)

C = QABF_CONSTANTS


def _q_g(strength: float) -> float:
    return C["gamma_g"] / (1 + math.exp(C["kappa_g"] * (strength - C["sigma_g"])))


def _q_a(orientation: float) -> float:
    return C["gamma_a"] / (1 + math.exp(C["kappa_a"] * (orientation - C["sigma_a"])))


#: Score of a perfectly preserved edge: 0.9994/(1+e^-7.5) * 0.9879/(1+e^-4.4).
Q_MAX = _q_g(1.0) * _q_a(1.0)


@pytest.fixture
def brain_like():
    """A 32 x 32 image with a bright disc, a gradient and texture (all edge orientations)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    disc = ((yy - 14) ** 2 + (xx - 17) ** 2 < 81).astype(float)
    return disc + 0.02 * xx + 0.1 * rng.random((32, 32))


@pytest.fixture
def other_source():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:32, :32]
    return ((yy - 18) ** 2 + (xx - 12) ** 2 < 49).astype(float) * 2 + 0.3 * rng.random((32, 32))


# ----- entropy and mutual information ------------------------------------------------


def test_entropy_of_four_equally_frequent_levels_is_two_bits():
    image = np.tile([0.0, 1.0, 2.0, 3.0], (4, 1))  # 4 x 4, each level 4 times
    assert entropy(image) == pytest.approx(2.0, abs=1e-12)
    assert entropy(np.full((5, 5), 7.0)) == 0.0


def test_mutual_information_of_an_image_with_itself_is_its_entropy(brain_like):
    assert mutual_information(brain_like, brain_like) == pytest.approx(entropy(brain_like), abs=1e-10)
    assert fusion_mutual_information(brain_like, brain_like, brain_like) == pytest.approx(
        2 * entropy(brain_like), abs=1e-10
    )


def test_mutual_information_of_independent_patterns_is_zero():
    yy, xx = np.mgrid[:4, :4]
    a, b = (xx % 2).astype(float), (yy % 2).astype(float)  # joint histogram uniform over 4 cells
    assert mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(a, np.zeros((4, 4))) == 0.0  # constant image: no information


def test_mutual_information_is_invariant_to_affine_rescaling_and_symmetric(brain_like, other_source):
    mi = mutual_information(brain_like, other_source)
    assert 0 < mi <= min(entropy(brain_like), entropy(other_source)) + 1e-12
    assert mutual_information(255 * brain_like + 3, other_source) == pytest.approx(mi, abs=1e-10)
    assert mutual_information(other_source, brain_like) == pytest.approx(mi, abs=1e-10)
    assert fusion_mutual_information(brain_like, brain_like, other_source) == pytest.approx(
        fusion_mutual_information(brain_like, other_source, brain_like), abs=1e-12
    )


def test_mutual_information_inside_mask():
    image = np.array([[0.0, 1.0], [0.0, 5.0]])
    mask = np.array([[True, True], [False, False]])
    assert entropy(image, mask=mask) == pytest.approx(1.0)  # two levels once each
    assert mutual_information(image, image, mask=mask) == pytest.approx(1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="2-D"):
        entropy(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        mutual_information(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="mask is empty"):
        entropy(np.zeros((3, 3)), mask=np.zeros((3, 3), bool))


# ----- Qabf ------------------------------------------------------------------------------


def test_qabf_of_identical_images_is_the_perfect_edge_score(brain_like):
    assert Q_MAX == pytest.approx(0.9747936, abs=1e-7)
    assert qabf(brain_like, brain_like, brain_like) == pytest.approx(Q_MAX, abs=1e-12)


def test_qabf_contrast_inversion_keeps_orientation(brain_like):
    """Edges are undirected: F = -A has the same orientation modulo pi, the same strength."""
    assert qabf(-brain_like, brain_like, brain_like) == pytest.approx(Q_MAX, abs=1e-12)


def test_qabf_doubled_contrast_halves_relative_strength(brain_like):
    """F = 2A: G = 1/2 everywhere, so Q = Gamma_g / (1 + e^0) * Q_alpha(1) = 0.4997 * Q_alpha(1)."""
    assert qabf(2 * brain_like, brain_like, brain_like) == pytest.approx(0.4997 * _q_a(1.0), abs=1e-12)


def test_qabf_flat_fusion_of_a_ramp():
    """A = B = horizontal ramp (orientation 0), F = 0 (no edges, atan2(0, 0) = 0): Q_g(0) Q_alpha(1)."""
    ramp = np.tile(np.arange(8, dtype=float), (8, 1))
    assert qabf(np.zeros((8, 8)), ramp, ramp) == pytest.approx(_q_g(0.0) * _q_a(1.0), abs=1e-15)


def test_qabf_bounded_and_symmetric(brain_like, other_source):
    rng = np.random.default_rng(2)
    for fused in (0.5 * (brain_like + other_source), rng.random((32, 32)), np.maximum(brain_like, other_source)):
        q = qabf(fused, brain_like, other_source)
        assert 0.0 < q <= Q_MAX
        assert q == pytest.approx(qabf(fused, other_source, brain_like), abs=1e-12)
    # keeping one source exactly scores higher than noise
    assert qabf(brain_like, brain_like, other_source) > qabf(rng.random((32, 32)), brain_like, other_source)


def test_qabf_inside_mask(brain_like, other_source):
    mask = np.zeros((32, 32), bool)
    mask[4:28, 4:28] = True
    assert 0 < qabf(brain_like, brain_like, other_source, mask=mask) <= Q_MAX


def test_qabf_undefined_for_flat_sources():
    flat = np.ones((8, 8))
    with pytest.raises(ValueError, match="neither source has any gradient"):
        qabf(flat, flat, flat)
