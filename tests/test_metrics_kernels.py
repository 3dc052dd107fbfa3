"""The compiled metric kernels against the numpy / scipy expressions they replace."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from fusionseg.evaluation.metrics import components, kdtree, kernels
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
    """Elements of the mask padded by one voxel, read in place (empty rows skipped by
    their extents); the label of each element's lowest inside corner."""
    import cc3d

    rng = np.random.default_rng(3)
    corners = np.array(list(itertools.product((0, 1), repeat=3))) - 1
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(1, 12, 3))
        mask = (rng.random(shape) < rng.uniform(0.02, 0.9)).astype(np.uint8)
        labels = cc3d.connected_components(mask, connectivity=26)
        index, codes, element_labels = kernels.labelled_surface_elements_3d(mask, labels, *components.row_extents(mask))
        ref_index, ref_codes = _reference_elements(np.pad(mask, 1))
        np.testing.assert_array_equal(index, ref_index)
        np.testing.assert_array_equal(codes, ref_codes)
        lowest = np.array([(int(c) & -int(c)).bit_length() - 1 for c in ref_codes], dtype=np.int64)
        voxel = ref_index + corners[lowest]
        np.testing.assert_array_equal(element_labels, labels[tuple(voxel.T)] if len(voxel) else [])


def test_row_extents_match_numpy():
    rng = np.random.default_rng(4)
    for _ in range(20):
        shape = tuple(int(n) for n in rng.integers(1, 12, 3))
        mask = (rng.random(shape) < rng.uniform(0.0, 0.5)).astype(np.uint8)
        first, last = components.row_extents(mask)
        any_ = mask.any(axis=2)
        np.testing.assert_array_equal(first, np.where(any_, mask.argmax(axis=2), shape[2]))
        np.testing.assert_array_equal(last, np.where(any_, shape[2] - 1 - mask[..., ::-1].argmax(axis=2), -1))


@pytest.mark.parametrize("density", [0.02, 0.1, 0.3, 0.6])
def test_label_components_match_scipy(density):
    """Run-based labelling: the labels (numbered in C order of the first voxel) and
    sizes of scipy.ndimage.label with 26-connectivity; only inside voxels written."""
    rng = np.random.default_rng(int(density * 100))
    for _ in range(25):
        shape = tuple(int(n) for n in rng.integers(1, 14, 3))
        mask = (rng.random(shape) < density).astype(np.uint8)
        ref, n_ref = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        labels = np.full(shape, -7, dtype=np.int32)  # untouched outside the mask
        labels[mask == 1] = 0
        n, sizes = components.label_components(mask, *components.row_extents(mask), labels)
        assert n == n_ref
        np.testing.assert_array_equal(np.where(mask == 1, labels, 0), ref)
        assert (labels[mask == 0] == -7).all()
        np.testing.assert_array_equal(sizes, np.bincount(ref.ravel(), minlength=n + 1) * (np.arange(n + 1) > 0))


def test_label_components_one_plane_is_8_connected():
    rng = np.random.default_rng(5)
    for _ in range(20):
        plane = (rng.random((15, 17)) < 0.3).astype(np.uint8)
        labels = np.zeros((1,) + plane.shape, dtype=np.int32)
        n, _ = components.label_components(plane[None], *components.row_extents(plane[None]), labels)
        ref, n_ref = ndimage.label(plane, structure=np.ones((3, 3)))
        assert n == n_ref
        np.testing.assert_array_equal(labels[0], ref)


