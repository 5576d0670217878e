"""Pairs of images by their perceptual hashes: every pair whose hashes (io/perceptual.py) differ in at most a
few of 64 bits, as they are or one of them mirrored, in chunks of queries, so memory grows with the pairs
found, not with the square of the rows.

Below EXACT_BELOW hashes every pair is compared (FAISS's binary flat index, a SIMD popcount: 35 s for 200,000
hashes both ways here, growing with the square). Above it, a multi-index hash (FAISS's IndexBinaryMultiHash):
the 64 bits in four 16-bit quarters, each looked up as it is and with any one bit flipped. A pair is missed
only when every quarter differs in two bits or more, which takes 8 bits at least: every pair within 7 bits is
found, and most at 8 (1,893 of 2,000 planted pairs at exactly 8 bits, measured on random hashes)."""

from __future__ import annotations

import faiss
import numpy as np

CHUNK = 65_536  # query hashes per range search
EXACT_BELOW = 250_000  # hashes compared pair by pair below this many rows


def hash_pairs(hashes: np.ndarray, max_distance: int, exact_below: int = EXACT_BELOW) -> dict[tuple[int, int], int]:
    """{(row, row): bits apart}, smaller row first, for the rows of `hashes` ((rows, 16) uint8: each row's hash
    then its mirror image's; all zeros for a row without one, which takes no part) within `max_distance`
    (see the module docstring for what a large index may miss)."""
    present = np.flatnonzero(hashes.any(axis=1))
    own = np.ascontiguousarray(hashes[present, :8])
    if len(present) < exact_below:
        index = faiss.IndexBinaryFlat(64)
    else:
        index = faiss.IndexBinaryMultiHash(64, 4, 16)
        index.nflip = 1
    index.add(own)
    found: dict[tuple[int, int], int] = {}
    for queries in (own, np.ascontiguousarray(hashes[present, 8:])):
        for start in range(0, len(present), CHUNK):
            limits, distances, ids = index.range_search(queries[start : start + CHUNK], max_distance + 1)
            asking = present[start + np.repeat(np.arange(len(limits) - 1), np.diff(limits).astype(np.int64))]
            answering = present[ids]
            keep = asking != answering
            for a, b, d in zip(asking[keep].tolist(), answering[keep].tolist(), distances[keep].astype(int).tolist()):
                pair = (a, b) if a < b else (b, a)
                if d < found.get(pair, 65):
                    found[pair] = d
    return found


def hamming(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits apart of rows `a` and `b` (the least of as they are, and either one mirrored); -1 where either row
    has no hash."""
    bits_a, bits_b = np.unpackbits(hashes[a], axis=1), np.unpackbits(hashes[b], axis=1)  # hash, then mirrored
    own_a, own_b = bits_a[:, :64], bits_b[:, :64]
    either = ((own_a != own_b), (own_a != bits_b[:, 64:]), (bits_a[:, 64:] != own_b))  # as hash_pairs compares
    distance = np.min([d.sum(1) for d in either], axis=0)
    missing = ~hashes[a].any(axis=1) | ~hashes[b].any(axis=1)
    return np.where(missing, -1, distance)
