"""The server's limits and its request and response models: typed, so that the OpenAPI schema documents them."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from retrieval.errors import UsageError
from retrieval.search.results import Hit


@dataclass(frozen=True)
class ServeOptions:
    """Limits and access of one server."""

    token: str | None = None  # required on every route but /health when set
    max_upload_bytes: int = 20 * 2**20
    max_k: int = 100
    max_files: int = 32  # images in one POST /search
    max_batch: int = 32  # uploads embedded in one forward pass
    max_wait_ms: float = 5.0  # how long the first upload of a batch waits for others
    request_timeout_s: float = 30.0  # a request still running then gets a 504, and others go on
    thumbnail_size: int = 256
    thumbnail_cache: int = 512  # thumbnails kept in memory
    move_to: Path | None = None  # where the review page moves a group's extras; None: the page is read-only
    metrics_public: bool = False  # /metrics without the token (a scraper on a private network)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise UsageError("an empty token would let every request in: give a non-empty --token, or none")


class HitOut(BaseModel):
    rank: int
    score: float
    id: int
    path: str


class SearchOut(BaseModel):
    generation: str | None
    metric: str
    results: list[list[HitOut]]  # one list per query image (one for a search by id)


class InfoOut(BaseModel):
    count: int
    root: str  # the indexed folder, which hit paths are relative to
    model: str
    weights: dict[str, Any]
    metric: str
    index_type: str
    recall_at_10: float | None
    warning: str | None
    generation: str | None
    max_files: int  # images one POST /search takes


class MemberOut(BaseModel):
    id: int
    path: str
    score: float  # its highest cosine to a member it is linked to
    evidence: str  # what linked it there: vectors, hash or vectors+hash


class GroupOut(BaseModel):
    number: int  # 1 for the largest group
    keep: int  # the id the keep rules suggest keeping
    members: list[MemberOut]  # the suggested keeper first


class DupesOut(BaseModel):
    generation: str | None
    total: int  # groups in the whole index
    offset: int
    limit: int
    threshold: float | None  # the vectors' cut-off (measured on the index), None when not used
    notes: list[str]
    movable: bool  # whether this server moves extras (serve --move-to)
    groups: list[GroupOut]


class MoveIn(BaseModel):
    generation: str  # the generation the group was found in
    ids: list[int]  # every member of the group
    keep: int  # the member to keep; the others move


class MovedOut(BaseModel):
    id: int
    source: str
    destination: str
    done: bool
    problem: str | None


class MoveOut(BaseModel):
    moves: list[MovedOut]
    log: str  # the file every move is appended to


def hits_out(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(rank=h.rank, score=h.score, id=h.row, path=h.path) for h in hits]
