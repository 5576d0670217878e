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

Format 5 kept one segment's files directly in the generation folder, and format 4 its manifest as JSON
lines (manifest.jsonl, seconds to parse at a million rows): such indexes load as they are, and their next
save moves them into a segment (format 5's files by hard link, format 4's written anew).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.ann import indexes as ann
from retrieval.ann.indexes import IndexChoice
from retrieval.ann.tuning import build_like, build_measured
from retrieval.embedding.backbones import identity
from retrieval.errors import EmptyIndex, IndexMismatch, IndexMissing, StoreError, UsageError
from retrieval.index.generations import corrupt, on_live_generation, publish
from retrieval.index.lock import IndexLock
from retrieval.index.manifest import Entry, Manifest
from retrieval.index.record import FORMAT_VERSION, META, IndexRecord, SegmentRecord, read_record, write_record
from retrieval.index.segment_files import DELETED, FAISS_METRICS, SEGMENT_FILES, VECTORS, file_facts, link, read_segment
from retrieval.index.segments import (
    SCAN_BELOW,
    Hits,
    Segment,
    build_scan,
    concurrently,
    live_entries,
    live_vectors,
    merges_due,
    searchers,
)
from retrieval.index.vectors import MAPPED_ROWS, assembled, normalize
from retrieval.io.durable import fsync_dir, fsync_file
from retrieval.io.files import sha256_file
from retrieval.io.sources import Location, recorded

FLAT = IndexChoice("flat")
# a segment this small is searched exactly even in an approximate index, and finds every neighbour: a
# flat scan of 1,000 vectors of 2048-d took 0.14 ms here against 0.09 ms for PCA-256 + HNSW32 + re-rank,
# so below a quarter of that the scan is the cheaper
SMALL_FLAT = 256


@dataclass(frozen=True)
class Tuning:
    """Where a store switches strategy, each a measured threshold (see the constants above): set per store,
    so that a test or a benchmark steers one store through this parameter, never by patching the module."""

    small_flat: int = SMALL_FLAT  # a new segment of fewer rows is searched exactly
    scan_below: int = SCAN_BELOW  # a new segment of fewer rows is a scan segment (segments.build_scan)
    mapped_rows: int = MAPPED_ROWS  # a build from at least this many rows reads them from a mapped file
    worker_thread: bool = True  # the largest segment searched on a worker thread beside the rest (concurrently)


