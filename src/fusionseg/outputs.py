"""What a segmentation network's output channels mean: softmax classes or sigmoid regions.

Two kinds of output (config ``output.kind``):

* ``classes`` (default): K logits, one per class of the label scheme (background
  first); probabilities by softmax, the label map by arg-max.
* ``regions``: R logits, one per nested evaluation region (BraTS: WT, TC, ET), each an
  independent sigmoid; the label map paints the regions largest first, so a voxel takes
  the class of the smallest region it is predicted in (threshold 0.5). This is
  nnU-Net's region-based training for BraTS (Isensee et al., "nnU-Net for brain tumor
  segmentation", BrainLes 2020, section 2.3; nnU-Net's ``regions`` and
  ``regions_class_order`` in its dataset.json), which optimises the evaluated regions
  directly instead of the mutually exclusive NCR / ED / ET classes.

The regions must form a chain ``R_0 ⊃ R_1 ⊃ ... ⊃ R_{n-1}`` over the scheme's classes:
``R_0`` holds every foreground class, each step drops exactly one class, and the last
region is one class (BraTS 2017-2021: WT = {NCR, ED, ET} ⊃ TC = {NCR, ET} ⊃ ET, painted
ED, NCR, ET). :func:`output_head` finds the chain among the scheme's regions or checks the
one named in the config.

Shapes: logits / probabilities ``(B, K or R, *spatial)`` or ``(K or R, *spatial)``
(``dim`` selects the channel axis); class maps are the same without that axis, uint8
class indices of the scheme (0 = background).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fusionseg.constants import LabelScheme
from fusionseg.errors import ConfigError

__all__ = ["OUTPUT_KINDS", "OutputHead", "CLASS_OUTPUT", "output_head", "region_chain", "region_masks"]

OUTPUT_KINDS = ("classes", "regions")


@dataclass(frozen=True)
class OutputHead:
    """How output channels become probabilities and a class map.

    Attributes:
        kind: ``"classes"`` or ``"regions"``.
        regions: region output: region names, largest first (e.g. ``("WT", "TC", "ET")``).
        members: region output: the class indices each region unites.
        paint: region output: the class index written where region ``i`` is predicted
            (the one class of ``members[i]`` not in ``members[i + 1]``).
        threshold: region output: a region is predicted where its probability > this.
    """

    kind: str = "classes"
    regions: tuple[str, ...] = ()
    members: tuple[tuple[int, ...], ...] = ()
    paint: tuple[int, ...] = ()
    threshold: float = 0.5

    def channels(self, num_classes: int) -> int:
        """Number of network output channels for a scheme of ``num_classes`` classes."""
        return num_classes if self.kind == "classes" else len(self.regions)

    def probabilities(self, logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Softmax over ``dim`` (classes) or element-wise sigmoid (regions), float32."""
        logits = logits.float()
        return torch.softmax(logits, dim=dim) if self.kind == "classes" else torch.sigmoid(logits)

    def classes(self, probs: torch.Tensor | np.ndarray, dim: int = 0) -> torch.Tensor | np.ndarray:
        """Class-index map (uint8) of probabilities whose channel axis is ``dim``:
        arg-max (classes) or the regions painted largest first (regions). Returns the
        type it is given (torch tensor or numpy array)."""
        if isinstance(probs, np.ndarray):
            if self.kind == "classes":
                return probs.argmax(axis=dim).astype(np.uint8)
            return self.classes(torch.from_numpy(np.ascontiguousarray(probs)), dim).numpy()
        if self.kind == "classes":
            return probs.argmax(dim=dim).to(torch.uint8)
        out = torch.zeros(probs.shape[:dim] + probs.shape[dim + 1 :], dtype=torch.uint8, device=probs.device)
        for i, value in enumerate(self.paint):
            out[probs.select(dim, i) > self.threshold] = value
        return out

    def classes_from_logits(self, logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """:meth:`classes` of :meth:`probabilities` (validation during training)."""
        if self.kind == "classes":  # arg-max of logits = arg-max of the softmax
            return logits.argmax(dim=dim).to(torch.uint8)
        return self.classes(self.probabilities(logits, dim), dim)

    def region_targets(self, target: torch.Tensor) -> torch.Tensor:
        """``(B, *S)`` class indices -> ``(B, R, *S)`` float 0/1 region masks."""
        return region_masks(target, self.members).float()


def region_masks(target: torch.Tensor, members: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(B, *S)`` integer class indices -> ``(B, R, *S)`` bool masks, channel ``r``
    True where the class is one of ``members[r]`` (one table lookup for all regions)."""
    table = torch.zeros((int(target.max()) + 1 if target.numel() else 1, len(members)), dtype=torch.bool)
    for r, classes in enumerate(members):
        table[[c for c in classes if c < table.shape[0]], r] = True
    return table.to(target.device)[target.long()].movedim(-1, 1)


#: The default head: one softmax channel per class.
CLASS_OUTPUT = OutputHead()


def _class_sets(scheme: LabelScheme) -> dict[str, frozenset[int]]:
    """Region name -> the class indices it unites (:meth:`LabelScheme.region_class_indices`)."""
    return {name: frozenset(scheme.region_class_indices(name)) for name in scheme.regions}


def _check_chain(names: Sequence[str], sets: dict[str, frozenset[int]], foreground: frozenset[int]) -> str | None:
    """Why ``names`` is not a region chain over ``foreground`` (None: it is one)."""
    unknown = [n for n in names if n not in sets]
    if unknown:
        return f"regions {unknown} are not regions of the label scheme (it has {sorted(sets)})"
    if not names or sets[names[0]] != foreground:
        return f"the first region must hold every foreground class (a region such as WT), got {list(names)[:1]}"
    for big, small in zip(names, names[1:]):
        if not (sets[small] < sets[big] and len(sets[big] - sets[small]) == 1):
            return f"{small} must be {big} minus exactly one class"
    if len(sets[names[-1]]) != 1:
        return f"the last region ({names[-1]}) must be a single class"
    return None


def region_chain(scheme: LabelScheme, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The nested regions, largest first: ``names`` checked, or (None) found among the
    scheme's regions (at each step the first region in the scheme's order that drops
    exactly one class).

    Raises:
        ConfigError: ``names`` is not a chain, or the scheme has none.
    """
    sets = _class_sets(scheme)
    foreground = frozenset(range(1, scheme.num_classes))
    if names is None:
        chain = [n for n, s in sets.items() if s == foreground][:1]
        while chain and len(sets[chain[-1]]) > 1:
            step = [n for n, s in sets.items() if s < sets[chain[-1]] and len(sets[chain[-1]] - s) == 1]
            if not step:
                break
            chain.append(step[0])
        names = chain
    problem = _check_chain(list(names), sets, foreground)
    if problem:
        raise ConfigError(
            f"output.kind regions: {problem}. Label scheme {scheme.name!r} has regions "
            f"{ {n: sorted(v) for n, v in scheme.regions.items()} } (raw label values); name a chain in "
            "output.regions (BraTS: [WT, TC, ET]) or use output.kind: classes."
        )
    return tuple(names)


def output_head(
    kind: str, scheme: LabelScheme, regions: Sequence[str] | None = None, threshold: float | None = None
) -> OutputHead:
    """The head of ``output.kind`` for ``scheme`` (regions: see :func:`region_chain`).

    Raises:
        ConfigError: unknown ``kind``, or regions that do not form a chain.
    """
    if kind == "classes":
        return CLASS_OUTPUT
    if kind != "regions":
        raise ConfigError(f"output.kind: unknown {kind!r}; choose one of {list(OUTPUT_KINDS)}")
    names = region_chain(scheme, regions)
    sets = _class_sets(scheme)
    members = tuple(tuple(sorted(sets[n])) for n in names)
    paint = tuple(next(iter(sets[a] - sets[b])) for a, b in zip(names, names[1:])) + (next(iter(sets[names[-1]])),)
    return OutputHead("regions", names, members, paint, 0.5 if threshold is None else float(threshold))
