"""Weight transfer from the pretext network to the segmentation network (S2's
cross-modal self-supervised pretraining; METHODS.md section 5).

The pretext network is a ``resnet50_unet`` (:mod:`fusionseg.models.resnet_unet`)
trained to predict FLAIR from ``[T1, T1ce]``: its stem convolution
``encoder.conv1.weight`` has shape ``(64, 2, 7, 7)``. The segmentation network is a
``resnet50_unet`` with one input channel per modality (e.g. T1, T1ce, T2, FLAIR, in
the order of the config's modality names) and one output per class.
:func:`transfer_pretext_weights` copies

- the stem: source input channel ``k`` into the target input channel whose modality
  name equals ``source_inputs[k]`` (case-insensitive); the other target channels are
  left at their fresh init (``"random"``, S2's choice), set to zero (``"zero"``) or to
  the mean of the copied kernels (``"mean"``);
- every other ``encoder.*`` tensor (parameters and BatchNorm buffers alike) whose name
  exists in the target with the same shape;
- ``decoder.*`` tensors only with ``decoder=True``;
- never the head (``segmentation_head.*`` / ``classification_head.*``).

Everything not copied is listed in the :class:`TransferReport` with the reason, so
nothing is dropped silently. :func:`load_pretext_checkpoint` reads the pretext weights
from a ``fusionseg train`` checkpoint or a plain state dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fusionseg.errors import DataError

from .resnet_unet import RESNET50_BLOCKS

__all__ = [
    "FIRST_CONV",
    "OTHER_CHANNEL_RULES",
    "TransferReport",
    "transfer_pretext_weights",
    "load_pretext_checkpoint",
]

#: State-dict name of the stem convolution of smp's ResNet encoders.
FIRST_CONV = "encoder.conv1.weight"
#: How target input channels without a pretext counterpart are initialised.
OTHER_CHANNEL_RULES = ("random", "zero", "mean")
_RULE_TEXT = {
    "random": "kept at the target's own (random) init",
    "zero": "set to zero",
    "mean": "set to the mean of the copied channels' kernels",
}
_HEAD_PREFIXES = ("segmentation_head.", "classification_head.")
#: Top-level modules of an smp U-Net: what load_pretext_checkpoint keeps.
_UNET_PREFIXES = ("encoder.", "decoder.", *_HEAD_PREFIXES)
HEAD_REASON = "head never transferred"
DECODER_OFF_REASON = "decoder transfer off"
ONLY_SOURCE_REASON = "only in source"
ONLY_TARGET_REASON = "only in target (keeps its own values)"


@dataclass
class TransferReport:
    """What :func:`transfer_pretext_weights` did.

    Attributes:
        copied: target tensor names written from the source (the stem included), in
            target state-dict order.
        skipped: ``(name, reason)`` for every other name of the source or the target;
            reasons: ``"head never transferred"``, ``"decoder transfer off"``,
            ``"shape (s...) != (t...)"`` (source shape, then target shape),
            ``"only in source"``, ``"only in target (keeps its own values)"``,
            ``"not an encoder or decoder tensor"``, ``"not a tensor"``.
        first_conv: the stem rule: ``tensor``, ``source_inputs``, ``target_inputs``,
            ``copied`` (one ``{"modality", "source_channel", "target_channel"}`` per
            pretext input), ``others`` (``{"modality", "target_channel"}`` per other
            target channel), ``other_rule`` and ``other_rule_description``.
    """

    copied: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    first_conv: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``skipped`` as ``[name, reason]`` lists) plus counts."""
        out = asdict(self)
        out["skipped"] = [[name, reason] for name, reason in self.skipped]
        out["n_copied"] = len(self.copied)
        out["n_skipped"] = len(self.skipped)
        return out

    def to_markdown(self) -> str:
        """A readable summary: the stem mapping, copied tensors per module, every skipped tensor."""
        fc = self.first_conv
        lines = [
            "## Pretext weight transfer",
            "",
            f"Copied {len(self.copied)} tensors, skipped {len(self.skipped)}.",
            "",
            f"### First convolution (`{fc.get('tensor', FIRST_CONV)}`)",
            "",
            "| modality | source channel | target channel | rule |",
            "|---|---|---|---|",
        ]
        for row in fc.get("copied", []):
            lines.append(f"| {row['modality']} | {row['source_channel']} | {row['target_channel']} | copied |")
        for row in fc.get("others", []):
            lines.append(f"| {row['modality']} | - | {row['target_channel']} | {fc.get('other_rule_description')} |")
        groups: dict[str, int] = {}
        for name in self.copied:
            group = ".".join(name.split(".")[:2])
            groups[group] = groups.get(group, 0) + 1
        lines += ["", "### Copied", "", "| module | tensors |", "|---|---|"]
        lines += [f"| `{group}` | {count} |" for group, count in groups.items()]
        lines += ["", "### Skipped", "", "| tensor | reason |", "|---|---|"]
        lines += [f"| `{name}` | {reason} |" for name, reason in self.skipped]
        return "\n".join(lines) + "\n"


