"""Vectors on their way into an index: the one place they are checked and normalized, and the array a new
segment is built from, assembled in memory or, for a large build, in a memory-mapped file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from retrieval.errors import UsageError
from retrieval.io.durable import TEMPORARY

MAPPED_ROWS = 100_000  # a build from at least this many rows reads its vectors through a memory-mapped file
CHECKED_ROWS = 65_536  # rows `normalize` checks at a time


def normalize(vectors: np.ndarray, chunk: int = CHECKED_ROWS) -> np.ndarray:
    """L2-normalize rows: the one place vectors are normalized, for stored and query vectors alike.

    Checked explicitly rather than left to faiss, whose own checks are `assert`s that `python -O` drops.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise UsageError(f"vectors must be a 2-d array (n, dim), got shape {x.shape}")
    norms = np.empty((len(x), 1), np.float32)
    for start in range(0, len(x), chunk):  # a chunk at a time: whole-array temporaries would be 8 GB at 1M
        part = x[start : start + chunk]
        if not np.isfinite(part).all():
            raise UsageError("vectors contain NaN or infinity")
        norms[start : start + chunk] = np.linalg.norm(part, axis=1, keepdims=True)
    if (norms == 0).any():
        raise UsageError("a vector is all zeros and has no direction")
    if (np.abs(norms - 1.0) <= 1e-6).all():  # not np.allclose: 17 of a query's 30 us here
        return np.ascontiguousarray(x)  # already unit length: no copy of a possibly huge array
    return np.ascontiguousarray(x / norms)


@contextmanager
def assembled(
    rows: int, dim: int, fill: Callable[[np.ndarray], object], folder: Path | None, mapped_rows: int = MAPPED_ROWS
) -> Iterator[np.ndarray]:
    """A (rows, dim) float32 array that `fill(out)` fills, for a new segment to be built from: in memory when
    under `mapped_rows` rows (or with no folder to write in); otherwise written to a temporary file in `folder`
    (an index folder) and memory-mapped, so that the build holds in memory only the index it makes (a
    million 2048-d vectors are 8 GB, and the new index keeps its own copy). The file is removed after."""
    if rows < mapped_rows or folder is None:
        out = np.empty((rows, dim), np.float32)
        fill(out)
        yield out
        return
    folder.mkdir(parents=True, exist_ok=True)  # a first commit's index folder may not exist yet
    path = folder / f"{TEMPORARY}vectors-{os.getpid()}.npy"
    try:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        fill(out)
        out.flush()
        del out
        yield np.load(path, mmap_mode="r")
    finally:
        path.unlink(missing_ok=True)
