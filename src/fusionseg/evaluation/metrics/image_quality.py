"""Image-quality metrics for fusion and reconstruction: MSE, PSNR, SSIM.

All take two images of the same shape (2-D or 3-D, any real dtype, computed in
float64) and an optional boolean ``mask`` (e.g. the brain mask): with a mask the
metric is computed over the masked voxels only (SSIM: mean of the local SSIM map over
the mask); without one, over the whole image. Say which in reported results.

Sources: PSNR = 10 log10(R^2 / MSE) with R the stated data range; SSIM of Wang et al.,
IEEE TIP 13(4) 2004, Gaussian window sigma 1.5 (11 taps), K1 = 0.01, K2 = 0.03, as
implemented by ``skimage.metrics.structural_similarity``.
"""

from __future__ import annotations

import numpy as np


def _pair(
    image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    image = np.asarray(image, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if image.shape != reference.shape:
        raise ValueError(f"image and reference shapes differ: {image.shape} vs {reference.shape}.")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the image shape {image.shape}.")
        if not mask.any():
            raise ValueError("mask is empty: give a mask with at least one voxel, or mask=None.")
    return image, reference, mask


def mse(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error (in squared image units), over ``mask`` if given.

    Raises:
        ValueError: shape mismatch or empty mask.
    """
    image, reference, mask = _pair(image, reference, mask)
    diff = (image - reference) ** 2
    return float(diff[mask].mean() if mask is not None else diff.mean())


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE).

    Args:
        image, reference: arrays of the same shape.
        data_range: R, the intensity range the images can span (e.g. 1.0 for images
            scaled to [0, 1]); state it with the result.
        mask: optional boolean mask.
    Returns:
        PSNR in dB; identical images give +inf (callers that need finite output cap it).
    Raises:
        ValueError: non-positive data range, shape mismatch, empty mask.
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}.")
    err = mse(image, reference, mask)
    return float("inf") if err == 0 else float(10.0 * np.log10(data_range**2 / err))


def _structural_similarity(image: np.ndarray, reference: np.ndarray, data_range: float) -> tuple[float, np.ndarray]:
    """scikit-image SSIM (Gaussian window, sigma 1.5, 11 taps; Wang et al. 2004): (its
    mean over the map without the 5-voxel border, the full map)."""
    from skimage.metrics import structural_similarity

    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}.")
    return structural_similarity(
        image,
        reference,
        data_range=data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )


def ssim_map(image: np.ndarray, reference: np.ndarray, data_range: float) -> np.ndarray:
    """Local SSIM of every voxel, float64 of the input's shape (the map that
    :func:`ssim` averages), e.g. for figures.

    Raises:
        ValueError: non-positive data range, shape mismatch.
    """
    image, reference, _ = _pair(image, reference, None)
    return _structural_similarity(image, reference, data_range)[1]


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Structural similarity (Gaussian window, sigma 1.5, 11 taps), over ``mask`` if given.

    Args:
        image, reference: 2-D or 3-D arrays of the same shape (each side >= 7 voxels).
        data_range: intensity range R used in the SSIM constants (K1 R)^2, (K2 R)^2.
        mask: optional boolean mask; the SSIM map is averaged over it (without a mask:
            scikit-image's mean, which leaves out the 5-voxel border).
    Returns:
        SSIM in [-1, 1].
    Raises:
        ValueError: non-positive data range, shape mismatch, empty mask.
    """
    image, reference, mask = _pair(image, reference, mask)
    mean_ssim, full = _structural_similarity(image, reference, data_range)
    return float(full[mask].mean() if mask is not None else mean_ssim)
