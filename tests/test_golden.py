"""Golden check against the official BraTS 2023 legacy implementation.

For the 16 BraTS 2018 cases of ../shared/data, ``metrics-golden/pred/<case>.nii.gz`` is
scored against ``brats18/<case>/<case>_seg.nii.gz`` with both challenge presets used to
make ``expected_legacy.csv`` (BraTS-GLI: d=3, tau=50; BraTS-MEN: d=1, tau=50), and every
value is compared: Dice and lesion-wise Dice within 1e-6, HD95 and lesion-wise HD95
within 1e-3 mm, sensitivity/specificity within 1e-6, lesion counts exactly. The maximum
deviation per column is printed (run with ``-s`` to see it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GOLDEN = DATA / "metrics-golden"
BRATS18 = DATA / "brats18"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (GOLDEN / "expected_legacy.csv").exists() or not BRATS18.is_dir(),
        reason=f"golden data not found under {DATA} (needs metrics-golden/ and brats18/)",
    ),
]

#: our column -> (legacy CSV column, tolerance; 0 = exact)
COLUMNS = {
    "dice": ("Legacy_Dice", 1e-6),
    "hd95": ("Legacy_HD95", 1e-3),
    "lesion_dice": ("LesionWise_Score_Dice", 1e-6),
    "lesion_hd95": ("LesionWise_Score_HD95", 1e-3),
    "sensitivity": ("Sensitivity", 1e-6),
    "specificity": ("Specificity", 1e-6),
    "tp": ("Num_TP", 0),
    "fn": ("Num_FN", 0),
    "fp": ("Num_FP", 0),
}


def test_matches_legacy_brats2023_metrics_on_all_golden_cases():
    import nibabel as nib
    import pandas as pd

    from fusionseg.constants import BRATS2017
    from fusionseg.evaluation.evaluate import evaluate_case

    expected = pd.read_csv(GOLDEN / "expected_legacy.csv")
    cases = sorted(expected["case"].unique())
    assert len(cases) == 16
    deviation = {col: 0.0 for col in COLUMNS}
    failures = []
    n_checked = 0
    for case in cases:
        pred = np.asarray(nib.load(str(GOLDEN / "pred" / f"{case}.nii.gz")).dataobj)
        gt_img = nib.load(str(BRATS18 / case / f"{case}_seg.nii.gz"))
        gt = np.asarray(gt_img.dataobj)
        spacing = gt_img.header.get_zooms()[:3]
        for challenge in ("GLI", "MEN"):
            rows, _ = evaluate_case(pred, gt, spacing, BRATS2017, list(COLUMNS), challenge)
            for row in rows:
                ref = expected[
                    (expected["case"] == case)
                    & (expected["challenge"] == f"BraTS-{challenge}")
                    & (expected["Labels"] == row["region"])
                ]
                assert len(ref) == 1, (case, challenge, row["region"])
                ref = ref.iloc[0]
                for col, (legacy_col, tol) in COLUMNS.items():
                    dev = abs(float(row[col]) - float(ref[legacy_col]))
                    deviation[col] = max(deviation[col], dev)
                    if dev > tol:
                        failures.append(
                            f"{case} {challenge} {row['region']} {col}: ours {row[col]!r} legacy {ref[legacy_col]!r}"
                        )
                n_checked += 1
    print("\nmax |ours - legacy| per column over", n_checked, "case x challenge x region rows:")
    for col, dev in deviation.items():
        print(f"  {col:12s} ({COLUMNS[col][0]}): {dev:.3g}")
    assert n_checked == 16 * 2 * 3
    assert not failures, "\n".join(failures)
