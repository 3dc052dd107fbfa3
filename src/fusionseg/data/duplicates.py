"""Content hashes of image data, to find the same scan under two case ids.

Two cases with identical image data are one scan: if one lands in training and the
other in validation or test, the test score measures memorisation (data leakage).
``fusionseg data check`` hashes the decoded source volumes
(:mod:`fusionseg.data.check`); the training path can hash its preprocessed cases in
memory with :func:`prepared_case_hash` (no file I/O), group them with
:func:`duplicate_groups` and give the groups to
:func:`fusionseg.data.splits.make_splits`, which keeps every group in one part.

Hash definition: each volume is digested as its dtype (native byte order), its shape
and its voxel bytes in Fortran (column-major) order - the order NIfTI stores voxels,
so volumes decoded by nibabel are hashed without a copy. The digest of several
volumes (a case's modalities, in a fixed modality order) is the digest of their
digests in that order. The hash therefore depends only on the values, shape and dtype
of each volume, never on its memory layout (a memory-mapped, axis-moved cache view
hashes like the in-memory array). Hashes are BLAKE2b, 128 bits, as hex strings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for annotations: hashing needs nothing but ``case.image``
    from fusionseg.data.preprocess import PreparedCase

#: Digest size in bytes (128-bit BLAKE2b: collisions are not a practical concern).
DIGEST_SIZE = 16


def volume_digest(volume: np.ndarray) -> str:
    """Content hash of one array (any shape and dtype).

    Args:
        volume: e.g. an (X, Y, Z) image volume; any memory layout (C, Fortran,
            strided view, memmap).
    Returns:
        32 hex characters; equal for two arrays exactly when (up to hash collisions)
        their shapes, dtypes (ignoring byte order) and values are equal.
    """
    a = np.asarray(volume)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    # Fortran-order bytes of ``a`` are the C-order bytes of ``a.T``: no copy when
    # ``a`` is Fortran-contiguous (what nibabel returns), one copy otherwise.
    h.update(np.asfortranarray(a).T if a.ndim > 1 else np.ascontiguousarray(a))
    return h.hexdigest()


def combine_digests(digests: Iterable[str]) -> str:
    """Hash of a sequence of :func:`volume_digest` values, order-sensitive (32 hex
    characters). A case's hash combines its modalities' digests in modality order."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def hash_volumes(volumes: Iterable[np.ndarray]) -> str:
    """Hash of several volumes in the given order: ``combine_digests(volume_digest(v)
    for v in volumes)``.

    Args:
        volumes: e.g. a case's (X, Y, Z) modality volumes in the dataset's modality
            order, or a (C, X, Y, Z) array (iterated over its channels).
    Returns:
        32 hex characters.
    """
    return combine_digests(volume_digest(v) for v in volumes)


def prepared_case_hash(case: PreparedCase, modalities: Sequence[str] | None = None) -> str:
    """Hash of a preprocessed case's image, computed in memory (no file I/O).

    Preprocessing is deterministic, so two cases with identical source images get
    identical preprocessed images and the same hash - also when one copy was saved
    with another dtype but the same voxel values (both are read as float32), which
    ``data check``'s hash of the raw files tells apart. (A copy with linearly rescaled
    intensities usually differs in the last bits after z-scoring: not caught.) The
    label is not hashed: a scan with two different segmentations is still one scan.

    Cost: one pass over the image; one channel, float32 (X, Y, Z), is copied at a time
    when the array is not Fortran-ordered per channel (e.g. the cache's memmap view).

    Args:
        case: a :class:`~fusionseg.data.preprocess.PreparedCase`; ``case.image`` is
            float32 (C, X, Y, Z), channels in ``case.modalities`` order.
        modalities: hash only these channels, in this order (default: all, in
            ``case.modalities`` order). Compare hashes made with the same modalities.
    Returns:
        32 hex characters.
    Raises:
        KeyError: a requested modality is not among ``case.modalities``.
    """
    names = tuple(case.modalities if modalities is None else modalities)
    missing = [m for m in names if m not in case.modalities]
    if missing:
        raise KeyError(f"case {case.case_id}: modalities {missing} not available (have {list(case.modalities)})")
    return hash_volumes(case.image[case.modalities.index(m)] for m in names)


def prepared_hashes(cases: Mapping[str, PreparedCase], modalities: Sequence[str] | None = None) -> dict[str, str]:
    """:func:`prepared_case_hash` of every case: case id -> hash (input order)."""
    return {cid: prepared_case_hash(c, modalities) for cid, c in cases.items()}


def duplicate_groups(hashes: Mapping[str, str | None]) -> list[list[str]]:
    """Groups of keys that share a hash.

    Args:
        hashes: id -> hash (e.g. case id -> :func:`prepared_case_hash`); ``None``
            values (cases that could not be hashed) are ignored.
    Returns:
        every group of two or more ids with the same hash, each group sorted, the
        groups sorted by their first id; ``[]`` when all hashes differ.
    """
    by_hash: dict[str, list[str]] = {}
    for key, digest in hashes.items():
        if digest is not None:
            by_hash.setdefault(digest, []).append(key)
    return sorted((sorted(g) for g in by_hash.values() if len(g) > 1), key=lambda g: g[0])
