"""Build a strategy from an experiment config (one builder per strategy name)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fusionseg.config import (
    DynamicFusionConfig,
    ExperimentConfig,
    FusionCommon,
    StaticFusionConfig,
)
from fusionseg.constants import LabelScheme
from fusionseg.errors import ConfigError
from fusionseg.losses import check_seg_loss_options
from fusionseg.losses.fusion import LRRNetFusionLoss, vgg16_features
from fusionseg.losses.weighting import DynamicWeighting, StaticWeighting
from fusionseg.models import build_model
from fusionseg.models.fusion_seg import FusionSegNet
from fusionseg.outputs import OutputHead, output_head
from fusionseg.strategies.a2fseg import A2FSegStrategy
from fusionseg.strategies.base import Strategy
from fusionseg.strategies.decoupled import DecoupledFusion
from fusionseg.strategies.early import EarlyFusion
from fusionseg.strategies.joint import JointFusion
from fusionseg.strategies.ssl import CrossModalSSL


def head_of(cfg: ExperimentConfig, scheme: LabelScheme) -> OutputHead:
    """The output head of ``cfg.output`` for ``scheme`` (:mod:`fusionseg.outputs`)."""
    return output_head(cfg.output.kind, scheme, cfg.output.regions, cfg.output.threshold)


def _seg_loss(cfg: ExperimentConfig, scheme: LabelScheme, with_losses: bool):
    """The segmentation loss of ``cfg.loss`` (None when not ``with_losses``); a region
    loss gets its regions' classes from the output head."""
    if not with_losses:
        return None
    head = head_of(cfg, scheme)
    extra = {"members": head.members} if head.kind == "regions" else {}
    loss_class = check_seg_loss_options(cfg.loss.name, cfg.loss.kwargs)
    return loss_class(num_classes=scheme.num_classes, **cfg.loss.kwargs, **extra)


def _seg_net(cfg: ExperimentConfig, in_channels: int, scheme: LabelScheme):
    """The segmentation network of ``cfg.model``: one output channel per class, or per
    region under ``output.kind: regions``."""
    outputs = head_of(cfg, scheme).channels(scheme.num_classes)
    return build_model(
        cfg.model.name, in_channels=in_channels, num_classes=outputs, spatial_dims=cfg.spatial_dims, **cfg.model.kwargs
    )


def _segmentation(cfg: ExperimentConfig, in_channels: int, scheme: LabelScheme, with_losses: bool):
    """(segmentation network of ``cfg.model``, its loss or None)."""
    return _seg_net(cfg, in_channels, scheme), _seg_loss(cfg, scheme, with_losses)


def _early(cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme, with_losses: bool) -> Strategy:
    # with mask channels the network also sees one 0/1 map per modality
    channels = len(modalities) * (2 if cfg.missing.mask_channels else 1)
    channels *= 2 * cfg.sampling.context + 1  # 2.5-D: 2k + 1 slices per modality
    model, loss = _segmentation(cfg, channels, scheme, with_losses)
    return EarlyFusion(model, modalities, loss)


def _a2fseg(cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme, with_losses: bool) -> Strategy:
    model, loss = _segmentation(cfg, len(modalities), scheme, with_losses)
    return A2FSegStrategy(model, modalities, loss)


def _ssl(cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme, with_losses: bool) -> Strategy:
    s = cfg.ssl
    if s is None:  # the config gives strategy ssl its default section
        raise ConfigError("strategy ssl needs an ssl section")
    seg_net, loss = _segmentation(cfg, len(modalities), scheme, with_losses)
    pretext_net = build_model(
        cfg.model.name, in_channels=len(s.inputs), num_classes=1, spatial_dims=cfg.spatial_dims, **cfg.model.kwargs
    )
    return CrossModalSSL(
        pretext_net,
        seg_net,
        modalities,
        s.inputs,
        s.target,
        mask=s.mask,
        seg_loss=loss,
        pretext_lr=s.lr,
        pretext_epochs=s.epochs,
        other_channels=s.other_channels,
        transfer_decoder=s.transfer_decoder,
        pretext_data="pretext" if s.pretext_cases == "train+unlabelled" else "train",
    )


