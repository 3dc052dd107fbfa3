"""benchmarks/peer_monai_unet.py (issue 13) on phantoms: the peer is trained on the run's
folds, both sides are scored per region, and ``--peer-csv`` sets the same peer beside a
run without training it again."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd

from conftest import tiny_config, train_via_cli

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_monai_unet.py"


def load_script():
    spec = importlib.util.spec_from_file_location("peer_monai_unet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_on_the_runs_folds_then_reused(brats18_phantom, tmp_path, capsys):
    cfg = tiny_config("ours", brats18_phantom, tmp_path)
    cfg["split"] = {"kind": "kfold", "folds": 2}
    cfg["train"]["threads"] = 1
    result, run = train_via_cli(cfg, tmp_path)
    assert result.exit_code == 0, result.output
    peer = load_script()
    out = tmp_path / "bench" / "peer"
    assert peer.main([str(run), "--epochs", "1", "--threads", "1", "--out", str(out)]) == 0
    rows = pd.read_csv(out.with_suffix(".csv"))
    splits = json.loads((run / "splits.json").read_text())
    assert set(rows["case"]) == {c for f in splits["folds"] for c in f["test"]}
    assert set(rows["region"]) == {"WT", "TC", "ET"} and rows[["dice", "hd95", "lesion_dice"]].notna().all().all()
    table = out.with_suffix(".md").read_text()
    assert sum(line.startswith(("| WT |", "| TC |", "| ET |")) for line in table.splitlines()) == 9
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["machine"] and payload["peer_wall_seconds"] > 0 and len(payload["rows"]) == 9
    again = tmp_path / "bench" / "again"
    assert peer.main([str(run), "--peer-csv", str(out.with_suffix(".csv")), "--out", str(again)]) == 0
    assert again.with_suffix(".md").read_text() == table
    assert not again.with_suffix(".csv").exists()  # nothing was trained
    # the committed results (benchmarks/results/: .csv and .json, no .peer.json) suffice
    kept = tmp_path / "kept"
    kept.mkdir()
    for suffix in (".csv", ".json"):
        (kept / f"peer{suffix}").write_bytes(out.with_suffix(suffix).read_bytes())
    assert peer.main([str(run), "--peer-csv", str(kept / "peer.csv"), "--out", str(tmp_path / "bench" / "k")]) == 0
    assert (tmp_path / "bench" / "k.md").read_text() == table
    (kept / "peer.json").unlink()
    assert peer.main([str(run), "--peer-csv", str(kept / "peer.csv"), "--out", str(tmp_path / "bench" / "k")]) == 2
    # an interrupted run goes on from its kept folds: they are not trained again
    (out.parent / "peer_folds" / "fold_1.csv").unlink()
    capsys.readouterr()
    assert peer.main([str(run), "--epochs", "1", "--threads", "1", "--out", str(out)]) == 0
    assert "fold 0: kept from" in capsys.readouterr().out
    assert out.with_suffix(".md").read_text().split("Wall time")[0] == table.split("Wall time")[0]
