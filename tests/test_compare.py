"""Study YAMLs (protocols, runs) and a tiny S0-style comparison end to end."""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import tiny_config, train_via_cli
from fusionseg.errors import ConfigError
from fusionseg.experiments.compare import run_comparison
from fusionseg.experiments.study import deep_merge, load_study

REPO = Path(__file__).resolve().parents[1]


def test_deep_merge_overrides_recursively():
    assert deep_merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"c": 3}, "l": [2]}) == {"a": {"b": 1, "c": 3}, "l": [2]}


def test_s0_study_expands_every_row_of_tables_1_and_2():
    study = load_study(REPO / "configs" / "s0_table1.yaml", "cpu-small")
    names = [c.name for c in study.configs]
    assert names == [
        "A",
        "B",
        "C-dynamic",
        "C-static-5e-7",
        "C-static-1e-6",
        "C-static-5e-6",
        "C-static-1e-5",
        "C-static-5e-5",
        "C-static-1e-4",
        "C-seg-only",
    ]
    by = {c.name: c for c in study.configs}
    assert by["A"].strategy == "early" and by["B"].strategy == "decoupled"
    assert by["C-static-5e-6"].fusion.lambda_f == 5e-6 and by["C-static-5e-6"].fusion.weighting == "static"
    assert by["C-dynamic"].fusion.weighting == "dynamic" and by["C-seg-only"].fusion.weighting == "seg_only"
    assert by["A"].sampling.mode == "central" and by["A"].evaluation.scope == "sampled_slices"
    assert by["B"].fusion.model.kwargs == {"n": 8, "blocks": 4}
    paper = load_study(REPO / "configs" / "s0_table1.yaml", "paper")
    assert paper.configs[0].sampling.mode == "central" and paper.configs[0].sampling.central_k == 10
    assert paper.name == "s0_table1_paper"
    with pytest.raises(ConfigError, match="unknown protocol"):
        load_study(REPO / "configs" / "s0_table1.yaml", "gpu-huge")


