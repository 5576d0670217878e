"""Vector indexes: how the vectors are searched. Every kind (kinds/: flat, hnsw, hnsw-sq8, ivf, scan, each
declaring its structure and search parameter) is a FAISS index built from a factory string, so the store,
the tests and the benchmark treat them alike (add, search, reconstruct, write, read); `auto` measures which
to build.

Whenever the searched representation is compressed (PCA, SQ8, PQ), the index is wrapped in a refine
stage (`RFlat`) that keeps the exact vectors and re-ranks `rerank` × k candidates exactly: results carry
exact scores, and the store can always give back a row's exact vector.

Approximate kinds always search by L2 distance, whatever the metric asked for. A CNN's pooled features
lie in a narrow cone (all positive; mean cosine to their centroid about 0.99), and PCA, IVF centroids and
quantizers all centre the data: after centring, inner product no longer ranks like cosine (recall@10
fell to 0.02 on real features), while L2 distance is unchanged by a shift and, between unit vectors,
ranks exactly like cosine (|a - b|² = 2 - 2 cos). `scores` turns the distances back into cosines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.ann.kinds import Kind, kind_of

TRAIN_SAMPLE = 50_000  # vectors used to train PCA and k-means: more buys little


@dataclass(frozen=True)
class IndexChoice:
    """A kind and its parameters, as config.yaml gives them."""

    kind: str = "flat"
    pca: int = 0  # reduce to this many dimensions before a graph or lists (0: no reduction)
    hnsw_m: int = 32  # graph neighbours per node
    ef_search: int = 64  # graph candidates explored per query: recall against speed
    ivf_lists: int = 0  # k-means cells (0: about 4 * sqrt(N))
    nprobe: int = 16  # cells searched per query
    pq_bytes: int = 0  # 0: SQ8 (1 byte per dimension); else PQ (4-bit codes) with this many bytes per vector
    rerank: int = 4  # with compression: candidates re-ranked exactly, per wanted result

    @property
    def declared(self) -> Kind:
        """The registered kind (kinds.KINDS) this choice builds; ValueError for `auto` or an unknown name."""
        return kind_of(self.kind)

    def width(self, dim: int) -> int:
        """The dimensions searched: after the PCA, if there is one."""
        return self.pca if 0 < self.pca < dim else dim

    def factory(self, dim: int, count: int) -> str:
        """The faiss index_factory string for `count` vectors of `dim` dimensions."""
        kind = self.declared
        if kind.exact:
            return kind.structure(self, dim, count)
        parts = [f"PCA{self.pca}"] if 0 < self.pca < dim else []
        parts.append(kind.structure(self, self.width(dim), count))
        if self.compressed(dim):
            parts.append("RFlat")
        return ",".join(parts)

    def compressed(self, dim: int) -> bool:
        return self.declared.compresses or 0 < self.pca < dim


def searched_metric(choice: IndexChoice, metric: int) -> int:
    """The FAISS metric a kind searches by: the asked-for one when exact, L2 when approximate (see above)."""
    return metric if choice.declared.exact else faiss.METRIC_L2


def scores(distances: np.ndarray, searched: int, metric: int) -> np.ndarray:
    """What an index of `searched` metric returned, as scores of `metric`: cosine similarities for inner
    product, Euclidean distances for L2. Vectors are unit length, so a squared L2 distance d² is the
    cosine 1 - d²/2."""
    if searched == faiss.METRIC_INNER_PRODUCT:
        return distances
    if metric == faiss.METRIC_INNER_PRODUCT:
        return 1.0 - distances / 2.0
    return np.sqrt(np.maximum(distances, 0))  # faiss reports squared distances


def build(
    choice: IndexChoice,
    dim: int,
    metric: int,
    vectors: np.ndarray,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 20_000,
    pca: faiss.VectorTransform | None = None,
    codes: faiss.Index | None = None,
) -> faiss.Index:
    """A trained index of `choice` holding `vectors` (n, dim), normalized, float32, for scores of `metric`.

    Vectors are added `chunk` at a time (the same index as one call) so that `progress(added, total)`
    can report on builds that take minutes. `pca`: a trained PCA (of another index of the same choice,
    trained_pca) to use instead of training one; it is copied. `codes`: for `scan`, the trained code
    index of another (VectorIndex.scanned) whose codebook to use, emptied copy, instead of training one.
    """
    reduced = pca is not None and 0 < choice.pca < dim
    if reduced or codes is not None:  # the factory's structure, around copies of `pca` and `codes`
        if codes is not None:
            searched = faiss.clone_index(codes)
            searched.reset()
        else:
            inner = replace(choice, pca=0).factory(choice.pca, len(vectors)).removesuffix(",RFlat")
            searched = faiss.index_factory(choice.pca, inner, faiss.METRIC_L2)
        if reduced:
            searched = faiss.IndexPreTransform(faiss.Cloner().clone_VectorTransform(pca), searched)
        index = faiss.IndexRefineFlat(searched)
    else:
        index = faiss.index_factory(dim, choice.factory(dim, len(vectors)), searched_metric(choice, metric))
    if not index.is_trained:
        rng = np.random.default_rng(0)  # a fixed sample: the same vectors give the same index
        sample = (
            vectors
            if len(vectors) <= TRAIN_SAMPLE
            else vectors[np.sort(rng.choice(len(vectors), TRAIN_SAMPLE, replace=False))]
        )
        index.train(sample)
    for start in range(0, len(vectors), chunk):
        index.add(vectors[start : start + chunk])
        if progress:
            progress(min(start + chunk, len(vectors)), len(vectors))
    if isinstance(pca_matrix := _pca_of(index), faiss.PCAMatrix):
        # the training's full eigenvector matrix (2048 x 2048: 16 MB of every file, and ~15 ms of every load),
        # which applying the PCA never reads: it uses A and b, made from it when trained
        pca_matrix.PCAMat.clear()
    apply_search_parameters(index, choice)
    return index


def _wrappers(index: faiss.Index) -> tuple[faiss.IndexRefine | None, faiss.IndexPreTransform | None]:
    """The exact re-rank around `index`'s search, and the transform (PCA) in front of its graph or lists,
    each downcast, or None where the kind has none."""
    refined = faiss.downcast_index(index) if isinstance(index, faiss.IndexRefine) else None
    base = faiss.downcast_index(refined.base_index) if refined is not None else index
    transformed = base if isinstance(base, faiss.IndexPreTransform) and base.chain.size() else None
    return refined, transformed


def _pca_of(index: faiss.Index) -> faiss.VectorTransform | None:
    """The trained PCA inside `index` (PCA + graph or lists, maybe re-ranked), downcast, or None."""
    _, transformed = _wrappers(index)
    return faiss.downcast_VectorTransform(transformed.chain.at(0)) if transformed is not None else None


@dataclass(frozen=True)
class Capabilities:
    """What an index kind can do, declared so that callers (and the test battery) need not guess."""

    exact: bool  # results equal exhaustive search
    range_search: bool  # every row within a score threshold (near-duplicate groups)


class VectorIndex:
    """One index kind over unit vectors: the FAISS index of `choice`, answering in the asked-for metric.

    Every kind offers the same operations (build, add, search, range search, reconstruct, write, read),
    whatever FAISS structure and search metric sit underneath; scores always come back as cosine
    similarities (or Euclidean distances for the l2 metric), and rows as row numbers, faiss's -1 dropped.
    """

    def __init__(self, index: faiss.Index, choice: IndexChoice, metric: int) -> None:
        self.faiss = index  # the raw FAISS object, for the benchmark's raw timings
        self.choice = choice
        self.metric = metric  # the scores' metric; the index may search by another (searched_metric)
        self._kept_alive: tuple[Any, ...] = ()  # what `share_pca_of` wraps: FAISS holds bare pointers to it

    @classmethod
    def build(
        cls,
        choice: IndexChoice,
        metric: int,
        vectors: np.ndarray,
        progress: Callable[[int, int], None] | None = None,
        pca: faiss.VectorTransform | None = None,
        codes: faiss.Index | None = None,
    ) -> VectorIndex:
        return cls(build(choice, vectors.shape[1], metric, vectors, progress, pca=pca, codes=codes), choice, metric)

    @property
    def trained_pca(self) -> faiss.VectorTransform | None:
        """The trained PCA inside this index (PCA + graph or lists, re-ranked), or None."""
        return _pca_of(self.faiss)

    @property
    def scanned(self) -> faiss.IndexFastScan:
        """A `scan` index's codes: the fast-scan index behind its PCA, downcast (ScanGroup searches them)."""
        refined, transformed = _wrappers(self.faiss)
        return faiss.downcast_index(transformed.index if transformed is not None else refined.base_index)

    @property
    def stored(self) -> faiss.Index:
        """The exact vectors of an index that re-ranks (a flat index, row for row), downcast."""
        return faiss.downcast_index(faiss.downcast_index(self.faiss).refine_index)

    @property
    def stored_vectors(self) -> np.ndarray:
        """The exact vectors of an index that re-ranks, (count, dim), as a numpy array over FAISS's own memory
        (memory-mapped for a loaded index), not a copy: valid while this index lives."""
        return flat_view(self.stored)

    def share_pca_of(self, source: VectorIndex) -> bool:
        """Search through `source`'s trained PCA instead of this index's own, when the two are the same
        matrix (an update segment built by `build_like` holds a copy of its template's). Searched one after
        another, each segment would otherwise read its own 2 MB copy (2048 x 256) and push the others'
        out of the CPU caches. Only the search structure is rewired, around the same graph or lists and
        the same stored vectors; for a loaded, immutable index (nothing is added afterwards)."""
        mine, theirs = self.trained_pca, source.trained_pca
        if mine is None or theirs is None or not same_linear_map(mine, theirs):
            return False
        refined, transformed = _wrappers(self.faiss)
        if transformed.chain.size() != 1:  # more transforms than the PCA: left as it is
            return False
        searched = faiss.IndexPreTransform(theirs, faiss.downcast_index(transformed.index))
        index = searched
        if refined is not None:
            index = faiss.IndexRefine(searched, refined.refine_index)
            index.k_factor = refined.k_factor
        self._kept_alive = (self.faiss, source.faiss, searched)  # the owners of everything `index` points at
        self.faiss = index
        return True

    @classmethod
    def empty(cls, dim: int, metric: int) -> VectorIndex:
        """A flat index with no vectors: what a store holds before its first vectors decide the kind."""
        return cls(faiss.index_factory(dim, "Flat", metric), IndexChoice("flat"), metric)

    @classmethod
    def read(cls, path: Path, choice: IndexChoice, metric: int) -> VectorIndex:
        """Memory-mapped: a query touches only what its search needs. RuntimeError if faiss cannot read it."""
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        apply_search_parameters(index, choice)
        return cls(index, choice, metric)

    def write(self, path: Path) -> None:
        faiss.write_index(self.faiss, str(path))

    @property
    def count(self) -> int:
        return int(self.faiss.ntotal)

    @property
    def dim(self) -> int:
        return int(self.faiss.d)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(exact=self.choice.declared.exact, range_search=True)

    def tune(self, choice: IndexChoice) -> None:
        """Change the search parameters (efSearch, nprobe, re-rank factor) of the built index."""
        apply_search_parameters(self.faiss, choice)
        self.choice = choice

    def add(self, vectors: np.ndarray) -> None:
        self.faiss.add(vectors)

    def search(
        self, queries: np.ndarray, k: int, skipping: faiss.SearchParameters | None = None
    ) -> list[list[tuple[int, float]]]:
        """Top-k (row, score) per query, best first; fewer when the index holds fewer. `skipping`: from
        `skipping`, rows the search passes over (FAISS filters them inside the graph or list scan)."""
        return self.hits_from(*self.find(queries, k, skipping))

    def find(
        self, queries: np.ndarray, k: int, skipping: faiss.SearchParameters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search`'s first half, FAISS's own answer: (distances, rows), -1 where fewer than k. Nothing but
        FAISS runs, which releases the GIL: the part of a search a worker thread takes (Store.search)."""
        return self.faiss.search(queries, min(k, self.count), params=skipping)

    def hits_from(self, distances: np.ndarray, rows: np.ndarray) -> list[list[tuple[int, float]]]:
        """`search`'s second half: FAISS's answer as (row, score) pairs in this index's metric."""
        found = scores(distances, self.faiss.metric_type, self.metric)
        return [[(r, s) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows.tolist(), found.tolist())]

    def skipping(self, rows: np.ndarray) -> faiss.SearchParameters:
        """Search parameters that make `search` pass over `rows` (deleted ones), with this index's own
        efSearch, nprobe and re-rank factor: FAISS takes those from the parameters once any are given."""
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(rows, np.int64)))
        return parameters(self.faiss, selector)

    def range_search(self, queries: np.ndarray, threshold: float) -> list[list[tuple[int, float]]]:
        """Every (row, score) within `threshold` of each query (cosine at least, or distance at most),
        best first, with exact scores. Approximate kinds may miss rows, as they do in `search`."""
        searched = self.faiss.metric_type
        ranged = self.faiss if self.choice.declared.range_searched else self.stored
        if searched == faiss.METRIC_INNER_PRODUCT:
            radius = threshold
        else:  # squared L2 between unit vectors
            radius = 2.0 - 2.0 * threshold if self.metric == faiss.METRIC_INNER_PRODUCT else threshold**2
        limits, _, rows = ranged.range_search(queries, radius)
        similar = 1.0 if self.metric == faiss.METRIC_INNER_PRODUCT else -1.0  # higher score = closer, or lower
        found = []
        for i, query in enumerate(queries):
            hits = rows[limits[i] : limits[i + 1]]
            cosines = self.reconstruct_batch(hits) @ query if len(hits) else np.empty(0, np.float32)
            exact = scores(2.0 - 2.0 * cosines, faiss.METRIC_L2, self.metric)  # squared distance -> the metric
            order = np.argsort(-similar * exact, kind="stable")
            found.append([(int(hits[j]), float(exact[j])) for j in order if similar * (exact[j] - threshold) >= 0])
        return found

    def cosines_at(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(len(queries), len(rows)) cosine similarities of each query with the exact vectors of `rows`: read in
        place from the stored (memory-mapped) vectors of a flat or re-ranking index, nothing copied (FAISS's
        inner products by index), else from reconstructed vectors."""
        rows = np.asarray(rows, np.int64)
        flat = self.stored if isinstance(self.faiss, faiss.IndexRefine) else faiss.downcast_index(self.faiss)
        if not isinstance(flat, faiss.IndexFlat):
            return np.asarray(queries @ self.reconstruct_batch(rows).T, np.float32)
        return by_index(faiss.fvec_inner_products_by_idx, queries, flat_view(flat), rows)

    def reconstruct(self, row: int) -> np.ndarray:
        return self.faiss.reconstruct(row)  # (dim,)

    def reconstruct_batch(self, rows: np.ndarray) -> np.ndarray:
        return self.faiss.reconstruct_batch(np.asarray(rows, dtype=np.int64))  # (len(rows), dim)

    def reconstruct_all(self) -> np.ndarray:
        return self.faiss.reconstruct_n(0, self.count) if self.count else np.empty((0, self.dim), np.float32)


@contextmanager
def omp_threads(count: int) -> Iterator[None]:
    """FAISS's OpenMP threads set to `count` for the calling thread (OpenMP keeps the setting per thread),
    then put back as they were."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def same_linear_map(a: faiss.VectorTransform, b: faiss.VectorTransform) -> bool:
    """Whether two trained transforms map every vector alike: the same linear map, y = A x + b."""
    if not (isinstance(a, faiss.LinearTransform) and isinstance(b, faiss.LinearTransform)):
        return False
    if (a.d_in, a.d_out, a.have_bias) != (b.d_in, b.d_out, b.have_bias):
        return False
    return all(np.array_equal(viewed(x), viewed(y)) for x, y in ((a.A, b.A), (a.b, b.b)))


def viewed(values: faiss.Float32Vector) -> np.ndarray:
    """A FAISS float vector as a numpy array over the same memory (vector_to_array would copy it)."""
    return faiss.rev_swig_ptr(values.data(), values.size()) if values.size() else np.empty(0, np.float32)


def parameters(
    index: faiss.Index, selector: faiss.IDSelector, *, widen: float = 1.0, keep: tuple[Any, ...] = ()
) -> faiss.SearchParameters:
    """Search parameters for `index` and each index it wraps, the innermost one filtering by `selector`, with
    the index's own efSearch, nprobe and re-rank factor (FAISS takes those from the parameters once any are
    given), efSearch and nprobe `widen` times larger. `keep`: what the selector points into (a bitmap)."""
    if isinstance(index, faiss.IndexRefine):
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = index.k_factor
        inner = params.base_index_params = parameters(faiss.downcast_index(index.base_index), selector, widen=widen)
    elif isinstance(index, faiss.IndexPreTransform):
        params = faiss.SearchParametersPreTransform()
        inner = params.index_params = parameters(faiss.downcast_index(index.index), selector, widen=widen)
    else:
        if isinstance(index, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW()
            params.efSearch = math.ceil(index.hnsw.efSearch * widen)
        elif isinstance(index, faiss.IndexIVF):
            params = faiss.SearchParametersIVF()
            params.nprobe = min(index.nlist, math.ceil(index.nprobe * widen))
        else:
            params = faiss.SearchParameters()
        params.sel = inner = selector
    params.referenced_objects = [inner, *keep]  # FAISS holds bare pointers: keep what they point at alive
    return params


def reduced_vectors(index: faiss.Index) -> tuple[faiss.VectorTransform | None, np.ndarray] | None:
    """What a graph over reduced vectors searches, for a first pass over some of its rows: the transform in
    front (PCA) and the graph's flat storage as a numpy view (count, width); None where the searched vectors
    are not reduced (no PCA) or not stored flat (SQ8, lists, fast scan)."""
    refined, transformed = _wrappers(index)
    if refined is None or transformed is None:
        return None
    graph = faiss.downcast_index(transformed.index)
    storage = faiss.downcast_index(graph.storage) if isinstance(graph, faiss.IndexHNSW) else None
    if not isinstance(storage, faiss.IndexFlat):
        return None
    return faiss.downcast_VectorTransform(transformed.chain.at(0)), flat_view(storage)


def by_index(kernel: Any, queries: np.ndarray, stored: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(queries), len(rows)) of FAISS's `kernel` (fvec_inner_products_by_idx or fvec_L2sqr_by_idx) between
    each query and the `rows` of `stored` (count, d), read where they lie: nothing gathered or copied."""
    queries = np.ascontiguousarray(queries, np.float32)
    ids = np.ascontiguousarray(np.broadcast_to(np.asarray(rows, np.int64), (len(queries), len(rows))))
    out = np.empty(ids.shape, np.float32)
    kernel(
        faiss.swig_ptr(out), faiss.swig_ptr(queries), faiss.swig_ptr(stored), faiss.swig_ptr(ids),
        stored.shape[1], len(queries), len(rows),
    )  # fmt: skip
    return out


def flat_view(flat: faiss.IndexFlat) -> np.ndarray:
    """A flat index's vectors, (count, d), as a numpy array over FAISS's own memory (memory-mapped for a
    loaded index), not a copy: valid while the index lives."""
    count, width = int(flat.ntotal), int(flat.d)
    return (
        faiss.rev_swig_ptr(flat.get_xb(), count * width).reshape(count, width)
        if count
        else np.empty((0, width), np.float32)
    )


def apply_search_parameters(index: faiss.Index, choice: IndexChoice) -> None:
    """efSearch / nprobe / re-rank factor, wherever they sit inside the wrappers."""
    kind = choice.declared
    if kind.faiss_parameter:
        faiss.ParameterSpace().set_index_parameter(index, kind.faiss_parameter, getattr(choice, kind.parameter))
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(choice.rerank)


def describe(choice: IndexChoice, dim: int, count: int) -> dict[str, Any]:
    return {**asdict(choice), "factory": choice.factory(dim, count)}


def choice_from(description: dict[str, Any]) -> IndexChoice:
    return IndexChoice(**{k: v for k, v in description.items() if k in IndexChoice.__dataclass_fields__})
