"""Typed experiment configuration (pydantic) <-> YAML.

A config file describes one experiment: which data, how it is preprocessed and
sampled, which model, loss and training schedule, how cases are split and how results
are evaluated. The resolved config (defaults filled in) is saved with every run.
Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveFloat,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from fusionseg.constants import MRI_MODALITIES, PET, canonical_modality
from fusionseg.errors import ConfigError

if TYPE_CHECKING:
    from fusionseg.evaluation.metrics.lesionwise import LesionWiseParams


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the cases are and which modalities are used (by name, in channel order)."""

    root: Path = Field(description="dataset folder (any supported layout)")
    format: str | None = Field(None, description="layout name; None = autodetect")
    scheme: str | None = Field(None, description="label scheme name; None = the layout's default")
    modalities: list[str] | None = Field(
        None, description="input modalities in channel order; None = all of the dataset"
    )
    cases: list[str] | None = Field(None, description="restrict to these case ids")
    cache_dir: Path | None = Field(
        None, description="preprocessing cache; None = $FUSIONSEG_CACHE or ~/.cache/fusionseg"
    )

    @field_validator("modalities")
    @classmethod
    def _canonical(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        names = [canonical_modality(m) for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"modalities repeat a name: {v}")
        return names


class PreprocessConfig(_Strict):
    """Preprocessing computed once per case and cached (key = hash of this config).

    MRI modalities: clip at the ``clip_percentile`` of brain voxels, then z-score over
    brain voxels (background stays 0). PET (SUV): clip to ``suv_range`` and scale to
    [0, 1]. CT (HU): clip to ``hu_window`` and scale to [0, 1]. With ``target_spacing``
    the cropped, normalised case is resampled to that voxel size (nnU-Net's target
    spacing; intensities trilinear, labels nearest) and every prediction's class
    probabilities are resampled back onto the cropped source grid before the arg-max.
    """

    crop: Literal["foreground", "none"] = "foreground"
    crop_margin: int = Field(0, ge=0, description="voxels kept around the foreground box")
    clip_percentile: float = Field(99.5, gt=50, le=100)
    suv_range: tuple[float, float] = (0.0, 15.0)
    hu_window: tuple[float, float] = (-100.0, 250.0)
    target_spacing: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        None,
        description="voxel size in mm per array axis after resampling (trilinear images, nearest labels); "
        "predictions are resampled back onto the input grid. None: keep each case's own grid",
    )

    def key(self) -> str:
        """Short hash identifying this preprocessing (the cache key; a config without
        ``target_spacing`` keeps the key it had before that setting existed)."""
        exclude = {"target_spacing"} if self.target_spacing is None else set()
        payload = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


class SamplingConfig(_Strict):
    """Which 2-D axial training samples are drawn.

    mode: ``central`` (the ``central_k`` central slices of the volume, as S0's slices
    72-81 of 155), ``tumour`` (every slice containing tumour), ``all`` (every slice
    with brain), ``patch`` (2-D patches of size ``patch_size`` from slices with brain,
    centred on a tumour voxel with probability ``tumour_probability``).
    For slice modes ``patch_size`` optionally crops a random window (centred on tumour
    with ``tumour_probability``) from each slice; None keeps whole slices padded to a
    common size.
    ``augment`` (training samples only): random flips of both in-plane axes (p = 0.5
    each) and per-channel intensity scaling by 1 + U(-0.1, 0.1) and shift by
    U(-0.1, 0.1) (p = 0.5 each; MONAI transforms), seeded per sample and epoch.
    ``context`` (2-D, strategy early): 2.5-D input, the ``context`` neighbouring slices
    on each side of every slice as extra channels (modality-major: T1 z-1, T1 z, T1 z+1,
    T1ce z-1, ...; zeros beyond the volume), in training, validation and prediction.

    3-D (``spatial_dims: 3``, :mod:`fusionseg.data.samplers.patches3d`): ``mode: patch``
    with a 3-D ``patch_size``; each epoch draws ``patches_per_case`` patches from every
    training case, centred on tumour with ``tumour_probability`` (MONAI's
    RandCropByPosNegLabeld; images smaller than the patch are zero-padded);
    ``augment`` flips all three axes and scales / shifts intensities. Validation runs
    on whole cases (``val_mode`` and ``central_k`` do not apply).
    """

    mode: Literal["central", "tumour", "all", "patch"] = "tumour"
    augment: bool = False
    central_k: int = Field(10, ge=1)
    patch_size: tuple[int, int] | tuple[int, int, int] | None = None
    tumour_probability: float = Field(0.5, ge=0, le=1)
    val_mode: Literal["central", "tumour", "all"] = "tumour"
    patches_per_case: int | None = Field(None, ge=1, description="3-D only: patches per training case and epoch (4)")
    context: int = Field(0, ge=0, le=8, description="2-D only: neighbouring slices per side as channels (2.5-D)")

    @model_validator(mode="after")
    def _patch_needs_size(self) -> SamplingConfig:
        if self.mode == "patch" and self.patch_size is None:
            raise ValueError("sampling.mode 'patch' needs sampling.patch_size, e.g. [128, 128]")
        return self

    def check_dims(self, spatial_dims: int) -> list[str]:
        """Problems of these settings under ``spatial_dims`` (empty: they apply)."""
        problems = []
        if spatial_dims == 2:
            if self.patch_size is not None and len(self.patch_size) != 2:
                problems.append(f"sampling.patch_size {list(self.patch_size)}: spatial_dims 2 takes [H, W]")
            if self.patches_per_case is not None:
                problems.append("sampling.patches_per_case applies to spatial_dims 3 only")
            return problems
        if self.context:
            problems.append("sampling.context (2.5-D neighbouring slices) applies to spatial_dims 2 only")
        if self.mode != "patch" or self.patch_size is None or len(self.patch_size) != 3:
            problems.append(
                "spatial_dims 3 trains on 3-D patches: set sampling.mode: patch and sampling.patch_size: [X, Y, Z]"
            )
        defaults = SamplingConfig()
        for key in ("val_mode", "central_k"):
            if getattr(self, key) != getattr(defaults, key):
                problems.append(f"sampling.{key} does not apply to spatial_dims 3 (validation uses whole cases)")
        return problems


