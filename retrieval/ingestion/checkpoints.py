"""Vectors of a running ingest, saved in pieces as it goes, so that a killed run resumes where it stopped,
and so that a run never holds more than one piece's vectors in memory.

A piece is two files: `piece-<time>-<pid>.npy`, the vectors, and `piece-<time>-<pid>.json`, which names
the hash of the run's embedding description and the manifest entries. Each is written under a temporary
name, fsynced and renamed, the vectors first: a piece is whole once its JSON is there, and a vectors file
without one (a crash between the two renames) is garbage. A piece whose embedding differs from the current
run's, or that cannot be read, is ignored. Vectors are read back memory-mapped: the commit reads them from
the page cache as it builds, instead of from a copy of every vector in memory. Pieces are deleted once
their vectors are in a saved index.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from retrieval.embedding.backbones import identity
from retrieval.errors import StoreError
from retrieval.index.manifest import Entry
from retrieval.io.durable import TEMPORARY, write_atomically

PENDING = "pending"


def embedding_key(embedding: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity(embedding), sort_keys=True).encode()).hexdigest()


class Checkpoints:
    """The pending pieces of ingests into one index, for one embedding (backbones.describe_embedding)."""

    def __init__(self, index: Path, embedding: dict[str, Any]) -> None:
        self._folder = index / PENDING
        self._key = embedding_key(embedding)

    def load(self) -> list[tuple[Entry, np.ndarray]]:
        """Every (entry, vector) saved by earlier runs with this embedding, the vectors memory-mapped;
        leftovers of crashes removed."""
        if not self._folder.is_dir():
            return []
        found = []
        for path in sorted(self._folder.iterdir()):
            if path.name.startswith(TEMPORARY) or (path.suffix == ".npy" and not path.with_suffix(".json").exists()):
                path.unlink(missing_ok=True)  # interrupted while being written, or before its JSON was
            elif path.suffix == ".json":
                found.extend(self._read(path))
        return found

    def _read(self, path: Path) -> list[tuple[Entry, np.ndarray]]:
        """One piece's (entry, vector) pairs; none when it is another embedding's or cannot be read (its
        images are then simply embedded again)."""
        try:
            facts = json.loads(path.read_text(encoding="utf-8"))
            if facts["identity"] != self._key:
                return []
            entries = [Entry(**e) for e in facts["entries"]]
            vectors = _mapped(path.with_suffix(".npy"))
        except (OSError, ValueError, KeyError, TypeError):
            return []
        if vectors.ndim != 2 or len(entries) != len(vectors):
            return []
        return list(zip(entries, vectors))

    def save(self, entries: list[Entry], vectors: np.ndarray) -> np.ndarray:
        """Write one piece atomically; returns its vectors as saved, memory-mapped, for the caller to hold
        instead of its own copy."""
        name = self._folder / f"piece-{time.time_ns()}-{os.getpid()}"
        facts = json.dumps({"identity": self._key, "entries": [asdict(e) for e in entries]}, ensure_ascii=True)
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            write_atomically(name.with_suffix(".npy"), partial(_write_npy, np.asarray(vectors, dtype=np.float32)))
            write_atomically(name.with_suffix(".json"), lambda f: f.write(facts.encode()))
        except OSError as e:
            raise StoreError(
                f"cannot save embedded vectors in {self._folder} ({e}); the previous index is untouched, and "
                "the vectors saved there before resume on the next run"
            ) from e
        return _mapped(name.with_suffix(".npy"))

    def clear(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def _write_npy(array: np.ndarray, f: BinaryIO) -> None:
    """`array` as a .npy file, written by Python's own file object (numpy's `tofile` reports a full disk
    as "N requested and M written", without saying why)."""
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
    f.write(memoryview(np.ascontiguousarray(array)).cast("B"))


def _mapped(path: Path) -> np.ndarray:
    """A vectors file memory-mapped; read into memory instead where the process may map no more (Linux
    allows about 65,000 mappings: pieces of a few vectors each, over a very large folder)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as e:
        if e.errno != errno.ENOMEM:
            raise
        return np.load(path, allow_pickle=False)
