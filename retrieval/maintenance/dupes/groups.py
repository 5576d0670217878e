"""Groups of near-duplicate images, found through the index itself on two independent kinds of evidence:

- vectors: each stored vector is searched for its `neighbours` nearest, in chunks (never an all-pairs matrix:
  memory grows with the index and the number of duplicate pairs, not with its square), and a neighbour that
  passes the `Rule`'s cut-off links the two: an absolute cosine `threshold` (by default the one measured on
  the collection, threshold.py), or a `relative` one (Lowe's ratio test with a far reference: a neighbour
  counts when its distance, 1 - cosine, is at most `relative` times the distance to the `neighbours`-th);
- hash: two images whose perceptual hashes (io/perceptual.py) differ in at most `hash_distance` of 64 bits,
  as they are or one of them mirrored, are linked (hashes.py).

Linked images form a group (connected components), and each link says which evidence made it. In each
group the image to keep comes first, by the keep rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from retrieval.errors import EmptyIndex, NoMatch, UsageError
from retrieval.filters import Filter
from retrieval.index.store import Store
from retrieval.io.images import decoders
from retrieval.io.sources import open_regular
from retrieval.maintenance.dupes.hashes import hamming, hash_pairs
from retrieval.search.results import as_cosine

KEEP_RULES = ("resolution", "size", "oldest", "newest", "path")
DEFAULT_KEEP = ("resolution", "size", "oldest")
EVIDENCE = ("vectors", "hash", "both")
HASH_DISTANCE = 8  # bits of 64: pHash's usual rule is 10; 8 kept every pair correct on benchmarks/dupes.py


@dataclass(frozen=True)
class Rule:
    """When two images are near-duplicates: by vectors, at least `threshold` cosine, or within `relative` of
    the distance to the `neighbours`-th nearest image (`neighbours` are searched per image); by hash, at most
    `hash_distance` bits apart. Either evidence links (None: that evidence is not used)."""

    threshold: float | None = None
    relative: float | None = None
    neighbours: int = 32
    hash_distance: int | None = None

    def __post_init__(self) -> None:
        if self.threshold is None and self.relative is None and self.hash_distance is None:
            raise UsageError("give a --threshold (a cosine, e.g. 0.95), a --relative cut-off or hash evidence")
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
        if self.hash_distance is not None and not 0 <= self.hash_distance <= 32:
            raise UsageError(f"the hash distance is a number of bits from 0 to 32, not {self.hash_distance}")

    @property
    def vectors(self) -> bool:
        """Whether the vectors are evidence under this rule."""
        return self.threshold is not None or self.relative is not None

    def links(self, cosines: np.ndarray) -> np.ndarray:
        """Which of one image's neighbours (cosines, best first, itself excluded) are its near-duplicates."""
        keep = np.ones(len(cosines), bool)
        if self.threshold is not None:
            keep &= cosines >= self.threshold
        if self.relative is not None and len(cosines):
            reference = 1.0 - cosines[-1]
            keep &= (1.0 - cosines) <= self.relative * reference
        return keep


@dataclass(frozen=True)
class Link:
    """Two rows (smaller first) found near-duplicates, with the evidence that linked them: "vectors", "hash"
    or "vectors+hash". `hamming`: their hashes' distance, None where either row has no hash."""

    a: int
    b: int
    cosine: float
    hamming: int | None
    by: str


@dataclass(frozen=True)
class Member:
    """One image of a group, with what the keep rule looks at (None: the file is gone or unreadable)."""

    row: int
    path: str  # relative to the index's root
    score: float  # its highest cosine to another member it is linked to
    evidence: str  # what linked it there ("vectors", "hash", "vectors+hash")
    width: int | None
    height: int | None
    bytes: int | None
    mtime_ns: int | None

    @property
    def present(self) -> bool:
        return self.bytes is not None


