"""Predict whole cases and write label maps in a chosen label convention.

2-D models run slice-wise along the axial axis of the preprocessed (cropped,
normalised) volume; class probabilities of several models (e.g. the folds of a
cross-validation run) are averaged; the arg-max is placed back into the original grid
and mapped to the raw values of the model's label scheme, and from there, label by
label name (:func:`label_mapping`), to another scheme when asked (e.g. a BraTS 2018
model predicting a BraTS 2023 folder writes ET as 3, not 4). The NIfTI written has
the input's exact affine and header (only the data type changes to an integer type).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fusionseg.config import ExperimentConfig, InferenceConfig, PreprocessConfig, validate_saved_config
from fusionseg.constants import LabelScheme, describe_labels, scheme_from_dict, scheme_to_dict
from fusionseg.data.cases import Case
from fusionseg.data.dataset_json import label_tags
from fusionseg.data.io import save_label_map
from fusionseg.data.preprocess import PreparedCase, prepare_case_arrays
from fusionseg.data.sampling import context_planes, round_up
from fusionseg.errors import DataError, FusionsegError
from fusionseg.inference.options import InferOptions
from fusionseg.inference.postprocess import Postprocess, combine_settings
from fusionseg.outputs import CLASS_OUTPUT, OutputHead


#: In-plane mirrorings of a (B, C, H, W) batch used by test-time augmentation.
MIRRORS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))


def class_probabilities(
    model: nn.Module, batch: torch.Tensor, mirror: bool = False, head: OutputHead = CLASS_OUTPUT
) -> torch.Tensor:
    """Probabilities of ``model(batch)``, (B, K, H, W) float32: softmax over classes, or
    a sigmoid per region for a region ``head``; with ``mirror``, the mean over the
    :data:`MIRRORS` of the input, each output mirrored back (nnU-Net's test-time
    mirroring)."""
    if not mirror:
        return head.probabilities(model(batch))
    total = None
    for dims in MIRRORS:
        x = batch.flip(dims) if dims else batch
        p = head.probabilities(model(x))
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    return total / len(MIRRORS)


@torch.no_grad()
def predict_probabilities(
    models: Sequence[nn.Module],
    image: np.ndarray,
    axial_axis: int,
    divisor: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    mirror: bool = False,
    head: OutputHead = CLASS_OUTPUT,
    context: int = 0,
) -> np.ndarray:
    """Slice-wise probabilities of a volume, averaged over ``models``.

    Args:
        models: 2-D networks (B, C, H, W) -> logits (B, K, H, W), in eval mode.
        image: float32 (C, X, Y, Z) preprocessed volume.
        axial_axis: spatial axis (0-2) to slice along.
        divisor: in-plane sizes are zero-padded to a multiple of this.
        mirror: test-time mirroring (:func:`class_probabilities`).
        head: what the output channels are (softmax classes or sigmoid regions).
        context: 2.5-D: each slice with its ``context`` neighbours per side as channels
            (:func:`fusionseg.data.sampling.context_planes`, as in training).
    Returns:
        float32 (K, X, Y, Z) probabilities (K: classes or regions).
    """
    stack = np.moveaxis(np.asarray(image, dtype=np.float32), 1 + axial_axis, 0)  # (Z, C, H, W)
    z, c, h, w = stack.shape
    ph, pw = round_up(h, divisor), round_up(w, divisor)
    top, left = (ph - h) // 2, (pw - w) // 2
    out = None
    for start in range(0, z, batch_size):
        stop = min(start + batch_size, z)
        if context:
            planes = np.stack([context_planes(image, axial_axis, k, context) for k in range(start, stop)])
        else:
            planes = np.array(stack[start:stop])
        chunk = torch.zeros((stop - start, planes.shape[1], ph, pw), dtype=torch.float32)
        chunk[:, :, top : top + h, left : left + w] = torch.from_numpy(planes)
        chunk = chunk.to(device)
        probs = sum(class_probabilities(m, chunk, mirror, head) for m in models) / len(models)
        probs = probs[:, :, top : top + h, left : left + w].cpu().numpy()  # (b, K, H, W)
        if out is None:
            out = np.empty((z, probs.shape[1], h, w), dtype=np.float32)
        out[start : start + probs.shape[0]] = probs
    # (Z, K, H, W) -> (K, X, Y, Z)
    return np.moveaxis(np.moveaxis(out, 1, 0), 1, 1 + axial_axis)


def predict_prepared(
    models: Sequence[nn.Module],
    case: PreparedCase,
    modalities: Sequence[str],
    scheme: LabelScheme,
    divisor: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    mirror: bool = False,
    head: OutputHead = CLASS_OUTPUT,
    context: int = 0,
) -> np.ndarray:
    """Raw label map (original grid, scheme values) for a preprocessed case
    (``mirror``: test-time mirroring, see :func:`class_probabilities`; ``head``: arg-max
    of class probabilities or regions painted largest first; ``context``: 2.5-D)."""
    probs = predict_probabilities(
        models, case.select(list(modalities)), case.axial_axis, divisor, batch_size, device, mirror, head, context
    )
    classes = head.classes(case.to_box(probs), dim=0)
    raw = scheme.from_classes(classes, dtype=np.int16 if max(scheme.values) > 255 else np.uint8)
    return case.uncrop(raw)


def _tissue(name: str) -> frozenset[str] | None:
    """The tissue class a label name denotes, as the tags dataset discovery uses to
    tell schemes apart ("NCR", "NET", "necrotic core" -> core; "ED", "edema" -> ed;
    "ET", "enhancing tumour" -> et; "background" -> bg); None for a name that says
    nothing ("label 3")."""
    tags = label_tags(name)
    return frozenset(tags) if tags else None


def label_mapping(source: LabelScheme, target: LabelScheme) -> dict[int, int]:
    """Raw value in ``source`` -> raw value in ``target`` of the same tissue class.

    Labels are matched by name (:func:`_tissue`: NCR = NCR/NET = NET, ED, ET,
    background, tumour), so BraTS 2017-2021 -> BraTS 2023 is {0: 0, 1: 1, 2: 2, 4: 3}
    and BraTS -> MSD Task01 is {0: 0, 1: 2, 2: 1, 4: 3}. Schemes with equal labels
    map onto themselves whatever their names.

    Raises:
        FusionsegError: a ``source`` label has no name-match in ``target``, or
            several, or two labels would land on one value (names both schemes).
    """
    if source.labels == target.labels:
        return {v: v for v in source.values}
    wanted = {v: _tissue(n) for v, n in target.labels.items()}
    mapping: dict[int, int] = {}
    problems = []
    for value, name in sorted(source.labels.items()):
        tissue = _tissue(name)
        hits = [t for t, w in wanted.items() if tissue is not None and w == tissue]
        if len(hits) == 1:
            mapping[value] = hits[0]
        else:
            problems.append(
                f"{value} {name!r} matches {'no' if not hits else 'several'} {target.name} label{'s' if hits else ''}"
            )
    if not problems and len(set(mapping.values())) < len(mapping):
        problems.append("two labels would get the same value")
    if problems:
        raise FusionsegError(
            f"cannot map the model's label scheme {source.name} ({describe_labels(source)}) onto "
            f"{target.name} ({describe_labels(target)}) by label name: {'; '.join(problems)}. "
            "Pass --labels model to write the model's own convention."
        )
    return mapping


def remap_labels(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Apply a :func:`label_mapping` to a raw label map (same shape; uint8, or int16
    when a target value exceeds 255). Values absent from ``mapping`` must not occur."""
    dtype = np.int16 if max(mapping.values(), default=0) > 255 else np.uint8
    if all(k == v for k, v in mapping.items()):
        return labels.astype(dtype, copy=False)
    lut = np.zeros(max(mapping) + 1, dtype=dtype)
    for k, v in mapping.items():
        lut[k] = v
    return lut[np.asarray(labels, dtype=np.int64)]


