"""What a new segment is built as, and when segments are merged: the index's building policy.

A new segment smaller than the largest approximate one reuses that one's trained PCA: searched exactly when
tiny (SMALL_FLAT rows), a scan segment below SCAN_BELOW rows (`build_scan`, coded like the scan group it
joins), else that one's kind and parameters; otherwise its kind is built and, for `auto`, chosen and tuned
on its vectors alone (ann/tuning.py).

Merging (`merges_due`) follows Lucene's tiered policy: segments fall into tiers by size (each MERGE_FACTOR
times the last); a tier holding MERGE_FACTOR segments is merged into one, and a segment with more than
MAX_DELETED of its rows deleted is rewritten without them, so the number of segments a query visits
grows only with the logarithm of the number of commits. The thresholds a test or benchmark moves are in
`Tuning`, given to a store, never patched in the module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.ann import indexes as ann
from retrieval.ann import shared, tuning
from retrieval.ann.filtered import FilterPlan
from retrieval.ann.indexes import IndexChoice
from retrieval.ann.tuning import build_like, build_measured
from retrieval.index.assembly import MAPPED_ROWS, assembled
from retrieval.index.fanout import ScanGroup
from retrieval.index.manifest import Entry, Manifest
from retrieval.index.segments import Segment, live_entries, live_vectors

FLAT = IndexChoice("flat")
MERGE_FACTOR = 4  # segments per tier before they are merged, and the size ratio between tiers
MERGE_FLOOR = 1_000  # segments smaller than this count as this size: tiny commits share tier 0
MAX_DELETED = 0.25  # a segment with more than this share of its rows deleted is rewritten without them
SCAN_BELOW = MERGE_FACTOR**2 * MERGE_FLOOR  # tiers 0 and 1: at most 6 segments, 60,000 live rows, scanned as one
SCAN_WIDTH = 512  # dimensions (after PCA) up to which a scan segment's codes are short enough to scan
# a segment this small is searched exactly even in an approximate index, and finds every neighbour: a
# flat scan of 1,000 vectors of 2048-d took 0.14 ms here against 0.09 ms for PCA-256 + HNSW32 + re-rank,
# so below a quarter of that the scan is the cheaper
SMALL_FLAT = 256


@dataclass(frozen=True)
class Tuning:
    """Where a store switches strategy, each a measured threshold (see the constants above): set per store,
    so that a test or a benchmark steers one store through this parameter, never by patching the module."""

    small_flat: int = SMALL_FLAT  # a new segment of fewer rows is searched exactly
    scan_below: int = SCAN_BELOW  # a new segment of fewer rows is a scan segment (build_scan)
    mapped_rows: int = MAPPED_ROWS  # a build from at least this many rows reads them from a mapped file
    worker_thread: bool = True  # the largest segment searched on a worker thread beside the rest (concurrently)
    filtering: FilterPlan = FilterPlan()  # where a filtered search switches path (ann/filtered.py)


DEFAULT_TUNING = Tuning()


def build_segment(
    segments: list[Segment], x: np.ndarray, requested: dict[str, Any], metric: int, tuning: Tuning
) -> tuple[ann.VectorIndex, dict[str, Any]]:
    """The index of a new segment over `x` (normalized) beside `segments`, and what it records of itself:
    see the module's docstring for the rule. `requested`: the kind and targets the index was asked for."""
    target = requested["recall_target"]
    largest = max(segments, key=lambda s: s.live, default=None)
    built = None
    if largest and not largest.index.capabilities.exact and len(x) < largest.live:
        if len(x) < tuning.small_flat:
            built = build_measured(FLAT, x, metric, target)
        elif len(x) < tuning.scan_below:
            built = build_scan(x, largest.index, scan_group(segments), metric, target)
        if built is None:
            built = build_like(largest.index, x, metric, target, tune=requested["kind"] == "auto")
    if built is None:
        budget = requested["memory_budget_gb"] * 2**30
        built = build_measured(ann.choice_from(requested), x, metric, target, budget)
    return built


def merge_segments(
    segments: list[Segment],
    build: Callable[[np.ndarray, list[Entry]], Segment],
    everything: bool,
    scratch: Path | None,
    mapped_rows: int,
    entries: list[Entry] | None = None,
) -> list[Segment]:
    """`segments` with what `merges_due` says is due (or, with `everything`, all of them) merged, each group
    into one segment built by `build` from its live rows, and segments with no live rows dropped; rows keep
    their order. A group of at least `mapped_rows` rows is assembled in a mapped file under `scratch`.
    `entries` (with `everything`): the merged rows' entries, in place of the manifests'."""
    live = [i for i, s in enumerate(segments) if s.live]
    groups = [live] if everything and live else merges_due(segments)
    merged = {i: group for group in groups for i in group}
    out = []
    for i, segment in enumerate(segments):
        if i in merged and i == merged[i][0]:
            members = [segments[j] for j in merged[i]]
            rows, fill = sum(s.live for s in members), partial(live_vectors, members)
            with assembled(rows, segment.index.dim, fill, scratch, mapped_rows) as vectors:
                out.append(build(vectors, entries if entries is not None else live_entries(members)))
        elif i not in merged and segment.live:
            out.append(segment)
    return out


def scan_group(segments: list[Segment]) -> list[Segment]:
    """The live scan segments coded like the newest one: the group a new scan segment would join."""
    scans = [s for s in segments if s.index.choice.declared.scanned_as_group and s.live]
    return [s for s in scans if shared.same_codes(s.index, scans[-1].index)] if scans else []


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
    group = group if group and shared.same_pca(group[0].index, like) else []
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
