"""Thumbnails of indexed images, encoded once and the most recently used kept in memory."""

import io
from collections import OrderedDict

from fastapi.concurrency import run_in_threadpool

from retrieval.io.images import load_thumbnail
from retrieval.search.searcher import Searcher


class Thumbnails:
    """JPEG thumbnails at most `size` pixels a side, `capacity` of them kept; emptied when the searcher moves to
    another generation, where an id may mean another file."""

    def __init__(self, size: int, capacity: int) -> None:
        self._size, self._capacity = size, capacity
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._generation: str | None = None

    def __len__(self) -> int:
        return len(self._cache)

    async def get(self, searcher: Searcher, row: int) -> bytes:
        """The thumbnail of indexed image `row` (NoSuchImage past the end), decoded off the event loop."""
        path = searcher.image(row)
        if self._generation != searcher.generation:
            self._cache.clear()
            self._generation = searcher.generation
        if row not in self._cache:
            picture = await run_in_threadpool(load_thumbnail, path, self._size, searcher.settings.max_pixels)
            encoded = io.BytesIO()
            picture.save(encoded, "JPEG", quality=85)
            self._cache[row] = encoded.getvalue()
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        self._cache.move_to_end(row)
        return self._cache[row]
