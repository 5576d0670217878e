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

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from . import ann
from .ann import IndexChoice
from .backbones import identity
from .durable import TEMPORARY, fsync_dir, fsync_file
from .errors import EmptyIndex, IndexMismatch, IndexMissing, StoreError, UsageError
from .files import sha256_file
from .generations import corrupt, current_generation, on_live_generation, publish
from .lock import IndexLock
from .manifest import FILES as MANIFEST_FILES
from .manifest import Entry, Manifest
from .record import FORMAT_VERSION, META, IndexRecord, SegmentRecord, read_record, write_record
from .segments import NO_ROWS, SCAN_BELOW, Hits, Segment, SegmentSearch, build_scan, merges_due, searchers
from .sources import Location, recorded

VECTORS = "vectors.faiss"
MANIFEST = "manifest.jsonl"  # versions 3 and 4
FLAT = IndexChoice("flat")
# a segment this small is searched exactly even in an approximate index, and finds every neighbour: a
# flat scan of 1,000 vectors of 2048-d took 0.14 ms here against 0.09 ms for PCA-256 + HNSW32 + re-rank,
# so below a quarter of that the scan is the cheaper
SMALL_FLAT = 256
MAPPED_ROWS = 100_000  # a build from at least this many rows reads its vectors through a memory-mapped file
_FAISS_METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


CHECKED_ROWS = 65_536  # rows `normalize` checks at a time


