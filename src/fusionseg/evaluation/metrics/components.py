"""Connected components for the lesion-wise metrics, compiled (numba): labelling by
runs, at a cost that follows the mask's rows, not its box, and the grouping of GT
components into BraTS 2023 lesions by their dilations (:func:`link_components`).

A mask is read row by row along its last axis. Each row's *extent* (first and last
inside voxel) is known beforehand (:func:`row_extents`, or the region-mask pass of
:func:`fusionseg.evaluation.evaluate.evaluate_case`), so empty rows cost one look-up
and a sparse case (many small lesions spread over the brain) costs no more than its
foreground rows. Each row splits into runs of inside voxels; two runs are connected
(26-connectivity) when their rows are neighbours (row offsets (0, -1), (-1, -1),
(-1, 0), (-1, +1) are enough, scanning in C order) and their z ranges overlap or touch
diagonally (``start_a <= end_b + 1`` and ``start_b <= end_a + 1``). Runs are joined by
union-find (Rosenfeld-Pfaltz two-pass labelling on runs; e.g. He, Chao & Suzuki, "A
run-based two-scan labeling algorithm", IEEE TIP 17(5), 2008).

Labels are numbered 1..N in C order of each component's first voxel, as
``scipy.ndimage.label`` and ``cc3d.connected_components`` number them on a C-ordered
array (the tests check both). A 2-D mask is one plane: label ``mask[None]``, whose
26-connectivity within a plane is 8-connectivity.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def row_extents(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """First and last inside voxel of every row of a 3-D mask (rows along axis 2).

    Args:
        mask: uint8 (X, Y, Z), 0/1 (or any integer array: non-zero = inside).
    Returns:
        (first, last): int64 (X, Y); ``first = Z`` and ``last = -1`` for an empty row.
    """
    n0, n1, n2 = mask.shape
    first = np.full((n0, n1), n2, dtype=np.int64)
    last = np.full((n0, n1), -1, dtype=np.int64)
    for i in range(n0):
        for j in range(n1):
            acc = 0
            for k in range(n2):  # OR-reduced first (vectorised): most rows are empty
                acc |= mask[i, j, k]
            if acc == 0:
                continue
            k = 0
            while mask[i, j, k] == 0:
                k += 1
            first[i, j] = k
            k = n2 - 1
            while mask[i, j, k] == 0:
                k -= 1
            last[i, j] = k
    return first, last


@njit(cache=True, nogil=True)
def clear_rows(masks: np.ndarray, first: np.ndarray, last: np.ndarray) -> None:  # pragma: no cover - compiled
    """Zero ``masks[r, x, y, first[r, x, y]:last[r, x, y] + 1]`` for every row with
    ``last >= 0``: undoes writes whose row extents were recorded.

    Args:
        masks: (R, X, Y, Z) array.
        first, last: (R, X, Y) int64 row extents.
    """
    for r in range(masks.shape[0]):
        for i in range(masks.shape[1]):
            for j in range(masks.shape[2]):
                for k in range(first[r, i, j], last[r, i, j] + 1):
                    masks[r, i, j, k] = 0


@njit(cache=True, nogil=True)
def _root(parent: np.ndarray, x: int) -> int:  # pragma: no cover - compiled
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True, nogil=True)
def label_components(
    mask: np.ndarray, first: np.ndarray, last: np.ndarray, labels: np.ndarray
) -> tuple[int, np.ndarray]:  # pragma: no cover - compiled
    """26-connected components of a 3-D mask, by runs (module docstring).

    Args:
        mask: uint8 (X, Y, Z), 0/1.
        first, last: (X, Y) row extents of ``mask`` (:func:`row_extents`).
        labels: integer (X, Y, Z) output: the component label 1..N of each inside
            voxel is written, nothing else is touched (it may come from ``np.empty``;
            read it only where the mask is set).
    Returns:
        (N, sizes): number of components and (N + 1,) int64 voxels per label
        (``sizes[0] = 0``).
    """
    n0, n1 = mask.shape[0], mask.shape[1]
    cap = 0
    for i in range(n0):
        for j in range(n1):
            if last[i, j] >= 0:
                cap += (last[i, j] - first[i, j]) // 2 + 1  # most runs a row can hold
    start = np.empty(cap, dtype=np.int64)
    end = np.empty(cap, dtype=np.int64)  # inclusive
    row_ptr = np.empty(n0 * n1 + 1, dtype=np.int64)  # runs of row r: row_ptr[r]..row_ptr[r+1]
    n = 0
    for i in range(n0):
        for j in range(n1):
            row_ptr[i * n1 + j] = n
            k, hi = first[i, j], last[i, j]
            while k <= hi:
                start[n] = k
                while k <= hi and mask[i, j, k]:
                    k += 1
                end[n] = k - 1
                n += 1
                while k <= hi and not mask[i, j, k]:
                    k += 1
    row_ptr[n0 * n1] = n

    parent = np.arange(n)
    for i in range(n0):
        for j in range(n1):
            a0, a1 = row_ptr[i * n1 + j], row_ptr[i * n1 + j + 1]
            if a0 == a1:
                continue
            for t in range(4):  # earlier neighbour rows in C order
                x = i if t == 0 else i - 1
                y = j - 1 if t <= 1 else (j if t == 2 else j + 1)
                if x < 0 or y < 0 or y >= n1:
                    continue
                b, b1 = row_ptr[x * n1 + y], row_ptr[x * n1 + y + 1]
                a = a0
                while a < a1 and b < b1:  # merge of two sorted run lists
                    if start[b] <= end[a] + 1 and start[a] <= end[b] + 1:
                        ra, rb = _root(parent, a), _root(parent, b)
                        if ra < rb:
                            parent[rb] = ra
                        elif rb < ra:
                            parent[ra] = rb
                    if end[a] < end[b]:
                        a += 1
                    else:
                        b += 1

    label_of = np.zeros(n, dtype=np.int64)
    sizes = np.zeros(n + 1, dtype=np.int64)
    count = 0
    for i in range(n0):
        for j in range(n1):
            for u in range(row_ptr[i * n1 + j], row_ptr[i * n1 + j + 1]):
                root = _root(parent, u)
                if label_of[root] == 0:  # first run of its component in C order
                    count += 1
                    label_of[root] = count
                lab = label_of[root]
                for k in range(start[u], end[u] + 1):
                    labels[i, j, k] = lab
                sizes[lab] += end[u] - start[u] + 1
    return count, sizes[: count + 1]


# ------------------------------------------------ GT components grouped into lesions
@njit(cache=True, nogil=True)
def dilate_18(mask: np.ndarray, iterations: int) -> np.ndarray:  # pragma: no cover - compiled
    """Binary dilation of a 3-D uint8 mask by the 18-neighbourhood (3x3x3 cube without
    its 8 corners, ``generate_binary_structure(3, 2)``) repeated ``iterations`` times,
    voxels outside the array counting as background: the same result as
    ``scipy.ndimage.binary_dilation(mask, structure, iterations=iterations)``.

    Each iteration grows only from the voxels the previous one added (a voxel reached
    at step k has a neighbour added at step k - 1), and the first from the voxels with
    a face neighbour outside, so the cost follows the surface.
    Returns a new uint8 array.
    """
    n0, n1, n2 = mask.shape
    out = mask.copy()
    cap = mask.size
    front = np.empty((cap, 3), dtype=np.int64)
    n_front = 0
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                # only voxels with a face neighbour outside can add anything: an
                # outside 18-neighbour is a face neighbour of the voxel or of a
                # face neighbour of it that is inside (and then has one outside)
                if mask[i, j, k] and (
                    (i > 0 and not mask[i - 1, j, k])
                    or (i + 1 < n0 and not mask[i + 1, j, k])
                    or (j > 0 and not mask[i, j - 1, k])
                    or (j + 1 < n1 and not mask[i, j + 1, k])
                    or (k > 0 and not mask[i, j, k - 1])
                    or (k + 1 < n2 and not mask[i, j, k + 1])
                ):
                    front[n_front, 0] = i
                    front[n_front, 1] = j
                    front[n_front, 2] = k
                    n_front += 1
    nxt = np.empty((cap, 3), dtype=np.int64)
    for _ in range(iterations):
        n_next = 0
        for f in range(n_front):
            i, j, k = front[f, 0], front[f, 1], front[f, 2]
            for di in range(-1, 2):
                x = i + di
                if x < 0 or x >= n0:
                    continue
                for dj in range(-1, 2):
                    y = j + dj
                    if y < 0 or y >= n1:
                        continue
                    for dk in range(-1, 2):
                        if di != 0 and dj != 0 and dk != 0:
                            continue  # corner: not in the 18-neighbourhood
                        z = k + dk
                        if z < 0 or z >= n2 or out[x, y, z]:
                            continue
                        out[x, y, z] = 1
                        nxt[n_next, 0] = x
                        nxt[n_next, 1] = y
                        nxt[n_next, 2] = z
                        n_next += 1
        front, nxt = nxt, front
        n_front = n_next
        if n_front == 0:
            break
    return out


@njit(cache=True, nogil=True)
def link_components(
    gt: np.ndarray,
    gt_mask: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    d: int,
    pred: np.ndarray,
    pred_mask: np.ndarray,
    n_pred: int,
    zlo: np.ndarray,
    zhi: np.ndarray,
    owner: np.ndarray,
    olo: np.ndarray,
):  # pragma: no cover - compiled
    """Dilate each GT component on its own box, find the predicted components its
    dilation touches, and group the components whose dilations overlap or touch
    (26-connectivity): BraTS 2023 lesion formation and matching.

    Args:
        gt: 3-D integer component labels 1..C, read only where ``gt_mask`` (uint8, same
            shape) is set.
        lo, hi: (C, 3) int64 box of each component's dilation in ``gt`` coordinates
            (``hi`` exclusive); component c (0-based) is the voxels of its box labelled
            c + 1.
        d: dilation iterations (18-neighbourhood, as :func:`dilate_18`; 0: none).
        pred: 3-D integer predicted-component labels, same shape as ``gt``, 1..n_pred,
            read only where ``pred_mask`` is set.
        zlo, zhi: (C, 3) int64 box (``gt`` coordinates, ``zhi`` exclusive) of the part of
            each component's dilation box where another component's dilation may
            overlap or touch it (inside the others' dilation boxes grown by one voxel);
            empty for components that cannot be grouped with any.
        owner: int32 scratch array, zeros, covering every zone; ``olo`` (3,) its origin
            in ``gt`` coordinates.
    Returns:
        (counts (C,) voxels per component, piece_first (C, 3) first voxel (C order) of
        its dilation, pairs (P, 3) int64 rows
        (component index, predicted label, voxels of the component inside that predicted
        component) for every predicted label the dilation touches, by component then
        first touch in C order, group (C,) a representative component of each one's
        group).
    """
    n = lo.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    piece_first = np.zeros((n, 3), dtype=np.int64)
    pairs = np.empty((max(16, 4 * n), 3), dtype=np.int64)
    n_pairs = 0
    seen = np.full(n_pred + 1, -1, dtype=np.int64)  # last component that touched a label
    inside = np.zeros(n_pred + 1, dtype=np.int64)  # this component's voxels in each label
    touched = np.empty(n_pred + 1, dtype=np.int64)  # labels in order of first touch
    parent = np.arange(n)
    o0, o1, o2 = owner.shape
    for c in range(n):
        a0, a1, a2 = lo[c, 0], lo[c, 1], lo[c, 2]
        s0, s1, s2 = hi[c, 0] - a0, hi[c, 1] - a1, hi[c, 2] - a2
        sub = np.zeros((s0, s1, s2), dtype=np.uint8)
        count = 0
        for i in range(s0):
            for j in range(s1):
                for k in range(s2):
                    if gt_mask[a0 + i, a1 + j, a2 + k] and gt[a0 + i, a1 + j, a2 + k] == c + 1:
                        sub[i, j, k] = 1
                        count += 1
        counts[c] = count
        piece = dilate_18(sub, d) if d > 0 else sub
        n_touched = 0
        found = False
        for i in range(s0):
            for j in range(s1):
                for k in range(s2):
                    if not piece[i, j, k]:
                        continue
                    if not found:
                        piece_first[c, 0], piece_first[c, 1], piece_first[c, 2] = a0 + i, a1 + j, a2 + k
                        found = True
                    x, y, z = a0 + i, a1 + j, a2 + k
                    if (
                        zlo[c, 0] <= x < zhi[c, 0] and zlo[c, 1] <= y < zhi[c, 1] and zlo[c, 2] <= z < zhi[c, 2]
                    ):  # overlap with an earlier dilation
                        x, y, z = x - olo[0], y - olo[1], z - olo[2]
                        other = owner[x, y, z] - 1
                        if other >= 0 and other != c:
                            parent[_root(parent, other)] = _root(parent, c)
                        owner[x, y, z] = c + 1
                    if not pred_mask[a0 + i, a1 + j, a2 + k]:
                        continue
                    lab = pred[a0 + i, a1 + j, a2 + k]
                    if seen[lab] != c:  # first touch by this component
                        seen[lab] = c
                        inside[lab] = 0
                        touched[n_touched] = lab
                        n_touched += 1
                    if sub[i, j, k]:
                        inside[lab] += 1
        if n_pairs + n_touched > pairs.shape[0]:
            grown = np.empty((2 * (n_pairs + n_touched), 3), dtype=np.int64)
            grown[:n_pairs] = pairs[:n_pairs]
            pairs = grown
        for t in range(n_touched):
            pairs[n_pairs, 0], pairs[n_pairs, 1], pairs[n_pairs, 2] = c, touched[t], inside[touched[t]]
            n_pairs += 1
        # touching an earlier dilation (within the zone): only voxels with a face
        # neighbour outside the dilation need their 26 neighbours looked at (a voxel
        # 26-adjacent to another dilation has such a voxel between them, adjacent to it)
        for i in range(max(zlo[c, 0] - a0, 0), min(zhi[c, 0] - a0, s0)):
            for j in range(max(zlo[c, 1] - a1, 0), min(zhi[c, 1] - a1, s1)):
                for k in range(max(zlo[c, 2] - a2, 0), min(zhi[c, 2] - a2, s2)):
                    if not piece[i, j, k]:
                        continue
                    if (
                        0 < i
                        and piece[i - 1, j, k]
                        and i + 1 < s0
                        and piece[i + 1, j, k]
                        and 0 < j
                        and piece[i, j - 1, k]
                        and j + 1 < s1
                        and piece[i, j + 1, k]
                        and 0 < k
                        and piece[i, j, k - 1]
                        and k + 1 < s2
                        and piece[i, j, k + 1]
                    ):
                        continue
                    x0, y0, z0 = a0 + i - olo[0], a1 + j - olo[1], a2 + k - olo[2]
                    for x in range(max(x0 - 1, 0), min(x0 + 2, o0)):
                        for y in range(max(y0 - 1, 0), min(y0 + 2, o1)):
                            for z in range(max(z0 - 1, 0), min(z0 + 2, o2)):
                                other = owner[x, y, z] - 1
                                if other >= 0 and other != c:
                                    parent[_root(parent, other)] = _root(parent, c)
    group = np.empty(n, dtype=np.int64)
    for c in range(n):
        group[c] = _root(parent, c)
    return counts, piece_first, pairs[:n_pairs], group
