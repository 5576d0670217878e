"""`retrieval dupes`."""

from __future__ import annotations

import csv
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from retrieval.cli.app import (
    AfterOption,
    BeforeOption,
    ConfigOption,
    FolderOption,
    IndexOption,
    JsonOption,
    MaxSizeOption,
    MinSizeOption,
    reported,
    settings_from,
)
from retrieval.cli.output import echo_json, say, warn
from retrieval.errors import EXIT_ERROR, UsageError
from retrieval.io.files import printable

if TYPE_CHECKING:
    from retrieval.maintenance.dupes.moves import Move
    from retrieval.maintenance.dupes.threshold import Measured


def dupes(
    index: IndexOption = None,
    threshold: Annotated[
        str,
        typer.Option(
            help="Cosine at which two images are duplicates by their vectors, or auto: measured on the "
            "collection (see the README)."
        ),
    ] = "auto",
    relative: Annotated[
        float | None,
        typer.Option(help="Instead: distance (1 - cosine) at most this fraction of that to the reference neighbour."),
    ] = None,
    evidence: Annotated[
        str, typer.Option(help="What links two images: vectors, hash (perceptual hashes) or both.")
    ] = "both",
    neighbours: Annotated[
        int, typer.Option(min=2, help="Neighbours searched per image; the last is the reference.")
    ] = 32,
    keep: Annotated[str, typer.Option(help="Which to keep, by order of: resolution,size,oldest,newest,path.")] = (
        "resolution,size,oldest"
    ),
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (group, keep, score, path, ...) instead.")] = False,
    collage_dir: Annotated[
        Path | None, typer.Option(help="Draw one collage per group into this folder.", file_okay=False)
    ] = None,
    move_to: Annotated[
        Path | None, typer.Option(help="Move every group's extras here (a dry run unless --apply).", file_okay=False)
    ] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Really move them, log it, and update the index.")] = False,
    folder: FolderOption = None,
    modified_after: AfterOption = None,
    modified_before: BeforeOption = None,
    min_size: MinSizeOption = None,
    max_size: MaxSizeOption = None,
    config: ConfigOption = None,
) -> None:
    """Find groups of near-duplicate images through the index; optionally move the extras out of the folder.

    Exit 0 whether or not duplicates are found; a dry run (no --apply) changes nothing. The filters keep the
    groups among the files they keep (one folder at a time); none kept: exit 4.
    """
    settings = settings_from(config, index=index)
    with reported():
        if as_json and as_csv:
            raise UsageError("--json and --csv are two formats for the same output: give one of them")
        from retrieval.filters import parse_filter
        from retrieval.maintenance.dupes.run import Request, as_json_groups
        from retrieval.maintenance.dupes.run import dupes as find_dupes

        keeps = tuple(k.strip() for k in keep.split(",") if k.strip())
        cut = _threshold(threshold)
        where = parse_filter(folder, modified_after, modified_before, min_size, max_size)
        request = Request(cut, relative, neighbours, keeps, evidence, move_to, apply, collage_dir, where or None)
        done = find_dupes(settings, request)
    for note in done.notes:
        warn(note)
    if done.measured:
        say(_measured_line(done.measured))
    groups, moves = done.groups, done.moves
    if as_json:
        rule = asdict(done.rule)
        measured = asdict(done.measured) if done.measured else None
        echo_json(
            {
                "rule": rule,
                "measured": measured,
                "groups": as_json_groups(groups),
                "moves": [asdict(m) for m in moves],
                "applied": apply,
            }  # fmt: skip
        )
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["group", "keep", "score", "evidence", "path", "width", "height", "bytes"])
        for number, group in enumerate(groups, 1):
            for m in group.members:
                kept = int(m is group.keep)
                writer.writerow([number, kept, f"{m.score:.6f}", m.evidence, m.path, m.width, m.height, m.bytes])
    else:
        extras = sum(len(g.extras) for g in groups)
        typer.echo(f"{len(groups)} groups of near-duplicates, {extras} extra images ({printable(str(done.root))})")
        for number, group in enumerate(groups, 1):
            typer.echo(f"group {number}: {len(group.members)} images")
            typer.echo(f"  keep                  {printable(group.keep.path)}")
            for member in group.extras:
                typer.echo(f"  {member.score:.4f}  {member.evidence:<12}  {printable(member.path)}")
    for path in done.collages:
        say(f"collage: {printable(str(path))}")
    _report_moves(moves, apply, move_to)
    if apply and done.failed:
        raise typer.Exit(EXIT_ERROR)


def _threshold(given: str) -> float | None:
    """--threshold: a cosine, or auto (None: measured)."""
    if given.strip().lower() == "auto":
        return None
    try:
        return float(given)
    except ValueError:
        raise UsageError(f"--threshold takes a cosine (e.g. 0.95) or auto, not {given!r}") from None


def _measured_line(m: Measured) -> str:
    when = "recorded" if m.recorded else f"measured in {m.seconds:.1f} s"
    line = f"threshold {m.threshold:.5f} ({when}, on {m.rows} images' neighbours"
    if m.copy_recall is None:
        return line + "; copy recall not measured)"
    line += f"; {m.copies} changed copies: {m.copy_recall:.0%} reach it"
    if m.with_hash is not None:
        line += f", {m.with_hash:.0%} with the hashes"
    return line + ")"


def _report_moves(moves: list[Move], applied: bool, target: Path | None) -> None:
    if target is None:
        return
    problems = [m for m in moves if m.problem]
    if applied:
        moved = sum(m.done for m in moves)
        say(f"moved {moved} files to {printable(str(target))}; log: {printable(str(target / 'dupes-log.jsonl'))}")
    else:
        say(f"dry run: {len(moves) - len(problems)} files would move to {printable(str(target))} (--apply moves them)")
    for m in problems:
        say(f"not moved: {printable(m.source)}: {m.problem}")
