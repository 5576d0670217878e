"""The default index on the model's own vectors: 5,000 generated photos through the real pipeline with
default settings (index_type auto). Synthetic vectors once hid a default whose recall on real features
was 0.09; these tests hold the default to its promise on what users actually feed it."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from PIL import Image

from retrieval.analysis.synthetic import photo
from retrieval.ann.indexes import IndexChoice
from retrieval.index.store import Store
from retrieval.io.images import load_image
from retrieval.search.searcher import query_many
from retrieval.vectors import normalize

from .conftest import REAL_COUNT

ORIGINALS = 20  # photos whose mirrored and half-size copies are queried: 40 near-duplicate queries


@pytest.fixture(scope="module")
def store(real_index) -> Store:
    return Store.load(real_index[0].index)


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> list[tuple[str, Image.Image]]:
    """(original's file name, copy) for a mirrored and a half-size copy of each of ORIGINALS photos,
    drawn exactly as conftest's collection was."""
    found = []
    for seed in range(ORIGINALS):
        original = photo(seed, (96, 72))
        name = f"photo-{seed:04d}.jpg"
        found.append((name, original.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
        found.append((name, original.resize((48, 36), Image.Resampling.LANCZOS)))
    return found


@pytest.fixture(scope="module")
def copy_vectors(tmp_path_factory, real_index, copies) -> np.ndarray:
    """The copies embedded as a query embeds them (decoded from files, normalized), (40, 2048)."""
    folder = tmp_path_factory.mktemp("copies")
    embedder = real_index[1]
    pixels = []
    for i, (_, image) in enumerate(copies):
        path = folder / f"copy-{i:02d}.png"
        image.save(path)
        pixels.append(load_image(path, embedder.spec.input_size, 10**8))
    return normalize(embedder.embed(np.stack(pixels)))


def flat_copy(store: Store) -> Store:
    flat = Store.create(
        dim=store.dim, metric="cosine", embedding={}, root=store.root, runtime={}, kind=IndexChoice("flat")
    )
    flat.add(store.vectors(), store.entries())
    return flat


def test_the_default_index_is_approximate_and_records_a_recall_that_meets_the_target(store):
    facts = store.record.index
    assert store.count == REAL_COUNT
    assert facts["requested"]["kind"] == "auto" and facts["kind"] != "flat"
    assert facts["recall_at_10"] >= facts["recall_target"] == 0.95
    assert "fallback" not in facts


def test_recall_at_10_on_new_queries_is_at_least_095(store, copy_vectors):
    """New images (not stored rows): the default index's top 10 against exact numpy cosine."""
    truth = np.argsort(-(store.vectors() @ copy_vectors.T), axis=0, kind="stable")[:10].T
    found = [[row for row, _ in hits] for hits in store.search(copy_vectors, 10)]
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert recall >= 0.95, recall


def test_near_duplicate_queries_rank_first_what_a_flat_index_does_all_but_at_most_one_of_40(
    store, copies, copy_vectors
):
    """The issue's target (± 1 of 40): the graph is built by several threads, so not bit-for-bit the same
    from run to run; on the runs seen, all 40 agreed."""
    default = [hits[0][0] for hits in store.search(copy_vectors, 1)]
    exact = [hits[0][0] for hits in flat_copy(store).search(copy_vectors, 1)]
    assert sum(d != e for d, e in zip(default, exact)) <= 1, (default, exact)
    found = sum(store.entry(row).path == name for row, (name, _) in zip(default, copies))
    assert found >= len(copies) - 2, f"{found} of {len(copies)} copies found their original first"


def test_the_query_path_gives_the_same_answers(tmp_path, real_index, store, copies):
    settings, embedder = real_index
    paths = []
    for i, (_, image) in enumerate(copies[:6]):
        paths.append(tmp_path / f"q{i}.png")
        image.save(paths[-1])
    results = query_many(paths, settings, k=5, make_embedder=lambda _: embedder)
    for result, (name, _) in zip(results, copies):
        assert result.embedded and result.hits[0].path == name


def test_scores_are_exact_cosines(store, copy_vectors):
    vectors = store.vectors()
    for query, hits in zip(copy_vectors[:5], store.search(copy_vectors[:5], 10)):
        for row, score in hits:
            assert score == pytest.approx(float(vectors[row] @ query), abs=1e-5)


def test_inner_product_after_pca_misranks_these_vectors(store):
    """Why approximate kinds search by L2: the definition this project used to have, measured here."""
    vectors = store.vectors()
    rows = np.arange(0, REAL_COUNT, 25)
    truth = faiss.knn(vectors[rows], vectors, 11, metric=faiss.METRIC_INNER_PRODUCT)[1][:, 1:]
    recalls = {}
    for name, metric in (("ip", faiss.METRIC_INNER_PRODUCT), ("l2", faiss.METRIC_L2)):
        index = faiss.index_factory(store.dim, "PCA256,HNSW32", metric)
        index.train(vectors)
        index.add(vectors)
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", 128)
        found = index.search(vectors[rows], 11)[1][:, 1:]
        recalls[name] = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert recalls["l2"] >= 0.9 and recalls["ip"] < 0.5, recalls


@pytest.fixture(scope="module")
def updated(real_index) -> Store:
    """The last 1,000 rows deleted and added back, as an update writes them: a second segment, of the scan kind,
    around a copy of the first one's PCA (in memory: the module's store stays as it is)."""
    updated = Store.load(real_index[0].index)
    last = np.arange(REAL_COUNT - 1_000, REAL_COUNT)
    vectors, entries = updated.vectors_of(last), [updated.entry(int(row)) for row in last]
    updated.delete(last)
    updated.add(vectors, entries)
    return updated


def test_an_update_segment_reusing_the_trained_pca_keeps_recall_and_near_duplicates(updated, copies, copy_vectors):
    """On the model's own vectors, new queries' recall@10 across both segments of `updated` stays at least 0.95
    against exact numpy cosine, and the near-duplicate copies find their originals first (all but at most two
    of 40, as the single-segment index)."""
    vectors = updated.vectors()
    first, second = (s["index"] for s in updated.segments)
    assert first["factory"] == "PCA256,HNSW32,RFlat" and second["factory"] == "PCA256,PQ256x4fs,RFlat"
    assert second["reused"]
    truth = np.argsort(-(vectors @ copy_vectors.T), axis=0, kind="stable")[:10].T  # rows kept their order
    found = [[row for row, _ in hits] for hits in updated.search(copy_vectors, 10)]
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert recall >= 0.95, recall
    firsts = sum(
        updated.entry(hits[0][0]).path == name for hits, (name, _) in zip(updated.search(copy_vectors, 1), copies)
    )
    assert firsts >= len(copies) - 2, f"{firsts} of {len(copies)} copies found their original first"


def test_loaded_update_segments_search_through_one_pca_with_the_same_answers(tmp_path, updated, copy_vectors):
    """Saved and loaded, the update segment searches through the first segment's copy of the PCA: on the
    model's own vectors, top-10 and range search answers equal those of the store before saving."""
    before = updated.search(copy_vectors, 10), updated.range_search(copy_vectors[:5], 0.9)
    updated.save(tmp_path / "index")
    loaded = Store.load(tmp_path / "index")
    pcas = [s.index.trained_pca for s in loaded._segments]
    assert len(pcas) == 2 and int(pcas[0].this) == int(pcas[1].this)
    assert (loaded.search(copy_vectors, 10), loaded.range_search(copy_vectors[:5], 0.9)) == before
