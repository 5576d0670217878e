"""The warm Searcher: many queries from one loaded index, a lazily built embedder, and switching to the
generation a later ingest commits without ever answering from a mix."""

from __future__ import annotations

import threading

from retrieval.config import Settings
from retrieval.generations import current_generation
from retrieval.ingest import ingest
from retrieval.search import Searcher
from retrieval.synthetic import near_duplicates, photo, write_photos


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


def test_threads_querying_during_commits_each_see_one_whole_generation(tmp_path, embedder):
    """Each answer comes from the store its query started with: every hit's row maps to a path of that
    generation, and the result has as many hits as that generation could give."""
    folder = tmp_path / "photos"
    write_photos(folder, 5, seed=600)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(folder, settings, embedder=embedder)
    searcher = Searcher(settings, lambda _: embedder)
    query = folder / "photo-0000.jpg"
    failures: list[str] = []
    answered = [0]
    done = threading.Event()

    def ask() -> None:
        while not done.is_set() and answered[0] < 2000:
            searcher.refresh()
            store = searcher.store
            [result] = searcher.query([query], k=50)
            paths = {e.path for e in store.entries()}
            if store is searcher.store and ({h.path for h in result.hits} - paths or len(result.hits) != store.count):
                failures.append(f"generation {store.generation}: {[h.path for h in result.hits]}")
            answered[0] += 1

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(4):
            photo(700 + i).save(folder / f"new-{i}.jpg")
            ingest(folder, settings, embedder=embedder)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == [] and answered[0] > 0
    assert Searcher(settings).store.count == 9
