"""Filtered search on a million vectors: recall@10 and latency for filters keeping 50 %, 20 %, 5 %, 0.5 % and 0.01 %
of the rows, the plan's choice against each path forced, and what evaluating a filter costs.

    .venv/bin/python benchmarks/filters.py [--count 1000000] [--folder /tmp/filters]   # build ~11 min, runs ~7 min

The index: `count` seeded cone-family vectors (shaped like the model's features; embedding a million images
would take days here), PCA256,HNSW32,RFlat as `auto` builds at this size, built once in FOLDER and reused.
Each row's manifest entry carries a size drawn as a random permutation of 0..count-1, so a size range keeps
an exact share of rows, unrelated to the vectors; an mtime (seconds) that is its rank when the rows are
grouped into 20 events of alike vectors (by_event), so a time range keeps an exact share of rows alike, as a
trip's photos are; and a path in two levels of folders (a row's top folder is row % 20, its second row %
2000) for the folder filters, unrelated to the vectors. Truth: brute force over the kept rows'
exact vectors. Latency: one query at a time through Store.search, the filter's rows already evaluated and its
codes made (a store keeps the last 16 filters'; the first evaluation and the first search, which makes the
codes where the plan takes them, are timed apart). Writes
benchmarks/results/filters.json and filters.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
QUERIES, K = 200, 10
SHARES = (0.5, 0.2, 0.05, 0.005, 0.0001)
EVENTS = 20  # groups of alike vectors whose mtimes follow one another (by_event)


def build(count: int, folder: Path) -> tuple[Path, float]:
    """The index (and its queries, drawn with it: fresh draws of the same clusters) in `folder`, built once."""
    from retrieval import Settings, Store
    from retrieval.analysis.synthetic import feature_vectors
    from retrieval.ann.indexes import IndexChoice
    from retrieval.embedding.embedders import embedding_for
    from retrieval.index.manifest import Entry

    layout = {"count": count, "seed": 31, "sizes": "permutation", "mtimes": f"by_event({EVENTS})"}
    if (folder / "index" / "CURRENT").is_file() and (folder / "queries.npy").is_file():
        recorded = folder / "layout.json"
        if not recorded.is_file() or recorded.read_text(errors="replace") != json.dumps(layout):
            raise SystemExit(f"{folder} holds an index built for another count or layout: delete it or give --folder")
        return folder / "index", 0.0
    started = time.perf_counter()
    vectors, queries = feature_vectors("cone", count, queries=QUERIES, seed=31)
    np.save(folder / "queries.npy", queries)
    rng = np.random.default_rng(32)
    sizes, mtimes = rng.permutation(count), by_event(vectors, rng)
    entries = [
        Entry(f"{i % 20:02d}/{i % 2000:04d}/v{i:07d}.jpg", int(s), int(m) * 10**9)
        for i, s, m in zip(range(count), sizes.tolist(), mtimes.tolist())
    ]
    store = Store.create(
        dim=2048, metric="cosine", embedding=embedding_for(Settings(weights="none")), root=folder, runtime={},
        kind=IndexChoice("hnsw", pca=256) if count > 100_000 else IndexChoice("auto"),
    )  # fmt: skip
    store.add(vectors, entries)
    del vectors
    store.save(folder / "index")
    (folder / "layout.json").write_text(json.dumps(layout))
    return folder / "index", time.perf_counter() - started


def by_event(vectors: np.ndarray, rng: np.random.Generator, events: int = EVENTS) -> np.ndarray:
    """Each row's mtime rank (0..count-1) as a photo library's would run: rows grouped into `events` of alike
    vectors (each row with the nearest of `events` rows drawn at random), the events one after another, in
    random order within each; so a time range keeps rows alike, as a trip's photos are."""
    anchors = vectors[rng.choice(len(vectors), events, replace=False)]
    event = np.concatenate([np.argmax(c @ anchors.T, axis=1) for c in np.array_split(vectors, 64)])
    order = np.lexsort((rng.random(len(vectors)), event))  # by event, at random within one
    ranks = np.empty(len(vectors), np.int64)
    ranks[order] = np.arange(len(vectors))
    return ranks


def truth(store, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The exact top-K store rows among `rows` per query, by their stored vectors, a chunk at a time."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_rows = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(rows), 50_000):
        chunk = rows[start : start + 50_000]
        scores = queries @ store.vectors_of(chunk).T
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, np.broadcast_to(chunk, scores.shape)], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :K]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
    return best_rows


