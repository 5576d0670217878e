"""The index itself: `retrieval info`, `verify` and `compact`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from retrieval.cli.app import ConfigOption, IndexOption, JsonOption, WaitOption, reported, settings_from
from retrieval.cli.output import echo_json, warn
from retrieval.errors import EXIT_INDEX
from retrieval.io.files import printable

if TYPE_CHECKING:
    from retrieval.index.record import IndexRecord


def info(index: IndexOption = None, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Describe the index: size, model, weights, metric, when it was built."""
    settings = settings_from(config, index=index)
    with reported():
        from retrieval.index.record import live_record
        from retrieval.index.segment_files import disk_size

        record = live_record(settings.index)
        size = disk_size(settings.index)
    facts = {
        "index": str(settings.index),
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
        "bytes_on_disk": size,
        "created": record.created,
        "root": record.root,
        "format_version": record.format_version,
    }
    if as_json:
        echo_json(facts)
        return
    facts["weights"] = " ".join(f"{k}={v}" for k, v in record.weights.items())
    facts["bytes_on_disk"] = f"{size / 2**20:.1f} MiB"
    for key, value in facts.items():
        if value is not None and key != "warning":
            typer.echo(f"{key:<15} {printable(str(value))}")
    warn(facts["warning"])


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


def verify(
    index: IndexOption = None,
    repair: Annotated[bool, typer.Option("--repair", help="Drop the rows whose files are gone.")] = False,
    wait: WaitOption = False,
    config: ConfigOption = None,
) -> None:
    """Check the index: files, counts, hashes, metadata, and that every indexed file still exists.

    Exit 0 when healthy (or repaired), 3 when damaged or pointing at files that are gone.
    """
    settings = settings_from(config, index=index)
    with reported():
        from retrieval.maintenance.verify import verify as run_verify

        health = run_verify(settings.index, repair=repair, wait=wait)
    typer.echo(f"{printable(settings.index)}: {health.count} vectors; files, counts, hashes and metadata consistent")
    if health.repaired:
        typer.echo(f"repaired: dropped {health.repaired} rows whose files are gone")
    elif health.missing:
        typer.echo(f"missing: {len(health.missing)} indexed files no longer exist (`--repair` drops them)")
        for path in health.missing[:10]:
            typer.echo(f"  {printable(path)}")
    if health.changed:
        typer.echo(f"changed: {len(health.changed)} files changed since indexed (`retrieval ingest` updates them)")
    warn(health.warning)
    typer.echo("healthy" if health.healthy or health.repaired else "damaged")
    if not (health.healthy or health.repaired):
        raise typer.Exit(EXIT_INDEX)


def compact(index: IndexOption = None, wait: WaitOption = False, config: ConfigOption = None) -> None:
    """Merge the index's segments into one and drop its deleted rows (ingest merges by tiers on its own)."""
    settings = settings_from(config, index=index)
    with reported():
        from retrieval.maintenance.compact import compact as run_compact

        done = run_compact(settings.index, wait=wait)
    where, count = printable(settings.index), done.store.count
    if done.segments > 1 or done.deleted:
        typer.echo(
            f"{where}: merged {done.segments} segments into one, {done.deleted} deleted rows dropped; {count} vectors"
        )
    elif done.written:
        typer.echo(f"{where}: saved in the current layout (one segment, files linked); {count} vectors")
    else:
        typer.echo(f"{where}: already one segment with no deleted rows; nothing written")
    warn(done.store.record.warning())
