"""Segments: an index is a list of immutable segments plus deletion markers, as in Lucene or LanceDB.

A segment is some vectors in a FAISS index of its own kind (ann/indexes.py) with their manifest rows; once
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

A graph's search costs about the same whatever its size (0.2 ms for 7,000 rows here, 0.4 ms for a million),
so every small segment of its own would add that much to each query. Segments below SCAN_BELOW rows are
therefore of the `scan` kind (ann/kinds/scan.py), sharing one PCA and one codebook, and a ScanGroup searches them as
one: their codes concatenated, scanned once, the candidates re-ranked exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import faiss
import numpy as np

from retrieval.ann import indexes as ann
from retrieval.ann import tuning
from retrieval.index.manifest import Entry, Manifest

MERGE_FACTOR = 4  # segments per tier before they are merged, and the size ratio between tiers
MERGE_FLOOR = 1_000  # segments smaller than this count as this size: tiny commits share tier 0
MAX_DELETED = 0.25  # a segment with more than this share of its rows deleted is rewritten without them
NO_ROWS = np.empty(0, np.int64)  # a segment with nothing deleted
SCAN_BELOW = MERGE_FACTOR**2 * MERGE_FLOOR  # tiers 0 and 1: at most 6 segments, 60,000 live rows, scanned as one
SCAN_WIDTH = 512  # dimensions (after PCA) up to which a scan segment's codes are short enough to scan
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
        return self.hits(self.find(queries, k))

    def find(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search`'s FAISS half (ann.VectorIndex.find): distances and local rows, -1 fillers."""
        k = min(k, self.live)
        if k < 1:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        return self.index.find(queries, k, self._skipping if len(self.deleted) else None)

    def hits(self, found: tuple[np.ndarray, np.ndarray]) -> Hits:
        """`search`'s other half: `find`'s answer as (live position, score) pairs."""
        distances, rows = found
        return self.index.hits(distances, self.positions(rows))  # -1 fillers stay -1

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


class Alone:
    """A segment searched by itself: every one but the scan segments of a group."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment

    def find(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's search (Segment.find): nothing else runs, so a worker thread can take it (Store.search)."""
        return self.segment.find(queries, k)

    def hits(self, queries: np.ndarray, k: int, found: tuple[np.ndarray, np.ndarray]) -> list[Hits]:
        """`find`'s answer as the segment's hits (one list, as a group gives one per member)."""
        return [self.segment.hits(found)]

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        return self.hits(queries, k, self.find(queries, k))


