"""What a query answers, as plain data: shared by the local Searcher and the HTTP client, and light enough
to import that `retrieval query --server` starts without numpy or FAISS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # cosine similarity, or Euclidean distance when the metric is l2
    path: str  # relative to the index's root
    row: int


@dataclass(frozen=True)
class QueryResult:
    query: Path
    root: Path
    metric: str
    hits: list[Hit]
    embedded: bool  # False when the query was already indexed and its stored vector was used

    def absolute(self, hit: Hit) -> Path:
        return self.root / hit.path
