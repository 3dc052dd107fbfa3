"""Cross-modal self-supervised pretraining (S2; METHODS.md §5): predict one MRI
sequence from others as a pretext task, then segment from the transferred weights.

Stage ``pretext``: ``pretext_net`` (ResNet-50 U-Net, one input channel per
``ssl.inputs`` modality, one linear output) learns ``ssl.target`` (S2: FLAIR from
[T1, T1ce]) with the MSE over brain voxels (``mask: brain``: voxels where any input
modality is non-zero, the preprocessing's background being 0) or over the whole image
(``mask: image``); early stopping on the validation MSE. Entering stage
``segmentation`` copies its weights into ``seg_net`` (every ``data.modalities``
channel in, the label scheme's classes out) as
:func:`fusionseg.models.transfer.transfer_pretext_weights` does, keeps the report in
:attr:`CrossModalSSL.transfer_report`, and freezes the pretext network; the segmentation
stage then trains ``seg_net`` with the experiment's loss and early stopping on the
validation Dice. Prediction uses ``seg_net`` only.

Checkpoints of the segmentation stage (and so ``best.ckpt`` that ``fusionseg predict``
reads) leave the pretext network out: it is not needed once transferred, and a
ResNet-50 U-Net is 130 MB. The random-initialisation baseline of S2 is ``strategy:
early`` with the same ``model``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fusionseg.strategies.base import Stage, Strategy

#: State-dict prefix of the pretext network (absent from segmentation-stage checkpoints).
PRETEXT_PREFIX = "pretext_net."


class CrossModalSSL(Strategy):
    """S2: pretext stage, weight transfer, segmentation stage (module docstring).

    Args:
        pretext_net: (B, len(inputs), H, W) -> (B, 1, H, W) predicted target sequence.
        seg_net: (B, len(modalities), H, W) -> (B, K, H, W) class logits; the same
            architecture, so that its encoder takes the pretext weights by name.
        modalities: the input channel names (``data.modalities``), in order.
        inputs, target: the pretext's input and target modality names (in ``modalities``).
        mask: ``brain`` or ``image``: where the pretext MSE is taken.
        seg_loss: (logits, target) -> loss; None when built for prediction.
        pretext_lr, pretext_epochs: the pretext stage's learning rate and epoch budget
            (None: the training config's).
        other_channels, transfer_decoder: transfer options (see
            :func:`fusionseg.models.transfer.transfer_pretext_weights`).
        pretext_data: the training set of the pretext stage (``"train"``, or
            ``"pretext"``: with the dataset's unlabelled cases, built by the sampler).
    Raises:
        ValueError: an input or the target is not among ``modalities``.
    """

    capabilities = frozenset({"pretext_image"})

    def __init__(
        self,
        pretext_net: nn.Module,
        seg_net: nn.Module,
        modalities: Sequence[str],
        inputs: Sequence[str],
        target: str,
        mask: str = "brain",
        seg_loss: nn.Module | None = None,
        pretext_lr: float | None = None,
        pretext_epochs: int | None = None,
        other_channels: str = "random",
        transfer_decoder: bool = False,
        pretext_data: str = "train",
    ):
        unknown = [m for m in (*inputs, target) if m not in modalities]
        if unknown:
            raise ValueError(f"CrossModalSSL: {unknown} not among the input modalities {list(modalities)}")
        self.pretext_lr, self.pretext_epochs, self.pretext_data = pretext_lr, pretext_epochs, pretext_data
        super().__init__(modalities, {"seg": seg_loss} if seg_loss is not None else None)
        self.pretext_net, self.seg_net = pretext_net, seg_net
        self.inputs, self.target, self.mask = tuple(inputs), target, mask
        self.input_index = [self.modalities.index(m) for m in inputs]
        self.target_index = self.modalities.index(target)
        self.other_channels, self.transfer_decoder = other_channels, transfer_decoder
        self.transfer_report = None
        self.set_stage(self.stage)

    def stages(self) -> list[Stage]:
        return [
            Stage("pretext", lr=self.pretext_lr, epochs=self.pretext_epochs, score="loss", data=self.pretext_data),
            Stage("segmentation", score="dice"),
        ]

    def set_stage(self, name: str) -> None:
        """Switch stage; pretext -> segmentation transfers the pretext weights once."""
        previous = self.stage
        super().set_stage(name)
        if name == "segmentation" and previous == "pretext" and self.transfer_report is None:
            from fusionseg.models.transfer import transfer_pretext_weights

            self.transfer_report = transfer_pretext_weights(
                self.seg_net,
                self.pretext_net.state_dict(),
                source_inputs=self.inputs,
                target_inputs=self.modalities,
                other_channels=self.other_channels,
                decoder=self.transfer_decoder,
            )
        self.pretext_net.requires_grad_(name == "pretext")
        self.seg_net.requires_grad_(name != "pretext")

    @property
    def required_divisor(self) -> int:
        return int(getattr(self.seg_net, "required_divisor", 1))

    # -- pretext ------------------------------------------------------------
    def pretext_parts(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"inputs" (B, n, H, W), "target" (B, 1, H, W), "predicted" (B, 1, H, W),
        "mask" (B, 1, H, W) bool}`` of a (B, C, H, W) modality stack (z-scored)."""
        inputs = image[:, self.input_index]
        target = image[:, self.target_index : self.target_index + 1]
        if self.mask == "brain":
            mask = (inputs != 0).any(dim=1, keepdim=True)
        else:
            mask = torch.ones_like(target, dtype=torch.bool)
        return {"inputs": inputs, "target": target, "predicted": self.pretext_net(inputs), "mask": mask}

    @staticmethod
    def masked_mse(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the ``mask`` voxels (0 when the mask is empty)."""
        weight = mask.to(predicted.dtype)
        return ((predicted - target) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)

    # -- what the loop calls ------------------------------------------------
    def forward(self, image: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
        return self.seg_net(self.network_input(image, available))

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if self.stage == "pretext":  # the real images: modality dropout is for segmentation
            parts = self.pretext_parts(batch["image"])
            loss = self.masked_mse(parts["predicted"], parts["target"], parts["mask"])
            return loss, {"loss_pretext_mse": float(loss.detach())}
        loss = self.losses["seg"](self(batch["image"], self.training_available(batch)), batch["label"])
        return loss, {"loss_seg": float(loss.detach())}

    # -- checkpoints: the pretext network only while it trains ----------------
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if self.stage != "pretext":
            prefix = kwargs.get("prefix", "") + PRETEXT_PREFIX
            for key in [k for k in state if k.startswith(prefix)]:
                del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As :meth:`Strategy.load_state_dict`; a checkpoint without the pretext network
        (segmentation stage) is complete."""
        if not any(k.startswith(PRETEXT_PREFIX) for k in state_dict):
            own = nn.Module.state_dict(self.pretext_net)
            state_dict = {**state_dict, **{PRETEXT_PREFIX + k: v for k, v in own.items()}}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
