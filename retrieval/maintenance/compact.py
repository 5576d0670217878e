"""`retrieval compact`: every segment of an index merged into one without its deleted rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retrieval.index.store import Store
from retrieval.index.writing import writing


@dataclass(frozen=True)
class Compaction:
    """What `compact` found and did."""

    segments: int  # before
    deleted: int  # rows marked deleted before, now gone
    written: bool  # whether a new generation was saved
    store: Store


def compact(index: Path, *, wait: bool = False) -> Compaction:
    """Merge every segment of the index into one without its deleted rows and save it as a new generation,
    under the write lock (what an ingest's merge policy does by tiers, all at once). An index of format 5
    or older, one segment already, is only saved in the current layout (its files hard-linked into a
    segment, nothing rebuilt)."""
    with writing(index, wait=wait) as held:
        store = held.live
        segments, deleted = len(store.segments), sum(s["deleted"] for s in store.segments)
        if segments == 1 and not deleted and store.record.segments is not None:
            return Compaction(segments, deleted, False, store)
        if segments > 1 or deleted:
            store.merge(everything=True)
        held.save(store)
        return Compaction(segments, deleted, True, store)
