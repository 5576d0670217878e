"""One battery for every index kind: round trip, exact vectors back, top-k equal to flat where the kind is
exact and recall where it is not, on seeded synthetic features (retrieval.analysis.synthetic.feature_vectors) and on
the real model's own vectors (conftest's real_index); then auto's fallback, the recall warning, and indexes
of the previous format."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval.analysis.synthetic import feature_vectors
from retrieval.ann import filtered, tuning
from retrieval.ann.filtered import FilterPlan, product_codes
from retrieval.ann.indexes import IndexChoice
from retrieval.ann.kinds import KINDS as REGISTERED
from retrieval.ann.tuning import Candidate, held_out_rows, resident_bytes
from retrieval.errors import IndexMismatch
from retrieval.filters import Filter
from retrieval.index.building import Tuning
from retrieval.index.generations import current_generation
from retrieval.index.manifest import Entry
from retrieval.index.record import META
from retrieval.index.segment_files import VECTORS, file_facts
from retrieval.index.store import Store

from .test_store import as_written_by_format_5

DIM = 256
N = 6000

# every registered kind in the configurations it declares for this battery (kinds/), and auto
KINDS = {
    label: IndexChoice(kind.name, **fields) for kind in REGISTERED.values() for label, fields in kind.tested.items()
}
KINDS["auto"] = IndexChoice("auto")


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray]:
    return feature_vectors("clustered", N, dim=DIM, queries=100, seed=3)


@pytest.fixture(scope="module", params=["synthetic", "real"])
def data(request, synthetic) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, queries): seeded synthetic features, or the real model's vectors of 5,000 generated photos
    (100 of them held out as queries)."""
    if request.param == "synthetic":
        return synthetic
    real = Store.load(request.getfixturevalue("real_index")[0].index).vectors()
    return real[100:], real[:100]


