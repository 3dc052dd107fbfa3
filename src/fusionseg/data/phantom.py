"""Synthetic multimodal tumour phantoms and phantom datasets in every layout.

Phantoms are small, deterministic (per seed) stand-ins for real cases, used by tests
and by ``fusionseg demo``. They are not anatomy: they reproduce the *contrasts* that
multimodal segmentation relies on.

Brain MRI phantom (:func:`make_phantom`): an ellipsoidal, skull-stripped brain (zero
background) with white matter, a grey-matter shell and ventricles (CSF), smooth
texture, a smooth multiplicative bias field and noise, and a tumour of three nested
compartments with irregular (noise-perturbed) borders:

=====================  ======  =========  ==========  ==========
compartment            T1      T1ce       T2          FLAIR
=====================  ======  =========  ==========  ==========
ED (outer shell)       hypo-   hypo-      hyper       hyper
ET (enhancing rim)     hypo-   very hyper hyper       hyper
NCR (necrotic core)    dark    dark       bright      iso
=====================  ======  =========  ==========  ==========

as on real glioma MRI (Menze et al., IEEE TMI 2015, Fig. 1): FLAIR and T2 show the
edema, T1ce the enhancing rim, T1/T1ce a dark necrotic core that is bright on T2.

PET/CT phantom (:func:`make_petct_phantom`): a body ellipse in CT (Hounsfield units:
air -1000, fat, soft tissue, a bony spine) and FDG-PET in SUV (background uptake
about 1, a hot lesion with a peaked profile and a physiological hot spot that is
not labelled).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from fusionseg.constants import (
    BRATS2017,
    BRATS2023,
    CT,
    FLAIR,
    MSD_TASK01,
    PET,
    PETCT,
    T1,
    T1CE,
    T2,
    LabelScheme,
    get_label_scheme,
)
from fusionseg.data.io import atomic_path

#: Mean intensity (arbitrary units, x MRI_SCALE) per tissue and modality.
MRI_CONTRASTS: dict[str, dict[str, float]] = {
    #        WM     GM    CSF   ED    ET    NCR
    T1: {"wm": 1.00, "gm": 0.78, "csf": 0.30, "ed": 0.68, "et": 0.72, "ncr": 0.38},
    T1CE: {"wm": 1.00, "gm": 0.80, "csf": 0.32, "ed": 0.70, "et": 1.70, "ncr": 0.38},
    T2: {"wm": 0.62, "gm": 0.82, "csf": 1.65, "ed": 1.30, "et": 1.10, "ncr": 1.50},
    FLAIR: {"wm": 0.66, "gm": 0.82, "csf": 0.25, "ed": 1.50, "et": 1.25, "ncr": 0.85},
}
MRI_SCALE = 400.0

#: Tumour compartment -> label name(s) by which a scheme's raw value is found.
_COMPARTMENT_NAMES = {"ed": ("ED",), "et": ("ET",), "ncr": ("NCR", "NET")}

#: Supported ``layout`` values of :func:`write_phantom_dataset`.
PHANTOM_LAYOUTS = ("brats2018", "brats2023", "msd", "nnunet", "autopet")


def _scheme(scheme: LabelScheme | str) -> LabelScheme:
    return get_label_scheme(scheme) if isinstance(scheme, str) else scheme


def _compartment_values(scheme: LabelScheme) -> dict[str, int]:
    """Raw label value of ED, ET and NCR in ``scheme`` (looked up by label name)."""
    by_name = {name: value for value, name in scheme.labels.items()}
    out = {}
    for compartment, names in _COMPARTMENT_NAMES.items():
        value = next((by_name[n] for n in names if n in by_name), None)
        if value is None:
            raise ValueError(
                f"scheme {scheme.name!r} has no label named {names[0]}; "
                f"use a brain-tumour scheme (brats2017, brats2023, msd_task01)"
            )
        out[compartment] = value
    return out


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Voxel-centre coordinates in mm relative to the volume centre, shape (X,Y,Z) each."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    """Normalised ellipsoid distance (1.0 on the surface), float (X, Y, Z)."""
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)))


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="wrap")
    return (field / (field.std() + 1e-12)).astype(np.float32)


def make_phantom(
    shape: tuple[int, int, int] = (64, 64, 48),
    seed: int = 0,
    scheme: LabelScheme | str = BRATS2017,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> dict:
    """A synthetic skull-stripped brain MRI case with a three-compartment tumour.

    Args:
        shape: volume shape (X, Y, Z) in voxels; at least 24 per axis.
        seed: random seed; tumour position, size, shape and texture vary with it.
        scheme: label scheme (or its name) giving the raw label values: ED = 2,
            NCR = 1, ET = 4 for brats2017, 3 for brats2023 (msd_task01 works too:
            ED 1, NET 2, ET 3).
        spacing: voxel size in mm (geometry is defined in mm).
    Returns:
        ``{"images": {"t1", "t1ce", "t2", "flair": float32 (X, Y, Z), 0 outside the
        brain, > 0 inside}, "seg": uint8 (X, Y, Z) raw labels, "brain": bool (X, Y, Z),
        "spacing": spacing, "scheme": scheme name}``. All three tumour labels are
        present, and the tumour lies inside the brain.
    Raises:
        ValueError: a shape under 24 voxels, or a scheme without ED/ET/NCR labels.
    """
    scheme = _scheme(scheme)
    values = _compartment_values(scheme)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 24:
        raise ValueError(f"shape must be 3 sizes >= 24 voxels, got {shape}")
    spacing = tuple(float(s) for s in spacing)
    rng = np.random.default_rng(seed)
    grid = _grid(shape, spacing)
    extent = np.array(shape) * np.array(spacing)
    smooth = max(1.0, min(shape) / 16)

    # Brain: ellipsoid filling ~85% of the field of view, irregular border.
    brain_radii = extent * 0.42 * rng.uniform(0.95, 1.02, 3)
    wobble = 0.04 * _smooth_noise(rng, shape, 2 * smooth)
    brain_dist = _ellipsoid(grid, (0, 0, 0), brain_radii) + wobble
    brain = brain_dist < 1.0
    gm = brain & (brain_dist > 0.78)
    ventricles = (
        _ellipsoid(grid, (0, -0.05 * extent[1], 0.05 * extent[2]), brain_radii * (0.12, 0.28, 0.18)) < 1.0
    ) & brain

    # Tumour: ED ellipsoid with radii 33-45% of the median brain radius (capped at 60%
    # of the brain radius per axis), centred at random where it stays inside the brain;
    # ET and NCR nested inside, every compartment at least ~1.5 voxels thick.
    radius_ed = np.median(brain_radii) * rng.uniform(0.33, 0.45)
    tumour_radii = np.minimum(radius_ed * rng.uniform(0.85, 1.15, 3), 0.6 * brain_radii)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    centre = direction * rng.uniform(0.2, 0.8) * (brain_radii - tumour_radii) * 0.8
    rough = 0.06 * _smooth_noise(rng, shape, smooth)
    tumour_dist = _ellipsoid(grid, centre, tumour_radii) + rough
    r_vox = float(np.min(tumour_radii / np.array(spacing)))  # thinnest axis, voxels
    step = min(0.3, 1.5 / max(r_vox, 1e-6))
    f_et = min(rng.uniform(0.55, 0.68), 1.0 - step)
    f_ncr = max(min(f_et * rng.uniform(0.45, 0.6), f_et - step), step)
    seg = np.zeros(shape, np.uint8)
    seg[tumour_dist < 1.0] = values["ed"]
    seg[tumour_dist < f_et] = values["et"]
    seg[tumour_dist < f_ncr] = values["ncr"]
    seg[~brain] = 0
    # Guarantee every compartment exists even on coarse grids: the centre voxels.
    c_idx = tuple(int(np.argmin(np.abs(g.ravel() - c))) for g, c in zip(grid, centre))
    seg[c_idx] = values["ncr"]

    tissue = {"wm": brain & ~gm & ~ventricles, "gm": gm & ~ventricles, "csf": ventricles}
    for compartment in ("ed", "et", "ncr"):
        tissue[compartment] = seg == values[compartment]
    for key in ("wm", "gm", "csf"):
        tissue[key] &= seg == 0

    bias = 1.0 + 0.06 * _smooth_noise(rng, shape, 4 * smooth)
    images = {}
    for modality, contrast in MRI_CONTRASTS.items():
        img = np.zeros(shape, np.float32)
        for key, mask in tissue.items():
            img[mask] = contrast[key]
        texture = 1.0 + 0.05 * _smooth_noise(rng, shape, smooth * 0.75)
        noise = 0.02 * rng.standard_normal(shape).astype(np.float32)
        img = (img * texture * bias + noise) * MRI_SCALE
        img = np.where(brain, np.maximum(img, 1.0), 0.0).astype(np.float32)
        images[modality] = img
    return {"images": images, "seg": seg, "brain": brain, "spacing": spacing, "scheme": scheme.name}


def make_petct_phantom(
    shape: tuple[int, int, int] = (48, 48, 32), seed: int = 0, spacing: tuple[float, float, float] = (4.0, 4.0, 3.27)
) -> dict:
    """A synthetic FDG-PET/CT case (torso cross-section) with one hot lesion.

    Args:
        shape: volume shape (X, Y, Z), at least 16 per axis.
        seed: random seed (lesion position, size, uptake; noise).
        spacing: voxel size in mm (default like the STS data: ~4 mm, 3.27 mm slices).
    Returns:
        ``{"images": {"pet": float32 SUV, "ct": float32 HU}, "seg": uint8 {0, 1},
        "body": bool, "spacing": spacing, "scheme": "petct"}``. CT: air -1000 HU,
        fat about -100, soft tissue about 40, bone about 700; PET: 0 in air, about 1
        in the body, lesion peak SUV 6-14, one unlabelled physiological hot spot.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 sizes >= 16 voxels, got {shape}")
    spacing = tuple(float(s) for s in spacing)
    rng = np.random.default_rng(seed)
    grid = _grid(shape, spacing)
    extent = np.array(shape) * np.array(spacing)

    body_radii = np.array([extent[0] * 0.45, extent[1] * 0.38, extent[2] * 10])
    body_dist = _ellipsoid(grid, (0, 0, 0), body_radii)
    body = body_dist < 1.0
    fat = body & (body_dist > 0.85)
    spine = _ellipsoid(grid, (0, -0.22 * extent[1], 0), (0.07 * extent[0], 0.07 * extent[1], extent[2] * 10)) < 1.0
    radius = rng.uniform(0.09, 0.16) * extent[:2].min()
    direction = rng.standard_normal(3)
    direction[2] *= 0.3
    direction /= np.linalg.norm(direction)
    centre = (
        direction
        * rng.uniform(0.0, 0.4)
        * np.array([body_radii[0] - radius, body_radii[1] - radius, extent[2] / 2 - radius])
    )
    rough = 0.1 * _smooth_noise(rng, shape, 1.5)
    lesion_dist = _ellipsoid(grid, centre, radius * rng.uniform(0.85, 1.15, 3)) + rough
    lesion = (lesion_dist < 1.0) & body & ~spine & ~fat
    c_idx = tuple(int(np.argmin(np.abs(g.ravel() - c))) for g, c in zip(grid, centre))
    lesion[c_idx] = True
    seg = lesion.astype(np.uint8)

    ct = np.full(shape, -1000.0, np.float32)
    ct[body] = 40.0
    ct[fat] = -100.0
    ct[spine & body] = 700.0
    ct[lesion] = 30.0
    ct += np.where(body, 12.0, 3.0) * rng.standard_normal(shape).astype(np.float32)

    pet = np.where(body, 1.0, 0.0).astype(np.float32)
    pet[fat] = 0.4
    hot_centre = (-centre[0], -centre[1] * 0.5, -centre[2])  # away from the lesion
    hot = np.exp(-0.5 * (_ellipsoid(grid, hot_centre, (2.0 * spacing[0],) * 3) ** 2))
    pet += np.where(body & ~lesion, 4.0 * hot, 0.0).astype(np.float32)
    peak = rng.uniform(6.0, 14.0)
    pet[lesion] = (peak * np.exp(-0.5 * (lesion_dist[lesion] / 0.6) ** 2)).clip(min=2.5)
    pet = ndimage.gaussian_filter(pet, 0.7)  # scanner resolution
    pet = np.where(body, pet * (1 + 0.08 * rng.standard_normal(shape)), 0.0)
    pet = np.maximum(pet, 0.0).astype(np.float32)
    return {
        "images": {PET: pet, CT: ct.astype(np.float32)},
        "seg": seg,
        "body": body,
        "spacing": spacing,
        "scheme": PETCT.name,
    }


