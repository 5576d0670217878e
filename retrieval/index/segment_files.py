"""A generation's files: what each segment leaves on disk (its FAISS index, its manifest, its deletion markers),
written into a generation being staged and read back checked against the record, and how files are shared
between generations. The Store (store.py) decides when; how a generation's files are written and read is here.

Format 5 kept one segment's files directly in the generation folder, and format 4 its manifest as JSON
lines (manifest.jsonl, seconds to parse at a million rows): such indexes load as they are, and their next
save moves them into a segment (format 5's files by hard link, format 4's written anew)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.ann import indexes as ann
from retrieval.ann import shared
from retrieval.index.generations import corrupt, current_generation
from retrieval.index.manifest import FILES as MANIFEST_FILES
from retrieval.index.manifest import Entry, Manifest
from retrieval.index.record import FORMAT_VERSION, META, IndexRecord, SegmentRecord, read_record, write_record
from retrieval.index.segments import NO_ROWS, Segment
from retrieval.io.durable import fsync_dir, fsync_file
from retrieval.io.files import sha256_file

VECTORS = "vectors.faiss"
MANIFEST = "manifest.jsonl"  # versions 3 and 4
FAISS_METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
DELETED = ".deleted.npy"  # beside a segment's folder: the sorted local rows this generation has deleted
SEGMENT_FILES = (VECTORS, *MANIFEST_FILES)


def read_generation(generation: Path, check_hashes: bool) -> tuple[list[Segment], IndexRecord]:
    """The segments and record of a generation, every file's size checked against the record (and its
    SHA-256, a full read, with `check_hashes`); IndexCorrupt for anything inconsistent."""
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
    shared.share_pca([s.index for s in segments])
    if sum(s.live for s in segments) != record.count:
        live = sum(s.live for s in segments)
        raise corrupt(folder, f"row counts disagree: {record.count} in {META}, {live} in its segments")
    return segments, record


def write_generation(
    staging: Path, segments: list[Segment], record: IndexRecord, loaded_from: Path | None
) -> tuple[list[Segment], IndexRecord]:
    """Write `segments` and `record` into the generation being staged: new segments' files written, those
    loaded from `loaded_from` hard-linked, deletion markers beside them, meta.json last. Returns the segments
    as written (named, their file facts known) and the record as saved."""
    files: dict[str, Any] = {}
    placed = []
    next_segment = record.next_segment
    for segment in segments:
        source = loaded_from / segment.name if loaded_from else None  # "": format 5, the generation itself
        if not segment.name:  # a format 5 index's one segment gets a folder of its own
            segment, next_segment = replace(segment, name=f"seg-{next_segment:06d}"), next_segment + 1
        segment = _place(segment, staging, source)
        files.update({f"{segment.name}/{name}": facts for name, facts in segment.files.items()})
        if len(segment.deleted):
            marker = f"{segment.name}{DELETED}"
            np.save(staging / marker, segment.deleted)
            fsync_file(staging / marker)
            files[marker] = file_facts(staging / marker)
        placed.append(segment)
    record = replace(
        record,
        format_version=FORMAT_VERSION,
        next_segment=next_segment,
        count=sum(s.live for s in placed),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        files=files,
        segments=tuple(SegmentRecord(s.name, s.rows, len(s.deleted), s.description) for s in placed),
    )
    write_record(staging, record)
    return placed, record


def _place(segment: Segment, staging: Path, source: Path | None) -> Segment:
    """Put `segment`'s files in the generation being staged: written if new, else hard-linked from `source`,
    where the generation it was loaded from keeps them (or, on a file system without hard links, copied)."""
    target = staging / segment.name
    target.mkdir()
    if segment.files is None:
        segment.index.write(target / VECTORS)
        segment.manifest.write(target)
        for name in SEGMENT_FILES:
            fsync_file(target / name)
        files = {name: file_facts(target / name) for name in SEGMENT_FILES}
    else:
        assert source is not None, "a segment with files on disk comes from a loaded generation"
        for name in segment.files:
            link(source / name, target / name)
        files = segment.files
    fsync_dir(target)
    return replace(segment, files=files)


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
