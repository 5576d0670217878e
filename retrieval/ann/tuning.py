"""Measuring and choosing an index: recall@10 against exact search, the search parameter raised until it reaches
the target (`auto`'s candidates fastest first, or one kind as configured), and the facts an index records of
what was measured, with the warning they call for. indexes.py builds and searches; this module decides what to
build and says how well it does. Never is a recall recorded that was not measured."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np

from retrieval.ann.indexes import IndexChoice, VectorIndex, describe
from retrieval.ann.kinds import AUTO, kind_of

# below this many vectors `auto` keeps exact search: it is then as fast as a graph and never misses
AUTO_FLAT_BELOW = 5_000
HEADROOM_STEPS = 1  # auto raises a search parameter this many values past the first that meets the target


def neighbour_recall(
    index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10, own_rows: np.ndarray | None = None
) -> float:
    """Fraction of the exact top-k (brute force over `vectors`, no copy) that `index` also returns.

    `own_rows`: when the queries are stored vectors, each one's own row, left out of both lists (finding
    a vector itself says nothing about the index).
    """
    extra = 0 if own_rows is None else 1
    # the truth is cosine (inner product of unit vectors), whatever the index searches by
    truth = faiss.knn(queries, vectors, k + extra, metric=faiss.METRIC_INNER_PRODUCT)[1]
    found = index.search(queries, k + extra)[1]
    if own_rows is not None:
        truth = np.array([t[t != own][:k] for t, own in zip(truth, own_rows)])
        found = np.array([f[f != own][:k] for f, own in zip(found, own_rows)], dtype=object)
    return overlap(found, truth)


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Recall: the share of each row of `truth` (exact top-k row ids) found in the same row of `found`."""
    k = len(truth[0])
    return sum(len(set(t) & set(f[:k])) for t, f in zip(truth, found)) / (k * len(truth))


def resident_bytes(choice: IndexChoice, dim: int, count: int) -> int:
    """Memory a search of `choice` keeps busy: flat scans every exact vector; compressed kinds touch only
    their codes (and graph or lists), while the exact vectors for re-ranking stay memory-mapped on disk."""
    return choice.declared.resident_bytes(choice, choice.width(dim), count)


@dataclass(frozen=True)
class Candidate:
    """A kind `auto` may take, and the search parameter it may raise to reach the recall target."""

    choice: IndexChoice
    parameter: str  # the IndexChoice field its kind tunes (Kind.parameter)
    values: tuple[int, ...]


def candidates(base: IndexChoice, dim: int, count: int, memory_budget: float) -> list[Candidate]:
    """The approximate kinds `auto` tries, fastest first (benchmarks/results/search.md): PCA-256 + HNSW32,
    HNSW32 on the full vectors, then IVF with 64-byte PQ codes. With a memory budget (bytes; 0: none),
    only those whose searched data fits in it."""
    found = [
        tunable(replace(base, kind="hnsw", pca=base.pca or (256 if dim > 512 else 0))),
        tunable(replace(base, kind="hnsw", pca=0)),
        tunable(replace(base, kind="ivf", pq_bytes=base.pq_bytes or 64, rerank=max(base.rerank, 8))),
    ]
    unique = list({c.choice.factory(dim, count): c for c in found}.values())  # PCA off: the first two agree
    return [c for c in unique if not memory_budget or resident_bytes(c.choice, dim, count) <= memory_budget]


def tunable(choice: IndexChoice) -> Candidate:
    """`choice` with the search parameter its kind declares for tuning, and the values it tries."""
    kind = choice.declared
    return Candidate(choice, kind.parameter, kind.values)


def held_out_rows(count: int, sample: int = 200) -> np.ndarray:
    """The stored rows whose vectors serve as queries when recall is measured (seeded: reproducible)."""
    return np.random.default_rng(1).choice(count, min(sample, count), replace=False)


def measure(
    choice: IndexChoice,
    vectors: np.ndarray,
    metric: int,
    target_recall: float,
    candidate: Candidate | None = None,
    pca: faiss.VectorTransform | None = None,
) -> tuple[VectorIndex, IndexChoice, float]:
    """Build `choice` and measure its recall@10 on held-out stored vectors. With a `candidate`, raise its
    search parameter until the recall reaches `target_recall`, then one value further (HEADROOM_STEPS):
    200 sampled queries estimate recall only to about ±0.01, and new images (a mirrored copy, say) are
    found a little less well than stored vectors; on 5,000 real embeddings the first value reaching 0.95
    still missed a mirrored copy's original that the next one found. Returns the index, the parameters
    it was left with and the recall measured with them. `pca`: a trained PCA to reuse (see `build`)."""
    index = VectorIndex.build(choice, metric, vectors, pca=pca)
    rows = held_out_rows(len(vectors))
    recall = tune_until(
        index, candidate, lambda i: neighbour_recall(i.faiss, vectors, vectors[rows], own_rows=rows), target_recall
    )
    return index, index.choice, recall


