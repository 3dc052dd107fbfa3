"""Claims as tests on per-case results (fusionseg.experiments.claims), the per-row
table CSV, the paired-dots figure and running a subset of a study's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fusionseg.errors import ConfigError
from fusionseg.experiments.claims import (
    HOLDS,
    NOT_HOLD,
    NOT_TESTED,
    UNDECIDED,
    Claim,
    ClaimTest,
    claims_frame,
    claims_markdown,
    evaluate_claims,
    run_test,
)
from fusionseg.experiments.study import load_study
from fusionseg.experiments.figures import paired_figure
from fusionseg.experiments.report import table_frame

REPO = Path(__file__).resolve().parents[1]


def _runs(n: int = 16, shift: float = 0.1, noise: float = 0.02, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A and B on n cases and three regions; B = A + shift on WT, A - shift on ET,
    A + pure noise on TC."""
    rng = np.random.default_rng(seed)
    rows_a, rows_b = [], []
    for i in range(n):
        for region, d in (("ET", -shift), ("TC", 0.0), ("WT", shift)):
            a = 0.5 + 0.2 * rng.random()
            b = a + d + noise * rng.standard_normal()
            rows_a.append({"case": f"c{i}", "region": region, "dice": a, "hd95": 10 * (1 - a)})
            rows_b.append({"case": f"c{i}", "region": region, "dice": b, "hd95": 10 * (1 - b)})
    return {"A": pd.DataFrame(rows_a), "B": pd.DataFrame(rows_b)}


def test_paired_tests_give_supported_contradicted_undecided():
    runs = _runs()
    up = run_test(ClaimTest(run="B", than="A", region="WT", expect="higher"), runs)
    assert up["status"] == "supported" and up["n"] == 16 and up["n_claimed_way"] == 16
    assert up["p_wilcoxon"] < 0.001 and up["mean_difference"] == pytest.approx(0.1, abs=0.02)
    assert run_test(ClaimTest(run="B", than="A", region="ET", expect="higher"), runs)["status"] == "contradicted"
    assert run_test(ClaimTest(run="B", than="A", region="ET", expect="lower"), runs)["status"] == "supported"
    flat = run_test(ClaimTest(run="B", than="A", region="TC", expect="higher"), _runs(noise=0.0))
    assert flat["status"] == "undecided" and flat["p_wilcoxon"] == 1.0
    # "level or better" holds without a significant loss, fails with one
    test = ClaimTest(run="B", than="A", region="TC", expect="not_lower")
    assert run_test(test, _runs(noise=0.0))["status"] == "supported"
    assert run_test(ClaimTest(run="B", than="A", region="ET", expect="not_lower"), runs)["status"] == "contradicted"
    assert run_test(ClaimTest(run="B", than="A", region="ET", expect="differs"), runs)["status"] == "supported"
    # lower HD95 is a claim like any other
    test = ClaimTest(run="B", than="A", metric="hd95", region="WT", expect="lower")
    assert run_test(test, runs)["status"] == "supported"


def test_mean_region_and_constant_thresholds():
    runs = _runs()
    mean = run_test(ClaimTest(run="B", than="A", region="mean", expect="higher"), runs)
    per_case = runs["B"].groupby("case")["dice"].mean()
    assert mean["mean"] == pytest.approx(per_case.mean())
    below = run_test(ClaimTest(run="A", region="WT", expect="below", value=0.9), runs)
    assert below["status"] == "supported" and below["ci95_high"] < 0.9
    assert run_test(ClaimTest(run="A", region="WT", expect="above", value=0.9), runs)["status"] == "contradicted"
    mid = float(runs["A"].query("region == 'WT'")["dice"].mean())
    assert run_test(ClaimTest(run="A", region="WT", expect="below", value=mid), runs)["status"] == "undecided"


