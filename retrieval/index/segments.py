"""Segments: an index is a list of immutable segments plus deletion markers, as in Lucene or LanceDB.

A segment is some vectors in a FAISS index of its own kind (ann/indexes.py) with their manifest rows; once
written it never changes. An ingest that adds images writes a new segment holding only them, and a
change or removal marks rows of older segments deleted: the cost of a commit follows the size of the
change, not of the index. Deleted rows are never returned: each segment's search passes over them inside
FAISS (an ID selector), and its range search drops them.

A store numbers its live rows 0..count-1, segment after segment, skipping deleted ones. A row number
therefore names an image within one generation (ids handed out by a server name their generation).

Which segments are built and merged is building.py's policy; how they are searched together is fanout.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import faiss
import numpy as np

from retrieval.ann import indexes as ann
from retrieval.ann.filtered import Allowed, FilterPlan, search_within
from retrieval.index.manifest import Entry, Manifest

NO_ROWS = np.empty(0, np.int64)  # a segment with nothing deleted
Hits = list[list[tuple[int, float]]]  # per query, (live position, score) pairs, best first


@dataclass(frozen=True)
class Segment:
    """One immutable segment and the rows of it that the generation holding it has deleted."""

    name: str  # its folder in the generation ("" for a single-segment index of format 5 or older)
    index: ann.VectorIndex
    manifest: Manifest
    description: dict[str, Any]  # kind, factory, parameters and measured recall (tuning.build_measured)
    deleted: np.ndarray = field(default_factory=lambda: NO_ROWS)  # local rows, sorted, unique
    files: dict[str, dict[str, Any]] | None = None  # facts of its files as written; None until it is

    @property
    def rows(self) -> int:
        """Rows written, deleted ones included."""
        return self.index.count

    @property
    def live(self) -> int:
        return self.rows - len(self.deleted)

    @property
    def deleted_share(self) -> float:
        return len(self.deleted) / self.rows if self.rows else 0.0

    def with_deleted(self, local_rows: np.ndarray) -> Segment:
        """This segment with `local_rows` marked deleted as well."""
        more = np.union1d(self.deleted, np.asarray(local_rows, np.int64))
        return replace(self, deleted=more)

    def local(self, positions: np.ndarray) -> np.ndarray:
        """Local rows of the live positions given (position i: the i-th live row): each position plus
        the deleted rows before it, found by binary search without listing the live rows."""
        positions = np.asarray(positions, np.int64)
        if not len(self.deleted):
            return positions
        return positions + np.searchsorted(self._live_before_deleted, positions, side="right")

    @cached_property
    def _live_before_deleted(self) -> np.ndarray:
        """For each deleted row, how many live rows precede it."""
        return self.deleted - np.arange(len(self.deleted))

    def positions(self, local_rows: np.ndarray) -> np.ndarray:
        """Live positions of live local rows: each row less the deleted rows before it."""
        local_rows = np.asarray(local_rows, np.int64)
        return local_rows - np.searchsorted(self.deleted, local_rows) if len(self.deleted) else local_rows

    def is_deleted(self, local_rows: np.ndarray) -> np.ndarray:
        local_rows = np.asarray(local_rows, np.int64)
        if not len(self.deleted):
            return np.zeros(len(local_rows), bool)
        at = np.minimum(np.searchsorted(self.deleted, local_rows), len(self.deleted) - 1)
        return self.deleted[at] == local_rows

    def search(self, queries: np.ndarray, k: int) -> Hits:
        """Top-k (live position, score) per query among live rows, best first: deleted rows are filtered
        inside FAISS's own search (ann.VectorIndex.skipping), so no more candidates are fetched than k."""
        return self.hits_from(self.find(queries, k))

    def find(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search`'s FAISS half (ann.VectorIndex.find): distances and local rows, -1 fillers."""
        k = min(k, self.live)
        if k < 1:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        return self.index.find(queries, k, self._skipping if len(self.deleted) else None)

    def hits_from(self, found: tuple[np.ndarray, np.ndarray]) -> Hits:
        """`search`'s other half: `find`'s answer as (live position, score) pairs."""
        distances, rows = found
        return self.index.hits_from(distances, self.positions(rows))  # -1 fillers stay -1

    def search_within(self, queries: np.ndarray, k: int, allowed: Allowed, plan: FilterPlan) -> Hits:
        """Top-k (live position, score) per query among the `allowed` local rows only (selection.py), best
        first, planned by how many they are (ann/filtered.py)."""
        return [self._as_positions(hits) for hits in search_within(self.index, queries, k, allowed, plan)]

    @cached_property
    def _skipping(self) -> faiss.SearchParameters:
        return self.index.skipping(self.deleted)

    def range_search(self, queries: np.ndarray, threshold: float) -> list[list[tuple[int, float]]]:
        """Every (live position, score) within `threshold` of each query, best first (ann.range_search)."""
        return [self._live_hits(hits) for hits in self.index.range_search(queries, threshold)]

    def _live_hits(self, hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """Hits on live rows, their local rows turned into live positions, order kept."""
        rows = np.fromiter((r for r, _ in hits), np.int64, len(hits))
        live = ~self.is_deleted(rows)
        return self._as_positions([hit for hit, keep in zip(hits, live) if keep])

    def _as_positions(self, hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """Hits on live rows with their local rows turned into live positions, order kept."""
        rows = np.fromiter((r for r, _ in hits), np.int64, len(hits))
        return list(zip(self.positions(rows).tolist(), (s for _, s in hits)))


def live_vectors(segments: list[Segment], out: np.ndarray | None = None, chunk: int = 50_000) -> np.ndarray:
    """The live rows' vectors of `segments`, in order, read into one array (`out`, or a new one) a chunk
    at a time: no second full-size copy."""
    if out is None:
        out = np.empty((sum(s.live for s in segments), segments[0].index.dim), np.float32)
    at = 0
    for segment in segments:
        for start in range(0, segment.live, chunk):
            rows = segment.local(np.arange(start, min(start + chunk, segment.live)))
            out[at : at + len(rows)] = segment.index.reconstruct_batch(rows)
            at += len(rows)
    return out


def live_phashes(segments: list[Segment]) -> np.ndarray:
    """The live rows' perceptual hashes of `segments`, in order, (rows, 16) uint8; zeros where a row has none
    (its segment was written before the hashes were)."""
    parts = [s.manifest.phashes(s.local(np.arange(s.live))) for s in segments]
    return np.concatenate(parts) if parts else np.zeros((0, 16), np.uint8)


def live_entries(segments: list[Segment]) -> list[Entry]:
    return [e for s in segments for e in s.manifest.entries_at(s.local(np.arange(s.live)))]
