"""Fusion-specific image metrics: entropy, mutual information and Qabf (S0 B).

Each metric compares a fused image F with its two sources A and B (for fusionseg,
T1CE and FLAIR); all are pure functions of 2-D real arrays of one shape (computed in
float64), with an optional boolean ``mask`` (e.g. the brain mask) restricting the
voxels used; say which with the results (docs/EVALUATION.md, image quality).

- :func:`entropy`, :func:`mutual_information`: histogram estimates in bits
  (log base 2), the image-fusion convention (not scikit-image's normalised MI).
- :func:`fusion_mutual_information`: MI(F, A) + MI(F, B) (Qu, Zhang & Yan,
  Electronics Letters 38(7), 2002).
- :func:`qabf`: the Xydeas-Petrovic gradient-based edge-preservation metric
  (Electronics Letters 36(4), 2000), Sobel gradients.

VIF (visual information fidelity, Sheikh & Bovik 2006) is NOT provided: no
maintained library that implements it (e.g. piq, sewar, torchmetrics) is installed in
the project environment, and the project does not ship its own version.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "entropy",
    "mutual_information",
    "fusion_mutual_information",
    "qabf",
    "QABF_CONSTANTS",
    "DEFAULT_BINS",
]

#: Histogram bins per image: 256, the 8-bit grey-level convention of fusion papers.
DEFAULT_BINS = 256

#: Sigmoid constants of Xydeas & Petrovic (2000), as used by the common reference
#: implementations (e.g. Zheng's MATLAB fusion-metrics toolbox): strength
#: Gamma_g, kappa_g, sigma_g and orientation Gamma_a, kappa_a, sigma_a.
QABF_CONSTANTS = {
    "gamma_g": 0.9994,
    "kappa_g": -15.0,
    "sigma_g": 0.5,
    "gamma_a": 0.9879,
    "kappa_a": -22.0,
    "sigma_a": 0.8,
}


def _as_2d(name: str, image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image (H, W), got shape {arr.shape}; compute per slice.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values.")
    return arr


def _images(
    names: tuple[str, ...], images: tuple[np.ndarray, ...], mask: np.ndarray | None
) -> tuple[list[np.ndarray], np.ndarray | None]:
    arrs = [_as_2d(n, im) for n, im in zip(names, images)]
    for n, a in zip(names[1:], arrs[1:]):
        if a.shape != arrs[0].shape:
            raise ValueError(f"{n} shape {a.shape} differs from {names[0]} shape {arrs[0].shape}.")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != arrs[0].shape:
            raise ValueError(f"mask shape {mask.shape} differs from the image shape {arrs[0].shape}.")
        if not mask.any():
            raise ValueError("mask is empty: give a mask with at least one voxel, or mask=None.")
    return arrs, mask


def _range(values: np.ndarray, value_range: tuple[float, float] | None) -> tuple[float, float]:
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
        if not hi > lo:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}.")
        return lo, hi
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)  # constant image: one occupied bin


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def entropy(
    image: np.ndarray,
    bins: int = DEFAULT_BINS,
    value_range: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Shannon entropy of the grey-level histogram, in bits.

    ``H = -sum_i p_i log2 p_i`` over ``bins`` equal-width bins spanning
    ``value_range`` (default: the image's own [min, max]; a constant image has H = 0).

    Args:
        image: 2-D array (H, W), any real dtype.
        bins: number of histogram bins (default 256).
        value_range: (low, high) of the bins; values outside are not counted.
        mask: optional boolean (H, W) mask; only masked pixels are counted.

    Returns:
        Entropy in bits, in [0, log2(bins)].

    Raises:
        ValueError: not 2-D, non-finite values, bad mask or value_range, bins < 1.
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins!r}.")
    (a,), mask = _images(("image",), (image,), mask)
    values = a[mask] if mask is not None else a.ravel()
    counts, _ = np.histogram(values, bins=int(bins), range=_range(values, value_range))
    return _entropy_bits(counts / counts.sum())


def mutual_information(
    image: np.ndarray,
    reference: np.ndarray,
    bins: int = DEFAULT_BINS,
    value_range: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Mutual information of two images from their joint histogram, in bits.

    ``MI = sum_ij p_ij log2(p_ij / (p_i p_j))`` with ``p_ij`` the normalised
    ``bins x bins`` joint histogram (``numpy.histogram2d``) and ``p_i``, ``p_j`` its
    marginals; equivalently H(image) + H(reference) - H(image, reference). Each axis
    spans ``value_range`` if given, else that image's own [min, max] (so MI does not
    depend on affine rescaling of either image). MI(A, A) = entropy(A).

    Args:
        image, reference: 2-D arrays (H, W) of the same shape.
        bins: bins per axis (default 256).
        value_range: (low, high) used for both axes, or None (per-image range).
        mask: optional boolean (H, W) mask.

    Returns:
        MI in bits, >= 0 (up to rounding) and <= min(H(image), H(reference)).

    Raises:
        ValueError: shape mismatch, not 2-D, non-finite values, bad mask, bins < 1.
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins!r}.")
    (a, b), mask = _images(("image", "reference"), (image, reference), mask)
    va = a[mask] if mask is not None else a.ravel()
    vb = b[mask] if mask is not None else b.ravel()
    joint, _, _ = np.histogram2d(va, vb, bins=int(bins), range=[_range(va, value_range), _range(vb, value_range)])
    p = joint / joint.sum()  # (bins, bins)
    pa = p.sum(axis=1)  # marginal of image
    pb = p.sum(axis=0)  # marginal of reference
    return _entropy_bits(pa) + _entropy_bits(pb) - _entropy_bits(p.ravel())


def fusion_mutual_information(
    fused: np.ndarray,
    source_a: np.ndarray,
    source_b: np.ndarray,
    bins: int = DEFAULT_BINS,
    value_range: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Fusion MI: MI(F, A) + MI(F, B) in bits (Qu et al. 2002); higher = more source information kept.

    See :func:`mutual_information` for the estimator (``bins`` per axis, default 256;
    per-image ranges unless ``value_range`` is given).

    Args:
        fused: F, 2-D (H, W).
        source_a, source_b: A and B, 2-D (H, W), same shape (e.g. T1CE and FLAIR).
        bins, value_range, mask: as for :func:`mutual_information`.

    Returns:
        MI_F^AB in bits, in [0, H(A) + H(B)]; symmetric in A and B.

    Raises:
        ValueError: as :func:`mutual_information`.
    """
    return mutual_information(fused, source_a, bins, value_range, mask) + mutual_information(
        fused, source_b, bins, value_range, mask
    )


