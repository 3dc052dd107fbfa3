"""U-Net with a ResNet-50 encoder (``"resnet50_unet"``): the network of S2's cross-modal
self-supervised pretraining (METHODS.md section 5).

The network is ``segmentation_models_pytorch.Unet("resnet50", ...)`` (smp): a
torchvision ResNet-50 trunk as encoder (stem conv 7x7 stride 2, max-pool, four
bottleneck stages of 3, 4, 6, 3 blocks), smp's U-Net decoder (nearest upsampling,
concatenated skips, two conv-BN-ReLU per block) and a 3x3 convolution head without
activation (logits; the pretext task's FLAIR regression uses the same head with one
output channel). The module keeps smp's three children under their smp names, so the
state-dict keys are smp's own: ``encoder.*`` (torchvision ResNet names, e.g.
``encoder.conv1.weight``, ``encoder.layer1.0.conv1.weight``), ``decoder.*`` and
``segmentation_head.*``. :func:`fusionseg.models.transfer.transfer_pretext_weights`
relies on these names.

Weights are never downloaded: ``encoder_weights`` is None (random init) or the path of
a local file holding a ResNet-50 state dict (torchvision or timm key layout).

smp is imported when a model is built, not when :mod:`fusionseg.models` is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from fusionseg.errors import ConfigError

from .registry import register_model
from .unet import check_segmentation_input

__all__ = ["ResNet50UNet", "load_resnet50_encoder_state", "patch_rgb_stem"]

_NAME = "resnet50_unet"
#: Bottleneck blocks per stage of a ResNet-50 (``layer1`` .. ``layer4``).
RESNET50_BLOCKS = (3, 4, 6, 3)
#: smp / torchvision weight names that are not files; fusionseg refuses them.
_HUB_WEIGHT_NAMES = ("imagenet", "ssl", "swsl", "instagram", "advprop", "noisy-student")


def patch_rgb_stem(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a pretrained stem kernel ``(O, 3, kh, kw)`` (RGB) to ``in_channels`` inputs.

    The rule of smp's ``patch_first_conv`` for pretrained encoders:

    - ``in_channels == 1``: the sum of the three RGB kernels (a grey image fed to an RGB
      network gives the same response);
    - otherwise: input channel ``i`` gets the RGB kernel ``i mod 3``, and the whole
      kernel is multiplied by ``3 / in_channels`` so that inputs of the same scale give
      pre-activations of the ImageNet network's scale.

    ``in_channels == 3`` returns ``weight`` unchanged.

    Returns:
        A new tensor ``(O, in_channels, kh, kw)`` of ``weight``'s dtype.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"patch_rgb_stem: expected an RGB stem kernel (O, 3, kh, kw), got {tuple(weight.shape)}.")
    if in_channels < 1:
        raise ValueError(f"patch_rgb_stem: in_channels must be >= 1, got {in_channels}.")
    if in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % 3
    return weight.index_select(1, index) * (3.0 / in_channels)


def _read_file(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a config problem
        raise ConfigError(
            f"{path}: cannot read encoder weights with torch.load ({type(err).__name__}: {err}). "
            "Fix: save a ResNet-50 state dict with torch.save(torchvision.models.resnet50(...).state_dict(), path)."
        ) from None


def load_resnet50_encoder_state(path: str | os.PathLike, in_channels: int) -> dict[str, Tensor]:
    """Read a local ResNet-50 state dict and return it in smp encoder names for
    ``in_channels`` inputs.

    Accepted layouts: torchvision's / timm's ``resnet50`` state dict (``conv1.weight``,
    ``bn1.*``, ``layer1.0.conv1.weight``, ..., ``fc.*``), optionally under a
    ``"state_dict"`` or ``"model"`` key, optionally with one common key prefix (e.g.
    ``module.`` or smp's ``encoder.``; found from the stem key). ``fc.*`` (the ImageNet
    classifier) is dropped. A 3-channel stem is adapted to ``in_channels`` with
    :func:`patch_rgb_stem`; a stem that already has ``in_channels`` inputs is kept.

    Raises:
        ConfigError: the file is missing, unreadable, or holds no ResNet-50 state dict
            (the message names the file and what is wrong).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: encoder weights file not found. Fix: pass the path of a local ResNet-50 state dict "
            "(torch.save of a torchvision/timm resnet50 state_dict()), or encoder_weights: null for random init."
        )
    raw = _read_file(path)
    if isinstance(raw, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{path}: expected a ResNet-50 state dict (a dict of tensors), got {type(raw).__name__}.")
    keys = [k for k in raw if isinstance(k, str)]
    prefixes = sorted(
        {k[: -len("conv1.weight")] for k in keys if k.endswith("conv1.weight")}
        & {k[: -len("layer1.0.conv1.weight")] for k in keys if k.endswith("layer1.0.conv1.weight")}
    )
    if len(prefixes) != 1:
        raise ConfigError(
            f"{path}: no ResNet-50 stem found (expected keys 'conv1.weight' and 'layer1.0.conv1.weight', "
            f"optionally under one prefix; found prefixes {prefixes or 'none'}). Keys start: {keys[:5]}."
        )
    prefix = prefixes[0]
    state = {k[len(prefix) :]: v for k, v in raw.items() if isinstance(k, str) and k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConfigError(f"{path}: entries that are not tensors: {bad[:5]}.")
    stem = state["conv1.weight"]
    if stem.ndim != 4 or stem.shape[0] != 64 or tuple(stem.shape[2:]) != (7, 7):
        raise ConfigError(f"{path}: stem conv1.weight has shape {tuple(stem.shape)}; a ResNet-50 has (64, 3, 7, 7).")
    if stem.shape[1] != in_channels:
        if stem.shape[1] != 3:
            raise ConfigError(
                f"{path}: stem conv1.weight has {stem.shape[1]} input channels; expected 3 (RGB, adapted to "
                f"{in_channels}) or {in_channels}."
            )
        state["conv1.weight"] = patch_rgb_stem(stem, in_channels)
    return state


@register_model(_NAME)
class ResNet50UNet(nn.Module):
    """smp U-Net with a ResNet-50 encoder, with fusionseg's input checks (2-D only).

    Args:
        in_channels: C, input channels (stacked modalities; the pretext task: 2).
        num_classes: K, output channels (class logits; the pretext task: 1, FLAIR).
        spatial_dims: must be 2 (ResNet-50 is a 2-D network); 3 raises.
        decoder_channels: widths of the decoder blocks, one per encoder stage
            (``len(decoder_channels) == encoder_depth``).
        encoder_depth: number of encoder stages used, 1..5; the input is downsampled
            ``2**encoder_depth`` times.
        encoder_weights: None (random init: torchvision's ResNet init) or the path of a
            local ResNet-50 state dict file, loaded into the encoder
            (:func:`load_resnet50_encoder_state`; with ``in_channels != 3`` the RGB stem
            is adapted by :func:`patch_rgb_stem`, smp's rule). Names such as
            ``"imagenet"`` are refused: fusionseg never downloads weights.

    Attributes:
        in_channels, num_classes, spatial_dims: registry convention.
        required_divisor: ``2**encoder_depth`` (32 by default); H and W must be multiples.
        encoder_weights: the weights file loaded (str) or None.
        encoder, decoder, segmentation_head: smp's modules (state-dict keys
            ``encoder.*``, ``decoder.*``, ``segmentation_head.*``).

    Shapes:
        input ``(B, C, H, W)`` float -> output ``(B, K, H, W)`` logits of the input's dtype.

    Raises:
        ValueError: invalid arguments (spatial_dims != 2, bad depth or widths); in
            ``forward`` a wrong input shape (see :func:`check_segmentation_input`).
        ConfigError: ``encoder_weights`` is a hub name or a file that does not hold a
            usable ResNet-50 state dict.
        ImportError: segmentation_models_pytorch is not installed.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
    ):
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(
                f"{_NAME}: only 2-D input is supported (spatial_dims=2; ResNet-50 is a 2-D network), "
                f"got spatial_dims={spatial_dims!r}. Use slices, or a 3-D model such as 'monai_unet'."
            )
        if int(in_channels) < 1 or int(num_classes) < 1:
            raise ValueError(f"{_NAME}: in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}.")
        encoder_depth = int(encoder_depth)
        if not 1 <= encoder_depth <= 5:
            raise ValueError(f"{_NAME}: encoder_depth must be in 1..5, got {encoder_depth}.")
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != encoder_depth or min(decoder_channels) < 1:
            raise ValueError(
                f"{_NAME}: decoder_channels must give {encoder_depth} positive widths (one per encoder stage, "
                f"encoder_depth={encoder_depth}), got {decoder_channels}; e.g. (256, 128, 64, 32, 16) for depth 5."
            )
        weights_path = _weights_path(encoder_weights)
        state = load_resnet50_encoder_state(weights_path, int(in_channels)) if weights_path is not None else None

        try:
            import segmentation_models_pytorch as smp
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{_NAME} needs segmentation_models_pytorch (pip install segmentation-models-pytorch): {err}"
            ) from err

        unet = smp.Unet(
            encoder_name="resnet50",
            encoder_depth=encoder_depth,
            encoder_weights=None,  # never let smp download; a local file is loaded below
            decoder_channels=decoder_channels,
            in_channels=int(in_channels),
            classes=int(num_classes),
            activation=None,
        )
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.segmentation_head = unet.segmentation_head

        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.spatial_dims = 2
        self.encoder_depth = encoder_depth
        self.decoder_channels = decoder_channels
        self.required_divisor = 2**encoder_depth
        self.encoder_weights = str(weights_path) if weights_path is not None else None
        if state is not None:
            try:
                nn.Module.load_state_dict(self.encoder, state, strict=True)
            except RuntimeError as err:
                raise ConfigError(f"{weights_path}: the tensors do not fit smp's ResNet-50 encoder ({err}).") from None

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, K, H, W)`` logits; see the class docstring."""
        check_segmentation_input(
            x, in_channels=self.in_channels, spatial_dims=2, divisor=self.required_divisor, model=_NAME
        )
        return self.segmentation_head(self.decoder(self.encoder(x)))


def _weights_path(encoder_weights: str | os.PathLike | None) -> Path | None:
    """None, or the local file named by ``encoder_weights``; hub names raise."""
    if encoder_weights is None:
        return None
    if not isinstance(encoder_weights, (str, os.PathLike)) or not str(encoder_weights):
        raise ConfigError(f"{_NAME}: encoder_weights must be null or a file path, got {encoder_weights!r}.")
    path = Path(encoder_weights).expanduser()
    if path.is_file():
        return path
    text = str(encoder_weights)
    if text.lower() in _HUB_WEIGHT_NAMES or (os.sep not in text and "/" not in text and not path.suffix):
        raise ConfigError(
            f"{_NAME}: encoder_weights={text!r} names downloadable weights, but fusionseg never downloads weights. "
            "Fix: pass the path of a local file holding a ResNet-50 state dict (e.g. torch.save of "
            "torchvision.models.resnet50(weights=...).state_dict(), or of a timm resnet50), or null for random init."
        )
    return path  # a path that does not exist: load_resnet50_encoder_state says so
