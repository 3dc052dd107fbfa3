"""Work buffers that the evaluation kernels reuse from case to case (one per thread and
slot).

Fresh memory costs a page fault per 4 KiB page at its first write. On a sparse case
(small lesions spread over a 4 M-voxel crop) these faults cost more than the kernels
that write the component labels and region masks: on the speed benchmark's fragmented
case, about 2.5 ms per labelling and 5 ms for the region masks, against 0.4 ms and
1 ms of work. A buffer kept from one case to the next has its pages mapped already.
Each slot keeps the largest size asked for (for a whole 240 x 240 x 155 case: 36 MB
per int32 label slot, 27 MB per set of three uint8 region masks).
"""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def _pool() -> dict:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    return pool


def _buffer(kind: str, slot: str, shape: tuple[int, ...], dtype, make) -> np.ndarray:
    """The pooled ``(kind, slot, dtype)`` buffer viewed as ``shape``; a new one from
    ``make(n, dtype)`` when it is missing or too small."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    key = (kind, slot, dtype.str)
    buf = _pool().get(key)
    if buf is None or buf.size < n:
        buf = _pool()[key] = make(n, dtype=dtype)
    return buf[:n].reshape(shape)


def work_buffer(slot: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A C-ordered array of ``shape`` and ``dtype`` with undefined contents, the same
    memory as the previous call with ``slot`` in this thread when it is large enough.
    Use it only until the next call with that slot."""
    return _buffer("work", slot, shape, dtype, np.empty)


def zeroed_buffer(slot: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """As :func:`work_buffer`, but all zeros on return. The caller must leave it all
    zeros again (e.g. by clearing exactly what it wrote, in a ``finally``) before the
    next call with ``slot``."""
    return _buffer("zeroed", slot, shape, dtype, np.zeros)