DEFAULT_TUNING = Tuning()


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
        self._starts = np.cumsum([0] + [s.live for s in segments])
        self._searchers = searchers(segments)

    @property
    def generation(self) -> str | None:
        """The folder name it was loaded from or last saved to; None if neither."""
        return self._folder.name if self._folder else None

    @property
    def stale(self) -> bool:
        """Whether the search structure was built by a definition that has since changed (an approximate
        kind of format version 3): its vectors are sound, its search is not, and ingest rebuilds it."""
        return self._record.stale

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

    # --- facts -----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return int(self._starts[-1])

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
        [(i, _, local)] = self._split([row])
        return self._segments[i].manifest.entry(int(local[0]))

    def entries(self) -> list[Entry]:
        """Every live row's entry, in row order."""
        return live_entries(self._segments)

    def vectors(self) -> np.ndarray:
        """Every stored (normalized) vector in row order, (count, dim)."""
        return live_vectors(self._segments) if self._segments else np.empty((0, self.dim), np.float32)

    def row_of(self, path: str) -> int | None:
        """Row of a manifest path (relative, POSIX), or None: a binary search per segment, nothing built."""
        for start, segment in zip(self._starts, self._segments):
            local = segment.manifest.row_of(path)
            if local is not None and not segment.is_deleted(np.array([local]))[0]:
                return int(start + segment.positions(np.array([local]))[0])
        return None

    def vector(self, row: int) -> np.ndarray:
        """The stored (normalized) vector of `row`: a query by an indexed image needs no model."""
        [(i, _, local)] = self._split([row])
        return self._segments[i].index.reconstruct(int(local[0]))

    def vectors_of(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """The stored (normalized) vectors of `rows`, (len(rows), dim): a chunk of a large index at a time."""
        out = np.empty((len(rows), self.dim), np.float32)
        for i, where, local in self._split(rows):
            out[where] = self._segments[i].index.reconstruct_batch(local)
        return out

    def _split(self, rows: np.ndarray | list[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(segment number, positions in `rows`, local rows of that segment) for each segment `rows` touch."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.count):
            raise UsageError(f"row out of range: the index holds rows 0 to {self.count - 1}")
        which = np.searchsorted(self._starts, rows, side="right") - 1
        out = []
        for s in np.unique(which).tolist():
            where = np.flatnonzero(which == s)
            out.append((s, where, self._segments[s].local(rows[where] - self._starts[s])))
        return out

    def check_embedding(
        self, embedding: dict[str, Any], remedy: str = "rebuild it with `retrieval ingest --full`"
    ) -> None:
        """Refuse vectors made differently from the stored ones, naming what differs and `remedy`."""
        stored, embedding = identity(self._record.embedding), identity(embedding)
        if embedding == stored:
            return
        keys = sorted(k for k in set(stored) | set(embedding) if stored.get(k) != embedding.get(k))
        diffs = "; ".join(f"{k}: index has {stored.get(k)!r}, now {embedding.get(k)!r}" for k in keys)
        raise IndexMismatch(f"the index was built with another model or preprocessing ({diffs}); {remedy}")

    def record_runtime(self, runtime: dict[str, Any]) -> None:
        """Record the engine and versions of the run that last changed the vectors."""
        self._record = replace(self._record, runtime=runtime)

    # --- changes ---------------------------------------------------------------------------------

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
        for i, _, local in self._split(rows):
            self._segments[i] = self._segments[i].with_deleted(local)
        self._changed()

    def merge(self, *, everything: bool = False) -> int:
        """Merge what the merge policy says is due (segments.merges_due), or with `everything` all segments
        into one without its deleted rows, and drop segments with no live rows; rows keep their order.
        Returns how many segments were merged away."""
        before = len(self._segments)
        live = [i for i, s in enumerate(self._segments) if s.live]
        groups = [live] if everything and live else merges_due(self._segments)
        merged = {i: group for group in groups for i in group}
        segments = []
        for i, segment in enumerate(self._segments):
            if i in merged and i == merged[i][0]:
                members = [self._segments[j] for j in merged[i]]
                live, fill = sum(s.live for s in members), partial(live_vectors, members)
                folder = self._folder.parent if self._folder else None
                with assembled(live, self.dim, fill, folder, self._tuning.mapped_rows) as vectors:
                    segments.append(self._build(vectors, live_entries(members)))
            elif i not in merged and segment.live:
                segments.append(segment)
        self._segments = segments
        self._changed()
        return before - len(segments)

    def _build(self, x: np.ndarray, entries: list[Entry]) -> Segment:
        """A new segment over `x`. Smaller than the largest approximate segment, it reuses that one's trained
        PCA: exact search when tiny (SMALL_FLAT rows), a scan segment below SCAN_BELOW rows (build_scan),
        else (or when no scan reaches the recall target) that one's kind and parameters (tuning.build_like);
        otherwise, or when the reused parts no longer reach the recall target on `x`, its kind is built
        (trained, for PCA and IVF) and, for auto, chosen and tuned on `x` alone."""
        requested = self._record.requested
        metric, target = FAISS_METRICS[self.metric], requested["recall_target"]
        largest = max(self._segments, key=lambda s: s.live, default=None)
        built = None
        if largest and not largest.index.capabilities.exact and len(x) < largest.live:
            if len(x) < self._tuning.small_flat:
                built = build_measured(FLAT, x, metric, target)
            elif len(x) < self._tuning.scan_below:
                built = build_scan(x, largest.index, self._scan_group(), metric, target)
            if built is None:
                built = build_like(largest.index, x, metric, target, tune=requested["kind"] == "auto")
        if built is None:
            budget = requested["memory_budget_gb"] * 2**30
            built = build_measured(ann.choice_from(requested), x, metric, target, budget)
        number = self._record.next_segment
        self._record = replace(self._record, next_segment=number + 1)
        return Segment(f"seg-{number:06d}", built[0], Manifest.of(entries), built[1])

    def _scan_group(self) -> list[Segment]:
        """The live scan segments coded like the newest one: the group a new scan segment would join."""
        scans = [s for s in self._segments if s.index.choice.declared.scanned_as_group and s.live]
        return [s for s in scans if ann.same_codes(s.index, scans[-1].index)] if scans else []

    def _changed(self) -> None:
        self._starts = np.cumsum([0] + [s.live for s in self._segments])
        self._searchers = searchers(self._segments)
        live = [(s.live, s.description) for s in self._segments]
        self._record = self._record.with_index(self._record.requested, live)

    @property
    def capabilities(self) -> ann.Capabilities:
        return ann.Capabilities(exact=all(s.index.capabilities.exact for s in self._segments), range_search=True)

    # --- search ----------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Top-k (row, score) per query, best first. Score: cosine similarity, or Euclidean distance for l2.

        Each segment's top-k, merged: exact scores compare across segments. Scan segments coded alike are
        searched as one group (segments.searchers), and the largest segment on a worker thread meanwhile
        (`concurrently`). Fewer than k pairs come back when the index holds fewer vectors; faiss's -1
        fillers never do.
        """
        if k < 1:
            raise UsageError(f"k must be at least 1, not {k}")
        q = self._checked(queries)
        searchers = [searcher for _, searcher in self._searchers]
        if self._tuning.worker_thread:
            found = concurrently(searchers, q, k)
        else:
            found = [searcher.search(q, k) for searcher in searchers]
        per_segment: list[Hits] = [[] for _ in self._segments]
        for (members, _), hits in zip(self._searchers, found):
            for i, segment_hits in zip(members, hits):
                per_segment[i] = segment_hits
        return self._merged(per_segment, k)

    def range_search(self, queries: np.ndarray, threshold: float) -> list[list[tuple[int, float]]]:
        """Every (row, score) per query with a cosine of at least `threshold` (for l2: a distance of at
        most it), best first, scores exact; approximate kinds may miss some, as in `search`."""
        q = self._checked(queries)
        return self._merged([s.range_search(q, threshold) for s in self._segments], None)

    def _merged(self, per_segment: list[list[list[tuple[int, float]]]], k: int | None) -> list[list[tuple[int, float]]]:
        """Per query, the segments' hits as store rows, best first (ties by row), the first `k` (or all)."""
        if len(per_segment) == 1:
            return per_segment[0]
        better = -1.0 if self.metric == "cosine" else 1.0  # sort key: higher cosine first, lower distance first
        merged = []
        for hits in zip(*per_segment):
            rows = [(int(start) + at, score) for start, found in zip(self._starts, hits) for at, score in found]
            rows.sort(key=lambda hit: (better * hit[1], hit[0]))
            merged.append(rows[:k] if k is not None else rows)
        return merged

    def _checked(self, queries: np.ndarray) -> np.ndarray:
        """Queries normalized and checked here, not by faiss, whose own checks are `assert`s."""
        q = normalize(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise UsageError(f"query vector has dimension {q.shape[1]}, the index has {self.dim}")
        if self.count == 0:
            raise EmptyIndex("the index is empty: no results")
        if self.stale:
            raise IndexMismatch(f"{self._record.warning()} (nothing is embedded again); queries are refused until then")
        return q

    # --- disk ------------------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write a new generation and switch to it atomically (generations.publish). Returns its folder.

        Only new segments and the deletion markers are written; segments already on disk are hard-linked
        from the generation they were loaded from (the same bytes, not a copy)."""
        try:
            final = publish(folder, self._write_generation)
        except (OSError, RuntimeError) as e:  # faiss raises RuntimeError for a failed write
            raise StoreError(f"cannot save the index in {folder} ({e}); the previous index is untouched") from e
        self._segments, self._record = self._staged
        self._folder = final
        return final

    def _write_generation(self, staging: Path) -> None:
        files: dict[str, Any] = {}
        segments = []
        for segment in self._segments:
            segment = self._place(segment, staging)
            files.update({f"{segment.name}/{name}": facts for name, facts in segment.files.items()})
            if len(segment.deleted):
                marker = f"{segment.name}{DELETED}"
                np.save(staging / marker, segment.deleted)
                fsync_file(staging / marker)
                files[marker] = file_facts(staging / marker)
            segments.append(segment)
        record = replace(
            self._record,
            format_version=FORMAT_VERSION,
            count=self.count,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            files=files,
            segments=tuple(SegmentRecord(s.name, s.rows, len(s.deleted), s.description) for s in segments),
        )
        write_record(staging, record)
        self._staged = segments, record  # taken on by `save` once the generation is live

    def _place(self, segment: Segment, staging: Path) -> Segment:
        """Put `segment`'s files in the generation being staged: written if new, else hard-linked (or, on a
        file system without hard links, copied). A segment of a format 5 index gets its own folder here."""
        target = staging / (segment.name or f"seg-{self._record.next_segment:06d}")
        target.mkdir()
        if segment.files is None:
            segment.index.write(target / VECTORS)
            segment.manifest.write(target)
            for name in SEGMENT_FILES:
                fsync_file(target / name)
            files = {name: file_facts(target / name) for name in SEGMENT_FILES}
        else:
            source = self._folder / segment.name
            for name in segment.files:
                link(source / name, target / name)
            files = segment.files
        fsync_dir(target)
        if not segment.name:
            self._record = replace(self._record, next_segment=self._record.next_segment + 1)
        return replace(segment, name=target.name, files=files)

    @classmethod
    @contextmanager
    def writing(
        cls,
        index: Path,
        *,
        wait: bool = False,
        create: bool = False,
        load: bool = True,
        check_hashes: bool = False,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> Iterator[Writing]:
        """One writer's transaction (Lucene's IndexWriter): the index's lock taken (IndexBusy at once, or with
        `wait` when it is free), its live store loaded, and `Writing.save` to commit a store as the next
        generation while the lock is held; the lock is released however the block ends. Every change the
        package makes to an index goes through here. `create`: an index that is not there yet is allowed (the
        live store is then None); without it IndexMissing is raised before anything is created. `load=False`
        leaves whatever is there unread, for a rebuild that replaces it (`ingest --full`)."""
        with IndexLock(index, wait=wait, existing=not create):
            live = None
            if load:
                try:
                    live = cls.load(index, check_hashes=check_hashes, tuning=tuning)
                except IndexMissing:
                    if not create:
                        raise
            yield Writing(index, live, tuning)

    @classmethod
    def load(cls, folder: Path, *, check_hashes: bool = False, tuning: Tuning = DEFAULT_TUNING) -> Store:
        """Load and validate the live generation; refuse anything inconsistent with IndexCorrupt.

        The vectors are memory-mapped, not read: a query touches only what its search needs, so a
        fresh process answers in well under a second even on a large index. File sizes, row counts,
        dimension, metric and format are always checked; the SHA-256 of every file (a full read) only
        with `check_hashes`, as `retrieval verify` does.
        """
        return on_live_generation(folder, partial(cls._load_generation, check_hashes=check_hashes, tuning=tuning))

    @classmethod
    def _load_generation(cls, generation: Path, *, check_hashes: bool, tuning: Tuning) -> Store:
        folder = generation.parent
        record = read_record(generation)
        for name, facts in record.files.items():
            if (generation / name).stat().st_size != facts.get("bytes"):
                raise corrupt(folder, f"{name} does not have the size recorded in {META}")
            if check_hashes and sha256_file(generation / name) != facts.get("sha256"):
                raise corrupt(folder, f"{name} does not have the SHA-256 recorded in {META}")
        if record.segments is not None:
            segments = [read_segment(generation, s, record) for s in record.segments]
        else:  # format 5 or older: one segment, its files in the generation folder itself
            segments = [read_segment(generation, SegmentRecord("", record.count, 0, record.index), record)]
        ann.share_pca([s.index for s in segments])
        store = cls(segments, record, generation, tuning)
        if store.count != record.count:
            raise corrupt(folder, f"row counts disagree: {record.count} in {META}, {store.count} in its segments")
        return store


@dataclass
class Writing:
    """An index held for writing (Store.writing): the live store as loaded (None where there was none, or it
    was not read), and `save`, the one way the package commits a store to the index."""

    index: Path
    live: Store | None
    tuning: Tuning = DEFAULT_TUNING  # for the stores a writer creates, as the live one was loaded with

    def save(self, store: Store) -> None:
        """Commit `store` as the index's next generation, under the lock this transaction holds."""
        store.save(self.index)
        self.live = store


def _summary(segment: Segment) -> dict[str, Any]:
    return {"name": segment.name, "rows": segment.rows, "deleted": len(segment.deleted), "index": segment.description}
