"""Kaggle BraTS 2020 HDF5-slice release: scanning, validation, conversion to the
BraTS NIfTI layout, and measuring the image channel order (fusionseg.data.kaggle_h5, kaggle_convert, kaggle_verify).

The fake release encodes volume, slice and channel in the intensities
(``1000 * volume + 10 * slice + channel``) so that the converted NIfTIs show whether
every slice landed in the right case, at the right z, in the right file."""

from __future__ import annotations

import os

import h5py
import nibabel as nib
import numpy as np
import pytest

from fusionseg.constants import MRI_MODALITIES
from fusionseg.data import kaggle_convert, kaggle_verify
from fusionseg.data import kaggle_h5 as kh
from fusionseg.data.cases import discover
from fusionseg.data.phantom import make_phantom
from fusionseg.errors import ConfigError, DataError, OutputError

H, W = 16, 12  # not square: a transposed slice would change the shape
DEPTH = 11  # slices 0..10: numeric order differs from name order ("10" < "2")
VOLUMES = (1, 2, 10)

# Mask pattern written into every slice: pixel -> channels set -> expected label.
MASK_PATTERN = {
    (3, 3): ((0,), 1),  # NCR
    (4, 4): ((1,), 2),  # ED
    (5, 5): ((2,), 4),  # ET
    (6, 6): ((0, 1), 1),  # NCR + ED -> NCR
    (7, 7): ((1, 2), 4),  # ED + ET -> ET
    (8, 8): ((0, 2), 4),  # NCR + ET -> ET
    (9, 9): ((0, 1, 2), 4),  # all three -> ET
}
N_OVERLAP_PIXELS = 4  # pixels of MASK_PATTERN with more than one channel


def value(volume: int, slice_: int, channel: int) -> float:
    return 1000.0 * volume + 10.0 * slice_ + channel


def slice_arrays(volume: int, slice_: int, hw=(H, W)) -> tuple[np.ndarray, np.ndarray]:
    image = np.empty((*hw, 4), np.float64)
    for c in range(4):
        image[..., c] = value(volume, slice_, c)
    image[1, 2, :] += 0.5  # orientation marker: flips and transposes move it
    mask = np.zeros((*hw, 3), np.uint8)
    for (x, y), (channels, _) in MASK_PATTERN.items():
        mask[x, y, list(channels)] = 1
    return image, mask


def write_slice(path, image, mask) -> None:
    with h5py.File(path, "w") as f:
        if image is not None:
            f.create_dataset("image", data=image)
        if mask is not None:
            f.create_dataset("mask", data=mask)


@pytest.fixture
def release(tmp_path):
    """A fake release folder: VOLUMES x DEPTH slices of H x W, plus CSV side files."""
    folder = tmp_path / "content" / "data"
    folder.mkdir(parents=True)
    for v in VOLUMES:
        for m in range(DEPTH):
            write_slice(folder / f"volume_{v}_slice_{m}.h5", *slice_arrays(v, m))
    (folder / "meta_data.csv").write_text("slice_path,target,volume,slice\n")
    (folder / "name_mapping.csv").write_text("BraTS_2020_subject_ID\n")
    (folder / "volume_1_slice_x.h5").write_bytes(b"not a slice name")
    return folder


