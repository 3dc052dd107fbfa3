"""Evaluation: metrics (BraTS 2023 whole-image and lesion-wise, surface distances,
PET/CT volumes, image quality), per-case and folder evaluation, summaries, CLI.

Pipeline position: inference -> **evaluation**. Definitions follow
docs/EVALUATION.md; every empty-mask case has a stated value, never NaN.
"""

from __future__ import annotations

from fusionseg.evaluation.aggregate import bootstrap_ci, paired_wilcoxon, summarize
from fusionseg.evaluation.evaluate import METRICS, evaluate_case
from fusionseg.evaluation.folder import evaluate_folder

__all__ = ["METRICS", "bootstrap_ci", "evaluate_case", "evaluate_folder", "paired_wilcoxon", "summarize"]
