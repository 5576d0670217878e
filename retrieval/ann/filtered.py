"""A search among some rows of an index only (a folder, a date range: index/selection.py says which), planned as
vector databases plan one: by how many rows the filter keeps.

- few rows (`exact_rows`): their exact vectors are scored where they lie, exactly;
- a fair share of the index (`inside_share`): the approximate search itself with the filter inside it (a
  FAISS ID selector), its candidate list (efSearch, nprobe) widened by the share the filter drops, up to
  `max_widen` times; a kind whose search takes no selector (fast scan) fetches that many more candidates
  and drops the others after;
- between the two, in an index that searches reduced vectors (PCA + graph): those rows' reduced vectors
  scored first (1 KB a row where the exact vectors are 8 KB), the best `rerank` x k re-ranked by their
  exact vectors; in any other index, the exact vectors (a graph walked through a small share of kept rows
  misses most of the true neighbours).

Every path returns exact scores (the exact vectors re-rank), in the index's metric, best first. Where the
switches belong was measured on a million vectors (benchmarks/filters.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np

from retrieval.ann.indexes import VectorIndex, by_index, parameters, reduced_vectors, scores

Hits = list[list[tuple[int, float]]]


@dataclass(frozen=True)
class FilterPlan:
    """Where a filtered search switches path (see the module docstring), measured on a million vectors by
    benchmarks/filters.py: the exact path costs about 0.7 us a kept row there, the reduced first pass about
    0.2 us, and the graph with the filter inside 1.6-2.9 ms whatever it keeps, but finds the true neighbours
    only while the filter keeps a fair share (recall@10 0.955 at 5 % with a 9x wider list, 0.67 at 0.5 %)."""

    exact_rows: int = 500  # at most this many kept rows: their exact vectors
    inside_share: float = 0.04  # at least this share of the index's rows kept: the graph, the filter inside it
    max_widen: int = 9  # the graph's candidate list widened by the share dropped, at most this many times


class Allowed:
    """The rows of one index a filter keeps (sorted, unique; deleted ones left out) and, made once when a
    selector first needs it, their bitmap: a store keeps these per filter, so repeated queries reuse them."""

    def __init__(self, rows: np.ndarray, count: int) -> None:
        self.rows = rows
        self.count = count  # rows of the index, kept or not

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def bitmap(self) -> np.ndarray:
        """Bit i (little-endian within each byte, as FAISS's IDSelectorBitmap reads it) set for kept row i."""
        kept = np.zeros(self.count, bool)
        kept[self.rows] = True
        return np.packbits(kept, bitorder="little")


def search_within(index: VectorIndex, queries: np.ndarray, k: int, allowed: Allowed, plan: FilterPlan) -> Hits:
    """Top-k (row, score) per query among the `allowed` rows only, best first; fewer when fewer are allowed.
    Few rows: exactly; a fair share of them: the graph with the filter inside (the scan kind, which takes no
    filter: more candidates, the kept ones re-ranked); between the two: the reduced first pass where the
    index searches reduced vectors, else exactly."""
    k = min(k, len(allowed))
    if k < 1:
        return [[] for _ in queries]
    share = len(allowed) / index.count
    if len(allowed) > plan.exact_rows and share >= plan.inside_share:
        widen = min(float(plan.max_widen), 1 / share)
        if index.choice.declared.selects:
            return _inside(index, queries, k, allowed, widen)
        return _after(index, queries, k, allowed.rows, widen)
    if len(allowed) > plan.exact_rows:
        return _scanned(index, queries, k, allowed.rows)
    return exact_among(index, queries, k, allowed.rows)


def _scanned(index: VectorIndex, queries: np.ndarray, k: int, rows: np.ndarray) -> Hits:
    """Every one of `rows` scored: by its reduced vector first where the index searches reduced ones, else
    exactly."""
    if (reduced := reduced_vectors(index.faiss)) is not None:
        return _reduced_first(index, reduced, queries, k, rows)
    return exact_among(index, queries, k, rows)


def exact_among(index: VectorIndex, queries: np.ndarray, k: int, rows: np.ndarray) -> Hits:
    """The exact top-k among `rows`, by their exact vectors: a gather and a matrix product."""
    cosines = index.cosines_at(queries, rows)
    k = min(k, len(rows))
    top = (
        np.argpartition(-cosines, k - 1, axis=1)[:, :k]
        if k < len(rows)
        else np.tile(np.arange(len(rows)), (len(queries), 1))
    )
    found = []
    for q, candidates in enumerate(top):
        best = candidates[np.argsort(-cosines[q, candidates], kind="stable")]
        exact = scores(2.0 - 2.0 * cosines[q, best], faiss.METRIC_L2, index.metric)
        found.append(list(zip(rows[best].tolist(), exact.tolist())))
    return found


def _reduced_first(
    index: VectorIndex,
    reduced: tuple[faiss.VectorTransform | None, np.ndarray],
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray,
) -> Hits:
    """The allowed rows' reduced vectors scored by L2 where they lie (what the graph searches; FAISS's
    distances by index, nothing gathered), the best rerank x k of each query re-ranked exactly."""
    transform, vectors = reduced
    projected = transform.apply(queries) if transform is not None else queries
    distances = by_index(faiss.fvec_L2sqr_by_idx, projected, vectors, allowed)
    fetch = min(len(allowed), k * index.choice.rerank)
    candidates = np.argpartition(distances, fetch - 1, axis=1)[:, :fetch] if fetch < len(allowed) else None
    found = []
    for q, query in enumerate(queries):
        rows = allowed if candidates is None else np.sort(allowed[candidates[q]])
        found += exact_among(index, query[np.newaxis], k, rows)
    return found


def _inside(index: VectorIndex, queries: np.ndarray, k: int, allowed: Allowed, widen: float) -> Hits:
    """The approximate search with an ID selector inside it, its candidate list widened `widen` times; a query
    it finds fewer than k kept rows for scans them all (`_scanned`)."""
    bitmap = allowed.bitmap
    selector = faiss.IDSelectorBitmap(index.count, faiss.swig_ptr(bitmap))
    found = index.faiss.search(queries, k, params=parameters(index.faiss, selector, widen=widen, keep=(bitmap,)))
    hits = index.hits_from(*found)
    # a graph walked through few kept rows can end with fewer than k of them: that query scans them all
    return [h if len(h) == k else _scanned(index, q[np.newaxis], k, allowed.rows)[0] for h, q in zip(hits, queries)]


def _after(index: VectorIndex, queries: np.ndarray, k: int, allowed: np.ndarray, widen: float) -> Hits:
    """For a kind whose search takes no selector: `widen` times the candidates, the allowed ones re-ranked
    exactly; a query left with fewer than k of them is answered exactly among every allowed row."""
    fetch = min(index.count, math.ceil(k * index.choice.rerank * widen))
    _, rows = index.find(queries, fetch)
    found = []
    for q, query in enumerate(queries):
        kept = rows[q][np.isin(rows[q], allowed)]
        found += exact_among(index, query[np.newaxis], k, np.sort(kept) if len(kept) >= k else allowed)
    return found
