"""`retrieval compact`: every segment of an index merged into one without its deleted rows; with `hashes`, the
perceptual hashes an index built before them lacks added on the way, from the files, without embedding."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from retrieval.config import DEFAULT_MAX_PIXELS
from retrieval.embedding.backbones import spec_for
from retrieval.errors import ImageError
from retrieval.index.manifest import Entry
from retrieval.index.store import Store
from retrieval.index.writing import writing
from retrieval.io.images import load_image
from retrieval.io.perceptual import perceptual_hash
from retrieval.io.sources import Location


@dataclass(frozen=True)
class Compaction:
    """What `compact` found and did."""

    segments: int  # before
    deleted: int  # rows marked deleted before, now gone
    written: bool  # whether a new generation was saved
    store: Store
    hashed: int = 0  # rows whose perceptual hash was added
    unhashed: int = 0  # rows still without one: their file is gone or changed since it was embedded


def compact(
    index: Path, *, wait: bool = False, hashes: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Compaction:
    """Merge every segment of the index into one without its deleted rows and save it as a new generation,
    under the write lock (what an ingest's merge policy does by tiers, all at once). An index of format 5
    or older, one segment already, is only saved in the current layout (its files hard-linked into a
    segment, nothing rebuilt). `hashes`: every row without a perceptual hash gets one, decoded from its file
    if the file is still the one embedded (the vectors are kept as they are)."""
    with writing(index, wait=wait) as held:
        store = held.live
        segments, deleted = len(store.segments), sum(s["deleted"] for s in store.segments)
        entries = store.entries() if hashes else []
        if any(not e.phash for e in entries):
            size = spec_for(store.record.model).input_size
            hashed = _hashed(store.root, entries, size, max_pixels)
            added = sum(1 for old, new in zip(entries, hashed) if new.phash and not old.phash)
            store.merge(everything=True, entries=hashed)
            held.save(store)
            return Compaction(segments, deleted, True, store, added, sum(1 for e in hashed if not e.phash))
        if segments == 1 and not deleted and store.record.segments is not None:
            return Compaction(segments, deleted, False, store)
        if segments > 1 or deleted:
            store.merge(everything=True)
        held.save(store)
        return Compaction(segments, deleted, True, store)


def _hashed(root: Location, entries: list[Entry], size: tuple[int, int], max_pixels: int) -> list[Entry]:
    """`entries` with the perceptual hash of each unhashed file that is still the one embedded (same size and
    mtime), decoded as an ingest decodes it; the others as they were."""

    def with_hash(entry: Entry) -> Entry:
        if entry.phash:
            return entry
        path = root / entry.path
        try:
            if not entry.unchanged(path.stat()):
                return entry
            return replace(entry, phash=perceptual_hash(load_image(path, size, max_pixels)))
        except (OSError, ImageError):
            return entry

    with ThreadPoolExecutor(4, thread_name_prefix="hash") as pool:
        return list(pool.map(with_hash, entries))
