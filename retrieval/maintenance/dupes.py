"""`retrieval dupes`: groups of near-duplicate images, found through the index itself, and acting on them.

Each stored vector is searched for its nearest neighbours in chunks (never an all-pairs matrix: memory
grows with the index and the number of duplicate pairs, not with its square), a neighbour that passes the
`Rule` links the two images, and linked images form a group (connected components).

Two rules, usable together:
- an absolute cosine `threshold`: right for trained weights, where a copy scores well above a different
  picture; with random weights every picture scores about 0.99 against every other, so no absolute
  threshold separates them;
- a `relative` cut-off: a neighbour counts when its distance (1 - cosine) is at most `relative` times the
  distance to the query's `neighbours`-th nearest image, a reference for "an unrelated picture" measured
  per query (Lowe's ratio test, with a far reference). It needs no tuning to the weights' score scale.

Acting on groups moves the extras (never deletes them) out of the indexed folder, logs every move and
takes them out of the index, in that order: a crash between the two leaves an index that lists a few files
no longer there, which the next ingest drops.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.config import DEFAULT_MAX_PIXELS
from retrieval.errors import EmptyIndex, IndexMismatch, UsageError
from retrieval.index.record import IndexRecord
from retrieval.index.store import Store
from retrieval.index.writing import writing
from retrieval.io.images import decoders
from retrieval.io.sources import Location, open_regular
from retrieval.search.results import Hit, QueryResult, as_cosine

KEEP_RULES = ("resolution", "size", "oldest", "newest", "path")
DEFAULT_KEEP = ("resolution", "size", "oldest")
LOG = "dupes-log.jsonl"


@dataclass(frozen=True)
class Rule:
    """When a neighbour is a near-duplicate: at least `threshold` cosine, and/or within `relative` of the
    distance to the `neighbours`-th nearest image. `neighbours` images are searched per image."""

    threshold: float | None = None
    relative: float | None = None
    neighbours: int = 32

    def __post_init__(self) -> None:
        if self.threshold is None and self.relative is None:
            raise UsageError("give a --threshold (a cosine, e.g. 0.95) or a --relative cut-off (e.g. 0.4)")
        if self.threshold is not None and self.relative is not None:
            raise UsageError("--threshold and --relative are two rules for the same cut-off: give one of them")
        if not all(math.isfinite(v) for v in (self.threshold, self.relative) if v is not None):
            raise UsageError("--threshold and --relative take finite numbers")
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            raise UsageError(f"--threshold is a cosine similarity, from -1 to 1, not {self.threshold}")
        if self.relative is not None and not 0.0 < self.relative < 1.0:
            raise UsageError(f"--relative is a fraction of a distance, between 0 and 1, not {self.relative}")
        if self.neighbours < 2:
            raise UsageError(f"--neighbours must be at least 2, not {self.neighbours}")

    def links(self, cosines: np.ndarray) -> np.ndarray:
        """Which of one image's neighbours (cosines, best first, itself excluded) are its near-duplicates."""
        keep = np.ones(len(cosines), bool)
        if self.threshold is not None:
            keep &= cosines >= self.threshold
        if self.relative is not None and len(cosines):
            reference = 1.0 - cosines[-1]
            keep &= (1.0 - cosines) <= self.relative * reference
        return keep


DEFAULT_THRESHOLD = 0.95


def rule_for(
    record: IndexRecord, threshold: float | None, relative: float | None, neighbours: int = 32
) -> tuple[Rule, str | None]:
    """The rule asked for, with DEFAULT_THRESHOLD where neither cut-off is given, and what a user should know
    of it: on an index of random weights every pair scores about 0.99, so that default groups unrelated
    pictures."""
    if threshold is not None or relative is not None:
        return Rule(threshold, relative, neighbours), None
    caveat = None
    if record.random_weights:
        caveat = (
            "this index was built with random weights, where almost every pair of images scores about 0.99: "
            f"the default --threshold {DEFAULT_THRESHOLD} groups unrelated pictures; use --relative (e.g. 0.3)"
        )
    return Rule(DEFAULT_THRESHOLD, None, neighbours), caveat


@dataclass(frozen=True)
class Member:
    """One image of a group, with what the keep rule looks at (None: the file is gone or unreadable)."""

    row: int
    path: str  # relative to the index's root
    score: float  # its highest cosine to another member
    width: int | None
    height: int | None
    bytes: int | None
    mtime_ns: int | None

    @property
    def present(self) -> bool:
        return self.bytes is not None


@dataclass(frozen=True)
class Group:
    """Near-duplicates, the one to keep first."""

    members: list[Member]

    @property
    def keep(self) -> Member:
        return self.members[0]

    @property
    def extras(self) -> list[Member]:
        return self.members[1:]


