"""One experiment (:class:`ExperimentConfig`): every section, and the checks that
span sections (what applies under which strategy and spatial_dims)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator

from fusionseg.config.evaluation import EvalConfig, InferenceConfig, PostprocessConfig
from fusionseg.config.fusion import FusionConfig, _check_fusion_section
from fusionseg.config.sections import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OutputConfig,
    PreprocessConfig,
    SamplingConfig,
    SplitConfig,
    TrainConfig,
    _Strict,
)
from fusionseg.config.strategies import (
    NO_FUSION_STRATEGIES,
    RULE_FREE_SECTIONS,
    MissingConfig,
    SSLConfig,
    ThresholdConfig,
)
from fusionseg.constants import PET


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