@dataclass
class Predictor:
    """Trained model(s) with what is needed to predict new cases.

    Built from a run folder or checkpoint by :func:`load_predictor`.
    """

    models: list[nn.Module]  # strategies: (B, C, H, W) -> logits
    modalities: tuple[str, ...]
    scheme: LabelScheme
    preprocess: PreprocessConfig
    divisor: int
    sources: list[Path]
    device: str = "cpu"
    postprocess: Postprocess = field(default_factory=Postprocess)
    mirror: bool = False  # test-time mirroring
    spatial_dims: int = 2
    options: InferOptions = field(default_factory=InferOptions)  # as the run predicted (window, overlap, ...)
    #: why the models may predict a case that lacks a sequence ("" = they may not):
    #: built for it (one branch per modality) or trained with modality dropout
    missing_ok: str = ""
    simulate: str = "zero"  # how an absent sequence is shown to them (missing.simulate)

    def absent(self, case: Case) -> list[str]:
        """The model's modalities that ``case`` lacks (no entry, or no file)."""
        return [m for m in self.modalities if m not in case.images or not Path(case.images[m].path).exists()]

    def _prepared(self, case: Case, absent: Sequence[str]) -> tuple[PreparedCase, list[nn.Module]]:
        """The case preprocessed from the sequences it has (``absent`` channels zero
        placeholders the models never read as such) and the models to run on it."""
        present = [m for m in self.modalities if m not in absent]
        prepared = prepare_case_arrays(
            Case(case.case_id, {m: case.images[m] for m in present}, None), self.scheme, self.preprocess, tuple(present)
        )
        if len(present) == len(self.modalities):
            return prepared, self.models
        from fusionseg.strategies.missing import WithSubset

        image = np.zeros((len(self.modalities), *prepared.image.shape[1:]), dtype=np.float32)
        for i, m in enumerate(self.modalities):
            if m in present:
                image[i] = prepared.image[present.index(m)]
        return replace(prepared, modalities=self.modalities, image=image), [WithSubset(x, present) for x in self.models]

    def predict_case(self, case: Case, batch_size: int = 16, labels: LabelScheme | None = None) -> np.ndarray:
        """Raw label map (X, Y, Z) of a case in the original grid, post-processed with
        :attr:`postprocess` (the run's choice; identity when none).

        Args:
            case: the case; needs the model's :attr:`modalities` (not a segmentation).
            batch_size: slices per forward pass (2-D models).
            labels: label convention of the result (e.g. the dataset's scheme); None =
                the model's :attr:`scheme`. Labels map by name (:func:`label_mapping`).
        Returns:
            integer array (X, Y, Z), uint8 (int16 for values > 255), values of ``labels``.
        Raises:
            DataError: a modality the model needs is missing or unreadable.
            FusionsegError: ``labels`` cannot be mapped from the model's scheme.
        """
        mapping = label_mapping(self.scheme, labels) if labels is not None else None
        absent = self.absent(case)
        if absent and (not self.missing_ok or len(absent) == len(self.modalities)):
            raise DataError(missing_message(case, absent, self.modalities), None, missing_fix(self.missing_ok))
        prepared, models = self._prepared(case, absent)
        from fusionseg.inference.inferers import get_inferer

        # the run's own inferer and options (train's test predictions are made the same way)
        options = replace(self.options, mirror=self.mirror, batch_size=batch_size, device=self.device)
        raw = get_inferer(self.spatial_dims)(models, prepared, self.modalities, self.scheme, self.divisor, options)
        if not self.postprocess.is_identity:
            raw = self.postprocess(raw, prepared.spacing, self.scheme)
        return raw if mapping is None else remap_labels(raw, mapping)

    def write_case(
        self, case: Case, out: Path, overwrite: bool = False, batch_size: int = 16, labels: LabelScheme | None = None
    ) -> Path:
        """Predict ``case`` and write ``out`` atomically (a temporary file renamed onto
        ``out``: an interrupted write leaves no partial ``out``) with the affine and
        header of the case's first model modality, in the ``labels`` convention (None =
        the model's; see :meth:`predict_case`).

        Raises:
            FileExistsError: ``out`` exists and not ``overwrite``.
            DataError, FusionsegError: as :meth:`predict_case`.
        """
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it.")
        result = self.predict_case(case, batch_size, labels)
        return save_label_map(result, case.images[self.modalities[0]].path, out, overwrite=overwrite)


