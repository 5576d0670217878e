"""The one way the package changes an index: a writer's transaction (Lucene's IndexWriter). The index's lock
is taken, its live store loaded, and `Writing.save` commits a store as the next generation while the lock is
held; ingest, compact, `verify --repair` and `dupes --apply` all write through here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import IndexMissing
from retrieval.index.building import DEFAULT_TUNING, Tuning
from retrieval.index.lock import IndexLock
from retrieval.index.store import Store


@contextmanager
def writing(
    index: Path,
    *,
    wait: bool = False,
    create: bool = False,
    load: bool = True,
    check_hashes: bool = False,
    tuning: Tuning = DEFAULT_TUNING,
) -> Iterator[Writing]:
    """The index's lock taken (IndexBusy at once, or with `wait` when it is free), its live store loaded, and
    `Writing.save` to commit; the lock is released however the block ends. `create`: an index that is not
    there yet is allowed (the live store is then None); without it IndexMissing is raised before anything is
    created. `load=False` leaves whatever is there unread, for a rebuild that replaces it (`ingest --full`)."""
    with IndexLock(index, wait=wait, existing=not create):
        live = None
        if load:
            try:
                live = Store.load(index, check_hashes=check_hashes, tuning=tuning)
            except IndexMissing:
                if not create:
                    raise
        yield Writing(index, live, tuning)


@dataclass
class Writing:
    """An index held for writing (`writing`): the live store as loaded (None where there was none, or it
    was not read), and `save`, the one way the package commits a store to the index."""

    index: Path
    live: Store | None
    tuning: Tuning = DEFAULT_TUNING  # for the stores a writer creates, as the live one was loaded with

    def save(self, store: Store) -> None:
        """Commit `store` as the index's next generation, under the lock this transaction holds."""
        store.save(self.index)
        self.live = store
