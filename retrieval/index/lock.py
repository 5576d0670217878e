"""One writer per index: an advisory lock on a file inside the index folder.

`flock` locks belong to the open file, so the kernel drops them when their process dies, however it
dies: a lock left by a killed ingest is simply free for the next one, with no staleness guess to make.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from retrieval.errors import IndexBusy, StoreError
from retrieval.index.generations import current_generation

LOCK_FILE = ".lock"


class IndexLock:
    """Hold the write lock of `folder` (created if needed) for a `with` block.

    `wait=False` raises IndexBusy at once when another process holds it; `wait=True` blocks until free.
    `existing=True`, for a writer that only changes an index (compact, repair, moves): IndexMissing when
    `folder` holds none, before anything is created, so a mistyped --index leaves no folder or lock file.
    """

    def __init__(self, folder: Path, *, wait: bool = False, existing: bool = False) -> None:
        self._folder = folder
        self._wait = wait
        self._existing = existing
        self._fd: int | None = None

    def __enter__(self) -> IndexLock:
        path = self._folder / LOCK_FILE
        if self._existing:
            current_generation(self._folder)
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot write to the index folder {self._folder}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self._wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise IndexBusy(
                f"index busy: an ingest (pid {holder}) is writing {self._folder}; wait for it to finish, or pass --wait"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