def test_verdicts_and_missing_runs():
    runs = _runs()
    claims = [
        Claim(
            id="X1",
            text="B wins WT, loses ET",
            tests=[
                ClaimTest(run="B", than="A", region="WT", expect="higher"),
                ClaimTest(run="B", than="A", region="ET", expect="lower"),
            ],
        ),
        Claim(
            id="X2",
            text="B wins everywhere",
            tests=[
                ClaimTest(run="B", than="A", region="WT", expect="higher"),
                ClaimTest(run="B", than="A", region="ET", expect="higher"),
            ],
        ),
        Claim(id="X3", text="B wins TC", tests=[ClaimTest(run="B", than="A", region="TC", expect="higher")]),
        Claim(id="X4", text="C wins", tests=[ClaimTest(run="C", than="A", region="TC", expect="higher")]),
    ]
    out = evaluate_claims(claims, runs)
    assert [c["verdict"] for c in out][:2] == [HOLDS, NOT_HOLD]
    assert out[3]["verdict"] == NOT_TESTED and "not in this comparison" in out[3]["tests"][0]["reason"]
    flat = evaluate_claims(claims[2:3], _runs(noise=0.0))
    assert flat[0]["verdict"] == UNDECIDED
    text = claims_markdown(out)
    assert text.count("\n") == 1 + 2 + 2 + 1 + 1 and "**X1**" in text and f"**{HOLDS}**" in text
    frame = claims_frame(out)
    assert list(frame["claim"]) == ["X1", "X1", "X2", "X2", "X3", "X4"]


def test_claim_schema_rejects_mixed_operands():
    with pytest.raises(ValueError, match="give 'than'"):
        ClaimTest(run="B", region="WT", expect="higher", value=0.5)
    with pytest.raises(ValueError, match="give 'value'"):
        ClaimTest(run="B", than="A", region="WT", expect="below")
    with pytest.raises(ValueError):
        ClaimTest(run="B", than="A", region="WT", expect="better")


def test_table_frame_rows_and_paired_counts():
    runs = _runs()
    frame = table_frame(runs, "A", ["dice", "hd95", "absent"], ["ET", "TC", "WT"])
    assert len(frame) == 2 * 2 * 3  # run x metric x region; a metric no run has is skipped
    b_wt = frame.query("run == 'B' and region == 'WT' and metric == 'dice'").iloc[0]
    assert b_wt["n"] == 16 and b_wt["n_higher"] == 16 and b_wt["n_lower"] == 0 and b_wt["p_wilcoxon"] < 0.001
    assert b_wt["ci95_low"] <= b_wt["mean"] <= b_wt["ci95_high"]
    a_wt = frame.query("run == 'A' and region == 'WT' and metric == 'dice'").iloc[0]
    assert pd.isna(a_wt["p_wilcoxon"])  # the reference is not tested against itself
    assert b_wt["mean_difference"] == pytest.approx(b_wt["mean"] - a_wt["mean"])


def test_paired_figure(tmp_path):
    path = paired_figure(_runs(), "A", tmp_path / "paired.png", ["ET", "TC", "WT", "WT"])
    assert path.exists() and path.stat().st_size > 1000
    assert paired_figure({"A": _runs()["A"]}, "A", tmp_path / "none.png", ["WT"]) is None


def test_rows_select_a_subset_of_the_study():
    study = load_study(REPO / "configs" / "s0_table1.yaml", "cpu-small-cv", rows=["A", "C-dynamic"])
    assert [c.name for c in study.configs] == ["A", "C-dynamic"]
    assert study.name == "s0_table1_cpu-small-cv"
    assert study.configs[0].split.kind == "kfold" and study.configs[0].split.folds == 5
    # the CV protocol is cpu-small otherwise
    small = load_study(REPO / "configs" / "s0_table1.yaml", "cpu-small", rows=["A"]).configs[0]
    assert study.configs[0].model_dump(exclude={"split"}) == small.model_dump(exclude={"split"})
    assert {c.id for c in study.claims} == {f"S0-C{i}" for i in range(1, 10)}
    with pytest.raises(ConfigError, match="not runs of the study"):
        load_study(REPO / "configs" / "s0_table1.yaml", "cpu-small", rows=["A", "D"])
    with pytest.raises(ConfigError, match="must include the reference"):
        load_study(REPO / "configs" / "s0_table1.yaml", "cpu-small", rows=["B"])


def test_study_rejects_unknown_keys_and_bad_claims(tmp_path):
    base = {"base": {"data": {"root": str(tmp_path)}}, "runs": [{"name": "A"}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**base, "claim": []}))
    with pytest.raises(ConfigError, match="unknown study key"):
        load_study(path)
    path.write_text(
        yaml.safe_dump(
            {**base, "claims": [{"id": "X", "text": "t", "tests": [{"run": "A", "region": "WT", "expect": "higher"}]}]}
        )
    )
    with pytest.raises(ConfigError, match="invalid claims"):
        load_study(path)
