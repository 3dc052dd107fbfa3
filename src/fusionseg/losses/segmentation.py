"""Segmentation losses for softmax class outputs, built by name through one registry.

Every loss takes logits ``(B, K, H, W[, D])`` (float) and a target of class indices
``(B, H, W[, D])`` (integer, values in ``[0, K)``; ``(B, 1, H, W[, D])`` is accepted
too) and returns a scalar tensor. The target is one-hot encoded inside, as MONAI's
losses expect. :meth:`SegLoss.components` returns the weighted terms by name for
logging.

Registered losses (see :func:`list_seg_losses`):

* ``"dice_ce"`` -- class-weighted cross-entropy + soft Dice over softmax
  (S0: CE with class weights [0.5, 2.0, 5.0, 4.0] + soft Dice, METHODS.md section 1;
  S2: Dice+CE 0.5/0.5, METHODS.md section 5).
* ``"dice_focal"`` -- soft Dice over softmax + focal loss, gamma 2 (S2 section 5).
* ``"focal"`` -- focal loss, gamma 2 (S2 section 5; Lin et al. 2017).

Built from MONAI 1.6's ``DiceLoss`` and ``FocalLoss`` and torch's cross-entropy. Why not
MONAI's combined classes: ``monai.losses.DiceCELoss`` (1.6) applies its ``weight`` to
the Dice term too, while S0 weights only the CE term; ``monai.losses.DiceFocalLoss``
(1.6) always uses the sigmoid focal loss, while these models predict mutually
exclusive softmax classes. Composing the parts keeps both choices explicit options
(``dice_class_weights``, ``use_softmax``) and gives MONAI's exact values when set to
MONAI's behaviour (checked in tests/test_losses.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss
from torch import nn

__all__ = [
    "SegLoss",
    "DiceCESegLoss",
    "DiceFocalSegLoss",
    "FocalSegLoss",
    "register_seg_loss",
    "build_seg_loss",
    "list_seg_losses",
]

_LOSS_REGISTRY: dict[str, type[SegLoss]] = {}

L = TypeVar("L", bound="type[SegLoss]")


def register_seg_loss(name: str) -> Callable[[L], L]:
    """Decorator registering a :class:`SegLoss` subclass under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorator(cls: L) -> L:
        if name in _LOSS_REGISTRY:
            raise ValueError(f"register_seg_loss: a loss named {name!r} is already registered.")
        _LOSS_REGISTRY[name] = cls
        return cls

    return decorator


def list_seg_losses() -> list[str]:
    """Names of all registered segmentation losses, sorted."""
    return sorted(_LOSS_REGISTRY)


def build_seg_loss(name: str, num_classes: int, **kwargs: Any) -> SegLoss:
    """Build the segmentation loss registered under ``name``.

    Args:
        name: ``"dice_ce"``, ``"dice_focal"`` or ``"focal"`` (see :func:`list_seg_losses`).
        num_classes: K, the number of logit channels (>= 2: softmax classes incl. background).
        **kwargs: options of the loss class (e.g. ``class_weights=[0.5, 2.0, 5.0, 4.0]``,
            ``lambda_dice``, ``lambda_ce``, ``gamma``).

    Returns:
        A :class:`SegLoss` module: ``loss(logits, target) -> scalar``.

    Raises:
        KeyError: unknown ``name``; the message lists the registered losses.
        TypeError: an option the loss does not accept; the message lists accepted ones.
        ValueError: invalid values (e.g. ``class_weights`` length != ``num_classes``).
    """
    return check_seg_loss_options(name, kwargs)(num_classes=num_classes, **kwargs)


def check_seg_loss_options(name: str, kwargs: dict[str, Any]) -> type[SegLoss]:
    """The loss class of ``name`` after checking that it accepts every key of ``kwargs``.

    Raises:
        KeyError: unknown ``name``; the message lists the registered losses.
        TypeError: an option the loss does not accept; the message lists accepted ones.
    """
    try:
        cls = _LOSS_REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown segmentation loss {name!r}. Registered: {', '.join(list_seg_losses())}.") from None
    accepted = cls.option_names()
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise TypeError(f"Segmentation loss {name!r} got unexpected argument(s) {unknown}. Accepted: {accepted}.")
    return cls


def _class_weights(
    weights: Sequence[float] | torch.Tensor | None, num_classes: int, loss: str, arg: str = "class_weights"
) -> torch.Tensor | None:
    """Validate per-class weights: length ``num_classes``, finite, >= 0, not all zero."""
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float32).flatten()
    if w.numel() != num_classes:
        raise ValueError(
            f"{loss}: {arg} has {w.numel()} value(s) {w.tolist()} but num_classes={num_classes}; "
            f"give one weight per class, background first (e.g. S0 uses [0.5, 2.0, 5.0, 4.0] for 4 classes)."
        )
    if not torch.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise ValueError(f"{loss}: {arg} must be finite, >= 0 and not all zero, got {w.tolist()}.")
    return w


def _non_negative(value: float, arg: str, loss: str) -> float:
    value = float(value)
    if not value >= 0.0:
        raise ValueError(f"{loss}: {arg} must be >= 0, got {value}.")
    return value


