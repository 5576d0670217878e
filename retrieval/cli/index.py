"""The index itself: `retrieval info`, `verify`, `compact` and `export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrieval.cli.app import ConfigOption, IndexOption, JsonOption, WaitOption, reported, settings_from
from retrieval.cli.output import echo_json, warn
from retrieval.errors import EXIT_INDEX
from retrieval.io.files import printable


def info(index: IndexOption = None, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Describe the index: size, model, weights, metric, when it was built."""
    settings = settings_from(config, index=index)
    with reported():
        from retrieval.index.facts import index_facts

        facts = index_facts(settings.index)
    if as_json:
        echo_json(facts)
        return
    facts["weights"] = " ".join(f"{k}={v}" for k, v in facts["weights"].items())
    facts["bytes_on_disk"] = f"{facts['bytes_on_disk'] / 2**20:.1f} MiB"
    for key, value in facts.items():
        if value is not None and key != "warning":
            typer.echo(f"{key:<15} {printable(str(value))}")
    warn(facts["warning"])


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


def compact(
    index: IndexOption = None,
    wait: WaitOption = False,
    hashes: Annotated[
        bool,
        typer.Option("--hashes", help="Add the perceptual hashes an index built before them lacks (no embedding)."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Merge the index's segments into one and drop its deleted rows (ingest merges by tiers on its own)."""
    settings = settings_from(config, index=index)
    with reported():
        from retrieval.maintenance.compact import compact as run_compact

        done = run_compact(settings.index, wait=wait, hashes=hashes, max_pixels=settings.max_pixels)
    where, count = printable(settings.index), done.store.count
    if done.hashed or done.unhashed:
        typer.echo(f"{where}: perceptual hashes added to {done.hashed} rows; {count} vectors, none embedded again")
        if done.unhashed:
            warn(f"{done.unhashed} rows still have none: their files are gone or changed (`retrieval ingest`)")
    elif done.segments > 1 or done.deleted:
        typer.echo(
            f"{where}: merged {done.segments} segments into one, {done.deleted} deleted rows dropped; {count} vectors"
        )
    elif done.written:
        typer.echo(f"{where}: saved in the current layout (one segment, files linked); {count} vectors")
    else:
        typer.echo(f"{where}: already one segment with no deleted rows; nothing written")
    warn(done.store.record.warning())


def export(
    out: Annotated[Path, typer.Argument(help="The file to write (parquet), or the folder (npy).", show_default=False)],
    index: IndexOption = None,
    format: Annotated[
        str, typer.Option("--format", help="parquet: one file, vectors in it | npy: vectors.npy + files.parquet.")
    ] = "parquet",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if an export is there already.")] = False,
    config: ConfigOption = None,
) -> None:
    """Write every indexed file's path, size, mtime, hashes and vector, in index order, for other tools.

    Written whole or not at all (a full disk leaves nothing behind); read it with pandas, DuckDB or pyarrow.
    """
    settings = settings_from(config, index=index)
    with reported():
        from retrieval.maintenance.export import export as run_export

        done = run_export(settings.index, out, format=format, force=force)
    typer.echo(
        f"{printable(done.path)}: {done.rows} rows of {done.dim}-d vectors, {done.format}, {done.bytes / 2**20:.1f} MiB"
    )
