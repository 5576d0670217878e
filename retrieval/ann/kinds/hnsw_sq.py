"""`hnsw-sq8`: the HNSW graph over 8-bit scalar codes of the vectors (a byte per dimension where `hnsw` keeps
four), optionally after PCA; the exact vectors, memory-mapped, re-rank its candidates. Approximate."""

from typing import Any

from retrieval.ann.kinds.base import Kind
from retrieval.ann.kinds.hnsw import EF_SEARCH


class HnswSq(Kind):
    name = "hnsw-sq8"
    parameter = "ef_search"
    values = EF_SEARCH
    faiss_parameter = "efSearch"
    tested = {"hnsw-sq8": {"ef_search": 128}}
    swept = {"HNSW32+SQ8+rerank": {}, "PCA256+HNSW32+SQ8+rerank": {"pca": 256}}

    def structure(self, choice: Any, width: int, count: int) -> str:
        return f"HNSW{choice.hnsw_m}_SQ8"

    def resident_bytes(self, choice: Any, width: int, count: int) -> int:
        return count * (width + 2 * choice.hnsw_m * 4)  # a byte per dimension + level-0 neighbour lists