def normalize(vectors: np.ndarray, chunk: int = CHECKED_ROWS) -> np.ndarray:
    """L2-normalize rows: the one place vectors are normalized, for stored and query vectors alike.

    Checked explicitly rather than left to faiss, whose own checks are `assert`s that `python -O` drops.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise UsageError(f"vectors must be a 2-d array (n, dim), got shape {x.shape}")
    norms = np.empty((len(x), 1), np.float32)
    for start in range(0, len(x), chunk):  # a chunk at a time: whole-array temporaries would be 8 GB at 1M
        part = x[start : start + chunk]
        if not np.isfinite(part).all():
            raise UsageError("vectors contain NaN or infinity")
        norms[start : start + chunk] = np.linalg.norm(part, axis=1, keepdims=True)
    if (norms == 0).any():
        raise UsageError("a vector is all zeros and has no direction")
    if (np.abs(norms - 1.0) <= 1e-6).all():  # not np.allclose: 17 of a query's 30 us here
        return np.ascontiguousarray(x)  # already unit length: no copy of a possibly huge array
    return np.ascontiguousarray(x / norms)


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
        if metric not in _FAISS_METRICS:
            raise UsageError(f"metric must be one of {', '.join(_FAISS_METRICS)}, not {metric!r}")
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
        return _live_entries(self._segments)

    def vectors(self) -> np.ndarray:
        """Every stored (normalized) vector in row order, (count, dim)."""
        return _live_vectors(self._segments) if self._segments else np.empty((0, self.dim), np.float32)

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
                live, fill = sum(s.live for s in members), partial(_live_vectors, members)
                folder = self._folder.parent if self._folder else None
                with assembled(live, self.dim, fill, folder, self._tuning.mapped_rows) as vectors:
                    segments.append(self._build(vectors, _live_entries(members)))
            elif i not in merged and segment.live:
                segments.append(segment)
        self._segments = segments
        self._changed()
        return before - len(segments)

    def _build(self, x: np.ndarray, entries: list[Entry]) -> Segment:
        """A new segment over `x`. Smaller than the largest approximate segment, it reuses that one's trained
        PCA: exact search when tiny (SMALL_FLAT rows), a scan segment below SCAN_BELOW rows (build_scan),
        else (or when no scan reaches the recall target) that one's kind and parameters (ann.build_like);
        otherwise, or when the reused parts no longer reach the recall target on `x`, its kind is built
        (trained, for PCA and IVF) and, for auto, chosen and tuned on `x` alone."""
        requested = self._record.requested
        metric, target = _FAISS_METRICS[self.metric], requested["recall_target"]
        largest = max(self._segments, key=lambda s: s.live, default=None)
        built = None
        if largest and not largest.index.capabilities.exact and len(x) < largest.live:
            if len(x) < self._tuning.small_flat:
                built = ann.build_measured(FLAT, x, metric, target)
            elif len(x) < self._tuning.scan_below:
                built = build_scan(x, largest.index, self._scan_group(), metric, target)
            if built is None:
                built = ann.build_like(largest.index, x, metric, target, tune=requested["kind"] == "auto")
        if built is None:
            budget = requested["memory_budget_gb"] * 2**30
            built = ann.build_measured(ann.choice_from(requested), x, metric, target, budget)
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
                _link(source / name, target / name)
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
            segments = [_read_segment(generation, s, record) for s in record.segments]
        else:  # format 5 or older: one segment, its files in the generation folder itself
            segments = [_read_segment(generation, SegmentRecord("", record.count, 0, record.index), record)]
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


DELETED = ".deleted.npy"  # beside a segment's folder: the sorted local rows this generation has deleted
SEGMENT_FILES = (VECTORS, *MANIFEST_FILES)


def _read_segment(generation: Path, recorded: SegmentRecord, record: IndexRecord) -> Segment:
    """One segment of a generation, memory-mapped and checked against what the record says of it."""
    folder, name = generation.parent, recorded.name
    where = generation / name
    choice, metric = ann.choice_from(recorded.index), _FAISS_METRICS.get(record.metric)
    try:
        index = ann.VectorIndex.read(where / VECTORS, choice, metric)
    except RuntimeError as e:
        raise corrupt(folder, f"faiss cannot read {name or '.'}/{VECTORS}: {e}") from e
    manifest = _read_manifest(where, folder)
    counts = {"index": index.count, "manifest": len(manifest), "meta": recorded.rows}
    if len(set(counts.values())) != 1:
        raise corrupt(folder, f"row counts disagree in {name or 'the index'}: {counts}")
    searched = metric if record.stale else ann.searched_metric(choice, metric)
    if index.dim != record.dim or index.faiss.metric_type != searched:
        raise corrupt(folder, f"{VECTORS} does not have the dimension and metric recorded in {META}")
    deleted = NO_ROWS
    if recorded.deleted:
        try:
            deleted = np.load(generation / f"{name}{DELETED}")
        except (OSError, ValueError) as e:
            raise corrupt(folder, f"the deletion markers of {name} are unreadable ({e})") from e
        shaped = deleted.ndim == 1 and len(deleted) == recorded.deleted and deleted.dtype == np.int64
        if not shaped or deleted[0] < 0 or deleted[-1] >= index.count or (np.diff(deleted) <= 0).any():
            raise corrupt(folder, f"the deletion markers of {name} do not fit its rows")
    # a format 5 generation's files are linked into a segment folder by the next save; format 4's are rewritten
    recorded_files = {n: record.files.get(f"{name}/{n}" if name else n) for n in SEGMENT_FILES}
    files = recorded_files if all(recorded_files.values()) else None
    description = {k: v for k, v in recorded.index.items() if k != "requested"}
    return Segment(name, index, manifest, description, deleted, files)


_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the process it was made in, the pool)


def concurrently(searchers: list[SegmentSearch], queries: np.ndarray, k: int) -> list[list[Hits]]:
    """Each searcher's hits, in order: the first one's FAISS search (the largest segment's, SegmentSearch.find)
    on a worker thread while this thread searches the others, then its hits made here. The worker runs
    nothing but FAISS, which releases the GIL, and with one OpenMP thread: with FAISS's default (one per
    core) a worker's search of one query competed with this thread. Measured by hand on 1,000,000 rows plus
    a scan group of four segments, one query at a time, blocks of 50 interleaved, three runs: p50 0.53-0.62
    ms so, 0.64-0.67 ms one after the other, 0.30 ms for the same rows merged into one segment. What keeps the
    gain small on 2 cores: handing a call to the worker and back costs 60-70 us, and the two searches slow
    each other (FAISS alone: 0.28 + 0.17-0.21 ms apart, 0.38-0.41 ms together)."""
    global _pool
    if len(searchers) == 1:
        return [searchers[0].search(queries, k)]
    if _pool is None or _pool[0] != os.getpid():  # a forked child inherits the pool but not its threads
        workers = ThreadPoolExecutor(
            os.cpu_count() or 1, "search", initializer=faiss.omp_set_num_threads, initargs=(1,)
        )
        _pool = os.getpid(), workers
    first = _pool[1].submit(searchers[0].find, queries, k)
    # One OpenMP thread here too, the worker holding the other core: with FAISS's default, the scan group's
    # search beside the worker's made p50 after the benchmark's 23 commits 0.71-0.73 ms against 0.62 (by hand,
    # interleaved; the merged index's 0.24-0.25 either way).
    with ann.omp_threads(1):
        rest = [searcher.search(queries, k) for searcher in searchers[1:]]
    return [searchers[0].hits(queries, k, first.result()), *rest]


def _link(source: Path, target: Path) -> None:
    """Share an immutable file between generations: a hard link, or a copy where links are not supported."""
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(source, target)
        fsync_file(target)


def _summary(segment: Segment) -> dict[str, Any]:
    return {"name": segment.name, "rows": segment.rows, "deleted": len(segment.deleted), "index": segment.description}


@contextmanager
def assembled(
    rows: int, dim: int, fill: Callable[[np.ndarray], object], folder: Path | None, mapped_rows: int = MAPPED_ROWS
) -> Iterator[np.ndarray]:
    """A (rows, dim) float32 array that `fill(out)` fills, for a new segment to be built from: in memory when
    under `mapped_rows` rows (or with no folder to write in); otherwise written to a temporary file in `folder`
    (an index folder) and memory-mapped, so that the build holds in memory only the index it makes (a
    million 2048-d vectors are 8 GB, and the new index keeps its own copy). The file is removed after."""
    if rows < mapped_rows or folder is None:
        out = np.empty((rows, dim), np.float32)
        fill(out)
        yield out
        return
    folder.mkdir(parents=True, exist_ok=True)  # a first commit's index folder may not exist yet
    path = folder / f"{TEMPORARY}vectors-{os.getpid()}.npy"
    try:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        fill(out)
        out.flush()
        del out
        yield np.load(path, mmap_mode="r")
    finally:
        path.unlink(missing_ok=True)


def _live_vectors(segments: list[Segment], out: np.ndarray | None = None, chunk: int = 50_000) -> np.ndarray:
    """The live rows' vectors of `segments`, in order, read into one array (`out`, or a new one) a chunk
    at a time: no second full-size copy."""
    if out is None:
        out = np.empty((sum(s.live for s in segments), segments[0].index.dim), np.float32)
    at = 0
    for segment in segments:
        for start in range(0, segment.live, chunk):
            rows = segment.local(np.arange(start, min(start + chunk, segment.live)))
            out[at : at + len(rows)] = segment.index.reconstruct_batch(rows)
            at += len(rows)
    return out


def _live_entries(segments: list[Segment]) -> list[Entry]:
    out = []
    for s in segments:
        dead = set(s.deleted.tolist())
        out += [e for i, e in enumerate(s.manifest.entries()) if i not in dead]
    return out


def disk_size(folder: Path) -> int:
    """Bytes used by the live generation (its segments included, even those it shares with the previous)."""
    return sum(p.stat().st_size for p in current_generation(folder).rglob("*") if p.is_file())


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
