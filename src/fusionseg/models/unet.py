"""U-Nets for early fusion: modalities stacked as input channels.

* :class:`TwoStageUNet` (``"unet2stage"``): S0's "2-stage U-Net" (METHODS.md section 1).
* :class:`MonaiUNet` (``"monai_unet"``): a thin wrapper around
  :class:`monai.networks.nets.UNet` (residual units, strided convolutions) with the
  same input checks.

Both take ``(B, C, H, W)`` (``spatial_dims=2``) or ``(B, C, H, W, D)``
(``spatial_dims=3``) float input and return ``(B, num_classes, ...)`` logits of the
same spatial size; every spatial size must be a multiple of ``required_divisor``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from monai.networks.nets import UNet as _MonaiUNetImpl
from torch import nn

from .registry import register_model

__all__ = ["TwoStageUNet", "MonaiUNet", "DoubleConv", "check_segmentation_input"]

NormName = Literal["none", "batch", "instance"]
_NORMS = ("none", "batch", "instance")


def check_segmentation_input(x: torch.Tensor, *, in_channels: int, spatial_dims: int, divisor: int, model: str) -> None:
    """Check a segmentation model's input and say what shape to use when it is wrong.

    Args:
        x: the input tensor, expected ``(B, in_channels, *spatial)`` floating point with
            ``len(spatial) == spatial_dims`` and every spatial size a multiple of
            ``divisor``.
        in_channels: expected channel count C.
        spatial_dims: 2 or 3.
        divisor: required divisor of every spatial size.
        model: model name used in the messages.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: wrong number of dimensions, wrong channel count, or a spatial size
            not divisible by ``divisor`` (the message gives the padded shape to use).
    """
    layout = "(B, C, H, W)" if spatial_dims == 2 else "(B, C, H, W, D)"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model}: input must be a torch.Tensor of shape {layout}, got {type(x).__name__}.")
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"{model}: expected a {spatial_dims + 2}-D input {layout} with C={in_channels} "
            f"(model built with spatial_dims={spatial_dims}), got shape {tuple(x.shape)}. "
            "Add a batch dimension with x[None] or build the model with the matching spatial_dims."
        )
    if not x.is_floating_point():
        raise TypeError(f"{model}: input must be floating point (e.g. float32), got {x.dtype}; use x.float().")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{model}: expected {in_channels} input channels in {layout}, got shape "
            f"{tuple(x.shape)} with C={x.shape[1]}. Stack exactly {in_channels} modalities "
            "along dim 1 or build the model with in_channels matching the data."
        )
    spatial = tuple(int(s) for s in x.shape[2:])
    if any(s % divisor for s in spatial):
        padded = tuple(math.ceil(s / divisor) * divisor for s in spatial)
        raise ValueError(
            f"{model}: every spatial size must be a multiple of {divisor}, got {spatial} "
            f"(input shape {tuple(x.shape)}). Pad or crop to e.g. "
            f"{(x.shape[0], x.shape[1], *padded)} (see model.required_divisor)."
        )


def _check_common_args(model: str, in_channels: int, num_classes: int, spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"{model}: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    if int(in_channels) < 1:
        raise ValueError(f"{model}: in_channels must be >= 1, got {in_channels!r}.")
    if int(num_classes) < 1:
        raise ValueError(f"{model}: num_classes must be >= 1, got {num_classes!r}.")


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _norm(norm: NormName, spatial_dims: int, channels: int) -> nn.Module:
    if norm == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """Two (3x3[x3] conv, [norm], ReLU) layers: the U-Net stage block (S0, METHODS.md section 1).

    Shapes: ``(B, in_ch, *spatial) -> (B, out_ch, *spatial)`` (padding 1 keeps the size).
    Convolutions have a bias only when ``norm == "none"`` (a norm layer's shift makes
    it redundant). Instance norm is affine.
    """

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int = 2, norm: NormName = "none"):
        conv = _conv(spatial_dims)
        bias = norm == "none"
        super().__init__(
            conv(in_ch, out_ch, kernel_size=3, padding=1, bias=bias),
            _norm(norm, spatial_dims, out_ch),
            nn.ReLU(inplace=True),
            conv(out_ch, out_ch, kernel_size=3, padding=1, bias=bias),
            _norm(norm, spatial_dims, out_ch),
            nn.ReLU(inplace=True),
        )


@register_model("unet2stage")
class TwoStageUNet(nn.Module):
    """S0's "2-stage U-Net" for early fusion (S0 architecture A; METHODS.md section 1).

    Encoder: two stages, each a :class:`DoubleConv` followed by 2x2[x2] max-pool;
    bottleneck: a :class:`DoubleConv`; decoder: two stages, each a 2x2[x2] transposed
    convolution (stride 2, halving the width), concatenation with the encoder skip of
    the same resolution (``[up; skip]`` along channels) and a :class:`DoubleConv`;
    head: 1x1[x1] convolution to ``num_classes`` logits (no softmax).

    DECISION (METHODS.md section 1): widths 64-128, bottleneck 256; normalisation off by
    default as in the paper (``norm="batch"`` or ``"instance"`` as options).

    Args:
        in_channels: C, number of stacked modalities (S0: 2 or 3, e.g. [T1CE, FLAIR, fused]).
        num_classes: K, number of output classes (S0: 4 = {bg, NCR, ED, ET}).
        spatial_dims: 2 (slices) or 3 (volumes).
        channels: widths of the two encoder stages (decoder mirrors them).
        bottleneck: width of the bottleneck block.
        norm: ``"none"`` (paper), ``"batch"`` or ``"instance"``.

    Shapes:
        input ``(B, C, H, W)`` or ``(B, C, H, W, D)`` float, every spatial size a
        multiple of :attr:`required_divisor` (= 4); output ``(B, K, H, W[, D])`` logits
        of the input's dtype.

    Raises:
        ValueError: at construction for invalid arguments (spatial_dims not 2/3,
            ``channels`` not of length 2, non-positive widths, unknown ``norm``);
            in ``forward`` for a wrong input shape (see :func:`check_segmentation_input`).
        TypeError: in ``forward`` for non-floating-point input.
    """

    required_divisor: int = 4

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        channels: Sequence[int] = (64, 128),
        bottleneck: int = 256,
        norm: NormName = "none",
    ):
        super().__init__()
        _check_common_args("unet2stage", in_channels, num_classes, spatial_dims)
        channels = tuple(int(c) for c in channels)
        if len(channels) != 2:
            raise ValueError(
                f"unet2stage: channels must give the widths of exactly 2 encoder stages, got {channels}; "
                "e.g. channels=(64, 128). Use 'monai_unet' for other depths."
            )
        if min(*channels, int(bottleneck)) < 1:
            raise ValueError(f"unet2stage: widths must be >= 1, got channels={channels}, bottleneck={bottleneck}.")
        if norm not in _NORMS:
            raise ValueError(f"unet2stage: norm must be one of {_NORMS}, got {norm!r}.")

        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.spatial_dims = int(spatial_dims)
        self.channels = channels
        self.bottleneck_channels = int(bottleneck)
        self.norm = norm

        c1, c2 = channels
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        up = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d

        self.enc1 = DoubleConv(in_channels, c1, spatial_dims, norm)
        self.enc2 = DoubleConv(c1, c2, spatial_dims, norm)
        self.pool = pool(kernel_size=2, stride=2)
        self.bottleneck = DoubleConv(c2, bottleneck, spatial_dims, norm)
        self.up2 = up(bottleneck, c2, kernel_size=2, stride=2)
        self.dec2 = DoubleConv(2 * c2, c2, spatial_dims, norm)
        self.up1 = up(c2, c1, kernel_size=2, stride=2)
        self.dec1 = DoubleConv(2 * c1, c1, spatial_dims, norm)
        self.head = _conv(spatial_dims)(c1, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, K, *S)`` logits; see the class docstring."""
        check_segmentation_input(
            x,
            in_channels=self.in_channels,
            spatial_dims=self.spatial_dims,
            divisor=self.required_divisor,
            model="unet2stage",
        )
        s1 = self.enc1(x)  # (B, c1, S)
        s2 = self.enc2(self.pool(s1))  # (B, c2, S/2)
        b = self.bottleneck(self.pool(s2))  # (B, bottleneck, S/4)
        d2 = self.dec2(torch.cat([self.up2(b), s2], dim=1))  # (B, 2*c2 -> c2, S/2)
        d1 = self.dec1(torch.cat([self.up1(d2), s1], dim=1))  # (B, 2*c1 -> c1, S)
        return self.head(d1)  # (B, K, S)


