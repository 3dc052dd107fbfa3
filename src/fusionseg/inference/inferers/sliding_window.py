"""The 3-D inferer (``spatial_dims: 3``): MONAI's ``sliding_window_inference`` over
the case's preprocessed volume (windows of the training patch size, ``overlap``,
Gaussian or constant blending, ``sw_batch_size`` windows per pass; a volume smaller
than a window is zero-padded and cropped back), softmax class probabilities averaged
over models, resampled back onto the source grid when the case was resampled
(``preprocess.target_spacing``), argmax (or sigmoid regions painted largest first),
label values of the scheme, un-cropped to
the original grid.

With test-time mirroring each window is predicted in the 8 flips of its three axes
and the flipped-back probabilities averaged (nnU-Net's mirroring, Isensee et al.
2021), before the windows are blended.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fusionseg.constants import LabelScheme
from fusionseg.data.preprocess import PreparedCase
from fusionseg.inference.inferers import InferOptions, register_inferer
from fusionseg.outputs import CLASS_OUTPUT, OutputHead

#: The flips of a (B, C, X, Y, Z) batch averaged by 3-D test-time mirroring.
MIRRORS_3D: tuple[tuple[int, ...], ...] = tuple(
    tuple(d for d, on in zip((2, 3, 4), flags) if on) for flags in itertools.product((False, True), repeat=3)
)


def window_predictor(model: nn.Module, mirror: bool, head: OutputHead = CLASS_OUTPUT):
    """``(B, C, x, y, z) -> (B, K, x, y, z)`` probabilities of ``model``: softmax, or
    a sigmoid per region for a region ``head`` (with ``mirror``: the mean over
    :data:`MIRRORS_3D`)."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        if not mirror:
            return head.probabilities(model(x))
        total = None
        for dims in MIRRORS_3D:
            p = head.probabilities(model(x.flip(dims) if dims else x))
            p = p.flip(dims) if dims else p
            total = p if total is None else total + p
        return total / len(MIRRORS_3D)

    return predict


@torch.no_grad()
def volume_probabilities(
    models: Sequence[nn.Module], image: np.ndarray, options: InferOptions, head: OutputHead = CLASS_OUTPUT
) -> torch.Tensor:
    """Probabilities (K, X, Y, Z) float32 of a (C, X, Y, Z) volume (K: classes, or
    regions for a region ``head``), averaged over ``models``.

    Raises:
        ValueError: ``options.roi_size`` is not set.
    """
    from monai.inferers import sliding_window_inference

    if options.roi_size is None:
        raise ValueError("3-D inference needs a window size (options.roi_size, the training patch size)")
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(options.device)
    total = None
    for model in models:
        p = sliding_window_inference(
            x,
            roi_size=tuple(options.roi_size),
            sw_batch_size=options.sw_batch_size,
            predictor=window_predictor(model, options.mirror, head),
            overlap=options.overlap,
            mode=options.blend,
        )
        p = torch.as_tensor(p)[0].float()
        total = p if total is None else total + p
    return total if len(models) == 1 else total / len(models)


@register_inferer(3)
def sliding_window(
    models: Sequence[nn.Module],
    case: PreparedCase,
    modalities: Sequence[str],
    scheme: LabelScheme,
    divisor: int,
    options: InferOptions = InferOptions(),
) -> np.ndarray:
    """Raw label map (original grid, scheme values) of a preprocessed case."""
    head = options.head(scheme)
    probs = case.to_box(volume_probabilities(models, case.select(list(modalities)), options, head))
    classes = head.classes(probs, dim=0).cpu().numpy()
    raw = scheme.from_classes(classes, dtype=np.int16 if max(scheme.values) > 255 else np.uint8)
    return case.uncrop(raw)
