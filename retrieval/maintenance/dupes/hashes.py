"""Pairs of images by their perceptual hashes: every pair whose hashes (io/perceptual.py) differ in at most a
few of 64 bits, as they are or one of them mirrored. Exact, through FAISS's binary index (a SIMD popcount over
every pair, in chunks of queries), so memory grows with the pairs found, not with the square of the rows."""

from __future__ import annotations

import faiss
import numpy as np

CHUNK = 65_536  # query hashes per range search


def hash_pairs(hashes: np.ndarray, max_distance: int) -> dict[tuple[int, int], int]:
    """{(row, row): bits apart}, smaller row first, for the rows of `hashes` ((rows, 16) uint8: each row's hash
    then its mirror image's; all zeros for a row without one, which takes no part) within `max_distance`."""
    present = np.flatnonzero(hashes.any(axis=1))
    own = np.ascontiguousarray(hashes[present, :8])
    index = faiss.IndexBinaryFlat(64)
    index.add(own)
    found: dict[tuple[int, int], int] = {}
    for queries in (own, np.ascontiguousarray(hashes[present, 8:])):
        for start in range(0, len(present), CHUNK):
            limits, distances, ids = index.range_search(queries[start : start + CHUNK], max_distance + 1)
            asking = present[start + np.repeat(np.arange(len(limits) - 1), np.diff(limits).astype(np.int64))]
            answering = present[ids]
            keep = asking != answering
            for a, b, d in zip(asking[keep].tolist(), answering[keep].tolist(), distances[keep].tolist()):
                pair = (a, b) if a < b else (b, a)
                if d < found.get(pair, 65):
                    found[pair] = d
    return found


def hamming(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits apart of rows `a` and `b` (the smaller of as-they-are and one mirrored); -1 where either row has
    no hash."""
    bits_a, bits_b = np.unpackbits(hashes[a], axis=1), np.unpackbits(hashes[b], axis=1)  # hash, then mirrored
    own_a, own_b, mirrored_b = bits_a[:, :64], bits_b[:, :64], bits_b[:, 64:]
    distance = np.minimum((own_a != own_b).sum(1), (own_a != mirrored_b).sum(1))
    missing = ~hashes[a].any(axis=1) | ~hashes[b].any(axis=1)
    return np.where(missing, -1, distance)