def missing_message(case: Case, absent: Sequence[str], modalities: Sequence[str]) -> str:
    """What a case lacks, with the files looked for."""
    files = [str(case.images[m].path) for m in absent if m in case.images]
    where = f": file is missing ({', '.join(files)})" if files else ""
    return f"case {case.case_id} lacks {', '.join(absent)}{where}; the model takes {', '.join(modalities)}."


def missing_fix(missing_ok: str) -> str:
    """How to predict a case that lacks a sequence."""
    if missing_ok:
        return "provide at least one of the model's sequences."
    return (
        "provide the file(s), leave the case out with --case, or predict with a model built for absent "
        "sequences: strategy a2fseg, or any model trained with modality dropout "
        "(`--set missing.dropout=alternate`)."
    )


@dataclass
class RulePredictor:
    """A PET rule run (``strategy: threshold``) as a predictor for new cases: each case's
    SUV image thresholded as the run's folds did (:func:`fusionseg.inference.rules.
    rule_labels`), with their post-processing (none or fixed), written like a model's
    prediction. Same interface as :class:`Predictor` (no networks: ``models`` empty)."""

    rule: dict
    scheme: LabelScheme
    sources: list[Path]
    postprocess: Postprocess = field(default_factory=Postprocess)
    modalities: tuple[str, ...] = ("pet",)
    models: tuple = ()
    mirror: bool = False
    spatial_dims: int = 3
    missing_ok: str = ""  # the rule needs its SUV image
    simulate: str = ""

    def absent(self, case: Case) -> list[str]:
        """Nothing is simulated for a rule: a missing SUV file is an input error."""
        return []

    def predict_case(self, case: Case, batch_size: int = 16, labels: LabelScheme | None = None) -> np.ndarray:
        """Raw label map (X, Y, Z) of ``case`` on its PET grid, in ``labels`` (None: the
        run's scheme). Raises DataError (no or unreadable PET image)."""
        from fusionseg.config import ThresholdConfig
        from fusionseg.data.io import load_nifti, voxel_spacing
        from fusionseg.inference.rules import rule_labels

        raw = rule_labels(case, ThresholdConfig.model_validate(self.rule), self.scheme)
        if not self.postprocess.is_identity:
            raw = self.postprocess(raw, voxel_spacing(load_nifti(case.images["pet"].path)), self.scheme)
        return raw if labels is None else remap_labels(raw, label_mapping(self.scheme, labels))

    write_case = Predictor.write_case