class ModelConfig(_Strict):
    """A model from the registry (``fusionseg.models``) and its keyword arguments."""

    name: str = "unet2stage"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class LossConfig(_Strict):
    """A segmentation loss from the registry (``fusionseg.losses``).

    Omitted ``kwargs`` are S0's class weights ``[0.5, 2, 5, 4]`` for the default
    ``dice_ce`` (METHODS.md §1) and the loss's own defaults (``{}``) for any other name,
    so that naming another loss never inherits options it does not take."""

    name: str = "dice_ce"
    kwargs: dict[str, Any] = Field(default_factory=lambda: {"class_weights": [0.5, 2.0, 5.0, 4.0]})

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_the_named_loss(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kwargs" not in data and data.get("name", "dice_ce") != "dice_ce":
            return {**data, "kwargs": {}}
        return data


class OutputConfig(_Strict):
    """What the segmentation network's output channels mean (:mod:`fusionseg.outputs`).

    ``kind``: ``classes`` (one softmax channel per class of the label scheme, arg-max;
    the default) or ``regions`` (one sigmoid channel per nested region, BraTS WT / TC /
    ET, painted largest first: nnU-Net's region-based training; needs ``loss.name:
    region_dice_bce``). ``regions`` (the chain, largest first; default: found among the
    scheme's regions) and ``threshold`` (default 0.5) apply to ``kind: regions`` only.
    """

    kind: Literal["classes", "regions"] = "classes"
    regions: list[str] | None = Field(
        None, min_length=1, description="kind regions only: nested regions, largest first"
    )
    threshold: float | None = Field(None, gt=0, lt=1, description="kind regions only: probability threshold (0.5)")

    @model_validator(mode="after")
    def _applies(self) -> OutputConfig:
        if self.kind == "classes":
            extra = [k for k in ("regions", "threshold") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"output.{extra[0]} applies to output.kind: regions only")
        return self


class TrainConfig(_Strict):
    """Optimisation schedule (S0 defaults: Adam lr 1e-3, batch 4, <= 50 epochs,
    early stopping on validation Dice with patience 5)."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "poly", "step"] = Field(
        "constant",
        description="constant; poly decay lr * (1 - epoch / epochs) ** 0.9 per epoch (nnU-Net, Isensee et al. 2021); "
        "or step: lr * lr_gamma ** (epoch // lr_step_epochs) (torch StepLR; S2: x0.5 every 10 epochs)",
    )
    lr_step_epochs: int = Field(10, ge=1, description="lr_schedule step only: epochs between two lr drops")
    lr_gamma: float = Field(0.5, gt=0, le=1, description="lr_schedule step only: factor of each drop")
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(5, ge=1, description="epochs without validation improvement")
    min_epochs: int = Field(1, ge=1)
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="cap on optimiser steps per epoch (None = one pass)"
    )
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    distributed: Literal["none", "ddp"] = Field(
        "none",
        description="ddp: train each stage on `devices` processes (DDP through Lightning "
        "Fabric; CLI --devices N --strategy ddp); rank 0 writes",
    )
    precision: str = "32-true"
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch default")

    @model_validator(mode="after")
    def _step_settings_need_step(self) -> TrainConfig:
        """A step setting away from its default under another schedule is an error
        (compared by value: a saved config lists every setting, defaults included)."""
        fields = type(self).model_fields
        given = [k for k in ("lr_step_epochs", "lr_gamma") if getattr(self, k) != fields[k].default]
        if given and self.lr_schedule != "step":
            raise ValueError(
                f"train.{', train.'.join(given)}: applies to lr_schedule: step only (this is {self.lr_schedule})"
            )
        return self


class SplitConfig(_Strict):
    """How labelled cases are split. ``kfold``: each fold's test set is one of
    ``folds`` disjoint parts; of the remaining cases ``val_fraction`` (at least one
    case) is held out for early stopping. ``holdout``: one split with
    ``test_fraction`` test cases. ``all``: the final model for new data (``fusionseg
    train --final``): one fold that trains on every labelled case but the
    ``val_fraction`` kept for early stopping and post-processing, with no test cases
    (so no test metrics). A saved split file is reused when given."""

    kind: Literal["kfold", "holdout", "all"] = "kfold"
    folds: int = Field(5, ge=2)
    run_folds: list[int] | None = Field(None, description="run only these folds")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 0
    file: Path | None = Field(None, description="reuse this split JSON")


class ChallengeConfig(_Strict):
    """Lesion-wise parameters as ``fusionseg evaluate`` takes them: a BraTS 2023
    ``preset`` whose dilation d and volume threshold tau (mm^3) ``dilation`` /
    ``volume_threshold_mm3`` override (either or both), or without a preset (``custom``)
    both numbers."""

    preset: str = Field("custom", description="GLI, SSA, MEN, PED, MET, or custom (both numbers given)")
    dilation: int | None = Field(None, ge=0, description="GT dilation d in voxels (18-neighbourhood)")
    volume_threshold_mm3: float | None = Field(None, ge=0, description="tau: lesions of volume <= tau are ignored")

    @model_serializer(mode="wrap")
    def _given_only(self, handler: Any) -> dict:
        """Numbers not given are left out of the YAML (they are the preset's)."""
        return {k: v for k, v in handler(self).items() if v is not None}


def _challenge_tag(value: Any) -> str:
    return "settings" if isinstance(value, (dict, ChallengeConfig)) else "preset"


class EvalConfig(_Strict):
    """Evaluation of the test predictions (EVALUATION.md conventions).

    ``challenge``: the lesion-wise protocol, a BraTS 2023 preset name (``GLI``, ``SSA``,
    ``MEN``, ``PED``, ``MET``) or a mapping ``{preset: GLI, dilation: 2,
    volume_threshold_mm3: 20}`` overriding the preset's d / tau (without ``preset``
    both numbers are needed), as ``fusionseg evaluate --challenge / --dilation /
    --volume-threshold``; :meth:`lesion_params` resolves it.
    ``scope``: ``volume`` evaluates each whole test case in 3-D (default);
    ``sampled_slices`` evaluates the axial slab spanned by the slices the sampling mode
    selects in that case (e.g. S0's slices 72-81), as a study that trains and tests on
    those slices does. Predictions are written for the whole volume either way.
    """

    challenge: Annotated[
        Annotated[str, Tag("preset")] | Annotated[ChallengeConfig, Tag("settings")], Discriminator(_challenge_tag)
    ] = "GLI"
    scope: Literal["volume", "sampled_slices"] = "volume"
    metrics: list[str] | None = None
    overlays: int = Field(3, ge=0, description="cases drawn as overlay PNGs")
    modality_subsets: Literal["all"] | list[str] | None = Field(
        None,
        description="also score every test case with only some modalities: all (every non-empty subset), "
        "or a list such as [t1ce+flair, flair]; absent ones simulated as missing.simulate says",
    )

    @field_validator("challenge", mode="before")
    @classmethod
    def _name_or_mapping(cls, value: Any) -> Any:
        if not isinstance(value, (str, dict, ChallengeConfig)):
            # a ValueError (not TypeError): pydantic reports it as a validation error
            raise ValueError(  # noqa: TRY004
                "evaluation.challenge must be a preset name (e.g. GLI) or a mapping "
                f"{{preset, dilation, volume_threshold_mm3}}, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _known_challenge(self) -> EvalConfig:
        """The preset name is checked at load (the message lists the presets)."""
        c = self.challenge
        if (
            isinstance(c, ChallengeConfig)
            and c.preset.strip().lower() == "custom"
            and (c.dilation is None or c.volume_threshold_mm3 is None)
        ):
            raise ValueError(
                "evaluation.challenge without a preset needs both dilation and "
                "volume_threshold_mm3 (or a preset, e.g. {preset: GLI, dilation: 2}, "
                "whose values they override)"
            )
        if isinstance(c, str) and c.strip().lower() == "custom":
            raise ValueError(
                "evaluation.challenge: custom needs both numbers: write {dilation: D, volume_threshold_mm3: TAU}"
            )
        try:
            self.lesion_params()
        except ValueError as exc:
            raise ValueError(f"evaluation.challenge: {exc.args[0] if exc.args else exc}") from None
        return self

    def lesion_params(self) -> LesionWiseParams:
        """The lesion-wise parameters of ``challenge`` (a preset's, or ``custom`` when
        dilation or volume threshold is given, as ``fusionseg evaluate``).

        Raises:
            ValueError: unknown preset, or no preset and not both numbers.
        """
        from fusionseg.evaluation.metrics.lesionwise import challenge_params

        c = self.challenge
        if isinstance(c, str):
            return challenge_params(c)
        return challenge_params(c.preset, c.dilation, c.volume_threshold_mm3)


class PostprocessConfig(_Strict):
    """Connected-component post-processing of whole-volume predictions
    (:mod:`fusionseg.inference.postprocess`), applied before evaluation and by
    ``fusionseg predict``.

    ``method``: ``none``; ``fixed`` (remove whole-tumour components under
    ``min_volume_mm3``, then optionally ``keep_largest``); ``validation`` (per fold,
    the setting among no post-processing, each of ``candidates_mm3`` and, with
    ``try_keep_largest``, keep-largest that scores best on the fold's validation cases
    predicted as whole volumes, by ``criterion``: mean Dice or lesion-wise Dice over
    regions); then, given that choice, no nested-region clean-up or each of
    ``inner_candidates_mm3`` (TC/ET components under the volume relabelled to the
    enclosing region's label: ED for TC specks, NCR for ET specks). The choice is
    recorded in each fold's ``fit.json``.
    """

    method: Literal["none", "fixed", "validation"] = "none"
    min_volume_mm3: float = Field(0.0, ge=0)
    keep_largest: bool = False
    candidates_mm3: list[float] = Field(default_factory=lambda: [10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0])
    try_keep_largest: bool = True
    inner_min_volume_mm3: float = Field(
        0.0,
        ge=0,
        description="fixed: nested-region (TC/ET) components under this are relabelled to the enclosing label",
    )
    inner_candidates_mm3: list[float] = Field(
        default_factory=list,
        description="validation: nested-region thresholds tried after the whole-tumour choice (empty: none)",
    )
    criterion: Literal["dice", "lesion_dice"] = "dice"


class InferenceConfig(_Strict):
    """Whole-volume prediction of the test (and validation) cases, and the default of
    ``fusionseg predict`` for the trained run.

    ``tta``: ``none``, or ``mirror``: test-time augmentation averaging the class
    probabilities over the four in-plane mirrorings of each slice (none, either axis,
    both), as nnU-Net's mirroring (Isensee et al. 2021); 4x the prediction time.
    """

    tta: Literal["none", "mirror"] = "none"
    overlap: float | None = Field(None, ge=0, lt=1, description="3-D only: sliding-window overlap (0.5)")
    sw_batch_size: int | None = Field(None, ge=1, description="3-D only: windows per forward pass (4)")
    blend: Literal["gaussian", "constant"] | None = Field(
        None, description="3-D only: how overlapping windows are averaged (gaussian)"
    )

    @property
    def mirror(self) -> bool:
        return self.tta == "mirror"

    def check_dims(self, spatial_dims: int) -> list[str]:
        """Problems of these settings under ``spatial_dims`` (empty: they apply)."""
        if spatial_dims == 3:
            return []
        return [
            f"inference.{key} applies to spatial_dims 3 only (sliding-window inference)"
            for key in ("overlap", "sw_batch_size", "blend")
            if getattr(self, key) is not None
        ]


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


class FusionCommon(_Strict):
    """Image-level fusion (S0 B and C; METHODS.md §2-3): an LRRNet fuses the detail
    source (I_d, default T1CE) and the salient source (I_s, default FLAIR) into one
    image F; the segmentation network sees ``seg_inputs`` + the z-scored F.

    ``perceptual_features``: VGG-16 weights of the fusion loss: ``imagenet``
    (torchvision's, from the local torch hub cache; never downloaded), a path to a
    local VGG-16 state dict, or ``random`` (explicitly random features).

    The section's type follows the experiment's ``strategy`` (and under joint its
    ``weighting``): :class:`DecoupledFusionConfig`, :class:`StaticFusionConfig`,
    :class:`DynamicFusionConfig`, :class:`SegOnlyFusionConfig`. ``strategy`` here is the
    experiment's, filled in at load and never written to YAML.
    """

    strategy: Literal["decoupled", "joint"] = Field(exclude=True, repr=False)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="lrrnet"))
    detail: str = "t1ce"
    salient: str = "flair"
    seg_inputs: list[str] | None = Field(
        None, description="modalities given to the segmentation net with F; None = [detail, salient]"
    )
    perceptual_features: str = "imagenet"
    w_s: float = 3.0
    w_d: float = 0.5
    gammas: tuple[float, float, float, float] = (10.0, 1.5, 1.0, 2000.0)
    lr: float = Field(1e-4, gt=0, description="fusion pre-training lr (decoupled) and joint lr")

    @field_validator("detail", "salient")
    @classmethod
    def _canonical_name(cls, v: str) -> str:
        return canonical_modality(v)

    @field_validator("seg_inputs")
    @classmethod
    def _canonical_list(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [canonical_modality(m) for m in v]


class DecoupledFusionConfig(FusionCommon):
    """Fusion under strategy decoupled (S0 B): the fusion network is pre-trained with
    L_fusion for ``epochs`` (None = train.epochs), frozen, then the segmentation network
    is trained."""

    strategy: Literal["decoupled"] = Field("decoupled", exclude=True, repr=False)
    epochs: int | None = Field(None, ge=1, description="fusion pre-training epochs (None = train.epochs)")


class _JointFusion(FusionCommon):
    strategy: Literal["joint"] = Field("joint", exclude=True, repr=False)


class StaticFusionConfig(_JointFusion):
    """Joint training (S0 C) with static weights: L = lambda_f L_fusion + lambda_s L_seg."""

    weighting: Literal["static"] = "static"
    lambda_f: float = Field(1e-5, ge=0)
    lambda_s: float = Field(1.0, ge=0)


class DynamicFusionConfig(_JointFusion):
    """Joint training (S0 C) with weights from the loss descent rates: ``dynamic`` (S0
    Eq. 6, T = 1) or ``dwa`` (MTAN's DWA: K = 2, T = 2); ``temperature`` None = the
    variant's T."""

    weighting: Literal["dynamic", "dwa"]
    temperature: float | None = Field(None, gt=0)


class SegOnlyFusionConfig(_JointFusion):
    """Joint training ablation: L = L_seg (the fusion network learns only from the
    segmentation gradients; no fusion loss, no VGG features)."""

    weighting: Literal["seg_only"]


def _own_keys(cls: type[BaseModel], base: type[BaseModel]) -> tuple[str, ...]:
    """The settings ``cls`` adds to ``base`` (its discriminator ``weighting`` aside)."""
    return tuple(k for k in cls.model_fields if k not in base.model_fields and k != "weighting")


#: Fusion settings every fusion strategy takes (the fields of :class:`FusionCommon`).
FUSION_COMMON_KEYS = tuple(k for k in FusionCommon.model_fields if k != "strategy")
#: Loss weightings of strategy joint, and the settings each takes.
WEIGHTING_KEYS: dict[str, tuple[str, ...]] = {
    "static": _own_keys(StaticFusionConfig, _JointFusion),
    "dynamic": _own_keys(DynamicFusionConfig, _JointFusion),
    "dwa": _own_keys(DynamicFusionConfig, _JointFusion),
    "seg_only": _own_keys(SegOnlyFusionConfig, _JointFusion),
}
_DECOUPLED_KEYS = _own_keys(DecoupledFusionConfig, FusionCommon)
#: Every fusion setting of any strategy.
FUSION_KEYS = tuple(
    dict.fromkeys(FUSION_COMMON_KEYS + _DECOUPLED_KEYS + ("weighting",) + sum(WEIGHTING_KEYS.values(), ()))
)


def fusion_keys(strategy: str, weighting: str = "static") -> tuple[str, ...]:
    """The fusion settings that apply under ``strategy`` (and, for joint, ``weighting``);
    empty for early (no fusion network)."""
    if strategy == "decoupled":
        return FUSION_COMMON_KEYS + _DECOUPLED_KEYS
    if strategy == "joint":
        return FUSION_COMMON_KEYS + ("weighting",) + WEIGHTING_KEYS.get(weighting, ())
    return ()


def _fusion_tag(value: Any) -> str | None:
    """The union member of a fusion section: its strategy, and under joint its weighting."""
    if isinstance(value, dict):
        strategy, weighting = value.get("strategy"), value.get("weighting", "static")
    else:
        strategy, weighting = getattr(value, "strategy", None), getattr(value, "weighting", None)
    if strategy == "decoupled":
        return "decoupled"
    if strategy == "joint" and isinstance(weighting, str):
        return weighting
    return None


#: The fusion section: a discriminated union on (strategy, weighting).
FusionConfig = Annotated[
    Annotated[DecoupledFusionConfig, Tag("decoupled")]
    | Annotated[StaticFusionConfig, Tag("static")]
    | Annotated[DynamicFusionConfig, Tag("dynamic")]
    | Annotated[DynamicFusionConfig, Tag("dwa")]
    | Annotated[SegOnlyFusionConfig, Tag("seg_only")],
    Discriminator(_fusion_tag),
]
_FUSION_TAGS = {"decoupled", *WEIGHTING_KEYS}


def _fusion_problems(raw: dict, strategy: str) -> list[str]:
    """Keys of a raw fusion section that are unknown or do not apply under ``strategy``
    (and its weighting): one sentence per reason, naming the keys and what applies."""
    weighting = raw.get("weighting", "static")
    problems = []
    if strategy == "joint" and weighting not in WEIGHTING_KEYS:
        problems.append(
            f"fusion.weighting: {weighting!r} is not a weighting; choose one of {', '.join(WEIGHTING_KEYS)}"
        )
        weighting = None
    takes = fusion_keys(strategy, weighting or "static")
    variant = f"strategy: {strategy}" + (f", weighting: {weighting}" if strategy == "joint" and weighting else "")
    reasons: dict[str, list[str]] = {}
    for key in raw:
        if key in takes or (weighting is None and key in FUSION_KEYS):
            continue
        if key == "strategy":
            reason = f": unknown key; the strategy is the top-level `strategy` (here {strategy})"
        elif key not in FUSION_KEYS:
            reason = f": unknown key; fusion under {variant} takes: {', '.join(takes)}"
        elif strategy == "decoupled":
            reason = (
                f" under strategy: decoupled (loss weighting is a joint setting; decoupled takes: {', '.join(takes)})"
            )
        elif key == "epochs":
            reason = (
                " under strategy: joint (only decoupled pre-trains the fusion network; joint "
                f"takes: {', '.join(takes)})"
            )
        else:
            own = WEIGHTING_KEYS[weighting]
            reason = (
                f" under fusion.weighting: {weighting} "
                f"({'it takes: ' + ', '.join(own) if own else 'it takes no weighting settings'})"
            )
        reasons.setdefault(reason, []).append(f"fusion.{key}")
    for reason, keys in reasons.items():
        if reason.startswith(":"):
            problems.append(f"{', '.join(keys)}{reason}")
        else:
            problems.append(f"{', '.join(keys)} {'does' if len(keys) == 1 else 'do'} not apply{reason}")
    return problems


def _check_fusion_section(value: Any, strategy: str) -> Any:
    """The raw fusion section with the experiment's strategy filled in (a default
    section when none is given), or None under early; ValueError naming each key that
    is unknown or does not apply."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if strategy in NO_FUSION_STRATEGIES:
        if value is None:
            return None
        unknown = [k for k in value if k not in FUSION_KEYS] if isinstance(value, dict) else []
        if unknown:
            raise ValueError(
                "; ".join(f"fusion.{k}: unknown key" for k in unknown)
                + f" (and no fusion section applies under strategy: {strategy})"
            )
        raise ValueError(
            f"fusion does not apply under strategy: {strategy} (a fusion section is for strategy "
            f"decoupled or joint; {strategy} has no image-fusion network)"
        )
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"fusion must be a mapping of settings, got {value!r}")  # noqa: TRY004
    problems = _fusion_problems(value, strategy)
    if problems:
        raise ValueError("\n".join(problems))  # validate_config lists each on its own line
    return {**value, "strategy": strategy}


class ExperimentConfig(_Strict):
    """One experiment: data -> preprocess -> sampling -> strategy (model + loss) ->
    training -> whole-case prediction -> evaluation -> report.

    ``strategy``: ``early`` (modalities as channels, METHODS.md §1), ``decoupled``
    (S0 B: fusion network trained first with L_fusion, frozen, then the segmentation
    network on [seg_inputs, F]) or ``joint`` (S0 C: lambda_f L_fusion + lambda_s L_seg,
    both networks together).

    ``fusion`` configures B and C and holds only the settings of the chosen strategy
    (:func:`fusion_keys`): none under early (``cfg.fusion`` is None), the common ones and
    ``epochs`` under decoupled, the common ones, ``weighting`` and that weighting's
    (static: lambda_f, lambda_s; dynamic / dwa: temperature; seg_only: none) under
    joint. A setting that does not apply is an error naming it; a missing section under
    decoupled / joint is the default one (joint: static, lambda_f 1e-5, lambda_s 1).
    """

    name: str
    strategy: Literal["early", "decoupled", "joint", "a2fseg", "threshold", "ssl"] = "early"
    spatial_dims: Literal[2, 3] = 2
    threshold: ThresholdConfig | None = None
    ssl: SSLConfig | None = None
    data: DataConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    fusion: FusionConfig | None = Field(None, validate_default=True)
    train: TrainConfig = Field(default_factory=TrainConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    missing: MissingConfig = Field(default_factory=MissingConfig)
    output_dir: Path = Path("runs")

    @field_validator("fusion", mode="before")
    @classmethod
    def _fusion_of_the_strategy(cls, value: Any, info: ValidationInfo) -> Any:
        """The fusion section's type follows ``strategy`` (validated before it)."""
        strategy = info.data.get("strategy")
        if strategy is None:  # the strategy itself is invalid (reported there)
            return None
        return _check_fusion_section(value, strategy)

    @model_validator(mode="after")
    def _names_in_registries(self) -> ExperimentConfig:
        """Every component name (and option name) is checked against its registry at
        load, so a typo fails before any work, listing the valid choices."""
        fusion_strategy = None if self.fusion is None else self.fusion.strategy
        if fusion_strategy != (None if self.strategy in NO_FUSION_STRATEGIES else self.strategy):
            raise ValueError(f"fusion: a section of strategy {fusion_strategy} under strategy: {self.strategy}")
        if self.strategy == "threshold" or self.threshold is not None:
            problems = self._rule_problems() + self._ssl_problems()
            if problems:
                raise ValueError("\n".join(problems))
            return self
        problems = self.sampling.check_dims(self.spatial_dims) + self.inference.check_dims(self.spatial_dims)
        if self.spatial_dims == 3 and self.strategy not in ("early", "a2fseg"):
            problems.append(
                f"strategy {self.strategy}: image-level fusion is 2-D; spatial_dims 3 takes strategy early or a2fseg"
            )
        problems += self._missing_problems() + self._ssl_problems() + self._output_problems() + self._context_problems()
        central = "central" in (self.sampling.mode, self.sampling.val_mode)
        if self.preprocess.target_spacing is not None and (self.evaluation.scope == "sampled_slices" or central):
            problems.append(
                "preprocess.target_spacing with central slices (sampling mode central or evaluation.scope: "
                "sampled_slices): slice numbers are those of the source grid; drop target_spacing or sample otherwise"
            )
        if problems:
            raise ValueError("\n".join(problems))
        check_component_names(self)
        return self

    def _missing_problems(self) -> list[str]:
        """What does not fit in ``missing`` and ``strategy: a2fseg``; resolves an unset
        ``missing.simulate``."""
        problems, m, branches = [], self.missing, self.strategy == "a2fseg"
        if branches != (self.model.name == "a2fseg"):
            problems.append(
                f"model {self.model.name} under strategy {self.strategy}: strategy a2fseg takes model a2fseg "
                "(one branch per modality) and model a2fseg needs strategy a2fseg (its deep-supervision loss)"
            )
        if m.simulate is None:
            m.simulate = "drop_branch" if branches else "zero"
        if m.simulate in ("drop_branch", "zero_features") and not branches:
            problems.append(
                f"missing.simulate: {m.simulate} needs a model with one branch per modality (strategy a2fseg); "
                f"strategy {self.strategy} takes zero or mean"
            )
        if m.mask_channels and (self.strategy != "early" or m.simulate not in ("zero", "mean")):
            problems.append("missing.mask_channels applies to strategy early (channel-stacking) only")
        return problems

    def _context_problems(self) -> list[str]:
        """2.5-D context stacks neighbouring slices of every modality as channels: for
        strategy early, with every modality present."""
        if not self.sampling.context:
            return []
        if self.strategy != "early":
            return [f"sampling.context (2.5-D) applies to strategy early only (this is strategy: {self.strategy})"]
        if self.missing != MissingConfig(simulate=self.missing.simulate) or self.evaluation.modality_subsets:
            return ["sampling.context (2.5-D) does not combine with missing-modality training or subset scoring"]
        return []

    def _output_problems(self) -> list[str]:
        """Region outputs and the region loss go together (either alone is an error)."""
        regions, region_loss = self.output.kind == "regions", self.loss.name == "region_dice_bce"
        if regions and not region_loss:
            return [f"output.kind: regions needs loss.name: region_dice_bce (sigmoid per region), got {self.loss.name}"]
        if region_loss and not regions:
            return ["loss.name: region_dice_bce needs output.kind: regions (one sigmoid channel per region)"]
        return []

    def _ssl_problems(self) -> list[str]:
        """What does not fit ``strategy: ssl``; gives it its default section when none
        is written (written into the saved config)."""
        if self.strategy != "ssl":
            if self.ssl is not None:
                return [f"ssl applies to strategy: ssl only (this is strategy: {self.strategy})"]
            return []
        if self.ssl is None:
            self.ssl = SSLConfig()
        modalities = None if self.data.modalities is None else list(self.data.modalities)
        return self.ssl.problems(modalities, self.model.name, self.spatial_dims)

    def _rule_problems(self) -> list[str]:
        """What does not fit ``strategy: threshold`` (a PET rule without a network)."""
        if self.strategy != "threshold":
            return [f"threshold applies to strategy: threshold only (this is strategy: {self.strategy})"]
        if self.threshold is None:
            return ["strategy: threshold needs a threshold section, e.g. {rule: suv, value: 2.5}"]
        problems = []
        if PET not in self.data.modalities:
            problems.append(f"strategy: threshold reads the PET (SUV) image: data.modalities {self.data.modalities}")
        defaults = ExperimentConfig.model_fields
        for key in RULE_FREE_SECTIONS:
            default = defaults[key].get_default(call_default_factory=True)
            if getattr(self, key) != default:
                problems.append(f"{key} does not apply under strategy: threshold (a rule: no network, no training)")
        if self.spatial_dims != 2:
            problems.append("spatial_dims does not apply under strategy: threshold (the rule reads the whole volume)")
        if self.missing != MissingConfig() or self.evaluation.modality_subsets:
            problems.append(
                "missing and evaluation.modality_subsets do not apply under strategy: threshold "
                "(a rule reads the SUV image only)"
            )
        if self.postprocess.method == "validation":
            problems.append("postprocess.method: validation needs a model; use none or fixed under strategy: threshold")
        return problems

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def check_component_names(cfg: ExperimentConfig) -> None:
    """Raise ValueError (naming the key and the valid choices) when ``model``,
    ``fusion.model`` (strategies with a fusion network) or ``loss`` name something that
    is not registered, or pass an option the component does not take
    (``evaluation.challenge`` is checked by :class:`EvalConfig` itself, which needs no
    torch import)."""
    from fusionseg.losses import check_seg_loss_options
    from fusionseg.models import check_model_options

    checks = [
        ("model", lambda: check_model_options(cfg.model.name, cfg.model.kwargs)),
        ("loss", lambda: check_seg_loss_options(cfg.loss.name, cfg.loss.kwargs)),
    ]
    if cfg.fusion is not None:
        checks.append(("fusion.model", lambda: check_model_options(cfg.fusion.model.name, cfg.fusion.model.kwargs)))
    for key, check in checks:
        try:
            check()
        except (KeyError, TypeError, ValueError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            raise ValueError(f"{key}: {message}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML.

    Relative paths inside the file (data.root, output_dir, ...) are taken relative
    to the current directory. ``overrides`` are ``dotted.key=value`` strings whose
    values are parsed as YAML (e.g. ``train.epochs=3``).

    Raises:
        ConfigError: unreadable file or invalid values (every problem listed).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections.")
    raw.setdefault("name", path.stem)
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


def apply_override(raw: dict, item: str) -> None:
    """Set ``dotted.key=value`` in a raw config mapping (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def validate_config(raw: dict, source: str = "config") -> ExperimentConfig:
    """Validate a raw config mapping (as read from YAML).

    Raises:
        ConfigError: every problem, one line each, naming its dotted key.
    """
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: invalid configuration:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in _without_union_tags(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "literal_error":
                msg += f" (got {err['input']!r})"
            for part in msg.split("\n"):  # a validator's message may hold several problems
                same = where and (part == where or part.startswith((where + ".", where + " ", where + ":")))
                lines.append(f"  - {where}: {part}" if where and not same else f"  - {part}")
        raise ConfigError("\n".join(lines)) from exc


#: Tags of the discriminated unions, by the key that holds the union; they are the
#: union member's name, not a key the user wrote, so error locations leave them out.
_UNION_TAGS = {"fusion": _FUSION_TAGS, "challenge": {"preset", "settings"}}


def _without_union_tags(loc: tuple) -> list:
    return [
        p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], str) and p in _UNION_TAGS.get(loc[i - 1], ()))
    ]


def drop_inapplicable(raw: dict, written: dict | None = None) -> dict:
    """A copy of the raw config mapping ``raw`` without the fusion settings that do not
    apply to its strategy (and weighting): the whole ``fusion`` section under early,
    ``epochs`` under joint, the weighting keys under decoupled and those of the other
    weightings under joint; under ``threshold`` (a rule) the network, training and
    inference sections, ``spatial_dims`` and a post-processing chosen on validation
    predictions (``method: validation``), and the ``threshold`` section elsewhere, the
    ``ssl`` section under any strategy but ssl.
    Settings in ``written`` (the part of ``raw`` its author wrote for this config) are
    kept, so validation reports them; unknown keys are kept (typos stay errors).

    Used for settings shared by several configs (a study's base, protocol and
    ``--set``, each applying to the runs it fits; the run entry is ``written``) and for
    saved run configs (:func:`validate_saved_config`), never for a user's own config.
    """
    out = dict(raw)
    fusion = raw.get("fusion")
    strategy = raw.get("strategy", "early")
    if strategy == "threshold":  # a rule: the network, training and fusion settings do not apply
        for key in (*RULE_FREE_SECTIONS, "spatial_dims", "fusion", "missing"):
            if key not in (written or {}):
                out.pop(key, None)
        post = out.get("postprocess")
        if isinstance(post, dict) and post.get("method") == "validation" and "postprocess" not in (written or {}):
            out.pop("postprocess")  # chosen on validation predictions of a model: a rule has none
        return out
    if strategy != "threshold" and "threshold" in out and "threshold" not in (written or {}):
        del out["threshold"]
    if strategy != "ssl" and "ssl" in out and "ssl" not in (written or {}):
        del out["ssl"]  # a pretext section shared by a study's rows applies to its ssl rows only
    if isinstance(fusion, dict) and strategy == "a2fseg" and "fusion" not in (written or {}):
        del out["fusion"]  # feature-level fusion: no image-fusion network
        return out
    if not isinstance(fusion, dict) or strategy not in ("early", "decoupled", "joint"):
        return out
    weighting = fusion.get("weighting", "static")
    if strategy == "joint" and weighting not in WEIGHTING_KEYS:
        return out  # the weighting itself is invalid: validation reports it
    mine = (written or {}).get("fusion")
    if strategy == "early" and mine is not None:
        return out
    mine = mine if isinstance(mine, dict) else {}
    takes = fusion_keys(strategy, weighting)
    kept = {k: v for k, v in fusion.items() if k in takes or k in mine or k not in FUSION_KEYS}
    if strategy == "early" and not kept:
        del out["fusion"]
    else:
        out["fusion"] = kept
    return out


def validate_saved_config(raw: dict, source: str = "saved config") -> ExperimentConfig:
    """Validate a resolved config saved with a run (``config.yaml``, a checkpoint's
    metadata). Earlier versions saved every fusion setting under every strategy (a full
    ``fusion`` section even for early, ``epochs`` for joint, the weighting keys for
    decoupled); those that do not apply are dropped first (:func:`drop_inapplicable`).

    Raises:
        ConfigError: as :func:`validate_config`.
    """
    return validate_config(drop_inapplicable(raw), source=source)


def load_saved_config(path: str | Path) -> ExperimentConfig:
    """Read a run folder's ``config.yaml`` (also one written by an earlier version; see
    :func:`validate_saved_config`).

    Raises:
        ConfigError: unreadable file or invalid values.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}).") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections.")
    return validate_saved_config(raw, source=str(path))


DEFAULT_MRI_MODALITIES = list(MRI_MODALITIES)
