"""The ingest job: bring an index up to date with a folder, embedding only what it does not hold yet.

A run lists the folder, takes every vector it can from the current index (unchanged files, and moved
ones recognised by content hash) and from checkpoints of an interrupted run, decodes and embeds the rest
in batches, and saves a new generation of the index. Newly embedded vectors are checkpointed every
`checkpoint_every` images, so a killed run loses at most that much work. The old index stays live
until the new one is completely written, and one lock admits one writer at a time.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from .ann import IndexChoice
from .checkpoints import Checkpoints
from .config import Settings
from .embedders import Embedder, ModelSpec, create_embedder, identity_for, package_version, spec_for
from .errors import ImageError, IndexMismatch, IndexMissing, NothingToIndex, StoreError
from .files import Skipped, list_images, sha256_file
from .images import PREPROCESSING, load_image
from .lock import IndexLock
from .store import Entry, Store, normalize, warning

ERROR_REPORT = "errors.jsonl"
ProgressCallback = Callable[[int, int], None]  # (images embedded, images to embed)
Decoder = Callable[[Path, tuple[int, int], int], np.ndarray]  # (path, (width, height), max_pixels) -> pixels
T = TypeVar("T")


@dataclass
class IngestReport:
    """What a run did: printed as a summary, and written to ERROR_REPORT file by file for the skipped."""

    index: Path
    indexed: int = 0  # rows in the saved index
    seconds: float = 0.0
    embedded: int = 0  # images run through the model this time
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    moved: int = 0
    resumed: int = 0  # taken from the checkpoints of an interrupted run
    model_seconds: float = 0.0  # spent loading (or, once, converting) the model
    skipped: list[Skipped] = field(default_factory=list)
    warning: str | None = None  # about the saved index's search (store.warning), e.g. recall below target

    @property
    def rate(self) -> float:
        """Embedded images per second, model loading left out."""
        working = self.seconds - self.model_seconds
        return self.embedded / working if working > 0 else 0.0

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped).most_common())

    def reasons(self) -> str:
        """The skipped files counted by reason, most common first: "2 not an image, 1 truncated"."""
        return ", ".join(f"{n} {reason}" for reason, n in self.skipped_by_reason().items())


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
    full: bool = False,
    wait: bool = False,
) -> IngestReport:
    """Bring the index at `settings.index` up to date with the images under `folder`.

    `full` embeds everything again (needed to change model, weights, metric or folder); `wait` waits
    for another ingest into the same index instead of failing with IndexBusy.
    """
    started = time.perf_counter()
    with IndexLock(settings.index, wait=wait):
        listing = list_images(folder)
        if not listing.paths:
            raise NothingToIndex(f"no image files found in {folder}; nothing was written")
        model = _Model(settings, embedder)
        checkpoints = Checkpoints(settings.index, model.identity)
        if full:
            checkpoints.clear()
        previous = None if full else _previous(settings, model.identity, folder)
        run = _Run(folder, settings, model, checkpoints, previous, progress, decode)
        report = run.execute(listing.paths)
        report.skipped = listing.errors + report.skipped
        write_error_report(settings.index, report.skipped)
        if not run.entries:
            raise NothingToIndex(
                f"none of the {len(listing.paths)} image files in {folder} could be read "
                f"({report.reasons()}); the existing index, if any, is unchanged. "
                f"See {settings.index / ERROR_REPORT}"
            )
        kind = index_choice(settings)
        requested = {
            **asdict(kind), "recall_target": settings.recall_target, "memory_budget_gb": settings.memory_budget_gb
        }
        unchanged = previous is not None and run.entries == previous.entries() and previous.requested_kind == requested
        if unchanged and not previous.stale:
            store = previous  # nothing changed: no new generation
        else:
            store = Store.create(
                dim=model.spec.dim,
                metric=settings.metric,
                embedding=model.identity,
                root=folder,
                runtime=model.runtime(previous),
                kind=kind,
                recall_target=settings.recall_target,
                memory_budget_gb=settings.memory_budget_gb,
            )
            store.add(run.vectors(), run.entries)
            store.save(settings.index)
        checkpoints.clear()
    report.indexed = store.count
    report.warning = warning(store.meta)
    report.model_seconds = model.load_seconds
    report.seconds = time.perf_counter() - started
    return report


def index_choice(settings: Settings) -> IndexChoice:
    """The index kind and parameters `settings` ask for."""
    return IndexChoice(
        kind=settings.index_type,
        pca=settings.pca_dim,
        hnsw_m=settings.hnsw_m,
        ef_search=settings.ef_search,
        ivf_lists=settings.ivf_lists,
        nprobe=settings.nprobe,
        pq_bytes=settings.pq_bytes,
        rerank=settings.rerank,
    )


class _Model:
    """The embedder, built only when something needs embedding: an up-to-date index costs no model load."""

    def __init__(self, settings: Settings, embedder: Embedder | None) -> None:
        self._settings = settings
        self._embedder = embedder
        self.load_seconds = 0.0
        self.spec: ModelSpec = embedder.spec if embedder else spec_for(settings.model)
        base = embedder.identity() if embedder else identity_for(settings)
        self.identity = {**base, "preprocessing": PREPROCESSING}

    def embed(self, images: np.ndarray) -> np.ndarray:
        if self._embedder is None:
            started = time.perf_counter()
            self._embedder = create_embedder(self._settings)
            self.load_seconds = time.perf_counter() - started
        return self._embedder.embed(images)

    def runtime(self, previous: Store | None) -> dict[str, str]:
        """Engine and versions of this run's embedder, or of the run that made the vectors if none ran."""
        if self._embedder is None and previous is not None:
            return previous.meta.get("runtime", {})
        versions = {n: v for n in ("retrieval", "pillow", "numpy", "faiss-cpu") if (v := package_version(n))}
        return {**(self._embedder.runtime() if self._embedder else {}), **versions}


