"""Writing files so that a crash leaves either the old content or the new, never a part: every file the
project writes goes through here (index generations, the CURRENT pointer, checkpoints, the error report,
collages, benchmark results). The one folder written by another library, OpenVINO's converted model, is
staged the same way and renamed into place whole (place_folder: the converted and the int8 models)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY = ".tmp-"  # the prefix of every staging name; whatever carries it after a crash is garbage


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (on POSIX a folder opened read-only fsyncs like a file)."""
    fsync_file(path)


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary sibling of `path`, flush and fsync it, rename it over `path` and fsync
    the folder: `path` then holds the old bytes or the new ones, whenever the machine stops."""
    staging = path.with_name(f"{TEMPORARY}{path.name}-{os.getpid()}")
    try:
        with open(staging, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def place_folder(staging: Path, target: Path) -> None:
    """Rename a folder written in full at `staging` to `target`: a reader finds all of it or none. Where a
    concurrent writer placed `target` first (a cache keyed by its content: the same folder), theirs is kept
    and the staged copy removed."""
    try:
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))