def _sobel(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(strength g, orientation alpha) of the 3x3 Sobel gradient, reflect boundary."""
    sx = ndimage.sobel(image, axis=1, mode="reflect")  # d/dx (along columns)
    sy = ndimage.sobel(image, axis=0, mode="reflect")  # d/dy (along rows)
    return np.hypot(sx, sy), np.arctan2(sy, sx)


def _edge_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Q^{XF}(n, m) = Q_g Q_alpha of Xydeas & Petrovic, per pixel."""
    c = QABF_CONSTANTS
    hi = np.maximum(g_src, g_f)
    lo = np.minimum(g_src, g_f)
    strength = np.divide(lo, hi, out=np.zeros_like(hi), where=hi > 0)  # G^{XF} in [0, 1]
    diff = np.mod(np.abs(a_src - a_f), math.pi)  # orientation difference modulo pi, [0, pi)
    orient = 1.0 - np.minimum(diff, math.pi - diff) / (math.pi / 2)  # A^{XF} in [0, 1]
    q_g = c["gamma_g"] / (1.0 + np.exp(c["kappa_g"] * (strength - c["sigma_g"])))
    q_a = c["gamma_a"] / (1.0 + np.exp(c["kappa_a"] * (orient - c["sigma_a"])))
    return q_g * q_a


def qabf(
    fused: np.ndarray,
    source_a: np.ndarray,
    source_b: np.ndarray,
    weight_exponent: float = 1.0,
    mask: np.ndarray | None = None,
) -> float:
    """Xydeas-Petrovic edge-preservation metric Q^{AB/F} (Electronics Letters 36(4), 2000).

    Sobel gradients (3x3, scipy.ndimage, reflect boundary) of each image give a
    strength g = sqrt(sx^2 + sy^2) and an orientation alpha = atan2(sy, sx). For a
    source X in {A, B}, per pixel:

    - relative strength ``G^{XF} = min(g_X, g_F) / max(g_X, g_F)`` (0 where both are 0);
    - relative orientation ``A^{XF} = 1 - d / (pi/2)``, d = orientation difference
      folded modulo pi into [0, pi/2] (edges are undirected: a contrast-inverted edge
      keeps its orientation; this equals the reference MATLAB code's
      ``|(|alpha_X - alpha_F|) - pi/2| / (pi/2)`` with alpha = atan(sy/sx));
    - ``Q^{XF} = Gamma_g / (1 + exp(kappa_g (G^{XF} - sigma_g))) *
      Gamma_a / (1 + exp(kappa_a (A^{XF} - sigma_a)))`` with :data:`QABF_CONSTANTS`
      (Gamma_g 0.9994, kappa_g -15, sigma_g 0.5; Gamma_a 0.9879, kappa_a -22, sigma_a 0.8).

    ``Qabf = sum(Q^{AF} w_A + Q^{BF} w_B) / sum(w_A + w_B)`` with ``w_X = g_X ** L``
    (``L = weight_exponent``, 1 by convention), summed over the image or ``mask``.

    With these constants a perfectly preserved edge (G = A = 1) scores
    ``Q_max = 0.9994/(1+e^-7.5) * 0.9879/(1+e^-4.4) ~ 0.9748``, not 1: Qabf(F=A, A, A)
    = Q_max, and every Qabf lies in (0, Q_max]. Spurious edges in F where both
    sources are flat are not penalised (their weight is 0), as in the definition.

    Args:
        fused: F, 2-D (H, W), H, W >= 3.
        source_a, source_b: A and B, 2-D (H, W), same shape.
        weight_exponent: L >= 0 in the weights w_X = g_X^L.
        mask: optional boolean (H, W) mask of the pixels summed.

    Returns:
        Qabf, a float in (0, Q_max] subset of [0, 1]; symmetric in A and B.

    Raises:
        ValueError: shape mismatch, not 2-D, smaller than 3x3, non-finite values,
            bad mask, negative ``weight_exponent``, or both sources without any
            gradient inside the evaluated region (Qabf is undefined: 0/0).
    """
    if not weight_exponent >= 0:
        raise ValueError(f"weight_exponent must be >= 0, got {weight_exponent!r}.")
    (f, a, b), mask = _images(("fused", "source_a", "source_b"), (fused, source_a, source_b), mask)
    if min(f.shape) < 3:
        raise ValueError(f"qabf needs images of at least 3x3 (Sobel), got {f.shape}.")
    g_f, a_f = _sobel(f)
    g_a, a_a = _sobel(a)
    g_b, a_b = _sobel(b)
    q_af = _edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = _edge_preservation(g_b, a_b, g_f, a_f)
    # w = g^L, with 0^L = 0 (no edge, no weight) also for L = 0
    w_a = np.where(g_a > 0, g_a ** float(weight_exponent), 0.0)
    w_b = np.where(g_b > 0, g_b ** float(weight_exponent), 0.0)
    sel = mask if mask is not None else np.ones(f.shape, dtype=bool)
    denom = float(w_a[sel].sum() + w_b[sel].sum())
    if not denom > 0:
        raise ValueError(
            "qabf is undefined: neither source has any gradient in the evaluated region (all weights are 0); "
            "skip flat slices or use a mask that contains edges."
        )
    return float((q_af[sel] * w_a[sel]).sum() + (q_bf[sel] * w_b[sel]).sum()) / denom
