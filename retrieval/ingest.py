"""The ingest job: list a folder's images, decode them, embed them in batches, and save the index.

A new index replaces the old one only once it is completely written, so a failed or interrupted run,
or a folder with nothing usable in it, never costs the index already on disk.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from functools import partial
from itertools import islice
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from .config import Settings
from .embedders import Embedder, create_embedder, package_version
from .errors import ImageError, NothingToIndex, StoreError
from .files import Skipped, list_images
from .images import PREPROCESSING, load_image
from .store import Entry, Store

ERROR_REPORT = "errors.jsonl"
ProgressCallback = Callable[[int, int], None]  # (files done, files in total)
Decoder = Callable[[Path, tuple[int, int], int], np.ndarray]  # (path, (width, height), max_pixels) -> pixels
T = TypeVar("T")


@dataclass
class IngestReport:
    """What a run did: written to the terminal as a summary and to ERROR_REPORT file by file."""

    index: Path
    indexed: int
    seconds: float
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped).most_common())


def embedding_identity(embedder: Embedder) -> dict[str, Any]:
    """How a picture becomes a vector, decoding included: what ingest and query must agree on."""
    return {**embedder.identity(), "preprocessing": PREPROCESSING}


def ingest(
    folder: Path,
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    progress: ProgressCallback | None = None,
    decode: Decoder = load_image,
) -> IngestReport:
    """Index every image under `folder` into `settings.index`, skipping (and reporting) unusable files.

    Decoding runs in `settings.decode_threads` threads, a few batches ahead of inference, so the
    model never waits for Pillow (both release the GIL). Vectors go into the store batch by batch;
    the pixels of at most those few batches are in memory at once.
    """
    started = time.perf_counter()
    listing = list_images(folder)
    if not listing.paths:
        raise NothingToIndex(f"no image files found in {folder}; nothing was written")
    embedder = embedder or create_embedder(settings)
    store = Store.create(
        dim=embedder.spec.dim,
        metric=settings.metric,
        embedding=embedding_identity(embedder),
        root=folder,
        runtime={**embedder.runtime(), **_versions()},
    )
    skipped = list(listing.errors)
    width, height = embedder.spec.input_size
    batch = np.empty((settings.batch_size, height, width, 3), np.uint8)  # reused for every batch
    pending: list[Entry] = []

    def flush(done: int) -> None:
        if pending:
            store.add(embedder.embed(batch[: len(pending)]), pending)
            pending.clear()
        if progress:
            progress(done, len(listing.paths))

    read = partial(_read, folder, decode=decode, size=(width, height), max_pixels=settings.max_pixels)
    ahead = 2 * settings.batch_size + settings.decode_threads
    with closing(_in_threads(read, listing.paths, settings.decode_threads, ahead)) as results:
        for done, (rel, result) in enumerate(zip(listing.paths, results), 1):
            try:
                entry, pixels = result.result()
            except ImageError as e:
                skipped.append(Skipped(rel, e.reason, e.detail))
                continue
            except Exception as e:  # noqa: BLE001 - one file's decoder bug must not end the run
                skipped.append(Skipped(rel, "decoder failed", f"{type(e).__name__}: {e}"))
                continue
            batch[len(pending)] = pixels
            pending.append(entry)
            if len(pending) == settings.batch_size:
                flush(done)
    flush(len(listing.paths))
    report = IngestReport(settings.index, store.count, time.perf_counter() - started, skipped)
    write_error_report(settings.index, skipped)
    if store.count == 0:
        raise NothingToIndex(
            f"none of the {len(listing.paths)} image files in {folder} could be read "
            f"({_reasons(report)}); the existing index, if any, is unchanged. "
            f"See {settings.index / ERROR_REPORT}"
        )
    store.save(settings.index)
    report.seconds = time.perf_counter() - started
    return report


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


def _read(
    folder: Path, rel: str, *, decode: Decoder, size: tuple[int, int], max_pixels: int
) -> tuple[Entry, np.ndarray]:
    """Stat then decode one file. Stat first: if the file changes while we read it, the next run sees a
    newer mtime than the manifest's and embeds it again."""
    path = folder / rel
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise ImageError("file not found", "deleted, or a broken link") from e
    except OSError as e:
        raise ImageError("unreadable", e.strerror or str(e)) from e
    return Entry(rel, st.st_size, st.st_mtime_ns), decode(path, size, max_pixels)


def write_error_report(index: Path, skipped: list[Skipped]) -> None:
    """One JSON object per skipped file, beside the index, replaced atomically each run."""
    try:
        index.mkdir(parents=True, exist_ok=True)
        staging = index / f".tmp-{ERROR_REPORT}-{os.getpid()}"
        with open(staging, "w", encoding="utf-8") as f:
            for s in skipped:
                f.write(json.dumps(asdict(s), ensure_ascii=True) + "\n")
        os.replace(staging, index / ERROR_REPORT)
    except OSError as e:
        raise StoreError(f"cannot write to the index folder {index}: {e.strerror or e}") from e


def _reasons(report: IngestReport) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in report.skipped_by_reason().items())


def _versions() -> dict[str, str]:
    """Installed versions of what shapes the vectors and the index, read without importing them."""
    names = ("retrieval", "pillow", "numpy", "faiss-cpu")
    return {name: version for name in names if (version := package_version(name))}