def _previous(settings: Settings, identity: dict[str, Any], folder: Path) -> Store | None:
    """The live index if this run can update it; IndexMismatch if it was built otherwise."""
    try:
        store = Store.load(settings.index)
    except IndexMissing:
        return None
    store.check_embedding(identity, remedy="pass --full to rebuild the index with the new settings")
    if store.metric != settings.metric:
        raise IndexMismatch(
            f"the index in {settings.index} uses metric {store.metric}, not {settings.metric}; "
            "pass --full to rebuild it"
        )
    if store.root != folder.resolve():
        raise IndexMismatch(
            f"the index in {settings.index} holds the images of {store.root}, not {folder.resolve()}; "
            "use another --index, or pass --full to replace it"
        )
    return store


class _Run:
    """One ingest's work: decide each file's vector source, embed what is new, assemble in listing order."""

    def __init__(
        self,
        folder: Path,
        settings: Settings,
        model: _Model,
        checkpoints: Checkpoints,
        previous: Store | None,
        progress: ProgressCallback | None,
        decode: Decoder,
    ) -> None:
        self._folder = folder
        self._settings = settings
        self._model = model
        self._checkpoints = checkpoints
        self._previous = previous
        self._progress = progress
        self._decode = decode
        self.entries: list[Entry] = []
        # One row per listed file, filled in place from whichever source has its vector, then compacted
        # over the files that failed: the only full-size copy of the vectors this run makes.
        self._vectors = np.empty((0, model.spec.dim), np.float32)
        self._filled = np.zeros(0, bool)

    def vectors(self) -> np.ndarray:
        """(len(entries), dim), normalized, row i for entries[i]."""
        return self._vectors[: len(self.entries)]

    def _put(self, slot: int, vector: np.ndarray) -> None:
        self._vectors[slot] = vector
        self._filled[slot] = True

    def execute(self, paths: list[str]) -> IngestReport:
        report = IngestReport(self._settings.index)
        known, vanished = self._known_vectors(paths)
        resumed = {(e.path, e.size, e.mtime_ns): (e, v) for e, v in self._checkpoints.load()}
        vanished_sizes = {entry.size for entry, _ in vanished.values()}
        slots: list[Entry | None] = []
        self._vectors = np.empty((len(paths), self._model.spec.dim), np.float32)
        self._filled = np.zeros(len(paths), bool)
        to_embed: list[int] = []
        for rel in paths:
            try:
                st = (self._folder / rel).stat()
            except OSError as e:
                report.skipped.append(Skipped(rel, "file not found" if isinstance(e, FileNotFoundError) else "unreadable", str(e)))
                continue
            key = (rel, st.st_size, st.st_mtime_ns)
            slot = len(slots)
            slots.append(Entry(rel, st.st_size, st.st_mtime_ns))
            if key in resumed:
                slots[slot], vector = resumed[key]
                self._put(slot, vector)
                report.resumed += 1
                continue
            source = known.get(key) or self._moved(slots[slot], vanished, vanished_sizes)
            if source is None:
                to_embed.append(slot)
                continue
            slots[slot] = source[0]
            self._put(slot, self._previous.vector(source[1]))
            if key in known:
                report.unchanged += 1
            else:
                report.moved += 1
        report.removed = len(vanished)
        self._embed(slots, to_embed, report)
        for slot, entry in enumerate(slots):
            if entry is not None and self._filled[slot]:
                if slot != len(self.entries):
                    self._vectors[len(self.entries)] = self._vectors[slot]  # compact in place
                self.entries.append(entry)
        return report

    def _known_vectors(self, paths: list[str]) -> tuple[dict[tuple[str, int, int], tuple[Entry, int]], dict[str, tuple[Entry, int]]]:
        """The previous index's rows: by (path, size, mtime) for files still listed, and by content hash
        for those no longer listed (candidates for a move). Rows, not vectors: each vector is read from
        the index only when it is used, so no second copy of the index is made."""
        if self._previous is None:
            return {}, {}
        listed = set(paths)
        known, vanished = {}, {}
        for row, entry in enumerate(self._previous.entries()):
            if entry.path in listed:
                known[(entry.path, entry.size, entry.mtime_ns)] = (entry, row)
            else:
                vanished[entry.sha256 or f"row-{row}"] = (entry, row)
        return known, vanished

    def _moved(self, entry: Entry, vanished: dict[str, tuple[Entry, int]], sizes: set[int]) -> tuple[Entry, int] | None:
        """A new path whose bytes equal a vanished entry's is that file, moved: re-key its vector.
        Hashing only when a vanished file had the same size keeps this cheap."""
        if entry.size not in sizes:
            return None
        digest = sha256_file(self._folder / entry.path)
        if digest not in vanished:
            return None
        _, row = vanished.pop(digest)
        return replace(entry, sha256=digest), row

    def _embed(self, slots: list[Entry | None], to_embed: list[int], report: IngestReport) -> None:
        """Decode in threads ahead of the model, embed in batches, checkpoint as we go."""
        settings = self._settings
        width, height = self._model.spec.input_size
        batch = np.empty((settings.batch_size, height, width, 3), np.uint8)  # reused for every batch
        in_batch: list[int] = []
        unsaved: list[int] = []
        previous_paths = set(e.path for e in self._previous.entries()) if self._previous else set()

        def flush(done: int) -> None:
            if in_batch:
                embedded = normalize(self._model.embed(batch[: len(in_batch)]))
                for slot, vector in zip(in_batch, embedded):
                    self._put(slot, vector)
                    if slots[slot].path in previous_paths:
                        report.updated += 1
                    else:
                        report.added += 1
                report.embedded += len(in_batch)
                unsaved.extend(in_batch)
                in_batch.clear()
            if len(unsaved) >= settings.checkpoint_every:
                checkpoint()
            if self._progress:
                self._progress(done, len(to_embed))

        def checkpoint() -> None:
            if unsaved:
                self._checkpoints.save([slots[s] for s in unsaved], self._vectors[unsaved])
                unsaved.clear()

        read = partial(_read, self._folder, decode=self._decode, size=(width, height), max_pixels=settings.max_pixels)
        ahead = 2 * settings.batch_size + settings.decode_threads
        paths = [slots[s].path for s in to_embed]
        try:
            with closing(_in_threads(read, paths, settings.decode_threads, ahead)) as results:
                for done, (slot, result) in enumerate(zip(to_embed, results), 1):
                    try:
                        pixels, digest = result.result()
                    except ImageError as e:
                        report.skipped.append(Skipped(slots[slot].path, e.reason, e.detail))
                        slots[slot] = None
                        continue
                    except Exception as e:  # noqa: BLE001 - one file's decoder bug must not end the run
                        report.skipped.append(Skipped(slots[slot].path, "decoder failed", f"{type(e).__name__}: {e}"))
                        slots[slot] = None
                        continue
                    slots[slot] = replace(slots[slot], sha256=digest)
                    batch[len(in_batch)] = pixels
                    in_batch.append(slot)
                    if len(in_batch) == settings.batch_size:
                        flush(done)
            flush(len(to_embed))
        except BaseException:
            checkpoint()  # Ctrl-C or a fatal error: what was embedded is kept for the next run
            raise


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


def _read(folder: Path, rel: str, *, decode: Decoder, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, str]:
    """Decode one file and hash its bytes (the second read comes from the page cache)."""
    path = folder / rel
    pixels = decode(path, size, max_pixels)
    try:
        return pixels, sha256_file(path)
    except OSError as e:
        raise ImageError("unreadable", e.strerror or str(e)) from e


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
