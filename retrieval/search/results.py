"""What a query answers, as plain data: shared by the local Searcher and the HTTP client, and light enough
to import that `retrieval query --server` starts without numpy or FAISS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from retrieval.io.sources import Location

T = TypeVar("T")  # a float, or a numpy array of them


def as_cosine(score: T, metric: str) -> T:
    """A score (one, or an array of them) as a cosine: l2 scores are distances between unit vectors, and
    d² = 2 - 2 cos."""
    return score if metric == "cosine" else 1.0 - score**2 / 2.0


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # cosine similarity, or Euclidean distance when the metric is l2
    path: str  # relative to the index's root
    row: int


@dataclass(frozen=True)
class QueryResult:
    query: Location
    root: Location  # a local folder, or a remote one (sources.ArrowPath)
    metric: str
    hits: list[Hit]
    embedded: bool  # False when the query was already indexed and its stored vector was used
    generation: str | None = None  # the index generation that answered

    def absolute(self, hit: Hit) -> Location:
        return self.root / hit.path
