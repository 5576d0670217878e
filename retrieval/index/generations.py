"""Generations of an index folder: each save is a whole new `gen-NNNNNN/` folder, staged under a temporary
name, fsynced, renamed into place, and only then made live by atomically replacing the `CURRENT` pointer.
The previous generation is kept until the next save, so a reader that read CURRENT just before a switch
still finds its files; older ones, and staging left by a crash, are deleted.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from retrieval.errors import IndexCorrupt, IndexMissing, StoreError
from retrieval.io.durable import TEMPORARY, fsync_dir, write_text_atomically
from retrieval.io.sources import SpecialFile, open_regular

POINTER = "CURRENT"
_GENERATION = re.compile(r"gen-(\d{6,})")
T = TypeVar("T")


def publish(folder: Path, write: Callable[[Path], T]) -> tuple[Path, T]:
    """Stage a new generation with `write(staging_folder)` (which must fsync what it writes), then make it
    live. Returns its folder and what `write` returned. On any failure nothing of it stays visible and the
    live one is untouched."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries(folder)
    try:
        previous = _current_name(folder)
    except IndexCorrupt:  # a damaged pointer is what this save replaces (`ingest --full`, the remedy named)
        previous = None
        if (folder / POINTER).is_dir() and not (folder / POINTER).is_symlink():
            shutil.rmtree(folder / POINTER)  # a rename cannot replace a folder
    final = folder / f"gen-{_next_number(folder):06d}"
    staging = folder / f"{TEMPORARY}{final.name}-{os.getpid()}"
    staging.mkdir()
    try:
        written = write(staging)
        fsync_dir(staging)
        os.rename(staging, final)
        fsync_dir(folder)
        write_text_atomically(folder / POINTER, final.name + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if _current_name(folder) != final.name:
            shutil.rmtree(final, ignore_errors=True)
        raise
    for p in folder.iterdir():
        if _GENERATION.fullmatch(p.name) and p.name not in (final.name, previous):
            shutil.rmtree(p, ignore_errors=True)
    return final, written


def current_generation(folder: Path) -> Path:
    """The live generation's folder, or IndexMissing when `folder` holds no index."""
    name = _current_name(folder)
    if name is None:
        raise IndexMissing(f"no index in {folder}: build one with `retrieval ingest FOLDER --index {folder}`")
    if not _GENERATION.fullmatch(name):
        raise corrupt(folder, f"{POINTER} names {name!r}, not a generation")
    return folder / name


def on_live_generation(folder: Path, read: Callable[[Path], T]) -> T:
    """Run `read` on the live generation; if its files vanish because a save switched generations
    meanwhile, read the new one instead."""
    for _ in range(3):
        generation = current_generation(folder)
        try:
            return read(generation)
        except FileNotFoundError:
            if current_generation(folder) == generation:  # not a concurrent switch: really missing
                raise corrupt(folder, f"files of {generation.name} are missing") from None
    raise StoreError(f"the index in {folder} keeps changing while being loaded; try again")


def corrupt(folder: Path, why: str) -> IndexCorrupt:
    return IndexCorrupt(f"the index in {folder} is corrupt ({why}); rebuild it with `retrieval ingest --full`")


def remove_temporaries(folder: Path) -> None:
    """Staging files left by a crashed save are never live: delete them."""
    for p in folder.glob(f"{TEMPORARY}*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _current_name(folder: Path) -> str | None:
    """The pointer's text; None when there is none. Read with a bound, and refused at once when it is not a
    regular file (a FIFO would block the read), so a damaged pointer is IndexCorrupt, never a hang."""
    try:
        with open_regular(folder / POINTER) as f:
            return f.read(256).decode("utf-8").strip()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise IndexMissing(f"{folder} is a file, not an index folder") from None
    except SpecialFile as e:
        raise corrupt(folder, f"{POINTER} is {e.strerror}") from None
    except UnicodeDecodeError:
        raise corrupt(folder, f"{POINTER} is not UTF-8 text") from None
    except OSError as e:
        raise StoreError(f"cannot read {folder / POINTER}: {e.strerror or e}") from None


def _next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _GENERATION.fullmatch(p.name))]
    return max(numbers, default=0) + 1
