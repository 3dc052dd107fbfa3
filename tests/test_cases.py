"""Dataset discovery for every layout, and label schemes as data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fusionseg.constants import BRATS2017, BRATS2023, LABEL_SCHEMES, MSD_TASK01, PETCT
from fusionseg.data.cases import ImageRef, discover, list_formats
from fusionseg.data.dataset_json import scheme_from_labels
from fusionseg.errors import DataError

MRI = ("t1", "t1ce", "t2", "flair")


# --- discovery of each layout -------------------------------------------------


def test_brats2018_autodetected_with_scheme_brats2017(brats18_phantom):
    ds = discover(brats18_phantom)
    assert (ds.format, ds.scheme, ds.modalities) == ("brats2018", BRATS2017, MRI)
    assert [c.case_id for c in ds.cases] == [f"Brats18_Phantom_{i:03d}" for i in range(4)]
    case = ds.cases[0]
    assert case.images["t1ce"] == ImageRef(brats18_phantom / case.case_id / f"{case.case_id}_t1ce.nii.gz")
    assert case.label == brats18_phantom / case.case_id / f"{case.case_id}_seg.nii.gz"


def test_brats2023_autodetected_maps_t1n_t1c_t2w_t2f(phantom_dataset):
    root = phantom_dataset("brats2023")
    ds = discover(root)
    assert (ds.format, ds.scheme) == ("brats2023", BRATS2023)
    case = ds.cases[0]
    assert case.case_id == "BraTS-GLI-00000-000"
    suffix = {m: ref.path.name.removeprefix(case.case_id + "-") for m, ref in case.images.items()}
    assert suffix == {"t1": "t1n.nii.gz", "t1ce": "t1c.nii.gz", "t2": "t2w.nii.gz", "flair": "t2f.nii.gz"}


def test_msd_channel_order_from_dataset_json(phantom_dataset):
    root = phantom_dataset("msd", n_cases=2, n_test=1)
    ds = discover(root)
    assert (ds.format, ds.scheme) == ("msd", MSD_TASK01)
    # dataset.json: {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert ds.modalities == ("flair", "t1", "t1ce", "t2")
    case = ds.case("BRATS_001")
    image = root / "imagesTr" / "BRATS_001.nii.gz"
    assert case.images == {
        "flair": ImageRef(image, 0),
        "t1": ImageRef(image, 1),
        "t1ce": ImageRef(image, 2),
        "t2": ImageRef(image, 3),
    }
    assert case.label == root / "labelsTr" / "BRATS_001.nii.gz"
    test_case = ds.case("BRATS_003")  # imagesTs: no label
    assert test_case.label is None and test_case.images["t2"] == ImageRef(root / "imagesTs" / "BRATS_003.nii.gz", 3)
    assert len(ds.labelled) == 2


def test_msd_ignores_macos_resource_forks(phantom_dataset, tmp_path):
    root = Path(shutil.copytree(phantom_dataset("msd"), tmp_path / "msd"))
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    assert [c.case_id for c in discover(root).cases] == ["BRATS_001", "BRATS_002"]


def test_nnunet_v2_channel_names_and_known_scheme_by_label_names(phantom_dataset):
    root = phantom_dataset("nnunet", n_cases=2, n_test=1)
    ds = discover(root)
    assert ds.format == "nnunet"
    # labels {"background": 0, "NCR": 1, "ED": 2, "ET": 3} -> brats2023, not msd_task01
    assert ds.scheme == BRATS2023
    assert ds.modalities == MRI
    case = ds.case("PHANTOM_000")
    assert case.images["t2"] == ImageRef(root / "imagesTr" / "PHANTOM_000_0002.nii.gz")
    assert case.label == root / "labelsTr" / "PHANTOM_000.nii.gz"
    assert ds.case("PHANTOM_002").label is None  # imagesTs


def _nnunet_with_json(phantom_dataset, tmp_path, meta: dict) -> Path:
    root = Path(shutil.copytree(phantom_dataset("nnunet"), tmp_path / "nnunet"))
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_v1_modality_and_unknown_labels_build_a_scheme(phantom_dataset, tmp_path):
    root = _nnunet_with_json(
        phantom_dataset,
        tmp_path,
        {
            "name": "Task500_Liver",
            "modality": {"0": "CT", "1": "PET", "2": "MR", "3": "MR"},
            "labels": {"0": "background", "1": "liver", "2": "cancer"},
        },
    )
    ds = discover(root)
    assert ds.modalities == ("ct", "pet", "mr_2", "mr_3")
    assert ds.scheme.name == "task500_liver"
    assert ds.scheme.labels == {0: "background", 1: "liver", 2: "cancer"}
    assert ds.scheme.regions == {"liver": (1,), "cancer": (2,), "foreground": (1, 2)}


def test_nnunet_region_labels_matching_msd_task01(phantom_dataset, tmp_path):
    # nnU-Net v2 Dataset137_BraTS2021 declares regions, in the MSD label convention.
    root = _nnunet_with_json(
        phantom_dataset,
        tmp_path,
        {
            "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
            "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        },
    )
    assert discover(root).scheme == MSD_TASK01


def test_nnunet_missing_dataset_json_names_it(phantom_dataset, tmp_path):
    root = Path(shutil.copytree(phantom_dataset("nnunet"), tmp_path / "nnunet"))
    (root / "dataset.json").unlink()
    with pytest.raises(DataError, match="dataset.json not found") as err:
        discover(root)
    assert err.value.file == root / "dataset.json" and "channel_names" in err.value.fix


def test_autopet_suv_ctres_seg(phantom_dataset):
    root = phantom_dataset("autopet")
    ds = discover(root)
    assert (ds.format, ds.scheme, ds.modalities) == ("autopet", PETCT, ("pet", "ct"))
    case = ds.cases[0]
    assert case.images == {
        "pet": ImageRef(root / case.case_id / "SUV.nii.gz"),
        "ct": ImageRef(root / case.case_id / "CTres.nii.gz"),
    }
    assert case.label == root / case.case_id / "SEG.nii.gz"


# --- general behaviour ---------------------------------------------------------


def test_explicit_format_that_does_not_match_says_so(brats18_phantom):
    with pytest.raises(DataError, match="does not match the brats2023 layout") as err:
        discover(brats18_phantom, format="brats2023")
    assert "--format brats2018" in err.value.fix


def test_unknown_format_lists_valid_ones(brats18_phantom):
    with pytest.raises(DataError, match="unknown format 'kits'") as err:
        discover(brats18_phantom, format="kits")
    assert "brats2018" in err.value.fix and "autopet" in err.value.fix


def test_folder_matching_no_layout_lists_layouts_and_content(tmp_path):
    (tmp_path / "patient1").mkdir()
    (tmp_path / "patient1" / "scan.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no supported dataset layout") as err:
        discover(tmp_path)
    text = str(err.value)
    assert "notes.txt" in text and "scan.nii.gz" in text
    for line in list_formats():
        assert line in err.value.fix


def test_missing_folder_raises(tmp_path):
    with pytest.raises(DataError, match="not found"):
        discover(tmp_path / "nope")


def test_missing_seg_gives_label_none_and_missing_image_keeps_expected_path(brats18_copy):
    case_dir = brats18_copy / "Brats18_Phantom_001"
    (case_dir / "Brats18_Phantom_001_seg.nii.gz").unlink()
    (case_dir / "Brats18_Phantom_001_flair.nii.gz").unlink()
    case = discover(brats18_copy).case("Brats18_Phantom_001")
    assert case.label is None
    assert case.images["flair"].path == case_dir / "Brats18_Phantom_001_flair.nii.gz"


def test_uncompressed_nii_accepted(brats18_copy):
    case_dir = brats18_copy / "Brats18_Phantom_000"
    gz = case_dir / "Brats18_Phantom_000_t2.nii.gz"
    import nibabel as nib

    nib.save(nib.load(gz), case_dir / "Brats18_Phantom_000_t2.nii")
    gz.unlink()
    case = discover(brats18_copy).case("Brats18_Phantom_000")
    assert case.images["t2"].path == case_dir / "Brats18_Phantom_000_t2.nii"


def test_cases_sorted_and_grade_subfolders_descended(brats18_copy):
    (brats18_copy / "HGG").mkdir()
    (brats18_copy / "LGG").mkdir()
    shutil.move(brats18_copy / "Brats18_Phantom_000", brats18_copy / "LGG")
    shutil.move(brats18_copy / "Brats18_Phantom_003", brats18_copy / "HGG")
    ds = discover(brats18_copy)
    assert [c.case_id for c in ds.cases] == [f"Brats18_Phantom_{i:03d}" for i in range(4)]
    assert ds.case("Brats18_Phantom_000").images["t1"].path.parent.parent.name == "LGG"


def test_scheme_override_and_unknown_scheme(brats18_phantom):
    assert discover(brats18_phantom, scheme="brats2023").scheme == BRATS2023
    with pytest.raises(DataError, match="unknown label scheme") as err:
        discover(brats18_phantom, scheme="brats2019")
    assert "brats2017" in err.value.fix


def test_folder_with_two_datasets_is_ambiguous(phantom_dataset, tmp_path):
    shutil.copytree(phantom_dataset("brats2018"), tmp_path / "brats")
    shutil.copytree(phantom_dataset("autopet"), tmp_path / "petct")
    with pytest.raises(DataError, match="several layouts"):
        discover(tmp_path)


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}, MSD_TASK01),
        ({0: "background", 1: "necrotic core", 2: "peritumoral edema", 3: "enhancing"}, BRATS2023),
        ({0: "background", 1: "NCR/NET", 2: "ED", 4: "ET"}, BRATS2017),
        ({0: "background", 1: "lesion"}, PETCT),
        ({0: "0", 1: "1"}, PETCT),  # uninformative names: values decide
    ],
)
def test_scheme_from_labels_recognises_known_schemes(labels, expected):
    assert scheme_from_labels(labels) == expected


def test_scheme_from_labels_single_organ_is_not_petct():
    scheme = scheme_from_labels({0: "background", 1: "spleen"}, name="spleen")
    assert scheme.name == "spleen" and scheme.regions == {"spleen": (1,)}


# --- label schemes ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", list(LABEL_SCHEMES.values()), ids=list(LABEL_SCHEMES))
def test_to_classes_from_classes_round_trip(scheme):
    rng = np.random.default_rng(0)
    raw = rng.choice(np.array(scheme.values), size=(6, 5, 4)).astype(np.uint8)
    classes = scheme.to_classes(raw)
    assert classes.dtype == np.uint8 and classes.max() < scheme.num_classes
    np.testing.assert_array_equal(scheme.from_classes(classes), raw)
    np.testing.assert_array_equal(scheme.to_classes(np.array(scheme.values)), np.arange(scheme.num_classes))


_SEG = np.array([0, 1, 2, 3, 4])


@pytest.mark.parametrize(
    "scheme, region, expected",
    [
        (BRATS2017, "WT", [0, 1, 1, 0, 1]),
        (BRATS2017, "TC", [0, 1, 0, 0, 1]),
        (BRATS2017, "ET", [0, 0, 0, 0, 1]),
        (BRATS2023, "WT", [0, 1, 1, 1, 0]),
        (BRATS2023, "TC", [0, 1, 0, 1, 0]),
        (BRATS2023, "ET", [0, 0, 0, 1, 0]),
        (MSD_TASK01, "WT", [0, 1, 1, 1, 0]),
        (MSD_TASK01, "TC", [0, 0, 1, 1, 0]),
        (MSD_TASK01, "ET", [0, 0, 0, 1, 0]),
        (PETCT, "tumour", [0, 1, 0, 0, 0]),
    ],
)
def test_region_masks_follow_evaluation_md(scheme, region, expected):
    np.testing.assert_array_equal(scheme.region_mask(_SEG, region), np.array(expected, bool))


def test_unknown_label_values_raise_naming_scheme():
    with pytest.raises(ValueError, match=r"\[3\] are not in scheme 'brats2017'"):
        BRATS2017.to_classes(np.array([0, 1, 3]))
    with pytest.raises(KeyError, match="choose one of"):
        BRATS2017.region_mask(_SEG, "NCR")
