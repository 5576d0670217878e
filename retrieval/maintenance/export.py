"""`retrieval export`: every live row of an index (its file's path, size, mtime, content hash, perceptual hash and
stored vector) in manifest order, in a format other tools read: one Parquet file, or (`npy`) a folder holding
`vectors.npy` beside `files.parquet`, the layout clip-retrieval writes its embeddings in.

Written a row group at a time (about 64 MB of vectors), so a million-row index exports in bounded memory,
and atomically: a staged file or folder renamed into place whole, so a crash or a full disk leaves the old
target or the new one and never a part. The export reads one generation; a concurrent ingest changes nothing
it reads (segments are immutable).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.errors import EmptyIndex, RetrievalError, UsageError
from retrieval.index.manifest import Entry
from retrieval.index.store import Store
from retrieval.io.durable import TEMPORARY, fsync_dir, fsync_file, write_atomically
from retrieval.io.files import printable

FORMATS = ("parquet", "npy")
VECTORS, FILES = "vectors.npy", "files.parquet"  # the npy format's folder
GROUP_BYTES = 64 << 20  # the vectors of one row group: what the export holds in memory at a time


@dataclass(frozen=True)
class Exported:
    """What `export` wrote."""

    path: Path
    format: str
    rows: int
    dim: int
    bytes: int


def export(index: Path, out: Path, *, format: str = "parquet", force: bool = False) -> Exported:
    """Write every live row of the index at `index` to `out` (see the module docstring). An existing `out` is
    replaced only with `force`, and only when it is what an export writes (a file, or an npy export's
    folder): never a folder of anything else, the index itself or a file it lists."""
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}: choose {' or '.join(FORMATS)}")
    store = Store.load(index)
    out = Path(os.path.abspath(out))
    _check_target(out, index, store, format, force)
    if store.count == 0:
        raise EmptyIndex(f"the index in {index} is empty: nothing to export")
    try:
        if format == "parquet":
            write_atomically(out, lambda f: _write_table(store, f, with_vectors=True))
        else:
            _write_folder(store, out)
    except OSError as e:
        raise RetrievalError(
            f"cannot write {printable(out)} ({e.strerror or e}); nothing was written there, the index is untouched"
        ) from e
    size = out.stat().st_size if format == "parquet" else sum(p.stat().st_size for p in out.iterdir())
    return Exported(out, format, store.count, store.dim, size)


def read_provenance(path: Path) -> dict[str, Any]:
    """What an export records of the index it came from (its Parquet schema's `retrieval` metadata)."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(b"retrieval", b"{}"))


def _check_target(out: Path, index: Path, store: Store, format: str, force: bool) -> None:
    """Refuse a target that cannot or must not be written, before anything is read or written."""
    if not out.parent.is_dir():
        raise UsageError(f"folder {printable(out.parent)} does not exist")
    if out.is_relative_to(Path(os.path.abspath(index))):
        raise UsageError(f"{printable(out)} is inside the index folder: export somewhere else")
    root = store.root
    indexed = isinstance(root, Path) and out.is_relative_to(root)
    if indexed and store.row_of(out.relative_to(root).as_posix()) is not None:
        raise UsageError(f"{printable(out)} is an indexed image: export somewhere else")
    try:
        st = out.lstat()
    except FileNotFoundError:
        return
    if not force:
        raise UsageError(f"{printable(out)} exists: give --force to replace it")
    if format == "parquet" and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{printable(out)} is not a regular file: an export replaces a file, nothing else")
    if format == "npy" and not (stat.S_ISDIR(st.st_mode) and {p.name for p in out.iterdir()} <= {VECTORS, FILES}):
        raise UsageError(f"{printable(out)} is not a folder an npy export wrote: it is left as it is")


def _schema(store: Store, *, with_vectors: bool) -> pa.Schema:
    fields = [
        pa.field("path", pa.string(), nullable=False),  # relative to the indexed folder, POSIX separators
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("sha256", pa.string()),  # hex; null where the index has none
        pa.field("phash", pa.string()),  # hex, the image's and its mirror image's (io/perceptual.py)
    ]
    if with_vectors:
        fields.append(pa.field("vector", pa.list_(pa.float32(), store.dim), nullable=False))
    record = store.record
    provenance = {
        "model": record.model,
        "metric": store.metric,
        "dim": store.dim,
        "generation": store.generation,
        "root": printable(str(store.root)),
        "rows": store.count,
    }
    return pa.schema(fields, metadata={"retrieval": json.dumps(provenance)})


def _chunks(store: Store) -> Iterator[tuple[list[Entry], np.ndarray]]:
    """The live rows a row group at a time: their entries and stored vectors."""
    step = max(1, GROUP_BYTES // (4 * store.dim))
    for start in range(0, store.count, step):
        rows = np.arange(start, min(start + step, store.count))
        yield store.entries_of(rows), store.vectors_of(rows)


def _table(schema: pa.Schema, entries: list[Entry], vectors: np.ndarray | None) -> pa.Table:
    columns: list[pa.Array] = [
        pa.array([printable(e.path) for e in entries], pa.string()),
        pa.array([e.size for e in entries], pa.int64()),
        pa.array([e.mtime_ns for e in entries], pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
        pa.array([e.sha256 or None for e in entries], pa.string()),
        pa.array([e.phash or None for e in entries], pa.string()),
    ]
    if vectors is not None:
        flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel())
        columns.append(pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))
    return pa.Table.from_arrays(columns, schema=schema)


def _write_table(store: Store, f: BinaryIO, *, with_vectors: bool, vectors: BinaryIO | None = None) -> None:
    """The rows as Parquet into `f`, a row group per chunk; with `vectors`, the vectors go there instead (the
    body of a .npy file whose header is already written)."""
    schema = _schema(store, with_vectors=with_vectors)
    # no dictionaries (paths and hashes are unique, vectors too: one only bloated the file by half); zstd saves
    # the zeros of post-ReLU features (a tenth of the vectors here)
    with pq.ParquetWriter(f, schema, use_dictionary=False, compression="zstd") as writer:
        for entries, chunk in _chunks(store):
            writer.write_table(_table(schema, entries, chunk if with_vectors else None))
            if vectors is not None:
                vectors.write(memoryview(np.ascontiguousarray(chunk, np.float32)).cast("B"))


def _write_folder(store: Store, out: Path) -> None:
    """The npy format: `vectors.npy` and `files.parquet` staged in a sibling folder, renamed into place."""
    staging = out.with_name(f"{TEMPORARY}{out.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with open(staging / VECTORS, "wb") as vectors, open(staging / FILES, "wb") as files:
            header = {"descr": "<f4", "fortran_order": False, "shape": (store.count, store.dim)}
            np.lib.format.write_array_header_1_0(vectors, header)
            _write_table(store, files, with_vectors=False, vectors=vectors)
        for name in (VECTORS, FILES):
            fsync_file(staging / name)
        _place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(out.parent)


def _place(staging: Path, out: Path) -> None:
    """Rename the staged folder to `out`; an old export there (checked by `_check_target`) is moved aside
    first and removed after."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.with_name(f"{TEMPORARY}{out.name}-old-{os.getpid()}")
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)
