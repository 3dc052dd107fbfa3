"""LRRNet fusion loss (S0 Eq. 1; METHODS.md section 2) and its VGG-16 feature extractor.

* :func:`vgg16_features` builds a frozen VGG-16 trunk returning relu1_2, relu2_2,
  relu3_3 and relu4_3, from ImageNet weights already in the torch hub cache, from a
  local state-dict file, or from a seeded random initialisation; it never downloads
  and records which source it used (``.source_description``) so results can say so.
* :class:`LRRNetFusionLoss` is Eq. 1 of S0 (the loss of LRRNet's reference code,
  hli1221/imagefusion-LRRNet):

  ``L_fusion = 10 L_pixel + 1.5 L_shallow + L_middle + 2000 L_deep``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.errors import ConfigError
from fusionseg.models.lrrnet import minmax_normalize

__all__ = [
    "VGG16Features",
    "VGGWeightsNotFoundError",
    "vgg16_features",
    "imagenet_vgg16_cache_path",
    "gram_matrix",
    "LRRNetFusionLoss",
    "VGG16_FEATURE_LAYERS",
]

#: torchvision ``vgg16().features`` indices of the ReLU outputs used as phi1..phi4.
VGG16_FEATURE_LAYERS: dict[str, int] = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}

#: VGG-16 configuration "D" up to conv4_3 (torchvision's layout: conv widths, "M" = max-pool).
_VGG16_CFG_TO_RELU4_3 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)

#: Seed of the ``source="random"`` initialisation (fixed so runs are comparable).
RANDOM_VGG_SEED = 0


class VGGWeightsNotFoundError(ConfigError, FileNotFoundError):
    """The requested VGG-16 weights are not on disk (fusionseg never downloads them)."""


def imagenet_vgg16_cache_path() -> Path:
    """Where torchvision's ``VGG16_Weights.IMAGENET1K_V1`` file sits in the torch hub cache.

    ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`` (the file name is the last
    part of the weights' download URL, as torchvision stores it; ``$TORCH_HOME`` or
    ``torch.hub.set_dir`` move the hub directory).
    """
    from torchvision.models import VGG16_Weights

    filename = os.path.basename(urlparse(VGG16_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _make_trunk() -> nn.Sequential:
    """VGG-16 ``features[:23]`` (conv1_1 .. relu4_3) with torchvision's layer indices."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16_CFG_TO_RELU4_3:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = int(v)
    assert len(layers) == VGG16_FEATURE_LAYERS["relu4_3"] + 1
    return nn.Sequential(*layers)


