"""The strategy interface the training loop and the predictor rely on.

A strategy is an ``nn.Module`` that owns the networks of a method and its losses and
says how it is trained: in which stages (e.g. decoupled training first fits the fusion
network, then the segmentation network) and with which loss. The training loop calls
only :meth:`Strategy.training_loss`, :meth:`Strategy.forward` and the epoch hooks; it
knows nothing of a strategy's insides.

Losses live in ``self.losses`` (an ``nn.ModuleDict``, so they move to the device with
the strategy) but are left out of ``state_dict()``: checkpoints hold only the
networks (a frozen VGG-16 of a perceptual loss would add 59 MB to each), and a model
can be rebuilt for prediction without the losses' resources.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import nn

from fusionseg.outputs import CLASS_OUTPUT, OutputHead
from fusionseg.strategies.missing import ModalityDropout, mask_channels, simulate_missing
from fusionseg.training.stage import Stage

__all__ = ["Stage", "Strategy"]


class Strategy(nn.Module, ABC):
    """Base class of every strategy (see module docstring).

    Args:
        modalities: input channel names, in the order of ``batch["image"]``.
        losses: named loss modules (may be empty when built only for prediction).
    """

    #: What the strategy produces beyond segmentation logits, declared instead of
    #: probed: ``"fusion_image"`` (a ``fuse(image)`` method returning the fused image F;
    #: the runner then reports fused-image quality). Later: extra heads, branches.
    #: ``"modality_branches"``: one branch per modality, so ``missing.simulate`` may be
    #: ``drop_branch`` / ``zero_features``.
    capabilities: frozenset[str] = frozenset()

    def __init__(self, modalities: Sequence[str], losses: dict[str, nn.Module] | None = None):
        super().__init__()
        self.modalities = tuple(modalities)
        self.losses = nn.ModuleDict(losses or {})
        self.stage = self.stages()[0].name
        self.simulate, self.mask_channels = "zero", False
        self.dropout: ModalityDropout | None = None
        #: what the segmentation logits mean (softmax classes or sigmoid regions);
        #: set by :func:`fusionseg.strategies.build_strategy` from ``cfg.output``
        self.head: OutputHead = CLASS_OUTPUT

    def configure_missing(self, simulate: str, dropout: str = "none", mask_channels: bool = False, seed: int = 0):
        """How absent modalities reach the networks (``missing`` of the config; see
        :mod:`fusionseg.strategies.missing`); returns self."""
        self.simulate, self.mask_channels = simulate, bool(mask_channels)
        self.dropout = None if dropout == "none" else ModalityDropout(dropout, len(self.modalities), seed)
        return self

    def network_input(self, image: torch.Tensor, available: torch.Tensor | None) -> torch.Tensor:
        """The input of a channel-stacking network: absent channels (``available``
        False) replaced as ``simulate`` says (``zero`` / ``mean``), then the mask
        channels when configured. ``available`` None: every modality present."""
        if available is not None and not bool(available.all()):
            image = simulate_missing(image, available, self.simulate)
        return mask_channels(image, available) if self.mask_channels else image

    def training_available(self, batch: dict) -> torch.Tensor | None:
        """The modalities a training batch keeps: ``batch["available"]`` thinned by
        modality dropout; None when nothing is absent (the plain input is used)."""
        available = batch.get("available")
        if self.dropout is not None and available is not None:
            available = self.dropout(available)
        if available is None or bool(available.all()):
            return None
        return available

    # -- what the loop calls -------------------------------------------------
    @abstractmethod
    def forward(self, image: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, *spatial) float32 modality stack -> (B, K, *spatial) segmentation
        logits; ``available`` (B, C) bool marks present modalities (None: all)."""

    @abstractmethod
    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of the current stage on one batch, and floats to log (epoch means of
        these go to ``train_log.csv``)."""

    def stages(self) -> list[Stage]:
        """Training stages in order (default: one stage)."""
        return [Stage()]

    def set_stage(self, name: str) -> None:
        """Switch to stage ``name`` (e.g. freeze a network). Called before each stage."""
        if name not in [s.name for s in self.stages()]:
            raise ValueError(f"{type(self).__name__} has no stage {name!r}")
        self.stage = name

    def on_epoch_start(self, epoch: int) -> None:
        """Hook before 0-based training ``epoch`` (after a resume too): starts that
        epoch's modality-dropout draws."""
        if self.dropout is not None:
            self.dropout.start_epoch(epoch)

    def on_epoch_end(self, epoch: int, train_means: dict[str, float]) -> dict[str, float]:
        """Hook after each training epoch with the epoch-mean training logs; returns
        extra values to log (e.g. dynamic loss weights)."""
        return {}

    @property
    def required_divisor(self) -> int:
        """In-plane sizes must be a multiple of this."""
        return 1

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- checkpoints hold networks, not losses ---------------------------------
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in [k for k in state if k.startswith(prefix + "losses.")]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("losses.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"{type(self).__name__}: checkpoint does not match the networks: "
                f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return result
