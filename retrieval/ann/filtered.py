"""A search among some rows of an index only (a folder, a date range: index/selection.py says which), planned as
vector databases plan one: by how many rows the filter keeps.

- few rows (`exact_rows`): their exact vectors are scored where they lie, exactly;
- in an index that searches reduced vectors (PCA + graph), up to `coded_share` of its rows: a first pass over
  those rows alone, the best candidates re-ranked by their exact vectors. Below `coded_rows` the reduced
  vectors themselves are read (1 KB a row where the exact vectors are 8 KB); from there 4-bit product codes of
  them (64 bytes a row, FAISS's fast scan), made when the filter is first searched and kept with its rows;
- a fair share of the index (`inside_share`, or `coded_share` where codes are made): the approximate search
  itself with the filter inside it (a FAISS ID selector), its candidate list (efSearch, nprobe) widened by
  the share the filter drops, up to `max_widen` times; a kind whose search takes no selector (fast scan)
  fetches that many more candidates and drops the others after;
- between the exact rows and `inside_share` in any other index, the exact vectors (a graph walked through a
  small share of kept rows misses most of the true neighbours).

Every path returns exact scores (the exact vectors re-rank), in the index's metric, best first. Where the
switches belong was measured on a million vectors (benchmarks/filters.py).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np

from retrieval.ann.indexes import VectorIndex, by_index, parameters, reduced_vectors, scores

Hits = list[list[tuple[int, float]]]


@dataclass(frozen=True)
class FilterPlan:
    """Where a filtered search switches path (see the module docstring), measured on a million vectors by
    benchmarks/filters.py: the exact path costs about 0.7 us a kept row there and the reduced first pass
    about 0.2 us; the codes' first pass 0.6 ms at 50,000 kept rows and 1.6 ms at 200,000 (200 candidates
    re-ranked), after 0.15-0.45 s to make the codes (0.9 s at 200,000); the graph with the filter inside
    0.8-3.0 ms, finding the true neighbours only while the filter keeps a fair share (recall@10 0.955 at 5 %
    with a 9x wider list, 0.84 where the 5 % kept are alike, 0.67 at 0.5 %)."""

    exact_rows: int = 500  # at most this many kept rows: their exact vectors
    coded_rows: int = 5_000  # from this many kept rows (and CODED_AT_LEAST): product codes, not reduced vectors
    coded_share: float = 0.2  # below this share of the rows, in an index of reduced vectors: a first pass
    coded_rerank: int = 20  # candidates from the codes re-ranked exactly, per wanted result
    inside_share: float = 0.04  # from this share kept (coded_share where codes are made): the filter inside
    max_widen: int = 9  # the graph's candidate list widened by the share dropped, at most this many times


CODED_AT_LEAST = 128  # kept rows at the least for codes: their quantizer, 16 centroids a sub-vector, trains on them
TRAINED_ON = 2_000  # kept rows, drawn seeded, the codes' quantizer is trained on at most
CODED_CHUNK = 65_536  # rows gathered and encoded at a time: a bounded copy (64 MB of 1 KB reduced vectors)


class Allowed:
    """The rows of one index a filter keeps (sorted, unique; deleted ones left out) and, made once when a
    search first needs them, their bitmap and their product codes: a store keeps these per filter, so
    repeated queries reuse them."""

    def __init__(self, rows: np.ndarray, count: int) -> None:
        self.rows = rows
        self.count = count  # rows of the index, kept or not
        self._codes: faiss.IndexPQFastScan | None = None
        self._coding = threading.Lock()  # a server's threads searching one filter make its codes once

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def bitmap(self) -> np.ndarray:
        """Bit i (little-endian within each byte, as FAISS's IDSelectorBitmap reads it) set for kept row i."""
        kept = np.zeros(self.count, bool)
        kept[self.rows] = True
        return np.packbits(kept, bitorder="little")

    def codes(self, reduced: np.ndarray) -> faiss.IndexPQFastScan:
        """The kept rows' product codes, made from their `reduced` vectors (the index's) the first time."""
        with self._coding:
            if self._codes is None:
                self._codes = product_codes(reduced, self.rows)
            return self._codes


def product_codes(vectors: np.ndarray, rows: np.ndarray) -> faiss.IndexPQFastScan:
    """4-bit product codes of `rows` of `vectors` (a sub-vector of two dimensions a code, 16 centroids each:
    64 bytes a row of 256 floats) in FAISS's fast-scan layout, which scores them from tables held in SIMD
    registers; trained on a seeded sample of those rows, so they fit what the filter keeps. Local ids: the
    i-th code is rows[i]."""
    width = vectors.shape[1]
    codes = faiss.IndexPQFastScan(width, width // 2 if width % 2 == 0 else width, 4)
    codes.pq.cp.niter = 10  # 25 rounds: 470 ms against 150 at 2,000 rows, recall@10 at 5 % 0.987 against 0.985
    codes.pq.cp.min_points_per_centroid = CODED_AT_LEAST // 16  # FAISS warns below 39; 8 place 16 centroids
    sample = np.random.default_rng(0).choice(len(rows), min(len(rows), TRAINED_ON), replace=False)
    codes.train(vectors[rows[np.sort(sample)]])
    for start in range(0, len(rows), CODED_CHUNK):
        codes.add(vectors[rows[start : start + CODED_CHUNK]])
    return codes


def search_within(index: VectorIndex, queries: np.ndarray, k: int, allowed: Allowed, plan: FilterPlan) -> Hits:
    """Top-k (row, score) per query among the `allowed` rows only, best first; fewer when fewer are allowed.
    The path by how many rows are kept (the module docstring)."""
    k = min(k, len(allowed))
    if k < 1:
        return [[] for _ in queries]
    share = len(allowed) / index.count
    reduced = reduced_vectors(index.faiss)
    if len(allowed) <= plan.exact_rows:
        return exact_among(index, queries, k, allowed.rows)
    if reduced is not None:
        if share >= plan.coded_share:
            return _approximate(index, queries, k, allowed, share, plan)
        if len(allowed) >= max(plan.coded_rows, CODED_AT_LEAST):
            return _coded_first(index, reduced[0], allowed.codes(reduced[1]), queries, k, allowed.rows, plan)
        return _reduced_first(index, reduced, queries, k, allowed.rows)
    if share >= plan.inside_share:
        return _approximate(index, queries, k, allowed, share, plan)
    return exact_among(index, queries, k, allowed.rows)


def _approximate(
    index: VectorIndex, queries: np.ndarray, k: int, allowed: Allowed, share: float, plan: FilterPlan
) -> Hits:
    """The index's own search, its candidate list widened by the share the filter drops: the filter inside
    it, or after it for a kind whose search takes no selector."""
    widen = min(float(plan.max_widen), 1 / share)
    if index.choice.declared.selects:
        return _inside(index, queries, k, allowed, widen)
    return _after(index, queries, k, allowed.rows, widen)


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
    distances = by_index(faiss.fvec_L2sqr_by_idx, _projected(transform, queries), vectors, allowed)
    fetch = min(len(allowed), k * index.choice.rerank)
    if fetch == len(allowed):
        return _reranked(index, queries, k, [allowed] * len(queries))
    best = np.argpartition(distances, fetch - 1, axis=1)[:, :fetch]
    return _reranked(index, queries, k, [np.sort(allowed[c]) for c in best])


def _coded_first(
    index: VectorIndex,
    transform: faiss.VectorTransform | None,
    codes: faiss.IndexPQFastScan,
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray,
    plan: FilterPlan,
) -> Hits:
    """The allowed rows' product codes scored (fast scan, by L2 in the reduced space the graph searches), the
    best coded_rerank x k of each query re-ranked exactly."""
    _, candidates = codes.search(_projected(transform, queries), min(len(allowed), k * plan.coded_rerank))
    return _reranked(index, queries, k, [np.sort(allowed[c[c >= 0]]) for c in candidates])


def _projected(transform: faiss.VectorTransform | None, queries: np.ndarray) -> np.ndarray:
    """Queries in the space the reduced vectors live in (through the index's PCA, where it has one)."""
    return transform.apply(queries) if transform is not None else queries


def _reranked(index: VectorIndex, queries: np.ndarray, k: int, candidates: list[np.ndarray]) -> Hits:
    """Each query's exact top-k among its own candidate rows (sorted: read in the order they lie)."""
    return [exact_among(index, query[np.newaxis], k, rows)[0] for query, rows in zip(queries, candidates)]


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
    kept = [np.sort(found[np.isin(found, allowed)]) for found in rows]
    return _reranked(index, queries, k, [rows if len(rows) >= k else allowed for rows in kept])
