"""Acting on groups: each extra moved (never deleted) out of the indexed folder to a folder of the user's, every
move logged as it happens, then taken out of the index under its write lock, in that order: a crash between
the two leaves an index that lists a few files no longer there, which the next ingest drops."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from retrieval.errors import IndexMismatch, UsageError
from retrieval.index.store import Store
from retrieval.index.writing import writing
from retrieval.io.sources import Location
from retrieval.maintenance.dupes.groups import Group

LOG = "dupes-log.jsonl"


@dataclass(frozen=True)
class Move:
    """One extra moved (or, in a dry run, to be moved) out of the indexed folder."""

    row: int
    source: str  # relative to the index's root
    destination: str  # absolute
    kept: str  # the group's kept file, relative to the root
    score: float
    done: bool = False
    problem: str | None = None  # why it was not moved


def plan_moves(groups: list[Group], root: Location, target: Path) -> list[Move]:
    """Where each extra would go: `target`/its path in the indexed folder, so names never collide."""
    target = check_target(root, target)
    moves = []
    for group in groups:
        for extra in group.extras:
            problem = None if extra.present else "file not found"
            destination = str(target / extra.path)
            moves.append(Move(extra.row, extra.path, destination, group.keep.path, extra.score, problem=problem))
    return moves


def move_group(store: Store, index: Path, group: Group, keep: int, target: Path) -> tuple[list[Move], Store]:
    """Move every member of `group` but the one of row `keep` to `target`, exactly as `--move-to target
    --apply` moves a group's extras (the review page's action, with the keeper a user chose)."""
    if keep not in {m.row for m in group.members}:
        raise UsageError(f"row {keep} is not a member of the group")
    members = sorted(group.members, key=lambda m: m.row != keep)  # the keeper first; the rest in their order
    moves = plan_moves([Group(members, group.links)], store.root, target)
    return apply_moves(store, index, moves, target)


def check_target(root: Location, target: Path) -> Path:
    """`target`, resolved, once it is known to be a place extras can go: outside a local indexed folder."""
    if not isinstance(root, Path):
        raise UsageError(
            f"--move-to moves files of a local folder; {root} is remote: act on the groups listed with --json or --csv"
        )
    target = target.resolve()
    if target == root or root in target.parents:
        raise UsageError(
            f"--move-to {target} is inside the indexed folder {root}: the next ingest would index the moved "
            "files again; choose a folder outside it"
        )
    return target


def apply_moves(store: Store, index: Path, moves: list[Move], target: Path) -> tuple[list[Move], Store]:
    """Move the extras, logging each move to `target`/dupes-log.jsonl as it happens, then save a new
    generation of the index without them, all under the index's write lock. IndexMismatch if the index
    changed since `store` was loaded (the groups may no longer hold)."""
    with writing(index) as held:
        live = held.live
        if live.generation != store.generation:
            raise IndexMismatch(f"the index in {index} changed since its duplicates were found; run dupes again")
        target.mkdir(parents=True, exist_ok=True)
        done = []
        with open(target / LOG, "a", encoding="utf-8") as log:
            for move in moves:
                if move.problem is None:
                    move = _move(store.root / move.source, Path(move.destination), move)
                # every move, failed ones too: the log alone tells where each extra is
                record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **asdict(move)}
                log.write(json.dumps(record, ensure_ascii=True) + "\n")
                log.flush()
                os.fsync(log.fileno())
                done.append(move)
        moved = {m.row for m in done if m.done}
        if moved:
            live.delete(sorted(moved))
            held.save(live)
        return done, live


def _move(source: Path, destination: Path, move: Move) -> Move:
    """Rename, or copy + fsync + unlink across file systems; an existing destination is never replaced."""
    if destination.exists():
        return _failed(move, f"{destination} already exists")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, destination)  # fails rather than replace an existing file; then drop the old name
        except FileExistsError:
            raise
        except OSError:  # another file system, or one without hard links: copy, make it durable, then rename
            partial = destination.with_name(destination.name + ".partial")
            try:
                shutil.copy2(source, partial)
                with open(partial, "rb") as f:
                    os.fsync(f.fileno())
                os.rename(partial, destination)
            except OSError:
                partial.unlink(missing_ok=True)  # a full disk leaves no half copy behind
                raise
        os.unlink(source)
    except OSError as e:
        return _failed(move, e.strerror or str(e))
    return Move(**{**asdict(move), "done": True})


def _failed(move: Move, problem: str) -> Move:
    return Move(**{**asdict(move), "problem": problem})
