"""The index on disk: FAISS vectors, a row-aligned manifest and metadata, saved and loaded as one unit.

Layout of an index folder::

    CURRENT            name of the live generation, replaced atomically
    gen-000007/
        vectors.faiss  row i is the vector of manifest row i
        manifest.npy   the manifest, columnar (manifest.py): per row the file's size, mtime and SHA-256,
        paths.bin        its path relative to the ingested root, and the rows in path order
        order.npy
        meta.json      format version, embedding (model, weights, preprocessing), metric, count,
                       file sizes and hashes, versions

Format 4 kept the manifest as JSON lines (manifest.jsonl), which took seconds to parse at a million rows:
such indexes load as they are, and their next save writes the columnar form.

A save writes a whole new generation and switches CURRENT to it only once it is complete and on disk
(generations.py), so a crash at any moment leaves the previous index loadable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from . import ann
from .ann import IndexChoice
from .durable import fsync_file
from .errors import EmptyIndex, IndexMismatch, StoreError, UsageError
from .files import sha256_file
from .generations import corrupt, current_generation, on_live_generation, publish
from .manifest import FILES as MANIFEST_FILES
from .manifest import Entry, Manifest

FORMAT = "retrieval-index"
FORMAT_VERSION = 5
# Version 4 differs only in its manifest's layout (JSON lines): it loads as it is.
JSONL_VERSION = 4
# Version 3 searched approximate kinds by inner product, which misranks real features (see ann.py); its
# flat indexes are unchanged and load as they are, its approximate ones are rebuilt by the next ingest.
LEGACY_VERSION = 3
VECTORS = "vectors.faiss"
MANIFEST = "manifest.jsonl"  # versions 3 and 4
META = "meta.json"
FLAT = IndexChoice("flat")
_FAISS_METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows: the one place vectors are normalized, for stored and query vectors alike.

    Checked explicitly rather than left to faiss, whose own checks are `assert`s that `python -O` drops.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise UsageError(f"vectors must be a 2-d array (n, dim), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise UsageError("vectors contain NaN or infinity")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise UsageError("a vector is all zeros and has no direction")
    if np.allclose(norms, 1.0, rtol=0, atol=1e-6):
        return np.ascontiguousarray(x)  # already unit length: no copy of a possibly huge array
    return np.ascontiguousarray(x / norms)


class Store:
    """An in-memory index with its manifest and metadata; `save` and `load` move it to and from disk."""

    def __init__(
        self, index: ann.VectorIndex, manifest: Manifest, meta: dict[str, Any], generation: str | None = None
    ) -> None:
        self._ann = index
        self._manifest = manifest
        self._meta = meta
        self.generation = generation  # the folder name it was loaded from or last saved to; None if neither

    @property
    def stale(self) -> bool:
        """Whether the search structure was built by a definition that has since changed (an approximate
        kind of format version 3): its vectors are sound, its search is not, and ingest rebuilds it."""
        return self._meta["format_version"] != FORMAT_VERSION

    @classmethod
    def create(
        cls,
        *,
        dim: int,
        metric: str,
        embedding: dict[str, Any],
        root: Path,
        runtime: dict[str, str],
        kind: IndexChoice = FLAT,
        recall_target: float = 0.95,
        memory_budget_gb: float = 0.0,
    ) -> Store:
        """An empty store. `embedding` says how vectors are made; a later query must embed the same way.
        `runtime` (engine, precision, versions) is recorded for the record, never compared. `kind` is
        the index kind asked for; it is built, and for `auto` chosen and tuned, at the first `add`."""
        if metric not in _FAISS_METRICS:
            raise UsageError(f"metric must be one of {', '.join(_FAISS_METRICS)}, not {metric!r}")
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dim": dim,
            "metric": metric,
            "root": str(root.resolve()),
            "embedding": embedding,
            "runtime": runtime,
            "index": {
                "requested": {**asdict(kind), "recall_target": recall_target, "memory_budget_gb": memory_budget_gb},
                "kind": "flat",
                "factory": "Flat",
            },
        }
        return cls(ann.VectorIndex.empty(dim, _FAISS_METRICS[metric]), Manifest.of([]), meta)

    # --- facts -----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._ann.count

    @property
    def dim(self) -> int:
        return self._ann.dim

    @property
    def metric(self) -> str:
        return str(self._meta["metric"])

    @property
    def root(self) -> Path:
        return Path(self._meta["root"])

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._meta)

    def entry(self, row: int) -> Entry:
        return self._manifest.entry(row)

    def entries(self) -> list[Entry]:
        return self._manifest.entries()

    def vectors(self) -> np.ndarray:
        """Every stored (normalized) vector in row order, (count, dim)."""
        return self._ann.reconstruct_all()

    def find(self, path: str) -> int | None:
        """Row of a manifest path (relative, POSIX), or None: a binary search, nothing built first."""
        return self._manifest.find(path)

    def vector(self, row: int) -> np.ndarray:
        """The stored (normalized) vector of `row`: a query by an indexed image needs no model."""
        return self._ann.reconstruct(row)

    def vectors_of(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """The stored (normalized) vectors of `rows`, (len(rows), dim): a chunk of a large index at a time."""
        return self._ann.reconstruct_batch(np.asarray(rows))

    def select(self, rows: list[int]) -> Store:
        """A new store holding only `rows`, in that order, with the same metadata and kind of index."""
        requested = self._meta["index"]["requested"]
        meta = self._meta
        store = Store.create(
            dim=self.dim,
            metric=self.metric,
            embedding=meta["embedding"],
            root=self.root,
            runtime=meta["runtime"],
            kind=ann.choice_from(requested),
            recall_target=requested["recall_target"],
            memory_budget_gb=requested["memory_budget_gb"],
        )
        if rows:
            store.add(self.vectors_of(rows), [self._manifest.entry(r) for r in rows])
        return store

    @property
    def requested_kind(self) -> dict[str, Any]:
        """The index kind and parameters asked for (before `auto` decided), to tell whether a setting changed."""
        return dict(self._meta["index"]["requested"])

    def check_embedding(
        self, embedding: dict[str, Any], remedy: str = "rebuild it with `retrieval ingest --full`"
    ) -> None:
        """Refuse vectors made differently from the stored ones, naming what differs and `remedy`."""
        stored = self._meta["embedding"]
        if embedding == stored:
            return
        keys = sorted(k for k in set(stored) | set(embedding) if stored.get(k) != embedding.get(k))
        diffs = "; ".join(f"{k}: index has {stored.get(k)!r}, now {embedding.get(k)!r}" for k in keys)
        raise IndexMismatch(f"the index was built with another model or preprocessing ({diffs}); {remedy}")

    # --- vectors ---------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, entries: Iterable[Entry]) -> None:
        entries = list(entries)
        x = normalize(vectors)
        if x.shape != (len(entries), self.dim):
            raise UsageError(f"got {x.shape[0]} vectors of dim {x.shape[1]} for {len(entries)} entries, dim {self.dim}")
        if self.count == 0:
            self._build(x)
            self._manifest = Manifest.of(entries)
        else:
            self._ann.add(x)
            self._manifest = Manifest.of(self._manifest.entries() + entries)

    def _build(self, x: np.ndarray) -> None:
        """The first vectors decide the index: built (trained, for PCA and IVF) and, for auto, tuned on them."""
        requested = self._meta["index"]["requested"]
        self._ann, description = ann.build_measured(
            ann.choice_from(requested),
            x,
            _FAISS_METRICS[self.metric],
            requested["recall_target"],
            requested["memory_budget_gb"] * 2**30,
        )
        self._meta["index"] = {"requested": requested, **description}

    @property
    def capabilities(self) -> ann.Capabilities:
        return self._ann.capabilities

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Top-k (row, score) per query, best first. Score: cosine similarity, or Euclidean distance for l2.

        Fewer than k pairs come back when the index holds fewer vectors; faiss's -1 fillers never do.
        """
        if k < 1:
            raise UsageError(f"k must be at least 1, not {k}")
        return self._ann.search(self._checked(queries), k)

    def range_search(self, queries: np.ndarray, threshold: float) -> list[list[tuple[int, float]]]:
        """Every (row, score) per query with a cosine of at least `threshold` (for l2: a distance of at
        most it), best first, scores exact; approximate kinds may miss some, as in `search`."""
        return self._ann.range_search(self._checked(queries), threshold)

    def _checked(self, queries: np.ndarray) -> np.ndarray:
        """Queries normalized and checked here, not by faiss, whose own checks are `assert`s."""
        q = normalize(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise UsageError(f"query vector has dimension {q.shape[1]}, the index has {self.dim}")
        if self.count == 0:
            raise EmptyIndex("the index is empty: no results")
        if self.stale:
            raise IndexMismatch(f"{warning(self._meta)} (nothing is embedded again); queries are refused until then")
        return q

    # --- disk ------------------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write a new generation and switch to it atomically (generations.publish). Returns its folder."""
        try:
            final = publish(folder, self._write_generation)
        except (OSError, RuntimeError) as e:  # faiss raises RuntimeError for a failed write
            raise StoreError(f"cannot save the index in {folder} ({e}); the previous index is untouched") from e
        self.generation = final.name
        return final

    def _write_generation(self, staging: Path) -> None:
        self._ann.write(staging / VECTORS)
        self._manifest.write(staging)
        meta = dict(self._meta)
        meta.update(
            format_version=FORMAT_VERSION,
            count=self.count,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            files={name: file_facts(staging / name) for name in (VECTORS, *MANIFEST_FILES)},
        )
        (staging / META).write_text(json.dumps(meta, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")
        for name in (VECTORS, *MANIFEST_FILES, META):
            fsync_file(staging / name)
        self._meta = meta

    @classmethod
    def load(cls, folder: Path, *, check_hashes: bool = False) -> Store:
        """Load and validate the live generation; refuse anything inconsistent with IndexCorrupt.

        The vectors are memory-mapped, not read: a query touches only what its search needs, so a
        fresh process answers in well under a second even on a large index. File sizes, row counts,
        dimension, metric and format are always checked; the SHA-256 of every file (a full read) only
        with `check_hashes`, as `retrieval verify` does.
        """
        return on_live_generation(folder, partial(cls._load_generation, check_hashes=check_hashes))

    @classmethod
    def _load_generation(cls, generation: Path, *, check_hashes: bool) -> Store:
        folder = generation.parent
        meta = read_meta(generation)
        for name, facts in meta["files"].items():
            if (generation / name).stat().st_size != facts.get("bytes"):
                raise corrupt(folder, f"{name} does not have the size recorded in {META}")
            if check_hashes and sha256_file(generation / name) != facts.get("sha256"):
                raise corrupt(folder, f"{name} does not have the SHA-256 recorded in {META}")
        choice, metric = ann.choice_from(meta["index"]), _FAISS_METRICS.get(meta["metric"])
        try:
            index = ann.VectorIndex.read(generation / VECTORS, choice, metric)
        except RuntimeError as e:
            raise corrupt(folder, f"faiss cannot read {VECTORS}: {e}") from e
        manifest = _read_manifest(generation, folder)
        counts = {"index": index.count, "manifest": len(manifest), "meta": meta["count"]}
        if len(set(counts.values())) != 1:
            raise corrupt(folder, f"row counts disagree: {counts}")
        searched = ann.searched_metric(choice, metric) if meta["format_version"] == FORMAT_VERSION else metric
        if index.dim != meta["dim"] or index.faiss.metric_type != searched:
            raise corrupt(folder, f"{VECTORS} does not have the dimension and metric recorded in {META}")
        return cls(index, manifest, meta, generation.name)


def warning(meta: dict[str, Any]) -> str | None:
    """What a user of this index should know about its search: a structure to rebuild, or a measured
    recall below the target. Printed by ingest, info and verify."""
    if meta["format_version"] != FORMAT_VERSION:
        return (
            f"this index's {meta['index'].get('factory')} search structure was built by an older retrieval and "
            "misranks results; run `retrieval ingest` on its folder to rebuild it from the stored vectors"
        )
    return ann.recall_warning(meta["index"])


def live_meta(folder: Path) -> dict[str, Any]:
    """The live generation's metadata, validated, without reading the vectors (for `info`)."""
    return on_live_generation(folder, read_meta)


def read_meta(generation: Path) -> dict[str, Any]:
    """The generation's metadata, checked for format and version; cheap, never touches the vectors."""
    folder = generation.parent
    try:
        meta = json.loads((generation / META).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(folder, f"{META} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise corrupt(folder, f"{META} is not a retrieval index description")
    version = meta.get("format_version")
    legacy_flat = (
        version == LEGACY_VERSION and isinstance(meta.get("index"), dict) and meta["index"].get("kind") == "flat"
    )
    if legacy_flat or version == JSONL_VERSION:
        meta["format_version"] = FORMAT_VERSION  # the same search; only the manifest's layout differs
    elif version not in (FORMAT_VERSION, LEGACY_VERSION):
        raise IndexMismatch(
            f"the index in {folder} has format version {meta.get('format_version')!r}; this retrieval reads "
            f"version {FORMAT_VERSION}. Rebuild it with `retrieval ingest --full`."
        )
    required = ("dim", "metric", "count", "root", "embedding", "files", "index")
    missing = [k for k in required if k not in meta]
    if missing:
        raise corrupt(folder, f"{META} lacks {', '.join(missing)}")
    if not isinstance(meta["files"], dict) or not isinstance(meta["embedding"], dict):
        raise corrupt(folder, f"{META} has malformed fields")
    return meta


def disk_size(folder: Path) -> int:
    """Bytes used by the live generation."""
    return sum(p.stat().st_size for p in current_generation(folder).iterdir())


def _read_manifest(generation: Path, folder: Path) -> Manifest:
    """The columnar manifest, memory-mapped; or a version 3-4 JSON-lines one, parsed into the same form."""
    if not (generation / MANIFEST).is_file():
        try:
            return Manifest.read(generation)
        except (OSError, ValueError) as e:
            raise corrupt(folder, f"the manifest is unreadable ({e})") from e
    lines = (generation / MANIFEST).read_text(encoding="utf-8").splitlines()
    try:
        rows = json.loads("[" + ",".join(lines) + "]")  # one call: five times faster than line by line
        return Manifest.of([Entry(**row) for row in rows])
    except (json.JSONDecodeError, TypeError) as e:
        raise corrupt(folder, f"{MANIFEST} is unreadable ({e})") from e


def file_facts(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, as meta.json records them and load checks them."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
