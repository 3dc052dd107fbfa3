"""Sampler registry: how a fold's training and validation samples are drawn.

A sampler is registered for one ``spatial_dims`` of the config (2: axial slices,
:mod:`fusionseg.data.samplers.slices`). Every module of this package is imported when
the package is, so a new sampler (e.g. 3-D patches) is one new file here that calls
:func:`register_sampler`; nothing else changes.

A sampler is a callable ``(cfg, fold, prepared, modalities, divisor) -> FoldSamples``:
``cfg`` the :class:`~fusionseg.config.ExperimentConfig`, ``fold`` the split's fold
record (``train`` / ``val`` / ``test`` case ids, and ``unlabelled`` ids when the
config trains a pretext stage on unlabelled cases too), ``prepared`` every case those
ids name (:class:`~fusionseg.data.preprocess.PreparedCase` by id), ``modalities`` the input
channels in order, ``divisor`` the size multiple the network needs. Samples are dicts
with at least ``image`` (C, *spatial) float32, ``label`` (*spatial) int64 and
``available`` (C,) bool (which modalities are present).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

from torch.utils.data import Dataset


@dataclass
class FoldSamples:
    """A fold's training and validation datasets, and facts recorded in fit.json;
    ``extra``: other training sets by name, for stages that train on something else
    (:attr:`fusionseg.training.stage.Stage.data`, e.g. ``"pretext"``)."""

    train: Dataset
    val: Dataset
    info: dict = field(default_factory=dict)
    extra: dict[str, Dataset] = field(default_factory=dict)

    def for_stage(self, data: str) -> Dataset:
        """The training set a stage names (``"train"``: :attr:`train`).

        Raises:
            KeyError: a set the sampler did not build.
        """
        if data == "train":
            return self.train
        if data not in self.extra:
            raise KeyError(f"the sampler built no training set {data!r} (it has train, {sorted(self.extra)})")
        return self.extra[data]


SAMPLERS: dict[int, Callable[..., FoldSamples]] = {}


def register_sampler(spatial_dims: int) -> Callable:
    """Decorator: register a sampler for ``spatial_dims`` (one per value)."""

    def wrap(fn: Callable[..., FoldSamples]) -> Callable[..., FoldSamples]:
        if spatial_dims in SAMPLERS:
            raise ValueError(f"a sampler for spatial_dims {spatial_dims} is already registered")
        SAMPLERS[spatial_dims] = fn
        return fn

    return wrap


def get_sampler(spatial_dims: int) -> Callable[..., FoldSamples]:
    """The sampler of ``spatial_dims``.

    Raises:
        KeyError: none registered (the message lists those that are).
    """
    try:
        return SAMPLERS[spatial_dims]
    except KeyError:
        raise KeyError(f"no sampler for spatial_dims {spatial_dims}; registered: {sorted(SAMPLERS)}") from None


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
