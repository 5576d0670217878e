"""An ingest's first step: list the folder and decide, file by file, where its vector comes from: the current
index (unchanged files, and moved ones recognised by content hash), the checkpoints of an interrupted run, or
the model. No model, no decoding (job.py runs the rest)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from retrieval.index.manifest import Entry
from retrieval.index.store import Store
from retrieval.io.files import Skipped, sha256_file
from retrieval.io.sources import Facts, Location


@dataclass
class Plan:
    """Where each listed file's vector comes from. Slot i is entries[i]; every slot is in exactly one of
    `kept` (a row of the previous index), `resumed` (a checkpointed vector) or `to_embed`."""

    root: Location
    entries: list[Entry]
    kept: dict[int, int] = field(default_factory=dict)  # slot -> row of the previous index
    resumed: dict[int, np.ndarray] = field(default_factory=dict)  # slot -> vector (dim,)
    to_embed: list[int] = field(default_factory=list)  # slots, in listing order
    unchanged: int = 0
    moved: set[int] = field(default_factory=set)  # slots of `kept` whose file moved: same vector, new path
    removed: int = 0  # previous rows whose files are gone (and not moved)
    previous_paths: frozenset[str] = frozenset()  # to tell an added file from an updated one
    skipped: list[Skipped] = field(default_factory=list)  # listed, but gone or unreadable at stat time


def plan(
    folder: Location,
    paths: list[str],
    previous: Store | None,
    checkpointed: list[tuple[Entry, np.ndarray]],
    facts: Mapping[str, Facts] | None = None,
) -> Plan:
    """Decide each file's vector source from its size and mtime (and, for a possible move, its content
    hash). Reads file metadata (from `facts` where the listing brought them), and the bytes of a new file
    only when a vanished one had its size."""
    result = Plan(folder, [], previous_paths=frozenset(e.path for e in previous.entries()) if previous else frozenset())
    known, vanished = _previous_rows(paths, previous)
    resumed = {e.key: (e, v) for e, v in checkpointed}
    vanished_sizes = {entry.size for entry, _ in vanished.values()}
    for rel in paths:
        try:
            st = facts[rel] if facts and rel in facts else (folder / rel).stat()
        except OSError as e:
            reason = "file not found" if isinstance(e, FileNotFoundError) else "unreadable"
            result.skipped.append(Skipped(rel, reason, str(e)))
            continue
        slot = len(result.entries)
        entry = Entry(rel, st.st_size, st.st_mtime_ns)
        if entry.key in resumed:
            entry, result.resumed[slot] = resumed[entry.key]
        elif entry.key in known:
            entry, result.kept[slot] = known[entry.key]
            result.unchanged += 1
        elif (source := _moved(folder, entry, vanished, vanished_sizes)) is not None:
            entry, result.kept[slot] = source
            result.moved.add(slot)
        else:
            result.to_embed.append(slot)
        result.entries.append(entry)
    result.removed = len(vanished)
    return result


def _previous_rows(
    paths: list[str], previous: Store | None
) -> tuple[dict[tuple[str, int, int], tuple[Entry, int]], dict[str, tuple[Entry, int]]]:
    """The previous index's rows: by (path, size, mtime) for files still listed, and by content hash
    for those no longer listed (candidates for a move). Rows, not vectors: each vector is read from
    the index only when it is used, so no second copy of the index is made."""
    if previous is None:
        return {}, {}
    listed = set(paths)
    known, vanished = {}, {}
    for row, entry in enumerate(previous.entries()):
        if entry.path in listed:
            known[entry.key] = (entry, row)
        else:
            vanished[entry.sha256 or f"row-{row}"] = (entry, row)
    return known, vanished


def _moved(
    folder: Location, entry: Entry, vanished: dict[str, tuple[Entry, int]], sizes: set[int]
) -> tuple[Entry, int] | None:
    """A new path whose bytes equal a vanished entry's is that file, moved: re-key its vector.
    Hashing only when a vanished file had the same size keeps this cheap."""
    if entry.size not in sizes:
        return None
    digest = sha256_file(folder / entry.path)
    if digest not in vanished:
        return None
    old, row = vanished.pop(digest)
    return replace(entry, sha256=digest, phash=old.phash), row