def _fold(names: Sequence[str], what: str) -> list[str]:
    folded = [str(n).casefold() for n in names]
    if len(set(folded)) != len(folded):
        raise ValueError(f"{what} has repeated modality names (case-insensitive): {list(names)}.")
    return folded


def _first_conv(
    target_w: Tensor,
    source_w: Tensor,
    source_inputs: Sequence[str],
    target_inputs: Sequence[str],
    other_channels: str,
) -> dict[str, Any]:
    """Write the stem (in place, under no_grad) and return the report's ``first_conv``."""
    src, tgt = _fold(source_inputs, "source_inputs"), _fold(target_inputs, "target_inputs")
    missing = [name for name, f in zip(source_inputs, src) if f not in tgt]
    if missing:
        raise ValueError(
            f"transfer_pretext_weights: pretext input(s) {missing} not among the target's modalities; "
            f"source_inputs={list(source_inputs)}, target_inputs={list(target_inputs)} (names compared "
            "case-insensitively)."
        )
    if source_w.ndim != 4 or source_w.shape[1] != len(src):
        raise ValueError(
            f"transfer_pretext_weights: source {FIRST_CONV} has shape {tuple(source_w.shape)}, "
            f"expected (O, {len(src)}, kh, kw) for source_inputs={list(source_inputs)}."
        )
    if target_w.ndim != 4 or target_w.shape[1] != len(tgt):
        raise ValueError(
            f"transfer_pretext_weights: target {FIRST_CONV} has shape {tuple(target_w.shape)}, "
            f"expected (O, {len(tgt)}, kh, kw) for target_inputs={list(target_inputs)}."
        )
    if source_w.shape[0] != target_w.shape[0] or source_w.shape[2:] != target_w.shape[2:]:
        raise ValueError(
            f"transfer_pretext_weights: {FIRST_CONV} shapes {tuple(source_w.shape)} (source) and "
            f"{tuple(target_w.shape)} (target) differ beyond the input channels: not the same encoder."
        )
    copied = [
        {"modality": str(source_inputs[k]), "source_channel": k, "target_channel": tgt.index(f)}
        for k, f in enumerate(src)
    ]
    others = [{"modality": str(target_inputs[j]), "target_channel": j} for j, f in enumerate(tgt) if f not in src]
    for row in copied:
        target_w[:, row["target_channel"]].copy_(source_w[:, row["source_channel"]])
    if other_channels != "random" and others:
        if other_channels == "zero":
            fill = torch.zeros_like(target_w[:, 0])
        else:
            fill = source_w.float().mean(dim=1)
        for row in others:
            target_w[:, row["target_channel"]].copy_(fill)
    return {
        "tensor": FIRST_CONV,
        "source_inputs": [str(n) for n in source_inputs],
        "target_inputs": [str(n) for n in target_inputs],
        "copied": copied,
        "others": others,
        "other_rule": other_channels,
        "other_rule_description": _RULE_TEXT[other_channels],
    }


