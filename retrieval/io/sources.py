"""Where the images are: a local folder, or a folder on any filesystem pyarrow reaches (s3://, gs://, hdfs://).

An index records its root as a resolved local path or as the URI it was given; its manifest's paths are
relative to that root either way. A remote root is an `ArrowPath`, which offers the few pathlib methods the
package uses on image paths (joining, name, suffix, stat, open), so readers take either alike. Every process
that reads it (the driver, each Ray worker) builds its own pyarrow filesystem from the URI, credentials
coming from its environment as pyarrow's clients take them (AWS_ACCESS_KEY_ID …): no shared mount needed.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from retrieval.errors import UsageError

LOCAL_SCHEMES = ("", "file")


@dataclass(frozen=True)
class Facts:
    """The stat fields a plan uses, as `os.stat_result` names them."""

    st_size: int
    st_mtime_ns: int


@dataclass(frozen=True)
class ArrowPath:
    """A file or folder `rel` below the root `uri` (query options such as `endpoint_override` included) on
    a pyarrow filesystem. `str()` shows it without the options; `uri` is what an index records."""

    uri: str  # the root as given
    rel: str = ""  # POSIX path below it
    data: bytes | None = field(default=None, compare=False, repr=False)  # the bytes, once `fetched`

    def __truediv__(self, other: str | os.PathLike[str]) -> ArrowPath:
        return ArrowPath(self.uri, str(PurePosixPath(self.rel, os.fspath(other))) if self.rel else os.fspath(other))

    def __str__(self) -> str:
        base = urlsplit(self.uri)._replace(query="").geturl().rstrip("/")
        return f"{base}/{self.rel}" if self.rel else base

    @property
    def name(self) -> str:
        return PurePosixPath(str(self)).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(str(self)).suffix

    def resolve(self) -> ArrowPath:
        return self

    def stat(self) -> Facts:
        info = self._info()
        if info.type.name == "Directory":
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(self))
        return Facts(info.size, info.mtime_ns or 0)

    def is_dir(self) -> bool:
        return self._info().type.name == "Directory"

    def open(self, mode: str = "rb") -> io.BytesIO:
        """The whole file in memory, fetched in one request: decoders read in small pieces and seek, which
        would otherwise be a request each."""
        if mode != "rb":
            raise ValueError(f"{self} can only be opened for reading")
        return io.BytesIO(self.read_bytes())

    def fetched(self) -> ArrowPath:
        """This file with its bytes fetched, for a reader that opens it more than once (decode, then hash)."""
        return replace(self, data=self.read_bytes())

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        fs, path = self._filesystem()
        try:
            with fs.open_input_stream(path) as stream:
                return stream.readall()
        except FileNotFoundError:  # pyarrow's own, for a missing object (or a prefix)
            raise
        except OSError as e:
            raise ConnectionError(errno.EIO, f"cannot read {self}: {e}") from e

    def files(self) -> list[tuple[str, Facts]]:
        """Every file below this folder: (path relative to it, its facts), in no particular order."""
        from pyarrow import fs as arrow_fs

        filesystem, path = self._filesystem()
        selector = arrow_fs.FileSelector(path, recursive=True)
        try:
            infos = filesystem.get_file_info(selector)
        except OSError as e:
            raise UsageError(f"cannot list {self}: {e}") from e
        return [
            (info.path[len(path) :].lstrip("/"), Facts(info.size, info.mtime_ns or 0))
            for info in infos
            if info.type.name == "File"
        ]

    def _filesystem(self) -> tuple[Any, str]:
        filesystem, base = filesystem_of(self.uri)
        return filesystem, f"{base.rstrip('/')}/{self.rel}" if self.rel else base

    def _info(self) -> Any:
        filesystem, path = self._filesystem()
        try:
            info = filesystem.get_file_info(path)
        except OSError as e:
            raise ConnectionError(errno.EIO, f"cannot reach {self}: {e}") from e
        if info.type.name == "NotFound":
            raise FileNotFoundError(errno.ENOENT, "no such file", str(self))
        return info


Location = Path | ArrowPath  # an image root, or a file under one


def location(text: str | os.PathLike[str]) -> Location:
    """A local path for a plain path or a file:// URI; an ArrowPath for any other scheme.

    Credentials in the URI are refused: the index would record them, and every reader would see them."""
    text = os.fspath(text)
    parts = urlsplit(text)
    if "://" not in text or parts.scheme in LOCAL_SCHEMES:
        return Path(parts.path if parts.scheme == "file" else text)
    if parts.username or parts.password:
        raise UsageError(
            f"{parts.scheme}:// root with credentials in it: give them through the environment instead "
            "(for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), so that the index does not record them"
        )
    return ArrowPath(text.rstrip("/"))  # the filesystem is made at the first use: listing paths needs none


def recorded(root: Location) -> str:
    """How an index records its root: the resolved local path, or the URI with its options."""
    return root.uri if isinstance(root, ArrowPath) else str(root.resolve())


GCS_RETRY_SECONDS = 10  # pyarrow's GCS client otherwise retries an unreachable bucket for many minutes


def _bounded(uri: str) -> str:
    """`uri` with a bound on the time a client retries, where its filesystem needs one and the URI sets none
    (S3's client gives up within seconds by itself; measured: 6 s)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("gs", "gcs") or "retry_limit_seconds=" in parts.query:
        return uri
    return parts._replace(
        query="&".join(filter(None, [parts.query, f"retry_limit_seconds={GCS_RETRY_SECONDS}"]))
    ).geturl()


@lru_cache(maxsize=8)
def filesystem_of(uri: str) -> tuple[Any, str]:
    """pyarrow's filesystem for `uri` and the path on it, built once per process (an S3 client resolves its
    credentials and region when it is made)."""
    from pyarrow import fs as arrow_fs

    try:
        return arrow_fs.FileSystem.from_uri(_bounded(uri))
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"cannot use {uri}: {e}") from e


def special_kind(mode: int) -> str:
    """A file type other than a regular file, in words."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"


class SpecialFile(OSError):
    """A path that names a FIFO, socket, device or folder where a file's bytes are to be read."""


def open_regular(path: Location) -> BinaryIO:
    """Open a file for reading in binary, refusing at once anything but a regular file (SpecialFile).

    Opened with O_NONBLOCK, which regular files ignore: a plain open() of a FIFO waits for a writer forever,
    and neither the decoding thread nor Ctrl-C gets it back."""
    if isinstance(path, ArrowPath):
        return path.open("rb")
    return open(path, "rb", opener=_regular_only)


def _regular_only(name: str, flags: int) -> int:
    fd = os.open(name, flags | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SpecialFile(errno.EINVAL, special_kind(mode), name)
    return fd
