"""A generation's files: what each segment leaves on disk (its FAISS index, its manifest, its deletion markers),
how a segment is read back from them and checked against the record, and how files are shared between
generations. The Store (store.py) writes them; everything that reads a generation's files is here."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.ann import indexes as ann
from retrieval.index.generations import corrupt, current_generation
from retrieval.index.manifest import FILES as MANIFEST_FILES
from retrieval.index.manifest import Entry, Manifest
from retrieval.index.record import META, IndexRecord, SegmentRecord
from retrieval.index.segments import NO_ROWS, Segment
from retrieval.io.durable import fsync_file
from retrieval.io.files import sha256_file

VECTORS = "vectors.faiss"
MANIFEST = "manifest.jsonl"  # versions 3 and 4
FAISS_METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
DELETED = ".deleted.npy"  # beside a segment's folder: the sorted local rows this generation has deleted
SEGMENT_FILES = (VECTORS, *MANIFEST_FILES)


def read_segment(generation: Path, recorded: SegmentRecord, record: IndexRecord) -> Segment:
    """One segment of a generation, memory-mapped and checked against what the record says of it."""
    folder, name = generation.parent, recorded.name
    where = generation / name
    choice, metric = ann.choice_from(recorded.index), FAISS_METRICS.get(record.metric)
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


def link(source: Path, target: Path) -> None:
    """Share an immutable file between generations: a hard link, or a copy where links are not supported."""
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(source, target)
        fsync_file(target)


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