def measured(store, queries: np.ndarray, where, expected: np.ndarray) -> dict:
    """Recall@K against `expected`, p50 and p99 ms over the queries one at a time, scores checked exact; after
    one untimed pass over the same queries (the index is memory-mapped: a first pass reads it from disk)."""
    store.search(queries, K, where)
    times, recalls = [], []
    for q, query in enumerate(queries):
        started = time.perf_counter()
        [hits] = store.search(query[np.newaxis], K, where)
        times.append(time.perf_counter() - started)
        recalls.append(len({r for r, _ in hits} & set(expected[q].tolist())) / min(K, len(expected[q])))
        if q < 5 and hits:  # exact scores: each against its row's stored vector
            rows = np.array([r for r, _ in hits])
            assert np.allclose([s for _, s in hits], store.vectors_of(rows) @ query, atol=1e-4)
    ms = np.array(times) * 1e3
    return {
        "recall_at_10": float(np.mean(recalls)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def scan_floor_ms(rows: int, width: int = 256) -> float:
    """The least a first pass over `rows` rows' reduced vectors (`width` floats each, as PCA-256 keeps them) can
    take here: reading as many bytes from memory, contiguous, and summing them; the median of 11."""
    block = np.ones((rows, width), np.float32)
    times = []
    for _ in range(11):
        started = time.perf_counter()
        block.sum(axis=0)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/filters"))
    args = parser.parse_args()

    from retrieval.ann.filtered import CODED_AT_LEAST, FilterPlan
    from retrieval.filters import Filter
    from retrieval.index.building import Tuning
    from retrieval.index.store import Store
    from retrieval.io.system import machine

    args.folder.mkdir(parents=True, exist_ok=True)
    index, build_seconds = build(args.count, args.folder)
    queries = np.load(args.folder / "queries.npy")
    store = Store.load(index)
    plain = measured(store, queries, None, truth(store, queries, np.arange(store.count)))
    filters = [
        (f"size: {share:.2%} of rows", share, Filter(min_size=0, max_size=round(share * store.count) - 1))
        for share in SHARES
    ]
    filters += [
        ("folder 07/ (5 %)", 0.05, Filter(folder="07")),
        ("folder 07/0007/ (0.05 %)", 0.0005, Filter(folder="07/0007")),
    ]
    middle = store.count // 2  # a time range: rows alike (by_event), in one or two events
    filters += [
        (
            f"time, alike: {share:.2%} of rows",
            share,
            Filter(modified_after=middle * 10**9, modified_before=(middle + round(share * store.count)) * 10**9),
        )
        for share in (0.05, 0.005)
    ]
    default = FilterPlan()
    paths = {  # each path forced: exact, the reduced vectors' first pass, the codes', the filter inside the graph
        "exact": replace(default, exact_rows=store.count),
        "reduced": replace(default, exact_rows=0, coded_rows=store.count + 1, coded_share=1.01),
        "coded": replace(default, exact_rows=0, coded_rows=0, coded_share=1.01),
        "inside": replace(default, exact_rows=0, coded_share=0.0, inside_share=0.0),
    }
    rows = []
    for label, _share, where in filters:
        started = time.perf_counter()
        kept = store.kept(where)
        first_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        store.search(queries[:1], K, where)
        first_search_ms = (time.perf_counter() - started) * 1e3
        expected = truth(store, queries, kept)
        row = {"filter": label, "kept": int(len(kept)), "first_evaluation_ms": first_ms}
        row["first_search_ms"] = first_search_ms
        row["scan_floor_ms"] = scan_floor_ms(len(kept))
        row["plan"] = measured(store, queries, where, expected)
        for path, plan in paths.items():
            if (path == "exact" and len(kept) > 60_000) or (path == "reduced" and len(kept) > 100_000):
                continue  # 8 KB a row (1 KB reduced): a tenth of a second a query and more
            if path == "coded" and len(kept) < CODED_AT_LEAST:
                continue  # too few rows to train codes on: the plan reads their reduced vectors
            forced = Store.load(index, tuning=Tuning(filtering=plan))
            started = time.perf_counter()
            forced.search(queries[:1], K, where)  # the first: makes the codes on the coded path
            first_search_ms = (time.perf_counter() - started) * 1e3
            row[path] = {**measured(forced, queries, where, expected), "first_search_ms": first_search_ms}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "machine": machine(),
        "count": store.count,
        "index": store.segments[0]["index"]["factory"],
        "build_seconds": build_seconds,
        "plan": vars(default),
        "forced": list(paths),
        "unfiltered": plain,
        "filters": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "filters.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "filters.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    host = result["machine"]
    plan = result["plan"]
    forced = list(result["forced"])
    lines = [
        f"{result['count']:,} cone-family vectors, index {result['index']} (machine: {host['cpu']}, "
        f"{host['cores']} cores; {host['date']}). Plan: exact up to {plan['exact_rows']:,} kept rows; then a first "
        f"pass over the kept rows' reduced vectors, from {plan['coded_rows']:,} rows over their 4-bit product codes "
        f"(the best {plan['coded_rerank']} x k re-ranked exactly); the filter inside the graph from "
        f"{plan['coded_share']:.0%} of the rows kept (efSearch widened by the share dropped, at most "
        f"{plan['max_widen']}x). Unfiltered: recall@10 {result['unfiltered']['recall_at_10']:.3f}, p50 "
        f"{result['unfiltered']['p50_ms']:.2f} ms. Each path forced: recall@10 / p50 ms. First search: the first "
        "query after the filter's rows are evaluated (it makes the codes where the plan takes them; the last column "
        "where the codes' path is forced). Scan floor: "
        "reading as many rows' reduced vectors (1 KB each) from memory, contiguous, the least a first pass over "
        "them takes.",
        "",
        "| filter | rows kept | first evaluation ms | first search ms | plan: recall@10 | p50 ms | p99 ms | "
        "scan floor ms | " + " | ".join(forced) + " | coded: first search ms |",
        "|---|---|---|---|---|---|---|---|" + "---|" * (len(forced) + 1),
    ]
    for row in result["filters"]:
        cells = [f"{row[p]['recall_at_10']:.3f} / {row[p]['p50_ms']:.2f}" if p in row else "-" for p in forced]
        cells.append(f"{row['coded']['first_search_ms']:.1f}" if "coded" in row else "-")
        lines.append(
            f"| {row['filter']} | {row['kept']:,} | {row['first_evaluation_ms']:.1f} | {row['first_search_ms']:.1f} | "
            f"{row['plan']['recall_at_10']:.3f} | {row['plan']['p50_ms']:.2f} | {row['plan']['p99_ms']:.2f} | "
            f"{row['scan_floor_ms']:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
