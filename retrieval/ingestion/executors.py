"""The embed step's executors: what decodes and embeds the planned files and streams the vectors back.

`LocalExecutor` runs on this machine (decoding threads ahead of one engine); ray_executor.py spreads the
same work over a Ray cluster. Both yield `Embedded` batches, which the ingest's driver checkpoints and
commits the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any, Protocol, TypeVar

import numpy as np

from retrieval.config import Settings, decode_threads_for
from retrieval.embedding.backbones import ModelSpec
from retrieval.embedding.embedders import Embedder
from retrieval.errors import ImageError
from retrieval.io.files import Skipped, sha256_file
from retrieval.io.images import fetched
from retrieval.io.perceptual import perceptual_hash
from retrieval.io.sources import Location

Decoder = Callable[[Location, tuple[int, int], int], np.ndarray]  # (path, (width, height), max_pixels) -> pixels
T = TypeVar("T")


@dataclass
class Embedded:
    """One batch back from an executor: vectors (unnormalized) for `done` (indices into the paths it was
    given, with their files' SHA-256 and perceptual hash), and the files of that stretch it had to skip."""

    done: list[int]
    hashes: list[tuple[str, str]]  # (SHA-256 of the bytes, perceptual hash of the pixels) per done
    vectors: np.ndarray  # (len(done), dim)
    skipped: list[tuple[int, Skipped]]
    node: str = ""  # the Ray node that embedded it; "" when local
    runtime: dict[str, Any] = field(default_factory=dict)  # engine, precision... of a remote embedder


class Executor(Protocol):
    """Runs the embed step: decode and embed `paths` (relative to `root`), yielding batches in order."""

    def run(self, root: Location, paths: list[str]) -> Iterator[Embedded]: ...


class LocalExecutor:
    """This machine: `decode_threads` threads decode a bounded number of images ahead, in order, into a
    reused batch buffer, and one embedder (built lazily by `embedder()`) embeds each full batch."""

    def __init__(self, settings: Settings, embedder: Callable[[], Embedder], spec: ModelSpec, decode: Decoder) -> None:
        self._settings = settings
        self._embedder = embedder
        self._spec = spec
        self._decode = decode

    def run(self, root: Location, paths: list[str]) -> Iterator[Embedded]:
        settings = self._settings
        width, height = self._spec.input_size
        batch = np.empty((settings.batch_size, height, width, 3), np.uint8)  # reused for every batch
        pending = Embedded([], [], np.empty(0), [])
        read = partial(read_image, root, decode=self._decode, size=(width, height), max_pixels=settings.max_pixels)
        # the model first: how many threads should decode depends on how fast it runs
        threads = decode_threads_for(settings, self._embedder().runtime().get("precision", "") if paths else "")
        ahead = 2 * settings.batch_size + threads
        with closing(_in_threads(read, paths, threads, ahead)) as results:
            for i, result in enumerate(results):
                try:
                    pixels, hashes = result.result()
                except ImageError as e:
                    pending.skipped.append((i, Skipped(paths[i], e.reason, e.detail)))
                    continue
                except Exception as e:  # noqa: BLE001 - one file's decoder bug must not end the run
                    pending.skipped.append((i, Skipped(paths[i], "decoder failed", f"{type(e).__name__}: {e}")))
                    continue
                batch[len(pending.done)] = pixels
                pending.done.append(i)
                pending.hashes.append(hashes)
                if len(pending.done) == settings.batch_size:
                    pending.vectors = self._embedder().embed(batch)
                    yield pending
                    pending = Embedded([], [], np.empty(0), [])
        if pending.done or pending.skipped:
            if pending.done:
                pending.vectors = self._embedder().embed(batch[: len(pending.done)])
            yield pending


def _in_threads(work: Callable[[str], T], items: list[str], threads: int, ahead: int) -> Iterator[Future[T]]:
    """Futures of `work(item)` in the order of `items`, with at most `ahead` submitted but not yet consumed.

    Closing the generator (Ctrl-C, an error downstream) cancels what has not started and waits only
    for the few decodes under way, so no thread outlives the run.
    """
    pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")
    queue: deque[Future[T]] = deque()
    upcoming = iter(items)
    try:
        for item in islice(upcoming, ahead):
            queue.append(pool.submit(work, item))
        while queue:
            head = queue.popleft()
            for item in islice(upcoming, 1):
                queue.append(pool.submit(work, item))
            yield head
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_image(
    folder: Location, rel: str, *, decode: Decoder, size: tuple[int, int], max_pixels: int
) -> tuple[np.ndarray, tuple[str, str]]:
    """Decode one file, hash its bytes (read once from a remote root; locally, the second read comes from the
    page cache) and its decoded pixels (a perceptual hash)."""
    path = fetched(folder / rel)
    pixels = decode(path, size, max_pixels)
    try:
        return pixels, (sha256_file(path), perceptual_hash(pixels))
    except OSError as e:
        raise ImageError("unreadable", e.strerror or str(e)) from e
