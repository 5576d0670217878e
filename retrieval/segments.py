"""Segments: an index is a list of immutable segments plus deletion markers, as in Lucene or LanceDB.

A segment is some vectors in a FAISS index of its own kind (ann.py) with their manifest rows; once
written it never changes. An ingest that adds images writes a new segment holding only them, and a
change or removal marks rows of older segments deleted: the cost of a commit follows the size of the
change, not of the index. Deleted rows are never returned: each segment's search passes over them inside
FAISS (an ID selector), and its range search drops them.

A store numbers its live rows 0..count-1, segment after segment, skipping deleted ones. A row number
therefore names an image within one generation (ids handed out by a server name their generation).

Merging (`merges_due`) follows Lucene's tiered policy: segments fall into tiers by size (each MERGE_FACTOR
times the last); a tier holding MERGE_FACTOR segments is merged into one, and a segment with more than
MAX_DELETED of its rows deleted is rewritten without them, so the number of segments a query visits
grows only with the logarithm of the number of commits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import faiss
import numpy as np

from . import ann
from .manifest import Manifest

MERGE_FACTOR = 4  # segments per tier before they are merged, and the size ratio between tiers
MERGE_FLOOR = 1_000  # segments smaller than this count as this size: tiny commits share tier 0
MAX_DELETED = 0.25  # a segment with more than this share of its rows deleted is rewritten without them
NO_ROWS = np.empty(0, np.int64)  # a segment with nothing deleted


@dataclass(frozen=True)
class Segment:
    """One immutable segment and the rows of it that the generation holding it has deleted."""

    name: str  # its folder in the generation ("" for a single-segment index of format 5 or older)
    index: ann.VectorIndex
    manifest: Manifest
    description: dict[str, Any]  # kind, factory, parameters and measured recall (ann.build_measured)
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

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Top-k (live position, score) per query among live rows, best first: deleted rows are filtered
        inside FAISS's own search (ann.VectorIndex.skipping), so no more candidates are fetched than k."""
        k = min(k, self.live)
        if k < 1:
            return [[] for _ in queries]
        if not len(self.deleted):
            return self.index.search(queries, k)
        return [self._as_positions(hits) for hits in self.index.search(queries, k, self._skipping)]

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


def tier(live: int) -> int:
    """A segment's size class: 0 below MERGE_FACTOR × MERGE_FLOOR live rows, then one per factor."""
    return int(math.log(max(live, MERGE_FLOOR) / MERGE_FLOOR, MERGE_FACTOR) + 1e-9)


def merges_due(segments: list[Segment]) -> list[list[int]]:
    """Which segments to merge, as lists of their positions: every tier holding MERGE_FACTOR or more
    segments, each segment with more than MAX_DELETED of its rows deleted (with its tier's others, if
    any). Empty when nothing is due. Segments with no live rows are left out: they are simply dropped."""
    tiers: dict[int, list[int]] = {}
    for i, segment in enumerate(segments):
        if segment.live:
            tiers.setdefault(tier(segment.live), []).append(i)
    due = []
    for members in tiers.values():
        worn = any(segments[i].deleted_share > MAX_DELETED for i in members)
        if len(members) >= MERGE_FACTOR or worn:
            due.append(members)
    return due
