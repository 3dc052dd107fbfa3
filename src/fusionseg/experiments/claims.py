"""A paper's claims, checked against a comparison's per-case results.

A study YAML may list the source paper's claims (``claims:``), each as one or more
*tests* on the comparison's per-case metrics::

    claims:
      - id: S0-C2
        text: Decoupled B beats A on WT only, losing on ET and TC.
        paper: "Dice % B 65.15/75.61/75.90 vs A 77.98/77.69/72.44 (ET/TC/WT)"
        why_ours_may_differ: 2-D CPU scale, glioma instead of meningioma.
        tests:
          - {run: B, than: A, metric: dice, region: WT, expect: higher}
          - {run: B, than: A, metric: dice, region: ET, expect: lower}
          - {run: B, metric: lesion_dice, region: ET, expect: below, value: 0.8698}

Test kinds (``expect``):

- ``higher`` / ``lower``: ``run`` against ``than`` on the cases both have, paired
  two-sided Wilcoxon signed-rank test (:func:`~fusionseg.evaluation.aggregate.paired_wilcoxon`).
  *supported* when the mean paired difference has the claimed sign and p < alpha;
  *contradicted* when it has the other sign and p < alpha; otherwise *undecided*.
- ``not_lower`` ("level or better"): *contradicted* when ``run`` is lower with p <
  alpha, *supported* otherwise (absence of a significant loss; say so when citing it).
- ``differs`` (either way, e.g. "sensitive to lambda_f"): *supported* when p < alpha,
  otherwise *undecided* (a paired test cannot show two runs equal).
- ``below`` / ``above`` a constant ``value``: *supported* when the whole 95 % bootstrap
  CI of ``run``'s mean is on the claimed side, *contradicted* when it is wholly on the
  other side, otherwise *undecided*.

``region: mean`` is the per-case mean over the label scheme's regions (S0's "mean
Dice"). A claim *holds* when every test is supported, *does not hold* when any test is
contradicted, is *undecided at this sample size* otherwise, and is *not tested* when a
run it needs is not in the comparison (e.g. a subset run with ``--rows``). No
correction for multiple tests is applied; the p-values are reported so a reader can.
"""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fusionseg.evaluation.aggregate import bootstrap_ci, paired_wilcoxon

#: Significance level of the claim tests.
ALPHA = 0.05

HOLDS, NOT_HOLD, UNDECIDED, NOT_TESTED = ("holds", "does not hold", "undecided at this sample size", "not tested")


PAIRED = ("higher", "lower", "not_lower", "differs")


class ClaimTest(BaseModel):
    """One testable statement about per-case metrics (see module docstring)."""

    model_config = ConfigDict(extra="forbid")

    run: str
    than: str | None = None
    metric: str = "dice"
    region: str
    expect: Literal["higher", "lower", "not_lower", "differs", "below", "above"]
    value: float | None = None

    @model_validator(mode="after")
    def _operands(self) -> "ClaimTest":
        paired = self.expect in PAIRED
        if paired and (self.than is None or self.value is not None):
            raise ValueError(f"expect: {self.expect} compares two runs: give 'than', not 'value'")
        if not paired and (self.value is None or self.than is not None):
            raise ValueError(f"expect: {self.expect} compares a run with a constant: give 'value', not 'than'")
        return self

    def describe(self) -> str:
        where = f"{self.metric} {self.region}"
        if self.than is not None:
            verb = {"differs": "differs from"}.get(self.expect, self.expect.replace("_", " ") + " than")
            return f"{self.run} {verb} {self.than} ({where})"
        return f"{self.run} {self.expect} {self.value:g} ({where})"


class Claim(BaseModel):
    """A numbered claim of a source paper and the tests that decide it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    paper: str = ""
    why_ours_may_differ: str = ""
    tests: list[ClaimTest] = Field(min_length=1)


def _values(per_case: pd.DataFrame, metric: str, region: str) -> pd.Series:
    """Per-case values of ``metric`` in ``region`` (``mean``: over all regions), by case."""
    if metric not in per_case.columns:
        raise KeyError(metric)
    sub = per_case if region == "mean" else per_case[per_case["region"] == region]
    if sub.empty:
        raise KeyError(region)
    return sub.groupby("case")[metric].mean().astype(float)


def run_test(test: ClaimTest, runs: Mapping[str, pd.DataFrame], alpha: float = ALPHA) -> dict:
    """Outcome of one test: the numbers and ``status`` (supported / contradicted /
    undecided / not tested). Missing runs, metrics or regions give *not tested*."""
    record = {
        "test": test.describe(),
        "run": test.run,
        "than": test.than,
        "metric": test.metric,
        "region": test.region,
        "expect": test.expect,
        "value": test.value,
    }
    needed = [test.run] + ([test.than] if test.than else [])
    absent = [r for r in needed if r not in runs]
    if absent:
        return {**record, "status": NOT_TESTED, "reason": f"run(s) {absent} not in this comparison"}
    try:
        a, b = (
            (_values(runs[r], test.metric, test.region) for r in needed)
            if test.than
            else (_values(runs[test.run], test.metric, test.region), None)
        )
    except KeyError as exc:
        return {**record, "status": NOT_TESTED, "reason": f"no {exc.args[0]} in the results"}
    return {**record, **(_against_value(test, a) if b is None else _paired(test, a, b, alpha))}


def _against_value(test: ClaimTest, a: pd.Series) -> dict:
    """A claim about one run's mean: the 95 % bootstrap CI against ``test.value``."""
    low, high = bootstrap_ci(a.to_numpy())
    below = test.expect == "below"
    supported = high < test.value if below else low > test.value
    contradicted = low >= test.value if below else high <= test.value
    status = "supported" if supported else "contradicted" if contradicted else "undecided"
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "sd": _sd(a),
        "ci95_low": low,
        "ci95_high": high,
        "status": status,
    }