def _fusion_section(cfg: ExperimentConfig) -> FusionCommon:
    if cfg.fusion is None:  # only under early, which builds no fusion network
        raise ConfigError(f"strategy {cfg.strategy} needs a fusion section")
    return cfg.fusion


def _fusion_net(cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme) -> FusionSegNet:
    f = _fusion_section(cfg)
    seg_inputs = f.seg_inputs or [f.detail, f.salient]
    fusion_net = build_model(f.model.name, in_channels=2, num_classes=1, spatial_dims=2, **f.model.kwargs)
    seg_net = _seg_net(cfg, len(seg_inputs) + 1, scheme)
    return FusionSegNet(fusion_net, seg_net, modalities, f.detail, f.salient, seg_inputs)


def _fusion_loss(cfg: ExperimentConfig) -> LRRNetFusionLoss:
    f = _fusion_section(cfg)
    return LRRNetFusionLoss(vgg16_features(f.perceptual_features), w_s=f.w_s, w_d=f.w_d, gammas=f.gammas)


def _decoupled(cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme, with_losses: bool) -> Strategy:
    f = _fusion_section(cfg)
    seg_loss = _seg_loss(cfg, scheme, with_losses)
    return DecoupledFusion(
        _fusion_net(cfg, modalities, scheme),
        modalities,
        _fusion_loss(cfg) if with_losses else None,
        seg_loss,
        fusion_lr=f.lr,
        fusion_epochs=f.epochs,
    )


def _joint(cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme, with_losses: bool) -> Strategy:
    f = _fusion_section(cfg)
    if isinstance(f, StaticFusionConfig):
        weighting = StaticWeighting(f.lambda_f, f.lambda_s)
    elif isinstance(f, DynamicFusionConfig):
        weighting = DynamicWeighting(f.temperature, variant="s0" if f.weighting == "dynamic" else "dwa")
    else:  # seg_only ablation: L = L_seg, no fusion loss (and no VGG) at all
        weighting = None
    seg_loss = _seg_loss(cfg, scheme, with_losses)
    fusion_loss = _fusion_loss(cfg) if with_losses and weighting is not None else None
    return JointFusion(_fusion_net(cfg, modalities, scheme), modalities, weighting, fusion_loss, seg_loss, lr=f.lr)


def describe_strategy(cfg: ExperimentConfig) -> dict:
    """What a result depends on beyond the model: for fusion strategies the fusion
    network, source mapping, loss weighting and the VGG-16 features used."""
    f = cfg.fusion
    if cfg.ssl is not None:
        return {"pretext": cfg.ssl.model_dump(mode="json")}
    if f is None:  # early
        return {}
    out = {
        "fusion_model": f.model.name,
        "detail_source": f.detail,
        "salient_source": f.salient,
        "seg_inputs": f.seg_inputs or [f.detail, f.salient],
    }
    weighting = getattr(f, "weighting", None)  # joint only
    if weighting is not None:
        static = isinstance(f, StaticFusionConfig)
        out.update(
            weighting=weighting, lambda_f=f.lambda_f if static else None, lambda_s=f.lambda_s if static else None
        )
    if weighting != "seg_only":
        out["perceptual_features"] = f.perceptual_features
    return out


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "early": _early,
    "decoupled": _decoupled,
    "joint": _joint,
    "a2fseg": _a2fseg,
    "ssl": _ssl,
}


def build_strategy(
    cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme, with_losses: bool = True
) -> Strategy:
    """The strategy ``cfg.strategy`` with its networks (and losses unless
    ``with_losses`` is False, as for prediction).

    Raises:
        ConfigError: unknown strategy name.
    """
    try:
        builder = STRATEGIES[cfg.strategy]
    except KeyError:
        raise ConfigError(f"unknown strategy {cfg.strategy!r}; choose one of {sorted(STRATEGIES)}") from None
    m = cfg.missing
    strategy = builder(cfg, modalities, scheme, with_losses)
    strategy.head = head_of(cfg, scheme)
    return strategy.configure_missing(m.simulate or "zero", m.dropout, m.mask_channels, cfg.train.seed)