def tune_until(
    index: VectorIndex, candidate: Candidate | None, recall_of: Callable[[VectorIndex], float], target_recall: float
) -> float:
    """Raise `candidate`'s search parameter on `index` through its values until `recall_of(index)` reaches
    `target_recall`, then HEADROOM_STEPS values further (see `measure`); without a candidate, measure once.
    Returns the recall at the value it was left with."""
    recall, reached = 0.0, 0
    for value in candidate.values if candidate else (None,):
        if candidate:
            index.tune(replace(index.choice, **{candidate.parameter: value}))
        recall = recall_of(index)
        reached += recall >= target_recall
        if reached > HEADROOM_STEPS:
            break
    return recall


def build_measured(
    choice: IndexChoice,
    vectors: np.ndarray,
    metric: int,
    target_recall: float,
    memory_budget: float = 0.0,
) -> tuple[VectorIndex, dict[str, Any]]:
    """The index of `choice` over `vectors`, with the facts the store records: factory, parameters and
    recall@10 measured against exact search on held-out stored vectors (each one's own row left out).

    `auto` is flat below AUTO_FLAT_BELOW vectors (exact, and fast at that size); above, it tries each of
    `candidates` fastest first, raising its search parameter until the measured recall reaches
    `target_recall`, and keeps the first that does. When none does it falls back to flat and says so in
    `fallback`. An explicitly chosen approximate kind is measured as configured. Never is a recall
    recorded that was not measured.
    """
    count, dim = vectors.shape
    if (choice.kind == AUTO and count < AUTO_FLAT_BELOW) or (choice.kind != AUTO and choice.declared.exact):
        flat = replace(choice, kind="flat")
        return VectorIndex.build(flat, metric, vectors), {**describe(flat, dim, count), "recall_at_10": 1.0}
    facts: dict[str, Any] = {"recall_target": target_recall, "recall_queries": len(held_out_rows(count))}
    if choice.kind != AUTO:
        index, choice, recall = measure(choice, vectors, metric, target_recall)
        return index, measured(choice, dim, count, target_recall, recall)
    tried = []
    for candidate in candidates(choice, dim, count, memory_budget):
        index, tuned, recall = measure(candidate.choice, vectors, metric, target_recall, candidate)
        if recall >= target_recall:
            return index, measured(tuned, dim, count, target_recall, recall)
        tried.append(
            f"{tuned.factory(dim, count)} {recall:.3f} at {candidate.parameter}={getattr(tuned, candidate.parameter)}"
        )
        del index
    flat = replace(choice, kind="flat")
    fallback = (
        f"no approximate kind reached recall@10 {target_recall} ({'; '.join(tried) or 'none fits the memory budget'})"
    )
    return VectorIndex.build(flat, metric, vectors), {
        **describe(flat, dim, count),
        **facts,
        "recall_at_10": 1.0,
        "fallback": fallback,
    }


def measured(choice: IndexChoice, dim: int, count: int, target_recall: float, recall: float) -> dict[str, Any]:
    """The facts recorded of an approximate index: factory, parameters, the recall@10 measured and on how
    many held-out queries, and the memory its search keeps busy."""
    return {
        **describe(choice, dim, count),
        "recall_target": target_recall,
        "recall_queries": len(held_out_rows(count)),
        "recall_at_10": recall,
        "resident_bytes": resident_bytes(choice, dim, count),
    }


def build_like(
    template: VectorIndex, vectors: np.ndarray, metric: int, target_recall: float, tune: bool
) -> tuple[VectorIndex, dict[str, Any]] | None:
    """An index over `vectors` of the kind and parameters of `template` (a larger segment's index), its
    trained PCA reused instead of trained again (about 9 s for 2048-d here, more than the rest of a small
    build) and, with `tune`, its search parameter raised as auto does. Returns None when the recall
    measured on `vectors` stays below the target: the trained parts no longer fit the data, and the
    caller builds afresh."""
    count, dim = vectors.shape
    choice = template.choice
    index, tuned, recall = measure(
        choice, vectors, metric, target_recall, tunable(choice) if tune else None, pca=template.trained_pca
    )
    if recall < target_recall:
        return None
    return index, {**measured(tuned, dim, count, target_recall, recall), "reused": template.trained_pca is not None}


def recall_warning(facts: dict[str, Any]) -> str | None:
    """The warning an index's recorded facts call for, naming the kind, the recall and the remedy; None
    when the measured recall meets the target."""
    if facts.get("fallback"):
        return (
            f"auto chose exact search (flat): {facts['fallback']}. Queries are exact, but take time "
            "in proportion to the collection; lower recall_target to accept an approximate kind."
        )
    recall, target = facts.get("recall_at_10"), facts.get("recall_target")
    if recall is None or target is None or recall >= target:
        return None
    parameter = kind_of(facts["kind"]).parameter
    return (
        f"index {facts['factory']} ({parameter}={facts.get(parameter)}) measured recall@10 {recall:.3f}, below "
        f"recall_target {target}: queries miss some true neighbours. Raise {parameter}, or use "
        "index_type auto (tunes it, falls back to flat) or flat."
    )