class ScanGroup:
    """Scan segments sharing one PCA and one codebook (ann.same_codes), searched as one.

    Their codes (128 bytes a row after PCA-256) are copied into one fast-scan index when the group is made, so a query
    is transformed once and scanned once; the best `rerank` x k candidates that are not deleted (fast scan
    takes no ID selector, so deleted rows are passed over after the scan, which fetches that many more) are
    re-ranked by their exact vectors in each segment. The re-rank factor is the newest member's: it was
    measured when that one was built, searching the group it joined (`build_scan`), which held every
    member there is now (merges since then only took some away). `find` and `hits` are a search's two halves,
    FAISS's scan and the re-rank, as Alone's are; `rerank` there: another factor (build_scan measures with it).
    """

    def __init__(self, members: list[Segment]) -> None:
        self.members = members
        first = members[0].index
        self._pca = first.trained_pca
        self._codes = faiss.clone_index(first.scanned)
        for member in members[1:]:
            self._codes.merge_from(faiss.clone_index(member.index.scanned))  # merge_from empties what it takes
        self._starts = np.cumsum([0] + [m.rows for m in members])
        self._deleted = np.zeros(self._starts[-1], bool)
        for start, member in zip(self._starts, members):
            self._deleted[start + member.deleted] = True
        self._passed_over = sum(len(m.deleted) for m in members)
        self._stored = [m.index.stored_vectors for m in members]
        # per row of the group, its member and its live position there (unused for deleted rows)
        self._member_of = np.repeat(np.arange(len(members)), [m.rows for m in members])
        local = np.arange(len(self._deleted)) - self._starts[self._member_of]
        self._position_of = np.concatenate(
            [m.positions(local[a:b]) for m, a, b in zip(members, self._starts, self._starts[1:])]
        )
        self._rerank = max(members, key=lambda m: m.name).index.choice.rerank  # the newest's
        self._metric = first.metric

    def find(self, queries: np.ndarray, k: int, rerank: int | None = None) -> np.ndarray:
        """The fast scan's candidates per query (rows of the group, -1 fillers), deleted ones included."""
        fetch = min(k * (rerank or self._rerank) + self._passed_over, len(self._deleted))
        if not fetch:
            return np.empty((len(queries), 0), np.int64)
        return self._codes.search(self._pca.apply(queries) if self._pca else queries, fetch)[1]

    def hits(self, queries: np.ndarray, k: int, candidates: np.ndarray, rerank: int | None = None) -> list[Hits]:
        """Each member's hits among the group's top-k per query (queries normalized), as Segment.search gives:
        the first `rerank` x k live candidates re-ranked by their exact vectors."""
        found: list[Hits] = [[[] for _ in queries] for _ in self.members]
        wanted = k * (rerank or self._rerank)
        for q, (query, ids) in enumerate(zip(queries, candidates)):
            ids = ids[ids >= 0]
            ids = np.sort(ids[~self._deleted[ids]][:wanted])  # in member order: one gather per member
            bounds = np.searchsorted(ids, self._starts).tolist()
            cosines = np.empty(len(ids), np.float32)
            for m, (first, end) in enumerate(zip(bounds, bounds[1:])):
                if first < end:
                    np.dot(self._stored[m][ids[first:end] - self._starts[m]], query, out=cosines[first:end])
            best = np.argsort(-cosines, kind="stable")[:k]
            scores = ann.scores(2.0 - 2.0 * cosines[best], faiss.METRIC_L2, self._metric)
            top = ids[best]
            for m, position, score in zip(
                self._member_of[top].tolist(), self._position_of[top].tolist(), scores.tolist()
            ):
                found[m][q].append((position, score))
        return found

    def search(self, queries: np.ndarray, k: int, rerank: int | None = None) -> list[Hits]:
        return self.hits(queries, k, self.find(queries, k, rerank), rerank)


SegmentSearch = Alone | ScanGroup  # a search's two halves: `find` (FAISS alone) and `hits`


def searchers(segments: list[Segment]) -> list[tuple[list[int], SegmentSearch]]:
    """How a store searches its segments: scan segments with the others coded alike as one ScanGroup, every
    other segment alone. Per searcher, the segments' positions and the searcher; the one holding the most
    rows first."""
    groups: list[list[int]] = []
    for i, segment in enumerate(segments):
        joined = segment.index.choice.declared.scanned_as_group and next(
            (g for g in groups if ann.same_codes(segments[g[0]].index, segment.index)), None
        )
        if joined:
            joined.append(i)
        else:
            groups.append([i])
    found: list[tuple[list[int], SegmentSearch]] = []
    for group in groups:
        members = [segments[i] for i in group]
        grouped = members[0].index.choice.declared.scanned_as_group
        found.append((group, ScanGroup(members) if grouped else Alone(members[0])))
    return sorted(found, key=lambda item: -sum(segments[i].rows for i in item[0]))


def build_scan(
    vectors: np.ndarray, like: ann.VectorIndex, group: list[Segment], metric: int, target_recall: float
) -> tuple[ann.VectorIndex, dict[str, Any]] | None:
    """A `scan` index over `vectors` with the trained PCA of `like` (the largest segment's) and, when the
    group's codebook still fits, the codebook of `group` (the scan segments it would join; else one trained
    on `vectors`), its re-rank factor raised until 200 of its rows, searching the group it joins as a
    ScanGroup, find their exact top 10 among its live rows (own row left out) at `target_recall`, then one
    value further (tuning.HEADROOM_STEPS). None when no factor reaches the target, or when the vectors are
    wider than SCAN_WIDTH with no PCA to reduce them (their codes would be too long to scan quickly)."""
    choice = ann.IndexChoice("scan", pca=like.choice.pca)
    if (like.choice.pca if like.trained_pca is not None else like.dim) > SCAN_WIDTH:
        return None
    group = group if group and ann.same_pca(group[0].index, like) else []
    for codes in [group[-1].index.scanned, None] if group else [None]:
        index = ann.VectorIndex.build(choice, metric, vectors, pca=like.trained_pca, codes=codes)
        in_group = _recall_in_group(index, vectors, group if codes is not None else [])
        recall = tuning.tune_until(index, tuning.tunable(choice), in_group, target_recall)
        if recall >= target_recall:
            facts = tuning.measured(index.choice, like.dim, len(vectors), target_recall, recall)
            return index, {**facts, "reused": like.trained_pca is not None}
    return None


