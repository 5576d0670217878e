"""Narrowing a search to part of the index: a folder, a modification-time range, a file-size range, on what the
manifest records of every file. `Filter` is what the command line, the server and the library pass down; the
index evaluates it (index/selection.py) and plans the search around the rows it keeps.

Parsing lives here, below every room, so that `query` and `GET /search` read "2024-05-01" or "2MB" alike and
refuse the same inputs with the same message.
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass, fields
from datetime import datetime, timezone

from retrieval.errors import UsageError

# Units a size may carry: decimal (kB, MB, GB, as file managers show them) and binary (KiB, MiB, GiB).
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20}
_UNITS |= {"g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Filter:
    """Which indexed files a search may return; every field None (or "") keeps them all.

    folder: a folder relative to the indexed root, POSIX separators, no trailing slash ("" for all);
    modified_after / modified_before: a half-open range of mtimes in ns since the epoch [after, before);
    min_size / max_size: a closed range of file sizes in bytes.
    """

    folder: str = ""
    modified_after: int | None = None
    modified_before: int | None = None
    min_size: int | None = None
    max_size: int | None = None

    def __post_init__(self) -> None:
        if None not in (self.modified_after, self.modified_before) and self.modified_after >= self.modified_before:
            raise UsageError("the modification-time range is empty: 'after' must be earlier than 'before'")
        if None not in (self.min_size, self.max_size) and self.min_size > self.max_size:
            raise UsageError(
                f"the size range is empty: the minimum {self.min_size} is over the maximum {self.max_size}"
            )

    def __bool__(self) -> bool:
        """Whether it narrows anything."""
        return any(getattr(self, f.name) not in (None, "") for f in fields(self))

    def describe(self) -> str:
        """The filter in words, for messages ("no indexed image in folder 2023/ modified after ...")."""
        said = [f"in folder {self.folder}/"] if self.folder else []
        if self.modified_after is not None:
            said.append(f"modified from {_shown(self.modified_after)}")
        if self.modified_before is not None:
            said.append(f"modified before {_shown(self.modified_before)}")
        if self.min_size is not None:
            said.append(f"of at least {self.min_size} bytes")
        if self.max_size is not None:
            said.append(f"of at most {self.max_size} bytes")
        return " and ".join(said) or "any"


def parse_filter(
    folder: str | None = None,
    modified_after: str | None = None,
    modified_before: str | None = None,
    min_size: str | None = None,
    max_size: str | None = None,
) -> Filter:
    """A Filter from what a user typed (UsageError naming the bad value; a field given empty is one): `folder`
    relative to the indexed root; dates as ISO 8601 ("2024-05-01", "2024-05-01T12:30", with or without an
    offset; without one, UTC); sizes in bytes or with a unit ("2MB", "1.5 MiB", "500k")."""
    return Filter(
        folder=parse_folder(folder) if folder is not None else "",
        modified_after=parse_time(modified_after, "modified after") if modified_after is not None else None,
        modified_before=parse_time(modified_before, "modified before") if modified_before is not None else None,
        min_size=parse_size(min_size, "minimum size") if min_size is not None else None,
        max_size=parse_size(max_size, "maximum size") if max_size is not None else None,
    )


def parse_folder(folder: str) -> str:
    """A folder as the manifest spells its paths: POSIX, normalized, no "./" or trailing "/"; "" for the root.
    A relative one is relative to the indexed root, and refused if it climbs out of it (`..`); an absolute
    one stays absolute, for the index to make relative to its root (`within`), or refuse."""
    text = folder.strip()
    if not text:
        raise UsageError("an empty folder narrows nothing: leave it out, or give '.' for the whole index")
    if "\x00" in text:
        raise UsageError("a folder cannot contain a NUL character")
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        raise UsageError(f"folder {folder!r} is outside the indexed folder")
    return "" if normal == "." else normal


def within(folder: str, root: str) -> str:
    """`folder` (parse_folder's) relative to the indexed `root`: an absolute one inside it made relative, one
    outside it refused."""
    if not folder.startswith("/"):
        return folder
    inside = posixpath.relpath(folder, posixpath.normpath(root)) if root.startswith("/") else ".."
    if inside == ".." or inside.startswith("../"):
        raise UsageError(f"folder {folder} is outside the indexed folder {root}")
    return "" if inside == "." else inside


def parse_time(text: str, what: str) -> int:
    """ns since the epoch of an ISO 8601 date or time; one without an offset is taken as UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"cannot read {text!r} as a date for {what}: give YYYY-MM-DD or an ISO 8601 time (2024-05-01T12:30)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000


def parse_size(text: str, what: str) -> int:
    """Bytes of a size given as a whole number of bytes or a number with a unit (kB, MiB, G …)."""
    match = _SIZE.match(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise UsageError(f"cannot read {text!r} as a size for {what}: give bytes, or a number with kB, MB, GB, MiB …")
    value = float(match.group(1)) * unit
    if not math.isfinite(value) or value > 2**63 - 1:
        raise UsageError(f"{text!r} is too large a size for {what}")
    return int(value)


def _shown(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="seconds")