@dataclass(frozen=True)
class Group:
    """Near-duplicates, the one to keep first, and the links that joined them."""

    members: list[Member]
    links: list[Link]

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
    where: Filter | None = None,
) -> list[Group]:
    """The index's near-duplicate groups, largest first, each ordered by `keep` (see `order`). EmptyIndex for
    an index with no rows, as a query of it; UsageError for a keep rule that is not one, before any search.
    `where`: among the files it keeps only (one folder at a time); NoMatch when it keeps none."""
    check_keep(keep)
    if store.count == 0:
        raise EmptyIndex("the index is empty: no duplicates to find")
    rows = store.kept(where) if where else np.arange(store.count)
    if where and not len(rows):
        raise NoMatch(f"no indexed image is {where.describe()}: no duplicates to find")
    if len(rows) < 2:
        return []
    by_vectors = dict(_vector_links(store, rule, rows, where, chunk, progress)) if rule.vectors else {}
    hashes = store.perceptual_hashes() if rule.hash_distance is not None or store.hashed else None
    if hashes is not None and where:
        hashes[np.setdiff1d(np.arange(store.count), rows)] = 0  # a row without a hash takes no part
    by_hash = hash_pairs(hashes, rule.hash_distance) if hashes is not None and rule.hash_distance is not None else {}
    links = _joined(store, by_vectors, by_hash, hashes)
    components = _components(store.count, list(links))
    group_of = {row: number for number, rows in enumerate(components) for row in rows}
    inside: list[list[Link]] = [[] for _ in components]
    for link in links.values():
        inside[group_of[link.a]].append(link)
    found = []
    for rows, their_links in zip(components, inside):
        best: dict[int, Link] = {}
        for link in their_links:
            for row in (link.a, link.b):
                if row not in best or link.cosine > best[row].cosine:
                    best[row] = link
        members = [_member(store, row, best[row]) for row in rows]
        found.append(Group(order(members, keep), their_links))
    return sorted(found, key=lambda g: (-len(g.members), g.keep.path))


def _vector_links(
    store: Store,
    rule: Rule,
    searched: np.ndarray,
    where: Filter | None,
    chunk: int,
    progress: Callable[[int, int], None] | None,
) -> Iterator[tuple[tuple[int, int], float]]:
    """(row, row) pairs, smaller first, with their cosine, for every neighbour the rule accepts: of each of the
    `searched` rows, among the rows `where` keeps."""
    k = min(rule.neighbours + 1, len(searched))
    for start in range(0, len(searched), chunk):
        rows = searched[start : start + chunk]
        for row, hits in zip(rows.tolist(), store.search(store.vectors_of(rows), k, where)):
            others = [(r, s) for r, s in hits if r != row][: k - 1]
            cosines = as_cosine(np.array([s for _, s in others], np.float32), store.metric)
            for (other, _), cosine, linked in zip(others, cosines, rule.links(cosines)):
                if linked:
                    yield (min(row, other), max(row, other)), float(cosine)
        if progress:
            progress(min(start + chunk, len(searched)), len(searched))


def _joined(
    store: Store,
    by_vectors: dict[tuple[int, int], float],
    by_hash: dict[tuple[int, int], int],
    hashes: np.ndarray | None,
) -> dict[tuple[int, int], Link]:
    """Every pair either evidence linked, with both its cosine and its hash distance (where hashes exist) and
    the evidence that linked it."""
    pairs = sorted(set(by_vectors) | set(by_hash))
    if not pairs:
        return {}
    a, b = (np.array(side, np.int64) for side in zip(*pairs))
    missing = [i for i, pair in enumerate(pairs) if pair not in by_vectors]
    cosines = np.array([by_vectors.get(pair, 0.0) for pair in pairs], np.float64)
    if missing:  # linked by hash alone: their cosine, for the score shown
        rows = np.unique(np.concatenate([a[missing], b[missing]]))
        vectors = dict(zip(rows.tolist(), store.vectors_of(rows)))
        cosines[missing] = [float(vectors[int(a[i])] @ vectors[int(b[i])]) for i in missing]
    distances = hamming(hashes, a, b) if hashes is not None else None
    links = {}
    for i, pair in enumerate(pairs):
        by = "+".join(name for name, found in (("vectors", pair in by_vectors), ("hash", pair in by_hash)) if found)
        distance = None if distances is None or distances[i] < 0 else int(distances[i])
        links[pair] = Link(pair[0], pair[1], float(cosines[i]), distance, by)
    return links


def _components(count: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected groups of two or more rows (union-find with path halving), each in row order."""
    parent = list(range(count))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for row in sorted({r for pair in pairs for r in pair}):
        groups.setdefault(root(row), []).append(row)
    return [rows for rows in groups.values() if len(rows) > 1]


def _member(store: Store, row: int, best: Link) -> Member:
    path = store.entry(row).path
    try:
        file = store.root / path
        st = file.stat()
        with open_regular(file) as f, Image.open(f, formats=decoders()) as im:  # the header only, nothing decoded
            width, height = im.size
    except (OSError, Image.DecompressionBombError, ValueError):
        return Member(row, path, best.cosine, best.by, None, None, None, None)
    return Member(row, path, best.cosine, best.by, width, height, st.st_size, st.st_mtime_ns)


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
