"""Modality-subset reports (S1 Table 1 layout) on small synthetic per-case frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from fusionseg.experiments.subset_report import (
    missing_one_loss,
    paired_subset_test,
    parse_subsets,
    subset_means,
    subset_name,
    subset_order,
    subset_table,
    write_subset_tables,
)

MODS4 = ["t1", "t1ce", "t2", "flair"]
MODS2 = ["t1ce", "flair"]
SUBSETS2 = ["flair", "t1ce", "t1ce+flair"]

#: run -> case -> values for (flair, t1ce, t1ce+flair); region TC holds half of them.
VALUES = {
    "A": {"c0": [0.8, 0.6, 0.9], "c1": [0.7, 0.5, 0.9], "c2": [0.9, 0.4, 0.8], "c3": [0.6, 0.3, 0.7]},
    "B": {"c0": [0.7, 0.6, 0.8], "c1": [0.7, 0.2, 0.8], "c2": [0.5, 0.4, 0.6], "c3": [0.6, 0.35, 0.7]},
}


def _frame(values=VALUES, subsets=SUBSETS2) -> pd.DataFrame:
    rows = []
    for run, cases in values.items():
        for case, vals in cases.items():
            for subset, v in zip(subsets, vals):
                for region, scale in (("WT", 1.0), ("TC", 0.5)):
                    rows.append(
                        {"run": run, "case": case, "fold": 0, "subset": subset, "region": region, "dice": v * scale}
                    )
    return pd.DataFrame(rows)


# --- subsets ----------------------------------------------------------------------


def test_subset_order_four_modalities_is_s1_row_order():
    short = {"t1": "T1", "t1ce": "T1c", "t2": "T2", "flair": "F"}
    got = ["+".join(short[m] for m in s) for s in subset_order(MODS4)]
    assert got == [
        "F", "T2", "T2+F", "T1c", "T1c+F", "T1c+T2", "T1c+T2+F", "T1",
        "T1+F", "T1+T2", "T1+T2+F", "T1+T1c", "T1+T1c+F", "T1+T1c+T2", "T1+T1c+T2+F",
    ]  # fmt: skip
    assert subset_order(MODS4)[-1] == tuple(MODS4)


def test_subset_order_two_modalities_and_names():
    assert subset_order(MODS2) == [("flair",), ("t1ce",), ("t1ce", "flair")]
    assert [subset_name(s) for s in subset_order(MODS2)] == SUBSETS2
    with pytest.raises(ValueError, match="distinct"):
        subset_order(["t1", "t1"])


def test_parse_subsets_orders_and_deduplicates():
    assert parse_subsets("all", MODS4) == subset_order(MODS4)
    got = parse_subsets(["t1+t1ce+t2+flair", ["flair", "t1ce"], "flair", "t1ce+flair", "FLAIR"], MODS4)
    assert got == [("flair",), ("t1ce", "flair"), ("t1", "t1ce", "t2", "flair")]
    assert parse_subsets("t2,flair+t2", MODS4) == [("t2",), ("t2", "flair")]


@pytest.mark.parametrize("value, needle", [(["t1ce+pd"], "'pd'"), ([["t1", "dwi"]], "'dwi'"), ("t1ce+", None)])
def test_parse_subsets_unknown_modality_names_it_and_the_valid_ones(value, needle):
    if needle is None:  # "t1ce+" is t1ce alone: empty names are skipped
        assert parse_subsets(value, MODS4) == [("t1ce",)]
        return
    with pytest.raises(ValueError, match=needle) as err:
        parse_subsets(value, MODS4)
    assert str(MODS4) in str(err.value)


@pytest.mark.parametrize("value", [[""], [[]], ["+"], []])
def test_parse_subsets_empty_subset_is_an_error(value):
    with pytest.raises(ValueError, match="subset"):
        parse_subsets(value, MODS4)


# --- tables -----------------------------------------------------------------------


def test_table_layout_markers_row_order_and_mean_row():
    df = _frame().sample(frac=1.0, random_state=0)  # row order of the input must not matter
    df.loc[df["subset"] == "t1ce+flair", "subset"] = "flair+t1ce"  # another channel order
    table = subset_table(df, MODS2, ["WT", "TC"], runs=["B", "A"])

    assert list(table.columns) == ["t1ce", "flair", "WT B", "WT A", "TC B", "TC A"]
    assert list(table.index) == [*SUBSETS2, "mean"]
    assert table[["t1ce", "flair"]].values.tolist() == [["○", "●"], ["●", "○"], ["●", "●"], ["", ""]]

    per_case = [np.mean(v) for v in VALUES["A"].values()]  # hand: per-case mean over subsets
    m, sd = np.mean(per_case), np.std(per_case, ddof=1)
    assert table.loc["mean", "WT A"].startswith(f"{m:.3f} ± {sd:.3f} [")
    assert table.loc["flair", "TC B"].startswith(f"{np.mean([0.35, 0.35, 0.25, 0.3]):.3f} ± ")
    assert "(n =" not in " ".join(table.iloc[:, 2:].values.ravel())

    means = subset_means(df, MODS2, ["WT", "TC"])
    row = means[(means["subset"] == "mean") & (means["run"] == "A") & (means["region"] == "WT")].iloc[0]
    assert row["mean"] == pytest.approx(m) and row["sd"] == pytest.approx(sd) and row["n"] == 4
    assert (means["lo"] <= means["mean"]).all() and (means["mean"] <= means["hi"]).all()
    assert (means["lo"] < means["hi"]).all()


def test_table_counts_nan_and_missing_subsets():
    df = _frame()
    nan_row = (df["run"] == "A") & (df["case"] == "c1") & (df["subset"] == "flair") & (df["region"] == "WT")
    df.loc[nan_row, "dice"] = np.nan
    gone = (df["run"] == "A") & (df["case"] == "c2") & (df["subset"] == "t1ce") & (df["region"] == "WT")
    df = df[~gone]
    table = subset_table(df, MODS2, ["WT"])
    means = subset_means(df, MODS2, ["WT"]).set_index(["subset", "run"])

    assert table.loc["flair", "WT A"].endswith("(n = 3 of 4)")
    assert table.loc["t1ce", "WT A"].endswith("(n = 3 of 4)")
    assert table.loc["mean", "WT A"].endswith("(n = 2 of 4)")
    assert not table.loc["flair", "WT B"].endswith(")")
    assert means.loc[("flair", "A"), ["n", "n_nan", "n_missing"]].tolist() == [3, 1, 0]
    assert means.loc[("t1ce", "A"), ["n", "n_nan", "n_missing"]].tolist() == [3, 0, 1]
    kept = [np.mean(VALUES["A"][c]) for c in ("c0", "c3")]
    assert means.loc[("mean", "A"), "mean"] == pytest.approx(np.mean(kept))
    assert means.loc[("flair", "A"), "mean"] == pytest.approx(np.mean([0.8, 0.9, 0.6]))


def test_table_omits_absent_subsets_and_rejects_bad_input():
    df = _frame()
    table = subset_table(df[df["subset"] != "t1ce"], MODS2, ["WT"])
    assert list(table.index) == ["flair", "t1ce+flair", "mean"]
    with pytest.raises(ValueError, match="'C'"):
        subset_table(df, MODS2, ["WT"], runs=["A", "C"])
    with pytest.raises(ValueError, match="'ET'"):
        subset_table(df, MODS2, ["ET"])
    with pytest.raises(ValueError, match="'t2'"):
        subset_table(df.replace({"subset": {"flair": "t2"}}), MODS2, ["WT"])
    with pytest.raises(ValueError, match="repeat"):
        subset_table(pd.concat([df, df.assign(fold=1)]), MODS2, ["WT"])


def test_write_subset_tables_files_are_complete(tmp_path):
    df = _frame()
    df.loc[0, "dice"] = np.nan
    conventions = {"missing modalities": "zero-filled channels", "post-processing": "none"}
    paths = write_subset_tables(df, MODS2, ["WT", "TC"], tmp_path / "out", conventions=conventions)

    assert [p.name for p in paths] == ["modality_subsets.md", "modality_subsets.csv", "modality_subsets.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no temporaries
    md = paths[0].read_text()
    assert "## Dice per available-modality subset" in md and "| t1ce | flair | WT A | WT B | TC A | TC B |" in md
    assert "- missing modalities: zero-filled channels\n- post-processing: none" in md
    assert "(n = 3 of 4)" in md and "1 NaN" in md and "bootstrap" in md
    csv = pd.read_csv(paths[1], keep_default_na=False, na_values=[""])
    expected = subset_means(df, MODS2, ["WT", "TC"])
    pd.testing.assert_frame_equal(csv, expected, check_dtype=False)
    png = paths[2].read_bytes()
    assert len(png) > 1000 and png[:8] == b"\x89PNG\r\n\x1a\n"


# --- paired tests -----------------------------------------------------------------


def test_paired_subset_test_matches_hand_and_scipy():
    out = paired_subset_test(_frame(), "A", "B", ["WT", "TC"]).set_index("region")
    a = np.array([np.mean(v) for v in VALUES["A"].values()])
    b = np.array([np.mean(v) for v in VALUES["B"].values()])
    for region, scale in (("WT", 1.0), ("TC", 0.5)):
        row = out.loc[region]
        assert row["mean_a"] == pytest.approx(scale * a.mean()) and row["mean_b"] == pytest.approx(scale * b.mean())
        assert row["mean_difference"] == pytest.approx(scale * (a - b).mean())
        assert row["n"] == 4 and row["n_subsets"] == 3
        assert row["p_wilcoxon"] == pytest.approx(wilcoxon(scale * a, scale * b).pvalue)


def test_paired_subset_test_excludes_incomplete_and_nan_cases():
    df = _frame()
    df = df[~((df["run"] == "B") & (df["case"] == "c0") & (df["subset"] == "flair"))]
    df.loc[(df["run"] == "A") & (df["case"] == "c1"), "dice"] = np.nan
    row = paired_subset_test(df, "A", "B", ["WT"]).iloc[0]
    assert (row["n"], row["n_nan"], row["n_incomplete"]) == (2, 1, 1)
    keep = ("c2", "c3")
    assert row["mean_a"] == pytest.approx(np.mean([np.mean(VALUES["A"][c]) for c in keep]))
    with pytest.raises(ValueError, match="different subsets"):
        paired_subset_test(df[~((df["run"] == "B") & (df["subset"] == "t1ce"))], "A", "B", ["WT"])
    with pytest.raises(ValueError, match="'Z'"):
        paired_subset_test(df, "A", "Z", ["WT"])


def test_missing_one_loss_matches_hand_and_scipy():
    df = _frame()
    df.loc[df["subset"] == "t1ce+flair", "subset"] = "flair+t1ce"
    row = missing_one_loss(df, "A", ("t1ce", "flair"), "flair", ["WT"]).iloc[0]
    full = np.array([v[2] for v in VALUES["A"].values()])
    less = np.array([v[1] for v in VALUES["A"].values()])
    assert (row["full"], row["reduced"]) == ("t1ce+flair", "t1ce")
    assert row["mean_full"] == pytest.approx(full.mean()) and row["mean_without"] == pytest.approx(less.mean())
    assert row["mean_loss"] == pytest.approx((full - less).mean()) and row["n"] == 4
    assert row["p_wilcoxon"] == pytest.approx(wilcoxon(full, less).pvalue)


def test_missing_one_loss_errors():
    df = _frame()
    with pytest.raises(ValueError, match="without='t2'"):
        missing_one_loss(df, "A", ("t1ce", "flair"), "t2", ["WT"])
    with pytest.raises(ValueError, match="flair"):
        missing_one_loss(df[df["subset"] != "flair"], "A", ("t1ce", "flair"), "t1ce", ["WT"])
    with pytest.raises(ValueError, match="'C'"):
        missing_one_loss(df, "C", ("t1ce", "flair"), "t1ce", ["WT"])
