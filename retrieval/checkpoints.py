"""Vectors of a running ingest, saved in pieces as it goes, so that a killed run resumes where it stopped.

Each piece is one self-describing .npz (the hash of the run's embedding description, the manifest entries,
the vectors), written under a temporary name, fsynced and renamed: it is either whole or absent. A piece
whose embedding differs from the current run's, or that cannot be read, is ignored. Pieces are deleted once
their vectors are in a saved index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import identity
from .durable import TEMPORARY, write_atomically
from .store import Entry

PENDING = "pending"


def embedding_key(embedding: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity(embedding), sort_keys=True).encode()).hexdigest()


class Checkpoints:
    """The pending pieces of ingests into one index, for one embedding (backbones.describe_embedding)."""

    def __init__(self, index: Path, embedding: dict[str, Any]) -> None:
        self._folder = index / PENDING
        self._key = embedding_key(embedding)

    def load(self) -> list[tuple[Entry, np.ndarray]]:
        """Every (entry, vector) saved by earlier runs with this embedding; leftovers of crashes removed."""
        if not self._folder.is_dir():
            return []
        found = []
        for path in sorted(self._folder.iterdir()):
            if path.name.startswith(TEMPORARY):
                path.unlink(missing_ok=True)  # a piece a crash interrupted while being written
                continue
            try:
                with np.load(path, allow_pickle=False) as piece:
                    if str(piece["identity"]) != self._key:
                        continue
                    entries = [Entry(**e) for e in json.loads(str(piece["entries"]))]
                    vectors = piece["vectors"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable: its images are simply embedded again
            if len(entries) == len(vectors):
                found.extend(zip(entries, vectors))
        return found

    def save(self, entries: list[Entry], vectors: np.ndarray) -> None:
        """Write one piece atomically."""
        self._folder.mkdir(parents=True, exist_ok=True)
        write_atomically(
            self._folder / f"piece-{time.time_ns()}-{os.getpid()}.npz",
            lambda f: np.savez(
                f,
                identity=np.array(self._key),  # the embedding's key; "identity" is the field's name on disk
                entries=np.array(json.dumps([asdict(e) for e in entries], ensure_ascii=True)),
                vectors=np.asarray(vectors, dtype=np.float32),
            ),
        )

    def clear(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)