class SegLoss(nn.Module, ABC):
    """Base class: input checks and the target conversion shared by all losses.

    Subclasses implement :meth:`components`; ``forward`` returns their sum.

    Args:
        num_classes: K, the number of logit channels (>= 2).
    """

    name: str = "seg_loss"

    def __init__(self, num_classes: int):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(
                f"{self.name}: num_classes must be >= 2 (softmax over classes incl. background), got {num_classes}."
            )
        self.num_classes = int(num_classes)
        #: logit channels expected (K; a region loss has one per region)
        self.num_outputs = self.num_classes

    @classmethod
    def option_names(cls) -> list[str]:
        """Keyword options of the constructor besides ``num_classes``."""
        import inspect

        params = inspect.signature(cls.__init__).parameters
        return [n for n in params if n not in ("self", "num_classes")]

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Validate inputs; return the target as ``(B, 1, *S)`` long (MONAI's layout)."""
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise TypeError(f"{self.name}: logits must be a floating-point tensor (B, K, *S).")
        if logits.ndim < 3 or logits.shape[1] != self.num_outputs:
            raise ValueError(
                f"{self.name}: logits must have shape (B, K={self.num_outputs}, H, W[, D]) (one channel per "
                f"{'class' if self.num_outputs == self.num_classes else 'region'}), got {tuple(logits.shape)}."
            )
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(
                f"{self.name}: target must hold integer class indices (torch.long), got {target.dtype}; "
                "use target.long() (one-hot targets are not accepted: use target.argmax(1))."
            )
        spatial = tuple(logits.shape[2:])
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if target.shape != (logits.shape[0], *spatial):
            raise ValueError(
                f"{self.name}: target must have shape (B, *S) = {(logits.shape[0], *spatial)} "
                f"(or (B, 1, *S)) to match logits {tuple(logits.shape)}, got {tuple(target.shape)}."
            )
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(
                f"{self.name}: target values must be class indices in [0, {self.num_classes}), got range "
                f"[{int(target.min())}, {int(target.max())}]; remap raw labels with the label scheme first."
            )
        return target.long().unsqueeze(1)  # (B, 1, *S)

    @abstractmethod
    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted loss terms by name (scalars); their sum is ``forward``'s value."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for logits ``(B, K, *S)`` and class-index target ``(B, *S)``."""
        terms = self.components(logits, target)
        return torch.stack(list(terms.values())).sum()


def _soft_dice(include_background: bool, batch_dice: bool, smooth: float, weight: torch.Tensor | None) -> DiceLoss:
    """MONAI soft Dice over softmax probabilities with one-hot targets built inside."""
    return DiceLoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        batch=batch_dice,
        smooth_nr=smooth,
        smooth_dr=smooth,
        weight=weight,
    )


@register_seg_loss("dice_ce")
class DiceCESegLoss(SegLoss):
    """Class-weighted cross-entropy + soft Dice over softmax.

    ``L = lambda_ce * CE_w(logits, target) + lambda_dice * (1 - Dice(softmax(logits), onehot(target)))``

    CE_w is ``torch.nn.functional.cross_entropy`` with per-class ``weight`` (mean
    reduction: weighted mean over voxels, sum of w[y_i] l_i / sum of w[y_i]); the Dice
    term is MONAI's ``DiceLoss(softmax=True, to_onehot_y=True)``: per sample and class
    ``1 - (2 sum(p g) + s) / (sum p + sum g + s)``, averaged.

    Source: S0 (METHODS.md section 1): CE with class weights [0.5, 2.0, 5.0, 4.0] +
    soft Dice, lambdas 1/1; S2 (section 5): Dice+CE 0.5/0.5.
    DECISION: class weights act on the CE term only (S0 names them for CE); set
    ``dice_class_weights=True`` to also weight the Dice classes, which equals MONAI
    1.6's ``DiceCELoss(weight=...)``. The Dice term includes the background class by
    default (MONAI default; S0 does not say); ``include_background=False`` drops it.

    Args:
        num_classes: K (>= 2).
        class_weights: K non-negative weights, background first, or None (unweighted).
        lambda_dice: weight of the Dice term (>= 0), default 1.
        lambda_ce: weight of the CE term (>= 0), default 1.
        include_background: include class 0 in the Dice average.
        batch_dice: pool intersections/unions over the batch before dividing.
        smooth: Dice smoothing added to numerator and denominator.
        dice_class_weights: also weight the Dice classes with ``class_weights``.

    Raises:
        ValueError: ``class_weights`` length != ``num_classes``, negative/all-zero
            weights, negative lambdas; in ``forward``, shape or value mismatches.
        TypeError: in ``forward``, non-float logits or non-integer target.
    """

    name = "dice_ce"

    def __init__(
        self,
        num_classes: int,
        class_weights: Sequence[float] | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        include_background: bool = True,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        dice_class_weights: bool = False,
    ):
        super().__init__(num_classes)
        w = _class_weights(class_weights, self.num_classes, self.name)
        self.lambda_dice = _non_negative(lambda_dice, "lambda_dice", self.name)
        self.lambda_ce = _non_negative(lambda_ce, "lambda_ce", self.name)
        self.register_buffer("class_weights", w, persistent=False)
        dice_w = None
        if dice_class_weights and w is not None:
            dice_w = w if include_background else w[1:]
        self.dice = _soft_dice(include_background, batch_dice, smooth, dice_w)

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ce": lambda_ce * CE_w, "dice": lambda_dice * Dice loss}`` (scalars)."""
        y = self._check(logits, target)  # (B, 1, *S) long
        w = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        ce = F.cross_entropy(logits, y[:, 0], weight=w)
        dice = self.dice(logits, y)
        return {"ce": self.lambda_ce * ce, "dice": self.lambda_dice * dice}


