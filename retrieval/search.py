"""Answering a query: find the query image's vector (stored, or embedded now) and map the nearest rows to files."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .config import Settings
from .errors import EmptyIndex
from .embedders import Embedder, create_embedder, weights_argument
from .images import load_image
from .ingest import embedding_identity
from .store import Store

EmbedderFactory = Callable[[Settings], Embedder]


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # cosine similarity, or Euclidean distance when the metric is l2
    path: str  # relative to the index's root
    row: int


@dataclass(frozen=True)
class QueryResult:
    query: Path
    root: Path
    metric: str
    hits: list[Hit]
    embedded: bool  # False when the query was already indexed and its stored vector was used

    def absolute(self, hit: Hit) -> Path:
        return self.root / hit.path


def query(
    image: Path,
    settings: Settings,
    *,
    k: int | None = None,
    make_embedder: EmbedderFactory = create_embedder,
) -> QueryResult:
    """Top-k most similar indexed images to `image`.

    An image that is in the index, unchanged since it was embedded, is looked up by its stored vector,
    so no model (and no TensorFlow) is loaded. Any other image is embedded with the model, weights and
    preprocessing the index records, on the engine and precision `settings` ask for.
    """
    return query_many([image], settings, k=k, make_embedder=make_embedder)[0]


def query_many(
    images: list[Path],
    settings: Settings,
    *,
    k: int | None = None,
    make_embedder: EmbedderFactory = create_embedder,
) -> list[QueryResult]:
    """`query` for several images at once: the index is loaded once, the images that need it are
    embedded in batches, and all vectors are searched in one call."""
    store = Store.load(settings.index)
    if store.count == 0:
        raise EmptyIndex(f"the index in {settings.index} is empty: no results")  # before loading any model
    rows = [indexed_row(store, image) for image in images]
    vectors = np.empty((len(images), store.dim), np.float32)
    to_embed = [i for i, row in enumerate(rows) if row is None]
    for i, row in enumerate(rows):
        if row is not None:
            vectors[i] = store.vector(row)
    if to_embed:
        embedder = embedder_for(store, settings, make_embedder)
        for start in range(0, len(to_embed), settings.batch_size):
            chunk = to_embed[start : start + settings.batch_size]
            pixels = np.stack([load_image(images[i], embedder.spec.input_size, settings.max_pixels) for i in chunk])
            vectors[chunk] = embedder.embed(pixels)
    found = store.search(vectors, k or settings.top_k)
    return [
        QueryResult(
            image,
            store.root,
            store.metric,
            [Hit(rank, score, store.entry(r).path, r) for rank, (r, score) in enumerate(pairs, 1)],
            embedded=row is None,
        )
        for image, row, pairs in zip(images, rows, found)
    ]


def indexed_row(store: Store, image: Path) -> int | None:
    """The row of `image` if it lies under the index's root and has not changed since it was embedded."""
    try:
        rel = Path(os.path.abspath(image)).relative_to(store.root).as_posix()
    except ValueError:
        return None
    row = store.find(rel)
    if row is None:
        return None
    entry = store.entry(row)
    try:
        st = image.stat()
    except OSError:
        return None
    return row if (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns) else None


def embedder_for(store: Store, settings: Settings, make_embedder: EmbedderFactory) -> Embedder:
    """Rebuild the embedder the index was made with, and refuse if it no longer embeds the same way
    (other weights on disk, changed preprocessing)."""
    recorded = store.meta["embedding"]
    weights, seed = weights_argument(recorded)
    embedder = make_embedder(replace(settings, model=recorded["model"], weights=weights, seed=seed))
    store.check_embedding(embedding_identity(embedder))
    return embedder
