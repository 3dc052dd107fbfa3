"""The sections that say how a trained model is scored and applied: lesion-wise
challenge parameters, evaluation, post-processing and whole-volume inference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_serializer, model_validator

from fusionseg.config.sections import _Strict

if TYPE_CHECKING:
    from fusionseg.evaluation.metrics.lesionwise import LesionWiseParams


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