def _rule_predictor(source: Path, fold: int | None, postprocess: bool) -> RulePredictor | None:
    """The :class:`RulePredictor` of a rule run folder; None for any other source."""
    if not source.is_dir():
        return None
    records = sorted(source.glob(f"fold_{fold}/fit.json" if fold is not None else "fold_*/fit.json"))
    fits = [json.loads(r.read_text()) for r in records]
    if not fits or fits[0].get("rule") is None:
        return None
    summary = source / "summary.json"
    if not summary.exists():
        raise FusionsegError(f"{source}: the rule run has not finished (no summary.json); run fusionseg train again.")
    scheme = scheme_from_dict(json.loads(summary.read_text())["label_scheme"])
    settings = [Postprocess.from_dict(f.get("postprocess", {}).get("setting")) for f in fits]
    return RulePredictor(
        rule=fits[0]["rule"],
        scheme=scheme,
        sources=records,
        postprocess=combine_settings(settings) if postprocess else Postprocess(),
    )


def checkpoint_meta(cfg: ExperimentConfig, modalities: Sequence[str], scheme: LabelScheme, divisor: int) -> dict:
    """Metadata saved in ``best.ckpt`` so the strategy can be rebuilt without the run's
    config file: the resolved experiment config, modalities, label scheme, divisor."""
    return {
        "experiment": cfg.model_dump(mode="json"),
        "modalities": list(modalities),
        "scheme": scheme_to_dict(scheme),
        "preprocess": cfg.preprocess.model_dump(mode="json"),
        "divisor": divisor,
    }