def test_tiny_study_writes_both_tables_with_every_row(phantom_dataset, tmp_path):
    data = phantom_dataset("brats2018", n_cases=6)
    study = {
        "study": "tiny_s0",
        "reference": "A",
        "base": {
            "data": {"root": str(data), "modalities": ["t1ce", "flair"], "cache_dir": str(tmp_path / "cache")},
            "model": {"kwargs": {"channels": [4, 8], "bottleneck": 8, "norm": "batch"}},
            "train": {"epochs": 2, "batch_size": 8, "max_steps_per_epoch": 1},
            "fusion": {
                "perceptual_features": "random",
                "epochs": 1,
                "model": {"name": "lrrnet", "kwargs": {"n": 4, "blocks": 1}},
            },
            "split": {"kind": "holdout", "test_fraction": 0.34, "val_fraction": 0.2},
            "evaluation": {"overlays": 0},
        },
        "runs": [
            {"name": "A", "strategy": "early", "postprocess": {"method": "validation", "candidates_mm3": [50]}},
            {"name": "B", "strategy": "decoupled"},
            {"name": "C-dynamic", "strategy": "joint", "fusion": {"weighting": "dynamic"}},
        ],
        "tables": [
            {"name": "table1", "metrics": ["dice", "lesion_dice"], "regions": ["ET", "TC", "WT"]},
            {"name": "table2", "metrics": ["hd95", "lesion_hd95"], "regions": ["ET", "TC", "WT"]},
        ],
        "pairs": [["C-dynamic", "B"]],
        "claims": [
            {
                "id": "T-C1",
                "text": "B beats A on WT",
                "tests": [{"run": "B", "than": "A", "metric": "dice", "region": "WT", "expect": "higher"}],
            },
            {
                "id": "T-C2",
                "text": "C-static beats A",
                "tests": [{"run": "C-static", "than": "A", "metric": "dice", "region": "mean", "expect": "higher"}],
            },
        ],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = run_comparison(load_study(path), tmp_path / "runs", progress=False)
    folder = out["dir"]
    for table in ("table1.md", "table2.md"):
        text = (folder / table).read_text()
        for row in ("| **A** |", "| B |", "| C-dynamic |"):
            assert row in text, (table, row)
    assert "LW Dice ET" in (folder / "table1.md").read_text()
    assert "(p " in (folder / "table1.md").read_text()
    assert "both empty -> 1" in (folder / "table1.md").read_text()  # the empty-mask rules travel with the table
    assert re.search(r"Mean ± sd over \d+(-\d+)? test cases", (folder / "comparison.md").read_text())
    assert (folder / "examples.png").exists() and (folder / "fusion_quality.md").exists()
    quality = (folder / "fusion_quality.md").read_text()
    assert "| B |" in quality and "| C-dynamic |" in quality and "| A |" not in quality
    summary = json.loads((folder / "B" / "summary.json").read_text())
    assert summary["perceptual_features"] == "random"  # recorded with the result
    assert set(summary["fusion_quality"]) >= {"psnr_detail", "ssim_detail", "psnr_salient", "ssim_salient"}
    rows = pd.read_csv(folder / "comparison.csv")
    assert set(rows["run"]) == {"A", "B", "C-dynamic"}
    assert rows[["dice", "hd95", "lesion_dice", "lesion_hd95"]].notna().all().all()
    # each table also as CSV: one row per run x region x metric, paired tests against A
    csv = pd.read_csv(folder / "table1.csv")
    assert len(csv) == 3 * 3 * 2 and set(csv["metric"]) == {"dice", "lesion_dice"}
    assert csv.query("run != 'A'")["n_paired"].eq(len(rows["case"].unique())).all()
    assert (folder / "paired_dice.png").exists()
    claims = (folder / "claims.md").read_text()
    assert "**T-C1**" in claims and "**T-C2**" in claims and "not tested" in claims  # no C-static run
    # every run used the same split
    tests = {
        json.loads((folder / n / "splits.json").read_text())["folds"][0]["test"].__repr__()
        for n in ("A", "B", "C-dynamic")
    }
    assert len(tests) == 1
    # pairs: C-dynamic tested against B (not only against the reference A)
    pairs = (folder / "pairs.md").read_text()
    assert pairs.count("| C-dynamic vs B |") == 3 * 2 * 2  # 3 regions x 2 metrics x 2 tables
    paired = pd.read_csv(folder / "pairs.csv")
    assert set(paired["reference"]) == {"B"} and set(paired["run"]) == {"C-dynamic"}
    # validation scores, for choosing a row without the test cases: each fold's fit.json
    validation = (folder / "validation.md").read_text()
    fits = {n: json.loads((folder / n / "fold_0" / "fit.json").read_text()) for n in ("A", "B", "C-dynamic")}
    scores = {n: f["stages"][-1]["best_val_score"] for n, f in fits.items()}
    for name, score in scores.items():
        assert f"| {name} | {score:.4f} ± 0.0000 | {score:.4f} |" in validation
    assert f"Highest mean validation Dice: **{max(scores, key=scores.get)}**" in validation
    summary_a = json.loads((folder / "A" / "summary.json").read_text())["validation"]
    assert summary_a["per_fold"] == {"0": round(scores["A"], 6)}
    # A chose its post-processing on the validation cases: that score after whole-volume
    # inference is tabulated too (the other rows chose nothing, so they are absent there)
    after = max(c["val_dice"] for c in fits["A"]["postprocess"]["candidates"])
    assert summary_a["after_inference"]["per_fold"] == {"0": round(after, 6)}
    second = validation.split("After inference and post-processing")[1]
    assert f"| A | {after:.4f} ± 0.0000 | {after:.4f} |" in second and "| B |" not in second
    # a second invocation reads the finished folds back and writes the same scores
    run_comparison(load_study(path), tmp_path / "runs", progress=False)
    assert (folder / "validation.md").read_text() == validation


def test_one_case_has_no_spread():
    """A cell over one case says n = 1 instead of a made-up sd of 0."""
    import pandas as pd

    from fusionseg.experiments.report import mean_sd

    assert mean_sd(pd.Series([0.5]), 3) == "0.500 (n = 1)"
    assert mean_sd(pd.Series([0.4, 0.6]), 2) == "0.50 ± 0.14"


def test_a_study_base_can_be_a_config_file_and_rows_replace_components(tmp_path):
    base = {
        "name": "ignored",
        "data": {"root": str(tmp_path)},
        "loss": {"name": "dice_ce", "kwargs": {"class_weights": [1.0, 1.0, 1.0, 1.0]}},
        "model": {"name": "monai_unet", "kwargs": {"channels": [8, 16], "strides": [2]}},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    study = {
        "study": "opts",
        "base": "base.yaml",
        "runs": [
            {"name": "plain"},
            {"name": "regions", "output": {"kind": "regions"}, "loss": {"name": "region_dice_bce", "kwargs": {}}},
            {"name": "narrow", "model": {"kwargs": {"channels": [4, 8]}}},
        ],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    configs = {c.name: c for c in load_study(tmp_path / "study.yaml").configs}
    assert configs["plain"].loss.kwargs == {"class_weights": [1.0, 1.0, 1.0, 1.0]}
    # another loss: the base's dice_ce kwargs do not follow it
    assert configs["regions"].loss.name == "region_dice_bce" and configs["regions"].loss.kwargs == {}
    # the same model: its kwargs merge
    assert configs["narrow"].model.kwargs == {"channels": [4, 8], "strides": [2]}
    study["base"] = "missing.yaml"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="base 'missing.yaml' not found"):
        load_study(tmp_path / "study.yaml")


def test_a_pair_must_name_two_rows(tmp_path):
    study = {
        "study": "p",
        "base": {"data": {"root": str(tmp_path)}},
        "runs": [{"name": "A"}, {"name": "B"}],
        "pairs": [["B", "Z"]],
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=r"pairs: \['B', 'Z'\] is not \[run, against\]"):
        load_study(tmp_path / "s.yaml")
    study["pairs"] = [["B", "A"]]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    assert load_study(tmp_path / "s.yaml").pairs == [("B", "A")]
    assert load_study(tmp_path / "s.yaml", rows=["A"]).pairs == []  # B does not run


def test_a_shared_ssl_setting_applies_to_the_ssl_rows_only(tmp_path):
    study = {
        "study": "s",
        "base": {"data": {"root": str(tmp_path)}, "model": {"name": "resnet50_unet"}},
        "runs": [{"name": "b", "strategy": "early"}, {"name": "s", "strategy": "ssl"}],
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    configs = {c.name: c for c in load_study(tmp_path / "s.yaml", overrides=["ssl.epochs=20"]).configs}
    assert configs["s"].ssl.epochs == 20 and configs["b"].ssl is None
    study["runs"][0]["ssl"] = {"epochs": 3}  # written by the row itself: still an error
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="ssl applies to strategy: ssl only"):
        load_study(tmp_path / "s.yaml")


def test_a_study_row_gives_the_train_commands_bytes(brats18_phantom, tmp_path):
    """A row that is its base config, run by ``compare``, writes the same per-case and
    per-lesion metrics as ``fusionseg train`` on that config: a baseline chosen among a
    study's rows is the baseline command's result, not a near copy of it."""
    cfg = tiny_config("base", brats18_phantom, tmp_path)
    cfg["split"] = {"kind": "kfold", "folds": 2}
    cfg["train"]["threads"] = 1
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    study = {"study": "one", "reference": "row", "base": "base.yaml", "runs": [{"name": "row"}]}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(study))
    out = run_comparison(load_study(tmp_path / "one.yaml"), tmp_path / "cmp", progress=False)
    for fold in (0, 1):
        for name in ("metrics_per_case.csv", "metrics_per_lesion.csv"):
            a, b = run / f"fold_{fold}" / name, out["dir"] / "row" / f"fold_{fold}" / name
            assert filecmp.cmp(a, b, shallow=False), (fold, name)
    assert filecmp.cmp(run / "metrics_per_case.csv", out["dir"] / "row" / "metrics_per_case.csv", shallow=False)
