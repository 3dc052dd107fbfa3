"""The training loop (Lightning Fabric) and its callbacks.

- :mod:`fusionseg.training.stage`: :class:`Stage`, a strategy's unit of training.
- :mod:`fusionseg.training.loop`: :func:`~fusionseg.training.loop.fit`, the epoch loop.
- :mod:`fusionseg.training.callbacks`: checkpoints, early stopping, CSV and TensorBoard logs.

Only :class:`Stage` is imported here, so that importing a strategy does not load
Lightning. The package imports nothing from ``fusionseg.strategies`` or
``fusionseg.experiments``.
"""

from fusionseg.training.stage import Stage

__all__ = ["Stage"]
