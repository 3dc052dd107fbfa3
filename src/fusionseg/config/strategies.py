"""Strategy sections without an image-fusion network: missing modalities (S1),
cross-modal self-supervised pretraining (S2) and the PET threshold rules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fusionseg.config.sections import _Strict
from fusionseg.constants import canonical_modality


class MissingConfig(_Strict):
    """Missing MRI sequences (S1; :mod:`fusionseg.strategies.missing`).

    ``simulate``: how an absent modality is shown to the network, in modality-dropout
    training and when a model is scored on a modality subset or predicts a case that
    lacks a sequence: ``zero`` (zeroed input channel), ``mean`` (the mean of the
    present channels), ``drop_branch`` (branch models: the branch is skipped) or
    ``zero_features`` (branch models: its features count as zeros). Unset: the
    strategy's natural choice (``drop_branch`` for a2fseg, ``zero`` otherwise), written
    into the saved config. ``dropout``: modality-dropout training, ``none``,
    ``alternate`` (A2FSeg's schedule) or ``per_sample``. ``mask_channels``: append the
    availability mask as input channels (strategy early).
    """

    simulate: Literal["zero", "mean", "drop_branch", "zero_features"] | None = None
    dropout: Literal["none", "alternate", "per_sample"] = "none"
    mask_channels: bool = False


class SSLConfig(_Strict):
    """Cross-modal self-supervised pretraining (S2; METHODS.md §5) under ``strategy: ssl``.

    Stage ``pretext``: a network of ``model`` (``resnet50_unet``) with one input channel
    per ``inputs`` modality and one linear output learns to predict ``target`` (MSE on
    brain voxels, ``mask: brain``, or on the whole image, ``mask: image``) from the
    fold's training slices (never its validation or test cases); early stopping on the
    validation MSE. Stage ``segmentation``: the segmentation network on every
    ``data.modalities`` channel starts from the pretext weights
    (:func:`fusionseg.models.transfer.transfer_pretext_weights`): first-conv kernels of
    ``inputs`` into the channels of the same names, the other input channels
    ``other_channels`` (``random``: their fresh initialisation, S2; ``zero``; ``mean``
    of the copied kernels), every other encoder tensor by name and shape, the decoder
    when ``transfer_decoder``, the head never. ``epochs`` / ``lr``: the pretext stage's
    (None = ``train.epochs`` / ``train.lr``, as S2: the same schedule for both).
    ``pretext_cases``: ``train`` (the fold's training cases) or ``train+unlabelled``
    (also every brain slice of the dataset's unlabelled cases; never a test case: an
    unlabelled case with a labelled case's images is left out).
    """

    inputs: list[str] = Field(default_factory=lambda: ["t1", "t1ce"], min_length=1)
    target: str = "flair"
    mask: Literal["brain", "image"] = "brain"
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    other_channels: Literal["random", "zero", "mean"] = "random"
    transfer_decoder: bool = False
    pretext_cases: Literal["train", "train+unlabelled"] = "train"

    @field_validator("inputs")
    @classmethod
    def _canonical_inputs(cls, value: list[str]) -> list[str]:
        return [canonical_modality(m) for m in value]

    @field_validator("target")
    @classmethod
    def _canonical_target(cls, value: str) -> str:
        return canonical_modality(value)

    def problems(self, modalities: list[str] | None, model: str, spatial_dims: int) -> list[str]:
        """What does not fit the experiment: names outside ``data.modalities`` (None:
        the dataset's, checked when the strategy is built), a target among the inputs,
        a model without an smp ResNet encoder, 3-D."""
        known = modalities if modalities is not None else [*self.inputs, self.target]
        out = [f"ssl.inputs: {m} is not in data.modalities {modalities}" for m in self.inputs if m not in known]
        if self.target not in known:
            out.append(f"ssl.target: {self.target} is not in data.modalities {modalities}")
        if self.target in self.inputs:
            out.append(f"ssl.target: {self.target} is also an input (ssl.inputs {self.inputs}); predict another one")
        if model != "resnet50_unet":
            out.append(f"strategy ssl transfers ResNet encoder weights: model must be resnet50_unet, not {model}")
        if spatial_dims != 2:
            out.append("strategy ssl is 2-D (S2 trains on axial slices): spatial_dims must be 2")
        return out


class ThresholdConfig(_Strict):
    """A PET segmentation rule that clinicians use, with no training (``strategy:
    threshold``; :mod:`fusionseg.inference.rules`), as a floor for learned PET/CT
    models. Applied to the case's SUV image as read from disk (not clipped to
    ``preprocess.suv_range``).

    ``rule``: ``suv`` (tumour where SUV >= ``value``; 2.5 is the usual absolute
    threshold) or ``suvmax_fraction`` (tumour where SUV >= ``value`` x the case's
    SUVmax; 0.4 is the common 40 % isocontour, Erdi et al., Cancer 80(S12), 1997).
    """

    rule: Literal["suv", "suvmax_fraction"]
    value: float = Field(gt=0)

    @model_validator(mode="after")
    def _fraction_below_one(self) -> ThresholdConfig:
        if self.rule == "suvmax_fraction" and self.value > 1:
            raise ValueError(f"threshold.value {self.value:g}: a fraction of SUVmax is in (0, 1], e.g. 0.4")
        return self

    def label(self) -> str:
        return f"SUV >= {self.value:g}" if self.rule == "suv" else f"SUV >= {self.value:.0%} of SUVmax"


#: Sections that a threshold rule does not use (no network, no training).
RULE_FREE_SECTIONS = ("model", "loss", "sampling", "train", "inference")
#: Strategies without an image-fusion network (no ``fusion`` section).
NO_FUSION_STRATEGIES = ("early", "a2fseg", "threshold", "ssl")
