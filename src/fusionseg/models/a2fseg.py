"""A2FSeg: adaptive multi-modal fusion network (S1; METHODS.md section 4).

Wang & Hong, "A2FSeg: Adaptive Multi-Modal Fusion Network for Medical Image
Segmentation", MICCAI 2023. Written from the paper (Eq. 1-3) and METHODS.md section 4.

Structure (M modalities, C = ``base`` channels at full resolution):

1. One modality-specific U-Net (:class:`ModalityBranch`) per modality, 1 input channel
   each, with deep-supervision heads. A branch whose modality is missing for a sample
   is not run for that sample (its batch rows are never read).
2. Average fusion: at every decoder level (bottleneck and each decoder stage) the mean
   over the available modalities of the branch features, decoded by its own decoder
   (:class:`FusionDecoder`, deep supervision) into ``Fbar`` (C channels).
3. Adaptive fusion (Eq. 1-3): ``W_m = act(g_m([Fbar; F_m]))``, a softmax over the
   available modalities per voxel and channel, ``Fhat = sum_m softmax(W)_m * F_m``,
   then ``head([Fhat; Fbar])`` gives the final logits.

The model returns logits only; the losses on every head (Eq. 4-5) live elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .registry import register_model
from .unet import check_segmentation_input

__all__ = ["A2FSeg", "A2FSegOutput", "ModalityBranch", "FusionDecoder", "stage_widths"]

_ATTENTIONS = ("sigmoid", "leaky_relu")
_MISSING = ("drop", "zero_features")
_SLOPE = 0.01  # LeakyReLU negative slope (nnU-Net)


def stage_widths(base: int, depth: int, max_channels: int) -> list[int]:
    """Channel widths of levels ``0..depth``: ``min(base * 2**level, max_channels)``."""
    return [min(base * 2**level, max_channels) for level in range(depth + 1)]


def _conv_cls(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _conv_norm_act(spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3x3[x3] conv (no bias: the norm shifts) -> InstanceNorm(affine) -> LeakyReLU(0.01)."""
    norm = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
    return nn.Sequential(
        _conv_cls(spatial_dims)(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        norm(out_ch, affine=True),
        nn.LeakyReLU(_SLOPE, inplace=True),
    )


def _stage(spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """Two conv-IN-LReLU blocks; the first has ``stride`` (2 = downsampling)."""
    return nn.Sequential(
        _conv_norm_act(spatial_dims, in_ch, out_ch, stride),
        _conv_norm_act(spatial_dims, out_ch, out_ch),
    )


class _UpStage(nn.Module):
    """Transposed conv (kernel 2, stride 2, ``in_ch -> out_ch``), concat ``[up; skip]``
    (``out_ch`` channels each), two conv-IN-LReLU blocks ``2 * out_ch -> out_ch``.

    Shapes: ``x (B, in_ch, *S)``, ``skip (B, out_ch, *2S) -> (B, out_ch, *2S)``.
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int):
        super().__init__()
        up = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        self.up = up(in_ch, out_ch, kernel_size=2, stride=2)
        self.convs = _stage(spatial_dims, 2 * out_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class _Decoder(nn.Module):
    """``depth`` :class:`_UpStage` s (coarse to fine) and a 1x1 logit head on each."""

    def __init__(self, spatial_dims: int, widths: list[int], num_classes: int):
        super().__init__()
        depth = len(widths) - 1
        levels = range(depth - 1, -1, -1)  # decoder stage levels, coarse to fine
        self.stages = nn.ModuleList(_UpStage(spatial_dims, widths[lv + 1], widths[lv]) for lv in levels)
        conv = _conv_cls(spatial_dims)
        self.heads = nn.ModuleList(conv(widths[lv], num_classes, kernel_size=1) for lv in levels)

    def decode(self, bottom: Tensor, skips: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(stage outputs coarse to fine, logits finest first) from the bottleneck and
        one skip per stage (coarse to fine)."""
        outs, x = [], bottom
        for stage, skip in zip(self.stages, skips):
            x = stage(x, skip)
            outs.append(x)
        logits = [head(o) for head, o in zip(self.heads, outs)]
        return outs, logits[::-1]


class ModalityBranch(_Decoder):
    """Modality-specific nnU-Net-like feature extractor (one per modality, 1 input channel).

    Encoder: stage 0 = two conv-IN-LReLU at full resolution; stage ``l = 1..depth`` =
    a stride-2 conv-IN-LReLU then a conv-IN-LReLU (stage ``depth`` is the bottleneck).
    Decoder: ``depth`` stages, each transposed conv (k2, s2), concat with the encoder
    skip of that level, two conv-IN-LReLU; a 1x1 head on each stage output.

    Shapes:
        input ``(b, 1, *S)`` float -> ``(features, logits)``: ``features`` is the list
        ``[bottleneck, dec_{depth-1}, ..., dec_0]`` (coarse to fine, level ``l`` of shape
        ``(b, widths[l], *S / 2**l)``; the last one is ``F_m`` with ``widths[0]``
        channels at full resolution); ``logits`` has ``depth`` entries, finest first,
        entry ``i`` of shape ``(b, K, *S / 2**i)``.
    """

    def __init__(self, spatial_dims: int, widths: list[int], num_classes: int):
        super().__init__(spatial_dims, widths, num_classes)
        ins = [1, *widths[:-1]]
        self.encoder = nn.ModuleList(
            _stage(spatial_dims, ins[lv], widths[lv], stride=1 if lv == 0 else 2) for lv in range(len(widths))
        )

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outs, logits = self.decode(skips[-1], skips[-2::-1])
        return [skips[-1], *outs], logits


class FusionDecoder(_Decoder):
    """Decoder of the average-fused features (METHODS.md section 4, "Average fusion").

    Starts from the mean bottleneck; each stage upsamples (transposed conv), concatenates
    the mean branch decoder feature of that level (not encoder skips) and applies two
    conv-IN-LReLU; a 1x1 head on each stage output.

    Shapes:
        input: the list of mean features ``[bottleneck, dec_{depth-1}, ..., dec_0]`` as
        returned per branch by :class:`ModalityBranch` -> ``(Fbar, logits)``: ``Fbar``
        ``(B, widths[0], *S)``; ``logits`` finest first, entry ``i`` ``(B, K, *S / 2**i)``.
    """

    def forward(self, means: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        outs, logits = self.decode(means[0], means[1:])
        return outs[-1], logits


def _attention_block(spatial_dims: int, channels: int, attention: str) -> nn.Sequential:
    """``g_m`` then the activation of Eq. 1: conv3x3(2C->C) -> IN -> LReLU -> conv3x3(C->C)
    -> sigmoid (paper) or LeakyReLU(0.01) (reference code). ``(B, 2C, *S) -> (B, C, *S)``."""
    act = nn.Sigmoid() if attention == "sigmoid" else nn.LeakyReLU(_SLOPE)
    conv = _conv_cls(spatial_dims)
    return nn.Sequential(
        _conv_norm_act(spatial_dims, 2 * channels, channels),
        conv(channels, channels, kernel_size=3, padding=1),
        act,
    )


def _fusion_head(spatial_dims: int, channels: int, num_classes: int) -> nn.Sequential:
    """Final head: conv3x3([Fhat; Fbar], 2C->C) -> IN -> LReLU -> 1x1 conv (C->K)."""
    return nn.Sequential(
        _conv_norm_act(spatial_dims, 2 * channels, channels),
        _conv_cls(spatial_dims)(channels, num_classes, kernel_size=1),
    )


def _scatter_rows(rows: Tensor, index: Tensor, batch: int, fill: float = 0.0) -> Tensor:
    """``(b, ...)`` rows placed at batch positions ``index`` of a ``(batch, ...)`` tensor
    filled with ``fill`` elsewhere (``rows`` itself when ``index`` covers the batch)."""
    if index.numel() == batch:  # index is sorted and unique, hence arange(batch)
        return rows
    return rows.new_full((batch, *rows.shape[1:]), fill).index_copy(0, index, rows)


def _init_weights(module: nn.Module) -> None:
    """He (kaiming-normal, a=1e-2) weights and zero biases, as nnU-Net's InitWeights_He."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@dataclass
class A2FSegOutput:
    """Every head of :meth:`A2FSeg.forward_heads` (``B`` samples, ``M`` modalities,
    ``K`` classes, ``C`` = ``base``; all logits float, same dtype as the input).

    Attributes:
        final: ``(B, K, *S)`` final logits (the average decoder's full-resolution logits
            when ``adaptive=False``).
        average: the average decoder's ``depth`` logits, finest first, entry ``i`` of
            shape ``(B, K, *S / 2**i)``.
        branches: length ``M``; entry ``m`` is ``None`` when no sample has modality
            ``m``, else ``(sample_index, logits)``: ``sample_index`` a ``(b_m,)`` int64
            tensor of the samples the branch ran on, ``logits`` finest first, entry
            ``i`` of shape ``(b_m, K, *S / 2**i)``.
        weights: ``(B, M, C, *S)`` softmax attention weights (Eq. 2). With
            ``missing="drop"`` they are exactly 0 at absent (sample, modality) entries
            and sum to 1 over the available ones; with ``"zero_features"`` the softmax
            runs over all ``M`` (absent entries weight zero features). ``None`` when
            ``adaptive=False``.
        available: ``(B, M)`` bool mask used.
    """

    final: Tensor
    average: list[Tensor]
    branches: list[tuple[Tensor, list[Tensor]] | None]
    weights: Tensor | None
    available: Tensor


# Per modality: None (branch not run) or (sample_index, features coarse to fine, logits finest first).
_BranchRun = tuple[Tensor, list[Tensor], list[Tensor]] | None


@register_model("a2fseg")
class A2FSeg(nn.Module):
    """A2FSeg (Wang & Hong, MICCAI 2023; S1; METHODS.md section 4).

    Args:
        in_channels: M, number of modalities stacked along dim 1 (one branch each).
        num_classes: K, number of output logits per voxel.
        spatial_dims: 2 for ``(B, M, H, W)``, 3 for ``(B, M, H, W, D)``.
        base: C, width of the full-resolution level (paper: 32).
        depth: number of downsamplings; ``required_divisor = 2**depth``.
        max_channels: cap on the level widths ``base * 2**level`` (nnU-Net: 320).
        adaptive: ``True`` = full model; ``False`` = "average fusion only" ablation
            (S1 Table 2): no ``g_m`` and no adaptive head, the final output is the
            average decoder's full-resolution logits.
        attention: activation of Eq. 1, ``"sigmoid"`` (paper) or ``"leaky_relu"``
            (reference code).

    Attributes:
        in_channels, num_classes, spatial_dims, required_divisor: registry convention.
        modality_branches: ``True``: the model takes a modality-availability mask.
        widths: channel width of each level ``0..depth``.
        branches: the M :class:`ModalityBranch` es; ``fusion_decoder``: the
            :class:`FusionDecoder`; ``attention_blocks`` (M ``g_m``) and ``fusion_head``:
            ``None`` when ``adaptive=False``.

    Shapes:
        see :meth:`forward_heads`. Instance norm needs more than one voxel per channel,
        so at least one spatial size must be ``>= 2 * required_divisor``.

    DECISION: convolutions followed by instance norm have no bias (the norm's shift
    makes it redundant); transposed convolutions, 1x1 heads and the last conv of
    ``g_m`` have one. He-normal init (a=1e-2), zero biases, as nnU-Net.

    Raises:
        ValueError: invalid arguments (spatial_dims not 2/3, non-positive sizes,
            ``max_channels < base``, unknown ``attention``).
    """

    modality_branches: bool = True

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        base: int = 32,
        depth: int = 4,
        max_channels: int = 320,
        adaptive: bool = True,
        attention: str = "sigmoid",
    ):
        super().__init__()
        _check_args(in_channels, num_classes, spatial_dims, base, depth, max_channels, attention)
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.spatial_dims, self.depth = int(spatial_dims), int(depth)
        self.required_divisor = 2**self.depth
        self.adaptive, self.attention = bool(adaptive), attention
        self.widths = stage_widths(int(base), self.depth, int(max_channels))
        dims, c = self.spatial_dims, self.widths[0]
        self.branches = nn.ModuleList(ModalityBranch(dims, self.widths, num_classes) for _ in range(in_channels))
        self.fusion_decoder = FusionDecoder(dims, self.widths, num_classes)
        self.attention_blocks: nn.ModuleList | None = None
        self.fusion_head: nn.Sequential | None = None
        if self.adaptive:
            self.attention_blocks = nn.ModuleList(_attention_block(dims, c, attention) for _ in range(in_channels))
            self.fusion_head = _fusion_head(dims, c, num_classes)
        self.apply(_init_weights)

    def forward(self, x: Tensor, available: Tensor | None = None, missing: str = "drop") -> Tensor:
        """``(B, M, *S) -> (B, K, *S)`` final logits; see :meth:`forward_heads`."""
        return self.forward_heads(x, available, missing).final

    def forward_heads(self, x: Tensor, available: Tensor | None = None, missing: str = "drop") -> A2FSegOutput:
        """All heads, for deep supervision.

        Args:
            x: ``(B, M, *S)`` float; every spatial size a multiple of ``required_divisor``.
                Channels of missing modalities are never read (any value, NaN included).
            available: ``(B, M)`` bool, ``True`` where modality ``m`` is present for
                sample ``b``; ``None`` = all present.
            missing: ``"drop"`` (A2FSeg): means and softmax over the available
                modalities only; ``"zero_features"`` (RFNet / mmFormer style): absent
                branches are still not run, but their features count as zeros in the
                means (denominator M) and in the softmax (``g_m`` sees ``[Fbar; 0]``).

        Returns:
            :class:`A2FSegOutput`.

        Raises:
            TypeError: non-float ``x`` or non-bool ``available``.
            ValueError: wrong ``x`` shape or channel count, spatial size not a multiple
                of ``required_divisor``, ``available`` of the wrong shape, a sample with
                no available modality (the message names it), unknown ``missing``.
        """
        available = self._check_forward(x, available, missing)
        runs = self._run_branches(x, available)
        means = self._level_means(runs, available, missing, x.shape[0])
        fbar, average = self.fusion_decoder(means)
        weights, final = None, average[0]
        if self.adaptive:
            fhat, weights = self._adaptive_fusion(runs, fbar, missing)
            final = self.fusion_head(torch.cat([fhat, fbar], dim=1))
        branches = [None if r is None else (r[0], r[2]) for r in runs]
        return A2FSegOutput(final=final, average=average, branches=branches, weights=weights, available=available)

    def _check_forward(self, x: Tensor, available: Tensor | None, missing: str) -> Tensor:
        """Validate the inputs; return the ``(B, M)`` bool mask on ``x.device``."""
        if missing not in _MISSING:
            raise ValueError(f"a2fseg: missing must be one of {_MISSING}, got {missing!r}.")
        check_segmentation_input(
            x,
            in_channels=self.in_channels,
            spatial_dims=self.spatial_dims,
            divisor=self.required_divisor,
            model="a2fseg",
        )
        shape = (x.shape[0], self.in_channels)
        if available is None:
            return torch.ones(shape, dtype=torch.bool, device=x.device)
        if not isinstance(available, Tensor) or available.dtype != torch.bool:
            kind = available.dtype if isinstance(available, Tensor) else type(available).__name__
            raise TypeError(f"a2fseg: available must be a bool tensor of shape (B, M)={shape}, got {kind}.")
        if tuple(available.shape) != shape:
            raise ValueError(
                f"a2fseg: available must have shape (B, M)={shape} for input {tuple(x.shape)}, "
                f"got {tuple(available.shape)}."
            )
        available = available.to(x.device)
        empty = (~available.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"a2fseg: sample(s) {empty} have no available modality; every sample needs at least one.")
        return available

    def _run_branches(self, x: Tensor, available: Tensor) -> list[_BranchRun]:
        """Branch ``m`` on the samples that have modality ``m`` only (None if none has it)."""
        runs: list[_BranchRun] = []
        for m, branch in enumerate(self.branches):
            index = available[:, m].nonzero().flatten()
            if index.numel() == 0:
                runs.append(None)
                continue
            features, logits = branch(x.index_select(0, index).narrow(1, m, 1))
            runs.append((index, features, logits))
        return runs

    def _level_means(self, runs: list[_BranchRun], available: Tensor, missing: str, batch: int) -> list[Tensor]:
        """Per level (bottleneck, then decoder stages coarse to fine): sum of the present
        branch features (zeros elsewhere) divided by the per-sample count of available
        modalities (``"drop"``) or by M (``"zero_features"``)."""
        present = [r for r in runs if r is not None]
        count = (
            available.sum(dim=1)
            if missing == "drop"
            else available.new_full((batch,), self.in_channels, dtype=torch.long)
        )
        means = []
        for level in range(self.depth + 1):
            parts = [_scatter_rows(feats[level], index, batch) for index, feats, _ in present]
            total = sum(parts[1:], parts[0])
            means.append(total / count.to(total.dtype).view(batch, *[1] * (total.ndim - 1)))
        return means

    def _adaptive_fusion(self, runs: list[_BranchRun], fbar: Tensor, missing: str) -> tuple[Tensor, Tensor]:
        """Eq. 1-3: ``(Fhat (B, C, *S), softmax weights (B, M, C, *S))``."""
        batch = fbar.shape[0]
        logits_w, features = [], []
        for g, run in zip(self.attention_blocks, runs):
            f_m = None if run is None else _scatter_rows(run[1][-1], run[0], batch)
            if missing == "zero_features":  # absent samples: g_m([Fbar; 0])
                f_in = torch.zeros_like(fbar) if f_m is None else f_m
                w = g(torch.cat([fbar, f_in], dim=1))
            elif run is None:
                w = torch.full_like(fbar, float("-inf"))
            else:  # g_m on the present samples only; -inf (softmax weight 0) elsewhere
                w = g(torch.cat([fbar.index_select(0, run[0]), run[1][-1]], dim=1))
                w = _scatter_rows(w, run[0], batch, fill=float("-inf"))
            logits_w.append(w)
            features.append(f_m)
        weights = torch.stack(logits_w, dim=1).softmax(dim=1)
        terms = [weights[:, m] * f for m, f in enumerate(features) if f is not None]
        return sum(terms[1:], terms[0]), weights


def _check_args(
    in_channels: int, num_classes: int, spatial_dims: int, base: int, depth: int, max_channels: int, attention: str
) -> None:
    """Raise ValueError for invalid :class:`A2FSeg` constructor arguments."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"a2fseg: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    sizes = {"in_channels": in_channels, "num_classes": num_classes, "base": base, "depth": depth}
    for name, value in sizes.items():
        if int(value) < 1:
            raise ValueError(f"a2fseg: {name} must be >= 1, got {value!r}.")
    if int(max_channels) < int(base):
        raise ValueError(f"a2fseg: max_channels must be >= base={base}, got {max_channels!r}.")
    if attention not in _ATTENTIONS:
        raise ValueError(f"a2fseg: attention must be one of {_ATTENTIONS}, got {attention!r}.")
