"""`flat`: exact search over every vector (IndexFlatIP / IndexFlatL2). Time grows with N: about 4.5 ms at 10k
vectors of 2048-d here, so it is sub-millisecond only for a few thousand images."""

from typing import Any

from retrieval.ann.kinds.base import Kind


class Flat(Kind):
    name = "flat"
    exact = True
    compresses = False
    tested = {"flat": {}}
    swept = {"flat": {}}

    def structure(self, choice: Any, width: int, count: int) -> str:
        return "Flat"

    def resident_bytes(self, choice: Any, width: int, count: int) -> int:
        return count * width * 4  # every exact vector is scanned