def transfer_pretext_weights(
    target: nn.Module,
    source_state: Mapping[str, Tensor],
    *,
    source_inputs: Sequence[str],
    target_inputs: Sequence[str],
    other_channels: Literal["random", "zero", "mean"] = "random",
    decoder: bool = False,
) -> TransferReport:
    """Copy the pretext network's weights into ``target`` in place (see the module docstring).

    Args:
        target: the segmentation U-Net itself (smp names: ``encoder.*``, ``decoder.*``,
            ``segmentation_head.*``), not a strategy wrapping it (pass ``strategy.model``).
        source_state: the pretext U-Net's state dict, keys without prefix (see
            :func:`load_pretext_checkpoint`).
        source_inputs: modality names of the pretext input channels, in order (S2:
            ``["t1", "t1ce"]``).
        target_inputs: modality names of the target's input channels, in order (the
            config's modalities).
        other_channels: target stem channels with no pretext counterpart: ``"random"``
            (keep the target's init), ``"zero"``, ``"mean"`` (mean over the copied
            channels' kernels).
        decoder: also copy ``decoder.*`` tensors of equal name and shape.

    Returns:
        A :class:`TransferReport`. Tensors are written with ``Tensor.copy_`` (the
        target keeps its dtype and device); nothing not listed in ``copied`` changes.

    Raises:
        ValueError: unknown ``other_channels``; ``source_inputs`` names missing from
            ``target_inputs`` (the message gives both lists); repeated names; the stem
            missing from either side or of incompatible shape.
    """
    if other_channels not in OTHER_CHANNEL_RULES:
        raise ValueError(f"other_channels must be one of {OTHER_CHANNEL_RULES}, got {other_channels!r}.")
    target_state = target.state_dict()
    if FIRST_CONV not in target_state:
        raise ValueError(
            f"transfer_pretext_weights: the target has no {FIRST_CONV!r}; pass the ResNet U-Net itself "
            f"(e.g. strategy.model), not a wrapper. Target keys start: {list(target_state)[:3]}."
        )
    if FIRST_CONV not in source_state:
        raise ValueError(
            f"transfer_pretext_weights: the source state has no {FIRST_CONV!r} (keys start: "
            f"{list(source_state)[:3]}); read checkpoints with load_pretext_checkpoint, which strips key prefixes."
        )
    report = TransferReport()
    with torch.no_grad():
        report.first_conv = _first_conv(
            target_state[FIRST_CONV], source_state[FIRST_CONV], source_inputs, target_inputs, other_channels
        )
        names = list(target_state) + [n for n in source_state if n not in target_state]
        for name in names:
            if name == FIRST_CONV:
                report.copied.append(name)
                continue
            reason = _copy_one(name, target_state, source_state, decoder)
            if reason is None:
                report.copied.append(name)
            else:
                report.skipped.append((name, reason))
    return report


def _copy_one(name: str, target_state: Mapping[str, Tensor], source_state: Mapping[str, Any], decoder: bool):
    """Copy one tensor if the rules allow; return None when copied, else the reason."""
    if name.startswith(_HEAD_PREFIXES):
        return HEAD_REASON
    if name.startswith("decoder."):
        if not decoder:
            return DECODER_OFF_REASON
    elif not name.startswith("encoder."):
        return "not an encoder or decoder tensor"
    if name not in target_state:
        return ONLY_SOURCE_REASON
    if name not in source_state:
        return ONLY_TARGET_REASON
    src, tgt = source_state[name], target_state[name]
    if not isinstance(src, Tensor):
        return "not a tensor"
    if src.shape != tgt.shape:
        return f"shape {tuple(src.shape)} != {tuple(tgt.shape)}"
    tgt.copy_(src)
    return None


