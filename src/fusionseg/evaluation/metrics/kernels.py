"""Compiled (numba) inner loops of the surface-distance and lesion-wise metrics.

Each kernel is a plain loop that replaces a chain of whole-array numpy operations
(several temporaries per step) with one pass that stops as early as the answer is
known. They compute exactly what the numpy expressions named in their docstrings
compute; the metric definitions live in :mod:`.surface` and :mod:`.lesionwise`.

The k-d tree for far surface points is in :mod:`.kdtree`; connected-component
labelling by runs and lesion formation (dilation, grouping, matching) in
:mod:`.components`. Kernels are compiled on first use and cached
on disk (numba ``cache=True``: next to this file, or in numba's user cache directory
when that is read-only; ``NUMBA_CACHE_DIR`` overrides), so only the first process pays
the compilation (about 10 s on 2 cores for the whole set).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def surface_elements_2d(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Marching-squares elements of a zero-padded 2-D mask.

    Args:
        padded: uint8 (A, B), 0/1, with at least one zero voxel on every side.
    Returns:
        (index, codes): index (N, 2) int64 positions of the 2x2 windows (window (i, j)
        spans voxels i..i+1, j..j+1 of ``padded``) whose code is neither 0 nor 15, in C
        order; codes (N,) int64 with bit ``2 c0 + c1`` set when corner (c0, c1) is inside
        (the order of ``itertools.product((0, 1), repeat=2)``).
    """
    a, b = padded.shape
    cap = 0
    for i in range(a):
        for j in range(b):
            cap += padded[i, j]
    cap *= 4
    index = np.empty((cap, 2), dtype=np.int64)
    codes = np.empty(cap, dtype=np.int64)
    n = 0
    for i in range(a - 1):
        prev = padded[i, 0] | (padded[i + 1, 0] << 2)
        for j in range(b - 1):
            col = padded[i, j + 1] | (padded[i + 1, j + 1] << 2)
            code = prev | (col << 1)
            prev = col
            if code != 0 and code != 15:
                index[n, 0] = i
                index[n, 1] = j
                codes[n] = code
                n += 1
    return index[:n], codes[:n]