@register_model("monai_unet")
class MonaiUNet(nn.Module):
    """Thin wrapper around :class:`monai.networks.nets.UNet` with fusionseg's input checks.

    MONAI's UNet (Kerfoot et al. 2018 residual-unit variant): each encoder level is a
    strided residual unit, the decoder uses transposed convolutions, skips concatenate.
    Defaults here: channels (32, 64, 128, 256), strides (2, 2, 2), 2 residual units,
    batch norm, PReLU (MONAI's default activation).

    Args:
        in_channels: C, number of stacked modalities.
        num_classes: K, number of output logits.
        spatial_dims: 2 or 3.
        channels: widths per level; ``len(channels) == len(strides) + 1``.
        strides: downsampling stride per level (ints >= 1).
        num_res_units: residual units per block (0 = plain convs).
        norm: ``"batch"``, ``"instance"`` or ``"none"``.
        dropout: dropout probability in MONAI's blocks.

    Attributes:
        required_divisor: product of ``strides``; every spatial size must be a multiple.
        net: the wrapped MONAI module (state-dict keys are prefixed ``net.``).

    Shapes:
        input ``(B, C, H, W[, D])`` float -> output ``(B, K, H, W[, D])`` logits.

    Raises:
        ValueError: invalid arguments at construction; wrong input shape in ``forward``.
        TypeError: non-floating-point input in ``forward``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        norm: NormName = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        _check_common_args("monai_unet", in_channels, num_classes, spatial_dims)
        channels = tuple(int(c) for c in channels)
        strides = tuple(int(s) for s in strides)
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise ValueError(
                f"monai_unet: need len(channels) >= 2 and len(strides) == len(channels) - 1, "
                f"got channels={channels}, strides={strides}; e.g. channels=(32, 64, 128, 256), strides=(2, 2, 2)."
            )
        if min(channels) < 1 or min(strides) < 1:
            raise ValueError(f"monai_unet: widths and strides must be >= 1, got {channels}, {strides}.")
        if norm not in _NORMS:
            raise ValueError(f"monai_unet: norm must be one of {_NORMS}, got {norm!r}.")

        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.spatial_dims = int(spatial_dims)
        self.required_divisor = math.prod(strides)
        self.net = _MonaiUNetImpl(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=channels,
            strides=strides,
            num_res_units=int(num_res_units),
            norm=None if norm == "none" else norm,
            dropout=float(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, K, *S)`` logits; see the class docstring."""
        check_segmentation_input(
            x,
            in_channels=self.in_channels,
            spatial_dims=self.spatial_dims,
            divisor=self.required_divisor,
            model="monai_unet",
        )
        return self.net(x)
