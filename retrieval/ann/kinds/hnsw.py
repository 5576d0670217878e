"""`hnsw`: a navigable graph (HNSW) over the vectors, optionally after PCA; approximate."""

from typing import Any

from retrieval.ann.kinds.base import Kind

EF_SEARCH = (16, 32, 64, 128, 256, 512)


class Hnsw(Kind):
    name = "hnsw"
    compresses = False  # the graph holds the vectors themselves (re-ranked only after a PCA)
    parameter = "ef_search"
    values = EF_SEARCH
    faiss_parameter = "efSearch"
    tested = {"hnsw": {"ef_search": 64}, "pca-hnsw": {"pca": 64, "ef_search": 128}}
    swept = {"HNSW32": {}, "PCA256+HNSW32+rerank": {"pca": 256}}

    def structure(self, choice: Any, width: int, count: int) -> str:
        return f"HNSW{choice.hnsw_m}"

    def resident_bytes(self, choice: Any, width: int, count: int) -> int:
        return count * (width * 4 + 2 * choice.hnsw_m * 4)  # vectors searched + level-0 neighbour lists
