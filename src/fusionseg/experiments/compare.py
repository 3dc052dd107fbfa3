"""Compare several experiments on the same data and the same case splits.

The input is a study (:mod:`fusionseg.experiments.study`: one study YAML expanded into
runs, or several experiment YAMLs).

Each run goes to ``<output>/<comparison>/<run name>/`` (as ``fusionseg train`` writes
it); the split file is made once (``splits.json`` in the comparison folder) and every
run uses it. The comparison writes ``comparison.md`` (every table: mean ± sd per run,
metric and region, and the paired Wilcoxon signed-rank p-value of each run against the
reference), ``<table>.md`` and ``<table>.csv`` per table (the CSV: one row per run x
region x metric with n, mean, sd, median, 95 % CI, and against the reference the mean
paired difference, Wilcoxon p and how many cases are higher / lower / tied),
``comparison.csv`` (all per-case rows with a ``run`` column), ``comparison.json``,
``fusion_quality.md`` for runs with a fused image, ``validation.md`` (each trained
row's best validation Dice per fold, and the score of its chosen post-processing after
whole-volume inference on the same validation cases, with the row of the highest mean:
settings are chosen there, never on the test cases), ``claims.md`` / ``claims.csv`` when
the study lists claims (:mod:`fusionseg.experiments.claims`), and the figures
``examples.png`` (S0 Fig. 4 style), ``paired_dice.png`` (per-case Dice of every run
against the reference, paired dots) and ``lambdas.png`` (dynamic loss weights).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from fusionseg.config import ExperimentConfig
from fusionseg.data.io import atomic_path
from fusionseg.data.splits import load_splits, make_splits, save_splits
from fusionseg.errors import ConfigError, OutputError
from fusionseg.experiments.claims import claims_frame, claims_markdown, evaluate_claims
from fusionseg.data.io import ensure_writable
from fusionseg.experiments.identity import check_run_folder
from fusionseg.experiments.figures import example_figure, lambda_figure, paired_figure
from fusionseg.experiments.report import comparison_table, metric_notes, table_frame
from fusionseg.experiments.executors import LocalExecutor
from fusionseg.experiments.subsets import write_study_subsets
from fusionseg.experiments.study import Study
from fusionseg.experiments.runner import duplicate_case_groups, gather_run, load_dataset, plan_run, prepare_all


def _quality_sections(summaries: dict[str, dict], out: Path) -> list[str]:
    """Write fusion_quality.md / pretext_quality.md for the runs that have them; their
    sections of comparison.md."""
    lines = []
    for title, name, table in (
        ("Fused-image quality (test cases, mean ± sd over cases)", "fusion_quality.md", fusion_quality_table),
        ("Pretext reconstruction (S2 Table 1; test cases)", "pretext_quality.md", pretext_quality_table),
    ):
        text = table(summaries)
        if text:
            lines += [f"## {title}", "", text, ""]
            with atomic_path(out / name) as tmp:
                tmp.write_text(text + "\n")
    return lines


def pretext_quality_table(summaries: dict[str, dict]) -> str | None:
    """S2 Table 1 per run with a pretext stage: MSE, PSNR and SSIM of the predicted
    target sequence, one column per fold (fold mean over its test cases) and the mean
    ± sd over all test cases; None when no run has one."""
    rows = {n: s["pretext_quality"] for n, s in summaries.items() if "pretext_quality" in s}
    if not rows:
        return None
    metrics = [("pretext_mse", "MSE", 4), ("pretext_psnr", "PSNR (dB)", 2), ("pretext_ssim", "SSIM", 3)]
    folds = sorted({f for q in rows.values() for f in q["per_fold"]}, key=int)
    lines = [
        "| run | metric | " + " | ".join(f"fold {f}" for f in folds) + " | mean ± sd (cases) |",
        "|---|---|" + "---|" * (len(folds) + 1),
    ]
    for n, q in rows.items():
        for key, title, digits in metrics:
            per_fold = [f"{q['per_fold'][f][key]:.{digits}f}" if f in q["per_fold"] else "–" for f in folds]
            total = f"{q[key]['mean']:.{digits}f} ± {q[key]['sd']:.{digits}f} (n {q[key]['n']})"
            lines.append(f"| {n} | {title} | " + " | ".join(per_fold) + f" | {total} |")
    conventions = next(iter(rows.values()))["conventions"]
    return "\n".join(lines) + f"\n\n{conventions[0].upper()}{conventions[1:]}."


def fusion_quality_table(summaries: dict[str, dict]) -> str | None:
    rows = {n: s["fusion_quality"] for n, s in summaries.items() if "fusion_quality" in s}
    if not rows:
        return None
    cols = [
        ("psnr_detail", "PSNR vs T1CE (dB)"),
        ("ssim_detail", "SSIM vs T1CE"),
        ("psnr_salient", "PSNR vs FLAIR (dB)"),
        ("ssim_salient", "SSIM vs FLAIR"),
        ("mi", "MI (bits)"),
        ("qabf", "Qabf"),
    ]
    lines = ["| run | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---|" * len(cols)]
    for n, q in rows.items():
        lines.append(
            f"| {n} | "
            + " | ".join(f"{q[c]['mean']:.3f} ± {q[c]['sd']:.3f}" if c in q else "–" for c, _ in cols)
            + " |"
        )
    return "\n".join(lines)


def _comparison_split(first: ExperimentConfig, out: Path, overwrite: bool, progress: bool) -> Path:
    """The comparison's shared split file: the config's ``split.file``, or
    ``<out>/splits.json`` made from the split settings (and checked against them when
    it exists: a split made with other settings is an error, or replaced with
    ``overwrite``)."""
    if first.split.file is not None:
        return Path(first.split.file)
    split_path = out / "splits.json"
    dataset, _ = load_dataset(first)
    prepared = prepare_all(dataset, first, progress)  # checks the cases; later runs read the cache
    groups = duplicate_case_groups(prepared)
    expected = make_splits(sorted(prepared), first.split, groups=groups)
    if split_path.exists() and not overwrite:
        if load_splits(split_path, groups=groups)["folds"] != expected["folds"]:
            raise OutputError(
                f"{split_path} was made with other split settings or cases than this "
                "comparison's. Fix: --name NEW for a new comparison, or --overwrite to "
                "replace it (and retrain the runs whose settings changed)."
            )
        return split_path
    out.mkdir(parents=True, exist_ok=True)
    save_splits(expected, split_path)
    return split_path


def run_comparison(
    study: Study,
    output_dir: Path,
    progress: bool = True,
    overwrite: bool = False,
    resume_with_changes: bool = False,
    executor=None,
) -> dict:
    """Run every config of ``study`` with one shared split and write the comparison.

    ``overwrite`` / ``resume_with_changes`` apply to every run folder
    (:func:`~fusionseg.experiments.runner.run_experiment`); every run folder is checked
    before the first run starts.

    Raises:
        ConfigError: configs disagree on the dataset, or two share a name.
        OutputError: a run folder holds another experiment, or the output is not writable.
    """
    out, split_path, configs = _checked_rows(study, output_dir, overwrite, resume_with_changes, progress)
    start = time.perf_counter()
    plans = [plan_run(cfg, overwrite, resume_with_changes, progress) for cfg in configs]
    jobs = [job for plan in plans for job in plan.jobs]  # every row's folds in one dispatch
    done = (executor or LocalExecutor()).run(jobs, {p.cfg.name: p.context for p in plans}, progress)
    results = {
        p.cfg.name: gather_run(p, [r for r in done if r.run == p.cfg.name], time.perf_counter() - start) for p in plans
    }
    return write_comparison(study, out, split_path, results)


def _checked_rows(
    study: Study, output_dir: Path, overwrite: bool, resume_with_changes: bool, progress: bool
) -> tuple[Path, Path, list[ExperimentConfig]]:
    """The comparison folder, its shared split file (made now if needed) and the row
    configs pointed at both, after every run folder was checked (before any work)."""
    configs = study.configs
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"run names must differ (they name the run folders): {names}")
    roots = {str(Path(c.data.root).resolve()) for c in configs}
    if len(roots) != 1:
        raise ConfigError(f"all runs of a comparison must use the same data.root; got {sorted(roots)}")
    out = Path(output_dir) / study.name
    ensure_writable(out)
    split_path = Path(configs[0].split.file) if configs[0].split.file is not None else out / "splits.json"
    configs = [
        cfg.model_copy(update={"output_dir": out, "split": cfg.split.model_copy(update={"file": split_path})})
        for cfg in configs
    ]
    for cfg in configs:  # every run folder is checked before any work
        check_run_folder(cfg, overwrite, resume_with_changes)
    _comparison_split(study.configs[0], out, overwrite, progress)
    load_splits(split_path)
    return out, split_path, configs


def write_comparison(study: Study, out: Path, split_path: Path, results: dict) -> dict:
    """The gather step of a comparison: tables (Markdown and CSV), fused-image quality,
    claims, figures, comparison.md / .csv / .json in ``out``, from the rows' results
    (:func:`~fusionseg.experiments.runner.gather_run`) alone."""
    names = list(results)
    runs = {n: r.per_case for n, r in results.items()}
    summaries = {n: r.summary for n, r in results.items()}
    all_regions = list(summaries[names[0]]["label_scheme"]["regions"])
    lines = [f"# Comparison {study.name}", ""]
    if study.protocol:
        lines += [f"Protocol: `{study.protocol}`.", ""]
    tests = _write_tables(study, runs, all_regions, out, lines)
    lines += pairs_section(study, runs, all_regions, out)
    lines += _quality_sections(summaries, out) + validation_section(summaries, out)
    n_cases = sorted({s["n_cases"] for s in summaries.values()})
    n_text = str(n_cases[0]) if len(n_cases) == 1 else f"{n_cases[0]}-{n_cases[-1]}"
    wall = max(s["wall_seconds"] for s in summaries.values())  # all rows ran in one dispatch
    folds_total = sum(s.get("fold_seconds_total", 0.0) for s in summaries.values())
    lines += [
        f"Mean ± sd over {n_text} test cases; p = paired Wilcoxon signed-rank test "
        f"against **{study.reference}** over cases. Splits: `{split_path}`. "
        f"Wall time {wall / 60:.1f} min (this invocation; every fold of every row over every "
        f"invocation: {folds_total / 60:.1f} min of job time)."
    ]
    if study.claims:
        claims = evaluate_claims(study.claims, runs)
        lines += ["", "## The source paper's claims", "", claims_markdown(claims)]
        with atomic_path(out / "claims.md") as tmp:
            tmp.write_text(f"# Claims of {study.name}\n\n{claims_markdown(claims)}\n")
        with atomic_path(out / "claims.csv") as tmp:
            claims_frame(claims).to_csv(tmp, index=False)
    lines += write_study_subsets(study.reference, {c.name: c for c in study.configs}, results, out)
    figs = _figures(study, results, all_regions, out)
    lines += [""] + [f"![{p.stem}]({p.name})" for p in figs if p is not None]
    table_md = "\n".join(lines) + "\n"
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(table_md)
    all_rows = pd.concat([df.assign(run=n) for n, df in runs.items()], ignore_index=True)
    with atomic_path(out / "comparison.csv") as tmp:
        all_rows.to_csv(tmp, index=False)
    payload = {
        "name": study.name,
        "protocol": study.protocol,
        "reference": study.reference,
        "runs": summaries,
        "wilcoxon": tests,
        "splits": str(split_path),
        "wall_seconds": wall,
    }
    with atomic_path(out / "comparison.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=1, default=str))
    return {"dir": out, "table": table_md, "results": results}


def pairs_section(study: Study, runs: dict, all_regions: list[str], out: Path) -> list[str]:
    """pairs.md / pairs.csv and their lines for comparison.md: for each of the study's
    (run, against) pairs and each table's metrics and regions, both rows' mean ± sd, the
    mean paired difference (run - against), the Wilcoxon p and how many cases went up /
    down, over the cases both rows have."""
    if not study.pairs:
        return []
    frames = []
    for run, against in study.pairs:
        for table in study.tables:
            frame = table_frame(
                {against: runs[against], run: runs[run]}, against, table["metrics"], table.get("regions", all_regions)
            )
            frames.append(frame.assign(table=table["name"]))
    frame = pd.concat(frames, ignore_index=True)
    base = frame[frame["reference"].isna()].set_index(["table", "run", "metric", "region"])
    head = "| run vs against | metric | region | against | run | run - against | p | up / down |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for row in frame[frame["reference"].notna()].itertuples():
        ref = base.loc[(row.table, row.reference, row.metric, row.region)]
        p = "-" if pd.isna(row.p_wilcoxon) else f"{row.p_wilcoxon:.2g}"
        moves = f"{int(row.n_higher)} / {int(row.n_lower)}"
        lines.append(
            f"| {row.run} vs {row.reference} | {row.metric} | {row.region} | {ref['mean']:.3f} ± {ref['sd']:.3f} | "
            f"{row.mean:.3f} ± {row.sd:.3f} | {row.mean_difference:+.3f} | {p} | {moves} |"
        )
    text = "\n".join(lines)
    note = "Mean ± sd over test cases; p = paired Wilcoxon signed-rank test over the cases both rows have."
    with atomic_path(out / "pairs.md") as tmp:
        tmp.write_text(f"# Paired rows of {study.name}\n\n{text}\n\n{note}\n")
    with atomic_path(out / "pairs.csv") as tmp:
        frame[frame["reference"].notna()].to_csv(tmp, index=False)
    return ["## Paired rows", "", text, "", note, ""]


def validation_section(summaries: dict[str, dict], out: Path) -> list[str]:
    """validation.md and its lines for comparison.md: every trained row's validation
    scores per fold and the row with the highest mean, the choice a study may make
    without looking at its test cases. Two tables: the best validation Dice of
    training (the early-stopping score, on each fold's validation cases, which lie
    inside its training portion), and, for rows that choose their post-processing on
    those cases, the chosen setting's score after whole-volume inference (the score
    for choosing inference settings, e.g. test-time mirroring, which training never
    sees)."""
    rows = {n: s["validation"] for n, s in summaries.items() if s.get("validation")}
    if not rows:
        return []
    table = _fold_table(rows)
    best = max(rows, key=lambda n: rows[n]["mean"])
    note = (
        f"Highest mean validation Dice: **{best}**. The score is each fold's best validation Dice "
        "(mean over the label scheme's regions, voxels pooled over the validation samples of "
        "`sampling.val_mode`), so rows compare only under the same val_mode; the test cases play no part."
    )
    parts = [table, "", note]
    after = {n: v["after_inference"] for n, v in rows.items() if v.get("after_inference")}
    if after:
        top = max(after, key=lambda n: after[n]["mean"])
        parts += [
            "",
            "After inference and post-processing, on the same validation cases:",
            "",
            _fold_table(after),
            "",
            f"Highest mean: **{top}**. The score is {next(iter(after.values()))['score']}, per fold for the "
            "setting its validation cases chose; rows that differ only in inference settings compare here.",
        ]
    text = "\n".join(parts)
    with atomic_path(out / "validation.md") as tmp:
        tmp.write_text(f"# Validation scores (for choosing a row)\n\n{text}\n")
    return ["## Validation scores (for choosing a row)", "", text, ""]


def _fold_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per run, its mean ± sd and per-fold scores."""
    folds = sorted({k for v in rows.values() for k in v["per_fold"]}, key=int)
    head = "| run | mean ± sd | " + " | ".join(f"fold {k}" for k in folds) + " |"
    table = [head, "|" + "---|" * (len(folds) + 2)]
    for name, v in rows.items():
        cells = [f"{v['per_fold'][k]:.4f}" if k in v["per_fold"] else "-" for k in folds]
        table.append(f"| {name} | {v['mean']:.4f} ± {v['sd']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(table)


def _write_tables(study: Study, runs: dict, all_regions: list[str], out: Path, lines: list[str]) -> list[dict]:
    """Each table of ``study`` as <name>.md and <name>.csv (appended to ``lines`` for
    comparison.md); the paired tests behind its cells."""
    tests = []
    for table in study.tables:
        regions = table.get("regions", all_regions)
        text, t = comparison_table(runs, study.reference, table["metrics"], regions)
        tests += [{"table": table["name"], **x} for x in t]
        notes = metric_notes(table["metrics"])
        lines += [f"## {table.get('title', table['name'])}", "", text, "", notes, ""]
        with atomic_path(out / f"{table['name']}.md") as tmp:
            tmp.write_text(f"# {table.get('title', table['name'])}\n\n{text}\n\n{notes}\n")
        frame = table_frame(runs, study.reference, table["metrics"], regions)
        with atomic_path(out / f"{table['name']}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    return tests


def _figures(study: Study, results: dict, all_regions: list[str], out: Path) -> list[Path | None]:
    """examples.png, paired_dice.png and lambdas.png (None where a figure does not apply)."""
    runs = {n: r.per_case for n, r in results.items()}
    run_dirs = {n: r.run_dir for n, r in results.items()}
    first = next(iter(results.values())).summary
    num_classes = len(first["label_scheme"]["labels"])
    regions = [r for t in study.tables for r in t.get("regions", all_regions)]
    return [
        example_figure(run_dirs, runs, out / "examples.png", study.reference, num_classes),
        paired_figure(runs, study.reference, out / "paired_dice.png", regions),
        lambda_figure(run_dirs, out / "lambdas.png"),
    ]
