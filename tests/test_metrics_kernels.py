"""The compiled metric kernels against the numpy / scipy expressions they replace."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from fusionseg.evaluation.metrics import kdtree, kernels
from fusionseg.evaluation.metrics.overlap import bounding_box, union_bounding_box


def _reference_elements(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surface windows and codes by whole-array numpy operations."""
    ndim = padded.ndim
    windows = tuple(n - 1 for n in padded.shape)
    codes = np.zeros(windows, dtype=np.int64)
    for bit, corner in enumerate(itertools.product((0, 1), repeat=ndim)):
        part = padded[tuple(slice(c, c + n) for c, n in zip(corner, windows))]
        codes |= part.astype(np.int64) << bit
    full = (1 << (1 << ndim)) - 1
    on = (codes != 0) & (codes != full)
    return np.stack(np.nonzero(on), axis=1), codes[on]


def test_surface_elements_2d_match_numpy():
    rng = np.random.default_rng(2)
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(1, 12, 2))
        padded = np.zeros(tuple(n + 2 for n in shape), dtype=np.uint8)
        padded[1:-1, 1:-1] = rng.random(shape) < rng.uniform(0.05, 0.9)
        index, codes = kernels.surface_elements_2d(padded)
        ref_index, ref_codes = _reference_elements(padded)
        np.testing.assert_array_equal(index, ref_index)
        np.testing.assert_array_equal(codes, ref_codes)


def test_labelled_surface_elements_3d_match_numpy():
    """Elements of the mask padded by one voxel, read in place; the label of each
    element's lowest inside corner; the voxel count of each label."""
    import cc3d

    rng = np.random.default_rng(3)
    corners = np.array(list(itertools.product((0, 1), repeat=3))) - 1
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(1, 12, 3))
        mask = (rng.random(shape) < rng.uniform(0.02, 0.9)).astype(np.uint8)
        labels, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
        index, codes, element_labels, sizes = kernels.labelled_surface_elements_3d(mask, labels, n)
        ref_index, ref_codes = _reference_elements(np.pad(mask, 1))
        np.testing.assert_array_equal(index, ref_index)
        np.testing.assert_array_equal(codes, ref_codes)
        lowest = np.array([(int(c) & -int(c)).bit_length() - 1 for c in ref_codes], dtype=np.int64)
        voxel = ref_index + corners[lowest]
        np.testing.assert_array_equal(element_labels, labels[tuple(voxel.T)] if len(voxel) else [])
        np.testing.assert_array_equal(sizes[1:], np.bincount(labels.ravel(), minlength=n + 1)[1:])
        assert sizes[0] == 0


def test_grid_nearest_takes_the_first_offset_that_hits():
    rng = np.random.default_rng(0)
    shape = (20, 20, 20)
    grid = (rng.random(shape) < 0.01).astype(np.uint8)
    labels = rng.integers(1, 9, shape).astype(np.int32)
    pts = rng.integers(4, 16, (300, 3))
    off = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    length = np.sqrt((off ** 2).sum(1) * 1.0)
    order = np.argsort(length, kind="stable")
    off, length = off[order], length[order]
    strides = np.asarray(grid.strides, dtype=np.int64)
    target = np.flatnonzero(grid.ravel())
    dist = np.full(300, np.inf)
    near = np.zeros(300, dtype=np.int64)
    missed = kernels.grid_nearest(grid.ravel(), pts @ strides, off @ strides, length, target,
                                  labels.ravel()[target].astype(np.int64), dist, near)
    for s, p in enumerate(pts):
        hits = [k for k, o in enumerate(off) if grid[tuple(p + o)]]
        if not hits:
            assert s in missed and np.isinf(dist[s])
        else:
            assert s not in missed
            assert dist[s] == length[hits[0]]
            assert near[s] == labels[tuple(p + off[hits[0]])]


@pytest.mark.parametrize("n_points, ndim, leaf", [(1, 3, 4), (2, 3, 1), (7, 2, 2), (500, 3, 8),
                                                  (3000, 3, 32), (400, 2, 16)])
def test_kd_tree_matches_scipy(n_points, ndim, leaf):
    rng = np.random.default_rng(n_points)
    spacing = rng.uniform(0.5, 2.0, ndim)
    points = rng.integers(0, 30, (n_points, ndim))  # grid positions, duplicates too
    queries = rng.integers(-20, 50, (700, ndim))
    queries = queries[np.lexsort(queries.T[::-1])]  # coherent order, as surfaces come
    tree = kdtree.kd_build(points, leaf)
    dist = np.empty(len(queries))
    which = np.empty(len(queries), dtype=np.int64)
    padded_queries = np.zeros((len(queries), 3))
    padded_queries[:, :ndim] = queries
    kdtree.kd_query(tree, padded_queries, np.append(spacing, [0.0] * (3 - ndim)), dist, which)
    ref, _ = cKDTree(points * spacing).query(queries * spacing)
    np.testing.assert_allclose(dist, ref, rtol=0, atol=1e-9)
    # the distance is that of the reported point, as grid offsets give it
    np.testing.assert_array_equal(dist, np.sqrt((((queries - points[which]) * spacing) ** 2).sum(axis=1)))


def test_dilate_18_matches_scipy():
    rng = np.random.default_rng(1)
    structure = ndimage.generate_binary_structure(3, 2)
    for _ in range(100):
        shape = tuple(int(n) for n in rng.integers(1, 14, 3))
        mask = rng.random(shape) < rng.uniform(0.005, 0.6)
        d = int(rng.integers(1, 5))
        ref = ndimage.binary_dilation(mask, structure, iterations=d)
        np.testing.assert_array_equal(kernels.dilate_18(mask.view(np.uint8), d).view(bool), ref)


def test_union_bounding_box_matches_bounding_box_in_both_memory_orders():
    rng = np.random.default_rng(2)
    for _ in range(40):
        a = (rng.random((7, 9, 11)) < 0.01).astype(np.uint8) * 2
        b = (rng.random((7, 9, 11)) < 0.005).astype(np.uint8)
        ref = bounding_box((a != 0) | (b != 0))
        for x, y in ((a, b), (np.asfortranarray(a), np.asfortranarray(b)), (a, np.asfortranarray(b))):
            got = union_bounding_box(x, y)
            if ref is None:
                assert got is None
            else:
                assert [list(v) for v in got] == [list(v) for v in ref]


def test_grouped_weighted_percentile_matches_sorted_cumulative_weights():
    """The surface-distance recipe: sort by value, cumulative weight share, first value
    reaching the percentile; per group, groups < 0 ignored, empty groups NaN."""
    rng = np.random.default_rng(4)
    values = np.round(rng.uniform(0, 20, 3000), 1)  # many ties
    weights = rng.choice([0.5, 0.7071, 1.0, 1.5], 3000)
    group = rng.integers(-1, 7, 3000)
    got = kernels.grouped_weighted_percentile(values, weights, group, 9, 95.0)
    for g in range(9):
        v, w = values[group == g], weights[group == g]
        if v.size == 0:
            assert np.isnan(got[g])
            continue
        order = np.argsort(v, kind="stable")
        cum = np.cumsum(w[order]) / np.sum(w)
        ref = v[order][min(int(np.searchsorted(cum, 0.95)), v.size - 1)]
        assert got[g] == ref
    one = kernels.grouped_weighted_percentile(values, weights, np.zeros(3000, np.int64), 1, 100.0)
    assert one[0] == values.max()