def _focal(gamma: float, use_softmax: bool, weight: torch.Tensor | None, include_background: bool) -> FocalLoss:
    return FocalLoss(
        include_background=include_background,
        to_onehot_y=True,
        gamma=gamma,
        weight=None if weight is None else (weight if include_background else weight[1:]),
        use_softmax=use_softmax,
    )


@register_seg_loss("dice_focal")
class DiceFocalSegLoss(SegLoss):
    """Soft Dice over softmax + focal loss.

    ``L = lambda_dice * DiceLoss + lambda_focal * FocalLoss(gamma)``, both MONAI 1.6
    (``DiceLoss(softmax=True)``, ``FocalLoss(use_softmax=...)``; the focal term uses
    MONAI's mean over voxels and classes).

    Source: S2 (METHODS.md section 5): Dice+Focal, weights 1/1, gamma 2; focal loss
    after Lin et al. 2017.
    DECISION: softmax focal loss by default (mutually exclusive classes);
    ``use_softmax=False`` gives the per-class sigmoid focal loss, which equals MONAI
    1.6's ``DiceFocalLoss(softmax=True, to_onehot_y=True)``. ``class_weights`` weight
    the focal term only.

    Args:
        num_classes: K (>= 2).
        gamma: focal exponent (>= 0), default 2.
        lambda_dice: weight of the Dice term (>= 0), default 1.
        lambda_focal: weight of the focal term (>= 0), default 1.
        class_weights: K non-negative per-class weights for the focal term, or None.
        use_softmax: softmax (default) or sigmoid focal loss.
        include_background: include class 0 in both terms.
        batch_dice: pool the Dice over the batch.
        smooth: Dice smoothing.

    Raises:
        ValueError: bad ``class_weights`` length/values, negative gamma or lambdas;
            shape/value mismatches in ``forward``.
        TypeError: non-float logits or non-integer target in ``forward``.
    """

    name = "dice_focal"

    def __init__(
        self,
        num_classes: int,
        gamma: float = 2.0,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        class_weights: Sequence[float] | None = None,
        use_softmax: bool = True,
        include_background: bool = True,
        batch_dice: bool = False,
        smooth: float = 1e-5,
    ):
        super().__init__(num_classes)
        w = _class_weights(class_weights, self.num_classes, self.name)
        self.gamma = _non_negative(gamma, "gamma", self.name)
        self.lambda_dice = _non_negative(lambda_dice, "lambda_dice", self.name)
        self.lambda_focal = _non_negative(lambda_focal, "lambda_focal", self.name)
        self.dice = _soft_dice(include_background, batch_dice, smooth, None)
        self.focal = _focal(self.gamma, use_softmax, w, include_background)

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"dice": lambda_dice * Dice loss, "focal": lambda_focal * focal loss}``."""
        y = self._check(logits, target)  # (B, 1, *S) long
        return {"dice": self.lambda_dice * self.dice(logits, y), "focal": self.lambda_focal * self.focal(logits, y)}


@register_seg_loss("focal")
class FocalSegLoss(SegLoss):
    """Focal loss ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017), MONAI 1.6 ``FocalLoss``.

    Mean over voxels and classes of MONAI's per-class focal term on one-hot targets.
    Source: S2 (METHODS.md section 5): focal, gamma 2.
    DECISION: softmax focal loss by default; ``use_softmax=False`` = sigmoid per class
    (MONAI's default).

    Args:
        num_classes: K (>= 2).
        gamma: focal exponent (>= 0), default 2.
        class_weights: K non-negative per-class weights, or None.
        use_softmax: softmax (default) or sigmoid.
        include_background: include class 0.

    Raises:
        ValueError: bad ``class_weights`` length/values or negative gamma; shape/value
            mismatches in ``forward``.
        TypeError: non-float logits or non-integer target in ``forward``.
    """

    name = "focal"

    def __init__(
        self,
        num_classes: int,
        gamma: float = 2.0,
        class_weights: Sequence[float] | None = None,
        use_softmax: bool = True,
        include_background: bool = True,
    ):
        super().__init__(num_classes)
        w = _class_weights(class_weights, self.num_classes, self.name)
        self.gamma = _non_negative(gamma, "gamma", self.name)
        self.focal = _focal(self.gamma, use_softmax, w, include_background)

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"focal": focal loss}``."""
        y = self._check(logits, target)  # (B, 1, *S) long
        return {"focal": self.focal(logits, y)}
