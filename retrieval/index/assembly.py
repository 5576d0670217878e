"""The array a new segment is built from, assembled in memory or, for a large build, in a memory-mapped file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from retrieval.io.durable import TEMPORARY

MAPPED_ROWS = 100_000  # a build from at least this many rows reads its vectors through a memory-mapped file


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
