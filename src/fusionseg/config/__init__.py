"""Typed experiment configuration (pydantic) <-> YAML.

A config file describes one experiment: which data, how it is preprocessed and
sampled, which model, loss and training schedule, how cases are split and how results
are evaluated. The resolved config (defaults filled in) is saved with every run.
Unknown keys are errors, so a typo never silently falls back to a default.

One module per group of sections: :mod:`~fusionseg.config.sections` (data,
preprocess, sampling, model, loss, output, train, split),
:mod:`~fusionseg.config.evaluation` (evaluation, post-processing, inference),
:mod:`~fusionseg.config.strategies` (missing, ssl, threshold),
:mod:`~fusionseg.config.fusion` (the fusion section of strategies decoupled and
joint), :mod:`~fusionseg.config.experiment` (:class:`ExperimentConfig` and the checks
across sections) and :mod:`~fusionseg.config.loading` (YAML, ``--set`` overrides,
saved run configs). Import from ``fusionseg.config``.
"""

from fusionseg.config.evaluation import ChallengeConfig, EvalConfig, InferenceConfig, PostprocessConfig
from fusionseg.config.experiment import ExperimentConfig, check_component_names
from fusionseg.config.fusion import (
    FUSION_COMMON_KEYS,
    FUSION_KEYS,
    WEIGHTING_KEYS,
    DecoupledFusionConfig,
    DynamicFusionConfig,
    FusionCommon,
    FusionConfig,
    SegOnlyFusionConfig,
    StaticFusionConfig,
    fusion_keys,
)
from fusionseg.config.loading import (
    apply_override,
    drop_inapplicable,
    load_config,
    load_saved_config,
    validate_config,
    validate_saved_config,
)
from fusionseg.config.sections import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OutputConfig,
    PreprocessConfig,
    SamplingConfig,
    SplitConfig,
    TrainConfig,
)
from fusionseg.config.strategies import (
    NO_FUSION_STRATEGIES,
    RULE_FREE_SECTIONS,
    MissingConfig,
    SSLConfig,
    ThresholdConfig,
)

__all__ = [
    "FUSION_COMMON_KEYS",
    "FUSION_KEYS",
    "NO_FUSION_STRATEGIES",
    "RULE_FREE_SECTIONS",
    "WEIGHTING_KEYS",
    "ChallengeConfig",
    "DataConfig",
    "DecoupledFusionConfig",
    "DynamicFusionConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FusionCommon",
    "FusionConfig",
    "InferenceConfig",
    "LossConfig",
    "MissingConfig",
    "ModelConfig",
    "OutputConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "SSLConfig",
    "SamplingConfig",
    "SegOnlyFusionConfig",
    "SplitConfig",
    "StaticFusionConfig",
    "ThresholdConfig",
    "TrainConfig",
    "apply_override",
    "check_component_names",
    "drop_inapplicable",
    "fusion_keys",
    "load_config",
    "load_saved_config",
    "validate_config",
    "validate_saved_config",
]
