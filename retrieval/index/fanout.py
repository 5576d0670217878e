"""Fan-out search over an index's segments: each segment searched by itself, except the scan segments coded
alike, which a ScanGroup searches as one; the largest searcher's FAISS half on a worker thread while this
thread does the rest; and the segments' hits merged into store rows. A graph's search costs about the same
whatever its size (0.2 ms for 7,000 rows here, 0.4 ms for a million), so every small segment searched alone
would add that much to each query: hence the scan group (building.py decides which segments are scans)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from retrieval.ann import indexes as ann
from retrieval.ann import shared
from retrieval.ann.filtered import Allowed, FilterPlan
from retrieval.index.segments import Hits, Segment


class Alone:
    """A segment searched by itself: every one but the scan segments of a group."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment

    def find(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's search (Segment.find): nothing else runs, so a worker thread can take it (fanout.concurrently)."""
        return self.segment.find(queries, k)

    def complete(self, queries: np.ndarray, k: int, found: tuple[np.ndarray, np.ndarray]) -> list[Hits]:
        """`find`'s answer as the segment's hits (one list, as a group gives one per member)."""
        return [self.segment.hits_from(found)]

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        return self.complete(queries, k, self.find(queries, k))


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

    def complete(self, queries: np.ndarray, k: int, candidates: np.ndarray, rerank: int | None = None) -> list[Hits]:
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
        return self.complete(queries, k, self.find(queries, k, rerank), rerank)


SegmentSearch = Alone | ScanGroup  # a search's two halves: `find` (FAISS alone) and `hits`


def searchers(segments: list[Segment]) -> list[tuple[list[int], SegmentSearch]]:
    """How a store searches its segments: scan segments with the others coded alike as one ScanGroup, every
    other segment alone. Per searcher, the segments' positions and the searcher; the one holding the most
    rows first."""
    groups: list[list[int]] = []
    for i, segment in enumerate(segments):
        joined = segment.index.choice.declared.scanned_as_group and next(
            (g for g in groups if shared.same_codes(segments[g[0]].index, segment.index)), None
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
    return [searchers[0].complete(queries, k, first.result()), *rest]


class FanOut:
    """How a store searches its segments (`searchers`), made once per change of its segment list."""

    def __init__(self, segments: list[Segment], starts: np.ndarray, metric: str, worker_thread: bool) -> None:
        self._segments = segments
        self._starts = starts  # each segment's first store row
        self._metric = metric
        self._worker_thread = worker_thread  # the largest searcher's FAISS half beside the rest (concurrently)
        self._searchers = searchers(segments)

    @property
    def groups(self) -> list[list[int]]:
        """The segments' positions each searcher searches, the largest first."""
        return [members for members, _ in self._searchers]

    def search(self, queries: np.ndarray, k: int) -> Hits:
        """Top-k (store row, score) per normalized query, best first, over every segment."""
        found_by = [searcher for _, searcher in self._searchers]
        if self._worker_thread:
            found = concurrently(found_by, queries, k)
        else:
            found = [searcher.search(queries, k) for searcher in found_by]
        per_segment: list[Hits] = [[] for _ in self._segments]
        for (members, _), hits in zip(self._searchers, found):
            for i, segment_hits in zip(members, hits):
                per_segment[i] = segment_hits
        return merged_hits(per_segment, self._starts, self._metric, k)

    def search_within(self, queries: np.ndarray, k: int, allowed: list[Allowed], plan: FilterPlan) -> Hits:
        """Top-k (store row, score) per normalized query among each segment's `allowed` rows: every segment by
        itself (a scan group's shared scan takes no filter), those keeping no row skipped."""
        per_segment: list[Hits] = [
            s.search_within(queries, k, rows, plan) if len(rows) else [[] for _ in queries]
            for s, rows in zip(self._segments, allowed)
        ]
        return merged_hits(per_segment, self._starts, self._metric, k)

    def range_search(self, queries: np.ndarray, threshold: float) -> Hits:
        """Every (store row, score) within `threshold` of each normalized query, best first."""
        per_segment = [s.range_search(queries, threshold) for s in self._segments]
        return merged_hits(per_segment, self._starts, self._metric, None)


def merged_hits(per_segment: list[Hits], starts: np.ndarray, metric: str, k: int | None) -> Hits:
    """Per query, the segments' hits (live positions) as store rows, best first (ties by row), the first `k`
    (or all). `starts`: each segment's first store row."""
    if len(per_segment) == 1:
        return per_segment[0]
    better = -1.0 if metric == "cosine" else 1.0  # sort key: higher cosine first, lower distance first
    merged = []
    for hits in zip(*per_segment):
        rows = [(int(start) + at, score) for start, found in zip(starts, hits) for at, score in found]
        rows.sort(key=lambda hit: (better * hit[1], hit[0]))
        merged.append(rows[:k] if k is not None else rows)
    return merged
