"""What `retrieval info` shows of an index: its record's facts and its size on disk, as one JSON-ready mapping
(the command prints it as a table or as JSON; `/info` serves a subset of the same record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.index.record import IndexRecord, live_record
from retrieval.index.segment_files import disk_size


def index_facts(folder: Path) -> dict[str, Any]:
    """The facts of the index in `folder`, in the order `info` prints them."""
    record = live_record(folder)
    return {
        "index": str(folder),
        "count": record.count,
        "model": record.model,
        "weights": record.weights,
        "dim": record.dim,
        "metric": record.metric,
        "precision": record.precision,
        "int8": _int8_summary(record.int8),
        "index_type": record.factory,
        "segments": _segments_summary(record),
        "recall_at_10": record.recall_at_10,
        "recall_target": record.recall_target,
        "warning": record.warning(),
        "bytes_on_disk": disk_size(folder),
        "created": record.created,
        "root": record.root,
        "format_version": record.format_version,
    }


def _segments_summary(record: IndexRecord) -> str:
    """How many segments hold the rows, and how many rows are marked deleted (`compact` drops them)."""
    if not record.segments:
        return "1 (format 5 or older: moved into a segment by the next change, or by `retrieval compact`)"
    return f"{len(record.segments)}, {record.deleted} rows marked deleted"


def _int8_summary(int8: dict[str, Any] | None) -> str | None:
    """The int8 gate's figures (or why int8 was not used), in one line."""
    if not int8:
        return None
    parts = []
    if gate := int8.get("gate"):
        parts.append(
            f"gate {'passed' if gate['passed'] else 'failed'}: min cosine to fp32 {gate['min_cosine']:.5f} "
            f"(at least {gate['threshold']}), {gate['copies_kept']} of {gate['copies']} copies still at rank 1"
            + (f" (at most {gate['max_lost']:.1%} may be lost)" if "max_lost" in gate else "")
            + (f", {gate['held_out']} held-out images (at least {gate['min_held_out']})" if "held_out" in gate else "")
        )
    if int8.get("calibration"):
        parts.append(f"calibration sample {int8['calibration']}")
    if int8.get("fallback"):
        parts.append(f"not used: {int8['fallback']}")
    return "; ".join(parts)
