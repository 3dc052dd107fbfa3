"""Identical image data under two case ids: flagged by ``data check``, hashed in memory
for preprocessed cases, and kept in one part of every split (no train/test leakage)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fusionseg.config import PreprocessConfig, SplitConfig
from fusionseg.data.cases import discover
from fusionseg.data.check import check_case, check_command, check_dataset
from fusionseg.data.duplicates import (
    duplicate_groups,
    hash_volumes,
    prepared_case_hash,
    prepared_hashes,
    volume_digest,
)
from fusionseg.data.preprocess import PreprocessCache, prepare_case_arrays
from fusionseg.data.splits import check_split_groups, load_splits, make_splits, save_splits
from fusionseg.errors import ConfigError, DataError

app = typer.Typer()
app.command()(check_command)
runner = CliRunner()

C0, C1 = "Brats18_Phantom_000", "Brats18_Phantom_001"
COPY = "Brats18_Phantom_copy"


def _copy_brats_case(root: Path, src: str, dst: str) -> Path:
    """``root/src`` copied as case ``dst`` (folder and file names renamed)."""
    folder = root / dst
    folder.mkdir()
    for f in (root / src).iterdir():
        shutil.copy2(f, folder / f.name.replace(src, dst))
    return folder


# --- data check -------------------------------------------------------------------


def test_data_check_flags_a_case_copied_under_a_second_id(brats18_copy, tmp_path):
    _copy_brats_case(brats18_copy, C1, COPY)
    out = tmp_path / "report.json"

    result = runner.invoke(app, [str(brats18_copy), "--json-out", str(out)], env={"COLUMNS": "200"})

    # warnings only: the exit code stays 0 (errors alone give 1)
    assert result.exit_code == 0, result.output
    assert "5/5 cases passed (0 errors, 2 warnings)" in result.output
    text = " ".join(result.output.split())  # undo line wrapping
    assert f"identical image data to case {C1}" in text
    assert f"identical image data to case {COPY}" in text
    assert "leaks between train and test" in text and "remove all copies but one" in text
    report = json.loads(out.read_text())
    assert report["ok"] and report["duplicate_groups"] == [[C1, COPY]]
    cases = {c["case_id"]: c for c in report["cases"]}
    assert cases[C1]["image_hash"] == cases[COPY]["image_hash"] is not None
    assert cases[C0]["image_hash"] != cases[C1]["image_hash"]
    assert cases[C0]["status"] == "ok" and cases[C0]["problems"] == []
    for cid, other in ((C1, COPY), (COPY, C1)):
        assert cases[cid]["status"] == "warning"
        (p,) = cases[cid]["problems"]
        assert p["severity"] == "warning" and p["file"] == str(brats18_copy / cid)
        assert p["problem"].startswith(f"identical image data to case {other} ")
        assert "segmentations are identical too" in p["problem"] and p["fix"]


def test_data_check_copy_with_another_segmentation_still_flagged(brats18_copy):
    """A second annotation of the same scan is still the same scan."""
    folder = _copy_brats_case(brats18_copy, C1, COPY)
    shutil.copy2(brats18_copy / C0 / f"{C0}_seg.nii.gz", folder / f"{COPY}_seg.nii.gz")
    report = check_dataset(discover(brats18_copy), progress=False)
    assert report.duplicates == [[C1, COPY]]
    (p,) = report.cases[[c.case_id for c in report.cases].index(COPY)].problems
    assert "segmentations differ" in p.problem


def test_data_check_three_copies_in_a_shared_folder_layout(phantom_dataset, tmp_path):
    """nnU-Net keeps all cases in imagesTr/: the problem names the image file."""
    root = Path(shutil.copytree(phantom_dataset("nnunet"), tmp_path / "nn"))
    src = "PHANTOM_000"
    for dst in ("PHANTOM_900", "PHANTOM_901"):
        for f in (root / "imagesTr").glob(f"{src}_*.nii.gz"):
            shutil.copy2(f, f.with_name(f.name.replace(src, dst)))
        shutil.copy2(root / "labelsTr" / f"{src}.nii.gz", root / "labelsTr" / f"{dst}.nii.gz")
    report = check_dataset(discover(root), progress=False)
    assert report.ok and report.duplicates == [[src, "PHANTOM_900", "PHANTOM_901"]]
    by_id = {c.case_id: c for c in report.cases}
    assert by_id["PHANTOM_001"].problems == []
    (p,) = by_id["PHANTOM_900"].problems
    assert p.problem.startswith(f"identical image data to cases {src}, PHANTOM_901 ")
    assert p.file == str(root / "imagesTr" / "PHANTOM_900_0000.nii.gz")
    assert "duplicate_groups" in report.to_dict()


def test_modality_copied_over_another_is_a_warning(brats18_copy):
    t1, t2 = (brats18_copy / C0 / f"{C0}_{m}.nii.gz" for m in ("t1", "t2"))
    shutil.copy2(t1, t2)
    ds = discover(brats18_copy)
    (p,) = check_case(ds.case(C0), ds)
    assert p.severity == "warning" and p.file == str(t2)
    assert p.problem.startswith("t2 image is identical to t1 voxel for voxel") and "t1" in p.fix
    report = check_dataset(ds, progress=False)
    assert report.ok and report.duplicates == []  # other cases differ


# --- hashing ------------------------------------------------------------------------


def test_volume_digest_depends_on_values_shape_and_dtype_not_layout():
    a = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    ref = volume_digest(a)
    assert volume_digest(np.asfortranarray(a)) == ref
    assert volume_digest(np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 2, 0)), 0, 2)) == ref
    assert volume_digest(a.astype(">i2")) == ref  # byte order is not content
    assert volume_digest(a.astype(np.int32)) != ref
    assert volume_digest(a.reshape(3, 2, 4)) != ref
    b = a.copy()
    b[1, 2, 3] += 1
    assert volume_digest(b) != ref
    assert hash_volumes([a, b]) != hash_volumes([b, a])  # modality order matters


def test_duplicate_groups():
    assert duplicate_groups({"a": "1", "b": "2"}) == []
    assert duplicate_groups({"d": "1", "b": "2", "a": "1", "c": "2", "e": None, "f": None}) == [["a", "d"], ["b", "c"]]


def test_prepared_case_hash_in_memory_and_cached_alike(brats18_copy, tmp_path):
    _copy_brats_case(brats18_copy, C1, COPY)
    ds = discover(brats18_copy)
    cfg = PreprocessConfig()
    mem = {cid: prepare_case_arrays(ds.case(cid), ds.scheme, cfg) for cid in (C0, C1, COPY)}
    cache = PreprocessCache(cfg, tmp_path / "cache")
    cached = {cid: cache.load(ds.case(cid), ds.scheme) for cid in (C0, C1, COPY)}
    assert isinstance(cached[C1].image, np.memmap) or not cached[C1].image.flags.c_contiguous
    hashes = prepared_hashes(cached)
    assert hashes == prepared_hashes(mem)  # memory layout does not matter
    assert duplicate_groups(hashes) == [[C1, COPY]]
    assert prepared_case_hash(mem[C1], ["flair", "t1"]) != hashes[C1]
    with pytest.raises(KeyError, match="pet"):
        prepared_case_hash(mem[C1], ["pet"])


# --- splits -------------------------------------------------------------------------

IDS = [f"case{i:02d}" for i in range(11)]

#: make_splits(IDS, ...) as computed by the code before groups existed: splits made
#: without groups must never change (saved split files and published numbers).
KFOLD_BEFORE = {
    "kind": "kfold",
    "seed": 5,
    "cases": IDS,
    "folds": [
        {
            "fold": 0,
            "train": ["case00", "case01", "case02", "case04", "case08", "case09"],
            "val": ["case07"],
            "test": ["case03", "case05", "case06", "case10"],
        },
        {
            "fold": 1,
            "train": ["case01", "case03", "case04", "case05", "case06", "case09"],
            "val": ["case10"],
            "test": ["case00", "case02", "case07", "case08"],
        },
        {
            "fold": 2,
            "train": ["case00", "case02", "case03", "case05", "case06", "case08"],
            "val": ["case07", "case10"],
            "test": ["case01", "case04", "case09"],
        },
    ],
}
HOLDOUT_BEFORE = {
    "kind": "holdout",
    "seed": 2,
    "cases": IDS,
    "folds": [
        {
            "fold": 0,
            "train": ["case01", "case03", "case04", "case05", "case06", "case08", "case10"],
            "val": ["case07", "case09"],
            "test": ["case00", "case02"],
        }
    ],
}
KFOLD_CFG = SplitConfig(kind="kfold", folds=3, seed=5, val_fraction=0.2)
HOLDOUT_CFG = SplitConfig(kind="holdout", seed=2, test_fraction=0.2, val_fraction=0.2)


@pytest.mark.parametrize("groups", [None, [], [["case03"]], [["case03", "not-a-case"]]])
def test_splits_without_groups_are_unchanged(groups):
    for cfg, expected in ((KFOLD_CFG, KFOLD_BEFORE), (HOLDOUT_CFG, HOLDOUT_BEFORE)):
        got = make_splits(list(reversed(IDS)), cfg, groups)
        assert json.dumps(got) == json.dumps(expected)  # same keys, order, values


def _assert_valid(splits, ids, groups):
    check_split_groups(splits, groups)
    for f in splits["folds"]:
        parts = [f["train"], f["val"], f["test"]]
        assert all(parts) and sorted(c for p in parts for c in p) == sorted(ids)
        for g in groups:
            assert sum(bool(set(g) & set(p)) for p in parts) == 1, (f, g)
    if splits["kind"] == "kfold":
        assert sorted(c for f in splits["folds"] for c in f["test"]) == sorted(ids)


@pytest.mark.parametrize("kind, folds", [("kfold", 3), ("kfold", 5), ("holdout", 5)])
def test_splits_keep_identical_cases_together(kind, folds):
    ids = [f"c{i:02d}" for i in range(16)]
    groups = [["c03", "c11"], ["c07", "c00", "c14"]]
    seen_parts = set()
    for seed in range(12):
        cfg = SplitConfig(kind=kind, folds=folds, seed=seed, val_fraction=0.15, test_fraction=0.2)
        splits = make_splits(ids, cfg, groups)
        _assert_valid(splits, ids, groups)
        assert splits["groups"] == [["c00", "c07", "c14"], ["c03", "c11"]]
        assert make_splits(list(reversed(ids)), cfg, groups) == splits  # deterministic
        f = splits["folds"][0]
        seen_parts |= {p for p in ("train", "val", "test") if "c03" in f[p]}
        if kind == "holdout":
            assert len(f["test"]) in (2, 3, 4) and 1 <= len(f["val"]) <= 3
        else:
            sizes = [len(x["test"]) for x in splits["folds"]]
            assert max(sizes) - min(sizes) <= 3, sizes  # at most the largest group
    assert seen_parts >= {"train", "test"}  # the pair moves with the seed, together


def test_overlapping_groups_are_merged():
    ids = [f"c{i}" for i in range(8)]
    splits = make_splits(ids, SplitConfig(folds=2, seed=1), [["c1", "c2"], ["c2", "c5"]])
    assert splits["groups"] == [["c1", "c2", "c5"]]
    _assert_valid(splits, ids, splits["groups"])


def test_too_few_groups_for_the_split():
    ids = ["a", "b", "c", "d"]
    with pytest.raises(ConfigError, match=r"4 labelled cases \(3 once identical cases"):
        make_splits(ids, SplitConfig(folds=3), [["a", "b"]])
    with pytest.raises(ConfigError, match="too few for a train/val/test split"):
        make_splits(ids, SplitConfig(kind="holdout"), [["a", "b"], ["c", "d"]])


def test_saved_split_that_straddles_a_group_is_a_data_error(tmp_path):
    splits = make_splits(IDS, KFOLD_CFG)  # made without knowing about the copy
    path = save_splits(splits, tmp_path / "splits.json")
    pair = ["case03", "case07"]  # fold 0: case03 in test, case07 in val
    assert load_splits(path, IDS) == splits
    with pytest.raises(DataError) as exc:
        load_splits(path, IDS, groups=[pair])
    err = exc.value
    assert err.file == path
    assert "fold 0: case03 in test, case07 in val" in err.message
    assert "leaks between train and test" in err.message and "new split" in err.fix
    # a group recorded in the file itself is verified too (hand-edited file)
    data = json.loads(path.read_text())
    data["groups"] = [pair]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="case03 in test"):
        load_splits(path)
    # a split made with the group loads and verifies
    good = save_splits(make_splits(IDS, KFOLD_CFG, [pair]), tmp_path / "good.json")
    assert load_splits(good, IDS, groups=[pair])["groups"] == [pair]
