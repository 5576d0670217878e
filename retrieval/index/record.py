"""What an index records of itself (a generation's meta.json), typed: read, upgraded from older formats, and
written here and nowhere else. The Store keeps one `IndexRecord`; `info`, `/info`, the searcher and the
ingest read its fields, so a change of schema is a change of this file.

The embedding (backbones.describe_embedding), the runtime (engine, precision, versions, quantize's int8
record) and the index facts (ann's description of the largest segment, and the kind requested) are held as
the mappings their own modules define; this module gives the typed reads the rest of the package needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retrieval.ann.tuning import recall_warning
from retrieval.embedding.backbones import identity
from retrieval.errors import IndexMismatch
from retrieval.index.generations import corrupt, on_live_generation
from retrieval.io.durable import fsync_file
from retrieval.io.sources import Location, location

FORMAT = "retrieval-index"
FORMAT_VERSION = 7
# Versions 6, 5 and 4 differ only in their layout (6: no perceptual hashes in the manifest; 5: one segment; 4:
# its manifest as JSON lines): they load as they are.
SAME_SEARCH_VERSIONS = (6, 5, 4)
# Version 3 searched approximate kinds by inner product, which misranks real features (see ann/indexes.py); its
# flat indexes are unchanged and load as they are, its approximate ones are rebuilt by the next ingest.
LEGACY_VERSION = 3
META = "meta.json"
_REQUIRED = ("dim", "metric", "count", "root", "embedding", "files", "index")


@dataclass(frozen=True)
class SegmentRecord:
    """One segment as a generation records it, in row order."""

    name: str
    rows: int  # written, deleted ones included
    deleted: int
    index: dict[str, Any]  # its kind, factory, parameters and measured recall (ann's description)


@dataclass(frozen=True)
class IndexRecord:
    """An index's metadata. `segments` is None for a generation of format 5 or older (one segment, its files
    in the generation folder itself); `files` (path -> bytes and SHA-256) and `count` are set by each save."""

    dim: int
    metric: str
    root: str  # a resolved local path, or a URI (sources.recorded)
    embedding: dict[str, Any]  # how vectors are made: compared (backbones.identity) before any query or update
    runtime: dict[str, Any]  # engine, precision, versions, int8: recorded, never compared
    index: dict[str, Any]  # the kind requested, the largest segment's kind and facts, the lowest recall (facts())
    format_version: int = FORMAT_VERSION
    count: int = 0
    created: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    segments: tuple[SegmentRecord, ...] | None = ()
    next_segment: int = 1

    # --- typed reads ---------------------------------------------------------------------------------

    @property
    def location(self) -> Location:
        return location(self.root)

    @property
    def model(self) -> str:
        return str(self.embedding.get("model"))

    @property
    def weights(self) -> dict[str, Any]:
        return dict(self.embedding.get("weights", {}))

    @property
    def random_weights(self) -> bool:
        """Embedded with seeded random weights, where every cosine is high and no absolute threshold holds."""
        return self.weights.get("source") == "random"

    @property
    def precision(self) -> str | None:
        return self.runtime.get("precision")

    @property
    def int8(self) -> dict[str, Any] | None:
        """quantize's record: the gate's figures and rule, the calibration digest, or why int8 was not used."""
        return self.runtime.get("int8")

    @property
    def calibration(self) -> str | None:
        """The calibration sample's digest of an index embedded in int8, else None: an update of the index and
        its queries use the int8 model cached under it."""
        return (self.int8 or {}).get("calibration") if self.precision == "int8" else None

    @property
    def requested(self) -> dict[str, Any]:
        """The index kind and parameters asked for (before `auto` decided), to tell whether a setting changed."""
        return dict(self.index["requested"])

    @property
    def factory(self) -> str:
        """The largest segment's FAISS factory string (what `info` calls the index type)."""
        return str(self.index.get("factory"))

    @property
    def recall_at_10(self) -> float | None:
        return self.index.get("recall_at_10")

    @property
    def recall_target(self) -> float | None:
        return self.index.get("recall_target")

    @property
    def stale(self) -> bool:
        """An approximate kind built by format 3's definition: its vectors are sound, its search is not."""
        return self.format_version != FORMAT_VERSION

    @property
    def deleted(self) -> int:
        """Rows marked deleted across the segments (`compact` drops them)."""
        return sum(s.deleted for s in self.segments or ())

    def warning(self) -> str | None:
        """What a user of this index should know about its search: a structure to rebuild, or a measured
        recall below the target. Printed by ingest, info, verify and compact, and served by /info."""
        if self.stale:
            return (
                f"this index's {self.factory} search structure was built by an older retrieval and misranks "
                "results; run `retrieval ingest` on its folder to rebuild it from the stored vectors"
            )
        return recall_warning(self.index)

    # --- changes (a record is never changed in place) ------------------------------------------------

    def check_embedding(
        self, embedding: dict[str, Any], remedy: str = "rebuild it with `retrieval ingest --full`"
    ) -> None:
        """Refuse vectors made differently from the stored ones, naming what differs and `remedy`."""
        stored, embedding = identity(self.embedding), identity(embedding)
        if embedding == stored:
            return
        keys = sorted(k for k in set(stored) | set(embedding) if stored.get(k) != embedding.get(k))
        diffs = "; ".join(f"{k}: index has {stored.get(k)!r}, now {embedding.get(k)!r}" for k in keys)
        raise IndexMismatch(f"the index was built with another model or preprocessing ({diffs}); {remedy}")

    def with_index(self, requested: dict[str, Any], segments: list[tuple[int, dict[str, Any]]]) -> IndexRecord:
        """The record with its index facts made anew from the segments' (live rows, description), in order:
        the kind asked for, the largest segment's kind and parameters, and the lowest recall@10 measured on any
        (a search is at most as good as its weakest part)."""
        if not segments:
            return replace(self, index={"requested": requested, "kind": "flat", "factory": "Flat"})
        _, largest = max(segments, key=lambda s: s[0])
        facts = {"requested": requested, **largest}
        recalls = [d["recall_at_10"] for _, d in segments if "recall_at_10" in d]
        if recalls:
            facts["recall_at_10"] = min(recalls)
        if len(segments) > 1:
            facts["segments"] = len(segments)
        return replace(self, index=facts)

    # --- JSON ----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """meta.json's object (format 6)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "dim": self.dim,
            "metric": self.metric,
            "root": self.root,
            "embedding": self.embedding,
            "runtime": self.runtime,
            "index": self.index,
            "count": self.count,
            "created": self.created,
            "files": self.files,
            "next_segment": self.next_segment,
        }
        if self.segments is not None:
            out["segments"] = [vars(s) for s in self.segments]
        return out

    @classmethod
    def from_json(cls, raw: Any, folder: Path) -> IndexRecord:
        """The record meta.json holds, checked for format and version (older layouts read as they are);
        IndexCorrupt or IndexMismatch, naming `folder`, for anything else."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise corrupt(folder, f"{META} is not a retrieval index description")
        version = raw.get("format_version")
        index = raw.get("index")
        legacy_flat = version == LEGACY_VERSION and isinstance(index, dict) and index.get("kind") == "flat"
        if legacy_flat or version in SAME_SEARCH_VERSIONS:
            version = FORMAT_VERSION  # the same search; only the manifest's layout differs
        elif version not in (FORMAT_VERSION, LEGACY_VERSION):
            raise IndexMismatch(
                f"the index in {folder} has format version {version!r}; this retrieval reads version "
                f"{FORMAT_VERSION}. Rebuild it with `retrieval ingest --full`."
            )
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise corrupt(folder, f"{META} lacks {', '.join(missing)}")
        if not all(isinstance(raw[k], dict) for k in ("files", "embedding", "index")):
            raise corrupt(folder, f"{META} has malformed fields")
        try:
            segments = None if "segments" not in raw else tuple(SegmentRecord(**s) for s in raw["segments"])
            return cls(
                dim=int(raw["dim"]),
                metric=str(raw["metric"]),
                root=str(raw["root"]),
                embedding=raw["embedding"],
                runtime=raw.get("runtime") or {},
                index=raw["index"],
                format_version=version,
                count=int(raw["count"]),
                created=raw.get("created"),
                files=raw["files"],
                segments=segments,
                next_segment=int(raw.get("next_segment", 1)),
            )
        except (TypeError, ValueError) as e:
            raise corrupt(folder, f"{META} has malformed fields ({e})") from e


def read_record(generation: Path) -> IndexRecord:
    """A generation's record; cheap, never touches the vectors."""
    try:
        raw = json.loads((generation / META).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(generation.parent, f"{META} is not valid JSON ({e})") from e
    return IndexRecord.from_json(raw, generation.parent)


def write_record(generation: Path, record: IndexRecord) -> None:
    """Write (and fsync) the record into a generation being staged."""
    (generation / META).write_text(json.dumps(record.to_json(), indent=2, ensure_ascii=True) + "\n", encoding="utf-8")
    fsync_file(generation / META)


def live_record(folder: Path) -> IndexRecord:
    """The live generation's record, validated, without reading the vectors (for `info`)."""
    return on_live_generation(folder, read_record)
