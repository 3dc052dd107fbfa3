"""LRRNet image-fusion network (S0 architectures B and C; METHODS.md section 2).

LRRNet (Li et al., IEEE TPAMI 2023, "LRRNet: a novel representation learning guided
fusion network for infrared and visible images"; reference code
hli1221/imagefusion-LRRNet) fuses two single-channel slices. Each source has its own
encoder, a LISTA-style unrolled solver of a low-rank representation problem that
splits the slice into a low-rank feature map L and a sparse (salient) feature map S;
a small convolutional decoder maps the four feature maps back to images and adds a
"low" and a "high" part into the fused image F.

In fusionseg the two sources are T1CE (``x``, first) and FLAIR (``y``, second); the
network is structurally symmetric, which source is "detail" and which "salient" is
decided by the fusion loss (:mod:`fusionseg.losses.fusion`), not here.

Shapes: ``x``, ``y`` are ``(B, 1, H, W)`` float (H, W >= 2: reflection padding);
``forward(x, y)`` returns the fused ``(B, 1, H, W)``; :meth:`LRRNet.forward_parts`
returns every intermediate by name. Any H, W work (``required_divisor = 1``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .registry import register_model

__all__ = ["LRRNet", "LISTAEncoder", "minmax_normalize", "soft_threshold"]

FusionMode = Literal["cat", "add"]
_FUSION_MODES = ("cat", "add")


def minmax_normalize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Min-max normalise every slice (every ``(b, c)`` plane) of ``x`` to [0, 1].

    ``(x - min) / max(max - min, eps)`` with min and max taken over the spatial
    dimensions of each sample and channel separately. The ``eps`` floor guards
    constant slices (range 0): they map to all zeros instead of dividing by zero;
    slices with a range below ``eps`` are shifted to 0 but not stretched. (The
    reference code adds 1e-5 to the range instead, which keeps the maximum slightly
    below 1; the floor keeps non-degenerate slices exactly in [0, 1].)

    Args:
        x: ``(B, C, *spatial)`` floating-point tensor.
        eps: smallest range divided by (> 0).

    Returns:
        Tensor of ``x``'s shape and dtype, values in [0, 1]; differentiable.

    Raises:
        ValueError: ``x`` has fewer than 3 dimensions or ``eps <= 0``.
    """
    if x.ndim < 3:
        raise ValueError(f"minmax_normalize: expected (B, C, *spatial), got shape {tuple(x.shape)}.")
    if not eps > 0:
        raise ValueError(f"minmax_normalize: eps must be > 0, got {eps!r}.")
    flat = x.flatten(2)  # (B, C, N)
    lo = flat.amin(dim=2).view(*x.shape[:2], *([1] * (x.ndim - 2)))  # (B, C, 1, ...)
    hi = flat.amax(dim=2).view(*x.shape[:2], *([1] * (x.ndim - 2)))
    return (x - lo) / (hi - lo).clamp_min(eps)


