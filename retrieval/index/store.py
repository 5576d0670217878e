"""The index on disk: segments of FAISS vectors with row-aligned manifests, deletion markers and metadata,
saved and loaded as one unit.

Layout of an index folder::

    CURRENT                   name of the live generation, replaced atomically
    gen-000007/
        meta.json             format version, embedding (model, weights, preprocessing), metric, count,
                              the segments in row order, the size and SHA-256 of every file, versions
        seg-000001/           a segment (segments.py), never changed once written:
            vectors.faiss       its vectors in an index of its own kind
            manifest.npy        its manifest, columnar (manifest.py): per row the file's size, mtime and
            paths.bin           SHA-256, its path relative to the ingested root, and the rows in path order
            order.npy
        seg-000001.deleted.npy  the rows of seg-000001 this generation has deleted (only if any)
        seg-000004/ ...

A save writes a new generation and switches CURRENT to it only once it is complete and on disk
(generations.py), so a crash at any moment leaves the previous index loadable. Segments it shares with
the previous generation are hard links to the same files: a commit writes only its new segment and the
deletion markers, in proportion to the change.

The Store is a facade over the rooms of this package: row numbers across segments (rows.py), what a new
segment is built as and when segments merge (building.py), the fan-out search (fanout.py), a generation's
files (segment_files.py, generations.py) and the record (record.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.ann import indexes as ann
from retrieval.ann.indexes import IndexChoice
from retrieval.errors import EmptyIndex, IndexMismatch, StoreError, UsageError
from retrieval.filters import Filter
from retrieval.index.building import DEFAULT_TUNING, FLAT, Tuning, build_segment, merge_segments
from retrieval.index.fanout import FanOut
from retrieval.index.generations import on_live_generation, publish
from retrieval.index.manifest import Entry, Manifest
from retrieval.index.record import IndexRecord
from retrieval.index.rows import Rows
from retrieval.index.segment_files import FAISS_METRICS, read_generation, write_generation
from retrieval.index.segments import Segment, live_entries, live_phashes, live_vectors
from retrieval.index.selection import Selections
from retrieval.io.sources import Location, recorded
from retrieval.vectors import normalize


class Store:
    """An index as segments (segments.py) with metadata; `save` and `load` move it to and from disk.

    Rows are numbered 0..count-1 over the live rows of every segment, in segment order. `add` writes a
    new segment, `delete` marks rows, `merge` applies the merge policy; none of them touches a segment
    already written, and `save` writes only what is new, linking the rest into the new generation.
    """

    def __init__(
        self,
        segments: list[Segment],
        record: IndexRecord,
        generation: Path | None = None,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> None:
        self._segments = segments
        self._record = record
        self._tuning = tuning
        self._folder = generation  # where the segments with files lie: the generation loaded or last saved
        self._rows = Rows(segments)
        self._fanout = FanOut(segments, self._rows.starts, record.metric, tuning.worker_thread)
        self._selections = Selections(segments, str(record.location))

    @property
    def generation(self) -> str | None:
        """The folder name it was loaded from or last saved to; None if neither."""
        return self._folder.name if self._folder else None

    @classmethod
    def create(
        cls,
        *,
        dim: int,
        metric: str,
        embedding: dict[str, Any],
        root: Location,
        runtime: dict[str, str],
        kind: IndexChoice = FLAT,
        recall_target: float = 0.95,
        memory_budget_gb: float = 0.0,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> Store:
        """An empty store. `embedding` says how vectors are made; a later query must embed the same way.
        `runtime` (engine, precision, versions) is recorded for the record, never compared. `kind` is
        the index kind asked for; each segment is built with it, and for `auto` chosen and tuned, when
        its vectors arrive."""
        if metric not in FAISS_METRICS:
            raise UsageError(f"metric must be one of {', '.join(FAISS_METRICS)}, not {metric!r}")
        requested = {**asdict(kind), "recall_target": recall_target, "memory_budget_gb": memory_budget_gb}
        record = IndexRecord(dim, metric, recorded(root), embedding, runtime, index={})
        return cls([], record.with_index(requested, []), tuning=tuning)

    @property
    def count(self) -> int:
        return self._rows.count

    @property
    def dim(self) -> int:
        return self._record.dim

    @property
    def metric(self) -> str:
        return self._record.metric

    @property
    def root(self) -> Location:
        """The ingested folder: a local path, or a sources.ArrowPath for a URI (s3://...)."""
        return self._record.location

    @property
    def record(self) -> IndexRecord:
        """What the index records of itself (record.py); as of the last change, `count` and `files` as of
        the last save."""
        return self._record

    @property
    def segments(self) -> list[dict[str, Any]]:
        """Each segment's name, rows written, rows deleted and index kind, in row order."""
        return [_summary(s) for s in self._segments]

    def entry(self, row: int) -> Entry:
        return self._rows.entry(row)

    def entries(self) -> list[Entry]:
        """Every live row's entry, in row order."""
        return live_entries(self._segments)

    def entries_of(self, rows: np.ndarray | list[int]) -> list[Entry]:
        """The entries of `rows`: a chunk of a large index at a time, as `vectors_of` reads their vectors."""
        return self._rows.entries_of(rows)

    def vectors(self) -> np.ndarray:
        """Every stored (normalized) vector in row order, (count, dim)."""
        return live_vectors(self._segments) if self._segments else np.empty((0, self.dim), np.float32)

    def perceptual_hashes(self) -> np.ndarray:
        """Every live row's perceptual hash and its mirror image's (io/perceptual.py), (count, 16) uint8, in
        row order; zeros for rows written before hashes were (see `hashed`)."""
        return live_phashes(self._segments)

    @property
    def hashed(self) -> bool:
        """Whether every segment has its rows' perceptual hashes (an index built before them has none)."""
        return all(s.manifest.has_phashes for s in self._segments)

    def row_of(self, path: str) -> int | None:
        """Row of a manifest path (relative, POSIX), or None: a binary search per segment, nothing built."""
        return self._rows.row_of(path)

    def vector(self, row: int) -> np.ndarray:
        """The stored (normalized) vector of `row`: a query by an indexed image needs no model."""
        return self._rows.vectors_of([row], self.dim)[0]

    def vectors_of(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """The stored (normalized) vectors of `rows`, (len(rows), dim): a chunk of a large index at a time."""
        return self._rows.vectors_of(rows, self.dim)

    def record_runtime(self, runtime: dict[str, Any]) -> None:
        """Record the engine and versions of the run that last changed the vectors."""
        self._record = replace(self._record, runtime=runtime)

    def add(self, vectors: np.ndarray, entries: Iterable[Entry]) -> None:
        """Add rows as a new segment, its index built (and for `auto` chosen and tuned) on them alone."""
        entries = list(entries)
        x = normalize(vectors)
        if x.shape != (len(entries), self.dim):
            raise UsageError(f"got {x.shape[0]} vectors of dim {x.shape[1]} for {len(entries)} entries, dim {self.dim}")
        if entries:
            self._segments.append(self._build(x, entries))
            self._changed()

    def delete(self, rows: np.ndarray | list[int]) -> None:
        """Mark `rows` deleted (row numbers as they are before this call); their segments stay as written."""
        for i, _, local in self._rows.split(rows):
            self._segments[i] = self._segments[i].with_deleted(local)
        self._changed()

    def merge(self, *, everything: bool = False, entries: list[Entry] | None = None) -> int:
        """Merge what the merge policy says is due (building.merges_due), or with `everything` all segments
        into one without its deleted rows, and drop segments with no live rows; rows keep their order.
        `entries` (with `everything`): the rows' entries in place of the manifests' (how hashes come into an
        index built before them). Returns how many segments were merged away."""
        before = len(self._segments)
        if entries is not None and (not everything or len(entries) != self.count):
            raise UsageError(f"new entries replace every row at once: {self.count} of them, not {len(entries)}")
        scratch = self._folder.parent if self._folder else None  # where a large merge maps its vectors
        merged = merge_segments(self._segments, self._build, everything, scratch, self._tuning.mapped_rows, entries)
        self._segments = merged
        self._changed()
        return before - len(merged)

    def _build(self, x: np.ndarray, entries: list[Entry]) -> Segment:
        """A new segment over `x`, built as building.build_segment decides, named next in the record."""
        metric = FAISS_METRICS[self.metric]
        index, description = build_segment(self._segments, x, self._record.requested, metric, self._tuning)
        number = self._record.next_segment
        self._record = replace(self._record, next_segment=number + 1)
        return Segment(f"seg-{number:06d}", index, Manifest.of(entries), description)

    def _changed(self) -> None:
        self._rows = Rows(self._segments)
        self._fanout = FanOut(self._segments, self._rows.starts, self.metric, self._tuning.worker_thread)
        self._selections = Selections(self._segments, str(self.root))
        live = [(s.live, s.description) for s in self._segments]
        self._record = self._record.with_index(self._record.requested, live)

    @property
    def capabilities(self) -> ann.Capabilities:
        return ann.Capabilities(exact=all(s.index.capabilities.exact for s in self._segments), range_search=True)

    def search(self, queries: np.ndarray, k: int, where: Filter | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (row, score) per query, best first. Score: cosine similarity, or Euclidean distance for l2.

        Each segment's top-k, merged: exact scores compare across segments. Scan segments coded alike are
        searched as one group (segments.searchers), and the largest segment on a worker thread meanwhile
        (`concurrently`). Fewer than k pairs come back when the index holds fewer vectors; faiss's -1
        fillers never do. `where`: only among the rows it keeps (selection.py), each segment's search
        planned by how many those are (ann/filtered.py); none kept, no hits.
        """
        if k < 1:
            raise UsageError(f"k must be at least 1, not {k}")
        queries = self._checked(queries)
        if not where:
            return self._fanout.search(queries, k)
        return self._fanout.search_within(queries, k, self._selections.of(where), self._tuning.filtering)

    def kept(self, where: Filter) -> np.ndarray:
        """The rows `where` keeps, sorted (dupes: one folder at a time)."""
        return self._rows.of_segments([a.rows for a in self._selections.of(where)])

    def range_search(self, queries: np.ndarray, threshold: float) -> list[list[tuple[int, float]]]:
        """Every (row, score) per query with a cosine of at least `threshold` (for l2: a distance of at
        most it), best first, scores exact; approximate kinds may miss some, as in `search`."""
        return self._fanout.range_search(self._checked(queries), threshold)

    def _checked(self, queries: np.ndarray) -> np.ndarray:
        """Queries normalized and checked here, not by faiss, whose own checks are `assert`s."""
        q = normalize(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise UsageError(f"query vector has dimension {q.shape[1]}, the index has {self.dim}")
        if self.count == 0:
            raise EmptyIndex("the index is empty: no results")
        if self._record.stale:
            raise IndexMismatch(f"{self._record.warning()} (nothing is embedded again); queries are refused until then")
        return q

    def save(self, folder: Path) -> Path:
        """Write a new generation and switch to it atomically (generations.publish). Returns its folder.

        Only new segments and the deletion markers are written; segments already on disk are hard-linked
        from the generation they were loaded from (the same bytes, not a copy)."""
        write = partial(write_generation, segments=self._segments, record=self._record, loaded_from=self._folder)
        try:
            final, (self._segments, self._record) = publish(folder, write)
        except (OSError, RuntimeError) as e:  # faiss raises RuntimeError for a failed write
            raise StoreError(f"cannot save the index in {folder} ({e}); the previous index is untouched") from e
        self._folder = final
        return final

    @classmethod
    def load(cls, folder: Path, *, check_hashes: bool = False, tuning: Tuning = DEFAULT_TUNING) -> Store:
        """Load and validate the live generation; refuse anything inconsistent with IndexCorrupt.

        The vectors are memory-mapped, not read: a query touches only what its search needs, so a
        fresh process answers in well under a second even on a large index. File sizes, row counts,
        dimension, metric and format are always checked; the SHA-256 of every file (a full read) only
        with `check_hashes`, as `retrieval verify` does.
        """

        def loaded(generation: Path) -> Store:
            return cls(*read_generation(generation, check_hashes), generation, tuning)

        return on_live_generation(folder, loaded)


def _summary(segment: Segment) -> dict[str, Any]:
    return {"name": segment.name, "rows": segment.rows, "deleted": len(segment.deleted), "index": segment.description}
