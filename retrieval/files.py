"""Finding the image files under a folder: a deterministic, loop-safe walk that reports what it cannot read."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .sources import ArrowPath, Facts, Location

# Formats Pillow decodes, by extension. The format itself is sniffed from the bytes, never trusted from
# the name; the extension only decides which files of a folder are meant to be images.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .avif".split()
)
# Image formats a user may well have but Pillow cannot read without a plugin: listed so that they are
# reported as "unsupported format" instead of silently ignored.
FOREIGN_EXTENSIONS = frozenset(".heic .heif .svg .jxl .psd .cr2 .nef .arw .dng".split())


@dataclass(frozen=True)
class Skipped:
    """A file (or folder) that was not indexed, with a short fixed reason and the underlying detail."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class Listing:
    """The outcome of a walk: image paths relative to the root (sorted, POSIX) and what could not be read.
    `facts` holds each file's size and mtime where the listing brought them (a remote one: one request per
    file to ask again would dominate a large run); a local plan asks the file system itself."""

    root: Location
    paths: list[str] = field(default_factory=list)
    errors: list[Skipped] = field(default_factory=list)
    facts: dict[str, Facts] = field(default_factory=dict)


def is_image_name(name: str) -> bool:
    suffix = os.path.splitext(name)[1].lower()
    return suffix in IMAGE_EXTENSIONS or suffix in FOREIGN_EXTENSIONS


def list_images(root: Location) -> Listing:
    """Walk `root` recursively, following symlinks but never entering a folder twice (so loops end).

    Paths are sorted so that two runs over the same folder give the same manifest order. A sub-folder
    that cannot be read is reported and its siblings are still walked.
    """
    if isinstance(root, ArrowPath):
        return _list_remote(root)
    if not root.exists():
        raise UsageError(f"folder {root} does not exist")
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    listing = Listing(root=root)
    seen: set[tuple[int, int]] = set()

    def on_error(err: OSError) -> None:
        where = os.path.relpath(err.filename, root) if err.filename else "."
        reason = "permission denied" if isinstance(err, PermissionError) else "unreadable folder"
        listing.errors.append(Skipped(Path(where).as_posix(), reason, err.strerror or str(err)))

    for folder, dirs, files in os.walk(root, onerror=on_error, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError as err:
            on_error(err)
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for name in files:
            if is_image_name(name):
                listing.paths.append(Path(rel, name).as_posix() if rel != "." else name)
    listing.paths.sort()
    return listing


def _list_remote(root: ArrowPath) -> Listing:
    """The image files below a remote folder, with the sizes and mtimes its listing gave."""
    try:
        if not root.is_dir():
            raise UsageError(f"{root} is not a folder")
    except FileNotFoundError:
        raise UsageError(f"folder {root} does not exist") from None
    except ConnectionError as e:
        raise UsageError(str(e)) from e
    facts = {rel: f for rel, f in root.files() if is_image_name(rel)}
    return Listing(root=root, paths=sorted(facts), facts=facts)


def sha256_file(path: Location, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so that a large weights or index file is never held whole."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def printable(path: str | os.PathLike[str]) -> str:
    """A path fit for a terminal or a picture: bytes that are not UTF-8 (surrogate escapes) shown as \\xNN."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
