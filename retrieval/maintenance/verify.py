"""`retrieval verify`: is the index whole, and do the files it points at still exist?"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import RetrievalError
from retrieval.index.store import Store
from retrieval.index.writing import Writing, writing
from retrieval.io.sources import Location


@dataclass
class Health:
    """What verify found. Damage (a corrupt index) is raised as IndexCorrupt instead."""

    count: int
    missing: list[str] = field(default_factory=list)  # manifest paths whose files are gone
    changed: list[str] = field(default_factory=list)  # files changed since embedded: `ingest` updates them
    repaired: int = 0  # rows dropped by --repair
    warning: str | None = None  # about the index's search (IndexRecord.warning): reported, not damage

    @property
    def healthy(self) -> bool:
        return not self.missing


def verify(index: Path, *, repair: bool = False, wait: bool = False) -> Health:
    """Load and validate the index (sizes and SHA-256 of its files, counts, metadata), then check
    every manifest path.

    `repair` drops the rows whose files are gone and saves the result as a new generation, under the
    index's write lock.
    """
    if repair:
        with writing(index, wait=wait, check_hashes=True) as held:
            return _check(held.live, held)
    return _check(Store.load(index, check_hashes=True), None)


def _check(store: Store, repair: Writing | None) -> Health:
    """The store's health; with `repair`, the rows whose files are gone dropped through that transaction."""
    health = Health(store.count, warning=store.record.warning())
    _root_reachable(store.root)
    gone = []
    for row, entry in enumerate(store.entries()):
        try:
            st = (store.root / entry.path).stat()
        except (FileNotFoundError, NotADirectoryError):  # gone, or a folder on its path is now a file
            health.missing.append(entry.path)
            gone.append(row)
            continue
        except OSError as e:  # unreadable, or a remote root out of reach: not proof that the file is gone
            raise RetrievalError(f"cannot check {entry.path}: {e}; nothing was repaired") from e
        if not entry.unchanged(st):
            health.changed.append(entry.path)
    if repair and gone and len(gone) == store.count:
        raise RetrievalError(
            f"none of the {store.count} indexed files is in {store.root}: the folder looks moved, emptied or "
            "unmounted, which dropping every row would not repair; nothing was changed. Put the files back, or "
            "index the new folder with `retrieval ingest FOLDER --full`"
        )
    if repair and gone:
        store.delete(gone)
        repair.save(store)
        health.repaired = len(gone)
        health.count = store.count
        health.warning = store.record.warning()
    return health


def _root_reachable(root: Location) -> None:
    """RetrievalError when the indexed folder itself is gone or out of reach: then every file would look
    deleted, and a repair would drop every row."""
    try:
        there = root.is_dir()
    except OSError as e:  # a remote root out of reach (sources.ArrowPath), or a local one unreadable
        raise RetrievalError(f"cannot reach the indexed folder {root}: {e}; nothing was checked or repaired") from e
    if not there:
        raise RetrievalError(
            f"the indexed folder {root} does not exist (moved, or its disk not mounted); nothing was checked or "
            "repaired. Put it back, or index the new place with `retrieval ingest FOLDER --full`"
        )
