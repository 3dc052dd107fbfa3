"""The image-level fusion section (S0 B and C): one type per strategy and loss
weighting, a discriminated union, and which settings apply where."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator

from fusionseg.config.sections import ModelConfig, _Strict
from fusionseg.config.strategies import NO_FUSION_STRATEGIES
from fusionseg.constants import canonical_modality


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
