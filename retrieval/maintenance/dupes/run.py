"""The whole `retrieval dupes` as one call: the rule asked for (by default the vectors' cut-off measured on the
collection, threshold.py, and the hash evidence), the groups, their collages, and their extras' moves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from retrieval.config import Settings
from retrieval.embedding.embedders import create_embedder
from retrieval.errors import RetrievalError, UsageError
from retrieval.filters import Filter
from retrieval.io.sources import Location
from retrieval.maintenance.dupes.groups import DEFAULT_KEEP, EVIDENCE, HASH_DISTANCE, Group, Rule, find_groups
from retrieval.maintenance.dupes.moves import Move, apply_moves, check_target, plan_moves
from retrieval.maintenance.dupes.threshold import MIN_ROWS, Measured, measured_threshold
from retrieval.search.results import Hit, QueryResult
from retrieval.search.searcher import EmbedderFactory, Searcher


@dataclass(frozen=True)
class Request:
    """What `retrieval dupes` asks for: the evidence, the vectors' cut-off (a cosine `threshold` or a
    `relative` one; neither: measured, threshold.py), the keep rule's order, and what to do with the groups."""

    threshold: float | None = None
    relative: float | None = None
    neighbours: int = 32
    keep: tuple[str, ...] = DEFAULT_KEEP
    evidence: str = "both"
    move_to: Path | None = None  # where the extras go (a dry run unless `apply`)
    apply: bool = False
    collage_dir: Path | None = None  # one collage per group, drawn before anything moves
    where: Filter | None = None  # among the files it keeps only (one folder at a time)


@dataclass(frozen=True)
class Outcome:
    """What a `dupes` run found and did: the rule, and the cut-off measured for it if one was; the groups (as
    found, before any move), the moves planned or made, the collages drawn, and what a user should know."""

    root: Location
    rule: Rule
    measured: Measured | None
    groups: list[Group]
    moves: list[Move]
    collages: list[Path]
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(m.problem for m in self.moves)


def dupes(
    settings: Settings,
    request: Request,
    make_embedder: EmbedderFactory = create_embedder,
    searcher: Searcher | None = None,
) -> Outcome:
    """Groups of the index in `settings.index` under the rule `request` asks for, their collages, and their
    extras' moves planned (and with `apply`, made under the write lock: moves.apply_moves). `searcher`: one
    already holding the index (a server's), else one is made."""
    if request.apply and request.move_to is None:
        raise UsageError("--apply needs --move-to DIR")
    if request.evidence not in EVIDENCE:
        raise UsageError(f"--evidence must be one of {', '.join(EVIDENCE)}, not {request.evidence!r}")
    cut = request.threshold is not None or request.relative is not None
    if request.evidence == "hash" and cut:
        raise UsageError("--threshold and --relative cut the vectors' scores: not with --evidence hash")
    searcher = searcher or Searcher(settings, make_embedder)
    store, notes = searcher.store, []
    if request.move_to:
        check_target(store.root, request.move_to)  # before any measuring
    by_hash = request.evidence in ("hash", "both")
    if by_hash and not store.hashed:
        missing = (
            f"the index in {settings.index} was built before perceptual hashes were kept; "
            "`retrieval compact --hashes` adds them without embedding anything again"
        )
        if request.evidence == "hash":
            raise UsageError(missing)
        notes.append(f"{missing}: grouping by the vectors alone")
        by_hash = False
    measured, threshold = None, request.threshold
    if request.evidence != "hash" and not cut:
        # the copy recall with the hashes whenever the index has them: one record serves every --evidence
        measured = _measured(searcher, settings, HASH_DISTANCE if store.hashed else None, notes)
        threshold = measured.threshold if measured else None
        if measured is None and not by_hash:
            raise UsageError(f"too few images to measure a cut-off on (fewer than {MIN_ROWS}): give --threshold")
    rule = Rule(threshold, request.relative, request.neighbours, HASH_DISTANCE if by_hash else None)
    groups = find_groups(store, rule, request.keep, where=request.where)
    moves = plan_moves(groups, store.root, request.move_to) if request.move_to else []
    collages = []
    if request.collage_dir:
        collages = collages_of(groups, store.root, request.collage_dir, settings.max_pixels)
    if moves and request.apply and request.move_to:
        moves, store = apply_moves(store, settings.index, moves, request.move_to)
    return Outcome(store.root, rule, measured, groups, moves, collages, notes)


def _measured(searcher: Searcher, settings: Settings, hash_distance: int | None, notes: list[str]) -> Measured | None:
    """The cut-off measured on the index, with the copy recall when its model is at hand."""
    try:
        embedder = searcher.embedder()
        embed, size = embedder.embed, embedder.spec.input_size
    except RetrievalError as e:  # the weights it was built with are not here: the cut-off needs no model
        notes.append(f"copy recall not measured: {e}")
        embed, size = None, (224, 224)
    store = searcher.store
    measured = measured_threshold(store, settings.index, embed, size, settings.max_pixels, hash_distance)
    if measured is None:
        notes.append(f"too few images to measure a cut-off on (fewer than {MIN_ROWS}): grouping by hash alone")
    return measured


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
    """Each group with its members and the links that joined them (by path)."""
    out = []
    for g in groups:
        paths = {m.row: m.path for m in g.members}
        links = [{**asdict(link), "a": paths[link.a], "b": paths[link.b]} for link in g.links]
        out.append(
            {"size": len(g.members), "keep": g.keep.path, "members": [asdict(m) for m in g.members], "links": links}
        )
    return out