def load(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


# --- scanning -----------------------------------------------------------------


def test_scan_groups_by_volume_orders_by_slice_and_counts_ignored(release):
    scan = kh.scan_kaggle_h5(release)
    assert list(scan) == list(VOLUMES)
    assert scan.depth == DEPTH and scan.n_files == len(VOLUMES) * DEPTH
    for v in VOLUMES:
        assert [p.name for p in scan[v]] == [f"volume_{v}_slice_{m}.h5" for m in range(DEPTH)]
    assert sorted(p.name for p in scan.ignored) == ["meta_data.csv", "name_mapping.csv", "volume_1_slice_x.h5"]
    assert scan.gaps == {}


def test_gap_is_an_error_naming_volume_and_slices(release):
    (release / "volume_2_slice_4.h5").unlink()
    (release / "volume_2_slice_5.h5").unlink()
    (release / "volume_10_slice_10.h5").unlink()  # the last slice: caught via the depth of the others
    with pytest.raises(DataError) as err:
        kh.scan_kaggle_h5(release)
    text = str(err.value)
    assert "volume 2: slices 4-5" in text and "volume 10: slices 10" in text and "allow_gaps" in text


def test_allowed_gap_is_zero_filled_and_reported(release, tmp_path):
    (release / "volume_2_slice_4.h5").unlink()
    scan = kh.scan_kaggle_h5(release, allow_gaps=True)
    assert scan.gaps == {2: [4]} and scan[2][4] is None
    report = kaggle_convert.convert_kaggle_h5(release, tmp_path / "out", allow_gaps=True, progress=False)
    assert report.gaps == {"BraTS20_Training_002": [4]}
    flair = load(tmp_path / "out" / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz")
    assert np.all(flair[:, :, 4] == 0)
    assert np.all(flair[:, :, 5][0] == value(2, 5, kh.IMAGE_CHANNELS.index("flair")))
    assert any("slices 4 missing" in line for line in report.lines())


def test_duplicate_slice_number_is_rejected(release):
    write_slice(release / "volume_1_slice_03.h5", *slice_arrays(1, 3))
    with pytest.raises(DataError, match=r"slice 3 of volume 1: volume_1_slice_03\.h5 and volume_1_slice_3\.h5"):
        kh.scan_kaggle_h5(release)


def test_empty_parent_folder_points_to_the_slice_folder(release):
    with pytest.raises(DataError) as err:
        kh.scan_kaggle_h5(release.parent.parent)
    assert "no volume_<N>_slice_<M>.h5 files" in str(err.value)
    assert str(release) in str(err.value)


# --- reading and validation ------------------------------------------------------


def test_read_volume_stacks_every_slice_in_order(release):
    scan = kh.scan_kaggle_h5(release)
    image, label = kh.read_volume(scan[10])
    assert image.shape == (H, W, DEPTH, 4) and image.dtype == np.float32
    assert label.shape == (H, W, DEPTH) and label.dtype == np.uint8
    for m in range(DEPTH):
        for c in range(4):
            assert image[0, 0, m, c] == value(10, m, c)
            assert image[1, 2, m, c] == value(10, m, c) + 0.5
    for (x, y), (_, expected) in MASK_PATTERN.items():
        assert np.all(label[x, y, :] == expected)
    assert int(np.count_nonzero(label)) == len(MASK_PATTERN) * DEPTH


def test_masks_to_labels_priority_et_over_ncr_over_ed():
    mask = np.zeros((8, 3), bool)
    cases = [((), 0), ((0,), 1), ((1,), 2), ((2,), 4), ((0, 1), 1), ((1, 2), 4), ((0, 2), 4), ((0, 1, 2), 4)]
    for i, (channels, _) in enumerate(cases):
        mask[i, list(channels)] = True
    assert kh.masks_to_labels(mask).tolist() == [expected for _, expected in cases]
    assert kh.count_overlaps(mask) == 4
    # Another channel order: the regions follow the names, not the positions.
    reordered = mask[:, [2, 0, 1]]
    assert kh.masks_to_labels(reordered, ("ET", "NCR", "ED")).tolist() == [expected for _, expected in cases]


@pytest.mark.parametrize(
    ("image", "mask", "expected"),
    [
        (np.zeros((H, W, 3)), np.zeros((H, W, 3)), r"'image' has shape \(16, 12, 3\), expected \(H, W, 4\)"),
        (np.zeros((H, W, 4)), np.zeros((H, W, 4)), r"'mask' has shape \(16, 12, 4\), expected \(H, W, 3\)"),
        (np.zeros((H, W)), np.zeros((H, W, 3)), r"'image' has shape \(16, 12\)"),
        (np.zeros((H, W, 4)), np.zeros((H, 10, 3)), r"'image' is 16 x 12 but 'mask' is 16 x 10"),
        (np.zeros((H, W, 4)), None, r"no 'mask' dataset"),
        (None, np.zeros((H, W, 3)), r"no 'image' dataset"),
        (np.full((H, W, 4), np.nan), np.zeros((H, W, 3)), r"'image' holds 768 NaN or infinite"),
        (np.zeros((H, W, 4)), np.full((H, W, 3), 2), r"values other than 0 and 1"),
    ],
)
def test_malformed_slice_is_rejected_with_the_file_named(release, tmp_path, image, mask, expected):
    bad = release / "volume_2_slice_3.h5"
    write_slice(bad, image, mask)
    with pytest.raises(DataError, match=expected) as err:
        kaggle_convert.convert_kaggle_h5(release, tmp_path / "out", progress=False)
    assert err.value.file == bad and str(bad) in str(err.value)
    assert "Fix:" in str(err.value)
    assert not (tmp_path / "out" / "BraTS20_Training_002").exists()


def test_slice_of_another_size_within_a_volume_is_rejected(release):
    bad = release / "volume_1_slice_7.h5"
    write_slice(bad, *slice_arrays(1, 7, hw=(H, 10)))
    scan = kh.scan_kaggle_h5(release)
    kh.read_volume(scan[2])  # other volumes are fine
    with pytest.raises(DataError, match=r"slice is 16 x 10 but volume_1_slice_0\.h5 of the same volume is 16 x 12"):
        kh.read_volume(scan[1])


def test_other_volume_may_have_another_size(release):
    for m in range(DEPTH):
        write_slice(release / f"volume_10_slice_{m}.h5", *slice_arrays(10, m, hw=(10, 10)))
    scan = kh.scan_kaggle_h5(release)
    assert kh.read_volume(scan[10])[0].shape == (10, 10, DEPTH, 4)
    assert kh.read_volume(scan[1])[0].shape == (H, W, DEPTH, 4)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file_is_reported_by_name(release, tmp_path, damage):
    bad = release / "volume_10_slice_6.h5"
    if damage == "garbage":
        bad.write_bytes(b"\x00garbage, not HDF5" * 50)
    else:
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        kaggle_convert.convert_kaggle_h5(release, tmp_path / "out", progress=False)
    assert err.value.file == bad and "cannot read as HDF5" in str(err.value)
    assert "re-download" in str(err.value)
    # Volumes before the bad one were written completely, the bad one not at all.
    assert (tmp_path / "out" / "BraTS20_Training_002").is_dir()
    assert not (tmp_path / "out" / "BraTS20_Training_010").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


# --- conversion -------------------------------------------------------------------


def test_convert_writes_every_slice_into_the_right_case_file_and_plane(release, tmp_path):
    out = tmp_path / "out"
    report = kaggle_convert.convert_kaggle_h5(release, out, progress=False)
    ids = [f"BraTS20_Training_{v:03d}" for v in VOLUMES]
    assert report.case_ids == ids and report.converted == ids and report.skipped == []
    assert [p.name for p in report.ignored] == ["meta_data.csv", "name_mapping.csv", "volume_1_slice_x.h5"]
    assert report.overlaps == {cid: N_OVERLAP_PIXELS * DEPTH for cid in ids}
    for v, cid in zip(VOLUMES, ids):
        for c, modality in enumerate(kh.IMAGE_CHANNELS):
            img = nib.load(str(out / cid / f"{cid}_{modality}.nii.gz"))  # BraTS 2018-2021 suffix = canonical name
            data = np.asanyarray(img.dataobj)
            assert data.shape == (H, W, DEPTH) and data.dtype == np.float32
            assert np.allclose(img.affine, np.eye(4)) and img.header.get_zooms() == (1.0, 1.0, 1.0)
            for m in range(DEPTH):
                assert data[0, 0, m] == value(v, m, c), (cid, modality, m)
                assert data[1, 2, m] == value(v, m, c) + 0.5
        seg = load(out / cid / f"{cid}_seg.nii.gz")
        assert seg.dtype == np.uint8 and seg.shape == (H, W, DEPTH)
        for (x, y), (_, expected) in MASK_PATTERN.items():
            assert np.all(seg[x, y, :] == expected)
        assert set(np.unique(seg)) == {0, 1, 2, 4}


def test_image_channels_override_changes_the_file_assignment(release, tmp_path):
    order = ("t1", "t1ce", "t2", "flair")
    report = kaggle_convert.convert_kaggle_h5(
        release, tmp_path / "out", volumes=[1], image_channels=order, progress=False
    )
    assert report.image_channels == order and "read as t1, t1ce, t2, flair" in report.lines()[1]
    case = tmp_path / "out" / "BraTS20_Training_001"
    for c, modality in enumerate(order):
        assert load(case / f"BraTS20_Training_001_{modality}.nii.gz")[0, 0, 3] == value(1, 3, c)
    with pytest.raises(ConfigError):
        kaggle_convert.convert_kaggle_h5(
            release, tmp_path / "x", image_channels=("t1", "t1", "t2", "flair"), progress=False
        )


def test_converted_folder_is_discovered_as_brats_dataset(release, tmp_path):
    out = tmp_path / "out"
    kaggle_convert.convert_kaggle_h5(release, out, progress=False)
    dataset = discover(out)
    assert dataset.format == "brats2018"
    assert dataset.scheme.name == "brats2017" and dataset.scheme.values == (0, 1, 2, 4)
    assert [c.case_id for c in dataset.cases] == [
        "BraTS20_Training_001",
        "BraTS20_Training_002",
        "BraTS20_Training_010",
    ]
    assert dataset.modalities == MRI_MODALITIES
    assert dataset.skipped == ()
    for case in dataset.cases:
        assert case.label is not None and case.label.is_file()
        assert all(ref.path.is_file() for ref in case.images.values())
        assert dataset.scheme.unknown_values(load(case.label)) == []


def test_second_conversion_skips_complete_cases(release, tmp_path):
    out = tmp_path / "out"
    kaggle_convert.convert_kaggle_h5(release, out, volumes=[1, 2], progress=False)
    seg = out / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz"
    stamp = seg.stat().st_mtime_ns
    # Damage a source slice of volume 1: a skipped case must not even be read again.
    (release / "volume_1_slice_0.h5").write_bytes(b"corrupt")
    report = kaggle_convert.convert_kaggle_h5(release, out, volumes=[1, 2, 10], progress=False)
    assert report.skipped == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert report.converted == ["BraTS20_Training_010"]
    assert seg.stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="volume_1_slice_0.h5"):
        kaggle_convert.convert_kaggle_h5(release, out, volumes=[1], overwrite=True, progress=False)
    assert seg.is_file()  # the failed overwrite kept the old case


def test_overwrite_replaces_existing_case(release, tmp_path):
    out = tmp_path / "out"
    kaggle_convert.convert_kaggle_h5(release, out, volumes=[2], progress=False)
    flair = out / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz"
    for m in range(DEPTH):
        image, mask = slice_arrays(2, m)
        write_slice(release / f"volume_2_slice_{m}.h5", image + 7, mask)
    report = kaggle_convert.convert_kaggle_h5(release, out, volumes=[2], overwrite=True, progress=False)
    assert report.converted == ["BraTS20_Training_002"]
    assert load(flair)[0, 0, 3] == value(2, 3, kh.IMAGE_CHANNELS.index("flair")) + 7
    assert sorted(p.name for p in out.iterdir()) == ["BraTS20_Training_002"]


def test_incomplete_existing_case_needs_overwrite(release, tmp_path):
    out = tmp_path / "out"
    kaggle_convert.convert_kaggle_h5(release, out, volumes=[1], progress=False)
    (out / "BraTS20_Training_001" / "BraTS20_Training_001_t2.nii.gz").unlink()
    with pytest.raises(OutputError, match="lacks BraTS20_Training_001_t2.nii.gz"):
        kaggle_convert.convert_kaggle_h5(release, out, volumes=[1], progress=False)
    report = kaggle_convert.convert_kaggle_h5(release, out, volumes=[1], overwrite=True, progress=False)
    assert report.converted == ["BraTS20_Training_001"]
    assert (out / "BraTS20_Training_001" / "BraTS20_Training_001_t2.nii.gz").is_file()


def test_interrupted_conversion_leaves_no_half_written_case(release, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_save = nib.save
    calls = {"n": 0}

    def failing_save(img, path):
        calls["n"] += 1
        if calls["n"] == 8:  # the third file of the second case
            raise KeyboardInterrupt
        real_save(img, path)

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        kaggle_convert.convert_kaggle_h5(release, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["BraTS20_Training_001"]
    monkeypatch.setattr(nib, "save", real_save)
    report = kaggle_convert.convert_kaggle_h5(release, out, progress=False)
    assert report.skipped == ["BraTS20_Training_001"]
    assert report.converted == ["BraTS20_Training_002", "BraTS20_Training_010"]
    assert len(discover(out)) == 3


def test_unknown_volume_is_rejected(release, tmp_path):
    with pytest.raises(DataError, match=r"volume\(s\) 5 not found; the folder has volumes 1-2, 10"):
        kaggle_convert.convert_kaggle_h5(release, tmp_path / "out", volumes=[1, 5], progress=False)


def test_written_case_folder_is_readable_by_others(release, tmp_path):
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        kaggle_convert.convert_kaggle_h5(release, out, volumes=[1], progress=False)
    finally:
        os.umask(old)
    assert (out / "BraTS20_Training_001").stat().st_mode & 0o777 == 0o755


# --- measuring the channel order ------------------------------------------------------


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(32, 32, 24), seed=3)


def as_h5_volume(images: dict, order, background=0.0) -> np.ndarray:
    """Stack phantom sequences in ``order``, z-scored (as a release might store them)
    with a constant background, so only the anatomy can identify them."""
    channels = []
    for name in order:
        a = images[name].astype(np.float64)
        z = (a - a.mean()) / a.std()
        channels.append(np.where(images[name] != 0, z, background))
    return np.stack(channels, axis=-1).astype(np.float32)


def test_match_channels_finds_a_known_permutation(phantom):
    order = ("t2", "flair", "t1ce", "t1")
    match = kaggle_verify.match_channels(as_h5_volume(phantom["images"], order, background=-0.7), phantom["images"])
    assert match.assignment == order
    assert match.transform == "identity"
    assert not match.matches_expected  # IMAGE_CHANNELS differs from order
    assert match.correlation.shape == (4, 4)
    for c, name in enumerate(order):
        assert match.correlation[c, match.sequences.index(name)] > 0.99
    assert match.score > match.runner_up
    assert any("MISMATCH" in line for line in match.lines())


def test_match_channels_confirms_the_expected_order(phantom):
    h5 = as_h5_volume(phantom["images"], kh.IMAGE_CHANNELS)
    match = kaggle_verify.match_channels(h5, phantom["images"])
    assert match.matches_expected and match.assignment == kh.IMAGE_CHANNELS
    assert any(line.startswith("OK:") for line in match.lines())


def test_match_channels_detects_flipped_axes(phantom):
    h5 = as_h5_volume(phantom["images"], kh.IMAGE_CHANNELS)[::-1, :, ::-1]  # flip X and Z
    match = kaggle_verify.match_channels(h5, phantom["images"])
    assert match.transform == "flip_x+flip_z" and match.assignment == kh.IMAGE_CHANNELS
    assert not match.matches_expected
    fixed = kaggle_verify.match_channels(h5, phantom["images"], search_transforms=False)
    assert fixed.transform == "identity" and fixed.score < match.score - 0.3


def test_verify_channel_order_on_both_releases(phantom, tmp_path):
    order = ("t1ce", "flair", "t2", "t1")
    h5_dir, case = tmp_path / "h5", tmp_path / "nifti" / "BraTS20_Training_007"
    h5_dir.mkdir()
    case.mkdir(parents=True)
    volume = as_h5_volume(phantom["images"], order)
    seg = phantom["seg"]
    mask = np.stack([seg == 1, seg == 2, seg == 4], axis=-1).astype(np.uint8)
    for m in range(volume.shape[2]):
        write_slice(h5_dir / f"volume_7_slice_{m}.h5", volume[:, :, m], mask[:, :, m])
    for name, data in phantom["images"].items():
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(case / f"{case.name}_{name}.nii.gz"))
    match = kaggle_verify.verify_channel_order(h5_dir, case)
    assert match.assignment == order and match.transform == "identity"
    assert kaggle_verify.verify_channel_order(h5_dir, case, expected=order).matches_expected
    # The converted labels reproduce the phantom's label map.
    kaggle_convert.convert_kaggle_h5(h5_dir, tmp_path / "out", image_channels=order, progress=False)
    converted = load(tmp_path / "out" / "BraTS20_Training_007" / "BraTS20_Training_007_seg.nii.gz")
    assert np.array_equal(converted, seg)
    with pytest.raises(DataError, match="volume 8 not found"):
        kaggle_verify.verify_channel_order(h5_dir, case, volume=8)


# --- command line ----------------------------------------------------------------


def test_convert_command_writes_cases_that_fusionseg_reads_and_names_a_bad_file(release, tmp_path):
    from typer.testing import CliRunner

    from fusionseg.cli import app

    out = tmp_path / "nifti"
    result = CliRunner().invoke(app, ["data", "convert-kaggle-h5", str(release), str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "converted" in result.output
    assert sorted(c.case_id for c in discover(out).cases) == [kh.case_id(v) for v in VOLUMES]
    for m in range(DEPTH):
        write_slice(release / f"volume_99_slice_{m}.h5", *slice_arrays(99, m))
    write_slice(release / "volume_99_slice_0.h5", np.zeros((H, W, 3)), np.zeros((H, W, 3), np.uint8))  # 3 channels
    result = CliRunner().invoke(
        app, ["data", "convert-kaggle-h5", str(release), str(tmp_path / "other"), "--volume", "99", "--no-progress"]
    )
    assert result.exit_code == 1 and "volume_99_slice_0.h5" in result.output and "Traceback" not in result.output
