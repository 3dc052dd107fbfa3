"""Weighting of the fusion and segmentation losses in joint training (S0 C; METHODS.md section 3).

``L = lambda_f L_fusion + lambda_s L_seg`` (S0 Eq. 3), with the lambdas either fixed
(:class:`StaticWeighting`, S0's grid) or updated once per epoch from the recent
training-loss trend (:class:`DynamicWeighting`, S0 Eq. 6, and DWA of MTAN, Liu et
al., CVPR 2019, reference code lorenmt/mtan).

Both share one protocol, used by the training loop:

- ``weights(epoch) -> {"fusion": lambda_f, "seg": lambda_s}`` for 0-based ``epoch``;
- ``record_epoch({"fusion": Lbar_f, "seg": Lbar_s})`` after each epoch, with the
  epoch-mean UNWEIGHTED training losses, in epoch order (the first call records
  epoch 0);
- ``history()``: the weights used by every recorded epoch with its losses (for logs
  and plots);
- ``state_dict()`` / ``load_state_dict()``: plain Python data for checkpoint resume.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal

__all__ = ["LossWeighting", "StaticWeighting", "DynamicWeighting", "TASKS"]

#: Task names, in the order used everywhere (fusion first, as in S0 Eq. 3).
TASKS = ("fusion", "seg")

Variant = Literal["s0", "dwa"]
_VARIANTS = ("s0", "dwa")
_DEFAULT_TEMPERATURE = {"s0": 1.0, "dwa": 2.0}


def _finite_non_negative(value: float, arg: str, owner: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{owner}: {arg} must be finite and >= 0, got {value!r}.")
    return value


class LossWeighting(ABC):
    """Base class: epoch-mean loss history, weight history and (de)serialisation.

    Subclasses implement :meth:`weights` and :meth:`_config`.
    """

    kind: str = "base"

    def __init__(self) -> None:
        self.loss_history: list[dict[str, float]] = []

    # -- protocol -----------------------------------------------------------------
    @abstractmethod
    def weights(self, epoch: int) -> dict[str, float]:
        """``{"fusion": lambda_f, "seg": lambda_s}`` for 0-based ``epoch``."""

    def record_epoch(self, epoch_means: dict[str, float]) -> None:
        """Append the epoch-mean unweighted training losses of the next epoch.

        Args:
            epoch_means: at least ``{"fusion": Lbar_f, "seg": Lbar_s}`` (other keys are
                ignored); values finite and > 0 (they are divided by in Eq. 6).

        Raises:
            KeyError: a task is missing; ValueError: a value is not finite and > 0.
        """
        missing = [t for t in TASKS if t not in epoch_means]
        if missing:
            raise KeyError(
                f"{type(self).__name__}.record_epoch: missing epoch-mean loss(es) {missing}; "
                f"give {{'fusion': ..., 'seg': ...}}, got keys {sorted(epoch_means)}."
            )
        record = {}
        for t in TASKS:
            v = float(epoch_means[t])
            if not (math.isfinite(v) and v > 0.0):
                raise ValueError(
                    f"{type(self).__name__}.record_epoch: epoch-mean {t!r} loss must be finite and > 0 "
                    f"(epoch {len(self.loss_history)}), got {v!r}."
                )
            record[t] = v
        self.loss_history.append(record)

    def history(self) -> list[dict[str, float]]:
        """One row per recorded epoch: ``{"epoch", "lambda_fusion", "lambda_seg", "loss_fusion", "loss_seg"}``.

        The lambdas are those used during that epoch (a function of the epochs before
        it), the losses the recorded epoch means.
        """
        rows = []
        for epoch, losses in enumerate(self.loss_history):
            w = self.weights(epoch)
            rows.append(
                {
                    "epoch": epoch,
                    "lambda_fusion": w["fusion"],
                    "lambda_seg": w["seg"],
                    "loss_fusion": losses["fusion"],
                    "loss_seg": losses["seg"],
                }
            )
        return rows

    def _check_epoch(self, epoch: int) -> int:
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"{type(self).__name__}.weights: epoch must be >= 0 (0-based), got {epoch}.")
        return epoch

    # -- serialisation ------------------------------------------------------------
    @abstractmethod
    def _config(self) -> dict[str, Any]:
        """Constructor settings, stored with the state and checked on load."""

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: ``{"kind", "config", "loss_history"}`` (JSON/torch.save friendly)."""
        return {"kind": self.kind, "config": self._config(), "loss_history": [dict(r) for r in self.loss_history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the loss history saved by :meth:`state_dict`.

        Raises:
            ValueError: the state was saved by a different weighting kind or with a
                different configuration (resuming must not silently change the method).
        """
        if state.get("kind") != self.kind or state.get("config") != self._config():
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: checkpoint holds kind={state.get('kind')!r} "
                f"config={state.get('config')!r}, but this object is kind={self.kind!r} config={self._config()!r}; "
                "build the weighting with the checkpoint's settings."
            )
        history = []
        for i, row in enumerate(state.get("loss_history", [])):
            try:
                history.append({t: float(row[t]) for t in TASKS})
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{type(self).__name__}.load_state_dict: bad loss_history row {i}: {row!r}.") from None
        self.loss_history = history


class StaticWeighting(LossWeighting):
    """Fixed weights: ``lambda_f`` and ``lambda_s`` in every epoch (S0 Eq. 3; static grid).

    S0's grid: lambda_f in {5e-7, 1e-6, 5e-6, 1e-5, 5e-5, 1e-4}, lambda_s = 1; the
    ablation "L_seg only" is ``StaticWeighting(0.0, 1.0)``.

    Args:
        lambda_f: weight of L_fusion (finite, >= 0).
        lambda_s: weight of L_seg (finite, >= 0), default 1.

    Raises:
        ValueError: negative or non-finite weights.
    """

    kind = "static"

    def __init__(self, lambda_f: float, lambda_s: float = 1.0):
        super().__init__()
        self.lambda_f = _finite_non_negative(lambda_f, "lambda_f", "StaticWeighting")
        self.lambda_s = _finite_non_negative(lambda_s, "lambda_s", "StaticWeighting")

    def weights(self, epoch: int) -> dict[str, float]:
        """``{"fusion": lambda_f, "seg": lambda_s}`` whatever the epoch (>= 0)."""
        self._check_epoch(epoch)
        return {"fusion": self.lambda_f, "seg": self.lambda_s}

    def _config(self) -> dict[str, Any]:
        return {"lambda_f": self.lambda_f, "lambda_s": self.lambda_s}


class DynamicWeighting(LossWeighting):
    """Per-epoch weights from the training-loss descent rates (S0 Eq. 6 or MTAN's DWA).

    For epoch t >= 2 (0-based), with Lbar_k(t) the epoch-mean training loss of task k
    recorded by :meth:`record_epoch`::

        r_k = Lbar_k(t-1) / Lbar_k(t-2)        (k in {fusion, seg})

    - ``variant="s0"`` (S0 Eq. 6, n_f = n_s = 1, default T = 1)::

          lambda_f = exp(r_f/T) / (exp(r_f/T) + exp(r_s/T)),   lambda_s = 1 - lambda_f

      and lambda_f = lambda_s = 0.5 in epochs 0 and 1.
    - ``variant="dwa"`` (Dynamic Weight Average, Liu et al., CVPR 2019, Eq. 7; K = 2
      tasks, default T = 2)::

          lambda_k = K exp(r_k/T) / sum_j exp(r_j/T)

      and lambda_k = 1 in epochs 0 and 1 (as in lorenmt/mtan: equal weights summing to K).

    A task whose loss falls more slowly (larger r_k) gets the larger weight; the
    weights are computed with a numerically stable softmax.

    Args:
        temperature: T > 0; None = the variant's default (s0: 1, dwa: 2).
        variant: ``"s0"`` or ``"dwa"``.

    Raises:
        ValueError: unknown variant or non-positive temperature; in :meth:`weights`,
            an epoch whose two previous epochs are not recorded yet.
    """

    kind = "dynamic"

    def __init__(self, temperature: float | None = None, variant: Variant = "s0"):
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"DynamicWeighting: variant must be one of {_VARIANTS}, got {variant!r}.")
        t = _DEFAULT_TEMPERATURE[variant] if temperature is None else float(temperature)
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"DynamicWeighting: temperature must be finite and > 0, got {temperature!r}.")
        self.variant = variant
        self.temperature = t
        #: Sum of the weights (1 for S0's convex combination, K = 2 for DWA).
        self.total = 1.0 if variant == "s0" else float(len(TASKS))

    def descent_rates(self, epoch: int) -> dict[str, float]:
        """``{k: Lbar_k(epoch-1) / Lbar_k(epoch-2)}`` for ``epoch >= 2``.

        Raises:
            ValueError: ``epoch < 2`` or epochs ``epoch-1``/``epoch-2`` not recorded.
        """
        epoch = self._check_epoch(epoch)
        if epoch < 2:
            raise ValueError(f"DynamicWeighting.descent_rates: needs epoch >= 2, got {epoch}.")
        if epoch > len(self.loss_history):
            raise ValueError(
                f"DynamicWeighting.weights: epoch {epoch} needs the epoch-mean losses of epochs {epoch - 2} and "
                f"{epoch - 1}, but only {len(self.loss_history)} epoch(s) are recorded; call record_epoch() after "
                "every epoch."
            )
        prev, prev2 = self.loss_history[epoch - 1], self.loss_history[epoch - 2]
        return {k: prev[k] / prev2[k] for k in TASKS}

    def weights(self, epoch: int) -> dict[str, float]:
        """``{"fusion": lambda_f, "seg": lambda_s}`` for 0-based ``epoch``; see the class docstring."""
        epoch = self._check_epoch(epoch)
        if epoch < 2:
            each = self.total / len(TASKS)
            return {k: each for k in TASKS}
        r = self.descent_rates(epoch)
        logits = {k: r[k] / self.temperature for k in TASKS}
        top = max(logits.values())
        e = {k: math.exp(v - top) for k, v in logits.items()}  # stable softmax numerators
        denom = sum(e.values())
        w = {k: self.total * e[k] / denom for k in TASKS}
        if self.variant == "s0":
            w["seg"] = 1.0 - w["fusion"]  # lambda_s = 1 - lambda_f, exactly as Eq. 6 states
        return w

    def _config(self) -> dict[str, Any]:
        return {"variant": self.variant, "temperature": self.temperature}
