"""One battery for every index kind: round trip, exact vectors back, top-k equal to flat where the kind is
exact and recall where it is not, on seeded synthetic features (retrieval.synthetic.feature_vectors)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval.ann import IndexChoice, recall_at, resident_bytes
from retrieval.store import Entry, Store
from retrieval.synthetic import feature_vectors

DIM = 256
N = 6000

KINDS = {
    "flat": IndexChoice("flat"),
    "hnsw": IndexChoice("hnsw", ef_search=64),
    "pca-hnsw": IndexChoice("hnsw", pca=64, ef_search=128),
    "ivf-sq8": IndexChoice("ivf", nprobe=16),
    "ivf-pq": IndexChoice("ivf", pq_bytes=32, nprobe=16, rerank=8),
    "auto": IndexChoice("auto"),
}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return feature_vectors("clustered", N, dim=DIM, queries=100, seed=3)


def build(kind: IndexChoice, vectors: np.ndarray) -> Store:
    store = Store.create(
        dim=DIM, metric="cosine", embedding={}, root=Path("/"), runtime={}, kind=kind, recall_target=0.95
    )
    store.add(vectors, [Entry(f"{i}.jpg", i, i) for i in range(len(vectors))])
    return store


@pytest.fixture(scope="module", params=list(KINDS))
def kind_and_store(request, data) -> tuple[str, Store]:
    return request.param, build(KINDS[request.param], data[0])


def test_round_trip_searches_the_same(tmp_path, kind_and_store, data):
    _, store = kind_and_store
    before = store.search(data[1], 10)
    store.save(tmp_path / "index")
    loaded = Store.load(tmp_path / "index")
    assert loaded.search(data[1], 10) == before
    assert loaded.meta["index"]["factory"] == store.meta["index"]["factory"]


def test_every_kind_gives_back_the_exact_vectors(kind_and_store, data):
    _, store = kind_and_store
    assert store.count == N
    np.testing.assert_allclose(store.vectors(), data[0], atol=1e-6)


def test_top_k_equals_flat_where_exact_and_recall_where_not(kind_and_store, data):
    name, store = kind_and_store
    vectors, queries = data
    truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    found = np.array([[row for row, _ in hits] for hits in store.search(queries, 10)])
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    if store.meta["index"]["kind"] == "flat":
        assert (found == truth).all()
    else:
        assert recall >= 0.9, f"{name}: recall@10 {recall:.3f}"


def test_scores_are_exact_cosines_even_after_compression(kind_and_store, data):
    _, store = kind_and_store
    vectors, queries = data
    for query, hits in zip(queries[:10], store.search(queries[:10], 5)):
        for row, score in hits:
            assert score == pytest.approx(float(vectors[row] @ query), abs=1e-4)


def test_auto_measures_and_records_its_recall(data):
    small = build(IndexChoice("auto"), data[0][:1000])
    assert small.meta["index"]["kind"] == "flat" and small.meta["index"]["recall_at_10"] == 1.0
    large = build(IndexChoice("auto"), data[0])
    facts = large.meta["index"]
    assert facts["kind"] == "hnsw" and facts["recall_at_10"] >= 0.95
    assert facts["requested"]["kind"] == "auto"
    # the recorded recall is one auto measured: measuring again the same way gives the same number
    rows = np.random.default_rng(1).choice(N, facts["recall_queries"], replace=False)
    assert recall_at(large._index, data[0], data[0][rows], own_rows=rows) == pytest.approx(facts["recall_at_10"])


def test_auto_keeps_within_a_memory_budget(data):
    """Over the budget a graph would need, auto takes IVF with PQ codes, and still measures its recall."""
    vectors = data[0]
    graph = IndexChoice("hnsw", pca=256)
    assert resident_bytes(graph, DIM, N) > resident_bytes(IndexChoice("ivf", pq_bytes=64), DIM, N)
    store = Store.create(
        dim=DIM, metric="cosine", embedding={}, root=Path("/"), runtime={}, kind=IndexChoice("auto"),
        recall_target=0.95, memory_budget_gb=resident_bytes(graph, DIM, N) / 2**30 / 2,
    )
    store.add(vectors, [Entry(f"{i}.jpg", i, i) for i in range(N)])
    facts = store.meta["index"]
    assert facts["kind"] == "ivf" and facts["pq_bytes"] == 64
    assert facts["resident_bytes"] <= facts["requested"]["memory_budget_gb"] * 2**30
    assert facts["recall_at_10"] >= 0.95
