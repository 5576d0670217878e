"""Pairs of images by their perceptual hashes: every pair whose hashes (io/perceptual.py) differ in at most a
few of 64 bits, as they are or one of them mirrored. Exact at any size, and memory grows with the pairs found,
not with the square of the rows.

Below EXACT_BELOW hashes every pair is compared (FAISS's binary flat index, a SIMD popcount: 35 s for 200,000
hashes both ways here, growing with the square). Above it, by the pigeonhole principle: two hashes within d
bits agree exactly on at least one of d + 1 disjoint slices of their bits, so each slice's value sorts the rows
into buckets and only rows sharing a bucket are compared (Norouzi's multi-index hashing, exact). With random
hashes that is d + 1 slices x 128 buckets of N / 128 rows: at a million rows, about 1/14 of the comparisons."""

from __future__ import annotations

import faiss
import numpy as np

CHUNK = 65_536  # query hashes per range search
EXACT_BELOW = 250_000  # hashes compared pair by pair below this many rows


def hash_pairs(hashes: np.ndarray, max_distance: int, exact_below: int = EXACT_BELOW) -> dict[tuple[int, int], int]:
    """{(row, row): bits apart}, smaller row first, for the rows of `hashes` ((rows, 16) uint8: each row's hash
    then its mirror image's; all zeros for a row without one, which takes no part) within `max_distance`."""
    present = np.flatnonzero(hashes.any(axis=1))
    own = np.ascontiguousarray(hashes[present, :8])
    mirrored = np.ascontiguousarray(hashes[present, 8:])
    found: dict[tuple[int, int], int] = {}
    compare = _all_pairs if len(present) < exact_below else _by_slices
    for queries in (own, mirrored):
        for asking, answering, distances in compare(own, queries, max_distance):
            _keep(found, present[asking], present[answering], distances)
    return found


def _all_pairs(own: np.ndarray, queries: np.ndarray, max_distance: int):
    """(query rows, own rows, distances) of every pair within `max_distance`, all pairs compared."""
    index = faiss.IndexBinaryFlat(64)
    index.add(own)
    for start in range(0, len(queries), CHUNK):
        yield _searched(index, queries[start : start + CHUNK], max_distance, np.arange(start, start + CHUNK), None)


def _by_slices(own: np.ndarray, queries: np.ndarray, max_distance: int):
    """The same pairs, comparing only rows that agree on one of `max_distance` + 1 slices of their bits."""
    own_bits, query_bits = np.unpackbits(own, axis=1), np.unpackbits(queries, axis=1)
    bounds = np.linspace(0, 64, max_distance + 2).astype(int)
    for low, high in zip(bounds, bounds[1:]):
        weights = 1 << np.arange(high - low, dtype=np.int64)
        own_keys, query_keys = own_bits[:, low:high] @ weights, query_bits[:, low:high] @ weights
        own_order, query_order = np.argsort(own_keys, kind="stable"), np.argsort(query_keys, kind="stable")
        for key in np.intersect1d(own_keys, query_keys):
            members = own_order[np.searchsorted(own_keys[own_order], key) :]
            members = members[: np.searchsorted(own_keys[members], key, side="right")]
            asking = query_order[np.searchsorted(query_keys[query_order], key) :]
            asking = asking[: np.searchsorted(query_keys[asking], key, side="right")]
            index = faiss.IndexBinaryFlat(64)
            index.add(own[members])
            yield _searched(index, queries[asking], max_distance, asking, members)


def _searched(index: faiss.IndexBinaryFlat, queries: np.ndarray, max_distance: int, asking: np.ndarray, rows):
    """One range search's pairs as (query rows, index rows, distances); `rows`: the index's rows (None: 0..n)."""
    limits, distances, ids = index.range_search(queries, max_distance + 1)
    counts = np.diff(limits).astype(np.int64)
    return np.repeat(asking[: len(queries)], counts), ids if rows is None else rows[ids], distances.astype(np.int64)


def _keep(found: dict[tuple[int, int], int], a: np.ndarray, b: np.ndarray, distances: np.ndarray) -> None:
    """Record each pair of different rows at its smallest distance."""
    different = a != b
    for x, y, d in zip(a[different].tolist(), b[different].tolist(), distances[different].tolist()):
        pair = (x, y) if x < y else (y, x)
        if d < found.get(pair, 65):
            found[pair] = d


def hamming(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits apart of rows `a` and `b` (the least of as they are, and either one mirrored); -1 where either row
    has no hash."""
    bits_a, bits_b = np.unpackbits(hashes[a], axis=1), np.unpackbits(hashes[b], axis=1)  # hash, then mirrored
    own_a, own_b = bits_a[:, :64], bits_b[:, :64]
    either = ((own_a != own_b), (own_a != bits_b[:, 64:]), (bits_a[:, 64:] != own_b))  # as hash_pairs compares
    distance = np.min([d.sum(1) for d in either], axis=0)
    missing = ~hashes[a].any(axis=1) | ~hashes[b].any(axis=1)
    return np.where(missing, -1, distance)
