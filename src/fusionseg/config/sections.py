"""The sections of an experiment that say what is trained on what: data, preprocessing,
sampling, model, loss, network outputs, optimisation schedule and case split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

from fusionseg.constants import canonical_modality


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