def soft_threshold(r: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """eta(r) = sign(r) * max(|r| - theta, 0), with one threshold per channel.

    Args:
        r: ``(B, C, H, W)``.
        theta: ``(C,)`` thresholds (learnable in LRRNet; not constrained to be >= 0,
            as in the reference code).

    Returns:
        ``(B, C, H, W)``.
    """
    theta = theta.view(1, -1, 1, 1)  # (1, C, 1, 1), broadcast over B, H, W
    return torch.sign(r) * torch.clamp(r.abs() - theta, min=0)


class _ReflectConv(nn.Sequential):
    """Reflection padding (k // 2) + k x k convolution, stride 1, with bias (size-preserving)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__(
            nn.ReflectionPad2d(kernel_size // 2),
            nn.Conv2d(in_ch, out_ch, kernel_size, stride=1, bias=True),
        )


class _LISTABlock(nn.Module):
    """One unrolled iteration: Z' = eta(lambda_z Z + Wt (x - Wd Z)).

    ``Wd``: 2n -> 1 (synthesis), ``Wt``: 1 -> 2n (analysis); both k x k convolutions.
    """

    def __init__(self, n: int, kernel_size: int):
        super().__init__()
        self.wd = _ReflectConv(2 * n, 1, kernel_size)
        self.wt = _ReflectConv(1, 2 * n, kernel_size)

    def forward(self, x: torch.Tensor, z: torch.Tensor, theta: torch.Tensor, lambda_z: torch.Tensor) -> torch.Tensor:
        residual = x - self.wd(z)  # (B, 1, H, W)
        return soft_threshold(lambda_z * z + self.wt(residual), theta)  # (B, 2n, H, W)


class LISTAEncoder(nn.Module):
    """LISTA-style low-rank representation encoder for one source (METHODS.md section 2).

    ``Z0 = eta(W0 x)``; ``Z_{k+1} = eta(lambda_z Z_k + Wt_k (x - Wd_k Z_k))`` for
    ``k = 0 .. blocks-1``; ``W0``: 1 -> 2n, ``Wd_k``: 2n -> 1, ``Wt_k``: 1 -> 2n, all
    k x k convolutions with reflection padding, stride 1 and bias, separate per block.
    The per-channel threshold ``theta`` (2n values) and the scalar ``lambda_z`` are
    shared by all blocks (and by ``Z0``), learnable, initialised uniform on [0, 1).
    No normalisation layers, no other nonlinearity.

    Args:
        n: channels of each of the low-rank and sparse parts (paper 128).
        blocks: K, number of unrolled iterations (paper 4).
        kernel_size: odd convolution size (paper 3).

    Shapes:
        ``(B, 1, H, W) -> (L, S)``, each ``(B, n, H, W)``: L = channels [0, n) of the
        final Z (low-rank part), S = channels [n, 2n) (sparse / salient part).
    """

    def __init__(self, n: int = 128, blocks: int = 4, kernel_size: int = 3):
        super().__init__()
        self.n = int(n)
        self.w0 = _ReflectConv(1, 2 * self.n, kernel_size)
        self.blocks = nn.ModuleList(_LISTABlock(self.n, kernel_size) for _ in range(int(blocks)))
        self.theta = nn.Parameter(torch.rand(2 * self.n))  # per-channel threshold, U[0, 1)
        self.lambda_z = nn.Parameter(torch.rand(()))  # scalar, U[0, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = soft_threshold(self.w0(x), self.theta)  # Z0: (B, 2n, H, W)
        for block in self.blocks:
            z = block(x, z, self.theta, self.lambda_z)  # (B, 2n, H, W)
        return z[:, : self.n], z[:, self.n :]  # L, S: (B, n, H, W) each


@register_model("lrrnet", task="fusion")
class LRRNet(nn.Module):
    """LRRNet fusion network: two LISTA encoders + "cat" decoder (S0 B/C; METHODS.md section 2).

    Encoders: one :class:`LISTAEncoder` per source, weights not shared.
    Decoder ("cat", the paper's): four k x k convolutions n -> 1 turn the feature maps
    into images ``x_low = D_Lx(L_x)``, ``x_high = D_Sx(S_x)``, ``y_low = D_Ly(L_y)``,
    ``y_high = D_Sy(S_y)``; then ``low = conv_2->1([x_low; y_low])``,
    ``high = conv_2->1([x_high; y_high])`` and ``F = low + high``. Option
    ``fusion="add"`` (reference code's alternative): ``low = conv_1->1(x_low + y_low)``,
    likewise ``high``.

    Normalisation (METHODS.md section 2): each input slice is min-max normalised to
    [0, 1] inside ``forward`` (:func:`minmax_normalize`; constant slices become 0, no
    division by zero) and the fused image is min-max normalised per slice as well, so
    ``fused`` lies in [0, 1]. Both can be switched off (``normalize_inputs``,
    ``normalize_output``).

    With the paper's sizes (n = 128, K = 4 blocks, 3x3) the network has 49,204
    parameters (2 x 22,277 per encoder + 4,650 decoder; checked in tests/test_lrrnet.py).

    Args:
        in_channels: must be 2 (two single-channel sources); for the model registry.
        num_classes: must be 1 (one fused image); for the model registry.
        spatial_dims: must be 2 (slice-wise fusion).
        n: width of each of the low-rank and sparse parts (encoder Z has 2n channels).
        blocks: unrolled LISTA iterations K per encoder (>= 0).
        kernel_size: odd convolution size (>= 1).
        fusion: decoder mode, ``"cat"`` (paper, default) or ``"add"``.
        normalize_inputs: min-max normalise each input slice to [0, 1] in ``forward``.
        normalize_output: min-max normalise the fused slice to [0, 1].
        eps: range floor of the min-max normalisation.

    Attributes:
        in_channels, num_classes, spatial_dims: 2, 1, 2 (registry convention).
        required_divisor: 1 (any H, W >= 2).

    Call forms:
        ``model(x, y)`` with ``x``, ``y`` ``(B, 1, H, W)`` (x = first source, T1CE in
        fusionseg; y = second, FLAIR), or ``model(xy)`` with the two sources stacked
        ``(B, 2, H, W)`` (channel 0 = x, channel 1 = y; the registry convention).
        Both return the fused image ``(B, 1, H, W)``. :meth:`forward_parts` returns
        every intermediate.

    Raises:
        ValueError: at construction for ``in_channels != 2``, ``num_classes != 1``,
            ``spatial_dims != 2``, ``n < 1``, ``blocks < 0``, an even or non-positive
            ``kernel_size``, an unknown ``fusion`` mode or ``eps <= 0``; in ``forward``
            for wrongly shaped inputs (the message says which shape to use).
        TypeError: in ``forward`` for non-tensor or non-floating-point input.
    """

    required_divisor: int = 1

    def __init__(
        self,
        in_channels: int = 2,
        num_classes: int = 1,
        spatial_dims: int = 2,
        n: int = 128,
        blocks: int = 4,
        kernel_size: int = 3,
        fusion: FusionMode = "cat",
        normalize_inputs: bool = True,
        normalize_output: bool = True,
        eps: float = 1e-5,
    ):
        super().__init__()
        if int(in_channels) != 2:
            raise ValueError(
                f"lrrnet: in_channels must be 2 (two single-channel sources, e.g. T1CE and FLAIR), "
                f"got {in_channels!r}; build it with build_model('lrrnet', in_channels=2, num_classes=1)."
            )
        if int(num_classes) != 1:
            raise ValueError(
                f"lrrnet: num_classes must be 1 (the network outputs one fused image), got {num_classes!r}."
            )
        if spatial_dims != 2:
            raise ValueError(f"lrrnet: spatial_dims must be 2 (slice-wise fusion), got {spatial_dims!r}.")
        if int(n) < 1:
            raise ValueError(f"lrrnet: n must be >= 1, got {n!r} (paper: 128).")
        if int(blocks) < 0:
            raise ValueError(f"lrrnet: blocks must be >= 0, got {blocks!r} (paper: 4).")
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ValueError(f"lrrnet: kernel_size must be odd and >= 1, got {kernel_size!r} (paper: 3).")
        if fusion not in _FUSION_MODES:
            raise ValueError(f"lrrnet: fusion must be one of {_FUSION_MODES}, got {fusion!r}.")
        if not eps > 0:
            raise ValueError(f"lrrnet: eps must be > 0, got {eps!r}.")

        self.in_channels = 2
        self.num_classes = 1
        self.spatial_dims = 2
        self.n = int(n)
        self.blocks = int(blocks)
        self.kernel_size = int(kernel_size)
        self.fusion = fusion
        self.normalize_inputs = bool(normalize_inputs)
        self.normalize_output = bool(normalize_output)
        self.eps = float(eps)

        k = self.kernel_size
        self.encoder_x = LISTAEncoder(self.n, self.blocks, k)
        self.encoder_y = LISTAEncoder(self.n, self.blocks, k)
        self.decode_lx = _ReflectConv(self.n, 1, k)
        self.decode_sx = _ReflectConv(self.n, 1, k)
        self.decode_ly = _ReflectConv(self.n, 1, k)
        self.decode_sy = _ReflectConv(self.n, 1, k)
        mix_in = 2 if fusion == "cat" else 1
        self.mix_low = _ReflectConv(mix_in, 1, k)
        self.mix_high = _ReflectConv(mix_in, 1, k)

    def _check_source(self, t: torch.Tensor, arg: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"lrrnet: {arg} must be a torch.Tensor of shape (B, 1, H, W), got {type(t).__name__}.")
        if t.ndim != 4 or t.shape[1] != 1:
            hint = " Add a batch dimension with x[None]." if t.ndim == 3 else ""
            raise ValueError(
                f"lrrnet: {arg} must have shape (B, 1, H, W) (one single-channel slice per sample), "
                f"got {tuple(t.shape)}.{hint}"
            )
        if not t.is_floating_point():
            raise TypeError(f"lrrnet: {arg} must be floating point (e.g. float32), got {t.dtype}; use {arg}.float().")
        if min(t.shape[2:]) < 2:
            raise ValueError(f"lrrnet: {arg} needs H, W >= 2 (reflection padding), got {tuple(t.shape)}.")

    def _split(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Accept ``(x, y)`` each (B, 1, H, W), or stacked ``x`` (B, 2, H, W) with ``y=None``."""
        if y is None:
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"lrrnet: input must be a torch.Tensor, got {type(x).__name__}.")
            if x.ndim != 4 or x.shape[1] != 2:
                hint = " Add a batch dimension with x[None]." if x.ndim == 3 else ""
                raise ValueError(
                    "lrrnet: call model(x, y) with x, y of shape (B, 1, H, W), or model(xy) with the two "
                    f"sources stacked as (B, C, H, W) with C=2 (expected 2 input channels); got {tuple(x.shape)}.{hint}"
                )
            x, y = x[:, 0:1], x[:, 1:2]  # (B, 1, H, W) each
        self._check_source(x, "x")
        self._check_source(y, "y")
        if x.shape != y.shape:
            raise ValueError(f"lrrnet: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
        return x, y

    def forward_parts(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Run the network and return every intermediate by name.

        Args:
            x: first source ``(B, 1, H, W)`` (T1CE), or both sources stacked ``(B, 2, H, W)``.
            y: second source ``(B, 1, H, W)`` (FLAIR), or None when ``x`` is stacked.

        Returns:
            dict of tensors:

            - ``"fused"``: F ``(B, 1, H, W)``, min-max normalised to [0, 1] unless
              ``normalize_output=False``;
            - ``"fused_raw"``: ``low + high`` before the output normalisation;
            - ``"low"``, ``"high"``: the decoder's low-rank and salient images ``(B, 1, H, W)``;
            - ``"x_low"``, ``"x_high"``, ``"y_low"``, ``"y_high"``: per-source decoded
              parts ``(B, 1, H, W)``;
            - ``"lowrank_x"``, ``"sparse_x"``, ``"lowrank_y"``, ``"sparse_y"``: encoder
              features L and S ``(B, n, H, W)``;
            - ``"x_in"``, ``"y_in"``: the (normalised) inputs the encoders saw.
        """
        x, y = self._split(x, y)
        if self.normalize_inputs:
            x = minmax_normalize(x, self.eps)
            y = minmax_normalize(y, self.eps)
        lx, sx = self.encoder_x(x)  # (B, n, H, W) each
        ly, sy = self.encoder_y(y)
        x_low, x_high = self.decode_lx(lx), self.decode_sx(sx)  # (B, 1, H, W) each
        y_low, y_high = self.decode_ly(ly), self.decode_sy(sy)
        if self.fusion == "cat":
            low = self.mix_low(torch.cat([x_low, y_low], dim=1))  # (B, 2 -> 1, H, W)
            high = self.mix_high(torch.cat([x_high, y_high], dim=1))
        else:
            low = self.mix_low(x_low + y_low)  # (B, 1, H, W)
            high = self.mix_high(x_high + y_high)
        fused_raw = low + high
        fused = minmax_normalize(fused_raw, self.eps) if self.normalize_output else fused_raw
        return {
            "fused": fused,
            "fused_raw": fused_raw,
            "low": low,
            "high": high,
            "x_low": x_low,
            "x_high": x_high,
            "y_low": y_low,
            "y_high": y_high,
            "lowrank_x": lx,
            "sparse_x": sx,
            "lowrank_y": ly,
            "sparse_y": sy,
            "x_in": x,
            "y_in": y,
        }

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Fused image ``(B, 1, H, W)``; see the class docstring for the two call forms."""
        return self.forward_parts(x, y)["fused"]
