"""How a trained model predicts a whole case (:class:`InferOptions`), shared by
``fusionseg train`` and ``fusionseg predict`` (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InferOptions:
    """How a whole case is predicted.

    Attributes:
        mirror: test-time mirroring (2-D: the 4 in-plane flips; 3-D: the 8 flips of
            the three axes, per window as nnU-Net).
        batch_size: 2-D: slices per forward pass.
        device: where the networks run.
        roi_size: 3-D: sliding-window size (the training patch size).
        overlap: 3-D: fraction by which neighbouring windows overlap.
        sw_batch_size: 3-D: windows per forward pass.
        blend: 3-D: ``gaussian`` (importance weights, sigma 1/8 of the window) or
            ``constant`` averaging of overlapping windows.
        context: 2-D: neighbouring slices per side stacked as channels (2.5-D,
            ``sampling.context``).
        output: what the output channels are, ``classes`` (softmax) or ``regions``
            (sigmoid; :mod:`fusionseg.outputs`); ``regions`` / ``threshold`` of a
            region output (None: the defaults of :func:`fusionseg.outputs.output_head`).
    """

    mirror: bool = False
    batch_size: int = 16
    device: str = "cpu"
    roi_size: tuple[int, ...] | None = None
    overlap: float = 0.5
    sw_batch_size: int = 4
    blend: str = "gaussian"
    context: int = 0
    output: str = "classes"
    regions: tuple[str, ...] | None = None
    threshold: float | None = None

    def head(self, scheme):
        """The :class:`~fusionseg.outputs.OutputHead` of these options for ``scheme``."""
        from fusionseg.outputs import output_head

        return output_head(self.output, scheme, self.regions, self.threshold)

    @classmethod
    def from_config(cls, cfg, **changes) -> InferOptions:
        """The options of an :class:`~fusionseg.config.ExperimentConfig` (its
        ``inference`` section and, for 3-D, ``sampling.patch_size``), with ``changes``
        (e.g. ``mirror`` from ``fusionseg predict --tta``)."""
        inf = cfg.inference
        out = cfg.output
        values = {
            "mirror": inf.mirror,
            "output": out.kind,
            "regions": None if out.regions is None else tuple(out.regions),
            "threshold": out.threshold,
        }
        if cfg.spatial_dims == 2:
            values["context"] = cfg.sampling.context
        if cfg.spatial_dims == 3:
            values.update(
                roi_size=tuple(cfg.sampling.patch_size),
                overlap=0.5 if inf.overlap is None else inf.overlap,
                sw_batch_size=inf.sw_batch_size or 4,
                blend=inf.blend or "gaussian",
            )
        return cls(**{**values, **changes})