def _paired(test: ClaimTest, a: pd.Series, b: pd.Series, alpha: float) -> dict:
    """A claim comparing two runs over their common cases: paired Wilcoxon test."""
    common = a.index.intersection(b.index)
    x, y = a[common].to_numpy(), b[common].to_numpy()
    diff = x - y
    p = paired_wilcoxon(x, y)["p_value"] if len(common) >= 2 else 1.0
    sign = 1 if test.expect in ("higher", "not_lower") else -1
    significant = p < alpha and diff.mean() != 0
    same_way = bool(np.sign(diff.mean()) == sign)
    if test.expect == "differs":
        status = "supported" if significant else "undecided"
        sign = int(np.sign(diff.mean())) or 1
    elif test.expect == "not_lower":
        status = "contradicted" if significant and not same_way else "supported"
    else:
        status = ("supported" if same_way else "contradicted") if significant else "undecided"
    return {
        "n": int(len(common)),
        "mean": float(x.mean()),
        "sd": _sd(x),
        "than_mean": float(y.mean()),
        "than_sd": _sd(y),
        "mean_difference": float(diff.mean()),
        "p_wilcoxon": float(p),
        "n_claimed_way": int((np.sign(diff) == sign).sum()),
        "n_tied": int((diff == 0).sum()),
        "status": status,
    }


def _sd(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.std(ddof=1)) if x.size > 1 else 0.0


def verdict(statuses: list[str]) -> str:
    """Claim verdict from its tests' statuses (see module docstring)."""
    if any(s == NOT_TESTED for s in statuses):
        return NOT_TESTED
    if any(s == "contradicted" for s in statuses):
        return NOT_HOLD
    if all(s == "supported" for s in statuses):
        return HOLDS
    return UNDECIDED


def evaluate_claims(claims: list[Claim], runs: Mapping[str, pd.DataFrame], alpha: float = ALPHA) -> list[dict]:
    """Every claim with its tests' outcomes and its verdict."""
    out = []
    for claim in claims:
        tests = [run_test(t, runs, alpha) for t in claim.tests]
        out.append(
            {
                "id": claim.id,
                "text": claim.text,
                "paper": claim.paper,
                "why_ours_may_differ": claim.why_ours_may_differ,
                "tests": tests,
                "verdict": verdict([t["status"] for t in tests]),
            }
        )
    return out


def _ours(t: dict) -> str:
    if "n" not in t:
        return f"not tested: {t.get('reason', '')}"
    if t.get("than") is not None:
        return (
            f"{t['mean']:.3f} ± {t['sd']:.3f} vs {t['than_mean']:.3f} ± {t['than_sd']:.3f}; "
            f"p {t['p_wilcoxon']:.2g}; {t['n_claimed_way']}/{t['n']} cases the claimed way"
        )
    return f"{t['mean']:.3f} ± {t['sd']:.3f} (95 % CI {t['ci95_low']:.3f}-{t['ci95_high']:.3f}, n {t['n']})"


def claims_markdown(results: list[dict]) -> str:
    """The claims table: one line per test, the claim's verdict on its first line."""
    lines = [
        "| claim | paper | test | ours (mean ± sd; paired Wilcoxon p; cases) | test result | "
        "verdict | why ours may differ |",
        "|---|---|---|---|---|---|---|",
    ]
    for claim in results:
        for i, t in enumerate(claim["tests"]):
            head = (f"**{claim['id']}** {claim['text']}", claim["paper"]) if i == 0 else ("", "")
            tail = (f"**{claim['verdict']}**", claim["why_ours_may_differ"]) if i == 0 else ("", "")
            lines.append(
                f"| {head[0]} | {head[1]} | {t['test']} | {_ours(t)} | {t['status']} | {tail[0]} | {tail[1]} |"
            )
    return "\n".join(lines)


def claims_frame(results: list[dict]) -> pd.DataFrame:
    """One row per test, with its claim's id and verdict (for ``claims.csv``)."""
    rows = [{"claim": c["id"], "verdict": c["verdict"], **t} for c in results for t in c["tests"]]
    return pd.DataFrame(rows)
