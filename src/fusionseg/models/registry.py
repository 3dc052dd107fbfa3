"""The one registry of model builders.

A builder is a class or function registered under a short name with
:func:`register_model`; :func:`build_model` looks the name up and calls the builder as
``builder(in_channels=..., num_classes=..., spatial_dims=..., **kwargs)``. Unknown names
fail with the list of valid ones, unknown keyword arguments fail with the builder's
accepted arguments (timm-style registry: one explicit table, no string lookups hidden
in subclasses).

Convention for segmentation models built here: the returned module takes
``(B, in_channels, *spatial)`` float input and returns ``(B, num_classes, *spatial)``
logits, and exposes the attributes ``in_channels``, ``num_classes``, ``spatial_dims``
and ``required_divisor`` (every spatial size must be a multiple of it, so callers can
pad).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["register_model", "build_model", "check_model_options", "list_models", "get_model_builder"]

_MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_MODEL_TASKS: dict[str, str] = {}

#: What a registered model does: ``segmentation`` (modalities -> class logits) or
#: ``fusion`` (source images -> one fused image).
TASKS = ("segmentation", "fusion")

#: Arguments :func:`build_model` always passes; not listed as "extra" arguments.
_CORE_ARGS = ("in_channels", "num_classes", "spatial_dims")

B = TypeVar("B", bound=Callable[..., nn.Module])


def register_model(name: str, task: str = "segmentation") -> Callable[[B], B]:
    """Decorator registering a model builder (class or function) under ``name``.

    The builder must accept ``in_channels``, ``num_classes`` and ``spatial_dims`` as
    keyword arguments; further keyword arguments are model options.

    Args:
        name: registry key, e.g. ``"unet2stage"``; lower case by convention.
        task: ``"segmentation"`` (default) or ``"fusion"`` (see :data:`TASKS`).

    Returns:
        The decorator; it returns the builder unchanged.

    Raises:
        ValueError: if ``name`` is empty or already registered (two builders must not
            silently share a name).
        TypeError: (when decorating) if the builder does not accept the three core
            arguments.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model: name must be a non-empty string, got {name!r}.")
    if task not in TASKS:
        raise ValueError(f"register_model({name!r}): task must be one of {TASKS}, got {task!r}.")

    def decorator(builder: B) -> B:
        if name in _MODEL_REGISTRY:
            raise ValueError(
                f"register_model: a model named {name!r} is already registered "
                f"({_MODEL_REGISTRY[name]!r}); choose another name."
            )
        params = inspect.signature(builder).parameters
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        missing = [a for a in _CORE_ARGS if a not in params]
        if missing and not has_var_kw:
            raise TypeError(
                f"register_model({name!r}): builder {builder!r} must accept the keyword "
                f"arguments {_CORE_ARGS}; missing {tuple(missing)}."
            )
        _MODEL_REGISTRY[name] = builder
        _MODEL_TASKS[name] = task
        return builder

    return decorator


def list_models(task: str | None = None) -> list[str]:
    """Names of the registered models (of one ``task`` if given), sorted."""
    return sorted(n for n in _MODEL_REGISTRY if task is None or _MODEL_TASKS[n] == task)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name``.

    Raises:
        KeyError: if ``name`` is not registered; the message lists the valid names.
    """
    try:
        return _MODEL_REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown model {name!r}. Registered models: {', '.join(list_models()) or '(none)'}.") from None


def _accepted_kwargs(builder: Callable[..., Any]) -> tuple[list[str], bool]:
    """(names of the builder's optional keyword arguments, whether it takes **kwargs)."""
    params = inspect.signature(builder).parameters
    names = [
        n
        for n, p in params.items()
        if n not in _CORE_ARGS
        and n != "self"
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return names, has_var_kw


def check_model_options(name: str, kwargs: dict[str, Any]) -> Callable[..., nn.Module]:
    """The builder of ``name`` after checking that it accepts every key of ``kwargs``
    (values are checked only when the model is built).

    Raises:
        KeyError: unknown ``name``; the message lists the registered models.
        TypeError: an option the model does not accept; the message lists those it accepts.
    """
    builder = get_model_builder(name)
    accepted, has_var_kw = _accepted_kwargs(builder)
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown and not has_var_kw:
        raise TypeError(
            f"Model {name!r} got unexpected argument(s) {unknown}. "
            f"Accepted arguments besides {_CORE_ARGS}: {accepted or '(none)'}."
        )
    return builder


def build_model(name: str, in_channels: int, num_classes: int, spatial_dims: int = 2, **kwargs: Any) -> nn.Module:
    """Build the model registered under ``name``.

    Args:
        name: registry key (see :func:`list_models`).
        in_channels: number of input channels C (e.g. stacked modalities).
        num_classes: number of output channels K (class logits).
        spatial_dims: 2 for (B, C, H, W) slices, 3 for (B, C, H, W, D) volumes.
        **kwargs: model options, passed to the builder.

    Returns:
        The model, an ``nn.Module`` (in training mode, float32 parameters).

    Raises:
        KeyError: unknown ``name``; the message lists the registered models.
        TypeError: an option the model does not accept; the message names the model
            and lists the options it accepts.
        ValueError: whatever the builder raises for invalid values.
    """
    builder = check_model_options(name, kwargs)
    return builder(in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, **kwargs)
