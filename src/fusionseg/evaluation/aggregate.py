"""Summaries of per-case metrics: mean, median, sd, 95% bootstrap CI, and a paired
Wilcoxon signed-rank test for comparing two methods on the same cases.

The bootstrap is the percentile bootstrap of the mean over cases (Efron & Tibshirani
1993), resampling cases with replacement, with a fixed seed so summaries are
reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Bootstrap resamples and seed used by default (stated in summary.json).
N_BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Args:
        values: per-case values (finite).
        n_boot: number of resamples.
        seed: RNG seed (numpy ``default_rng``).
        level: confidence level in (0, 1).
    Returns:
        (low, high); a single value gives (value, value).
    Raises:
        ValueError: empty input or non-finite values.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value.")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_ci got NaN or inf values; metrics must be finite.")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def describe(
    values: Sequence[float] | np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED
) -> dict[str, float | int]:
    """mean, median, sd (ddof=1; 0 for one value), ci95_low, ci95_high, n."""
    x = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "ci95_low": low,
        "ci95_high": high,
        "n": int(x.size),
    }


def summarize(
    per_case: pd.DataFrame, metrics: Sequence[str] | None = None, n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED
) -> dict[str, dict]:
    """Summary per region and metric of a tidy per-case table.

    Args:
        per_case: DataFrame with columns ``case``, ``region`` and one per metric.
        metrics: metric columns to summarize (default: all except case/region).
        n_boot, seed: bootstrap settings.
    Returns:
        ``{region: {metric: describe(...)}}``, regions in order of appearance.
    Raises:
        KeyError: a requested metric column is missing.
    """
    if metrics is None:
        metrics = [c for c in per_case.columns if c not in ("case", "region")]
    missing = [m for m in metrics if m not in per_case.columns]
    if missing:
        raise KeyError(f"metric columns {missing} not in the per-case table (columns: {list(per_case.columns)})")
    out: dict[str, dict] = {}
    for region in pd.unique(per_case["region"]):
        sub = per_case[per_case["region"] == region]
        out[str(region)] = {m: describe(sub[m].to_numpy(), n_boot, seed) for m in metrics}
    return out


def paired_wilcoxon(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alternative: str = "two-sided"
) -> dict[str, float | int]:
    """Paired Wilcoxon signed-rank test of two methods' per-case values (same case order).

    Args:
        a, b: per-case values of method A and B, same length, paired by position.
        alternative: "two-sided", "greater" (A > B) or "less".
    Returns:
        dict with ``statistic``, ``p_value``, ``n`` (pairs), ``median_difference``
        (median of a - b). All differences zero -> statistic 0, p_value 1.
    Raises:
        ValueError: different lengths, fewer than one pair, non-finite values.
    """
    from scipy.stats import wilcoxon

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"a and b must be 1-D of the same non-zero length, got {x.shape} and {y.shape}.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("paired_wilcoxon got NaN or inf values.")
    diff = x - y
    if np.all(diff == 0):
        return {"statistic": 0.0, "p_value": 1.0, "n": int(x.size), "median_difference": 0.0}
    res = wilcoxon(x, y, alternative=alternative)
    return {
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "n": int(x.size),
        "median_difference": float(np.median(diff)),
    }