def find_groups(
    store: Store,
    rule: Rule,
    keep: tuple[str, ...] = DEFAULT_KEEP,
    *,
    chunk: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> list[Group]:
    """The index's near-duplicate groups, largest first, each ordered by `keep` (see `order`). EmptyIndex for
    an index with no rows, as a query of it; UsageError for a keep rule that is not one, before any search."""
    check_keep(keep)
    if store.count == 0:
        raise EmptyIndex("the index is empty: no duplicates to find")
    if store.count < 2:
        return []
    links = dict(_links(store, rule, chunk, progress))
    groups = _components(store.count, links)
    best: dict[int, float] = {}
    for (a, b), cosine in links.items():
        best[a] = max(best.get(a, -1.0), cosine)
        best[b] = max(best.get(b, -1.0), cosine)
    found = [Group(order([_member(store, row, best[row]) for row in rows], keep)) for rows in groups]
    return sorted(found, key=lambda g: (-len(g.members), g.keep.path))


def _links(
    store: Store, rule: Rule, chunk: int, progress: Callable[[int, int], None] | None
) -> Iterator[tuple[tuple[int, int], float]]:
    """(row, row) pairs, smaller first, with their cosine, for every neighbour the rule accepts."""
    k = min(rule.neighbours + 1, store.count)
    for start in range(0, store.count, chunk):
        rows = np.arange(start, min(start + chunk, store.count))
        for row, hits in zip(rows.tolist(), store.search(store.vectors_of(rows), k)):
            others = [(r, s) for r, s in hits if r != row][: k - 1]
            cosines = as_cosine(np.array([s for _, s in others], np.float32), store.metric)
            for (other, _), cosine, linked in zip(others, cosines, rule.links(cosines)):
                if linked:
                    yield (min(row, other), max(row, other)), float(cosine)
        if progress:
            progress(int(rows[-1]) + 1, store.count)


def _components(count: int, links: dict[tuple[int, int], float]) -> list[list[int]]:
    """Connected groups of two or more rows (union-find with path halving), each in row order."""
    parent = list(range(count))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for row in sorted({r for pair in links for r in pair}):
        groups.setdefault(root(row), []).append(row)
    return [rows for rows in groups.values() if len(rows) > 1]


def _member(store: Store, row: int, score: float) -> Member:
    path = store.entry(row).path
    try:
        file = store.root / path
        st = file.stat()
        with open_regular(file) as f, Image.open(f, formats=decoders()) as im:  # the header only, nothing decoded
            width, height = im.size
    except (OSError, Image.DecompressionBombError, ValueError):
        return Member(row, path, score, None, None, None, None)
    return Member(row, path, score, width, height, st.st_size, st.st_mtime_ns)


def order(members: list[Member], keep: tuple[str, ...] = DEFAULT_KEEP) -> list[Member]:
    """Members best-to-keep first: by each of `keep` in turn (largest resolution, largest file, oldest,
    newest, shortest path), then by path; files that are gone come last."""
    check_keep(keep)

    def key(m: Member) -> tuple:
        facts = {
            "resolution": -(m.width or 0) * (m.height or 0),
            "size": -(m.bytes or 0),
            "oldest": m.mtime_ns or 0,
            "newest": -(m.mtime_ns or 0),
            "path": len(m.path),
        }
        return (not m.present, *(facts[rule] for rule in keep), m.path)

    return sorted(members, key=key)


def check_keep(keep: tuple[str, ...]) -> None:
    """UsageError for an empty or unknown keep rule: with none, the order would be the paths', which may well
    keep a copy and move its original out."""
    if not keep:
        raise UsageError(f"--keep needs at least one rule, comma-separated, from {', '.join(KEEP_RULES)}")
    unknown = [rule for rule in keep if rule not in KEEP_RULES]
    if unknown:
        raise UsageError(f"--keep: unknown rule {unknown[0]!r}; choose from {', '.join(KEEP_RULES)}")


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
    moves = []
    for group in groups:
        for extra in group.extras:
            problem = None if extra.present else "file not found"
            destination = str(target / extra.path)
            moves.append(Move(extra.row, extra.path, destination, group.keep.path, extra.score, problem=problem))
    return moves


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


@dataclass(frozen=True)
class Request:
    """What `retrieval dupes` asks for: the cut-off (a cosine `threshold` or a `relative` one; neither: the
    default, see `rule_for`), the keep rule's order, and what to do with the groups."""

    threshold: float | None = None
    relative: float | None = None
    neighbours: int = 32
    keep: tuple[str, ...] = DEFAULT_KEEP
    move_to: Path | None = None  # where the extras go (a dry run unless `apply`)
    apply: bool = False
    collage_dir: Path | None = None  # one collage per group, drawn before anything moves
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Outcome:
    """What a `dupes` run found and did: the groups (as found, before any move), the moves planned or made,
    the collages drawn, and what a user should know of the rule (`rule_for`)."""

    root: Location
    groups: list[Group]
    moves: list[Move]
    collages: list[Path]
    caveat: str | None

    @property
    def failed(self) -> bool:
        return any(m.problem for m in self.moves)


def dupes(index: Path, request: Request) -> Outcome:
    """The whole `retrieval dupes`: the index's groups under the rule asked for, their collages, and their
    extras' moves planned (and with `apply`, made under the write lock: `apply_moves`)."""
    if request.apply and request.move_to is None:
        raise UsageError("--apply needs --move-to DIR")
    store = Store.load(index)
    rule, caveat = rule_for(store.record, request.threshold, request.relative, request.neighbours)
    groups = find_groups(store, rule, request.keep)
    moves = plan_moves(groups, store.root, request.move_to) if request.move_to else []
    collages = collages_of(groups, store.root, request.collage_dir, request.max_pixels) if request.collage_dir else []
    if moves and request.apply and request.move_to:
        moves, store = apply_moves(store, index, moves, request.move_to)
    return Outcome(store.root, groups, moves, collages, caveat)


def collages_of(groups: list[Group], root: Location, folder: Path, max_pixels: int) -> list[Path]:
    """One collage per group in `folder`: the kept image first, then the extras with their scores."""
    from retrieval.search.collage import render

    paths = []
    for number, group in enumerate(groups, 1):
        hits = [Hit(rank, m.score, m.path, m.row) for rank, m in enumerate(group.extras, 1)]
        result = QueryResult(root / group.keep.path, root, "cosine", hits, embedded=False)
        paths.append(render(result, folder / f"group-{number:04d}.jpg", max_pixels, first="Keep"))
    return paths


def as_json_groups(groups: list[Group]) -> list[dict]:
    return [{"size": len(g.members), "keep": g.keep.path, "members": [asdict(m) for m in g.members]} for g in groups]