def _recall_in_group(
    index: ann.VectorIndex, vectors: np.ndarray, group: list[Segment]
) -> Callable[[ann.VectorIndex], float]:
    """How well `index` (over `vectors`) searches as part of `group`, at whatever re-rank factor it is tuned
    to: recall@10 of 200 of its rows against their exact top 10 among the group's live rows and its own
    (each one's own row left out)."""
    others = [m.index.reconstruct_batch(m.local(np.arange(m.live))) for m in group]
    everything = np.concatenate([*others, vectors]) if others else vectors
    own = tuning.held_out_rows(len(vectors))
    queries, offset = vectors[own], len(everything) - len(vectors)
    truth = faiss.knn(queries, everything, 11, metric=faiss.METRIC_INNER_PRODUCT)[1]
    truth = np.array([t[t != offset + row][:10] for t, row in zip(truth, own)])
    starts = np.cumsum([0] + [m.live for m in group] + [len(vectors)])
    searched = ScanGroup([*group, Segment("", index, Manifest.of([]), {})])  # the new one: searched, never stored
    closer = -1.0 if index.metric == faiss.METRIC_INNER_PRODUCT else 1.0

    def recall(tuned: ann.VectorIndex) -> float:
        per_member = searched.search(queries, 11, rerank=tuned.choice.rerank)
        found = []
        for q, row in enumerate(own):
            hits = sorted(
                (closer * score, int(starts[m]) + at) for m, member in enumerate(per_member) for at, score in member[q]
            )
            found.append([i for _, i in hits if i != offset + row][:10])
        return tuning.overlap(np.array(found, dtype=object), truth)

    return recall


_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the process it was made in, the pool)


def concurrently(searchers: list[SegmentSearch], queries: np.ndarray, k: int) -> list[list[Hits]]:
    """Each searcher's hits, in order: the first one's FAISS search (the largest segment's, SegmentSearch.find)
    on a worker thread while this thread searches the others, then its hits made here. The worker runs
    nothing but FAISS, which releases the GIL, and with one OpenMP thread: with FAISS's default (one per
    core) a worker's search of one query competed with this thread. Measured by hand on 1,000,000 rows plus
    a scan group of four segments, one query at a time, blocks of 50 interleaved, three runs: p50 0.53-0.62
    ms so, 0.64-0.67 ms one after the other, 0.30 ms for the same rows merged into one segment. What keeps the
    gain small on 2 cores: handing a call to the worker and back costs 60-70 us, and the two searches slow
    each other (FAISS alone: 0.28 + 0.17-0.21 ms apart, 0.38-0.41 ms together)."""
    global _pool
    if len(searchers) == 1:
        return [searchers[0].search(queries, k)]
    if _pool is None or _pool[0] != os.getpid():  # a forked child inherits the pool but not its threads
        workers = ThreadPoolExecutor(
            os.cpu_count() or 1, "search", initializer=faiss.omp_set_num_threads, initargs=(1,)
        )
        _pool = os.getpid(), workers
    first = _pool[1].submit(searchers[0].find, queries, k)
    # One OpenMP thread here too, the worker holding the other core: with FAISS's default, the scan group's
    # search beside the worker's made p50 after the benchmark's 23 commits 0.71-0.73 ms against 0.62 (by hand,
    # interleaved; the merged index's 0.24-0.25 either way).
    with ann.omp_threads(1):
        rest = [searcher.search(queries, k) for searcher in searchers[1:]]
    return [searchers[0].hits(queries, k, first.result()), *rest]


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


def live_entries(segments: list[Segment]) -> list[Entry]:
    out = []
    for s in segments:
        dead = set(s.deleted.tolist())
        out += [e for i, e in enumerate(s.manifest.entries()) if i not in dead]
    return out