class VGG16Features(nn.Module):
    """Frozen VGG-16 trunk: ``(B, 3 or 1, H, W) -> (relu1_2, relu2_2, relu3_3, relu4_3)``.

    The layers are torchvision's ``vgg16().features[:23]`` (same indices, so its state
    dict keys ``"0.weight"`` ... ``"21.bias"`` load unchanged). A single-channel input
    is repeated to 3 channels. No input normalisation is applied here (the LRRNet loss
    feeds [0, 255] images without ImageNet mean/std, as the reference code does).
    Parameters never require gradients and the module stays in eval mode.

    Outputs for ``(B, 3, H, W)``: ``(B, 64, H, W)``, ``(B, 128, H/2, W/2)``,
    ``(B, 256, H/4, W/4)``, ``(B, 512, H/8, W/8)`` (floor division by the max-pools).

    Attributes:
        source: ``"imagenet"``, ``"file"`` or ``"random"``.
        source_description: human-readable provenance, e.g. ``"imagenet
            (torchvision VGG16_Weights.IMAGENET1K_V1, /root/.cache/torch/hub/checkpoints/vgg16-397923af.pth)"``;
            report it with every result.
    """

    def __init__(self, source: str, source_description: str):
        super().__init__()
        self.features = _make_trunk()
        self.source = source
        self.source_description = source_description
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:
        """Always eval mode (frozen feature extractor); ``mode`` is ignored."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGG16Features: expected (B, 1 or 3, H, W), got {tuple(x.shape)}.")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> 3 identical channels
        taps = set(VGG16_FEATURE_LAYERS.values())
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                outs.append(x)
        return tuple(outs)  # type: ignore[return-value]


def _load_trunk_state(module: VGG16Features, state: object, origin: str) -> None:
    """Load a torchvision vgg16 state dict (full model or ``features`` only) into ``module``."""
    if not isinstance(state, dict) or not state:
        raise ConfigError(
            f"{origin}: expected a state dict of torchvision's vgg16 (a dict of tensors), got {type(state).__name__}. "
            "Save one with torch.save(torchvision.models.vgg16(...).state_dict(), path)."
        )
    keys = [k for k in state if isinstance(k, str)]
    prefix = "features." if any(k.startswith("features.") for k in keys) else ""
    wanted = module.features.state_dict().keys()
    picked = {}
    for k in wanted:
        full = prefix + k
        if full not in state:
            raise ConfigError(
                f"{origin}: missing key {full!r}; expected torchvision vgg16 keys ('features.0.weight', ... for a "
                "full model, or '0.weight', ... for model.features). Other VGG layouts are not supported."
            )
        picked[k] = state[full]
    try:
        module.features.load_state_dict(picked, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{origin}: the tensors do not fit VGG-16 ({err}).") from None


def _read_state(path: Path) -> object:
    """``torch.load`` a weights file on the CPU (tensors only: ``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a config problem
        raise ConfigError(f"{path}: cannot read a state dict with torch.load ({err}).") from None


def vgg16_features(source: str | os.PathLike = "imagenet") -> VGG16Features:
    """Frozen VGG-16 feature extractor for the perceptual terms of the LRRNet loss.

    Args:
        source: where the weights come from:

            - ``"imagenet"``: torchvision's ``VGG16_Weights.IMAGENET1K_V1``, only if the
              file is already in the torch hub cache (:func:`imagenet_vgg16_cache_path`);
              nothing is ever downloaded.
            - a path to a file saved with ``torch.save`` holding a torchvision vgg16
              state dict, of the full model (``features.N.*`` keys; the classifier is
              ignored) or of ``model.features`` (``N.*`` keys).
            - ``"random"``: deterministic random weights (seed :data:`RANDOM_VGG_SEED`,
              torchvision's VGG init: Kaiming normal, fan_out, ReLU; zero biases). The
              perceptual terms then measure random-feature similarity, not ImageNet
              features: report it (METHODS.md section 2).

    Returns:
        A :class:`VGG16Features` with ``.source`` and ``.source_description`` set.

    Raises:
        VGGWeightsNotFoundError: (a ``FileNotFoundError`` and ``ConfigError``)
            ``"imagenet"`` requested but the file is not in the cache, or ``source``
            names no existing file; the message says where the file is expected and
            the alternatives.
        ConfigError: the file does not hold a usable vgg16 state dict.
    """
    if isinstance(source, str) and source == "random":
        module = VGG16Features("random", f"random (seeded init, seed {RANDOM_VGG_SEED}; not ImageNet features)")
        gen = torch.Generator().manual_seed(RANDOM_VGG_SEED)
        for layer in module.features:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                nn.init.zeros_(layer.bias)
        return module

    if isinstance(source, str) and source == "imagenet":
        path = imagenet_vgg16_cache_path()
        if not path.is_file():
            raise VGGWeightsNotFoundError(
                f"VGG-16 ImageNet weights (torchvision VGG16_Weights.IMAGENET1K_V1) not found at {path} "
                "(torch.hub cache; fusionseg never downloads). Fix: copy the file there (set $TORCH_HOME to "
                "move the cache), or pass a local weights file (a torchvision vgg16 state dict) as the "
                "perceptual features source, or set `perceptual_features: random` in the config to use "
                "seeded random VGG features (reported with the results)."
            )
        module = VGG16Features("imagenet", f"imagenet (torchvision VGG16_Weights.IMAGENET1K_V1, {path})")
        _load_trunk_state(module, _read_state(path), str(path))
        return module

    path = Path(source)
    if not path.is_file():
        raise VGGWeightsNotFoundError(
            f"VGG-16 weights file {str(path)!r} not found. Fix: give an existing torchvision vgg16 state-dict "
            "file, or 'imagenet' (torch hub cache), or set `perceptual_features: random` in the config."
        )
    module = VGG16Features("file", f"file ({path.resolve()})")
    _load_trunk_state(module, _read_state(path), str(path))
    return module


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalised by C H W: ``G[b] = f_b f_b^T / (C H W)``.

    Args:
        features: ``(B, C, H, W)``.

    Returns:
        ``(B, C, C)``; ``G[b, i, j] = sum_p f[b, i, p] f[b, j, p] / (C H W)``.
    """
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)  # (B, C, HW)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)  # (B, C, C)


class LRRNetFusionLoss(nn.Module):
    """LRRNet fusion loss, S0 Eq. 1 (METHODS.md section 2; reference code hli1221/imagefusion-LRRNet).

    With F the fused image, I_d the detail source and I_s the salient source, all
    scaled to [0, 255] and repeated to 3 channels before VGG (no ImageNet
    normalisation), phi1..phi4 = relu1_2, relu2_2, relu3_3, relu4_3, and MSE the mean
    of squared differences over all elements::

        L_pixel   = MSE(F, I_d)
        L_shallow = MSE(phi1 F, phi1 I_d)
        L_middle  = 0.01 MSE(phi2 F, w_s phi2 I_s + w_d phi2 I_d)
                  + 0.5  MSE(phi3 F, w_s phi3 I_s + w_d phi3 I_d)
        L_deep    = MSE(G(phi4 F), G(phi4 I_s)),  G = Gram / (C H W)   (:func:`gram_matrix`)
        L_fusion  = 10 L_pixel + 1.5 L_shallow + L_middle + 2000 L_deep

    DECISION (METHODS.md section 2): detail I_d = T1CE, salient I_s = FLAIR. The
    loss only sees ``detail`` and ``salient``; the swapped mapping (S0's remark that
    the pixel term preserves FLAIR detail) is obtained by the caller passing
    ``detail=flair, salient=t1ce``.

    Scaling: ``fused`` is expected in [0, 1] (LRRNet's min-max normalised output) and
    is multiplied by 255. ``detail`` and ``salient`` are min-max normalised per slice
    to [0, 1] first (``normalize_sources=True``, the same normalisation the network
    applies to its inputs; constant slices become 0) and then multiplied by 255. With
    ``normalize_sources=False`` they are expected in [0, 1] already. Target features
    are computed without gradient: gradients flow into ``fused`` only.

    Args:
        vgg: feature extractor mapping ``(B, 3, H, W)`` to a sequence of (at least) 4
            feature maps phi1..phi4, normally :func:`vgg16_features`; frozen here.
        w_s: weight of the salient features in L_middle (paper 3.0).
        w_d: weight of the detail features in L_middle (paper 0.5).
        gammas: weights of (L_pixel, L_shallow, L_middle, L_deep) in L_fusion
            (paper 10, 1.5, 1, 2000).
        middle_factors: weights of the relu2_2 and relu3_3 MSEs inside L_middle
            (paper 0.01, 0.5).
        scale: intensity scale applied to the [0, 1] images (reference code 255).
        normalize_sources: min-max normalise ``detail`` and ``salient`` per slice.

    Attributes:
        vgg_source: the extractor's ``source_description`` (or its class name).

    Shapes:
        ``forward(fused, detail, salient)``, each ``(B, 1, H, W)`` float with H, W >= 8
        (relu4_3 is at 1/8 resolution) -> ``(total, terms)``: ``total`` a scalar
        tensor = L_fusion, ``terms`` = ``{"pixel", "shallow", "middle", "deep"}`` the
        UNWEIGHTED L_pixel, L_shallow, L_middle (with its 0.01 / 0.5 factors inside),
        L_deep as scalar tensors (``total = sum(gamma_i * terms[i])``).

    Raises:
        ValueError: invalid weights at construction; in ``forward``, shapes that are
            not ``(B, 1, H, W)``, mismatched, or smaller than 8 x 8.
    """

    TERMS = ("pixel", "shallow", "middle", "deep")

    def __init__(
        self,
        vgg: nn.Module,
        w_s: float = 3.0,
        w_d: float = 0.5,
        gammas: Sequence[float] = (10.0, 1.5, 1.0, 2000.0),
        middle_factors: Sequence[float] = (0.01, 0.5),
        scale: float = 255.0,
        normalize_sources: bool = True,
    ):
        super().__init__()
        gammas = tuple(float(g) for g in gammas)
        middle_factors = tuple(float(m) for m in middle_factors)
        if len(gammas) != 4 or any(not g >= 0 for g in gammas):
            raise ValueError(
                f"LRRNetFusionLoss: gammas must be 4 values >= 0 for (pixel, shallow, middle, deep), got {gammas}; "
                "paper: (10, 1.5, 1, 2000)."
            )
        if len(middle_factors) != 2 or any(not m >= 0 for m in middle_factors):
            raise ValueError(f"LRRNetFusionLoss: middle_factors must be 2 values >= 0, got {middle_factors}.")
        if not scale > 0:
            raise ValueError(f"LRRNetFusionLoss: scale must be > 0, got {scale!r}.")
        self.vgg = vgg
        self.vgg.requires_grad_(False)
        self.vgg.eval()
        self.w_s = float(w_s)
        self.w_d = float(w_d)
        self.gammas = gammas
        self.middle_factors = middle_factors
        self.scale = float(scale)
        self.normalize_sources = bool(normalize_sources)
        self.vgg_source = getattr(vgg, "source_description", type(vgg).__name__)

    def _check(self, fused: torch.Tensor, detail: torch.Tensor, salient: torch.Tensor) -> None:
        for name, t in (("fused", fused), ("detail", detail), ("salient", salient)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"LRRNetFusionLoss: {name} must be a floating-point tensor (B, 1, H, W).")
            if t.ndim != 4 or t.shape[1] != 1:
                raise ValueError(f"LRRNetFusionLoss: {name} must have shape (B, 1, H, W), got {tuple(t.shape)}.")
            if t.shape != fused.shape:
                raise ValueError(
                    f"LRRNetFusionLoss: {name} shape {tuple(t.shape)} differs from fused {tuple(fused.shape)}."
                )
        if min(fused.shape[2:]) < 8:
            raise ValueError(
                f"LRRNetFusionLoss: H, W must be >= 8 (relu4_3 is at 1/8 resolution), got {tuple(fused.shape)}."
            )

    def _features(self, img: torch.Tensor) -> Sequence[torch.Tensor]:
        feats = self.vgg(img.expand(-1, 3, -1, -1))  # grey -> 3 channels, (B, 3, H, W)
        if len(feats) < 4:
            raise ValueError(f"LRRNetFusionLoss: the feature extractor returned {len(feats)} maps, need 4.")
        return feats

    def forward(
        self, fused: torch.Tensor, detail: torch.Tensor, salient: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(L_fusion, {"pixel", "shallow", "middle", "deep"})``; see the class docstring."""
        self._check(fused, detail, salient)
        if self.vgg.training:  # keep the extractor in eval mode even after model.train()
            self.vgg.eval()
        f = fused * self.scale  # (B, 1, H, W) in [0, 255]
        with torch.no_grad():
            if self.normalize_sources:
                detail = minmax_normalize(detail)
                salient = minmax_normalize(salient)
            d = detail.detach() * self.scale
            s = salient.detach() * self.scale
            phi_d = self._features(d)
            phi_s = self._features(s)
        phi_f = self._features(f)

        pixel = F.mse_loss(f, d)
        shallow = F.mse_loss(phi_f[0], phi_d[0])
        m2, m3 = self.middle_factors
        middle = m2 * F.mse_loss(phi_f[1], self.w_s * phi_s[1] + self.w_d * phi_d[1]) + m3 * F.mse_loss(
            phi_f[2], self.w_s * phi_s[2] + self.w_d * phi_d[2]
        )
        deep = F.mse_loss(gram_matrix(phi_f[3]), gram_matrix(phi_s[3]))
        terms = {"pixel": pixel, "shallow": shallow, "middle": middle, "deep": deep}
        total = sum(g * terms[k] for g, k in zip(self.gammas, self.TERMS))
        return total, terms
