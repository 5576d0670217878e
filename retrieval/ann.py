"""Index kinds: how the vectors are searched. Every kind is a FAISS index built from a factory string, so
the store, the tests and the benchmark treat them alike (add, search, reconstruct, write, read).

- `flat`: exact search over every vector (IndexFlatIP / IndexFlatL2). Time grows with N: about 4.5 ms
  at 10k vectors of 2048-d here, so it is sub-millisecond only for a few thousand images.
- `hnsw`: a navigable graph (HNSW32) over the vectors, optionally after PCA; approximate.
- `ivf`: inverted lists over k-means cells with scalar (SQ8) or product (PQ) quantization; approximate.

Whenever the searched representation is compressed (PCA, SQ8, PQ), the index is wrapped in a refine
stage (`RFlat`) that keeps the exact vectors and re-ranks `rerank` × k candidates exactly: results carry
exact scores, and the store can always give back a row's exact vector.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import faiss
import numpy as np

# below this many vectors `auto` keeps exact search: it is then as fast as a graph and never misses
AUTO_FLAT_BELOW = 5_000
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

    def factory(self, dim: int, count: int) -> str:
        """The faiss index_factory string for `count` vectors of `dim` dimensions."""
        if self.kind == "flat":
            return "Flat"
        parts = [f"PCA{self.pca}"] if 0 < self.pca < dim else []
        if self.kind == "hnsw":
            parts.append(f"HNSW{self.hnsw_m}")
        elif self.kind == "ivf":
            lists = self.ivf_lists or max(1, min(int(4 * math.sqrt(count)), count // 39))
            # PQ with 4-bit codes and SIMD "fast scan": trains in a fraction of a second where 8-bit
            # codes took 24 s for 6,000 vectors here, and scans faster
            parts.append(f"IVF{lists},{f'PQ{2 * self.pq_bytes}x4fs' if self.pq_bytes else 'SQ8'}")
        else:
            raise ValueError(f"no factory for kind {self.kind!r}")
        if self.compressed(dim):
            parts.append("RFlat")
        return ",".join(parts)

    def compressed(self, dim: int) -> bool:
        return self.kind == "ivf" or 0 < self.pca < dim


def build(
    choice: IndexChoice,
    dim: int,
    metric: int,
    vectors: np.ndarray,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 20_000,
) -> faiss.Index:
    """A trained index of `choice` holding `vectors` (n, dim), normalized, float32.

    Vectors are added `chunk` at a time (the same index as one call) so that `progress(added, total)`
    can report on builds that take minutes.
    """
    index = faiss.index_factory(dim, choice.factory(dim, len(vectors)), metric)
    if not index.is_trained:
        rng = np.random.default_rng(0)  # a fixed sample: the same vectors give the same index
        sample = vectors if len(vectors) <= TRAIN_SAMPLE else vectors[np.sort(rng.choice(len(vectors), TRAIN_SAMPLE, replace=False))]
        index.train(sample)
    for start in range(0, len(vectors), chunk):
        index.add(vectors[start : start + chunk])
        if progress:
            progress(min(start + chunk, len(vectors)), len(vectors))
    apply_search_parameters(index, choice)
    return index


def apply_search_parameters(index: faiss.Index, choice: IndexChoice) -> None:
    """efSearch / nprobe / re-rank factor, wherever they sit inside the wrappers."""
    space = faiss.ParameterSpace()
    if choice.kind == "hnsw":
        space.set_index_parameter(index, "efSearch", choice.ef_search)
    elif choice.kind == "ivf":
        space.set_index_parameter(index, "nprobe", choice.nprobe)
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(choice.rerank)


def describe(choice: IndexChoice, dim: int, count: int) -> dict[str, Any]:
    return {**asdict(choice), "factory": choice.factory(dim, count)}


def choice_from(description: dict[str, Any]) -> IndexChoice:
    return IndexChoice(**{k: v for k, v in description.items() if k in IndexChoice.__dataclass_fields__})


def recall_at(
    index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10, own_rows: np.ndarray | None = None
) -> float:
    """Fraction of the exact top-k (brute force over `vectors`, no copy) that `index` also returns.

    `own_rows`: when the queries are stored vectors, each one's own row, left out of both lists (finding
    a vector itself says nothing about the index).
    """
    extra = 0 if own_rows is None else 1
    truth = faiss.knn(queries, vectors, k + extra, metric=index.metric_type)[1]
    found = index.search(queries, k + extra)[1]
    hits = 0
    for i, (t, f) in enumerate(zip(truth, found)):
        skip = -2 if own_rows is None else own_rows[i]
        hits += len(set(t[t != skip][:k]) & set(f[f != skip][:k]))
    return hits / (k * len(queries))


def resident_bytes(choice: IndexChoice, dim: int, count: int) -> int:
    """Memory a search of `choice` keeps busy: flat scans every exact vector; compressed kinds touch only
    their codes (and graph or lists), while the exact vectors for re-ranking stay memory-mapped on disk."""
    width = choice.pca if 0 < choice.pca < dim else dim
    if choice.kind == "flat":
        return count * dim * 4
    if choice.kind == "hnsw":
        return count * (width * 4 + 2 * choice.hnsw_m * 4)  # vectors searched + level-0 neighbour lists
    code = choice.pq_bytes or width  # PQ bytes, or SQ8's byte per dimension
    return count * (code + 8)  # codes + ids in the inverted lists


def auto(
    vectors: np.ndarray,
    metric: int,
    base: IndexChoice,
    target_recall: float,
    memory_budget: float = 0.0,
    sample: int = 200,
) -> tuple[faiss.Index, dict[str, Any]]:
    """Pick a kind for these vectors and tune its search parameter to `target_recall`, measured.

    Flat below AUTO_FLAT_BELOW vectors (exact, and fast at that size); otherwise HNSW (after PCA-256
    when the vectors are wider than 512), or, when that would keep more than `memory_budget` bytes busy
    (0: no budget), IVF with 64-byte PQ codes. Its efSearch or nprobe is raised until recall@10 on
    `sample` stored vectors used as queries (each one's own row left out) reaches the target. The
    measured recall is returned with the choice, and never a higher one than was measured.
    """
    count, dim = vectors.shape
    if count < AUTO_FLAT_BELOW:
        choice = replace(base, kind="flat")
        return build(choice, dim, metric, vectors), {**describe(choice, dim, count), "recall_at_10": 1.0}
    choice = replace(base, kind="hnsw", pca=base.pca or (256 if dim > 512 else 0))
    parameter, values = "ef_search", (16, 32, 64, 128, 256, 512)
    if memory_budget and resident_bytes(choice, dim, count) > memory_budget:
        choice = replace(base, kind="ivf", pq_bytes=base.pq_bytes or 64, rerank=max(base.rerank, 8))
        parameter, values = "nprobe", (4, 8, 16, 32, 64, 128, 256)
    index = build(choice, dim, metric, vectors)
    rows = np.random.default_rng(1).choice(count, min(sample, count), replace=False)
    recall = 0.0
    for value in values:
        choice = replace(choice, **{parameter: value})
        apply_search_parameters(index, choice)
        recall = recall_at(index, vectors, vectors[rows], own_rows=rows)
        if recall >= target_recall:
            break
    facts = describe(choice, dim, count)
    return index, {**facts, "recall_at_10": recall, "recall_queries": len(rows), "resident_bytes": resident_bytes(choice, dim, count)}
