"""Answering queries: find each query image's vector (stored, or embedded now) and map the nearest rows to
files, through a Searcher that holds the index (and, when needed, the model) warm."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from retrieval.ann.tuning import AUTO_FLAT_BELOW
from retrieval.config import Settings
from retrieval.embedding.backbones import Pooling, identity, weights_setting
from retrieval.embedding.embedders import Embedder, create_embedder
from retrieval.errors import EmptyIndex, ImageError, NoSuchImage
from retrieval.filters import Filter
from retrieval.index.generations import current_generation
from retrieval.index.record import IndexRecord
from retrieval.index.store import Store
from retrieval.io.images import load_image
from retrieval.io.sources import Location
from retrieval.search.results import Hit, QueryResult, as_cosine

# called with settings, and for an int8 index `calibrated=` (see create_embedder)
EmbedderFactory = Callable[..., Embedder]


class Searcher:
    """A loaded index and, once a new image needs one, its embedder: one object answering many queries.

    `retrieval query` makes one per command; a server keeps one warm. It knows the generation it holds
    and `refresh` switches to a newer one that an ingest has committed. Each query takes the store it
    starts with to its end, so a switch meanwhile never gives an answer mixed from two generations. Safe
    to share between threads: the engines serialise their own inference calls.
    """

    def __init__(self, settings: Settings, make_embedder: EmbedderFactory = create_embedder) -> None:
        self._settings = settings
        self._make_embedder = make_embedder
        self._lock = threading.Lock()  # guards the two fields below while they are replaced
        self._store = Store.load(settings.index)
        self._embedder: Embedder | None = None

    @property
    def store(self) -> Store:
        return self._store

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def generation(self) -> str | None:
        return self._store.generation

    @property
    def record(self) -> IndexRecord:
        """What the held index records of itself (index/record.py)."""
        return self._store.record

    @property
    def count(self) -> int:
        return self._store.count

    @property
    def root(self) -> Location:
        """The indexed folder, which hit paths are relative to."""
        return self._store.root

    @property
    def metric(self) -> str:
        return self._store.metric

    def image(self, row: int) -> Location:
        """Where the indexed image `row` is, from the manifest only (never a path a client sent)."""
        store = self._store
        if not 0 <= row < store.count:
            raise NoSuchImage(f"no image with id {row}")
        return store.root / store.entry(row).path

    def lookups_are_cheap(self) -> bool:
        """Whether a search by a stored vector takes well under a millisecond: an approximate index, or a small
        exact one. A server runs such lookups on its event loop, where handing them to a thread costs more
        than the lookup (and under load the threads' contention for the GIL halved the rate)."""
        store = self._store
        return not store.capabilities.exact or store.count <= AUTO_FLAT_BELOW

    def is_current(self) -> bool:
        """Whether the held generation is the live one: one read of a small file, cheap enough per request."""
        return current_generation(self._settings.index).name == self.generation

    def refresh(self) -> bool:
        """Load the live generation if it is not the one held; True if it switched. The embedder is kept
        when the new generation was embedded the same way, and dropped (rebuilt on demand) otherwise."""
        if self.is_current():
            return False
        store = Store.load(self._settings.index)
        with self._lock:
            same = identity(store.record.embedding) == identity(self._store.record.embedding)
            if self._embedder is not None and not same:
                self._embedder = None
            self._store = store
        return True

    def embedder(self) -> Embedder:
        """The embedder the held index was made with, built on first use; IndexMismatch if it no longer
        embeds the same way (other weights on disk, changed preprocessing)."""
        with self._lock:
            if self._embedder is None:
                store = self._store
                recorded = store.record.embedding
                weights, seed = weights_setting(recorded)
                pooling = Pooling.from_output(recorded["output"])
                settings = replace(
                    self._settings,
                    model=recorded["model"],
                    weights=weights,
                    seed=seed,
                    pooling=pooling.kind,
                    gem_p=pooling.p,
                )
                embedder = self._make_embedder(settings, **_int8_model(store, settings))
                store.record.check_embedding(embedder.embedding())
                self._embedder = embedder
            return self._embedder

    def search_vectors(
        self, vectors: np.ndarray, k: int, min_score: float | None = None, where: Filter | None = None
    ) -> tuple[str | None, list[list[Hit]]]:
        """Hits for query vectors (n, dim), from one generation, which is returned with them; with
        `min_score`, only those at least that cosine; with `where`, only among the files it keeps."""
        store = self._store
        found = store.search(vectors, k, where)
        return store.generation, [_named_hits(store, pairs, min_score) for pairs in found]

    def neighbours(
        self, row: int, k: int, min_score: float | None = None, where: Filter | None = None
    ) -> tuple[str | None, list[Hit]]:
        """The indexed image `row`'s nearest neighbours (itself first, unless `where` leaves it out), by its
        stored vector: no model."""
        store = self._store
        if not 0 <= row < store.count:
            raise NoSuchImage(f"no image with id {row}: ids run from 0 to {store.count - 1}")
        return store.generation, _named_hits(store, store.search(store.vector(row), k, where)[0], min_score)

    def query(self, images: list[Path], k: int | None = None, where: Filter | None = None) -> list[QueryResult]:
        """The top-k most similar indexed images to each of `images`, searched in one batch.

        An image that is in the index, unchanged since it was embedded, is looked up by its stored vector,
        so no model (and no TensorFlow) is loaded. Any other image is embedded, in batches, with the model,
        weights and preprocessing the index records, on the engine and precision the settings ask for.
        `where`: only among the indexed files it keeps (no hits when it keeps none).
        """
        store = self._store
        if store.count == 0:
            raise EmptyIndex(f"the index in {self._settings.index} is empty: no results")  # before any model
        rows = [indexed_row(store, image) for image in images]
        vectors = np.empty((len(images), store.dim), np.float32)
        to_embed = [i for i, row in enumerate(rows) if row is None]
        for i, row in enumerate(rows):
            if row is not None:
                vectors[i] = store.vector(row)
        if to_embed:
            embedder = self.embedder()
            size, batch = embedder.spec.input_size, self._settings.batch_size
            for start in range(0, len(to_embed), batch):
                chunk = to_embed[start : start + batch]
                pixels = np.stack([_query_pixels(images[i], size, self._settings.max_pixels) for i in chunk])
                vectors[chunk] = embedder.embed(pixels)
        found = store.search(vectors, k or self._settings.top_k, where)
        return [
            QueryResult(image, store.root, store.metric, _named_hits(store, pairs), row is None, store.generation)
            for image, row, pairs in zip(images, rows, found)
        ]


def _query_pixels(image: Path, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """A query image decoded for the model; an ImageError that names it (a batch holds many)."""
    try:
        return load_image(image, size, max_pixels)
    except ImageError as e:
        raise ImageError(e.reason, f"{image}: {e.detail}" if e.detail else str(image)) from e


def _int8_model(store: Store, settings: Settings) -> dict[str, str]:
    """create_embedder's `calibrated` for an index embedded in int8, unless the settings ask for a float
    precision: its queries then embed with the same int8 model where it is cached."""
    calibration = store.record.calibration
    wanted = settings.engine == "openvino" and settings.precision in ("auto", "int8")
    return {"calibrated": calibration} if wanted and calibration else {}


def _named_hits(store: Store, pairs: list[tuple[int, float]], min_score: float | None = None) -> list[Hit]:
    """Rows and scores as hits, ranked; with `min_score`, those under that cosine left out."""
    if min_score is not None:
        pairs = [(row, score) for row, score in pairs if as_cosine(score, store.metric) >= min_score]
    return [Hit(rank, score, store.entry(row).path, row) for rank, (row, score) in enumerate(pairs, 1)]


def query(
    image: Path,
    settings: Settings,
    *,
    k: int | None = None,
    make_embedder: EmbedderFactory = create_embedder,
    where: Filter | None = None,
) -> QueryResult:
    """Top-k most similar indexed images to `image` (see Searcher.query)."""
    return query_many([image], settings, k=k, make_embedder=make_embedder, where=where)[0]


def query_many(
    images: list[Path],
    settings: Settings,
    *,
    k: int | None = None,
    make_embedder: EmbedderFactory = create_embedder,
    where: Filter | None = None,
) -> list[QueryResult]:
    """`query` for several images at once: the index is loaded once, the images that need it are
    embedded in batches, and all vectors are searched in one call."""
    return Searcher(settings, make_embedder).query(images, k, where)


def indexed_row(store: Store, image: Path) -> int | None:
    """The row of `image` if it lies under the index's root and has not changed since it was embedded."""
    root = store.root
    if not isinstance(root, Path):  # a remote root: a local query image is never one of its files
        return None
    try:
        rel = Path(os.path.abspath(image)).relative_to(root).as_posix()
    except ValueError:
        return None
    row = store.row_of(rel)
    if row is None:
        return None
    entry = store.entry(row)
    try:
        st = image.stat()
    except OSError:
        return None
    return row if entry.unchanged(st) else None
