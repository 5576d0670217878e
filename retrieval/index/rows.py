"""Row numbers across segments: a store numbers its live rows 0..count-1, segment after segment, skipping
deleted ones, so a row number names an image within one generation (ids handed out by a server name their
generation). `Rows` maps between those numbers and each segment's own rows, and nothing else."""

from __future__ import annotations

import numpy as np

from retrieval.errors import UsageError
from retrieval.index.manifest import Entry
from retrieval.index.segments import Segment


class Rows:
    """The row numbering of a list of segments, as they are when it is made (a change makes a new one)."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self.starts = np.cumsum([0] + [s.live for s in segments])  # each segment's first row

    @property
    def count(self) -> int:
        return int(self.starts[-1])

    def split(self, rows: np.ndarray | list[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(segment number, positions in `rows`, local rows of that segment) for each segment `rows` touch."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.count):
            raise UsageError(f"row out of range: the index holds rows 0 to {self.count - 1}")
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = []
        for s in np.unique(which).tolist():
            where = np.flatnonzero(which == s)
            out.append((s, where, self.segments[s].local(rows[where] - self.starts[s])))
        return out

    def of_segments(self, local: list[np.ndarray]) -> np.ndarray:
        """Store rows of each segment's live local rows (`local[i]`: segment i's), in order."""
        parts = [start + s.positions(rows) for start, s, rows in zip(self.starts.tolist(), self.segments, local)]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def entry(self, row: int) -> Entry:
        [(i, _, local)] = self.split([row])
        return self.segments[i].manifest.entry(int(local[0]))

    def entries_of(self, rows: np.ndarray | list[int]) -> list[Entry]:
        """The entries of `rows`, in the order given."""
        out: list[Entry] = [None] * len(rows)  # type: ignore[list-item]
        for i, where, local in self.split(rows):
            for at, entry in zip(where.tolist(), self.segments[i].manifest.entries_at(local)):
                out[at] = entry
        return out

    def row_of(self, path: str) -> int | None:
        """Row of a manifest path (relative, POSIX), or None: a binary search per segment, nothing built."""
        for start, segment in zip(self.starts, self.segments):
            local = segment.manifest.row_of(path)
            if local is not None and not segment.is_deleted(np.array([local]))[0]:
                return int(start + segment.positions(np.array([local]))[0])
        return None

    def vectors_of(self, rows: np.ndarray | list[int], dim: int) -> np.ndarray:
        """The stored (normalized) vectors of `rows`, (len(rows), dim)."""
        out = np.empty((len(rows), dim), np.float32)
        for i, where, local in self.split(rows):
            out[where] = self.segments[i].index.reconstruct_batch(local)
        return out
