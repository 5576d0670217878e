"""`scan`: every vector's product-quantized code (4 bits per dimension, after PCA), all of them scanned with
FAISS's SIMD "fast scan"; approximate. Time grows with N but at a few nanoseconds a row, so it is what the
store gives its small update segments (index/store.py, index/segments.py's ScanGroup), not a kind a user asks for."""

from typing import Any

from retrieval.ann.kinds.base import Kind

RERANKS = (2, 4, 8, 16, 32, 64)  # candidates per wanted result a scan index may re-rank exactly


class Scan(Kind):
    name = "scan"
    offered = False
    parameter = "rerank"
    values = RERANKS
    scanned_as_group = True
    range_searched = False  # fast scan has no range search: a scan index (a small one) is searched exactly
    selects = False  # nor an ID selector: a filtered search drops the rows it leaves out after the scan
    tested = {"scan": {"pca": 64}}

    def structure(self, choice: Any, width: int, count: int) -> str:
        # a 4-bit code per dimension: on the 21,952 update rows of benchmarks/update.py it met recall@10 0.95
        # re-ranking 4 candidates per result, where a code per two dimensions needed 16; searched as one
        # group, 0.33 against 0.43 ms a query
        return f"PQ{2 * choice.pq_bytes or width}x4fs"

    def resident_bytes(self, choice: Any, width: int, count: int) -> int:
        return count * (choice.pq_bytes or width // 2)  # a 4-bit code per dimension
