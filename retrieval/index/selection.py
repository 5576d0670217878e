"""Which rows of each segment a Filter keeps (retrieval/filters.py), from what the manifest records: a folder is
a range of the manifest's path order (two binary searches, however large the index), a time or size range
one comparison over a column held in memory. Deleted rows are left out here, so a filtered search needs no
second selector for them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from retrieval.ann.filtered import Allowed
from retrieval.filters import Filter, within
from retrieval.index.segments import Segment

CACHED = 16  # filters whose rows a store keeps: a server answering one folder's queries reads it once


def allowed_rows(segment: Segment, where: Filter, root: str) -> Allowed:
    """The live local rows of `segment` that `where` keeps, sorted. `root`: the indexed folder, against which
    an absolute folder is made relative (or refused as outside it)."""
    manifest = segment.manifest
    folder = within(where.folder, root)
    rows = manifest.rows_under(f"{folder}/" if folder else "")
    keep = np.ones(len(rows), bool)
    if where.modified_after is not None or where.modified_before is not None:
        mtimes = manifest.mtimes[rows] if folder else manifest.mtimes
        if where.modified_after is not None:
            keep &= mtimes >= where.modified_after
        if where.modified_before is not None:
            keep &= mtimes < where.modified_before
    if where.min_size is not None or where.max_size is not None:
        sizes = manifest.sizes[rows] if folder else manifest.sizes
        if where.min_size is not None:
            keep &= sizes >= where.min_size
        if where.max_size is not None:
            keep &= sizes <= where.max_size
    if len(segment.deleted):
        keep &= ~segment.is_deleted(rows)
    return Allowed(rows[keep] if not keep.all() else rows, segment.rows)


class Selections:
    """The rows each of the last CACHED filters keeps, per segment, for one list of segments (a store makes a
    new one when its segments change). Threads asking for one filter at once evaluate it once, and so share
    what its first search makes (a bitmap, product codes); other filters wait for neither."""

    def __init__(self, segments: list[Segment], root: str) -> None:
        self._segments = segments
        self._root = root
        self._kept: OrderedDict[Filter, _Kept] = OrderedDict()
        self._lock = threading.Lock()  # a server searches from several threads

    def of(self, where: Filter) -> list[Allowed]:
        with self._lock:
            if (entry := self._kept.get(where)) is not None:
                self._kept.move_to_end(where)
            else:
                entry = self._kept[where] = _Kept()
                while len(self._kept) > CACHED:
                    self._kept.popitem(last=False)
        with entry.lock:
            if entry.allowed is None:  # the first to ask (or the first after a refusal: it is raised again)
                entry.allowed = [allowed_rows(s, where, self._root) for s in self._segments]
            return entry.allowed


class _Kept:
    """One filter's rows per segment, evaluated by the first thread that asks while the others wait."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.allowed: list[Allowed] | None = None
