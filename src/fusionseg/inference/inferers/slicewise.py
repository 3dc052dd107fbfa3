"""The 2-D inferer (``spatial_dims: 2``): every axial slice of the case's brain box
predicted on its own (optionally with the four in-plane mirrorings), class
probabilities averaged over models, argmax (or sigmoid regions painted largest first,
``output.kind: regions``), un-cropped to the original grid
(:func:`fusionseg.inference.predict.predict_prepared`)."""

from __future__ import annotations

from fusionseg.inference.inferers import InferOptions, register_inferer
from fusionseg.inference.predict import predict_prepared


@register_inferer(2)
def slicewise(models, case, modalities, scheme, divisor: int, options: InferOptions = InferOptions()):
    return predict_prepared(
        models,
        case,
        modalities,
        scheme,
        divisor,
        options.batch_size,
        options.device,
        mirror=options.mirror,
        head=options.head(scheme),
        context=options.context,
    )