@njit(cache=True, nogil=True)
def grid_nearest(
    n_grid: int,
    source: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    target: np.ndarray,
    labels: np.ndarray,
    dist: np.ndarray,
    nearest: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """Nearest target element of each source element by grid look-ups.

    The target elements are marked on a flat grid of ``n_grid`` positions (one bit
    each). For each source position, the offsets are tried in order (shortest first)
    and the first one that lands on a target element gives the distance and that
    element's label: the same result as trying each offset on all unresolved positions
    at once.

    Args:
        n_grid: number of grid positions.
        source: (N,) int64 flat positions of the source elements in the grid; every
            ``source + offset`` must be inside it.
        offsets: (K,) int64 flat offsets, sorted by length.
        lengths: (K,) float64 offset lengths in mm.
        target: (M,) int64 flat positions of the target elements, ascending.
        labels: (M,) int64 label of each target element, or an empty array when labels
            are not wanted.
        dist: (N,) float64 output, written where resolved.
        nearest: (N,) int64 output label, written where resolved (when labels given).
    Returns:
        indices (int64, ascending) of the source elements no offset resolved.
    """
    grid = np.zeros((n_grid + 7) >> 3, dtype=np.uint8)
    for t in range(target.shape[0]):
        grid[target[t] >> 3] |= np.uint8(1 << (target[t] & 7))
    n = source.shape[0]
    with_labels = labels.shape[0] > 0
    unresolved = np.empty(n, dtype=np.int64)
    m = 0
    for s in range(n):
        pos = source[s]
        found = False
        for o in range(offsets.shape[0]):
            q = pos + offsets[o]
            if (grid[q >> 3] >> (q & 7)) & 1:
                dist[s] = lengths[o]
                if with_labels:
                    nearest[s] = labels[np.searchsorted(target, q)]
                found = True
                break
        if not found:
            unresolved[m] = s
            m += 1
    return unresolved[:m]


# ------------------------------------------------------------------ voxel passes
@njit(cache=True, nogil=True)
def nonzero_box(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Inclusive bounding box of the voxels where ``a`` or ``b`` (same-shape 3-D integer
    arrays) is non-zero: int64 [lo0, lo1, lo2, hi0, hi1, hi2]; lo > hi when there are none.
    One pass; each row is OR-reduced first and scanned for its ends only when non-zero."""
    n0, n1, n2 = a.shape
    box = np.array([n0, n1, n2, -1, -1, -1], dtype=np.int64)
    for i in range(n0):
        for j in range(n1):
            acc = 0
            for k in range(n2):
                acc |= a[i, j, k] | b[i, j, k]
            if acc == 0:
                continue
            first = 0
            while a[i, j, first] == 0 and b[i, j, first] == 0:
                first += 1
            last = n2 - 1
            while a[i, j, last] == 0 and b[i, j, last] == 0:
                last -= 1
            box[0] = min(box[0], i)
            box[3] = max(box[3], i)
            box[1] = min(box[1], j)
            box[4] = max(box[4], j)
            box[2] = min(box[2], first)
            box[5] = max(box[5], last)
    return box


def grouped_weighted_percentile(
    values: np.ndarray, weights: np.ndarray, group: np.ndarray, n_groups: int, percent: float
) -> np.ndarray:
    """Weighted percentile of ``values`` within each group.

    For group g the result is the smallest of its values x whose weight share
    ``W(<= x) / W`` reaches ``percent`` %, where W(<= x) sums the weights of the group's
    elements with value <= x and W all of them, each summed in index order. This is the
    first value at which ``cumsum(w) / sum(w)`` over the values sorted ascending reaches
    the share (``surface-distance``'s ``compute_robust_hausdorff``), computed without
    sorting the weights: the values alone are sorted and W(<= x) is bisected.
    Elements with ``group < 0`` are ignored; groups without elements give NaN.

    Args:
        values, weights: (N,) float64 (weights >= 0).
        group: (N,) int64 group of each element, < n_groups.
    Returns:
        (n_groups,) float64.
    """
    order, starts = _members_by_group(group, n_groups)
    v = np.ascontiguousarray(values[order], dtype=np.float64)
    w = np.ascontiguousarray(weights[order], dtype=np.float64)
    ranked = v.copy()
    for g in np.flatnonzero(np.diff(starts) > 1):
        ranked[starts[g] : starts[g + 1]].sort()  # numpy's vectorised sort, per group
    return _percentile_bisect(v, w, ranked, starts, percent)


@njit(cache=True, nogil=True)
def _members_by_group(group: np.ndarray, n_groups: int):  # pragma: no cover - compiled
    """Element indices grouped (counting sort, index order within a group) and the
    start of each group's run (``n_groups + 1``); elements with group < 0 left out."""
    sizes = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(group.shape[0]):
        if group[i] >= 0:
            sizes[group[i] + 1] += 1
    starts = np.cumsum(sizes)
    order = np.empty(starts[-1], dtype=np.int64)
    fill = starts[:-1].copy()
    for i in range(group.shape[0]):
        g = group[i]
        if g >= 0:
            order[fill[g]] = i
            fill[g] += 1
    return order, starts


@njit(cache=True, nogil=True)
def _percentile_bisect(
    values: np.ndarray, weights: np.ndarray, ranked: np.ndarray, starts: np.ndarray, percent: float
) -> np.ndarray:  # pragma: no cover - compiled
    """:func:`grouped_weighted_percentile` on grouped elements: ``ranked`` holds each
    group's values sorted; W(<= x) grows with x, so the answer is bisected over them."""
    n_groups = starts.shape[0] - 1
    out = np.full(n_groups, np.nan)
    share = percent / 100.0
    for g in range(n_groups):
        a, b = starts[g], starts[g + 1]
        if a == b:
            continue
        total = 0.0
        for i in range(a, b):
            total += weights[i]
        lo, hi = a, b - 1  # W(<= ranked[b - 1]) = W: share reached
        while lo < hi:
            mid = (lo + hi) // 2
            x = ranked[mid]
            below = 0.0
            for i in range(a, b):
                if values[i] <= x:
                    below += weights[i]
            if below / total >= share:
                hi = mid
            else:
                lo = mid + 1
        out[g] = ranked[lo]
    return out


@njit(cache=True, nogil=True)
def region_masks(
    pred: np.ndarray,
    gt: np.ndarray,
    bits: np.ndarray,
    transposed: bool,
    pm: np.ndarray,
    gm: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
):  # pragma: no cover - compiled
    """Region masks, their row extents and overlap counts of a (prediction, GT) pair of
    label maps, with the label values checked, in one pass.

    Args:
        pred, gt: 3-D integer label maps of the same shape, walked in C order (pass the
            ``.T`` of F-ordered maps, with ``transposed`` True, to walk them in memory
            order; the outputs are in the untransposed axis order).
        bits: (V,) int64 per label value v: bit r set when v belongs to region r; -1
            for values the label scheme does not define (values < 0 or >= V are
            undefined too).
        pm, gm: uint8 (R, X, Y, Z) outputs, zeros: 1 is written where a voxel is inside
            region r of the prediction / GT (nothing else is written, so ``np.zeros``
            pages the system zero-fills lazily stay untouched in empty parts).
        first, last: int64 (2, R, X, Y) outputs, Z and -1: row extents (first and last
            inside z of each row) of the prediction (index 0) and GT (1) mask of each
            region, as :func:`.components.row_extents` gives them.
    Returns:
        (counts, bad): counts (R, 3) int64 |P n G|, |P|, |G| per region; bad (2,)
        int64, 1 where pred / gt holds an undefined value (outputs are then incomplete).
    """
    n0, n1, n2 = pred.shape
    n_regions = pm.shape[0]
    counts = np.zeros((n_regions, 3), dtype=np.int64)
    bad = np.zeros(2, dtype=np.int64)
    nv = bits.shape[0]
    background_inside = bits[0] != 0
    for i in range(n0):
        for j in range(n1):
            acc = 0
            for k in range(n2):  # OR-reduced first (vectorised): most rows are empty
                acc |= pred[i, j, k] | gt[i, j, k]
            k_lo, k_hi = 0, n2 - 1
            if not background_inside:
                if acc == 0:
                    continue
                while pred[i, j, k_lo] == 0 and gt[i, j, k_lo] == 0:
                    k_lo += 1
                while pred[i, j, k_hi] == 0 and gt[i, j, k_hi] == 0:
                    k_hi -= 1
            for k in range(k_lo, k_hi + 1):
                a = pred[i, j, k]
                b = gt[i, j, k]
                if a == 0 and b == 0 and not background_inside:
                    continue
                if a < 0 or a >= nv or bits[a] < 0:
                    bad[0] = 1
                    continue
                if b < 0 or b >= nv or bits[b] < 0:
                    bad[1] = 1
                    continue
                x, y, z = (k, j, i) if transposed else (i, j, k)
                ba, bb = bits[a], bits[b]
                for r in range(n_regions):
                    u = (ba >> r) & 1
                    v = (bb >> r) & 1
                    if u:
                        pm[r, x, y, z] = 1
                        counts[r, 1] += 1
                        first[0, r, x, y] = min(first[0, r, x, y], z)
                        last[0, r, x, y] = max(last[0, r, x, y], z)
                    if v:
                        gm[r, x, y, z] = 1
                        counts[r, 2] += 1
                        first[1, r, x, y] = min(first[1, r, x, y], z)
                        last[1, r, x, y] = max(last[1, r, x, y], z)
                    if u and v:
                        counts[r, 0] += 1
    return counts, bad


@njit(cache=True, nogil=True)
def labelled_surface_elements_3d(
    mask: np.ndarray, labels: np.ndarray, first: np.ndarray, last: np.ndarray
):  # pragma: no cover - compiled
    """Marching-cube elements of a 3-D mask, read in place (no padded copy), with the
    label of each element.

    Windows are indexed by their upper corner: element (e0, e1, e2), 0 <= e <= n, spans
    voxels e - 1 and e on each axis (outside the array counts as outside the mask): the
    2x2x2 windows of the mask padded by one voxel, each neither all inside nor all
    outside. Only the z range between the first and last inside voxel of a window's
    four rows is visited, so empty rows cost nothing.

    Args:
        mask: uint8 (X, Y, Z), 0/1.
        labels: integer (X, Y, Z) component labels of the mask's voxels (read where the
            mask is set; pass the mask itself when labels are not wanted).
        first, last: (X, Y) int64 row extents of the mask
            (:func:`fusionseg.evaluation.metrics.components.row_extents`).
    Returns:
        (index (N, 3) int64 in C order, codes (N,) int64 with bit ``4 c0 + 2 c1 + c2`` set
        when corner (c0, c1, c2) is inside (``itertools.product((0, 1), repeat=3)``),
        element_labels (N,) int64 the label of each element's lowest inside corner).
    """
    n0, n1, n2 = mask.shape
    count = 0
    for i in range(n0):
        for j in range(n1):
            if last[i, j] >= 0:
                count += last[i, j] - first[i, j] + 1
    cap = 8 * count
    index = np.empty((cap, 3), dtype=np.int64)
    codes = np.empty(cap, dtype=np.int64)
    element_labels = np.empty(cap, dtype=np.int64)
    n = 0
    for e0 in range(n0 + 1):
        for e1 in range(n1 + 1):
            lo_z, hi_z = n2, -1
            for x in range(e0 - 1, e0 + 1):
                for y in range(e1 - 1, e1 + 1):
                    if 0 <= x < n0 and 0 <= y < n1 and last[x, y] >= 0:
                        lo_z = min(lo_z, first[x, y])
                        hi_z = max(hi_z, last[x, y])
            if hi_z < 0:
                continue
            # column bits of voxel z: bit 4 c0 + 2 c1 (c2 added by the shift below)
            prev = 0  # voxel lo_z - 1 is outside in all four rows
            for e2 in range(lo_z, hi_z + 2):
                col = 0
                if e2 < n2:
                    for c0 in range(2):
                        x = e0 - 1 + c0
                        if x < 0 or x >= n0:
                            continue
                        for c1 in range(2):
                            y = e1 - 1 + c1
                            if 0 <= y < n1 and mask[x, y, e2]:
                                col |= 1 << (4 * c0 + 2 * c1)
                code = prev | (col << 1)
                prev = col
                if code == 0 or code == 255:
                    continue
                index[n, 0], index[n, 1], index[n, 2] = e0, e1, e2
                codes[n] = code
                bit = 0
                while not (code >> bit) & 1:
                    bit += 1
                x = e0 - 1 + ((bit >> 2) & 1)
                y = e1 - 1 + ((bit >> 1) & 1)
                z = e2 - 1 + (bit & 1)
                element_labels[n] = labels[x, y, z]
                n += 1
    return index[:n], codes[:n], element_labels[:n]