# ---------------------------------------------------------------------------
# Writing phantom datasets
# ---------------------------------------------------------------------------


def _affine(spacing) -> np.ndarray:
    return np.diag([*spacing, 1.0]).astype(np.float64)


def save_nifti(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0), dtype: np.dtype | type | None = None) -> Path:
    """Write ``array`` as NIfTI with a diagonal affine of ``spacing`` (mm), atomically.

    ``dtype`` np.int16 rounds and clips; None keeps the array's dtype.
    """
    data = np.asarray(array)
    if dtype is not None and np.dtype(dtype) == np.int16:
        data = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
    elif dtype is not None:
        data = data.astype(dtype)
    img = nib.Nifti1Image(data, _affine(spacing))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(Path(path)) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def write_phantom_dataset(
    out_dir: str | Path,
    n_cases: int,
    layout: str = "brats2018",
    shape: tuple[int, int, int] = (64, 64, 48),
    seed: int = 0,
    n_test: int = 0,
) -> Path:
    """Write ``n_cases`` phantom cases as NIfTI files in a dataset layout.

    Args:
        out_dir: dataset folder (created; existing files of the same names are replaced).
        n_cases: labelled cases; case ``i`` uses seed ``seed + i``.
        layout: one of :data:`PHANTOM_LAYOUTS` (the ``format`` names of
            :func:`fusionseg.data.cases.discover`):
            ``brats2018`` (int16 images, brats2017 labels {0,1,2,4}),
            ``brats2023`` (int16, labels {0,1,2,3}), ``msd`` (4-D float32 images with
            channels FLAIR, T1w, t1gd, T2w, msd_task01 labels, dataset.json),
            ``nnunet`` (v2 dataset.json, channels T1, T1ce, T2, FLAIR, brats2023
            labels), ``autopet`` (float32 SUV and CTres, SEG {0,1}).
        shape: volume shape (X, Y, Z).
        seed: base seed.
        n_test: extra cases without segmentation (imagesTs for msd/nnunet; case
            folders without a seg file otherwise).
    Returns:
        ``out_dir`` as a Path.
    Raises:
        ValueError: unknown layout.
    """
    if layout not in PHANTOM_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(PHANTOM_LAYOUTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = {
        "brats2018": _write_brats2018,
        "brats2023": _write_brats2023,
        "msd": _write_msd,
        "nnunet": _write_nnunet,
        "autopet": _write_autopet,
    }[layout]
    for i in range(n_cases + n_test):
        writer(out, i, shape, seed + i, labelled=i < n_cases)
    if layout == "msd":
        _write_json(out / "dataset.json", _msd_json(out, n_cases, n_test))
    elif layout == "nnunet":
        _write_json(
            out / "dataset.json",
            {
                "name": "PhantomBraTS",
                "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
                "labels": {name: value for value, name in BRATS2023.labels.items()},
                "numTraining": n_cases,
                "file_ending": ".nii.gz",
            },
        )
    return out


def _write_brats(
    out: Path, case_id: str, sep: str, suffixes: dict[str, str], shape, seed, scheme: LabelScheme, labelled: bool
) -> None:
    ph = make_phantom(shape, seed, scheme)
    folder = out / case_id
    for suffix, modality in suffixes.items():
        save_nifti(ph["images"][modality], folder / f"{case_id}{sep}{suffix}.nii.gz", dtype=np.int16)
    if labelled:
        save_nifti(ph["seg"], folder / f"{case_id}{sep}seg.nii.gz", dtype=np.uint8)


def _write_brats2018(out, i, shape, seed, labelled):
    _write_brats(
        out,
        f"Brats18_Phantom_{i:03d}",
        "_",
        {"t1": T1, "t1ce": T1CE, "t2": T2, "flair": FLAIR},
        shape,
        seed,
        BRATS2017,
        labelled,
    )


def _write_brats2023(out, i, shape, seed, labelled):
    _write_brats(
        out,
        f"BraTS-GLI-{i:05d}-000",
        "-",
        {"t1n": T1, "t1c": T1CE, "t2w": T2, "t2f": FLAIR},
        shape,
        seed,
        BRATS2023,
        labelled,
    )


#: MSD Task01 channel order, as in its dataset.json.
MSD_CHANNELS = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
_MSD_ORDER = (FLAIR, T1, T1CE, T2)


def _write_msd(out, i, shape, seed, labelled):
    ph = make_phantom(shape, seed, MSD_TASK01)
    case_id = f"BRATS_{i + 1:03d}"
    stacked = np.stack([ph["images"][m] for m in _MSD_ORDER], axis=-1)  # (X, Y, Z, C)
    split = "Tr" if labelled else "Ts"
    save_nifti(stacked, out / f"images{split}" / f"{case_id}.nii.gz", dtype=np.float32)
    if labelled:
        save_nifti(ph["seg"], out / "labelsTr" / f"{case_id}.nii.gz", dtype=np.uint8)


def _msd_json(out: Path, n_cases: int, n_test: int) -> dict:
    return {
        "name": "BRATS",
        "description": "fusionseg phantom in MSD Task01 layout",
        "tensorImageSize": "4D",
        "modality": MSD_CHANNELS,
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": n_cases,
        "numTest": n_test,
        "training": [
            {"image": f"./imagesTr/BRATS_{i + 1:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i + 1:03d}.nii.gz"}
            for i in range(n_cases)
        ],
        "test": [f"./imagesTs/BRATS_{i + 1:03d}.nii.gz" for i in range(n_cases, n_cases + n_test)],
    }


def _write_nnunet(out, i, shape, seed, labelled):
    ph = make_phantom(shape, seed, BRATS2023)
    case_id = f"PHANTOM_{i:03d}"
    split = "Tr" if labelled else "Ts"
    for channel, modality in enumerate((T1, T1CE, T2, FLAIR)):
        save_nifti(ph["images"][modality], out / f"images{split}" / f"{case_id}_{channel:04d}.nii.gz", dtype=np.float32)
    if labelled:
        save_nifti(ph["seg"], out / "labelsTr" / f"{case_id}.nii.gz", dtype=np.uint8)


def _write_autopet(out, i, shape, seed, labelled):
    ph = make_petct_phantom(shape, seed)
    folder = out / f"PETCT_{i:04d}"
    save_nifti(ph["images"][PET], folder / "SUV.nii.gz", ph["spacing"], dtype=np.float32)
    save_nifti(ph["images"][CT], folder / "CTres.nii.gz", ph["spacing"], dtype=np.float32)
    if labelled:
        save_nifti(ph["seg"], folder / "SEG.nii.gz", ph["spacing"], dtype=np.uint8)
