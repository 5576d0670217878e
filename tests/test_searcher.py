"""The warm Searcher: many queries from one loaded index, a lazily built embedder, and switching to the
generation a later ingest commits without ever answering from a mix."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval.analysis.synthetic import near_duplicates, photo, write_photos
from retrieval.config import Settings
from retrieval.index.generations import current_generation
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.io.images import load_image
from retrieval.search.results import QueryResult
from retrieval.search.searcher import Searcher
from retrieval.vectors import normalize


def test_queries_by_indexed_images_build_no_embedder_and_new_images_build_one_once(tmp_path, indexed, photos, embedder):
    made = []

    def make(settings: Settings):
        made.append(settings)
        return embedder

    searcher = Searcher(indexed, make)
    assert searcher.query([photos / "photo-0003.jpg"], k=2)[0].hits[0].path == "photo-0003.jpg"
    assert made == []
    for seed in (1, 2):
        near_duplicates(photo(seed))["mirrored"].save(tmp_path / f"m{seed}.png")
        [result] = searcher.query([tmp_path / f"m{seed}.png"], k=1)
        assert result.embedded and result.hits[0].path == f"photo-{seed:04d}.jpg"
    assert len(made) == 1 and (made[0].model, made[0].weights, made[0].seed) == ("resnet50", "none", 0)


def test_refresh_switches_to_a_newer_generation_and_keeps_the_embedder(tmp_path, embedder):
    folder = tmp_path / "photos"
    write_photos(folder, 6, seed=500)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(folder, settings, embedder=embedder)
    made = []
    searcher = Searcher(settings, lambda _: made.append(1) or embedder)
    near_duplicates(photo(502))["resized"].save(tmp_path / "q.png")
    assert searcher.query([tmp_path / "q.png"], k=1)[0].hits[0].path == "photo-0002.jpg"
    held = searcher.generation
    assert searcher.refresh() is False
    photo(900).save(folder / "added.jpg")
    ingest(folder, settings, embedder=embedder)
    assert searcher.store.count == 6  # still the generation it held
    assert searcher.refresh() is True
    assert searcher.generation == current_generation(settings.index).name != held
    assert searcher.store.count == 7
    near_duplicates(photo(900))["mirrored"].save(tmp_path / "q2.png")
    assert searcher.query([tmp_path / "q2.png"], k=1)[0].hits[0].path == "added.jpg"
    assert len(made) == 1, "the same embedding: the embedder is kept across the switch"


class SwitchingMidQuery:
    """The real embedder, but each time a query has embedded its image, `commit` runs before the vectors are
    handed back: an ingest commits a new generation and the searcher switches to it, inside the query."""

    def __init__(self, embedder, commit) -> None:
        self._embedder, self._commit, self.spec = embedder, commit, embedder.spec

    def embedding(self):
        return self._embedder.embedding()

    def runtime(self):
        return self._embedder.runtime()

    def embed(self, images):
        vectors = self._embedder.embed(images)
        self._commit()
        return vectors


def test_threads_querying_while_switches_land_inside_their_queries_each_get_one_whole_generation(tmp_path, embedder):
    """Two threads ask 10 queries each; inside every query an ingest commits and the searcher switches (the
    switches that landed inside a query are counted: at least 20). Each answer names the generation it came
    from and equals brute force over that generation's vectors: all its rows, each with its exact score."""
    folder = tmp_path / "photos"
    write_photos(folder, 5, seed=600)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(folder, settings, embedder=embedder)
    generations: dict[str, tuple[list[str], np.ndarray]] = {}  # name -> (paths, vectors), saved as committed
    lock, added = threading.Lock(), [0]

    def remember() -> None:
        store = Store.load(settings.index)
        generations[store.generation] = ([e.path for e in store.entries()], store.vectors())

    def commit() -> None:
        with lock:
            photo(700 + added[0]).save(folder / f"new-{added[0]:02d}.jpg")
            added[0] += 1
            ingest(folder, settings, embedder=embedder, wait=True)
            remember()
            searcher.refresh()

    remember()
    searcher = Searcher(settings, lambda _: SwitchingMidQuery(embedder, commit))
    queries = []
    for i in range(20):
        queries.append(tmp_path / f"q{i}.png")
        near_duplicates(photo(600 + i % 5))["mirrored"].save(queries[-1])
    answers: list[tuple[QueryResult, str | None]] = []  # (the answer, the generation live once it returned)

    def ask(mine: list[Path]) -> None:
        for query in mine:
            [result] = searcher.query([query], k=50)
            answers.append((result, searcher.generation))

    threads = [threading.Thread(target=ask, args=(queries[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    switched_inside = sum(result.generation != after for result, after in answers)
    assert len(answers) == 20 and switched_inside >= 20, (len(answers), switched_inside)
    for result, _ in answers:
        paths, vectors = generations[result.generation]
        query = normalize(embedder.embed(load_image(result.query, embedder.spec.input_size, 10**8)[None]))[0]
        exact = dict(zip(paths, (vectors @ query).tolist()))
        assert sorted(h.path for h in result.hits) == sorted(paths), result.generation
        for hit in result.hits:
            assert hit.score == pytest.approx(exact[hit.path], abs=1e-5)
        assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert Searcher(settings).store.count == 25
