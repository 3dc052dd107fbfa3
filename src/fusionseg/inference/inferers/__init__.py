"""Inferer registry: how a trained model predicts one whole preprocessed case.

An inferer is registered for one ``spatial_dims`` of the config (2: slice by slice,
:mod:`fusionseg.inference.inferers.slicewise`). Every module of this package is
imported with it, so a new inferer (e.g. MONAI's sliding-window inference for 3-D) is
one new file here that calls :func:`register_inferer`.

An inferer is a callable ``(models, case, modalities, scheme, divisor, options) ->
labels``: ``models`` a sequence of networks in eval mode whose class probabilities are
averaged, ``case`` a :class:`~fusionseg.data.preprocess.PreparedCase`, ``modalities``
the input channels in order, ``divisor`` the size multiple the network needs,
``options`` an :class:`~fusionseg.inference.options.InferOptions` (test-time mirroring, batch, device, window);
returns the (X, Y, Z) label map in the scheme's raw values on the case's original
grid. ``fusionseg train`` (validation and test cases) and ``fusionseg predict`` call
the same inferer with the same options, so both give the same voxels.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from fusionseg.inference.options import InferOptions

__all__ = ["InferOptions", "register_inferer", "get_inferer"]


INFERERS: dict[int, Callable] = {}


def register_inferer(spatial_dims: int) -> Callable:
    """Decorator: register an inferer for ``spatial_dims`` (one per value)."""

    def wrap(fn: Callable) -> Callable:
        if spatial_dims in INFERERS:
            raise ValueError(f"an inferer for spatial_dims {spatial_dims} is already registered")
        INFERERS[spatial_dims] = fn
        return fn

    return wrap


def get_inferer(spatial_dims: int) -> Callable:
    """The inferer of ``spatial_dims``.

    Raises:
        KeyError: none registered (the message lists those that are).
    """
    try:
        return INFERERS[spatial_dims]
    except KeyError:
        raise KeyError(f"no inferer for spatial_dims {spatial_dims}; registered: {sorted(INFERERS)}") from None


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
