"""PET segmentation rules without training (``strategy: threshold``), the floor that a
learned PET/CT model has to clear: an absolute SUV threshold (SUV >= 2.5, the common
clinical cut-off for FDG-avid tissue) and a fraction of the case's SUVmax (>= 40 %,
Erdi et al., Cancer 80(S12):2505, 1997). No connected-component selection: every
voxel over the threshold is tumour.
"""

from __future__ import annotations

import numpy as np

from fusionseg.config import ThresholdConfig


def threshold_mask(suv: np.ndarray, rule: ThresholdConfig) -> np.ndarray:
    """Tumour mask of a PET volume.

    Args:
        suv: (X, Y, Z) SUV, any float dtype, as read from the file (not clipped).
        rule: the rule and its value.
    Returns:
        uint8 (X, Y, Z), 1 where SUV >= the rule's threshold, 0 elsewhere; all 0 for a
        volume without positive uptake under ``suvmax_fraction``.
    """
    suv = np.asarray(suv, dtype=np.float64)
    if rule.rule == "suv":
        cut = rule.value
    else:
        peak = float(suv.max()) if suv.size else 0.0
        if peak <= 0:
            return np.zeros(suv.shape, dtype=np.uint8)
        cut = rule.value * peak
    return (suv >= cut).astype(np.uint8)


def rule_labels(case, rule: ThresholdConfig, scheme) -> np.ndarray:
    """Raw label map (X, Y, Z) uint8 of a case under ``rule``: its PET (SUV) image read
    from the file (unclipped), thresholded (:func:`threshold_mask`), tumour voxels set
    to the scheme's tumour value (the largest; 1 for the PET/CT scheme).

    Raises:
        DataError: the case has no PET image, or it cannot be read.
    """
    from fusionseg.constants import PET
    from fusionseg.data.io import load_nifti, read_array
    from fusionseg.errors import DataError

    if PET not in case.images:
        raise DataError(f"case {case.case_id} has no PET (SUV) image.", None, "a PET rule reads the SUV file; add it.")
    ref = case.images[PET]
    suv = read_array(load_nifti(ref.path), ref.path, channel=ref.channel)
    return (threshold_mask(suv, rule) * max(scheme.values)).astype(np.uint8)