def build(kind: IndexChoice, vectors: np.ndarray, recall_target: float = 0.95) -> Store:
    store = Store.create(
        dim=vectors.shape[1],
        metric="cosine",
        embedding={},
        root=Path("/"),
        runtime={},
        kind=kind,
        recall_target=recall_target,
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
    assert loaded.record.index["factory"] == store.record.index["factory"]


def test_every_kind_gives_back_the_exact_vectors(kind_and_store, data):
    _, store = kind_and_store
    assert store.count == len(data[0])
    np.testing.assert_allclose(store.vectors(), data[0], atol=1e-6)


def test_top_k_equals_flat_where_exact_and_recall_where_not(kind_and_store, data):
    name, store = kind_and_store
    vectors, queries = data
    truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    found = np.array([[row for row, _ in hits] for hits in store.search(queries, 10)])
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    if store.record.index["kind"] == "flat":
        assert (found == truth).all()
    else:
        assert recall >= 0.9, f"{name}: recall@10 {recall:.3f}"


def test_range_search_finds_the_rows_above_a_threshold_with_exact_scores(kind_and_store, data):
    """Threshold: each query's exact 10th-best score. Exact kinds return every row above it; approximate ones
    most of them (as with top-k); none returns a row below it, and hits come best first. FAISS and numpy sum a
    2048-d dot product in different orders (AVX2 and AVX-512 differently again), so a row within ROUNDING of
    the threshold may fall on either side (on real features, which crowd together, one did by 2e-6)."""
    _, store = kind_and_store
    vectors, queries = data
    exact = queries[:20] @ vectors.T
    thresholds = np.sort(exact, axis=1)[:, -10]
    found, wanted = 0, 0
    for q, threshold, scores in zip(queries[:20], thresholds, exact):
        [hits] = store.range_search(q, float(threshold))
        above = set(np.flatnonzero(scores >= threshold + ROUNDING).tolist())
        possible = set(np.flatnonzero(scores >= threshold - ROUNDING).tolist())
        rows = [row for row, _ in hits]
        assert set(rows) <= possible and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        for row, score in hits:
            assert score == pytest.approx(float(scores[row]), abs=1e-4)
        if store.capabilities.exact:
            assert above <= set(rows)
        found, wanted = found + len(set(rows) & above), wanted + len(above)
    assert found / wanted >= 0.85


ROUNDING = 1e-5  # float32 dot products of unit 2048-d vectors, summed in different orders


def test_each_kind_declares_whether_it_is_exact(kind_and_store):
    _, store = kind_and_store
    assert store.capabilities.exact == (store.record.index["kind"] == "flat")


def test_scores_are_exact_cosines_even_after_compression(kind_and_store, data):
    _, store = kind_and_store
    vectors, queries = data
    for query, hits in zip(queries[:10], store.search(queries[:10], 5)):
        for row, score in hits:
            assert score == pytest.approx(float(vectors[row] @ query), abs=1e-4)


def test_auto_measures_and_records_its_recall(synthetic):
    data = synthetic
    small = build(IndexChoice("auto"), data[0][:1000])
    assert small.record.index["kind"] == "flat" and small.record.index["recall_at_10"] == 1.0
    large = build(IndexChoice("auto"), data[0])
    facts = large.record.index
    assert facts["kind"] == "hnsw" and facts["recall_at_10"] >= 0.95
    assert facts["requested"]["kind"] == "auto"
    assert facts["recall_queries"] == len(held_out_rows(N)) == 200


def test_auto_keeps_within_a_memory_budget(synthetic):
    """Over the budget a graph would need, auto takes IVF with PQ codes, and still measures its recall."""
    vectors = synthetic[0]
    graph = IndexChoice("hnsw", pca=256)
    assert resident_bytes(graph, DIM, N) > resident_bytes(IndexChoice("ivf", pq_bytes=64), DIM, N)
    store = Store.create(
        dim=DIM,
        metric="cosine",
        embedding={},
        root=Path("/"),
        runtime={},
        kind=IndexChoice("auto"),
        recall_target=0.95,
        memory_budget_gb=resident_bytes(graph, DIM, N) / 2**30 / 2,
    )
    store.add(vectors, [Entry(f"{i}.jpg", i, i) for i in range(N)])
    facts = store.record.index
    assert facts["kind"] == "ivf" and facts["pq_bytes"] == 64
    assert facts["resident_bytes"] <= facts["requested"]["memory_budget_gb"] * 2**30
    assert facts["recall_at_10"] >= 0.95


# IVF with 2-byte PQ codes, one cell in ~40 searched and no re-rank to speak of: far below any useful recall
WEAK = IndexChoice("ivf", ivf_lists=150, pq_bytes=2, nprobe=1, rerank=1)


def test_auto_falls_back_to_flat_when_no_kind_reaches_the_target(synthetic, monkeypatch):
    monkeypatch.setattr(tuning, "candidates", lambda *_: [Candidate(WEAK, "nprobe", (1, 2))])
    store = build(IndexChoice("auto"), synthetic[0])
    facts = store.record.index
    assert facts["kind"] == "flat" and facts["recall_at_10"] == 1.0
    assert "IVF150,PQ4x4fs,RFlat" in facts["fallback"] and "nprobe=2" in facts["fallback"]
    assert "auto chose exact search (flat)" in store.record.warning()
    found = [[r for r, _ in hits] for hits in store.search(synthetic[1], 10)]
    assert found == faiss.knn(synthetic[1], synthetic[0], 10, metric=faiss.METRIC_INNER_PRODUCT)[1].tolist()


def test_an_explicit_kind_below_the_target_records_its_recall_and_warns(synthetic):
    store = build(WEAK, synthetic[0])
    facts = store.record.index
    assert facts["kind"] == "ivf" and facts["recall_at_10"] < 0.5
    message = store.record.warning()
    assert f"measured recall@10 {facts['recall_at_10']:.3f}" in message and "Raise nprobe" in message
    assert build(IndexChoice("hnsw"), synthetic[0]).record.warning() is None


def as_written_by_format_3(index: Path, store: Store) -> None:
    """Rewrite a saved index the way retrieval's format 3 stored it: approximate kinds searched by
    inner product."""
    as_written_by_format_5(index)
    generation = current_generation(index)
    meta = json.loads((generation / META).read_text())
    if meta["index"]["kind"] != "flat":
        old = faiss.index_factory(store.dim, meta["index"]["factory"], faiss.METRIC_INNER_PRODUCT)
        vectors = store.vectors()
        old.train(vectors)
        old.add(vectors)
        faiss.write_index(old, str(generation / VECTORS))
    meta["format_version"] = 3
    meta["files"][VECTORS] = file_facts(generation / VECTORS)
    (generation / META).write_text(json.dumps(meta))


def test_a_format_3_approximate_index_is_refused_until_rebuilt(tmp_path, synthetic):
    store = build(IndexChoice("hnsw"), synthetic[0][:500])
    store.save(tmp_path / "index")
    as_written_by_format_3(tmp_path / "index", store)
    old = Store.load(tmp_path / "index")
    assert old.record.stale and "older retrieval" in old.record.warning()
    with pytest.raises(IndexMismatch, match="run `retrieval ingest`"):
        old.search(synthetic[1], 5)
    np.testing.assert_allclose(old.vectors(), store.vectors(), atol=1e-6)  # what a rebuild starts from


def test_a_format_3_flat_index_loads_and_searches_as_before(tmp_path, synthetic):
    store = build(IndexChoice("flat"), synthetic[0][:500])
    store.save(tmp_path / "index")
    as_written_by_format_3(tmp_path / "index", store)
    old = Store.load(tmp_path / "index")
    assert not old.record.stale and old.record.warning() is None
    assert old.search(synthetic[1], 5) == store.search(synthetic[1], 5)


def test_every_kind_passes_over_deleted_rows_and_keeps_its_recall(tmp_path, kind_and_store, data):
    """A third of the rows deleted, among them each query's true top 3: none of them comes back, and the
    live top-10 is found as well as the whole one was (a selector inside FAISS; for scan, whose fast scan
    takes none, a filter after it that fetches as many more candidates as there are deleted rows)."""
    name, built = kind_and_store
    vectors, queries = data
    built.save(tmp_path / "index")
    store = Store.load(tmp_path / "index")  # a copy: the module's store stays as it is
    nearest = faiss.knn(queries, vectors, 3, metric=faiss.METRIC_INNER_PRODUCT)[1]
    deleted = np.union1d(np.arange(0, len(vectors), 3), nearest.ravel())
    store.delete(deleted)
    live = np.setdiff1d(np.arange(len(vectors)), deleted)
    truth = faiss.knn(queries, vectors[live], 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    found = [[row for row, _ in hits] for hits in store.search(queries, 10)]
    assert all(len(f) == 10 for f in found), name
    assert not set(store.entry(r).path for f in found for r in f) & {f"{i}.jpg" for i in deleted.tolist()}
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert recall == 1.0 if store.capabilities.exact else recall >= 0.9, (name, recall)


FILTER_PATHS = {  # how each filtered search is planned (ann/filtered.py)
    # at N rows, planned: the 0.5 % kept take the exact path; where the index searches reduced vectors (PCA + a
    # graph) the 5 % their reduced first pass and the 50 % the codes' first pass, elsewhere the 5 % the exact
    # path and the 50 % the filter inside
    "planned": FilterPlan(exact_rows=50, coded_rows=1000, coded_share=0.6, inside_share=0.2),
    "exact": FilterPlan(exact_rows=N),
    "reduced first": FilterPlan(exact_rows=0, coded_rows=N, coded_share=1.01, inside_share=1.01),
    # below CODED_AT_LEAST (128) kept rows there are too few to train codes on: the 0.5 % read reduced vectors
    "coded first": FilterPlan(exact_rows=0, coded_rows=0, coded_share=1.01, inside_share=1.01),
    "filter inside": FilterPlan(exact_rows=0, coded_share=0.0, inside_share=0.0),
}


@pytest.mark.parametrize("path", list(FILTER_PATHS))
def test_a_filtered_search_keeps_only_the_rows_kept_with_exact_scores_and_recall(tmp_path, kind_and_store, data, path):
    """Rows' sizes are their numbers, so a size range keeps a known share: 50 %, 5 % and 0.5 % of the rows, a
    twentieth of them deleted. On every path every hit is kept and live, k of them, each score exact. Against
    brute force over the kept live rows: on the exact path (and for an exact kind) the top 10's scores are
    the true top 10's; planned, and reduced or coded first where the index searches reduced vectors,
    recall@10 at least 0.95 at every share; the filter inside the graph, forced, only where the filter keeps
    half (a graph walked through few kept rows is why the plan does not take it there)."""
    name, built = kind_and_store
    vectors, queries = data
    built.save(tmp_path / "index")
    store = Store.load(tmp_path / "index", tuning=Tuning(filtering=FILTER_PATHS[path]))
    deleted = np.arange(0, len(vectors), 20)
    store.delete(deleted)
    live = np.setdiff1d(np.arange(len(vectors)), deleted)
    factory = store.segments[0]["index"]["factory"]
    reduced = factory.startswith("PCA") and "HNSW" in factory and "SQ8" not in factory  # else exactly
    for share in (0.5, 0.05, 0.005):
        top = round(share * len(vectors))
        kept = live[live < top]
        best, truth = faiss.knn(queries, vectors[kept], 10, metric=faiss.METRIC_INNER_PRODUCT)
        found = store.search(queries, 10, Filter(max_size=top - 1))
        numbers = [[int(store.entry(r).path[:-4]) for r, _ in hits] for hits in found]
        assert all(len(n) == min(10, len(kept)) for n in numbers), (name, share)
        assert set().union(*map(set, numbers)) <= set(kept.tolist()), (name, share)
        scores = np.array([[s for _, s in hits] for hits in found])
        for q, rows in enumerate(numbers):
            np.testing.assert_allclose(scores[q], vectors[rows] @ queries[q], atol=1e-4)
        if path == "exact" or store.capabilities.exact:
            np.testing.assert_allclose(scores, best, atol=1e-5, err_msg=f"{name} {share}")
        elif share == 0.5 or path == "planned" or (path in ("reduced first", "coded first") and reduced):
            recall = np.mean([len(set(t) & set(n)) / len(t) for t, n in zip(kept[truth].tolist(), numbers)])
            assert recall >= 0.95, (name, share, recall)


def test_a_filters_codes_are_made_once_while_eight_threads_search_it(tmp_path, synthetic, monkeypatch):
    """Eight threads search one filter at once on the codes' path: its codes are made once (the count of
    product_codes calls is 1), and every thread gets the same hits, those of the same search on one thread."""
    vectors, queries = synthetic
    build(KINDS["pca-hnsw"], vectors).save(tmp_path / "index")
    plan = FILTER_PATHS["coded first"]
    where = Filter(max_size=len(vectors) // 2 - 1)
    expected = Store.load(tmp_path / "index", tuning=Tuning(filtering=plan)).search(queries, 10, where)
    made = []
    monkeypatch.setattr(filtered, "product_codes", lambda *a: made.append(1) or product_codes(*a))
    store = Store.load(tmp_path / "index", tuning=Tuning(filtering=plan))
    barrier = threading.Barrier(8)

    def search(_: int) -> list:
        barrier.wait()
        return store.search(queries, 10, where)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(search, range(8)))
    assert len(made) == 1
    assert all(a == expected for a in answers)