def model_from_checkpoint(path: Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the trained strategy (networks only, no losses) stored in a ``best.ckpt``.

    Raises:
        FusionsegError: the file is not a checkpoint written by ``fusionseg train``.
    """
    from fusionseg.strategies import build_strategy

    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        meta = ckpt["meta"]
        cfg = validate_saved_config(meta["experiment"], source=str(path))
    except Exception as exc:
        raise FusionsegError(f"{path}: not a best.ckpt written by fusionseg train ({exc}).") from exc
    strategy = build_strategy(cfg, meta["modalities"], scheme_from_dict(meta["scheme"]), with_losses=False)
    strategy.load_state_dict(ckpt["strategy"])
    return strategy.to(device).eval(), meta


def find_checkpoints(source: Path, fold: int | None = None) -> list[Path]:
    """Final best checkpoints of a run folder (every fold, or one), or the file itself.

    Each fold's ``fit.json`` names its final checkpoint (the last stage's best).

    Raises:
        FusionsegError: no trained fold found, or a ``fit.json`` cannot be read.
    """
    source = Path(source)
    if source.is_file():
        return [source]
    pattern = f"fold_{fold}/fit.json" if fold is not None else "fold_*/fit.json"
    found = []
    for record in sorted(source.glob(pattern)):
        try:
            data = json.loads(record.read_text())
            if data.get("rule") is not None:
                raise FusionsegError(
                    f"{record}: this run applied a rule ({data['rule']}) and has no trained model. "
                    "Pass the run folder itself to fusionseg predict: it applies the rule to the new cases."
                )
            found.append(source / data["checkpoint"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FusionsegError(
                f"{record}: cannot read the fold's checkpoint name ({exc!r}). "
                "Retrain that fold (rerun `fusionseg train`) or pass --fold "
                "with another fold."
            ) from None
    found = [p for p in found if p.exists()]
    if not found:
        raise FusionsegError(
            f"{source}: no trained fold found ({pattern}). Pass a run folder written by "
            "`fusionseg train` (or a best.ckpt file); check --fold."
        )
    return found


def _fit_record(checkpoint: Path) -> dict:
    """The ``fit.json`` of the fold a checkpoint belongs to ({} when there is none)."""
    for parent in list(checkpoint.parents)[:4]:
        if (parent / "fit.json").exists():
            try:
                return json.loads((parent / "fit.json").read_text())
            except ValueError:
                return {}
    return {}


def load_predictor(
    source: str | Path, fold: int | None = None, device: str = "cpu", postprocess: bool = True, tta: bool | None = None
) -> Predictor:
    """Predictor from a run folder (ensemble of its folds' best checkpoints, or one
    fold) or from one checkpoint file.

    With ``postprocess`` the connected-component post-processing each fold chose
    (``fit.json``) is applied; for an ensemble of folds their settings are combined
    (:func:`~fusionseg.inference.postprocess.combine_settings`). ``tta``: test-time
    mirroring on/off; None = as the fold predicted its test cases (``inference`` in
    its ``fit.json``, from config ``inference.tta``). A run of a PET rule gives a
    :class:`RulePredictor`."""
    rule = _rule_predictor(Path(source), fold, postprocess)
    if rule is not None:
        return rule
    paths = find_checkpoints(Path(source), fold)
    models, metas = zip(*(model_from_checkpoint(p, device) for p in paths))
    first = metas[0]
    cfg = validate_saved_config(first["experiment"], source=str(paths[0]))
    for p, m in zip(paths, metas):
        if m["modalities"] != first["modalities"] or m["scheme"] != first["scheme"]:
            raise FusionsegError(f"{p}: checkpoints disagree on modalities or label scheme.")
    return Predictor(
        models=list(models),
        modalities=tuple(first["modalities"]),
        scheme=scheme_from_dict(first["scheme"]),
        preprocess=PreprocessConfig.model_validate(first["preprocess"]),
        divisor=int(first["divisor"]),
        sources=list(paths),
        device=device,
        postprocess=combine_settings(
            [Postprocess.from_dict(_fit_record(p).get("postprocess", {}).get("setting")) for p in paths]
        )
        if postprocess
        else Postprocess(),
        mirror=_run_mirrors(paths[0]) if tta is None else bool(tta),
        spatial_dims=cfg.spatial_dims,
        options=InferOptions.from_config(cfg),
        missing_ok=_missing_ok(cfg, models[0]),
        simulate=cfg.missing.simulate or "zero",
    )


def _missing_ok(cfg: ExperimentConfig, model: nn.Module) -> str:
    """Why the run's models may predict a case that lacks a sequence ("" if not)."""
    if "modality_branches" in getattr(model, "capabilities", frozenset()):
        return f"{cfg.strategy} has one branch per modality"
    if cfg.missing.dropout != "none":
        return f"trained with modality dropout ({cfg.missing.dropout})"
    return ""


def _run_mirrors(checkpoint: Path) -> bool:
    """Whether the fold of a checkpoint predicted its test cases with test-time
    mirroring (``fit.json`` "inference"; folds from before it was recorded: no)."""
    return InferenceConfig.model_validate(_fit_record(checkpoint).get("inference", {})).mirror