def test_region_masks_match_numpy():
    """Masks, counts and row extents of every region, in C and in F (transposed) order."""
    rng = np.random.default_rng(6)
    bits = np.array([0, 0b011, 0b001, -1, 0b111], dtype=np.int64)  # labels 0,1,2,4; 3 undefined
    for transposed in (False, True):
        for _ in range(10):
            shape = tuple(int(n) for n in rng.integers(1, 10, 3))
            p = rng.choice([0, 0, 0, 1, 2, 4], shape).astype(np.uint8)
            g = rng.choice([0, 0, 1, 2, 4], shape).astype(np.uint8)
            pm = np.zeros((3,) + shape, np.uint8)
            gm = np.zeros((3,) + shape, np.uint8)
            first = np.full((2, 3) + shape[:2], shape[2], np.int64)
            last = np.full((2, 3) + shape[:2], -1, np.int64)
            src = (np.asfortranarray(p).T, np.asfortranarray(g).T) if transposed else (p, g)
            counts, bad = kernels.region_masks(*src, bits, transposed, pm, gm, first, last)
            assert not bad.any()
            for r in range(3):
                ip, ig = (((bits[a] >> r) & 1).astype(np.uint8) for a in (p, g))
                np.testing.assert_array_equal(pm[r], ip)
                np.testing.assert_array_equal(gm[r], ig)
                assert tuple(counts[r]) == ((ip & ig).sum(), ip.sum(), ig.sum())
                for k, m in ((0, pm[r]), (1, gm[r])):
                    ref_first, ref_last = components.row_extents(m)
                    np.testing.assert_array_equal(first[k, r], ref_first)
                    np.testing.assert_array_equal(last[k, r], ref_last)
    p[0, 0, 0] = 3
    counts, bad = kernels.region_masks(p, g, bits, False, pm, gm, first, last)
    assert bad.tolist() == [1, 0]


def test_grid_nearest_takes_the_first_offset_that_hits():
    rng = np.random.default_rng(0)
    shape = (20, 20, 20)
    grid = (rng.random(shape) < 0.01).astype(np.uint8)
    labels = rng.integers(1, 9, shape).astype(np.int32)
    pts = rng.integers(4, 16, (300, 3))
    off = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    length = np.sqrt((off**2).sum(1) * 1.0)
    order = np.argsort(length, kind="stable")
    off, length = off[order], length[order]
    strides = np.asarray(grid.strides, dtype=np.int64)
    target = np.flatnonzero(grid.ravel())
    dist = np.full(300, np.inf)
    near = np.zeros(300, dtype=np.int64)
    missed = kernels.grid_nearest(
        grid.size, pts @ strides, off @ strides, length, target, labels.ravel()[target].astype(np.int64), dist, near
    )
    for s, p in enumerate(pts):
        hits = [k for k, o in enumerate(off) if grid[tuple(p + o)]]
        if not hits:
            assert s in missed and np.isinf(dist[s])
        else:
            assert s not in missed
            assert dist[s] == length[hits[0]]
            assert near[s] == labels[tuple(p + off[hits[0]])]


@pytest.mark.parametrize(
    "n_points, ndim, leaf", [(1, 3, 4), (2, 3, 1), (7, 2, 2), (500, 3, 8), (3000, 3, 32), (400, 2, 16)]
)
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
    # trying every point gives the same distances, bit for bit, and the first point at each
    brute_dist = np.empty(len(queries))
    brute_which = np.empty(len(queries), dtype=np.int64)
    kdtree.brute_nearest(points, padded_queries, np.append(spacing, [0.0] * (3 - ndim)), brute_dist, brute_which)
    np.testing.assert_array_equal(brute_dist, dist)
    d_all = np.sqrt((((queries[:, None, :] - points[None]) * spacing) ** 2).sum(axis=2))
    np.testing.assert_array_equal(brute_which, np.argmin(d_all, axis=1))


def test_dilate_18_matches_scipy():
    rng = np.random.default_rng(1)
    structure = ndimage.generate_binary_structure(3, 2)
    for _ in range(100):
        shape = tuple(int(n) for n in rng.integers(1, 14, 3))
        mask = rng.random(shape) < rng.uniform(0.005, 0.6)
        d = int(rng.integers(1, 5))
        ref = ndimage.binary_dilation(mask, structure, iterations=d)
        np.testing.assert_array_equal(components.dilate_18(mask.view(np.uint8), d).view(bool), ref)


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
