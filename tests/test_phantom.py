"""Synthetic phantoms: labels, geometry and the MRI / PET-CT contrasts they promise."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from fusionseg.constants import BRATS2017, BRATS2023, MSD_TASK01
from fusionseg.data.phantom import make_petct_phantom, make_phantom, write_phantom_dataset

SHAPE = (48, 48, 32)


@pytest.mark.parametrize(
    "scheme, labels", [(BRATS2017, {0, 1, 2, 4}), (BRATS2023, {0, 1, 2, 3}), (MSD_TASK01, {0, 1, 2, 3})]
)
def test_every_tumour_label_present_for_each_scheme(scheme, labels):
    for seed in range(5):
        ph = make_phantom(SHAPE, seed=seed, scheme=scheme)
        assert set(np.unique(ph["seg"]).tolist()) == labels
        assert ph["seg"].dtype == np.uint8 and ph["seg"].shape == SHAPE


def test_tumour_inside_brain_and_background_zero():
    ph = make_phantom(SHAPE, seed=3)
    brain = ph["brain"]
    assert not ph["seg"][~brain].any()
    for modality, img in ph["images"].items():
        assert img.dtype == np.float32 and img.shape == SHAPE
        assert np.all(img[~brain] == 0), modality
        assert np.all(img[brain] > 0), modality


def test_same_seed_same_phantom_other_seed_other_tumour():
    a, b, c = make_phantom(SHAPE, seed=1), make_phantom(SHAPE, seed=1), make_phantom(SHAPE, seed=2)
    np.testing.assert_array_equal(a["seg"], b["seg"])
    np.testing.assert_array_equal(a["images"]["flair"], b["images"]["flair"])
    assert not np.array_equal(a["seg"], c["seg"])


def test_mri_contrasts_as_on_real_glioma_mri():
    ph = make_phantom((64, 64, 48), seed=0, scheme=BRATS2017)
    seg, im = ph["seg"], ph["images"]
    normal = ph["brain"] & (seg == 0)

    def mean(modality, mask):
        return float(im[modality][mask].mean())

    ncr, ed, et, tumour = seg == 1, seg == 2, seg == 4, seg > 0
    for m in ("flair", "t2"):  # hyperintense edema
        assert mean(m, ed) > 1.4 * mean(m, normal)
    assert mean("t1ce", et) > 1.5 * mean("t1ce", normal)  # enhancing rim
    assert mean("t1ce", et) > max(mean("t1ce", ed), mean("t1ce", ncr))
    for m in ("t1", "t1ce"):  # dark necrotic core ...
        assert mean(m, ncr) < 0.6 * mean(m, normal)
    assert mean("t2", ncr) > 1.5 * mean("t2", normal)  # ... bright on T2
    assert mean("t1", tumour) < 0.9 * mean("t1", normal)  # mildly hypointense on T1
    assert mean("t1", tumour) > 0.4 * mean("t1", normal)


def test_spacing_defines_geometry_in_mm():
    ph = make_phantom((48, 48, 24), seed=0, spacing=(1.0, 1.0, 2.0))
    assert set(np.unique(ph["seg"]).tolist()) == {0, 1, 2, 4}
    # Brain extent along z (in mm) is comparable to x: geometry is defined in mm.
    zs = np.flatnonzero(ph["brain"].any(axis=(0, 1)))
    xs = np.flatnonzero(ph["brain"].any(axis=(1, 2)))
    assert abs((np.ptp(zs) + 1) * 2.0 - (np.ptp(xs) + 1)) < 10


def test_too_small_shape_raises():
    with pytest.raises(ValueError, match="shape"):
        make_phantom((16, 48, 48))


def test_petct_phantom_hot_lesion_and_hounsfield_units():
    ph = make_petct_phantom((40, 40, 24), seed=2)
    pet, ct, seg, body = ph["images"]["pet"], ph["images"]["ct"], ph["seg"], ph["body"]
    assert set(np.unique(seg).tolist()) == {0, 1}
    assert pet.dtype == np.float32 and ct.dtype == np.float32
    assert pet[seg == 1].max() > 5.0
    assert pet[seg == 1].mean() > 2.0 * pet[body & (seg == 0)].mean()
    assert np.all(pet[~body] == 0) and pet.min() >= 0
    assert abs(float(np.median(ct[~body])) + 1000) < 10  # air
    assert abs(float(np.median(ct[body & (seg == 0)])) - 40) < 30  # soft tissue
    assert ct.max() > 500  # bone


@pytest.mark.parametrize("layout", ["brats2018", "brats2023", "msd", "nnunet", "autopet"])
def test_writer_uses_diagonal_mm_affine_and_stated_dtypes(phantom_dataset, layout):
    root = phantom_dataset(layout)
    files = sorted(root.rglob("*.nii.gz"))
    assert files
    for f in files:
        img = nib.load(f)
        zooms = img.header.get_zooms()[:3]
        np.testing.assert_allclose(img.affine, np.diag([*zooms, 1.0]))
        if layout.startswith("brats") and not f.name.endswith("seg.nii.gz"):
            assert img.get_data_dtype() == np.int16
        if layout == "msd" and "imagesTr" in f.parts:
            assert img.shape == (*SHAPE, 4)


def test_unknown_layout_raises(tmp_path):
    with pytest.raises(ValueError, match="brats2018"):
        write_phantom_dataset(tmp_path, 1, layout="kits")