def _strip_to_unet(state: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """The U-Net tensors of ``state`` with their prefix removed (see load_pretext_checkpoint)."""
    prefixes = sorted(
        {
            k[: -len(FIRST_CONV)]
            for k in state
            if isinstance(k, str)
            and k.endswith(FIRST_CONV)
            and (k == FIRST_CONV or k[: -len(FIRST_CONV)].endswith("."))
        }
    )
    if not prefixes:
        raise DataError(
            f"holds no ResNet U-Net weights: no key {FIRST_CONV!r} (with or without a prefix); keys start: "
            f"{[k for k in state][:5]}.",
            file=path,
            fix="pass the best.ckpt / last.ckpt of the pretext run, or a state dict of a resnet50_unet.",
        )
    if len(prefixes) > 1:
        raise DataError(
            f"holds several U-Nets (key prefixes {prefixes}); cannot tell which one is the pretext network.",
            file=path,
            fix="save the pretext network's own state_dict() and pass that file.",
        )
    prefix = prefixes[0]
    stripped = {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    return {k: v for k, v in stripped.items() if k.startswith(_UNET_PREFIXES)}


def _check_resnet50_unet(state: Mapping[str, Any], path: Path) -> None:
    blocks = []
    for layer in range(1, 5):
        head = f"encoder.layer{layer}."
        idx = {int(k[len(head) :].split(".")[0]) for k in state if k.startswith(head) and k[len(head)].isdigit()}
        blocks.append(max(idx) + 1 if idx else 0)
    bottleneck = "encoder.layer1.0.conv3.weight" in state
    has_decoder = any(k.startswith("decoder.") for k in state)
    if tuple(blocks) != RESNET50_BLOCKS or not bottleneck or not has_decoder:
        found = f"encoder blocks per stage {tuple(blocks)}, bottleneck blocks: {bottleneck}, decoder: {has_decoder}"
        raise DataError(
            f"holds no ResNet-50 U-Net weights ({found}; a resnet50_unet has blocks {RESNET50_BLOCKS}, "
            "bottleneck blocks and a decoder).",
            file=path,
            fix="pass the checkpoint of a pretext run with model resnet50_unet.",
        )
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise DataError(f"entries that are not tensors: {bad[:5]}.", file=path)


def load_pretext_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the pretext U-Net's weights from a checkpoint or a plain state dict.

    Accepted files (read with ``torch.load(..., weights_only=True)`` on the CPU):

    - a ``fusionseg train`` checkpoint (``best.ckpt`` / ``last.ckpt``): a dict whose
      ``"strategy"`` entry is the strategy's state dict (Fabric saves the strategy
      module as its ``state_dict()``);
    - a Lightning-style dict with a ``"state_dict"`` entry;
    - a plain state dict.

    Key prefixes: a strategy's state dict names the network by its attribute, e.g.
    ``model.encoder.conv1.weight`` (early fusion) or ``network.``/``net.seg_net.``
    elsewhere; DDP adds ``module.``, ``torch.compile`` ``_orig_mod.``. Instead of a
    fixed list, the prefix is whatever precedes the one key ending in
    ``encoder.conv1.weight`` (at a ``.`` boundary, so ``model.`` but never a partial
    word); the keys with that prefix are kept with the prefix removed, and of those only
    the U-Net's own modules (``encoder.*``, ``decoder.*``, ``segmentation_head.*``,
    ``classification_head.*``): the result has smp names. Other networks of the same
    strategy (e.g. a fusion network) are dropped. Two keys ending in
    ``encoder.conv1.weight`` under different prefixes (two U-Nets) are an error.

    Returns:
        The U-Net state dict (keys without prefix, CPU tensors).

    Raises:
        DataError: (naming the file) it is missing or unreadable, holds no
            ``encoder.conv1.weight`` or several, or the tensors are not a ResNet-50 U-Net
            (block counts (3, 4, 6, 3), bottleneck blocks, a decoder).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("pretext checkpoint not found.", file=path, fix="pass the best.ckpt of the pretext run.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a data problem
        raise DataError(f"cannot read with torch.load ({type(err).__name__}: {err}).", file=path) from None
    if not isinstance(raw, Mapping):
        raise DataError(f"expected a checkpoint or state dict (a dict), got {type(raw).__name__}.", file=path)
    for key in ("strategy", "state_dict"):
        if isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    state = _strip_to_unet(raw, path)
    _check_resnet50_unet(state, path)
    return state
