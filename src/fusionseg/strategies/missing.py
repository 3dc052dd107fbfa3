"""Missing MRI sequences: how a network is shown that a modality is absent, and
modality-dropout training (S1; METHODS.md §4).

A batch carries ``available``, a (B, M) bool mask over the input channels. How an
absent channel reaches the network is one recorded option (``missing.simulate`` in
the config), applied in training (under modality dropout) and whenever a model is
scored on a modality subset or predicts a case that lacks a sequence:

- ``zero``: the channel is set to 0 (DeMoSeg's zeroed input; after per-volume
  z-scoring 0 is the brain's mean intensity);
- ``mean``: the channel is set, voxel by voxel, to the mean of the present channels;
- ``drop_branch``: for models with one branch per modality (A2FSeg), the branch is not
  run and fusion averages over the present branches only;
- ``zero_features``: the branch is not run and its features count as zeros in the
  fusion (RFNet / mmFormer).

Modality dropout (``missing.dropout``) draws which modalities a training batch keeps:

- ``alternate``: A2FSeg's schedule: odd epochs (1-based) with every modality; in even
  epochs each batch keeps one subset, drawn as a size k uniform in {1, ..., M - 1},
  then a subset of that size uniformly; the whole batch shares it;
- ``per_sample``: every sample on its own keeps all modalities with probability 1/2,
  otherwise a subset drawn as above.

Draws come from a generator seeded by (seed, epoch), so a resumed run draws the same
subsets as an uninterrupted one.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

#: The values of ``missing.simulate``.
SIMULATIONS = ("zero", "mean", "drop_branch", "zero_features")
#: The values of ``missing.simulate`` that change the network input (any model).
INPUT_SIMULATIONS = ("zero", "mean")
#: The values of ``missing.dropout``.
DROPOUTS = ("none", "alternate", "per_sample")


def _channel_mask(available: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(B, M) bool -> (B, M, 1, ..., 1) broadcastable against ``image`` (B, M, *spatial)."""
    if available.shape != image.shape[:2]:
        raise ValueError(f"available mask of shape {tuple(available.shape)} for an image of shape {tuple(image.shape)}")
    return available.to(device=image.device, dtype=torch.bool).view(*available.shape, *([1] * (image.dim() - 2)))


def simulate_missing(image: torch.Tensor, available: torch.Tensor, method: str) -> torch.Tensor:
    """The network input with absent channels replaced (``zero`` or ``mean``).

    Args:
        image: float (B, M, *spatial) modality stack.
        available: bool (B, M); False marks an absent modality.
        method: ``zero`` or ``mean`` (see module docstring).
    Returns:
        a new float tensor of ``image``'s shape; present channels unchanged, absent
        ones never read (a NaN there does not propagate).
    Raises:
        ValueError: unknown method, a mask of the wrong shape, or a sample with no
            modality present.
    """
    if method not in INPUT_SIMULATIONS:
        raise ValueError(f"simulate_missing: method {method!r}; choose one of {INPUT_SIMULATIONS}")
    mask = _channel_mask(available, image)
    counts = available.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError(f"samples {torch.nonzero(counts == 0).flatten().tolist()} have no modality present")
    kept = torch.where(mask, image, torch.zeros((), dtype=image.dtype, device=image.device))
    if method == "zero":
        return kept
    mean = kept.sum(dim=1, keepdim=True) / counts.to(image.dtype).view(-1, *([1] * (image.dim() - 1)))
    return torch.where(mask, image, mean.expand_as(image))


def mask_channels(image: torch.Tensor, available: torch.Tensor | None) -> torch.Tensor:
    """``image`` (B, M, *spatial) with M constant channels appended: 1 where the
    modality is present, 0 where absent (``missing.mask_channels``); None = all present."""
    b, m = image.shape[:2]
    if available is None:
        available = torch.ones((b, m), dtype=torch.bool, device=image.device)
    maps = _channel_mask(available, image).to(image.dtype).expand_as(image)
    return torch.cat([image, maps], dim=1)


def _draw_subset(n: int, generator: torch.Generator) -> torch.Tensor:
    """A non-empty proper subset of n modalities as a (n,) bool mask: size uniform in
    {1, ..., n - 1}, then the subset uniformly among those of that size."""
    size = int(torch.randint(1, n, (1,), generator=generator))
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=generator)[:size]] = True
    return keep


class ModalityDropout:
    """Which modalities each training batch keeps (see module docstring).

    Args:
        mode: ``alternate`` or ``per_sample``.
        n_modalities: M, the input channels.
        seed: base seed; epoch e draws from a generator seeded with (seed, e).
    Raises:
        ValueError: unknown mode.
    """

    def __init__(self, mode: str, n_modalities: int, seed: int = 0):
        if mode not in DROPOUTS[1:]:
            raise ValueError(f"modality dropout {mode!r}; choose one of {DROPOUTS[1:]}")
        self.mode, self.n, self.seed = mode, int(n_modalities), int(seed)
        self.epoch = 0
        self.generator = torch.Generator()
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Reset the draws for 0-based ``epoch`` (called by the loop before it)."""
        self.epoch = int(epoch)
        self.generator.manual_seed(self.seed * 1_000_003 + 7919 * self.epoch + 17)

    def __call__(self, available: torch.Tensor) -> torch.Tensor:
        """(B, M) bool of the batch's present modalities -> the modalities kept this
        step (a subset of them; never empty: a draw that would leave a sample with
        nothing keeps that sample's modalities)."""
        if self.n < 2:
            return available
        b = available.shape[0]
        if self.mode == "alternate":
            if self.epoch % 2 == 0:  # 1-based odd epoch: every modality
                return available
            drawn = _draw_subset(self.n, self.generator).expand(b, self.n)
        else:
            rows = [
                torch.ones(self.n, dtype=torch.bool)
                if float(torch.rand((), generator=self.generator)) < 0.5
                else _draw_subset(self.n, self.generator)
                for _ in range(b)
            ]
            drawn = torch.stack(rows)
        kept = available.cpu() & drawn
        empty = kept.sum(dim=1) == 0
        kept[empty] = available.cpu()[empty]
        return kept.to(available.device)


def subset_mask(modalities: Sequence[str], present: Sequence[str], batch: int = 1) -> torch.Tensor:
    """(batch, M) bool mask of ``present`` over ``modalities``.

    Raises:
        ValueError: ``present`` names a modality not in ``modalities``, or is empty.
    """
    unknown = [m for m in present if m not in modalities]
    if unknown or not present:
        raise ValueError(f"modality subset {list(present)}: choose a non-empty subset of {list(modalities)}")
    row = torch.tensor([m in present for m in modalities], dtype=torch.bool)
    return row.expand(batch, len(modalities)).clone()


class WithSubset(nn.Module):
    """A trained strategy that sees only ``present`` of its ``modalities``: every
    forward passes the (B, M) availability mask, so absent inputs are simulated as the
    strategy's ``missing.simulate`` says. (B, M, *spatial) -> (B, K, *spatial) logits."""

    def __init__(self, strategy: nn.Module, present: Sequence[str]):
        super().__init__()
        self.strategy = strategy
        self.register_buffer("row", subset_mask(strategy.modalities, present)[0], persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.strategy(image, available=self.row.to(image.device).expand(image.shape[0], -1))
