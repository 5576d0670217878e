"""Finding the image files under a folder: a deterministic, loop-safe walk that reports what it cannot read."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from retrieval.errors import UsageError
from retrieval.io.sources import ArrowPath, Facts, Location, open_regular, special_kind

# Formats we decode, by extension: Pillow's own, HEIF (pillow-heif) and JPEG XL (pillow-jxl-plugin). The format
# itself is sniffed from the bytes, never trusted from the name; the extension only decides which files of a
# folder are meant to be images.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .avif"
    " .heic .heif .hif .jxl".split()
)
# Camera RAW files, which LibRaw (rawpy) decodes: their extension decides that LibRaw is asked first, since
# most are TIFF inside and Pillow would read their small first picture instead.
RAW_EXTENSIONS = frozenset(
    ".dng .cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .raf .orf .rw2 .rwl .pef .srw .x3f .3fr .iiq .erf .mrw".split()
)
# Image formats a user may well have that we do not decode: listed so that they are reported as
# "unsupported format" instead of silently ignored.
FOREIGN_EXTENSIONS = frozenset(".svg .psd .xcf".split())


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
    return suffix in IMAGE_EXTENSIONS or suffix in RAW_EXTENSIONS or suffix in FOREIGN_EXTENSIONS


def list_images(root: Location) -> Listing:
    """Walk `root` recursively, following symlinks but never entering a folder twice (so loops end).

    Paths are sorted so that two runs over the same folder give the same manifest order. A sub-folder
    that cannot be read is reported and its siblings are still walked; so is an image-named entry that is
    not a regular file (a FIFO would block the decoder's open() for good).
    """
    if isinstance(root, ArrowPath):
        return _list_remote(root)
    if not root.exists():
        raise UsageError(f"folder {root} does not exist")
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    listing = Listing(root=root)
    seen: set[tuple[int, int]] = set()
    folders = [""]  # relative POSIX paths still to read; each one's entries come from one scandir
    while folders:
        rel = folders.pop()
        try:
            st = os.stat(root / rel)
            with os.scandir(root / rel) as it:
                entries = list(it)
        except OSError as err:
            reason = "permission denied" if isinstance(err, PermissionError) else "unreadable folder"
            listing.errors.append(Skipped(rel or ".", reason, err.strerror or str(err)))
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if _is_dir(entry):
                folders.append(path)
            elif is_image_name(entry.name):
                if (special := _special(entry)) is None:
                    listing.paths.append(path)
                else:
                    listing.errors.append(Skipped(path, NOT_REGULAR, special))
    listing.paths.sort()
    return listing


NOT_REGULAR = "not a regular file"


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows a symlink, as the walk does
    except OSError:
        return False


def _special(entry: os.DirEntry[str]) -> str | None:
    """What an entry is when it is neither a regular file nor a broken link (which the decoder reports as
    not found): "a FIFO", "a socket", "a device"; None for a file to decode."""
    try:
        if entry.is_file():
            return None
        return special_kind(os.stat(entry.path).st_mode)
    except OSError:
        return None


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
    with open_regular(path) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def printable(path: str | os.PathLike[str]) -> str:
    """A path fit for a terminal or a picture: bytes that are not UTF-8 (surrogate escapes) shown as \\xNN."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
